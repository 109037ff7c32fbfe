"""A MiniLM-sized BERT on a GPU, loaded the fork-safe way (`tidal deploy examples/gpu_bert`).

    {"texts": ["...", ...]} -> {"embeddings": [[384 floats], ...], "device": "cuda:0", ...}

The pattern for GPU models with warm templates: ``setup()`` builds the model on the CPU, once, in
the template (``load_once=True``), and never initialises CUDA there; ``setup_instance()`` runs in
each instance after it is forked, sees only the instance's own GPU (CUDA_VISIBLE_DEVICES) and
moves the model there. A cold start is then a fork plus ``.to("cuda")`` (measured on an H200:
0.35-0.8 s) instead of a fresh interpreter importing torch and building the model (14-20 s).
This is what Modal's snapshot ``enter`` hooks do. Without a GPU the model stays on the CPU.

The weights are a random init from a transformers config (MiniLM's shape: 6 layers, hidden 384),
seeded so every instance holds the same; words are hashed to token ids, so nothing is downloaded.
The answer says where it ran (``device``, ``cuda_visible_devices``, ``pid``), for bench/gpu_check.py.
"""

import os
import zlib
from typing import Any

import torch

torch.set_num_threads(1)  # a process that ran a multi-threaded torch op cannot fork safely

from transformers import BertConfig, BertModel  # noqa: E402

import tidal  # noqa: E402

MAX_TEXTS = 256
MAX_TOKENS = 32
SHAPE = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}
CLS, SEP, FIRST_WORD_ID = 101, 102, 1000


def build_model() -> BertModel:
    torch.manual_seed(0)  # the same weights in every process that builds it
    model = BertModel(BertConfig(**SHAPE))
    model.eval()
    return model


def token_ids(text: str, vocab_size: int) -> list[int]:
    """[CLS] one id per word (its crc32, folded into the vocabulary) [SEP]: deterministic, no tokenizer."""
    words = text.lower().split()[: MAX_TOKENS - 2]
    return [CLS, *(FIRST_WORD_ID + zlib.crc32(w.encode()) % (vocab_size - FIRST_WORD_ID) for w in words), SEP]


def check_texts(payload: Any) -> list[str]:
    texts = payload.get("texts") if isinstance(payload, dict) else None
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise tidal.InputError('send {"texts": ["a sentence", ...]}: a non-empty list of strings')
    if len(texts) > MAX_TEXTS:
        raise tidal.InputError(f'"texts" holds {len(texts)} strings; at most {MAX_TEXTS} per request')
    return texts


def embed(model: BertModel, texts: list[str], device: str) -> list[list[float]]:
    """Mean-pooled last hidden states, one vector of 384 floats per text."""
    rows = [token_ids(text, model.config.vocab_size) for text in texts]
    width = max(len(row) for row in rows)
    ids = torch.tensor([row + [0] * (width - len(row)) for row in rows], device=device)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device)
    with torch.inference_mode():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
    return pooled.float().cpu().tolist()


@tidal.function(name="gpu_bert", gpu=1, load_once=True, memory=8192, concurrency=4, timeout=120)
class GpuBert:
    def setup(self) -> None:  # in the template: CPU only, shared copy-on-write by the instances
        self.model = build_model()
        self.device = "cpu"

    def setup_instance(self) -> None:  # in each instance: its own GPU, if it sees one
        if torch.cuda.is_available():
            self.device = "cuda"
            self.model.to(self.device)
        embed(self.model, ["warm up"], self.device)  # the first forward's kernels load here, not on a call

    def __call__(self, payload: Any) -> dict[str, Any]:
        vectors = embed(self.model, check_texts(payload), self.device)
        return {
            "embeddings": vectors,
            "device": str(next(self.model.parameters()).device),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "pid": os.getpid(),
        }
