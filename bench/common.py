"""Shared helpers for the benchmarks in bench/: servers in subprocesses, a low-overhead sequential
HTTP client, ``wrk`` runs and their parsing, percentiles, and loading a tidal function by path.

Everything here talks to 127.0.0.1 only, and every wait is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import importlib.util
import inspect
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, cast

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
HOST = "127.0.0.1"


# --------------------------------------------------------------------------------------------- stats


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median of an empty sequence")
    mid = n // 2
    return float(ordered[mid]) if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free confidence interval for the median of ``values``: the k-th smallest and
    k-th largest value, with k the largest rank at which a fair coin gives fewer than k heads in
    len(values) tosses with probability at most (1 - confidence) / 2. None when there are too few
    values for one (under 6 at 95%). A noisy machine's rounds are not normally distributed, so no
    mean or standard deviation is assumed.
    """
    n = len(values)
    tail, below, k = (1 - confidence) / 2, 0.0, 0
    while True:  # below = P(heads < k + 1); k grows while that stays within the tail
        below += math.comb(n, k) / 2**n
        if below > tail:
            break
        k += 1
    if k == 0:
        return None
    ordered = sorted(values)
    return float(ordered[k - 1]), float(ordered[n - k])


# --------------------------------------------------------------------------------------------- ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the usual small race is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http_request(
    port: int,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """One request on a fresh connection to 127.0.0.1; raises OSError/HTTPException on failure."""
    status, _, reply = http_call(port, method, path, body=body, headers=headers, timeout=timeout)
    return status, reply


def http_call(
    port: int,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, dict[str, str], bytes]:
    """Status, response headers (lower-cased names) and body of one request on a fresh connection."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so that ``finally`` blocks stop the servers."""

    def raise_interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, raise_interrupt)


# ------------------------------------------------------------------------------------------- servers


class ServerError(RuntimeError):
    """A server under test did not start, or died."""


@dataclass
class Server:
    """A server under test, run in its own process group so that it and its children stop together."""

    name: str
    cmd: list[str]
    port: int
    log_path: Path
    cwd: Path = REPO_ROOT
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: Any = field(default=None, init=False, repr=False)

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() reaches the children too
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            code = None if self.proc is None else self.proc.returncode
            raise ServerError(f"{self.name} exited (code {code}).\n{self.log_tail()}")

    def wait_http(self, path: str, *, timeout: float, headers: Mapping[str, str] | None = None) -> None:
        """Poll ``GET path`` until it answers 200, the process dies, or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                status, body = http_request(self.port, "GET", path, headers=headers, timeout=2.0)
                if status == 200:
                    return
                last = f"HTTP {status}: {body[:200]!r}"
            except (OSError, http.client.HTTPException) as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        raise ServerError(
            f"{self.name}: GET {path} not 200 after {timeout:.0f}s ({last}).\n{self.log_tail()}"
        )

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, wait up to ``grace`` seconds, then SIGKILL whatever is left."""
        proc = self.proc
        if proc is not None:
            pgid = proc.pid  # start_new_session: the leader's pid is the group id
            if proc.poll() is None:
                _signal_group(pgid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace)
            # Sweep the group: the leader may have exited while children (instances) linger.
            deadline = time.monotonic() + 2.0
            while _group_exists(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _group_exists(pgid):
                _signal_group(pgid, signal.SIGKILL)
            if proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5.0)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        tail = text.splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -------------------------------------------------------------------------------- sequential client


