"""A process's fd 1/2 is a pipe drained into a capped, rotated file, whatever the process writes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tidal.backends.logsink import LogSink, RotatingFile

MiB = 1024 * 1024
# Writes to fd 1 and 2 directly, as C libraries do: no Python wrapper could cap this.
FLOOD = """
import os
chunk = b"x" * 65535 + b"\\n"
for _ in range(480):  # 30 MiB
    os.write(1, chunk)
os.write(2, b"the end\\n")
"""


def wait_closed(sink: LogSink, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while sink.open_paths() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not sink.open_paths(), "the sink still holds a pipe whose process exited"


def test_a_30_mib_flood_to_fd_1_leaves_at_most_two_capped_files(tmp_path: Path) -> None:
    sink = LogSink(max_bytes=4 * MiB)
    log = tmp_path / "instance.log"
    write_end = sink.open(log)
    try:
        process = subprocess.run(
            [sys.executable, "-c", FLOOD], stdout=write_end, stderr=write_end, timeout=60
        )
    finally:
        os.close(write_end)
    assert process.returncode == 0
    wait_closed(sink)

    files = sorted(tmp_path.iterdir())
    assert [path.name for path in files] == ["instance.log", "instance.log.1"]
    assert all(path.stat().st_size <= 4 * MiB for path in files)
    assert log.read_bytes().endswith(b"x\nthe end\n")  # the newest output is the one kept
    assert oct(log.stat().st_mode & 0o777) == "0o600"


def test_a_file_from_before_counts_toward_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "template.log"
    path.write_bytes(b"a" * 900)
    file = RotatingFile(path, max_bytes=1000)
    file.write(b"b" * 100)
    assert path.read_bytes() == b"a" * 900 + b"b" * 100
    file.write(b"c")
    file.close()
    assert path.read_bytes() == b"c"
    assert (tmp_path / "template.log.1").read_bytes() == b"a" * 900 + b"b" * 100
