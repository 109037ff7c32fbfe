"""The template process on its own: its control protocol, forks, exit reports, and what it never does."""

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

from tidal.runtime.protocol import FrameReader, Invoke, Message, Ready, Result, encode
from tidal.runtime.template import (
    Exited,
    Fork,
    Forked,
    ForkFailed,
    TemplateConfig,
    TemplateFailed,
    TemplateReady,
    decode,
)
from tidal.runtime.worker import InstanceConfig

MODULE = """
import os
import sys

import tidal

print("importing in", os.getpid())


@tidal.function
class Greeter:
    def setup(self):
        print("setup in", os.getpid())
        self.greeting = "hello"

    def __call__(self, payload):
        return {"greeting": self.greeting, "to": payload, "pid": os.getpid()}
"""


class Template:
    def __init__(self, tmp_path: Path, source: str, load_once: bool = False) -> None:
        self.code = tmp_path / "code"
        self.code.mkdir()
        (self.code / "greeter.py").write_text(source)
        self.tmp_path = tmp_path
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.control.settimeout(30)
        config = TemplateConfig(
            str(self.code), "greeter", "Greeter", True, load_once, restore_env={"TIDAL_TEMPLATE": None}
        )
        env = dict(os.environ) | {
            "TIDAL_TEMPLATE": "1",
            "TIDAL_TEMPLATE_CONFIG": msgspec.json.encode(config).decode(),
            "TIDAL_CONTROL_FD": str(theirs.fileno()),
        }
        self.log_path = tmp_path / "template.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tidal.runtime.template"],
                env=env,
                pass_fds=(theirs.fileno(),),
                stdout=log,
                stderr=log,
                cwd=self.code,
            )
        theirs.close()
        self.ids = iter(range(1, 1000))

    def receive(self) -> object:
        return decode(self.control.recv(1 << 20))

    def fork(self, name: str) -> tuple[Forked, socket.socket, Path]:
        path = self.tmp_path / f"{name}.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(1)
        config = InstanceConfig(name, "greeter", "greeter-00001", str(self.code), "greeter", "Greeter", True)
        log_path = self.tmp_path / f"{name}.log"
        request = Fork(next(self.ids), config, cpu=1.0)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        socket.send_fds(self.control, [msgspec.json.encode(request)], [listener.fileno(), log_fd])
        os.close(log_fd)
        listener.close()
        forked = self.receive()
        assert isinstance(forked, Forked) and forked.id == request.id
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(30)
        connection.connect(str(path))
        return forked, connection, log_path

    def close(self) -> None:
        self.control.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def template(tmp_path: Path) -> Iterator[Template]:
    started = Template(tmp_path, MODULE)
    yield started
    started.close()


def frames(connection: socket.socket, count: int) -> list[Message]:
    reader, found = FrameReader(), list[Message]()
    while len(found) < count:
        data = connection.recv(65536)
        assert data, "the instance closed the connection"
        found.extend(reader.feed(data))
    return found


def test_fork_serve_and_report_the_exit(template: Template) -> None:
    ready = template.receive()
    assert isinstance(ready, TemplateReady) and ready.pid == template.process.pid
    forked, connection, log_path = template.fork("one")
    assert forked.pid != template.process.pid
    (hello,) = frames(connection, 1)
    assert isinstance(hello, Ready) and hello.pid == forked.pid
    connection.sendall(encode(Invoke(1, "a", time.time() + 30, json.dumps("you").encode())))
    (result,) = frames(connection, 1)
    assert isinstance(result, Result)
    assert json.loads(result.body) == {"greeting": "hello", "to": "you", "pid": forked.pid}
    connection.close()  # the gateway hangs up: the instance exits, the template reaps it and says so
    exited = template.receive()
    assert exited == Exited(forked.pid, 0)
    assert f"setup in {forked.pid}" in log_path.read_text()  # the instance's own log
    assert f"importing in {template.process.pid}" in template.log_path.read_text()


def test_bad_requests_do_not_break_the_template(template: Template) -> None:
    assert isinstance(template.receive(), TemplateReady)
    template.control.send(b"not json")
    config = InstanceConfig("x", "greeter", "greeter-00001", str(template.code), "greeter", "Greeter", True)
    template.control.send(msgspec.json.encode(Fork(99, config)))  # no socket attached
    failed = template.receive()
    assert isinstance(failed, ForkFailed) and failed.id == 99
    forked, connection, _ = template.fork("after")
    assert isinstance(frames(connection, 1)[0], Ready)
    connection.close()
    assert template.receive() == Exited(forked.pid, 0)


def test_instances_outlive_their_template(template: Template) -> None:
    assert isinstance(template.receive(), TemplateReady)
    forked, connection, _ = template.fork("survivor")
    assert isinstance(frames(connection, 1)[0], Ready)
    template.close()  # the backend hangs up: the template exits, its instance serves on
    assert template.process.returncode == 0
    connection.sendall(encode(Invoke(1, "a", time.time() + 30, b'"still"')))
    (result,) = frames(connection, 1)
    assert isinstance(result, Result) and json.loads(result.body)["to"] == "still"
    connection.close()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{forked.pid}").exists() and time.monotonic() < deadline:
        stat = Path(f"/proc/{forked.pid}/stat").read_text()
        if stat.rpartition(")")[2].split()[0] == "Z":
            break  # exited; now init's to reap
        time.sleep(0.02)
    assert not Path(f"/proc/{forked.pid}").exists() or "Z" in Path(f"/proc/{forked.pid}/stat").read_text()


def test_load_once_sets_up_in_the_template(tmp_path: Path) -> None:
    template = Template(tmp_path, MODULE, load_once=True)
    try:
        ready = template.receive()
        assert isinstance(ready, TemplateReady)
        assert f"setup in {template.process.pid}" in template.log_path.read_text()
        forked, connection, log_path = template.fork("loaded")
        (hello,) = frames(connection, 1)
        assert isinstance(hello, Ready) and hello.setup_ms == 0.0
        assert "setup in" not in log_path.read_text()
        connection.close()
        assert template.receive() == Exited(forked.pid, 0)
    finally:
        template.close()


def test_a_module_that_cannot_import_fails_the_template(tmp_path: Path) -> None:
    template = Template(tmp_path, "raise ImportError('no such model')\n")
    try:
        failed = template.receive()
        assert failed == TemplateFailed("ImportError", "no such model")
        assert template.process.wait(10) == 1
    finally:
        template.close()
