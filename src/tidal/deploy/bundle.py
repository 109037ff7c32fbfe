"""Code bundles: a zip of a file or folder, as the CLI uploads it and the gateway stores it.

The stored copy is what runs, so editing or deleting the source never changes a revision. The
digest covers file names and contents only (not zip timestamps), so an identical redeploy has an
identical digest.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

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


def unpack(data: bytes, code_root: Path) -> tuple[Path, str, list[str]]:
    """Unpack a bundle into ``code_root/<digest>`` (once per digest). Returns (dir, digest, names)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise BundleError("the deploy body is not a zip archive (use `tidal deploy PATH`)") from None
    entries = [info for info in archive.infolist() if not info.is_dir()]
    if not entries:
        raise BundleError("the bundle is empty")
    if len(entries) > MAX_FILES:
        raise BundleError(f"the bundle holds {len(entries)} files, more than {MAX_FILES}")
    if sum(info.file_size for info in entries) > MAX_UNPACKED_BYTES:
        raise BundleError(f"the bundle unpacks to more than {MAX_UNPACKED_BYTES} bytes")
    names = sorted(_safe_name(info) for info in entries)
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0" + hashlib.sha256(archive.read(name)).digest())
    code_digest = digest.hexdigest()
    target = code_root / code_digest
    if not target.exists():
        code_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=code_root))
        try:
            for name in names:
                destination = staging / name
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes(archive.read(name))
            staging.rename(target)  # atomic: a code dir is either complete or absent
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not target.exists():
                raise
    return target, code_digest, names


def _safe_name(info: zipfile.ZipInfo) -> str:
    name = info.filename
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        raise BundleError(f"the bundle holds an unsafe path: {name!r}")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise BundleError(f"the bundle holds a symbolic link: {name!r}")
    return path.as_posix()
