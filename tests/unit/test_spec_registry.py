"""One list, one place: FunctionSpec's fields are what the decorator, `tidal deploy` and the README offer.

A field added to FunctionSpec and forgotten elsewhere fails here, naming the field.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import tidal
from tidal import cli
from tidal.sdk.decorator import DECLARATION_ATTRIBUTE, SPEC_FIELDS, FunctionDeclaration
from tidal.spec import FunctionSpec, field_level, markdown_table, validate_spec

README = Path(__file__).resolve().parents[2] / "README.md"
FIELDS = list(FunctionSpec.model_fields)
# One valid value per field, as a user would write it in @tidal.function(...) or tidal.toml.
SAMPLE: dict[str, Any] = {
    "name": "sample",
    "memory": 1024,
    "cpu": 2.0,
    "gpu": 1,
    "accelerator_type": "A100",
    "resources": {"edge": 1},
    "timeout": "30s",
    "concurrency": 8,
    "min_instances": 1,
    "max_instances": 4,
    "env": {"MODE": "fast"},
    "public": True,
    "sticky_key": "user_id",
    "target_concurrency": 6,
    "stable_window": "2m",
    "panic_window": "10s",
    "panic_threshold": 3,
    "max_scale_up_rate": 10,
    "max_scale_down_rate": 4,
    "scale_down_delay": "500ms",
    "scale_to_zero_after": "5m",
    "keep_alive": "hybrid",
    "max_queue": 10,
    "load_once": True,
    "batch": {"max_size": 8, "max_wait_ms": 5, "target_p99_ms": 50},
    "max_models": 0,  # with a batch it must be 0 (a batch may mix models)
    "retries": 3,
    "max_event_age": "1h",
    "on_success": "notify",
    "on_failure": "alert",
    "triggers": [{"kind": "cron", "schedule": "*/5 * * * *", "tz": "Europe/Paris"}],
    "routes": ["GET /items/{id}", "POST /items"],
    "cors": {"origins": ["https://app.example"], "max_age": 600},
}


def test_the_decorator_list_is_the_spec() -> None:
    missing = [name for name in FIELDS if name not in SPEC_FIELDS]
    unknown = [name for name in SPEC_FIELDS if name not in FIELDS]
    assert not missing, f"add {missing} to SPEC_FIELDS in src/tidal/sdk/decorator.py"
    assert not unknown, f"SPEC_FIELDS in src/tidal/sdk/decorator.py names no spec field: {unknown}"
    assert list(SPEC_FIELDS) == FIELDS  # and in the same order


def test_the_decorator_takes_every_field_and_the_declaration_validates() -> None:
    assert set(SAMPLE) == set(FIELDS), "give the new field a sample value in SAMPLE"

    @tidal.function(**SAMPLE)
    def sample(payload: Any) -> Any:
        return payload

    declaration = getattr(sample, DECLARATION_ATTRIBUTE)
    assert isinstance(declaration, FunctionDeclaration) and declaration.spec == SAMPLE
    spec = validate_spec(declaration.spec)
    assert (spec.timeout, spec.stable_window, spec.scale_down_delay) == (30.0, 120.0, 0.5)
    assert spec.max_queue == 10 and spec.panic_window == 10.0


def test_the_decorator_refuses_what_is_not_a_field() -> None:
    with pytest.raises(TypeError, match=r"unknown spec field\(s\) \['gpus'\]"):
        tidal.function(gpus=1)


def test_every_field_has_a_description_and_a_level() -> None:
    for name, field in FunctionSpec.model_fields.items():
        assert field.description, f"FunctionSpec.{name} needs a description (it is the flag's help)"
        assert field_level(name) in ("revision", "function")


def deploy_help() -> str:
    result = CliRunner().invoke(cli.app, ["deploy", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_every_field_is_a_deploy_flag() -> None:
    flags = set(re.findall(r"--[a-z][a-z-]*", deploy_help()))
    missing = [name for name in FIELDS if "--" + name.replace("_", "-") not in flags]
    assert not missing, f"tidal deploy has no flag for {missing}"
    # Flags scripts already use keep working.
    assert {"--private", "--no-load-once", "--handler", "--style", "--entry", "--env"} <= flags


Sent = list[tuple[Path, dict[str, Any], dict[str, Any]]]  # (path, options, overrides) per deploy


class RecordingClient:
    """Stands in for tidal.client.Client: records what `tidal deploy` would send."""

    sent: Sent = []

    def __enter__(self) -> RecordingClient:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def deploy(
        self, path: Path, options: dict[str, Any], overrides: dict[str, Any], progress: object = None
    ) -> list[dict[str, Any]]:
        self.sent.append((path, options, overrides))
        return [{"function": "f", "revision": "f-00001", "created": True, "url": "/fn/f"}]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    RecordingClient.sent = []
    monkeypatch.setattr(cli, "client", RecordingClient)
    return RecordingClient.sent


def deploy(*args: str) -> Any:
    return CliRunner().invoke(cli.app, ["deploy", "main.py", *args], env={"COLUMNS": "200"})


def test_deploy_flags_become_overrides(sent: Sent) -> None:
    result = deploy(
        "--name", "f", "--memory", "1024", "--gpu", "1", "--timeout", "2m", "--panic-window", "3s",
        "--panic-threshold", "3", "--max-scale-up-rate", "10", "--max-scale-down-rate", "4",
        "--scale-down-delay", "500ms", "--scale-to-zero-after", "1h", "--env", "A=1", "--env", "B=x=y", "--private", "--no-load-once",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ((path, options, overrides),) = sent
    assert path == Path("main.py") and options["name"] == "f"
    assert overrides == {
        "memory": 1024,
        "gpu": 1,
        "timeout": 120.0,
        "panic_window": 3.0,
        "panic_threshold": 3.0,
        "max_scale_up_rate": 10.0,
        "max_scale_down_rate": 4.0,
        "scale_down_delay": 0.5,
        "scale_to_zero_after": 3600.0,
        "env": {"A": "1", "B": "x=y"},
        "public": False,
        "load_once": False,
    }
    validate_spec({"name": "f", **overrides})  # what the CLI sends, the gateway takes


def test_deploy_without_flags_overrides_nothing(sent: Sent) -> None:
    assert deploy("--public", "--load-once").exit_code == 0
    assert sent[0][2] == {"public": True, "load_once": True}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "x"], "error: --timeout takes a duration like 2s, 500ms, 5m or 1h, not 'x'"),
        (
            ["--stable-window", "1w"],
            "error: --stable-window takes a duration like 2s, 500ms, 5m or 1h, not '1w'",
        ),
        (["--env", "NOEQUALS"], "error: --env takes KEY=VALUE"),
    ],
)
def test_bad_deploy_flags_fail_before_sending(sent: Sent, args: list[str], message: str) -> None:
    result = deploy(*args)
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())
    assert sent == []


def readme_spec_table() -> str:
    """The Markdown table under README's "### The spec" heading."""
    section = README.read_text().split("\n### The spec\n", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return "\n".join(rows) + "\n"


def test_the_readme_table_is_the_spec() -> None:
    assert readme_spec_table() == markdown_table(), (
        "README.md's spec table is stale: replace it with `python -m tidal.spec --markdown`"
    )
    for name in FIELDS:
        assert f"| `{name}` |" in readme_spec_table()


def test_the_table_is_printed_by_the_spec_module() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "tidal.spec", "--markdown"], capture_output=True, text=True, check=True
    )
    assert printed.stdout == markdown_table()


def test_the_sdk_stays_free_of_pydantic() -> None:
    """`import tidal` runs in every instance's cold start: the field list must not cost a pydantic import."""
    probe = "import sys, tidal; print('pydantic' in sys.modules, 'msgspec' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert imported.stdout.split() == ["False", "False"]
