import io
import zipfile
from pathlib import Path

import pytest

from tidal.deploy.bundle import BundleError, bundle_path, unpack


def test_same_content_same_digest_and_caches_skipped(tmp_path: Path) -> None:
    source = tmp_path / "fn"
    (source / "__pycache__").mkdir(parents=True)
    (source / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"junk")
    (source / "main.py").write_text("x = 1\n")
    (source / "data").mkdir()
    (source / "data" / "weights.bin").write_bytes(b"\x00" * 10)
    code_root = tmp_path / "code"
    first_dir, first, names = unpack(bundle_path(source), code_root)
    assert names == ["data/weights.bin", "main.py"]
    (source / "main.py").touch()  # a new mtime is not a new revision
    assert unpack(bundle_path(source), code_root)[1] == first
    (source / "main.py").write_text("x = 2\n")
    assert unpack(bundle_path(source), code_root)[1] != first
    assert (first_dir / "main.py").read_text() == "x = 1\n"


def zip_of(name: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, "x")
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["../evil.py", "/etc/evil.py", "a/../../evil.py"])
def test_unsafe_paths_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(BundleError, match="unsafe path"):
        unpack(zip_of(name), tmp_path)


def test_not_a_zip_and_not_python(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a zip"):
        unpack(b"hello", tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(BundleError, match=r"not a \.py file"):
        bundle_path(tmp_path / "notes.txt")
