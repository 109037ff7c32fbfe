"""The journal folder: a process of its own that stores finished journal segments, so the gateway's
event loop only appends records to the journal (tidal.metering.journal) and never pays for the
store's insert (about 5-20 us of CPU per record, most of it holding the GIL the event loop needs).

Run by the gateway as ``python -m tidal.metering.folder`` (tidal.metering.folding starts, feeds and
restarts it). Protocol, one line each way per segment, in order:

* gateway -> folder: the segment's absolute path;
* folder -> gateway: a ``FoldAnswer`` as JSON: stored (its records are in the store and the file
  is deleted) or refused with why (the file stays; the gateway sends it again later), and in both
  cases the counts of its records for /metrics (tidal.observability.stats), so that the gateway
  counts nothing per request. The gateway adds a segment's counts once, however often it is sent.

Storing is idempotent (INSERT OR REPLACE by activation id) and a missing file was already stored
(segments are deleted only after that), so a segment folded twice, by this process and by a
restarted one or the gateway's own fallback, is harmless. End of input (the gateway stopped, or
died) ends the process once the segments already sent are folded. Ctrl-C in the terminal reaches
the whole process group: this process ignores it and ends with the gateway's input instead.

The store: ``TIDAL_FOLDER_STORE`` (an environment variable, so a PostgreSQL URL's password is not
on a command line), a SQLite path or a state URL (``postgresql://...``).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

from tidal.metering.journal import read_segment, store_rows
from tidal.observability.stats import InvocationStats, RevisionSeries
from tidal.store.models import ActivationRow
from tidal.store.open import open_store
from tidal.store.protocols import ActivationStore
from tidal.store.sqlite import SQLiteStore

log = logging.getLogger("tidal.metering.folder")

STORE_ENV = "TIDAL_FOLDER_STORE"
NICENESS = 5  # under a saturated CPU the hot path goes first; folding waits (and batches grow)


class FoldAnswer(msgspec.Struct, omit_defaults=True):
    """What became of one journal segment: the folder's answer line (JSON), or the gateway's own
    fold when no folder runs."""

    path: str
    stored: bool  # its records are in the store and the file is gone; False: refused, kept
    why: str = ""  # refused: what the store (or reading the file) said
    # Its records counted for /metrics, per (function, revision). Empty when the file was already
    # gone (folded before: its counts went with that answer, unless a folder died between storing
    # and answering, whose records are then billed but not in /metrics) or could not be read.
    counts: list[tuple[str, str, RevisionSeries]] = []


def fold_segment(path: Path, store: Callable[[list[ActivationRow]], None]) -> FoldAnswer:
    """Store the records of the segment at ``path`` and delete it, counting them. Refused (the file
    kept, to be sent again) when the store fails or the file cannot be read; never raises.
    ``store``: the store's ``add_activation_rows``."""
    try:
        rows = read_segment(path)
    except FileNotFoundError:
        return FoldAnswer(str(path), stored=True)  # someone folded it already
    except Exception as exc:
        log.exception("reading %s failed", path)
        return FoldAnswer(str(path), stored=False, why=_why(exc))
    counted = InvocationStats()
    counted.count_rows(rows)
    try:
        store_rows(rows, store)
    except Exception as exc:  # the store is down or locked
        log.exception("storing the records of %s failed", path)
        return FoldAnswer(str(path), stored=False, why=_why(exc), counts=counted.series())
    path.unlink(missing_ok=True)
    return FoldAnswer(str(path), stored=True, counts=counted.series())


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def open_folder_store(location: str) -> ActivationStore:
    """The store the gateway uses: a state URL (PostgreSQL), else the path of its SQLite file."""
    if "://" in location:
        return open_store(location, Path.cwd())  # the state dir matters to SQLite only
    return SQLiteStore(Path(location))


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cycle collector off while a segment is folded. A fold allocates a tuple per record
    (thousands a segment), which triggered collections that walked them all, one in twenty of the
    folder's instructions; it makes no reference cycles (records are tuples of numbers and
    strings), so nothing waits to be collected. Between folds the collector runs as usual."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def serve(lines: list[str] | None = None) -> int:
    """Fold each segment named on stdin, answering on stdout; returns at end of input."""
    store = open_folder_store(os.environ[STORE_ENV])
    encode, out = msgspec.json.Encoder().encode, sys.stdout.buffer
    try:
        for line in sys.stdin if lines is None else lines:
            name = line.rstrip("\n")
            if not name:
                continue
            with collector_paused():
                answer = fold_segment(Path(name), store.add_activation_rows)
            out.write(encode(answer) + b"\n")  # JSON escapes newlines: one line an answer
            out.flush()
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
    return 0


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if STORE_ENV not in os.environ:
        print(f"{STORE_ENV} is not set: which store should the journal be folded into?", file=sys.stderr)
        return 2
    try:
        return serve()
    except BrokenPipeError:  # the gateway is gone; what is unfolded is replayed at its next start
        return 0


if __name__ == "__main__":
    sys.exit(main())
