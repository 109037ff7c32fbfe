"""One function, many models: digit classifiers per variant (think per-tenant fine-tunes).

    POST /fn/digits_models  {"pixels": [64 numbers in 0..16]}   header  x-tidal-model: svc | logreg | tree | knn
    -> {"digit": 7, "model": "svc"}

``max_models=2``: each instance keeps at most two of the four models loaded (least recently used
goes first), and the router sends a model's requests to an instance that already holds it, so a
request rarely pays the load. Train them first: ``.venv/bin/python examples/digits_models/train.py``
(`make setup` does).
"""

from pathlib import Path
from typing import Any

import joblib
import numpy as np

import tidal

MODELS = Path(__file__).resolve().parent / "models"
KNOWN = ("svc", "logreg", "tree", "knn")


@tidal.function(name="digits_models", max_models=2, concurrency=2, min_instances=2, max_instances=2)
class DigitsByModel:
    def load_model(self, model_id: str) -> Any:
        if model_id not in KNOWN:
            raise tidal.InputError(f"unknown model {model_id!r}; known: {', '.join(KNOWN)}")
        return joblib.load(MODELS / f"{model_id}.joblib")

    def __call__(self, payload: Any, context: tidal.Context) -> dict[str, Any]:
        pixels = payload.get("pixels") if isinstance(payload, dict) else None
        if not isinstance(pixels, list) or len(pixels) != 64:
            raise tidal.InputError('send {"pixels": [64 numbers in 0..16]}')
        digit = context.model.predict(np.asarray(pixels, dtype=float).reshape(1, -1))[0]
        return {"digit": int(digit), "model": context.model_id}
