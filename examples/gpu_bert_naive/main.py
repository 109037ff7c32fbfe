"""The same MiniLM-sized BERT as examples/gpu_bert, written the way most model code is: ``setup()``
picks the device with ``torch.cuda.is_available()`` and moves the model there.

With ``load_once=True`` that ``setup()`` runs in the warm template, so on a GPU host it
initialises CUDA there, and a forked child could not use the GPU (`Cannot re-initialize CUDA in
forked subprocess`). tidal sees it (``torch.cuda.is_initialized()`` in the template), drops the
template and starts each instance as a fresh process instead: it still answers, on the GPU, but
every cold start pays the imports and the build again. `tidal status gpu_bert_naive` says why.
examples/gpu_bert shows the fast way (``setup_instance()``). On a host without a GPU both fork.

    tidal deploy examples/gpu_bert_naive
"""

import os
import zlib
from typing import Any

import torch

torch.set_num_threads(1)

from transformers import BertConfig, BertModel  # noqa: E402

import tidal  # noqa: E402

SHAPE = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}
CLS, SEP, FIRST_WORD_ID = 101, 102, 1000


def token_ids(text: str, vocab_size: int) -> list[int]:
    words = text.lower().split()[:30]
    return [CLS, *(FIRST_WORD_ID + zlib.crc32(w.encode()) % (vocab_size - FIRST_WORD_ID) for w in words), SEP]


@tidal.function(name="gpu_bert_naive", gpu=1, load_once=True, memory=8192, concurrency=4, timeout=120)
class GpuBertNaive:
    def setup(self) -> None:
        torch.manual_seed(0)
        self.model = BertModel(BertConfig(**SHAPE)).eval()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"  # the usual idiom
        self.model.to(self.device)  # on a GPU host this initialises CUDA in the template

    def __call__(self, payload: Any) -> dict[str, Any]:
        texts = payload.get("texts") if isinstance(payload, dict) else None
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise tidal.InputError('send {"texts": ["a sentence", ...]}: a non-empty list of strings')
        rows = [token_ids(text, self.model.config.vocab_size) for text in texts]
        width = max(len(row) for row in rows)
        ids = torch.tensor([row + [0] * (width - len(row)) for row in rows], device=self.device)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
        return {
            "embeddings": pooled.float().cpu().tolist(),
            "device": str(next(self.model.parameters()).device),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "pid": os.getpid(),
        }
