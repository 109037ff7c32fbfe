"""The pure parts of ``tidal optimize``: agreement, the verdict, the report, the plan, samples,
the generated main.py; and the CLI's answers to bad flags (no model is loaded for those)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tidal import cli
from tidal.optimize.agreement import Agreement, cosine_agreement, judge, label_agreement
from tidal.optimize.bundle import load_main, render_main
from tidal.optimize.plan import Plan, fallback_stages, function_name, plan_errors
from tidal.optimize.report import Measured, Report, pruning_note, report_json, table_rows
from tidal.optimize.samples import DEFAULT_SAMPLES, SampleError, parse_sample_lines, read_samples


def test_cosine_agreement_gives_mean_and_worst_row() -> None:
    reference = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    candidate = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # same, same (scaled), 45 degrees off
    agreement = cosine_agreement(reference, candidate)
    assert agreement.kind == "cosine" and agreement.samples == 3
    assert agreement.worst == pytest.approx(2**-0.5)
    assert agreement.mean == pytest.approx((2 + 2**-0.5) / 3)


def test_cosine_agreement_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shapes"):
        cosine_agreement(np.ones((2, 3)), np.ones((2, 4)))


def test_label_agreement_is_the_fraction_that_matches() -> None:
    agreement = label_agreement([1, 2, 3, 4], [1, 2, 3, 0])
    assert (agreement.kind, agreement.mean, agreement.worst, agreement.samples) == ("label", 0.75, 0.0, 4)


def test_judge_accepts_at_the_threshold_and_refuses_below() -> None:
    at = judge(Agreement("cosine", 0.99, 0.95, 32), 0.99)
    assert at.accepted and "meets --min-agreement 0.99" in at.reason
    below = judge(Agreement("cosine", 0.9931, 0.98, 32), 1.01)
    assert not below.accepted
    assert below.reason == "mean cosine similarity 0.9931 over 32 samples is below --min-agreement 1.01"
    assert "label agreement 0.7500" in judge(Agreement("label", 0.75, 0.0, 4), 0.9).reason


def _report(**changes: object) -> Report:
    values: dict[str, object] = dict(
        source="/models/minilm", kind="sentence-embedding", method="int8 dynamic", threads=1,
        before=Measured("torch fp32", 90_868_376, 8.2), after=Measured("onnx int8 dynamic", 22_995_189, 2.7),
        agreement=Agreement("cosine", 0.993081, 0.98423, 32), min_agreement=0.99, accepted=True,
        reason="ok",
    )  # fmt: skip
    return Report(**(values | changes))  # type: ignore[arg-type]


def test_report_ratios_json_and_table() -> None:
    report = _report()
    assert report.size_ratio == pytest.approx(3.9517, abs=1e-3)
    assert report.speedup == pytest.approx(3.037, abs=1e-3)
    data = report_json(report)
    json.dumps(data)  # serializable as written to report.json
    assert (data["size_ratio"], data["speedup"]) == (3.95, 3.04)
    assert data["agreement"] == {"kind": "cosine", "mean": 0.99308, "worst": 0.98423, "samples": 32}
    assert data["before"]["size_bytes"] == 90_868_376 and data["accepted"] is True
    rows = {row[0]: row[1:] for row in table_rows(report)}
    assert rows["size"] == ("90.9 MB", "23.0 MB", "3.95x smaller")
    assert rows["p50 latency per item (1 thread)"] == ("8.20 ms", "2.70 ms", "3.04x faster")
    assert rows["cosine similarity, mean (32 samples)"][1:] == ("0.9931", "needs >= 0.99")


def test_pruning_note_says_size_and_latency_do_not_change() -> None:
    note = pruning_note(0.3, 0.2987)
    assert "zeroed 30%" in note and "29.9%" in note
    assert "size and latency are what they would be without pruning" in note


def test_plan_errors_name_each_bad_flag() -> None:
    fine = Plan(source=Path("m"), out=Path("o"))
    assert plan_errors(fine, out_is_nonempty=False) == []
    bad = Plan(
        Path("m"), Path("o"), int8=False, static=True, prune=1.5, min_agreement=0, threads=0, name="Bad Name"
    )
    errors = "\n".join(plan_errors(bad, out_is_nonempty=True))
    for expected in ("--prune takes a fraction in [0, 1), not 1.5", "--static chooses how to quantize",
                     "--static needs calibration inputs", "--min-agreement must be positive",
                     "--threads must be at least 1", "--name 'Bad Name' is not a function name",
                     "o exists and is not empty"):  # fmt: skip
        assert expected in errors
    calibrate_alone = Plan(Path("m"), Path("o"), calibrate=Path("c.jsonl"))
    assert plan_errors(calibrate_alone, False) == ["--calibrate is for static quantization: add --static"]
    assert Plan(Path("m"), Path("o"), static=True).method == "int8 static"
    assert Plan(Path("m"), Path("o"), int8=False).method == "fp32"


def test_function_name_from_the_output_folder() -> None:
    assert function_name("MiniLM-int8") == "minilm-int8"
    assert function_name("my model.v2") == "my_model_v2"
    assert function_name("2024") == "optimized_2024"
    assert function_name("...") == "optimized"


def test_fallback_stages_keep_ffn_matmuls_in_fp32_step_by_step() -> None:
    names = []
    for layer in range(2):
        prefix = f"/model/encoder/layer.{layer}"
        names += [f"{prefix}/attention/self/query/MatMul", f"{prefix}/attention/output/dense/MatMul",
                  f"{prefix}/intermediate/dense/MatMul", f"{prefix}/output/dense/MatMul"]  # fmt: skip
    stages = fallback_stages(names)
    assert [stage.label for stage in stages] == [
        "all MatMuls int8", "2 FFN output MatMuls kept fp32", "4 FFN MatMuls kept fp32"
    ]  # fmt: skip
    assert stages[1].keep_float == (
        "/model/encoder/layer.0/output/dense/MatMul",
        "/model/encoder/layer.1/output/dense/MatMul",
    )
    assert fallback_stages(["/fc1/MatMul", "/fc2/MatMul"]) == stages[:1]


def test_samples_file_lines_strings_or_objects() -> None:
    lines = ['"first"', "", '{"text": "second", "id": 7}']
    assert parse_sample_lines(lines, "--samples s.jsonl") == ["first", "second"]
    with pytest.raises(SampleError, match=r"--samples s.jsonl, line 2: not JSON"):
        parse_sample_lines(['"ok"', "{nope"], "--samples s.jsonl")
    with pytest.raises(SampleError, match=r"line 1: want a string"):
        parse_sample_lines(['{"label": 3}'], "--samples s.jsonl")
    with pytest.raises(SampleError, match="holds no samples"):
        parse_sample_lines(["", " "], "--samples s.jsonl")
    assert read_samples(None, "--samples") == list(DEFAULT_SAMPLES)
    with pytest.raises(SampleError, match="cannot read it"):
        read_samples(Path("/nonexistent/samples.jsonl"), "--samples")


def test_generated_main_pools_like_the_original(tmp_path: Path) -> None:
    source = render_main(
        "minilm-int8", "minilm-int8-dynamic", "mean", 256, 384, (0, "[PAD]"), 'a """quoted""" model'
    )
    compile(source, "main.py", "exec")
    assert "name='minilm-int8'" in source and "MAX_TOKENS = 256" in source
    (tmp_path / "main.py").write_text(source)
    module = load_main(tmp_path)
    hidden = np.array([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]])  # the third token is padding: it must not count
    assert np.allclose(module.pool_normalize(hidden, mask), [[1.0, 0.0]])
    with pytest.raises(ValueError, match="pooling"):
        render_main("x", "x", "weighted", 256, 384, (0, "[PAD]"), "x")


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.app, ["optimize", *args], env={"COLUMNS": "250"})
    return result.exit_code, result.output


def test_cli_answers_bad_flags_with_a_message(tmp_path: Path) -> None:
    code, output = run_cli(
        str(tmp_path / "missing"), "--int8", "--out", str(tmp_path / "o"), "--prune", "1.5"
    )
    assert code == 1, output
    assert "is not a folder" in output and "--prune takes a fraction" in output
    assert "Traceback" not in output and not (tmp_path / "o").exists()

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    code, output = run_cli(str(tmp_path), "--int8", "--static", "--out", str(tmp_path / "taken"))
    assert code == 1 and "--static needs calibration inputs" in output and "is not empty" in output


def test_cli_refuses_a_folder_that_is_no_sentence_transformers_model(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    samples = tmp_path / "s.jsonl"
    samples.write_text('"one"\nnot json\n')
    code, output = run_cli(
        str(tmp_path / "model"), "--int8", "--out", str(tmp_path / "o"), "--samples", str(samples)
    )
    assert code == 1 and "line 2: not JSON" in output
    code, output = run_cli(str(tmp_path / "model"), "--int8", "--out", str(tmp_path / "o"))
    assert code == 1 and "not a sentence-transformers model folder" in output
    assert not (tmp_path / "o").exists()
