"""Handwritten digit classifier (8x8 images, scikit-learn's digits), trained by ``train.py``.

{"pixels": [64 numbers 0..16]}        -> {"digit": n}
{"images": [[64 numbers], ...]}       -> {"digits": [n, ...]}
"""

from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn.svm  # noqa: F401  (pre-imported so unpickling the model in setup() is quick)

import tidal

MODEL_PATH = Path(__file__).resolve().parent / "model.joblib"
PIXELS = 64
MAX_BATCH = 1024


def _as_images(rows: list[Any], field: str) -> np.ndarray:
    """Validate ``rows`` (a list of images) as a (n, 64) array of numbers in 0..16.

    Bad input raises tidal.InputError: the caller gets 422 with the message, not a 500.
    """
    for i, row in enumerate(rows):
        where = f'"{field}"' if field == "pixels" else f'"{field}"[{i}]'
        if not isinstance(row, list) or len(row) != PIXELS:
            got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
            raise tidal.InputError(
                f"{where} must be a list of 64 numbers (an 8x8 image, row by row); got {got}"
            )
    try:
        images = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        raise tidal.InputError(f'"{field}" must hold numbers only (64 per image, each 0..16)') from None
    if not np.all(np.isfinite(images)) or images.min() < 0 or images.max() > 16:
        raise tidal.InputError(f'"{field}" values must be numbers in 0..16')
    return images


@tidal.function(name="digits", memory=256, concurrency=8)
class Digits:
    def setup(self) -> None:
        if not MODEL_PATH.exists():
            raise RuntimeError(f"{MODEL_PATH} is missing: run `python examples/digits/train.py` first")
        self.model = joblib.load(MODEL_PATH)

    def __call__(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict) or ("pixels" in payload) == ("images" in payload):
            raise tidal.InputError('send {"pixels": [64 numbers 0..16]} or {"images": [[64 numbers], ...]}')
        if "pixels" in payload:
            images = _as_images([payload["pixels"]], "pixels")
            return {"digit": int(self.model.predict(images)[0])}
        images = payload["images"]
        if not isinstance(images, list) or not images:
            raise tidal.InputError('"images" must be a non-empty list of images of 64 numbers 0..16')
        if len(images) > MAX_BATCH:
            raise tidal.InputError(f'"images" holds {len(images)} images; at most {MAX_BATCH} per request')
        return {"digits": [int(d) for d in self.model.predict(_as_images(images, "images"))]}
