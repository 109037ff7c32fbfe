"""The journal folder: a process of its own stores the journal's segments and counts their records
for /metrics; ``flush`` returns once what was recorded before it is stored and counted; a folder
killed with SIGKILL loses nothing and is started again; a store that refuses a segment leaves it
for the next flush, and its records are counted once."""

from __future__ import annotations

import asyncio
import gc
import io
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

import msgspec
import pytest

from tidal.metering import folder as folder_process
from tidal.metering.folder import FoldAnswer
from tidal.metering.folding import FolderExited, JournalFolder
from tidal.metering.journal import ActivationJournal, segments
from tidal.metering.recorder import ActivationRecorder
from tidal.observability.stats import InvocationStats
from tidal.store import Activation, SQLiteStore
from tidal.store.models import ActivationRow


def record(number: int) -> Activation:
    return Activation(
        id=f"f{number:05d}", function="echo", revision="echo-00001", instance="i1", start=1000.0 + number,
        duration_ms=1.5, billed_ms=2, memory_mb=128, cold=False, status="ok", http_status=200,
        key_id="k1", model="m",
    )  # fmt: skip


async def test_the_folder_process_stores_segments_and_a_killed_one_loses_nothing(tmp_path: Path) -> None:
    database = tmp_path / "tidal.db"
    store = SQLiteStore(database)
    journal = ActivationJournal(tmp_path / "journal")
    folder = JournalFolder(str(database), store.add_activation_rows)
    recorder = ActivationRecorder(store, journal=journal, folder=folder)
    stats = InvocationStats()
    recorder.count_into(stats)
    running = asyncio.create_task(folder.run())
    try:
        for number in range(100):
            recorder.record(record(number))
        assert recorder._pending == []  # journaled only: nothing kept in the gateway's memory
        await recorder.flush()  # before the folder is up, or through it: either way, stored
        while not folder.running:
            await asyncio.sleep(0.01)
        for number in range(100, 200):
            recorder.record(record(number))
        await recorder.flush()
        assert len(store.activations("echo", limit=1000)) == 200
        assert store.activation("f00150") == record(150)  # every field, as recorded
        assert segments(tmp_path / "journal") == []

        assert folder._process is not None
        os.kill(folder._process.pid, signal.SIGKILL)
        for number in range(200, 300):
            recorder.record(record(number))
        with pytest.raises(FolderExited):  # the supervisor starts it again
            await running
        await recorder.flush()  # no folder: folded here
        assert len(store.activations("echo", limit=1000)) == 300

        running = asyncio.create_task(folder.run())
        while not folder.running:
            await asyncio.sleep(0.01)
        recorder.record(record(300))
        await recorder.flush()
        assert store.activation("f00300") == record(300)
        # Counted by the folder process, by the gateway while none ran: each record once.
        series = stats.revisions[("echo", "echo-00001")]
        assert series.calls == {"ok": 301} and series.billed_ms == 2 * 301 and sum(series.counts) == 301
    finally:
        running.cancel()
        with pytest.raises((asyncio.CancelledError, FolderExited)):
            await running
    assert not folder.running
    journal.close()
    store.close()


class RefusingStore:
    def __init__(self) -> None:
        self.refuse = True
        self.stored: list[ActivationRow] = []

    def add_activation_rows(self, rows: Iterable[ActivationRow]) -> None:
        if self.refuse:
            raise OSError("database is locked")
        self.stored.extend(rows)


