"""Instance and template output on disk, capped: 10 MiB a file and one rotated ``.1``.

User code, and the C libraries it loads, write to fd 1 and 2 directly, so nothing inside a process
can cap a file that the process holds open itself. Here a process never holds its log file: its
fd 1 and 2 are the write end of a pipe (``open_log``), and the gateway keeps the read end. One
thread of the gateway (``LogSink``) drains every such pipe through one selector into the file; a
write that would take the file past ``max_bytes`` first renames it to ``NAME.1`` (replacing the
previous one), so a process leaves at most 2 x 10 MiB on disk however much it writes.

Cheap: one thread for all processes, 64 KiB reads, no per-line work, and the event loop never
touches these files. A process that writes faster than the disk takes blocks in write() once its
pipe is full: a flood costs the writer, not the gateway. The sink closes a pipe at EOF, when every
process holding its write end has exited; when the gateway exits the read ends go with it, and a
process still writing gets EPIPE (instances exit with their gateway anyway). Files are 0600: the
gateway's, never readable by the instances (which may run under other uids).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import threading
from pathlib import Path

log = logging.getLogger("tidal.backends.logs")

MAX_LOG_FILE_BYTES = 10 * 1024 * 1024
READ_BYTES = 64 * 1024


class RotatingFile:
    """An append-only file that never passes ``max_bytes``: the older half moves to ``NAME.1``."""

    def __init__(self, path: Path, max_bytes: int = MAX_LOG_FILE_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._fd = self._open()
        self.size = os.fstat(self._fd).st_size
        self.warned = False

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def write(self, data: bytes) -> None:
        if len(data) > self.max_bytes:  # only a cap below READ_BYTES (a test's) gets here
            data = data[-self.max_bytes :]
        if self.size + len(data) > self.max_bytes:
            self.rotate()
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            self.size += written
            view = view[written:]

    def rotate(self) -> None:
        os.close(self._fd)
        try:
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        finally:
            self._fd = self._open()
            os.ftruncate(self._fd, 0)  # a file that could not be moved starts again: the cap holds
            self.size = 0

    def close(self) -> None:
        os.close(self._fd)


class LogSink:
    """Drains pipes into rotating files, in a thread of its own (started on first use)."""

    def __init__(self, max_bytes: int = MAX_LOG_FILE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._added: list[tuple[int, RotatingFile]] = []
        self._files: dict[int, RotatingFile] = {}  # read end -> its file; the sink thread's own
        self._thread: threading.Thread | None = None

    def open(self, path: Path | str) -> int:
        """A pipe whose output goes to ``path``: its write end, for the caller to hand to one process
        (as fd 1 and 2) and then close. Raises OSError if ``path`` cannot be opened.
        """
        file = RotatingFile(Path(path), self.max_bytes)
        read_end, write_end = os.pipe()  # both close-on-exec: only dup2 makes the write end a child's
        os.set_blocking(read_end, False)
        with self._lock:
            self._added.append((read_end, file))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tidal-log-sink", daemon=True)
                self._thread.start()
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")
        return write_end

    def open_paths(self) -> set[Path]:
        """The files of pipes still open (their process, or a child it left, may write)."""
        with self._lock:
            return {file.path for file in self._files.values()} | {file.path for _, file in self._added}

    def _run(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.fd == self._wake_r:
                    self._take_added()
                else:
                    self._drain(key.fd)

    def _take_added(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass
        with self._lock:
            added, self._added = self._added, []
            for read_end, file in added:
                self._files[read_end] = file
        for read_end, _ in added:
            self._selector.register(read_end, selectors.EVENT_READ)

    def _drain(self, read_end: int) -> None:
        try:
            data = os.read(read_end, READ_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        file = self._files[read_end]
        if not data:  # every writer is gone
            self._selector.unregister(read_end)
            os.close(read_end)
            with self._lock:
                del self._files[read_end]
            file.close()
            return
        try:
            file.write(data)
        except OSError as exc:  # a full disk loses output, never blocks the process writing it
            if not file.warned:
                log.warning("could not write %s (output is dropped): %s", file.path, exc)
            file.warned = True


_sink: LogSink | None = None
_sink_lock = threading.Lock()


def default_sink() -> LogSink:
    """The gateway process's one sink."""
    global _sink
    with _sink_lock:
        if _sink is None:
            _sink = LogSink()
        return _sink


def open_log(path: Path | str) -> int:
    """The write end of a pipe drained into ``path`` (capped, rotated): a process's fd 1 and 2."""
    return default_sink().open(path)
