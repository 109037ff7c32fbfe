"""The deployable folder ``tidal optimize`` writes: model.onnx, tokenizer.json, and a main.py that
serves them with tidal under the same contract as ``examples/embed``:

    {"texts": ["...", ...]} -> {"embeddings": [[floats], ...], "model": "..."}

main.py is self-contained (numpy, onnxruntime, tokenizers): the artifact does not depend on
``tidal.optimize``. The optimizer imports the written main.py to measure agreement and latency,
so the numbers in the report are those of the code that will serve.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from string import Template
from types import ModuleType

POOLING_MODES = ("mean", "cls", "max")

MAIN_TEMPLATE = Template('''\
"""Sentence embeddings written by `tidal optimize`: $description.

    {"texts": ["...", ...]} -> {"embeddings": [[$dimension floats], ...], "model": "..."}

Deploy with `tidal deploy .`; report.json holds the measurements. ``EMBED_THREADS`` (default 1)
sets onnxruntime's intra-op threads; scale out with instances and ``concurrency`` instead.
"""

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

import tidal

HERE = Path(__file__).resolve().parent
MODEL_ID = $model_id
POOLING = $pooling
MAX_TOKENS = $max_tokens
PAD_ID, PAD_TOKEN = $pad_id, $pad_token
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


def pool_normalize(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pool the real tokens (attention mask) as the original model did, then L2-normalize rows."""
    if POOLING == "cls":
        pooled = hidden[:, 0]
    elif POOLING == "max":
        pooled = np.where(mask[:, :, None] > 0, hidden, -1e9).max(axis=1)
    else:
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


class OnnxEmbedder:
    def __init__(self, folder: Path = HERE, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=PAD_ID, pad_token=PAD_TOKEN)  # to the longest text

    def embed(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        feed = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        inputs = {name: array for name, array in feed.items() if name in self.input_names}
        (hidden,) = self.session.run(["last_hidden_state"], inputs)
        return pool_normalize(hidden, feed["attention_mask"])


# load_once: the template loads the (read-only) model once; instances fork with it in memory.
@tidal.function(name=$name, memory=1024, concurrency=4, load_once=True)
class Embed:
    def setup(self) -> None:
        self.embedder = OnnxEmbedder(HERE, int(os.environ.get("EMBED_THREADS", "1")))

    def __call__(self, payload: Any) -> dict[str, Any]:
        return {"embeddings": self.embedder.embed(check_texts(payload)).tolist(), "model": MODEL_ID}
''')


def render_main(
    name: str, model_id: str, pooling: str, max_tokens: int, dimension: int, pad: tuple[int, str],
    description: str,
) -> str:  # fmt: skip
    """main.py's source; every value is written as a Python literal (repr), never spliced as code."""
    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling {pooling!r} is not one of {POOLING_MODES}")
    return MAIN_TEMPLATE.substitute(
        name=repr(name), model_id=repr(model_id), pooling=repr(pooling), max_tokens=int(max_tokens),
        dimension=int(dimension), pad_id=int(pad[0]), pad_token=repr(pad[1]), description=description.replace('"""', "'''"),
    )  # fmt: skip


def load_main(folder: Path) -> ModuleType:
    """Import ``folder/main.py`` under a private name (its @tidal.function only registers a spec)."""
    module_name = f"_tidal_optimized_{abs(hash(str(folder)))}"
    spec = importlib.util.spec_from_file_location(module_name, folder / "main.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {folder / 'main.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and typing look the module up by name
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(module_name, None)
    return module
