"""The sandbox a template enters, checked in a real child process in both modes, and the plan
the gateway makes for it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tidal.backends.isolation import Isolation, SandboxMode, function_uid, instance_env

PROBE = """
import json, os, sys
from tidal.runtime.sandbox import SandboxPlan, enter
import msgspec
plan = msgspec.json.decode(sys.argv[1], type=SandboxPlan)
if sys.argv[2] == "as-nobody":  # an ordinary user's gateway: drop root first (modules are loaded)
    os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
enter(plan)
def read(path):
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError as exc:
        return type(exc).__name__
with open("/tmp/scratch", "w") as file:
    file.write("mine")
print(json.dumps({
    "uid": os.getuid(), "cwd": os.getcwd(),
    "key": read(sys.argv[3] + "/admin.key"), "own": read(sys.argv[3] + "/code/own/main.py"),
    "other": read(sys.argv[3] + "/code/other/main.py"), "scratch": read("/tmp/scratch"),
}))
"""


@pytest.fixture
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("sandbox") / "state"
    for name in ("own", "other"):
        (state / "code" / name).mkdir(parents=True)
        (state / "code" / name / "main.py").write_text(f"# {name} code\n")
    (state / "admin.key").write_text("tidal_secret\n")
    return state


def run_probe(state: Path, mode: SandboxMode, as_nobody: bool) -> dict[str, object]:
    isolation = Isolation(state, mode)
    isolation.prepare_code(str(state / "code" / "own"))
    if as_nobody:  # the ordinary user must reach its own files, as a real one would
        for path in [state, *state.parents]:
            if str(path).startswith("/tmp/"):
                os.chmod(path, 0o755)
        for folder, _, files in os.walk(state / "code"):
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o644)
    plan = isolation.plan("fn", str(state / "code" / "own"))
    assert plan is not None
    import msgspec

    result = subprocess.run(
        [sys.executable, "-c", PROBE, msgspec.json.encode(plan).decode(), "as-nobody" if as_nobody else "-", str(state)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.mark.skipif(os.geteuid() != 0, reason="the users mode needs root (CI runs as root)")
def test_users_mode_hides_the_state_and_other_code_and_changes_uid(state: Path) -> None:
    seen = run_probe(state, SandboxMode.USERS, as_nobody=False)
    assert seen["uid"] == function_uid(state.resolve(), "fn") and seen["uid"] != 0
    assert seen["cwd"] == str(state / "code" / "own")
    assert seen["key"] == "FileNotFoundError" and seen["other"] == "FileNotFoundError"
    assert seen["own"] == "# own code" and seen["scratch"] == "mine"
    assert not (Path("/tmp") / "scratch").exists() or (Path("/tmp") / "scratch").read_text() != "mine"


@pytest.mark.skipif(os.geteuid() != 0, reason="the probe becomes an ordinary user by dropping root")
def test_namespace_mode_gives_an_ordinary_user_the_same_view(state: Path) -> None:
    seen = run_probe(state, SandboxMode.NAMESPACE, as_nobody=True)
    assert seen["uid"] == 65534, "the namespace mode keeps the gateway's uid"
    assert seen["key"] == "FileNotFoundError" and seen["other"] == "FileNotFoundError"
    assert seen["own"] == "# own code" and seen["scratch"] == "mine"


def test_plans_and_uids(tmp_path: Path) -> None:
    state = tmp_path / "state"
    users = Isolation(state, SandboxMode.USERS)
    plan = users.plan("embed", str(state / "code" / "abc"))
    assert plan is not None and plan.uid == plan.gid == users.uid("embed")
    assert str(state.resolve()) in plan.hide or any(state.resolve().is_relative_to(h) for h in plan.hide)
    assert "/tmp" in plan.hide and "/tmp" in plan.scratch and str(state / "code" / "abc") in plan.keep
    assert not any(path == "/tmp" or Path(path) in Path("/tmp").parents for path in plan.keep)
    assert users.uid("embed") != users.uid("digits") and users.uid("embed") == Isolation(
        state, SandboxMode.USERS
    ).uid("embed")
    assert Isolation(tmp_path / "other", SandboxMode.USERS).uid("embed") != users.uid("embed")
    assert Isolation(state, SandboxMode.NAMESPACE).plan("embed", "/x").uid is None  # type: ignore[union-attr]
    assert Isolation(state, SandboxMode.OFF).plan("embed", "/x") is None


def test_instances_never_inherit_the_gateways_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDAL_API_KEY", "tidal_secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws_secret")
    env = instance_env({"MODEL": "small"}, {"TIDAL_INSTANCE": "{}"})
    assert "TIDAL_API_KEY" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["MODEL"] == "small" and env["TIDAL_INSTANCE"] == "{}" and env["TMPDIR"] == "/tmp"