class SequentialClient:
    """POSTs one body again and again on one keep-alive connection, timing each round trip.

    ``http.client`` sends the headers and a bytes body in one ``send()`` and sets TCP_NODELAY, so
    there is no Nagle / delayed-ACK stall; what it costs per request (a few tens of microseconds)
    is the same for every target.
    """

    def __init__(self, port: int, path: str, body: bytes, headers: Mapping[str, str], timeout: float) -> None:
        self.port = port
        self.path = path
        self.body = body
        self.headers = {"Content-Type": "application/json", **headers}
        self.timeout = timeout
        self.conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        self.reconnects = 0

    def post(self) -> tuple[int, bytes]:
        try:
            self.conn.request("POST", self.path, body=self.body, headers=self.headers)
            resp = self.conn.getresponse()
            data = resp.read()
        except (ConnectionError, http.client.BadStatusLine):
            # The server closed the keep-alive connection: count it and retry once on a new one.
            # (A timeout is not retried: it propagates.)
            self.conn.close()
            self.reconnects += 1
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            self.conn.request("POST", self.path, body=self.body, headers=self.headers)
            resp = self.conn.getresponse()
            data = resp.read()
        if resp.will_close:
            self.conn.close()
            self.reconnects += 1
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
        return resp.status, data

    def set_timeout(self, timeout: float) -> None:
        self.timeout = timeout
        self.conn.timeout = timeout
        if self.conn.sock is not None:
            self.conn.sock.settimeout(timeout)

    def timed_block(self, count: int, check: Callable[[int, bytes], str | None]) -> list[int]:
        """``count`` requests in a row; returns nanoseconds per request. ``check`` (run outside the
        timed window) returns an error message for a wrong answer, which aborts the block."""
        samples: list[int] = []
        clock = time.perf_counter_ns
        for _ in range(count):
            start = clock()
            status, data = self.post()
            samples.append(clock() - start)
            error = check(status, data)
            if error is not None:
                raise ServerError(error)
        return samples

    def close(self) -> None:
        self.conn.close()


# ----------------------------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    requests: int  # all responses wrk counted, whatever their status
    duration_s: float
    requests_per_s: float  # as wrk prints it (includes non-2xx)
    ok_per_s: float  # 2xx/3xx responses per second: what the comparison uses
    non_2xx: int
    socket_errors: dict[str, int]
    latency_avg_ms: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def wrk_available() -> str | None:
    return shutil.which("wrk")


def write_wrk_script(path: Path, body: bytes, headers: Mapping[str, str]) -> Path:
    """A wrk Lua script that POSTs ``body`` with ``headers``."""
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body.decode())}"]
    for key, value in {"Content-Type": "application/json", **headers}.items():
        lines.append(f"wrk.headers[{_lua_string(key)}] = {_lua_string(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _lua_string(text: str) -> str:
    """A double-quoted Lua literal: printable ASCII as is, every other byte as a decimal escape."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        out.append(f"\\{byte:03d}" if byte < 0x20 or byte > 0x7E or char in '"\\' else char)
    return '"' + "".join(out) + '"'


def run_wrk(
    url: str, script: Path, *, threads: int, connections: int, duration_s: float, timeout_s: float = 2.0
) -> WrkResult:
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 30.0, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return parse_wrk(done.stdout)


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"unparsed wrk duration {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(out: str) -> WrkResult:
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not total or not rps:
        raise ValueError(f"unparsed wrk output:\n{out}")
    requests = int(total.group(1))
    duration_s = _to_ms(total.group(2) + total.group(3)) / 1e3
    non_2xx_match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    non_2xx = int(non_2xx_match.group(1)) if non_2xx_match else 0
    errors: dict[str, int] = {}
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors = dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True))
    avg = re.search(r"^\s*Latency\s+(\S+)", out, re.MULTILINE)
    p50 = re.search(r"^\s*50%\s+(\S+)", out, re.MULTILINE)
    p99 = re.search(r"^\s*99%\s+(\S+)", out, re.MULTILINE)
    return WrkResult(
        requests=requests,
        duration_s=duration_s,
        requests_per_s=float(rps.group(1)),
        ok_per_s=(requests - non_2xx) / duration_s if duration_s > 0 else 0.0,
        non_2xx=non_2xx,
        socket_errors=errors,
        latency_avg_ms=_to_ms(avg.group(1)) if avg else None,
        latency_p50_ms=_to_ms(p50.group(1)) if p50 else None,
        latency_p99_ms=_to_ms(p99.group(1)) if p99 else None,
    )


# ----------------------------------------------------------------------------- loading user function

DECLARATION_ATTRIBUTE = "__tidal_function__"  # mirrors tidal.sdk.decorator; no tidal import needed


def load_module(path: Path) -> ModuleType:
    """Import a Python file by path (``src/`` goes on sys.path when tidal is not installed)."""
    src = str(REPO_ROOT / "src")
    if importlib.util.find_spec("tidal") is None and src not in sys.path:
        sys.path.insert(0, src)
    spec = importlib.util.spec_from_file_location(f"_bench_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_function(path: Path, name: str) -> Callable[[Any], Any]:
    """The callable that serves one request of the tidal function ``name`` in the file ``path``.

    Finds the object carrying a tidal declaration whose spec name (or Python name) is ``name``. A
    class is instantiated and its ``setup()`` run; a function taking a second parameter is handed a
    throwaway Context, as the runtime would.
    """
    module = load_module(path)
    target: Any = None
    for obj in vars(module).values():
        decl = getattr(obj, DECLARATION_ATTRIBUTE, None)
        if decl is not None and name in (decl.spec.get("name"), decl.python_name):
            target = obj
            break
    if target is None:
        target = getattr(module, name, None)
    if target is None or not callable(target):
        raise LookupError(f"no function {name!r} in {path}")
    if isinstance(target, type):
        instance = target()
        setup = getattr(instance, "setup", None)
        if callable(setup):
            setup()
        target = instance
    params = [
        p
        for p in inspect.signature(target).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(params) >= 2:
        context = _make_context(name)
        fn = target
        return lambda payload: fn(payload, context)
    return cast(Callable[[Any], Any], target)


def _make_context(name: str) -> Any:
    from tidal.sdk import Context

    return Context(
        activation_id="bench",
        function=name,
        revision="bench",
        instance="bench",
        memory_mb=128,
        deadline=time.time() + 3600,
    )


def json_equal(data: bytes, expected: Any) -> bool:
    try:
        return bool(json.loads(data) == expected)
    except ValueError:
        return False


def summarize_ms(values: Sequence[float]) -> dict[str, float | int]:
    """Count, p50/p95/p99, min and max of a list of milliseconds (just the count when empty)."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "min": float(min(values)),
        "max": float(max(values)),
    }


