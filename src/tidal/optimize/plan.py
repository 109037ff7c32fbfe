"""What one ``tidal optimize`` run will do, decided before any model is loaded (pure).

Checks the flags, names the deployed function, and lists the precision fallbacks tried when the
fully quantized model misses ``--min-agreement``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tidal.spec import NAME_PATTERN


@dataclass(frozen=True)
class Plan:
    source: Path
    out: Path
    int8: bool = True
    static: bool = False
    calibrate: Path | None = None
    prune: float = 0.0
    min_agreement: float = 0.99
    samples: Path | None = None
    threads: int = 1
    name: str | None = None

    @property
    def method(self) -> str:
        if not self.int8:
            return "fp32"
        return "int8 static" if self.static else "int8 dynamic"


@dataclass(frozen=True)
class Stage:
    """One quantization attempt: which MatMul nodes stay fp32 (none for the first)."""

    label: str
    keep_float: tuple[str, ...]


def plan_errors(plan: Plan, out_is_nonempty: bool) -> list[str]:
    """Every reason the flags cannot work, each a sentence a user can act on (empty: fine)."""
    errors = []
    if not 0.0 <= plan.prune < 1.0:
        errors.append(f"--prune takes a fraction in [0, 1), not {plan.prune:g}")
    if plan.static and not plan.int8:
        errors.append("--static chooses how to quantize: pass it with --int8")
    if plan.static and plan.calibrate is None:
        errors.append("--static needs calibration inputs: --calibrate samples.jsonl")
    if plan.calibrate is not None and not plan.static:
        errors.append("--calibrate is for static quantization: add --static")
    if plan.min_agreement <= 0.0:
        errors.append(f"--min-agreement must be positive, not {plan.min_agreement:g}")
    if plan.threads < 1:
        errors.append(f"--threads must be at least 1, not {plan.threads}")
    if plan.name is not None and not NAME_PATTERN.match(plan.name):
        errors.append(f"--name {plan.name!r} is not a function name ({NAME_PATTERN.pattern})")
    if out_is_nonempty:
        errors.append(f"{plan.out} exists and is not empty: choose another --out or remove it")
    return errors


def function_name(out_dir_name: str) -> str:
    """The deployed function's default name, from the output folder: ``MiniLM-int8`` -> ``minilm-int8``."""
    name = re.sub(r"[^a-z0-9_-]+", "_", out_dir_name.lower()).strip("_-")[:63]
    return name if NAME_PATTERN.match(name) else f"optimized_{name}"[:63].rstrip("_-") or "optimized"


# BERT-style layer names as torch.onnx names the MatMuls: the feed-forward block's two projections
# carry the widest activations (after GELU), so they lose most to 8-bit activations; they go first.
FFN_OUTPUT = re.compile(r"/layer\.\d+/output/dense/MatMul$")
FFN_INTERMEDIATE = re.compile(r"/layer\.\d+/intermediate/dense/MatMul$")


def fallback_stages(matmul_names: list[str]) -> list[Stage]:
    """All MatMuls int8 first; then the FFN output projections fp32; then both FFN projections.

    A model whose names match neither pattern gets only the first stage.
    """
    ffn_output = tuple(name for name in matmul_names if FFN_OUTPUT.search(name))
    ffn_both = ffn_output + tuple(name for name in matmul_names if FFN_INTERMEDIATE.search(name))
    stages = [Stage("all MatMuls int8", ())]
    if ffn_output:
        stages.append(Stage(f"{len(ffn_output)} FFN output MatMuls kept fp32", ffn_output))
    if len(ffn_both) > len(ffn_output):
        stages.append(Stage(f"{len(ffn_both)} FFN MatMuls kept fp32", ffn_both))
    return stages
