"""The activation journal: appended before the answer, folded into the store by the recorder's
batches (segments deleted only once stored), replayed at start, torn tails tolerated."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import msgspec

from tidal.metering.folder import fold_segment
from tidal.metering.journal import ActivationJournal, read_segment, replay, segments
from tidal.metering.recorder import ActivationRecorder
from tidal.store import Activation, SQLiteStore


def record(number: int) -> Activation:
    return Activation(
        id=f"j{number:05d}", function="echo", revision="echo-00001", instance="i1", start=1000.0 + number,
        duration_ms=1.5, billed_ms=2, memory_mb=128, cold=False, status="ok", http_status=200,
        trigger="job", job="job-1", gpus=0.5,
    )  # fmt: skip


class FlakyStore:
    """Stores batches, or fails while ``failing``."""

    def __init__(self) -> None:
        self.stored: list[Activation] = []
        self.failing = False

    def add_activations(self, activations: Iterable[Activation]) -> None:
        if self.failing:
            raise OSError("disk I/O error")
        self.stored.extend(activations)

    def add_rejections(self, counts: object) -> None:
        pass


def test_records_survive_in_the_journal_and_replay_once_into_the_store(
    tmp_path: Path, store: SQLiteStore
) -> None:
    journal = ActivationJournal(tmp_path / "journal")
    for number in range(3):
        journal.append(record(number))
    # The process dies here: no flush, no close. The next start replays the segment.
    assert replay(tmp_path / "journal", store.add_activation_rows) == 3
    assert store.activation("j00002") == record(2)  # every field, the job and GPUs too
    assert segments(tmp_path / "journal") == []
    assert replay(tmp_path / "journal", store.add_activation_rows) == 0


def test_a_torn_last_record_is_skipped_and_the_rest_replayed(tmp_path: Path) -> None:
    journal = ActivationJournal(tmp_path / "journal")
    journal.append(record(1))
    journal.append(record(2))
    (path,) = journal.rotate()  # trimmed to its two frames
    data = path.read_bytes()
    path.write_bytes(data[:-5])  # a write cut short (only a machine crash can do this)
    assert [Activation(*row) for row in read_segment(path)] == [record(1)]


def test_records_of_any_size_in_any_order_read_back_whole(tmp_path: Path) -> None:
    """Each record is encoded into one buffer kept between appends: a short record after a long
    one (logs) must carry none of the long one's bytes, and one longer than the buffer grows it."""
    journal = ActivationJournal(tmp_path / "journal")
    written = [record(1), record(2), record(3), record(4)]
    written[1].logs = "x" * 5000  # far past the buffer's first size
    written[2].error_message = "short"
    for activation in written:
        assert journal.append(activation)
    (path,) = journal.rotate()
    assert [Activation(*row) for row in read_segment(path)] == written


def segment(*records: bytes, finished: bool = True) -> bytes:
    """A segment in the journal's format: the array's header (zeros until finished), then each
    record's length and the record."""
    header = bytes([0xDD]) + (2 * len(records)).to_bytes(4, "big") if finished else bytes(5)
    return header + b"".join(bytes([0xCE]) + len(item).to_bytes(4, "big") + item for item in records)


def test_a_finished_segment_reads_back_exactly_what_was_appended(tmp_path: Path) -> None:
    journal = ActivationJournal(tmp_path / "journal")
    for number in range(1, 4):
        journal.append(record(number))
    (path,) = journal.rotate()
    assert path.read_bytes() == segment(
        *(msgspec.msgpack.encode(msgspec.structs.astuple(record(n))) for n in (1, 2, 3))
    )
    assert [Activation(*row) for row in read_segment(path)] == [record(1), record(2), record(3)]


def test_records_of_other_tidal_versions_still_replay(tmp_path: Path, store: SQLiteStore) -> None:
    folder = tmp_path / "journal"
    folder.mkdir()
    # The format before this one (.jnl): 4-byte little-endian lengths, records as maps by field name.
    legacy = msgspec.msgpack.encode(record(1))
    (folder / f"{1:020d}-1-000001.jnl").write_bytes(len(legacy).to_bytes(4, "little") + legacy + bytes(64))
    # A record from before the fields after `trigger` existed (those get their defaults), in a segment
    # whose gateway died before finishing it (no header, the zero-filled rest of the file after it).
    short = msgspec.structs.astuple(record(2))[: Activation.__struct_fields__.index("trigger") + 1]
    unfinished = segment(msgspec.msgpack.encode(short), finished=False) + bytes(4096)
    (folder / f"{2:020d}-1-000001.jnl2").write_bytes(unfinished)
    assert replay(folder, store.add_activation_rows) == 2
    assert store.activation("j00001") == record(1)
    assert store.activation("j00002") == msgspec.structs.replace(record(2), job="", gpus=0.0)
    assert segments(folder) == []


def test_a_finished_segment_of_the_release_before_cold_detail_is_stored_and_counted(
    tmp_path: Path, store: SQLiteStore
) -> None:
    """Finished by a gateway of the release before ``cold_detail`` (one field fewer a record): the
    one decode of the whole segment fails, the records are read one by one with the default."""
    cold = msgspec.structs.replace(record(1), cold=True)
    older = [msgspec.structs.astuple(item)[:-1] for item in (cold, record(2))]
    path = tmp_path / f"{1:020d}-1-000001.jnl2"
    path.write_bytes(segment(*(msgspec.msgpack.encode(item) for item in older)))
    answer = fold_segment(path, store.add_activation_rows)
    assert answer.stored and store.activation("j00001") == cold and store.activation("j00002") == record(2)
    ((_, _, counted),) = answer.counts
    assert counted.calls == {"ok": 2} and counted.cold_starts == {"unknown": 1}  # its kind was not kept


def test_a_record_of_the_wrong_shape_is_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / f"{1:020d}-1-000001.jnl2"
    good = msgspec.msgpack.encode(msgspec.structs.astuple(record(1)))
    path.write_bytes(segment(msgspec.msgpack.encode(["j00009", "echo"]), good))
    assert [Activation(*row) for row in read_segment(path)] == [record(1)]


async def test_the_recorder_deletes_a_segment_only_once_its_batch_is_stored(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    store = FlakyStore()
    recorder = ActivationRecorder(store, journal=ActivationJournal(folder))  # type: ignore[arg-type]
    recorder.record(record(1))
    store.failing = True
    await recorder.flush()  # the store fails: the record stays pending and its segment stays
    recorder.record(record(2))
    assert len(segments(folder)) == 2  # the finished segment and the current one
    store.failing = False
    await recorder.flush()
    assert [item.id for item in store.stored] == ["j00001", "j00002"]
    assert segments(folder) == []  # the next record opens the next segment
    assert recorder.journal is not None
    recorder.journal.close()
    assert segments(folder) == []


def test_journal_append_cost(tmp_path: Path) -> None:
    """Not a pass/fail timing: prints what one append costs (encode + a copy into the mapping)."""
    journal = ActivationJournal(tmp_path / "journal")
    item, rounds = record(1), 20_000
    encode = msgspec.msgpack.Encoder().encode
    started = time.perf_counter_ns()
    for _ in range(rounds):
        journal.append(item)
    per_append = (time.perf_counter_ns() - started) / rounds
    started = time.perf_counter_ns()
    for _ in range(rounds):
        encode(item)
    per_encode = (time.perf_counter_ns() - started) / rounds
    print(f"\njournal append: {per_append:.0f} ns per record (of which msgpack encode {per_encode:.0f} ns)")
    assert sum(len(read_segment(path)) for path in segments(tmp_path / "journal")) == rounds
    journal.close()
