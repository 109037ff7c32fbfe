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

A segment is one msgpack array, so that the folder decodes a finished segment in one call, into
rows (``ActivationRow``: the fields in order, as the store inserts them), never building an
Activation or running Python code per record:

* bytes 0-4: the array's header (0xdd and the 32-bit count of items), written as the segment is
  finished; zeros until then;
* then, per record, two items: its length (a msgpack uint32: 0xce and 4 bytes) and the record's
  fields by position (an array: no field names to write on the hot path nor to read back). The
  length goes in after the record, so a reader never takes a partly written one.

A segment without its header (its gateway died) is read frame by frame, up to the first zero byte
where a length should be: the untouched rest of the preallocated file. So is one whose single
decode fails (a record that does not decode is then skipped and logged, the rest stored), and so
are the ``.jnl`` segments of tidal before this format (4-byte little-endian lengths, records as
maps by field name). A record written before a field was added decodes with the field's default.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from tidal.store.models import Activation, ActivationRow

log = logging.getLogger("tidal.metering")

SUFFIX = ".jnl2"  # this format; LEGACY_SUFFIX: the one before it
LEGACY_SUFFIX = ".jnl"
REPLAY_BATCH = 2000
SEGMENT_BYTES = 2 * 1024 * 1024  # about 13,000 echo records (155 bytes each); a larger record gets its own
ARRAY_HEADER = struct.Struct(">BI")  # msgpack array32: 0xdd, the count of items
LENGTH_PREFIX = struct.Struct(">BI")  # msgpack uint32: 0xce, the record's length
ARRAY32, UINT32 = 0xDD, 0xCE
HEADER_BYTES, PREFIX_BYTES = ARRAY_HEADER.size, LENGTH_PREFIX.size
LEGACY_LENGTH = struct.Struct("<I")
# Room for a record's encoding: an echo call's takes about 150 bytes. Kept small, as a bytearray cut
# below half its room is reallocated; a larger record grows it.
PAYLOAD_BUFFER_BYTES = 256
_pack_length = LENGTH_PREFIX.pack_into
_astuple = msgspec.structs.astuple

FIELDS = msgspec.structs.fields(Activation)
# A record as the one decode of a finished segment reads it: a tuple of Activation's field types.
RecordTuple: Any = tuple.__class_getitem__(tuple(field.type for field in FIELDS))
# A finished segment: [length, record, length, record, ...].
_decode_segment: Callable[[bytes], list[Any]] = msgspec.msgpack.Decoder(list[int | RecordTuple]).decode
# A record read on its own: by position too, with the defaults of fields added after it was written.
ActivationFrame = msgspec.defstruct(
    "ActivationFrame",
    [
        (field.name, field.type) if field.required else (field.name, field.type, field.default)
        for field in FIELDS
    ],
    array_like=True,
)