class Answers:
    """The folder's stdout: its answers, read back."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()

    def read(self) -> list[FoldAnswer]:
        lines = self.buffer.getvalue().splitlines()
        self.buffer.seek(0)
        self.buffer.truncate()
        return [msgspec.json.decode(line, type=FoldAnswer) for line in lines]


def test_a_refused_segment_is_answered_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = ActivationJournal(tmp_path / "journal")
    failed_cold = msgspec.structs.replace(record(2), status="error", cold=True, cold_detail="fork")
    journal.append(record(1))
    journal.append(failed_cold)
    (path,) = journal.rotate()
    store = RefusingStore()
    monkeypatch.setenv(folder_process.STORE_ENV, str(tmp_path / "unused.db"))
    monkeypatch.setattr(folder_process, "open_folder_store", lambda location: store)
    answers = Answers()
    monkeypatch.setattr(sys, "stdout", answers)
    folder_process.serve([f"{path}\n"])
    (refused,) = answers.read()
    assert (refused.path, refused.stored, refused.why) == (str(path), False, "OSError: database is locked")
    ((function, revision, counted),) = refused.counts  # counted all the same: the calls happened
    assert (function, revision, counted.calls, counted.cold_starts) == (
        "echo", "echo-00001", {"ok": 1, "error": 1}, {"fork": 1}
    )  # fmt: skip
    assert path.exists()  # kept: the gateway sends it again with its next flush
    store.refuse = False
    folder_process.serve([f"{path}\n", f"{path}\n"])  # twice: the second finds it stored already
    stored, again = answers.read()
    assert (stored.stored, stored.counts) == (True, refused.counts)
    assert (again.stored, again.counts) == (True, [])
    assert [Activation(*row) for row in store.stored] == [record(1), failed_cold]
    assert not path.exists()


async def test_the_gateway_counts_a_refused_then_stored_segment_once(tmp_path: Path) -> None:
    """The gateway adds a segment's counts with its first answer, refused or not, and never again."""
    journal = ActivationJournal(tmp_path / "journal")
    for number in range(3):
        journal.append(record(number))
    (path,) = journal.rotate()
    store = RefusingStore()
    folder = JournalFolder("unused", store.add_activation_rows)  # not started: folds here
    stats = InvocationStats()
    folder.counted = stats.add
    await folder.fold([path])  # refused: counted, kept
    assert stats.revisions[("echo", "echo-00001")].calls == {"ok": 3} and path.exists()
    await folder.fold([])  # sent again (refused again)
    store.refuse = False
    await folder.fold([])  # stored at last
    assert stats.revisions[("echo", "echo-00001")].calls == {"ok": 3}
    assert not path.exists() and len(store.stored) == 3


def test_a_fold_runs_with_the_cycle_collector_paused_and_resumes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paused while a segment is stored, running again after it, a refused one included."""
    collecting: list[bool] = []
    store = RefusingStore()
    real_add = store.add_activation_rows

    def add(rows: Iterable[ActivationRow]) -> None:
        collecting.append(gc.isenabled())
        real_add(rows)

    monkeypatch.setattr(store, "add_activation_rows", add)
    monkeypatch.setenv(folder_process.STORE_ENV, str(tmp_path / "unused.db"))
    monkeypatch.setattr(folder_process, "open_folder_store", lambda location: store)
    monkeypatch.setattr(sys, "stdout", Answers())
    journal = ActivationJournal(tmp_path / "journal")
    journal.append(record(1))
    (path,) = journal.rotate()
    folder_process.serve([f"{path}\n"])  # refused
    assert collecting == [False] and gc.isenabled()
    store.refuse = False
    folder_process.serve([f"{path}\n"])
    assert collecting == [False, False] and gc.isenabled()
    assert [Activation(*row) for row in store.stored] == [record(1)]


async def test_a_segment_the_disk_cannot_hold_leaves_records_in_memory(tmp_path: Path) -> None:
    database = tmp_path / "tidal.db"
    store = SQLiteStore(database)
    journal = ActivationJournal(tmp_path / "journal", segment_bytes=1 << 60)  # no disk holds it
    recorder = ActivationRecorder(
        store, journal=journal, folder=JournalFolder(str(database), store.add_activation_rows)
    )
    stats = InvocationStats()
    recorder.count_into(stats)
    recorder.record(record(1))  # preallocation fails: kept in memory, stored by the gateway
    assert segments(tmp_path / "journal") == []
    assert stats.revisions[("echo", "echo-00001")].calls == {"ok": 1}  # counted as it is kept
    await recorder.flush()
    assert store.activation("f00001") == record(1)
    assert stats.revisions[("echo", "echo-00001")].calls == {"ok": 1}  # and only then
    journal.close()
    store.close()


async def test_journaled_records_wait_for_the_fold_interval_and_a_flush(tmp_path: Path) -> None:
    """Journaled records are safe on disk: the writer folds them every ``fold_interval_s``, not
    every ``interval_s``; a reader's flush stores them at once."""
    database = tmp_path / "tidal.db"
    store = SQLiteStore(database)
    journal = ActivationJournal(tmp_path / "journal")
    folder = JournalFolder(str(database), store.add_activation_rows)  # not started: folds here
    recorder = ActivationRecorder(store, interval_s=0.01, journal=journal, folder=folder, fold_interval_s=60)
    writer = asyncio.create_task(recorder.run())
    try:
        recorder.record(record(1))
        await asyncio.sleep(0.3)  # thirty times interval_s
        assert store.activations("echo") == [] and len(segments(tmp_path / "journal")) == 1
        await recorder.flush()
        assert store.activation("f00001") == record(1)
        # A reader's flush (a /metrics scrape) restarts the wait: the next fold is a whole interval away.
        assert 59 < recorder.next_flush_in() <= 60 and not recorder.flush_due()
    finally:
        writer.cancel()
        journal.close()
        store.close()


