"""`tidal up --queue`: a URL that names no Redis, or a Redis that does not answer, stops the
gateway at once with the reason (not at the first job)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import TIDAL, cli_env


def up(tmp_path: Path, queue: str) -> subprocess.CompletedProcess[str]:
    command = [TIDAL, "up", "--port", "0", "--state-dir", str(tmp_path / "state"), "--queue", queue]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=cli_env())


def test_a_queue_url_that_is_not_redis_is_refused(tmp_path: Path) -> None:
    answer = up(tmp_path, "amqp://guest@127.0.0.1/")
    assert answer.returncode != 0
    assert "--queue takes a redis:// or rediss:// URL, not 'amqp://guest@127.0.0.1/'" in answer.stderr
    assert "Traceback" not in answer.stderr


def test_a_redis_that_does_not_answer_is_named(tmp_path: Path) -> None:
    answer = up(tmp_path, "redis://127.0.0.1:1/0")
    assert answer.returncode != 0
    assert "--queue redis://127.0.0.1:1/0: Redis does not answer" in answer.stderr
    assert "Traceback" not in answer.stderr