class ActivationJournal:
    def __init__(self, folder: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder = folder
        self.segment_bytes = segment_bytes
        self._encode_into = msgspec.msgpack.Encoder().encode_into
        self._payload = bytearray(PAYLOAD_BUFFER_BYTES)  # each record is encoded here, then copied
        self._sequence = 0
        self._segment: tuple[Path, int, mmap.mmap] | None = None  # path, descriptor, mapping
        # The current segment's mapping, apart: ``append`` reads it on every call. Empty without a
        # segment: the first append opens one.
        self._mapping: mmap.mmap | bytearray = bytearray()
        self._offset = 0  # where the next frame goes in the current segment
        self._records = 0  # in the current segment
        self._finished: list[Path] = []  # filled up since the last rotate
        self._failing = False  # a failed segment is logged once, not once per call

    @property
    def failing(self) -> bool:
        """The last segment could not be made (disk full): records go to memory meanwhile."""
        return self._failing

    def append(self, activation: Activation) -> bool:
        """Write one record (about 7,000 instructions, 1 us: an encode and two copies); False when
        no segment could be made (disk full): logged, and the recorder keeps the record in memory.

        This runs on every call's path: the record is encoded into a buffer kept from call to call
        (no bytes object to allocate, grow and free)."""
        payload = self._payload
        self._encode_into(_astuple(activation), payload)  # the buffer now holds just this record
        size = len(payload)
        start = self._offset + PREFIX_BYTES
        mapping = self._mapping
        if start + size > len(mapping):
            if not self._next_segment(PREFIX_BYTES + size):
                return False
            start, mapping = HEADER_BYTES + PREFIX_BYTES, self._mapping
        mapping[start : start + size] = payload
        _pack_length(mapping, start - PREFIX_BYTES, UINT32, size)  # last: a reader sees whole frames
        self._offset = start + size
        self._records += 1
        return True

    def _next_segment(self, frame_bytes: int) -> bool:
        """Finish the current segment (if any) and open a new one with room for ``frame_bytes``;
        False when it could not be made."""
        if self._segment is not None:
            self._finish()
        # time_ns first: segments sort in the order they were written, across restarts too.
        self._sequence += 1
        path = self.folder / f"{time.time_ns():020d}-{os.getpid()}-{self._sequence:06d}{SUFFIX}"
        size = max(self.segment_bytes, HEADER_BYTES + frame_bytes)
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
            return False
        self._failing = False
        self._segment, self._offset, self._records = (path, descriptor, mapping), HEADER_BYTES, 0
        self._mapping = mapping
        return True

    def _finish(self) -> None:
        """Close the current segment: its header written, trimmed to its frames (deleted when it
        holds none)."""
        assert self._segment is not None
        path, descriptor, mapping = self._segment
        self._segment, self._mapping = None, bytearray()
        if self._records:
            ARRAY_HEADER.pack_into(mapping, 0, ARRAY32, 2 * self._records)  # two items a record
        mapping.close()
        try:
            if self._records:
                os.ftruncate(descriptor, self._offset)
                self._finished.append(path)
            else:
                path.unlink(missing_ok=True)
        finally:
            os.close(descriptor)
        self._offset = self._records = 0

    def rotate(self) -> list[Path]:
        """Finish the current segment; the segments finished since the last call, oldest first."""
        if self._segment is not None and self._records:
            self._finish()  # the next append opens a new one
        finished, self._finished = self._finished, []
        return finished

    def close(self) -> None:
        """Finish the current segment (deleted if nothing was written to it)."""
        if self._segment is not None:
            self._finish()


def read_segment(path: Path) -> list[ActivationRow]:
    """The records of one segment, as rows. A torn last frame (a write cut by a crash of the
    machine) and frames that do not decode are skipped and logged."""
    data = path.read_bytes()
    if path.suffix == LEGACY_SUFFIX:
        return _read_legacy(path, data)
    if data[:1] == bytes([ARRAY32]):  # finished: one decode
        try:
            return _decode_segment(data)[1::2]
        except msgspec.DecodeError:
            pass  # a record that does not decode, or a gateway that died trimming it: one by one
    return _read_frames(path, data)


def _read_frames(path: Path, data: bytes) -> list[ActivationRow]:
    decode = msgspec.msgpack.Decoder(ActivationFrame).decode
    astuple = msgspec.structs.astuple
    rows: list[ActivationRow] = []
    offset = HEADER_BYTES
    while offset + PREFIX_BYTES <= len(data):
        marker, size = LENGTH_PREFIX.unpack_from(data, offset)
        if marker != UINT32:  # 0: the zero-filled rest of a segment its gateway did not finish
            break
        start, end = offset + PREFIX_BYTES, offset + PREFIX_BYTES + size
        if end > len(data):
            break
        try:
            rows.append(astuple(decode(data[start:end])))
        except msgspec.DecodeError as exc:
            log.error("activation journal %s: skipping a record at byte %d: %s", path, offset, exc)
        offset = end
    _warn_if_torn(path, data, offset)
    return rows


def _read_legacy(path: Path, data: bytes) -> list[ActivationRow]:
    """A segment of tidal before this format: 4-byte little-endian lengths, records as maps."""
    decode = msgspec.msgpack.Decoder(Activation).decode
    rows: list[ActivationRow] = []
    offset = 0
    while offset + LEGACY_LENGTH.size <= len(data):
        (size,) = LEGACY_LENGTH.unpack_from(data, offset)
        start, end = offset + LEGACY_LENGTH.size, offset + LEGACY_LENGTH.size + size
        if size == 0 or end > len(data):
            break
        try:
            rows.append(msgspec.structs.astuple(decode(data[start:end])))
        except msgspec.DecodeError as exc:
            log.error("activation journal %s: skipping a record at byte %d: %s", path, offset, exc)
        offset = end
    _warn_if_torn(path, data, offset)
    return rows


def _warn_if_torn(path: Path, data: bytes, offset: int) -> None:
    if data[offset:].strip(b"\0"):
        log.warning(
            "activation journal %s: ignoring a torn record (%d bytes) at its end", path, len(data) - offset
        )


def segments(folder: Path) -> list[Path]:
    """The journal's segments (this format's and the one before), oldest first."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.suffix in (SUFFIX, LEGACY_SUFFIX))


def replay(folder: Path, store: Callable[[list[ActivationRow]], None], keep: Path | None = None) -> int:
    """Store every record the segments in ``folder`` hold (except the segment ``keep``: the one
    this process writes), then delete them; how many records were stored. ``store``: the store's
    ``add_activation_rows``."""
    stored = 0
    for path in segments(folder):
        if path == keep:
            continue
        try:  # a folder left by a killed gateway may fold (and delete) the same segment meanwhile
            stored += store_segment(path, store)
        except FileNotFoundError:
            continue
        path.unlink(missing_ok=True)
    return stored


def store_segment(path: Path, store: Callable[[list[ActivationRow]], None]) -> int:
    """Store the records of the segment at ``path`` (FileNotFoundError when it is gone); how many."""
    rows = read_segment(path)
    store_rows(rows, store)
    return len(rows)


def store_rows(rows: list[ActivationRow], store: Callable[[list[ActivationRow]], None]) -> None:
    """Store ``rows`` (a segment's) in batches of ``REPLAY_BATCH``."""
    for start in range(0, len(rows), REPLAY_BATCH):
        store(rows[start : start + REPLAY_BATCH])