@pytest.mark.parametrize("folded", [True, False], ids=["disk-full", "no-folder"])
async def test_records_kept_in_memory_are_written_every_interval_not_every_fold(
    tmp_path: Path, folded: bool
) -> None:
    """A full disk, or no folder: the records wait in the gateway's memory, where a kill would lose
    them, so the writer stores them every ``interval_s`` however long the fold interval."""
    database = tmp_path / "tidal.db"
    store = SQLiteStore(database)
    if folded:  # no disk holds such a segment: the journal fails
        journal = ActivationJournal(tmp_path / "journal", segment_bytes=1 << 60)
        folder: JournalFolder | None = JournalFolder(str(database), store.add_activation_rows)
    else:  # journaled, and kept in memory to be stored from here
        journal, folder = ActivationJournal(tmp_path / "journal"), None
    recorder = ActivationRecorder(store, interval_s=0.01, journal=journal, folder=folder, fold_interval_s=60)
    recorder.record(record(1))  # kept in memory
    writer = asyncio.create_task(recorder.run())
    try:
        async with asyncio.timeout(10):  # not 60
            while store.activation("f00001") is None:
                await asyncio.sleep(0.01)
        recorder.record(record(2))  # after a flush, still to memory
        async with asyncio.timeout(10):
            while store.activation("f00002") is None:
                await asyncio.sleep(0.01)
    finally:
        writer.cancel()
        journal.close()
        store.close()


async def test_the_journal_benchmark_switch_deletes_segments_unstored(tmp_path: Path) -> None:
    """TIDAL_METRICS=journal (``discard_journaled``): records are journaled as ever, and a flush
    deletes the finished segments instead of storing or counting them; records the journal could
    not take (kept in memory) are still stored."""
    database = tmp_path / "tidal.db"
    store = SQLiteStore(database)
    journal = ActivationJournal(tmp_path / "journal")
    folder = JournalFolder(str(database), store.add_activation_rows)  # not started: would fold here
    recorder = ActivationRecorder(store, journal=journal, folder=folder)
    stats = InvocationStats()
    recorder.count_into(stats)
    recorder.discard_journaled()
    recorder.record(record(1))
    assert len(segments(tmp_path / "journal")) == 1
    await recorder.flush()
    assert segments(tmp_path / "journal") == [] and store.activations("echo") == [] and not stats.revisions
    journal.segment_bytes = 1 << 60  # the next segment cannot be made: the record stays in memory
    recorder.record(record(2))
    await recorder.flush()
    assert [activation.id for activation in store.activations("echo")] == ["f00002"]
    journal.close()
    store.close()
