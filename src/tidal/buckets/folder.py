"""The local-folder bucket store: ``ROOT/NAME/KEY`` files, written atomically.

A put writes ``ROOT/NAME/.tidal/tmp-*`` and renames it over the key, so a reader (or the trigger's
scan) never sees half an object. Every path is checked after resolving symlinks: a key whose real
path leaves the bucket folder (a symlink planted inside it) is refused like a ``..`` key.
The ETag is the MD5 of the content in hex, as S3 gives for a single-part upload.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tidal.buckets.keys import RESERVED_PREFIX, check_key, check_prefix
from tidal.triggers.model import BUCKET_NAME

CHUNK = 1024 * 1024


class BucketError(ValueError):
    """A bad bucket name or key, or a path that escapes the bucket: the caller's fault (400)."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    modified: float  # epoch s
    modified_ns: int  # the scan's cursor compares these

    def document(self) -> dict[str, object]:
        return {"key": self.key, "size": self.size, "etag": self.etag, "modified": self.modified}


def etag_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class FolderBuckets:
    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, bucket: str, create: bool = False) -> Path:
        if not BUCKET_NAME.match(bucket):
            raise BucketError(f"bucket {bucket!r}: 1-63 lowercase letters, digits, '.', '_' or '-'")
        folder = self.root / bucket
        if create:  # private to the gateway's user: function code gets events, never these files
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            folder.mkdir(exist_ok=True, mode=0o700)
        return folder

    def path(self, bucket: str, key: str, create: bool = False) -> Path:
        """The file of ``key``, checked to lie inside the bucket after resolving symlinks."""
        try:
            check_key(key)
        except ValueError as exc:
            raise BucketError(str(exc)) from None
        folder = self.folder(bucket, create)
        path = folder / key
        real_folder = folder.resolve()
        if not path.resolve().is_relative_to(real_folder):
            raise BucketError(f"object key {key!r} leads outside the bucket (through a symlink)")
        return path

    def put(self, bucket: str, key: str, data: bytes) -> ObjectInfo:
        path = self.path(bucket, key, create=True)
        if path.is_dir():
            raise BucketError(f"object key {key!r} names a folder of other objects")
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.parent.resolve().is_relative_to(self.folder(bucket).resolve()):
            raise BucketError(f"object key {key!r} leads outside the bucket (through a symlink)")
        scratch = self.folder(bucket) / RESERVED_PREFIX
        scratch.mkdir(exist_ok=True, mode=0o700)
        descriptor, temporary = tempfile.mkstemp(dir=scratch, prefix="tmp-")
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return self.stat(bucket, key, hashlib.md5(data, usedforsecurity=False).hexdigest())

    def stat(self, bucket: str, key: str, etag: str | None = None) -> ObjectInfo:
        path = self.path(bucket, key)
        status = path.stat()  # FileNotFoundError: no such object
        if not path.is_file():
            raise FileNotFoundError(key)
        return ObjectInfo(key, status.st_size, etag or etag_of(path), status.st_mtime, status.st_mtime_ns)

    def get(self, bucket: str, key: str) -> bytes:
        path = self.path(bucket, key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return path.read_bytes()

    def delete(self, bucket: str, key: str) -> bool:
        path = self.path(bucket, key)
        if not path.is_file():
            return False
        path.unlink()
        return True

    def list(self, bucket: str, prefix: str = "", with_etags: bool = True) -> list[ObjectInfo]:
        """The bucket's objects under ``prefix``, by key; symlinks and tidal's own files left out."""
        try:
            check_prefix(prefix)
        except ValueError as exc:
            raise BucketError(str(exc)) from None
        folder = self.folder(bucket)
        if not folder.is_dir():
            return []
        found = []
        for directory, subdirectories, files in os.walk(folder):  # does not follow symlinked dirs
            base = Path(directory)
            if base == folder:
                subdirectories[:] = [name for name in subdirectories if name != RESERVED_PREFIX]
            for name in files:
                path = base / name
                key = path.relative_to(folder).as_posix()
                if not key.startswith(prefix) or path.is_symlink():
                    continue
                try:
                    status = path.stat()
                    etag = etag_of(path) if with_etags else ""
                except OSError:  # removed while listed
                    continue
                found.append(ObjectInfo(key, status.st_size, etag, status.st_mtime, status.st_mtime_ns))
        return sorted(found, key=lambda item: item.key)
