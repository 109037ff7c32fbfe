"""The journal folder: a process of its own that stores finished journal segments, so the gateway's
event loop only appends records to the journal (tidal.metering.journal) and never pays for the
store's insert (about 5-20 us of CPU per record, most of it holding the GIL the event loop needs).

Run by the gateway as ``python -m tidal.metering.folder`` (tidal.metering.folding starts, feeds and
restarts it). Protocol, one line each way per segment, in order:

* gateway -> folder: the segment's absolute path;
* folder -> gateway: ``+ PATH`` once its records are stored and the file deleted, or ``! PATH why``
  when the store refused them (the file stays; the gateway sends it again later).

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

from tidal.metering.journal import store_segment
from tidal.store.models import ActivationRow
from tidal.store.open import open_store
from tidal.store.protocols import ActivationStore
from tidal.store.sqlite import SQLiteStore

log = logging.getLogger("tidal.metering.folder")

STORE_ENV = "TIDAL_FOLDER_STORE"
FOLDED, REFUSED = "+", "!"
NICENESS = 5  # under a saturated CPU the hot path goes first; folding waits (and batches grow)


def fold_segment(path: Path, store: Callable[[list[ActivationRow]], None]) -> int:
    """Store the records of the segment at ``path`` and delete it; how many it held (0 when the
    file is gone: someone folded it already). ``store``: the store's ``add_activation_rows``."""
    try:
        stored = store_segment(path, store)
    except FileNotFoundError:
        return 0
    path.unlink(missing_ok=True)
    return stored


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
    try:
        for line in sys.stdin if lines is None else lines:
            name = line.rstrip("\n")
            if not name:
                continue
            try:
                with collector_paused():
                    fold_segment(Path(name), store.add_activation_rows)
            except Exception as exc:  # the store is down or locked: the gateway retries later
                log.exception("folding %s failed", name)
                answer = f"{REFUSED} {name} {type(exc).__name__}: {exc}".replace("\n", " ")
            else:
                answer = f"{FOLDED} {name}"
            sys.stdout.write(answer + "\n")
            sys.stdout.flush()
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
