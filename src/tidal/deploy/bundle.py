"""Code bundles: a zip of a file or folder, as the CLI uploads it and the gateway stores it.

The stored copy is what runs, so editing or deleting the source never changes a revision. The
digest covers file names and contents only (not zip timestamps), so an identical redeploy has an
identical digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import lzma
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

SKIPPED_DIRS = {
    "__pycache__",
    ".git",
    ".venv",
    "venv",
    "node_modules",
    ".mypy_cache",
    ".pytest_cache",
    ".tidal",
}
SKIPPED_SUFFIXES = {".pyc", ".pyo"}
MAX_UNPACKED_BYTES = 2 * 1024**3  # a bundle that inflates past this is refused (zip bomb)
MAX_FILES = 20_000
# Entry names: file systems refuse a name part over 255 bytes (ENAMETOOLONG) and a path over 4096,
# which the code root's own path shares.
MAX_NAME_BYTES = 1024
MAX_PART_BYTES = 255
MAX_DEPTH = 64
CHUNK_BYTES = 1024 * 1024  # members are inflated a chunk at a time: memory stays flat (zip bombs)
SUPPORTED_COMPRESSION = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
# What a corrupt member raises while it inflates: bad CRC or lying sizes (BadZipFile, EOFError),
# broken streams (zlib.error, lzma.LZMAError, OSError from bz2).
CORRUPT = (zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError)


class BundleError(ValueError):
    """The uploaded bundle is unusable; the message says why."""


def bundle_path(path: Path) -> bytes:
    """Zip a ``.py`` file or a folder (skipping caches and virtualenvs) into memory."""
    path = path.resolve()
    if not path.exists():
        raise BundleError(f"{path} does not exist")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        if path.is_file():
            if path.suffix != ".py":
                raise BundleError(f"{path} is not a .py file or a folder")
            archive.write(path, path.name)
        else:
            for file in sorted(_files(path)):
                archive.write(file, file.relative_to(path).as_posix())
    return buffer.getvalue()


def _files(root: Path) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [name for name in dirs if name not in SKIPPED_DIRS and not name.startswith(".")]
        for name in files:
            file = Path(folder) / name
            if file.suffix not in SKIPPED_SUFFIXES and not file.is_symlink():
                found.append(file)
    return found


def unpack(
    source: bytes | BinaryIO, code_root: Path, disk_left: int | None = None
) -> tuple[Path, str, list[str]]:
    """Unpack a bundle into ``code_root/<digest>`` (once per digest). Returns (dir, digest, names).

    Two streaming passes: the first inflates every member to hash it (checking CRCs and the real
    inflated size against MAX_UNPACKED_BYTES), the second writes them, only when the digest is new
    and its bytes fit ``disk_left`` (the code quota's rest; None: no quota). Nothing is held in
    memory but one chunk; a failure leaves no ``.unpack-*`` folder behind.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError):
        raise BundleError("the deploy body is not a zip archive (use `tidal deploy PATH`)") from None
    with archive:
        members = checked_members(archive.infolist())
        code_digest, total = _digest(archive, members)
        target = code_root / code_digest
        if not target.exists():
            if disk_left is not None and total > disk_left:
                raise BundleError(
                    f"the bundle unpacks to {total} bytes, more than the {max(disk_left, 0)} bytes left"
                    " of the gateway's code quota (remove unused functions with `tidal rm`)"
                )
            _write(archive, members, code_root, target)
    return target, code_digest, sorted(members)


def checked_members(infos: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
    """The bundle's files by name, each refused unless it can be written as it is named: safe,
    not too long or deep, not encrypted, compressed in a way zipfile reads, no name twice and no
    name both a file and a folder.
    """
    entries = [info for info in infos if not info.is_dir()]
    if not entries:
        raise BundleError("the bundle is empty")
    if len(entries) > MAX_FILES:
        raise BundleError(f"the bundle holds {len(entries)} files, more than {MAX_FILES}")
    if sum(info.file_size for info in entries) > MAX_UNPACKED_BYTES:
        raise BundleError(f"the bundle unpacks to more than {MAX_UNPACKED_BYTES} bytes")
    members: dict[str, zipfile.ZipInfo] = {}
    folders: set[str] = set()
    for info in entries:
        name = _safe_name(info)
        if name in members:
            raise BundleError(f"the bundle holds {name!r} twice")
        members[name] = info
        parts = name.split("/")
        folders.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
    both = sorted(folders & members.keys())
    if both:
        raise BundleError(f"the bundle holds {both[0]!r} both as a file and as a folder")
    return members


def _safe_name(info: zipfile.ZipInfo) -> str:
    name = info.filename
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or any(part in ("", ".", "..") for part in parts):
        raise BundleError(f"the bundle holds an unsafe path: {name[:200]!r}")
    if len(name.encode()) > MAX_NAME_BYTES or len(parts) > MAX_DEPTH:
        raise BundleError(
            f"the bundle holds a path longer than {MAX_NAME_BYTES} bytes or deeper than {MAX_DEPTH}"
            f" folders: {name[:80]!r}..."
        )
    if any(len(part.encode()) > MAX_PART_BYTES for part in parts):
        raise BundleError(f"the bundle holds a name longer than {MAX_PART_BYTES} bytes: {name[:80]!r}...")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise BundleError(f"the bundle holds a symbolic link: {name!r}")
    if info.flag_bits & 0x1:
        raise BundleError(f"the bundle holds an encrypted file: {name!r} (zip without a password)")
    if info.compress_type not in SUPPORTED_COMPRESSION:
        raise BundleError(
            f"the bundle's {name!r} uses compression method {info.compress_type}; "
            "use stored, deflate, bzip2 or lzma"
        )
    return name


def _chunks(archive: zipfile.ZipFile, name: str, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """A member's inflated bytes, a chunk at a time; a corrupt member is a BundleError."""
    try:
        with archive.open(info) as member:
            while chunk := member.read(CHUNK_BYTES):
                yield chunk
    except CORRUPT as exc:
        raise BundleError(f"the bundle's {name!r} is corrupt: {exc}") from None


def _digest(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo]) -> tuple[str, int]:
    """The code digest (names and contents) and the real inflated size, whatever the sizes the
    zip declares."""
    digest = hashlib.sha256()
    total = 0
    for name in sorted(members):
        content = hashlib.sha256()
        for chunk in _chunks(archive, name, members[name]):
            total += len(chunk)
            if total > MAX_UNPACKED_BYTES:
                raise BundleError(f"the bundle unpacks to more than {MAX_UNPACKED_BYTES} bytes")
            content.update(chunk)
        digest.update(name.encode() + b"\0" + content.digest())
    return digest.hexdigest(), total


def _write(
    archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], code_root: Path, target: Path
) -> None:
    code_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=code_root))
    try:
        for name in sorted(members):
            destination = staging / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            with destination.open("wb") as file:
                for chunk in _chunks(archive, name, members[name]):
                    file.write(chunk)
        staging.rename(target)  # atomic: a code dir is either complete or absent
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.exists():
            raise


def disk_usage(root: Path) -> int:
    """Bytes in the files under ``root`` (0 if it does not exist)."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):  # removed while we walk
                total += os.lstat(os.path.join(folder, name)).st_size
    return total
