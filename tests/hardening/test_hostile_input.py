"""Hostile input answers a precise 400, never a 500 or a hang, and the gateway serves on.

Invocation bodies (invalid UTF-8, deep nesting), corrupt zips, odd bundle entries, wrong types in
``tidal.toml`` and a module that forks at import, each sent to a real gateway.
"""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import httpx
import pytest

from conftest import TidalServer

ECHO = "import tidal\n\n@tidal.function(name={name!r})\ndef echo(payload):\n    return payload\n"
LAMBDA_HTTP = """
def handler(event, context):
    return {"statusCode": 200, "body": event["body"], "isBase64Encoded": event["isBase64Encoded"]}
"""


def zipped(entries: dict[str, str | bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def patched(bundle: bytes, local_offset: int, central_offset: int, value: bytes) -> bytes:
    """``bundle`` with ``value`` written at the same field of its first member's local and central
    headers (offsets from each header's signature)."""
    data = bytearray(bundle)
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    data[local + local_offset : local + local_offset + len(value)] = value
    data[central + central_offset : central + central_offset + len(value)] = value
    return bytes(data)


def deploy(server: TidalServer, bundle: bytes, **params: str) -> httpx.Response:
    return server.client.post("/v1/functions", content=bundle, params=params, timeout=120)


def leftovers(server: TidalServer) -> list[str]:
    code = server.state_dir / "code"
    return sorted(entry.name for entry in code.iterdir() if entry.name.startswith(".unpack-"))


def assert_still_serves(server: TidalServer) -> None:
    assert deploy(server, zipped({"main.py": ECHO.format(name="alive")})).status_code == 201
    answer = server.client.post("/fn/alive", json={"still": "here"})
    assert answer.status_code == 200 and answer.json() == {"still": "here"}


def test_bad_json_bodies_are_400(tidal_server: TidalServer) -> None:
    assert deploy(tidal_server, zipped({"main.py": ECHO.format(name="hostile_echo")})).status_code == 201
    cases = {
        b'{"text": "\xff\xfe"}': "malformed JSON body: invalid UTF-8",
        b"[" * 985 + b"]" * 985: "the JSON body nests deeper than 256 levels",
        b'{"a":' * 5000 + b"1" + b"}" * 5000: "the JSON body nests deeper than 256 levels",
    }
    for body, message in cases.items():
        answer = tidal_server.client.post("/fn/hostile_echo", content=body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["type"] == "BadRequest"
        assert answer.json()["error"]["message"].startswith(message)
    # Brackets inside strings are not nesting; 256 levels are still fine.
    fine = [{"s": "[" * 1000}, [[[]]] * 300, 1]
    assert tidal_server.client.post("/fn/hostile_echo", json=fine).json() == fine
    deep_enough = b"[" * 256 + b"]" * 256
    assert tidal_server.client.post("/fn/hostile_echo", content=deep_enough).status_code == 200
    assert_still_serves(tidal_server)


def test_a_lambda_http_text_body_that_is_not_utf8_arrives_base64(tidal_server: TidalServer) -> None:
    bundle = zipped({"lambda_function.py": LAMBDA_HTTP})
    params = {"name": "hostile_http", "style": "lambda-http", "handler": "handler"}
    assert deploy(tidal_server, bundle, **params).status_code == 201
    answer = tidal_server.client.post(
        "/fn/hostile_http", content=b"caf\xe9", headers={"content-type": "text/plain"}
    )
    assert answer.status_code == 200 and answer.content == b"caf\xe9"


GOOD = zipped({"main.py": ECHO.format(name="never_deployed")}, zipfile.ZIP_STORED)
CORRUPT_ZIPS = {
    # A flipped content byte: the CRC no longer matches.
    "bad CRC": GOOD.replace(b"payload):", b"payloaD):"),
    # The central directory says the file is 3 bytes (local header too): the CRC check fails.
    "lying sizes": patched(GOOD, 22, 24, struct.pack("<I", 3)),
    "unknown compression": patched(GOOD, 8, 10, struct.pack("<H", 99)),
    "truncated": GOOD[: len(GOOD) // 2],
    "encrypted": patched(GOOD, 6, 8, struct.pack("<H", 1)),
    "not a zip": b"hello",
}


@pytest.mark.parametrize("case", sorted(CORRUPT_ZIPS))
def test_corrupt_zips_are_400(tidal_server: TidalServer, case: str) -> None:
    answer = deploy(tidal_server, CORRUPT_ZIPS[case])
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "DeployError"
    expected = {
        "bad CRC": "is corrupt: Bad CRC-32",
        "lying sizes": "is corrupt",
        "unknown compression": "uses compression method 99",
        "truncated": "not a zip archive",
        "encrypted": "encrypted file",
        "not a zip": "not a zip archive",
    }[case]
    assert expected in error["message"]
    assert leftovers(tidal_server) == []
    assert_still_serves(tidal_server)


ODD_BUNDLES = {
    "a file and a folder of one name": ({"a": "1", "a/b": "2"}, "'a' both as a file and as a folder"),
    "a dot entry": ({"x/.": "1"}, "unsafe path: 'x/.'"),
    "a parent entry": ({"../evil.py": "1"}, "unsafe path"),
    "an empty part": ({"x//y": "1"}, "unsafe path"),
    "a very long name": ({"n" * 300: "1"}, "a name longer than 255 bytes"),
    "a 2,000-deep path": ({"/".join(["d"] * 2000) + "/f": "1"}, "a path longer than 1024 bytes"),
    "a 100-deep short path": ({"/".join(["d"] * 100) + "/f": "1"}, "deeper than 64 folders"),
}


@pytest.mark.parametrize("case", sorted(ODD_BUNDLES))
def test_odd_bundle_entries_are_400_and_leave_nothing(tidal_server: TidalServer, case: str) -> None:
    entries, message = ODD_BUNDLES[case]
    answer = deploy(tidal_server, zipped({"main.py": ECHO.format(name="odd"), **entries}))
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "DeployError"
    assert message in answer.json()["error"]["message"]
    assert leftovers(tidal_server) == []
    assert_still_serves(tidal_server)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("name = 5", "tidal.toml: name must be a string, not int"),
        ("entry = ['main.py']", "tidal.toml: entry must be a string (a .py file of the bundle), not list"),
        ("handler = true", "tidal.toml: handler must be a string, not bool"),
        ("style = 1.5", "tidal.toml: style must be a string, not float"),
        ("spec = 'fast'", "tidal.toml: spec must be a table of spec fields ([spec]), not str"),
        ("[spec]\nmemory = 'lots'", "memory"),
        ("requirements = 5", "requirements must be a list of strings"),
        ("name = ", "tidal.toml is not valid TOML"),
    ],
)
def test_wrong_types_in_tidal_toml_are_400(tidal_server: TidalServer, config: str, message: str) -> None:
    bundle = zipped({"main.py": ECHO.format(name="configured"), "tidal.toml": config})
    answer = deploy(tidal_server, bundle)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "DeployError"
    assert message in answer.json()["error"]["message"]


FORKS_AT_IMPORT = """
import os, time
import tidal

if os.fork() == 0:  # a child that never ends holds the inspection's pipes open
    time.sleep(3600)

@tidal.function(name="forker")
def forker(payload):
    return payload
"""


def test_a_module_that_forks_at_import_is_400_at_once(tidal_server: TidalServer) -> None:
    # The client gives up long before the 180 s inspection timeout: the answer must come first.
    answer = tidal_server.client.post(
        "/v1/functions", content=zipped({"main.py": FORKS_AT_IMPORT}), timeout=60
    )
    assert answer.status_code == 400, answer.text
    assert "started processes that outlive the import" in answer.json()["error"]["message"]
    assert_still_serves(tidal_server)


def test_the_code_quota_refuses_a_bundle_that_does_not_fit(fresh_server: TidalServer) -> None:
    server = fresh_server.start("--code-quota-mb", "20")
    small = zipped({"main.py": ECHO.format(name="small")})
    assert deploy(server, small).status_code == 201
    # 200 MiB of zeros: a 200 KiB upload (a zip bomb in small); inflated a chunk at a time.
    bomb = zipped({"main.py": ECHO.format(name="bomb"), "weights.bin": bytes(200 * 1024 * 1024)})
    answer = deploy(server, bomb)
    assert answer.status_code == 400, answer.text
    message = answer.json()["error"]["message"]
    assert f"the bundle unpacks to {200 * 1024 * 1024 + len(ECHO.format(name='bomb'))} bytes" in message
    assert "left of the gateway's code quota" in message
    assert leftovers(server) == []
    # Inflating it never held it in memory (the gateway's peak resident memory, from the kernel).
    assert server.process is not None
    peak_kb = _peak_rss_kb(server.process.pid)
    assert peak_kb < 200 * 1024, f"the gateway peaked at {peak_kb} kB"
    assert server.client.post("/fn/small", json=[1]).json() == [1]


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")
