"""Nothing billed is lost: each activation record is appended to a journal file before its answer
is sent, folded into the store in batches, and replayed at the next start if the gateway died first.

A segment is a file preallocated with ``posix_fallocate`` and mapped into memory (MAP_SHARED); a
record is a copy of a length-prefixed msgpack frame into the mapping, the payload first and its
length last, so a reader sees whole frames only. No system call per record (an ``os.write`` per
record cost as much again as the encode): the bytes are in the kernel's page cache as soon as
they are copied, so a ``kill -9`` of the gateway cannot lose them (a power cut can: there is no
fsync per call, which would cost milliseconds). Preallocation means a full disk fails the
segment's creation (the recorder then keeps records in memory), never a write into the mapping
(which would be a SIGBUS).

The journal is a series of segments in ``STATE_DIR/journal``; ``rotate`` finishes the current one
(trimmed to what was written) as the recorder takes a batch, and the recorder (or the folder
process, tidal.metering.folder) deletes finished segments once their records are in the store. A
segment that fills up is finished early and handed over at the next ``rotate``. ``replay`` at
start stores what the segments hold (INSERT OR REPLACE by activation id: replaying twice is
harmless) and deletes them.

Frame: 4 bytes little-endian length, then the msgpack of the Activation (a map by field name, so a
record written before a field was added still decodes, with the field's default). A length of 0
ends a segment: the untouched, zero-filled rest of one that was never trimmed (the gateway died).
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from tidal.store.models import Activation

log = logging.getLogger("tidal.metering")

SUFFIX = ".jnl"
LENGTH_BYTES = 4
REPLAY_BATCH = 2000
SEGMENT_BYTES = 2 * 1024 * 1024  # about 4,700 echo records (440 bytes each); a larger record gets its own


class ActivationJournal:
    def __init__(self, folder: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder = folder
        self.segment_bytes = segment_bytes
        self._encode = msgspec.msgpack.Encoder().encode
        self._sequence = 0
        self._segment: tuple[Path, int, mmap.mmap] | None = None  # path, descriptor, mapping
        self._offset = 0  # where the next frame goes in the current segment
        self._finished: list[Path] = []  # filled up since the last rotate
        self._failing = False  # a failed segment is logged once, not once per call

    def append(self, activation: Activation) -> bool:
        """Write one record (about 1 us: an encode and a copy); False when no segment could be made
        (disk full): logged, and the recorder keeps the record in memory instead."""
        payload = self._encode(activation)
        start = self._offset + LENGTH_BYTES
        end = start + len(payload)
        segment = self._segment
        if segment is None or end > len(segment[2]):
            segment = self._next_segment(end - self._offset)
            if segment is None:
                return False
            start, end = LENGTH_BYTES, LENGTH_BYTES + len(payload)
        mapping = segment[2]
        mapping[start:end] = payload
        mapping[start - LENGTH_BYTES : start] = len(payload).to_bytes(LENGTH_BYTES, "little")  # last
        self._offset = end
        return True

    def _next_segment(self, frame_bytes: int) -> tuple[Path, int, mmap.mmap] | None:
        """Finish the current segment (if any) and open a new one with room for ``frame_bytes``."""
        if self._segment is not None:
            self._finish()
        # time_ns first: segments sort in the order they were written, across restarts too.
        self._sequence += 1
        path = self.folder / f"{time.time_ns():020d}-{os.getpid()}-{self._sequence:06d}{SUFFIX}"
        size = max(self.segment_bytes, frame_bytes)
        descriptor = -1
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.posix_fallocate(descriptor, 0, size)
            mapping = mmap.mmap(descriptor, size)
        except OSError as exc:
            if descriptor >= 0:
                os.close(descriptor)
                path.unlink(missing_ok=True)
            if not self._failing:
                log.error("activation journal %s: %s; records are kept in memory only", path, exc)
                self._failing = True
            return None
        self._failing = False
        self._segment, self._offset = (path, descriptor, mapping), 0
        return self._segment

    def _finish(self) -> None:
        """Close the current segment, trimmed to its frames (deleted when it holds none)."""
        assert self._segment is not None
        path, descriptor, mapping = self._segment
        self._segment = None
        mapping.close()
        try:
            if self._offset:
                os.ftruncate(descriptor, self._offset)
                self._finished.append(path)
            else:
                path.unlink(missing_ok=True)
        finally:
            os.close(descriptor)
        self._offset = 0

    def rotate(self) -> list[Path]:
        """Finish the current segment; the segments finished since the last call, oldest first."""
        if self._segment is not None and self._offset:
            self._finish()  # the next append opens a new one
        finished, self._finished = self._finished, []
        return finished

    def close(self) -> None:
        """Finish the current segment (deleted if nothing was written to it)."""
        if self._segment is not None:
            self._finish()


def read_segment(path: Path) -> list[Activation]:
    """The records of one segment. A torn last frame (a write cut by a crash of the machine) and
    frames that do not decode are skipped and logged."""
    decode = msgspec.msgpack.Decoder(Activation).decode
    data = path.read_bytes()
    view = memoryview(data)  # frames decoded in place, not copied out first
    records: list[Activation] = []
    offset = 0
    while offset + LENGTH_BYTES <= len(data):
        size = int.from_bytes(view[offset : offset + LENGTH_BYTES], "little")
        if size == 0:  # the zero-filled rest of a segment its gateway did not finish
            return records
        end = offset + LENGTH_BYTES + size
        if end > len(data):
            break
        try:
            records.append(decode(view[offset + LENGTH_BYTES : end]))
        except msgspec.DecodeError as exc:
            log.error("activation journal %s: skipping a record at byte %d: %s", path, offset, exc)
        offset = end
    if offset != len(data):
        log.warning(
            "activation journal %s: ignoring a torn record (%d bytes) at its end", path, len(data) - offset
        )
    return records


def segments(folder: Path) -> list[Path]:
    """The journal's segments, oldest first."""
    return sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []


def replay(folder: Path, store: Callable[[list[Activation]], None], keep: Path | None = None) -> int:
    """Store every record the segments in ``folder`` hold (except the segment ``keep``: the one
    this process writes), then delete them; how many records were stored."""
    stored = 0
    for path in segments(folder):
        if path == keep:
            continue
        try:  # a folder left by a killed gateway may fold (and delete) the same segment meanwhile
            records = read_segment(path)
        except FileNotFoundError:
            continue
        for start in range(0, len(records), REPLAY_BATCH):
            store(records[start : start + REPLAY_BATCH])
        stored += len(records)
        path.unlink(missing_ok=True)
    return stored
