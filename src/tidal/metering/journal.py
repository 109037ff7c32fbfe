"""Nothing billed is lost: each activation record is appended to a journal file before its answer
is sent, folded into the store in batches, and replayed at the next start if the gateway died first.

A record is one ``os.write`` of a length-prefixed msgpack frame to a file opened with O_APPEND: the
bytes are in the kernel's page cache when the call returns, so a ``kill -9`` of the gateway cannot
lose them (a power cut can: there is no fsync per call, which would cost milliseconds). The journal
is a series of segments in ``STATE_DIR/journal``; the recorder ``rotate``s to a new segment as it
takes a batch, and deletes the old segments once the batch is in the store. ``replay`` at start
stores what the segments hold (INSERT OR REPLACE by activation id: replaying twice is harmless)
and deletes them.

Frame: 4 bytes little-endian length, then the msgpack of the Activation (a map by field name, so a
record written before a field was added still decodes, with the field's default).
"""

from __future__ import annotations

import logging
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


class ActivationJournal:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder = folder
        self._encode = msgspec.msgpack.Encoder().encode
        self._sequence = 0
        self._path, self._fd = self._open()
        self._written = False
        self._failing = False  # a failed write is logged once, not once per call

    def _open(self) -> tuple[Path, int]:
        # time_ns first: segments sort in the order they were written, across restarts too.
        self._sequence += 1
        path = self.folder / f"{time.time_ns():020d}-{os.getpid()}-{self._sequence:06d}{SUFFIX}"
        return path, os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def append(self, activation: Activation) -> None:
        """Write one record (about 2 us: an encode and a write syscall). A failed write (disk full)
        is logged; the record still reaches the store through the recorder's batch."""
        payload = self._encode(activation)
        try:
            os.write(self._fd, len(payload).to_bytes(LENGTH_BYTES, "little") + payload)
        except OSError as exc:
            if not self._failing:
                log.error(
                    "activation journal %s: write failed (%s); records are kept in memory only",
                    self._path,
                    exc,
                )
                self._failing = True
            return
        self._failing = False
        self._written = True

    def rotate(self) -> Path | None:
        """Start a new segment; the finished one's path, or None when nothing was written to it."""
        if not self._written:
            return None
        finished = self._path
        os.close(self._fd)
        self._path, self._fd = self._open()
        self._written = False
        return finished

    def close(self) -> None:
        """Close the current segment, and delete it if nothing was written to it."""
        os.close(self._fd)
        if not self._written:
            self._path.unlink(missing_ok=True)


def read_segment(path: Path) -> list[Activation]:
    """The records of one segment. A torn last frame (a write cut by a crash of the machine) and
    frames that do not decode are skipped and logged."""
    decode = msgspec.msgpack.Decoder(Activation).decode
    data = path.read_bytes()
    records, offset = [], 0
    while offset + LENGTH_BYTES <= len(data):
        size = int.from_bytes(data[offset : offset + LENGTH_BYTES], "little")
        end = offset + LENGTH_BYTES + size
        if end > len(data):
            break
        try:
            records.append(decode(data[offset + LENGTH_BYTES : end]))
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
        records = read_segment(path)
        for start in range(0, len(records), REPLAY_BATCH):
            store(records[start : start + REPLAY_BATCH])
        stored += len(records)
        path.unlink()
    return stored
