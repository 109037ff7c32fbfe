"""Shared fixtures: a real `tidal up` process on a free port, driven through its CLI and HTTP API."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

# The real Redis / NATS that some tests need: found running or started, never skipped.
from services import nats_url, postgres_state_url, postgres_url, rabbitmq_url, redis_url  # noqa: F401
from tidal.store import Activation, SQLiteStore

VENV_BIN = Path(sys.executable).parent
TIDAL = str(VENV_BIN / "tidal")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class TidalServer:
    """A gateway in its own process, with its own state dir."""

    state_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    cwd: Path | None = None  # where `tidal up` runs; state_dir may then be relative to it
    start_new_session: bool = False  # a process group of its own, as a terminal gives a foreground job

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_key(self) -> str:
        return ((self.cwd or Path.cwd()) / self.state_dir / "admin.key").read_text().strip()

    @property
    def client(self) -> httpx.Client:
        if not hasattr(self, "_client"):
            self._client = httpx.Client(
                base_url=self.url, headers={"authorization": f"Bearer {self.admin_key}"}, timeout=120
            )
        return self._client

    def start(self, *extra: str, wait_s: float = 60.0) -> TidalServer:
        self.log_path = (self.cwd or Path.cwd()) / self.state_dir.parent / f"tidal-up-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 (lives as long as the process)
        command = [TIDAL, "up", "--port", str(self.port), "--state-dir", str(self.state_dir), *extra]
        self.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=cli_env(),
            cwd=self.cwd,
            start_new_session=self.start_new_session,
        )
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tidal up exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"tidal up did not come up in {wait_s} s:\n{self.log()}")

    def stop(self) -> None:
        if hasattr(self, "_client"):
            self._client.close()
            del self._client
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""

    def cli(
        self, *args: str, key: str | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `tidal ARGS` against this server, as a user at a shell would."""
        env = cli_env() | {"TIDAL_URL": self.url, "TIDAL_API_KEY": key or self.admin_key}
        return subprocess.run(
            [TIDAL, *args], capture_output=True, text=True, env=env, input=input, timeout=600
        )

    def deploy(self, path: str | Path, *extra_args: str) -> subprocess.CompletedProcess[str]:
        return self.cli("deploy", str(path), *extra_args)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 0.1 s until it holds; fail the test naming ``what`` if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def activation(number: int, start: float, function: str = "echo") -> Activation:
    """A finished activation record of ``function`` that started at ``start`` (store tests)."""
    return Activation(
        id=f"a{number:05d}", function=function, revision=f"{function}-00001", instance="i", start=start,
        duration_ms=1.0, billed_ms=1, memory_mb=128, cold=False, status="ok", http_status=200,
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    """A fresh SQLite store (all migrations applied) in this test's folder."""
    store = SQLiteStore(tmp_path / "tidal.db")
    yield store
    store.close()


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="session")
def tidal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TidalServer]:
    """One gateway shared by the whole session; tests deploy functions with distinct names."""
    server = TidalServer(tmp_path_factory.mktemp("tidal") / "state").start()
    yield server
    server.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[TidalServer]:
    """A gateway of this test's own (for restarts, kills and other disruptive checks)."""
    server = TidalServer(tmp_path / "state")
    yield server
    server.stop()


@pytest.fixture
def write_module(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a user module into a fresh folder and return its path."""
    counter = iter(range(1000))

    def write(source: str, filename: str = "module.py") -> Path:
        folder = tmp_path / f"src{next(counter)}"
        folder.mkdir()
        path = folder / filename
        path.write_text(source)
        return path

    return write


# `make test` runs the suite on two pytest-xdist workers (CI has 2 cores, and a serial run left
# one of them idle half the time: the tests mostly wait on gateways, instances and services).
# A test file runs whole on one worker, so its module fixtures start once, and the files go out
# in the order collected (`--no-loadscope-reorder`). The Ray tests share one worker, as two local
# Ray clusters at once would contend for Ray's default ports, and are collected first: at about
# three minutes they are the longest unit, and started last they would leave the other worker idle.
SHARED_WORKER_FOLDERS = ("tests/raybackend/",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not item.nodeid.startswith(SHARED_WORKER_FOLDERS))  # stable: else as found


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadFileScheduling

    class FileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return next((folder for folder in SHARED_WORKER_FOLDERS if path.startswith(folder)), path)

    return FileScheduling(config, log)
