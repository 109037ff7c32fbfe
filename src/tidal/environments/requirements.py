"""What a bundle asks to have installed, and where packages come from. Pure: no subprocess, no
network; it reads only the files it is pointed at.

A bundle declares its requirements in one of three places (two at once is refused):

- ``requirements.txt`` at the bundle's root, pip's format (``-r``, ``-c``, ``--find-links``,
  ``--index-url`` and ``--no-index`` lines included; relative paths are relative to the bundle);
- ``requirements = ["numpy==1.26.4", ...]`` in ``tidal.toml``;
- inline script metadata (PEP 723) at the top of a single-file deploy:
  ``# /// script`` / ``# dependencies = ["numpy"]`` / ``# ///``.

A ``wheels/`` folder in the bundle is always a package source (``--find-links``). Package sources
configured for pip on the host (``PIP_INDEX_URL``, ``pip.conf``'s ``index-url``, ``find-links``,
``constraint`` ...) are handed to uv, which reads only its own settings (``UV_*``, ``uv.toml``);
a ``UV_*`` variable that is set wins over its pip counterpart.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

REQUIREMENTS_FILE = "requirements.txt"
WHEELS_DIR = "wheels"
# Bumped when the way environments are built changes: old ones are then rebuilt, not reused.
ENVIRONMENT_FORMAT = "1"
# PEP 723: a block of comment lines between "# /// TYPE" and "# ///".
INLINE_BLOCK = re.compile(r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$")


class RequirementsError(ValueError):
    """The bundle's requirements cannot be read; the message says where and why."""


@dataclass(frozen=True)
class Requirements:
    """A bundle's declared requirements, in requirements.txt format, and where they were found."""

    text: str
    source: str  # shown to the user: "requirements.txt", "tidal.toml", "main.py (inline metadata)"
    file: str | None = None  # the bundle's own requirements file, relative to the bundle, if any
    wheels: bool = False  # the bundle has a wheels/ folder

    def input_key(self, code_dir: Path, sources: Sequence[str]) -> str:
        """A digest of everything the resolution depends on that is known before resolving: the
        requirements, the package sources, the interpreter, and the bundle's wheels' contents.
        """
        digest = hashlib.sha256()
        for part in (ENVIRONMENT_FORMAT, python_tag(), self.text, *sources):
            digest.update(part.encode() + b"\0")
        if self.wheels:
            for wheel in sorted((code_dir / WHEELS_DIR).rglob("*")):
                if wheel.is_file():
                    digest.update(wheel.name.encode() + b"\0" + hashlib.sha256(wheel.read_bytes()).digest())
        return digest.hexdigest()


def python_tag() -> str:
    """The interpreter an environment is built for: its version and machine."""
    return f"cp{sys.version_info.major}{sys.version_info.minor}-{sys.implementation.cache_tag}-{os.uname().machine}"


def declared(
    code_dir: Path, names: Sequence[str], from_config: object, entry: str | None
) -> Requirements | None:
    """The bundle's requirements, or None when it declares none (it then runs in tidal's own
    environment, as before). ``from_config`` is ``tidal.toml``'s ``requirements`` value, if any.
    """
    wheels = any(name.startswith(f"{WHEELS_DIR}/") for name in names)
    found: list[Requirements] = []
    if REQUIREMENTS_FILE in names:
        text = _read(code_dir / REQUIREMENTS_FILE, REQUIREMENTS_FILE)
        check_paths(text, REQUIREMENTS_FILE)
        found.append(Requirements(text, REQUIREMENTS_FILE, REQUIREMENTS_FILE, wheels))
    if from_config is not None:
        found.append(
            Requirements(_lines(from_config, "tidal.toml: requirements"), "tidal.toml", None, wheels)
        )
    if entry is not None and entry in names and entry.endswith(".py"):
        inline = inline_dependencies(_read(code_dir / entry, entry), entry)
        if inline is not None:
            found.append(Requirements(inline, f"{entry} (inline script metadata)", None, wheels))
    found = [requirements for requirements in found if _has_requirement(requirements.text)]
    if len(found) > 1:
        raise RequirementsError(
            f"requirements are declared in {' and in '.join(r.source for r in found)}: keep one"
        )
    return found[0] if found else None


# Options of a requirements file that name a file or folder.
PATH_OPTIONS = ("-r", "--requirement", "-c", "--constraint", "-f", "--find-links", "-e", "--editable")


def check_paths(text: str, where: str) -> None:
    """Refuse files and folders outside the bundle (``-r /etc/...``, ``--find-links ../..``): uv
    runs as the gateway's user, and its error messages quote what it read.
    """
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split(" #", 1)[0].replace("=", " ", 1).split() if line.lstrip().startswith("-") else []
        if len(words) >= 2 and words[0] in PATH_OPTIONS:
            target = words[1]
        elif "@ file:" in line:
            target = line.split("@ file:", 1)[1].strip().removeprefix("//")
        else:
            continue
        if "://" in target and not target.startswith("file://"):
            continue  # a URL: an index or a remote file, fetched, never read from this host
        path = PurePosixPath(target.removeprefix("file://"))
        if path.is_absolute() or ".." in path.parts:
            raise RequirementsError(
                f"{where}, line {number}: {target!r} is outside the bundle; refer to files inside it"
            )


