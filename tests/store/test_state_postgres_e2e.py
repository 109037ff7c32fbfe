"""`tidal up --state postgresql://...`: a real gateway keeps its state in PostgreSQL, a second one
on another state dir serves what the first deployed before it started, with the first's admin key;
a --state that names no PostgreSQL, or one that does not answer, is a one-line error."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from conftest import TIDAL, TidalServer, cli_env
from paths import EXAMPLES


def up(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TIDAL, "up", "--port", "0", *args], capture_output=True, text=True, env=cli_env(), timeout=60
    )


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ("mysql://root@127.0.0.1/tidal", "expected a postgresql:// URL"),
        (
            "postgresql://postgres@127.0.0.1:1/test",
            "PostgreSQL at postgresql://postgres@127.0.0.1:1/test does not answer",
        ),
    ],
)
def test_a_bad_state_url_is_a_clear_error(tmp_path: Path, state: str, message: str) -> None:
    result = up("--state-dir", str(tmp_path / "state"), "--state", state)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_second_gateway_serves_what_the_first_deployed(
    postgres_state_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = TidalServer(tmp_path / "one" / "state"), TidalServer(tmp_path / "two" / "state")
    for server in (first, second):
        server.state_dir.parent.mkdir()
    try:
        first.start("--state", postgres_state_url)
        assert first.deploy(EXAMPLES / "echo.py").returncode == 0
        key = first.admin_key
        headers = {"authorization": f"Bearer {key}"}
        answer = httpx.post(f"{first.url}/fn/echo", json={"n": 1}, headers=headers, timeout=60)
        assert answer.status_code == 200 and answer.json() == {"n": 1}

        # Another host, in effect: its own state dir, code dir and admin key file; the same store.
        monkeypatch.setenv("TIDAL_STATE", postgres_state_url)  # the option's environment variable
        second.start()
        assert second.admin_key != key  # each gateway has its own; all of them are in the store
        answer = httpx.post(f"{second.url}/fn/echo", json={"n": 2}, headers=headers, timeout=60)
        assert answer.status_code == 200 and answer.json() == {"n": 2}
        listed = httpx.get(f"{second.url}/v1/functions", headers=headers, timeout=10).json()
        assert [function["name"] for function in listed["functions"]] == ["echo"]
    finally:
        first.stop()
        second.stop()
