"""Object keys and prefixes: what may name a file inside a bucket folder (pure; no I/O).

A key is a relative POSIX path: no empty, ``.`` or ``..`` segment, no leading ``/``, no backslash,
no control character, at most 1024 bytes, each segment at most 255 bytes. Symlinks are checked by
the folder store (``folder.py``), which needs the file system.
"""

from __future__ import annotations

import re

MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255
CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")
RESERVED_PREFIX = ".tidal"  # the store's own files (partial uploads) live under this name


def check_key(key: str) -> str:
    """``key`` if it names a file inside a bucket, else ValueError saying why.

    >>> check_key("in/cat.png")
    'in/cat.png'
    >>> check_key("in/../../etc/passwd")
    Traceback (most recent call last):
    ...
    ValueError: object key 'in/../../etc/passwd' has a '..' segment: keys may not leave the bucket
    """
    if not key:
        raise ValueError("object key is empty")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"object key is longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/"):
        raise ValueError(f"object key {key!r} is absolute: keys are relative to the bucket")
    if CONTROL.search(key):
        raise ValueError(f"object key {key!r} holds a backslash or a control character")
    segments = key.split("/")
    if ".." in segments:
        raise ValueError(f"object key {key!r} has a '..' segment: keys may not leave the bucket")
    if any(segment in ("", ".") for segment in segments):
        raise ValueError(f"object key {key!r} has an empty or '.' segment")
    if any(len(segment.encode()) > MAX_SEGMENT_BYTES for segment in segments):
        raise ValueError(f"object key {key!r} has a segment longer than {MAX_SEGMENT_BYTES} bytes")
    if segments[0] == RESERVED_PREFIX:
        raise ValueError(f"object keys under {RESERVED_PREFIX}/ are reserved for tidal")
    return key


def check_prefix(prefix: str) -> str:
    """A listing or trigger prefix: "" or the start of a valid key (``in/``, ``img``).

    >>> check_prefix("in/")
    'in/'
    """
    if not prefix:
        return prefix
    check_key(prefix.rstrip("/") or "x") if prefix != "/" else check_key("/")
    return prefix


def matches(key: str, prefix: str, suffix: str, output_prefix: str = "") -> bool:
    """Whether a new object fires a trigger: under its prefix, with its suffix, and not one of the
    trigger's own results.

    >>> matches("in/a.png", "in/", ".png"), matches("out/a.png.json", "", "", "out/")
    (True, False)
    """
    if output_prefix and key.startswith(output_prefix):
        return False
    return key.startswith(prefix) and key.endswith(suffix)
