"""A real instance process (``python -m tidal.runtime.worker``) answering bad input and crashes.

tidal.InputError (or a subclass) and a malformed JSON body are the caller's fault: the Error frame
says so (``caller_fault``) and no traceback is logged. Any other exception is a crash, as before.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from tidal.runtime.protocol import Error, FrameReader, Invoke, Message, Ready, Result, encode
from tidal.runtime.worker import InstanceConfig

MODULE = """
import tidal


class PixelsOutOfRange(tidal.InputError):
    pass


@tidal.function
def check(payload):
    print("looking at", payload["kind"])
    if payload["kind"] == "refused":
        raise tidal.InputError("pixels must be 64 numbers")
    if payload["kind"] == "subclass":
        raise PixelsOutOfRange("pixels must be in 0..16")
    if payload["kind"] == "crash":
        return {}["model"]
    return "fine"


@tidal.function
async def check_async(payload):
    raise tidal.InputError(f"async refusal of {payload!r}")
"""


class Instance:
    """One instance of ``checks.ATTRIBUTE``, its gateway connection held by the test."""

    def __init__(self, tmp_path: Path, attribute: str) -> None:
        code = tmp_path / "code"
        code.mkdir(exist_ok=True)
        (code / "checks.py").write_text(MODULE)
        path = tmp_path / f"{attribute}.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(1)
        config = InstanceConfig(attribute, "checks", "checks-00001", str(code), "checks", attribute, False)
        env = dict(os.environ) | {
            "TIDAL_INSTANCE": msgspec.json.encode(config).decode(),
            "TIDAL_LISTEN_FD": str(listener.fileno()),
        }
        self.log_path = tmp_path / f"{attribute}.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tidal.runtime.worker"],
                env=env,
                pass_fds=(listener.fileno(),),
                stdout=log,
                stderr=log,
                cwd=code,
            )
        listener.close()
        self.connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.connection.settimeout(30)
        self.connection.connect(str(path))
        self.reader = FrameReader()
        self.ids = iter(range(1, 1000))
        assert isinstance(self.receive(), Ready)

    def receive(self) -> Message:
        while True:
            data = self.connection.recv(65536)
            assert data, f"the instance closed the connection (log: {self.log_path.read_text()})"
            messages = self.reader.feed(data)
            if messages:
                (message,) = messages
                return message

    def call(self, body: bytes) -> Message:
        self.connection.sendall(encode(Invoke(next(self.ids), "act", time.time() + 30, body)))
        return self.receive()

    def close(self) -> None:
        self.connection.close()  # the instance exits when its gateway hangs up
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[Instance]:
    started = Instance(tmp_path, "check")
    yield started
    started.close()


def test_input_error_is_the_callers_fault_without_a_traceback(instance: Instance) -> None:
    answer = instance.call(json.dumps({"kind": "refused"}).encode())
    assert isinstance(answer, Error)
    assert (answer.type, answer.message, answer.caller_fault) == (
        "InputError",
        "pixels must be 64 numbers",
        True,
    )
    assert answer.logs == "looking at refused\n"  # what the function printed, and no traceback
    assert not answer.recycle and answer.stats.duration_ms > 0


def test_a_subclass_keeps_its_name(instance: Instance) -> None:
    answer = instance.call(json.dumps({"kind": "subclass"}).encode())
    assert isinstance(answer, Error)
    assert (answer.type, answer.message, answer.caller_fault) == (
        "PixelsOutOfRange",
        "pixels must be in 0..16",
        True,
    )
    assert "Traceback" not in answer.logs


def test_a_crash_is_still_the_functions_fault(instance: Instance) -> None:
    answer = instance.call(json.dumps({"kind": "crash"}).encode())
    assert isinstance(answer, Error)
    assert (answer.type, answer.message, answer.caller_fault) == ("KeyError", "'model'", False)
    assert "Traceback (most recent call last)" in answer.logs
    ok = instance.call(json.dumps({"kind": "other"}).encode())  # the instance serves on
    assert isinstance(ok, Result) and json.loads(ok.body) == "fine"


def test_malformed_json_is_the_callers_fault(instance: Instance) -> None:
    answer = instance.call(b'{"kind": ')
    assert isinstance(answer, Error)
    assert answer.type == "BadRequest" and answer.caller_fault
    assert answer.message.startswith("malformed JSON body")


def test_an_async_function_can_refuse_its_input(tmp_path: Path) -> None:
    instance = Instance(tmp_path, "check_async")
    try:
        answer = instance.call(b'"nonsense"')
        assert isinstance(answer, Error)
        assert (answer.type, answer.caller_fault) == ("InputError", True)
        assert answer.message == "async refusal of 'nonsense'" and answer.logs == ""
    finally:
        instance.close()
    assert "Traceback" not in instance.log_path.read_text()
