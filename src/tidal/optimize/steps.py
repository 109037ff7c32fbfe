"""The steps that touch model libraries: load, prune, export to ONNX, quantize, measure.

torch, sentence-transformers and onnxruntime are imported inside the functions that need them.
Supported source today: a sentence-transformers model folder (Transformer + Pooling [+ Normalize]).
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tidal.optimize.bundle import POOLING_MODES

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx")
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ONNX_OPSET = 17


class SourceError(ValueError):
    """A SOURCE tidal cannot optimize; the message says what it expected."""


@dataclass
class SentenceModel:
    model: Any  # sentence_transformers.SentenceTransformer
    pooling: str
    max_tokens: int
    dimension: int
    input_names: list[str]
    pad: tuple[int, str]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' and quantizer's warnings: the report says what matters."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def load_sentence_model(folder: Path, threads: int) -> SentenceModel:
    if not (folder / "modules.json").is_file():
        raise SourceError(
            f"{folder} is not a sentence-transformers model folder (no modules.json); "
            "tidal optimize supports those today"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the folder holds everything: never ask a hub
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    torch.set_num_threads(threads)
    from sentence_transformers import SentenceTransformer

    with quiet():
        model = SentenceTransformer(str(folder), device="cpu")
    model.eval()
    kinds = [type(module).__name__ for module in model]
    unsupported = [kind for kind in kinds[1:] if kind not in ("Pooling", "Normalize")]
    if not kinds or not hasattr(model[0], "auto_model") or unsupported:
        raise SourceError(f"{folder}: modules {kinds}; supported: Transformer, Pooling, Normalize")
    pooling = next((str(m.pooling_mode) for m in model if hasattr(m, "pooling_mode")), "mean")
    if pooling not in POOLING_MODES:
        raise SourceError(f"{folder}: pooling {pooling!r}; supported: {', '.join(POOLING_MODES)}")
    tokenizer = model.tokenizer
    names = [name for name in TEXT_INPUTS if name in tokenizer("probe")]
    measure_dimension = (
        getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    )
    dimension = int(measure_dimension() or 0)
    pad = (int(tokenizer.pad_token_id or 0), str(tokenizer.pad_token or "[PAD]"))
    max_tokens = int(model.max_seq_length or 512)
    return SentenceModel(model, pooling, max_tokens, dimension, names, pad)


def weights_size(folder: Path) -> int:
    """Bytes of the model's weight files under ``folder`` (91 MB for MiniLM's model.safetensors)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def torch_embed(source: SentenceModel) -> Callable[[list[str]], np.ndarray]:
    import torch

    def embed(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return np.asarray(source.model.encode(texts, normalize_embeddings=True, batch_size=32))

    return embed


def prune_linear(source: SentenceModel, fraction: float) -> int:
    """L1-unstructured pruning of every Linear layer's weight, made permanent; the layer count."""
    import torch
    from torch.nn.utils import prune

    layers = [m for m in source.model.modules() if isinstance(m, torch.nn.Linear)]
    for layer in layers:
        prune.l1_unstructured(layer, name="weight", amount=fraction)
        prune.remove(layer, "weight")  # the mask is folded into the weight: a plain tensor again
    return len(layers)


def export_onnx(source: SentenceModel, path: Path) -> None:
    """The transformer alone (token states out; pooling runs in main.py), batch and sequence dynamic.

    The TorchScript exporter (``dynamo=False``): on torch 2.13 it exports MiniLM in about 2 s and
    names nodes after the module path, which the precision fallbacks rely on.
    """
    import torch

    class TokenStates(torch.nn.Module):
        def __init__(self, model: Any, names: list[str]) -> None:
            super().__init__()
            self.model, self.names = model, names

        def forward(self, *inputs: Any) -> Any:
            return self.model(**dict(zip(self.names, inputs, strict=True))).last_hidden_state

    encoded = source.model.tokenizer(["a probe sentence", "two"], padding=True, return_tensors="pt")
    example = tuple(encoded[name] for name in source.input_names)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*source.input_names, "last_hidden_state"]}
    wrapper = TokenStates(source.model[0].auto_model, source.input_names).eval()
    with quiet(), torch.inference_mode():
        torch.onnx.export(
            wrapper, example, str(path), input_names=source.input_names,
            output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False,
        )  # fmt: skip


def matmul_names(path: Path) -> list[str]:
    import onnx

    return [
        node.name
        for node in onnx.load(str(path), load_external_data=False).graph.node
        if node.op_type == "MatMul"
    ]


def quantize_dynamic_int8(source: Path, target: Path, keep_float: tuple[str, ...]) -> None:
    """Int8 weights (per output channel), activations quantized on the fly per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        quantize_dynamic(
            str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
            nodes_to_exclude=list(keep_float),
        )  # fmt: skip


def quantize_static_int8(
    source: Path, target: Path, keep_float: tuple[str, ...], model: SentenceModel, calibration: list[str]
) -> None:
    """Int8 weights and activations, the activations' ranges fixed from ``calibration`` texts."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Texts(CalibrationDataReader):
        def __init__(self) -> None:
            self.remaining = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            text = next(self.remaining, None)
            if text is None:
                return None
            encoded = model.model.tokenizer(
                [text], truncation=True, max_length=model.max_tokens, return_tensors="np"
            )
            return {name: encoded[name].astype(np.int64) for name in model.input_names}

    with quiet():
        quantize_static(
            str(source), str(target), Texts(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=list(keep_float),
            op_types_to_quantize=["MatMul", "Gather"],
        )  # fmt: skip


def zero_fraction(path: Path) -> float:
    """The fraction of zeros among the model's weight matrices (initializers of rank 2)."""
    import onnx
    from onnx import numpy_helper

    zeros = total = 0
    for tensor in onnx.load(str(path)).graph.initializer:
        if len(tensor.dims) == 2:
            values = numpy_helper.to_array(tensor)
            zeros += int(values.size - np.count_nonzero(values))
            total += int(values.size)
    return zeros / total if total else 0.0


def p50_ms(embed: Callable[[list[str]], Any], texts: list[str], min_calls: int = 64) -> float:
    """Median milliseconds of one call with one text, cycling over ``texts`` (3 warm-up calls)."""
    for text in texts[:3]:
        embed([text])
    timings: list[float] = []
    while len(timings) < max(min_calls, len(texts)):
        for text in texts:
            started = time.perf_counter()
            embed([text])
            timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)