def inline_dependencies(script: str, where: str) -> str | None:
    """The ``dependencies`` of a PEP 723 ``script`` block, one per line, or None without a block."""
    blocks = [match for match in INLINE_BLOCK.finditer(script) if match.group("type") == "script"]
    if not blocks:
        return None
    if len(blocks) > 1:
        raise RequirementsError(f"{where}: more than one '# /// script' block")
    content = "".join(
        line[2:] if line.startswith("# ") else line[1:]
        for line in blocks[0].group("content").splitlines(keepends=True)
    )
    try:
        metadata = tomllib.loads(content)
    except tomllib.TOMLDecodeError as exc:
        raise RequirementsError(f"{where}: the '# /// script' block is not valid TOML: {exc}") from None
    return _lines(metadata.get("dependencies", []), f"{where}: dependencies")


def _lines(value: object, where: str) -> str:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RequirementsError(f'{where} must be a list of strings, e.g. ["numpy==1.26.4"]')
    for item in value:
        if "\n" in item or not item.strip():
            raise RequirementsError(f"{where}: {item!r} is not one requirement")
    return "".join(f"{item.strip()}\n" for item in value)


def _read(path: Path, name: str) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise RequirementsError(f"{name} is not UTF-8 text") from None


def _has_requirement(text: str) -> bool:
    """True when ``text`` names a package (not only comments, blank lines and options)."""
    for line in text.splitlines():
        stripped = line.split(" #", 1)[0].strip()
        if stripped and not stripped.startswith(("#", "-")):
            return True
        if stripped.startswith(("-r ", "--requirement", "-e ", "--editable")):
            return True
    return False


# -- package sources: pip's configuration, as uv arguments ----------------------------------------

# pip setting -> (uv flag, the UV_* variables that make uv ignore pip's value, takes many values)
PIP_SETTINGS = {
    "index-url": ("--index-url", ("UV_INDEX_URL", "UV_DEFAULT_INDEX"), False),
    "extra-index-url": ("--extra-index-url", ("UV_EXTRA_INDEX_URL", "UV_INDEX"), True),
    "find-links": ("--find-links", ("UV_FIND_LINKS",), True),
    "constraint": ("--constraint", ("UV_CONSTRAINT",), True),
    "no-index": ("--no-index", ("UV_NO_INDEX",), False),
}
READ_SETTINGS = (*PIP_SETTINGS, "cert")
TRUE = ("1", "true", "yes", "on")


def pip_config_files(environ: Mapping[str, str], home: str, prefix: str) -> list[Path]:
    """pip's configuration files, lowest priority first (pip's own order: global, user, site)."""
    if "PIP_CONFIG_FILE" in environ:
        return [Path(environ["PIP_CONFIG_FILE"])]
    xdg_dirs = environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    config_home = environ.get("XDG_CONFIG_HOME", f"{home}/.config")
    return [
        Path("/etc/pip.conf"),
        *(Path(folder) / "pip" / "pip.conf" for folder in reversed(xdg_dirs) if folder),
        Path(home) / ".pip" / "pip.conf",
        Path(config_home) / "pip" / "pip.conf",
        Path(prefix) / "pip.conf",
    ]


def pip_settings(environ: Mapping[str, str], files: Sequence[Path]) -> dict[str, str]:
    """pip's effective value of each setting uv cares about: files in order, then PIP_* variables."""
    values: dict[str, str] = {}
    for path in files:
        parser = configparser.RawConfigParser()
        try:
            parser.read(path)
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue  # pip would complain about a broken file; a deploy should not
        for section in ("global", "install"):
            if parser.has_section(section):
                for name in READ_SETTINGS:
                    if parser.has_option(section, name):
                        values[name] = parser.get(section, name)
    for name in READ_SETTINGS:
        variable = "PIP_" + name.upper().replace("-", "_")
        if variable in environ:
            values[name] = environ[variable]
    return values


def uv_source_args(environ: Mapping[str, str], files: Sequence[Path]) -> list[str]:
    """pip's package sources as uv flags, leaving out any that uv is configured for itself."""
    args: list[str] = []
    for name, value in pip_settings(environ, files).items():
        if name not in PIP_SETTINGS:
            continue
        flag, uv_variables, many = PIP_SETTINGS[name]
        if any(variable in environ for variable in uv_variables):
            continue
        if name == "no-index":
            args += [flag] if value.strip().lower() in TRUE else []
        elif many:
            for item in value.split():
                args += [flag, item]
        elif value.strip():
            args += [flag, value.strip()]
    return args


def host_source_args() -> list[str]:
    """``uv_source_args`` for this process's environment and pip configuration."""
    return uv_source_args(os.environ, pip_config_files(os.environ, os.path.expanduser("~"), sys.prefix))


def pip_cert(environ: Mapping[str, str], files: Sequence[Path]) -> str | None:
    """pip's ``cert`` (a CA bundle), which uv takes as SSL_CERT_FILE."""
    return pip_settings(environ, files).get("cert")
