"""Where a bundle's requirements come from, and how pip's package sources become uv's (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidal.environments.requirements import (
    RequirementsError,
    declared,
    inline_dependencies,
    pip_config_files,
    uv_source_args,
)

INLINE = """# /// script
# requires-python = ">=3.11"
# dependencies = [
#   "tomli_w==1.2.0",
#   "six",
# ]
# ///
import tidal
"""


def bundle(tmp_path: Path, files: dict[str, str]) -> tuple[Path, list[str]]:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path, sorted(files)


def test_each_of_the_three_places_declares_requirements(tmp_path: Path) -> None:
    code, names = bundle(tmp_path / "a", {"main.py": "", "requirements.txt": "six==1.17.0\n"})
    found = declared(code, names, None, "main.py")
    assert found is not None and found.text == "six==1.17.0\n" and found.file == "requirements.txt"

    code, names = bundle(tmp_path / "b", {"main.py": ""})
    found = declared(code, names, ["six==1.17.0", " numpy "], "main.py")
    assert found is not None and found.text == "six==1.17.0\nnumpy\n" and found.source == "tidal.toml"

    code, names = bundle(tmp_path / "c", {"fn.py": INLINE})
    found = declared(code, names, None, "fn.py")
    assert found is not None and found.text == "tomli_w==1.2.0\nsix\n" and "inline" in found.source


def test_no_requirements_means_tidals_own_environment(tmp_path: Path) -> None:
    code, names = bundle(tmp_path, {"main.py": "import tidal\n", "requirements.txt": "# nothing yet\n\n"})
    assert declared(code, names, None, "main.py") is None
    assert declared(code, names, [], "main.py") is None


def test_two_places_at_once_or_a_malformed_list_is_refused(tmp_path: Path) -> None:
    code, names = bundle(tmp_path, {"main.py": INLINE, "requirements.txt": "six\n"})
    with pytest.raises(RequirementsError, match=r"requirements.txt and in main.py"):
        declared(code, names, None, "main.py")
    with pytest.raises(RequirementsError, match="must be a list of strings"):
        declared(code, ["main.py"], "six", "main.py")
    with pytest.raises(RequirementsError, match="not one requirement"):
        declared(code, ["main.py"], ["six\nnumpy"], "main.py")
    with pytest.raises(RequirementsError, match="not valid TOML"):
        inline_dependencies("# /// script\n# dependencies = [\n# ///\n", "fn.py")


def test_wheels_in_the_bundle_are_part_of_the_input_key(tmp_path: Path) -> None:
    code, names = bundle(tmp_path, {"main.py": "", "requirements.txt": "pkg==1.0\n", "wheels/pkg.whl": "one"})
    found = declared(code, names, None, "main.py")
    assert found is not None and found.wheels
    before = found.input_key(code, [])
    assert found.input_key(code, []) == before
    (code / "wheels" / "pkg.whl").write_text("two")  # same version, rebuilt: another environment
    assert found.input_key(code, []) != before
    assert found.input_key(code, ["--index-url", "https://mirror.example/simple"]) != found.input_key(
        code, []
    )


def test_pip_settings_become_uv_flags_and_uv_variables_win(tmp_path: Path) -> None:
    site = tmp_path / "pip.conf"
    site.write_text(
        "[global]\nindex-url = https://mirror.example/simple\nfind-links = /opt/wheels /srv/more\n"
        "[install]\nconstraint = /etc/constraints.txt\n"
    )
    user = tmp_path / "user.conf"
    user.write_text("[global]\nextra-index-url = file:///opt/pypi/simple\n")
    args = uv_source_args({}, [site, user])
    assert args == [
        "--index-url", "https://mirror.example/simple",
        "--find-links", "/opt/wheels", "--find-links", "/srv/more",
        "--constraint", "/etc/constraints.txt",
        "--extra-index-url", "file:///opt/pypi/simple",
    ]  # fmt: skip
    # PIP_* variables override the files; a UV_* variable leaves that setting to uv itself.
    environ = {
        "PIP_INDEX_URL": "https://other.example/simple",
        "UV_FIND_LINKS": "/mine",
        "PIP_NO_INDEX": "yes",
    }
    args = uv_source_args(environ, [site])
    assert "https://other.example/simple" in args and "/opt/wheels" not in args and "--no-index" in args


def test_pip_config_file_order_follows_pip(tmp_path: Path) -> None:
    files = pip_config_files({"XDG_CONFIG_DIRS": "/etc/xdg"}, "/home/u", "/venv")
    assert files == [
        Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf"), Path("/home/u/.pip/pip.conf"),
        Path("/home/u/.config/pip/pip.conf"), Path("/venv/pip.conf"),
    ]  # fmt: skip
    assert pip_config_files({"PIP_CONFIG_FILE": "/only.conf"}, "/home/u", "/venv") == [Path("/only.conf")]


@pytest.mark.parametrize(
    "line",
    ["-r /etc/shadow", "--requirement=../../secrets.txt", "-c /root/c.txt", "--find-links /var/lib/x",
     "pkg @ file:///etc/passwd", "-e ../elsewhere"],
)  # fmt: skip
def test_files_outside_the_bundle_are_refused(tmp_path: Path, line: str) -> None:
    code, names = bundle(tmp_path, {"main.py": "", "requirements.txt": f"six\n{line}\n"})
    with pytest.raises(RequirementsError, match=r"line 2: .* is outside the bundle"):
        declared(code, names, None, "main.py")


def test_files_inside_the_bundle_and_remote_urls_are_fine(tmp_path: Path) -> None:
    text = "--no-index\n--find-links wheels\n-r more.txt\n--index-url https://mirror.example/simple\nsix\n"
    code, names = bundle(tmp_path, {"main.py": "", "requirements.txt": text, "more.txt": "numpy\n"})
    found = declared(code, names, None, "main.py")
    assert found is not None and found.text == text