def write_json(path: Path | None, results: Mapping[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results written to {path}")


def proc_rss_kb(pid: int) -> int | None:
    """VmRSS of a process in KiB (from /proc), None when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


# ---------------------------------------------------------------------- a tidal gateway, for benches


def tidal_bin() -> str:
    beside = Path(sys.executable).parent / "tidal"
    found = str(beside) if beside.exists() else shutil.which("tidal")
    if found is None:
        raise ServerError("no `tidal` executable beside this Python or on PATH (pip install -e .)")
    return found


@dataclass
class Tidal:
    """A ``tidal up`` run by a benchmark in a temporary state dir, plus the admin calls benches need."""

    server: Server
    state: Path
    key: str = ""

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def pid(self) -> int:
        assert self.server.proc is not None
        return self.server.proc.pid

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        name: str = "tidal",
        env: Mapping[str, str] | None = None,
        log_level: str = "warning",
        extra_args: Sequence[str] = (),
    ) -> Tidal:
        port = free_port()
        state = workdir / f"{name}-state"
        cmd = [tidal_bin(), "up", "--host", HOST, "--port", str(port), "--state-dir", str(state), *extra_args]
        server = Server(
            name=name,
            cmd=[*cmd, "--log-level", log_level],
            port=port,
            log_path=workdir / f"{name}.log",
            env={**os.environ, **(env or {})},
        )
        tidal = cls(server, state)
        try:
            server.start()
            server.wait_http("/healthz", timeout=90.0)
            deadline = time.monotonic() + 30.0
            key_file = state / "admin.key"
            while not tidal.key:
                server.check_alive()
                if time.monotonic() > deadline:
                    raise ServerError(f"{key_file} did not appear within 30s")
                if key_file.is_file():
                    tidal.key = key_file.read_text().strip()
                time.sleep(0.05)
        except BaseException:
            server.stop()
            raise
        return tidal

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the gateway alone first (it stops its instances and templates itself), then sweep
        its process group; signalling the whole group at once makes it see instances die and
        replace them while it shuts down."""
        proc = self.server.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        self.server.stop()
        # The local backend's socket folder (/tmp/tidal-<hash of the state dir>) outlives the
        # gateway, empty; a benchmark's state dir is temporary, so remove the folder if empty.
        tag = hashlib.sha256(str(self.state.resolve()).encode()).hexdigest()[:10]
        with contextlib.suppress(OSError):
            (Path(tempfile.gettempdir()) / f"tidal-{tag}").rmdir()

    def deploy(self, path: Path, *flags: str, timeout: float = 180.0) -> str:
        """``tidal deploy PATH FLAGS...`` against this gateway; its output, or ServerError."""
        env = {**os.environ, "TIDAL_URL": f"http://{HOST}:{self.port}", "TIDAL_API_KEY": self.key}
        done = subprocess.run(
            [tidal_bin(), "deploy", str(path), *flags],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise ServerError(f"tidal deploy {path} {' '.join(flags)}: {done.stderr.strip() or done.stdout}")
        return done.stdout.strip()

    def get_json(self, path: str, timeout: float = 10.0) -> Any:
        status, body = http_request(self.port, "GET", path, headers=self.headers, timeout=timeout)
        if status != 200:
            raise ServerError(f"GET {path}: HTTP {status} {body[:200]!r}")
        return json.loads(body)

    def instances(self, function: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.get_json(f"/v1/functions/{function}")["instances"])

    def wait_idle(self, function: str, timeout: float) -> float:
        """Poll until ``function`` has no instance ready or starting; seconds waited, or ServerError."""
        start = time.monotonic()
        while True:
            self.server.check_alive()
            inst = self.instances(function)
            if inst["ready"] == 0 and inst["starting"] == 0:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise ServerError(f"{function}: still {inst['ready']} ready, {inst['starting']} starting")
            time.sleep(0.1)

    def activation(self, activation_id: str, timeout: float = 10.0) -> dict[str, Any] | None:
        """The activation record (written in batches: polled until it appears), None if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = http_request(
                self.port, "GET", f"/v1/activations/{activation_id}", headers=self.headers
            )
            if status == 200:
                return cast(dict[str, Any], json.loads(body))
            time.sleep(0.1)
        return None


# --------------------------------------------------------------------- open-loop asyncio HTTP client


@dataclass
class Reply:
    status: int  # 0: no HTTP answer (see error)
    headers: dict[str, str]
    body: bytes
    error: str = ""


class HttpPool:
    """A small asyncio HTTP/1.1 client for 127.0.0.1:port, far cheaper per request than httpx.

    Keep-alive connections are reused; a request that finds none idle opens a new one (at most
    ``limit`` at once), so an open-loop sender never waits on an earlier answer. Responses with a
    Content-Length, chunked ones, and close-delimited ones are read.
    """

    IDLE_S = 3.0

    def __init__(self, port: int, headers: Mapping[str, str], limit: int = 1024) -> None:
        self.port = port
        self.head_extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.idle: list[tuple[Any, Any, float]] = []  # reader, writer, idle since
        self.slots = asyncio.Semaphore(limit)
        self.opened = 0
        self.stale = 0  # reused connections found closed by the server (the request was resent)

    async def request(self, method: str, path: str, body: bytes = b"", timeout: float = 60.0) -> Reply:
        async with self.slots:
            deadline = time.monotonic() + timeout
            for attempt in range(2):
                conn: tuple[Any, Any] | None = self._take_idle() if attempt == 0 else None
                reused = conn is not None
                try:
                    if conn is None:
                        conn = await asyncio.wait_for(asyncio.open_connection(HOST, self.port), timeout)
                        self.opened += 1
                    assert conn is not None
                    left = max(0.001, deadline - time.monotonic())
                    reply, keep = await asyncio.wait_for(self._exchange(conn, method, path, body), left)
                except (OSError, EOFError, ValueError, TimeoutError, asyncio.IncompleteReadError) as exc:
                    if conn is not None:
                        conn[1].close()
                    stale = isinstance(exc, ConnectionError) or (
                        isinstance(exc, asyncio.IncompleteReadError) and not exc.partial
                    )
                    if (
                        reused and stale
                    ):  # the server closed an idle keep-alive connection: nothing was served
                        self.stale += 1
                        continue
                    return Reply(0, {}, b"", type(exc).__name__)
                except asyncio.CancelledError:
                    if conn is not None:
                        conn[1].close()
                    raise
                assert conn is not None
                if keep:
                    self.idle.append((conn[0], conn[1], time.monotonic()))
                else:
                    conn[1].close()
                return reply
            return Reply(0, {}, b"", "unreachable")

    def _take_idle(self) -> tuple[Any, Any] | None:
        """The most recently used idle connection; ones idle past ``IDLE_S`` are closed instead
        (uvicorn drops keep-alive connections idle for 5 s)."""
        now = time.monotonic()
        while self.idle:
            reader, writer, since = self.idle.pop()
            if now - since < self.IDLE_S:
                return reader, writer
            writer.close()
        return None

    async def _exchange(
        self, conn: tuple[Any, Any], method: str, path: str, body: bytes
    ) -> tuple[Reply, bool]:
        reader, writer = conn
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n{self.head_extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        keep = headers.get("connection", "").lower() != "close"
        if "content-length" in headers:
            data = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            await reader.readuntil(b"\r\n")  # the empty trailer
            data = b"".join(parts)
        else:
            data, keep = await reader.read(), False
        return Reply(status, headers, data), keep

    async def get_json(self, path: str, timeout: float = 10.0) -> Any:
        reply = await self.request("GET", path, timeout=timeout)
        if reply.status != 200:
            raise ServerError(f"GET {path}: {reply.status or reply.error} {reply.body[:200]!r}")
        return json.loads(reply.body)

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


@dataclass
class Shot:
    """One request of an open-loop run."""

    index: int
    at: float  # scheduled, seconds from the start
    lag_ms: float = 0.0  # how late the client sent it
    latency_ms: float = 0.0
    status: int = -1  # -1: never answered before the drain limit; 0: client-side error
    cold: bool = False
    error: str = ""


async def open_loop(
    pool: HttpPool,
    path: str,
    schedule: Sequence[float],
    body_of: Callable[[int], bytes],
    *,
    timeout: float,
    drain_s: float,
) -> list[Shot]:
    """Send request i at ``schedule[i]`` seconds from now whatever came back before; then wait up
    to ``drain_s`` seconds for the stragglers (cancelled past that, status -1)."""
    clock = time.perf_counter  # not loop.time(): uvloop's clock ticks in whole milliseconds
    shots = [Shot(i, at) for i, at in enumerate(schedule)]
    bodies = [body_of(i) for i in range(len(schedule))]

    async def fire(shot: Shot) -> None:
        sent = clock()
        shot.lag_ms = (sent - t0 - shot.at) * 1e3
        reply = await pool.request("POST", path, bodies[shot.index], timeout=timeout)
        shot.latency_ms = (clock() - sent) * 1e3
        shot.status, shot.error = reply.status, reply.error
        shot.cold = reply.headers.get("x-tidal-cold-start") == "1"

    tasks: list[asyncio.Task[None]] = []
    t0 = clock()
    for shot in shots:
        delay = t0 + shot.at - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(shot)))
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=drain_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return shots


def status_counts(shots: Sequence[Shot]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in shots:
        key = str(s.status) if s.status > 0 else ("unanswered" if s.status < 0 else f"error:{s.error}")
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (cheaper per request on 2 cores), else the default loop."""
    try:
        import uvloop

        return cast(asyncio.AbstractEventLoop, uvloop.new_event_loop())
    except ImportError:
        return asyncio.new_event_loop()


def cpu_sample() -> tuple[int, int, int] | None:
    """(total, idle + iowait, steal) jiffies of all CPUs from /proc/stat; None where unreadable."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    steal = fields[7] if len(fields) > 7 else 0
    return sum(fields[:8]), fields[3] + fields[4], steal


def cpu_usage(before: tuple[int, int, int] | None, after: tuple[int, int, int] | None) -> dict[str, float]:
    """Busy and steal percentages of the machine between two ``cpu_sample()``s (empty if unknown)."""
    if before is None or after is None or after[0] <= before[0]:
        return {}
    total = after[0] - before[0]
    return {
        "busy_pct": 100.0 * (total - (after[1] - before[1])) / total,
        "steal_pct": 100.0 * (after[2] - before[2]) / total,
    }


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds a process has used (from /proc/PID/stat), None when unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
