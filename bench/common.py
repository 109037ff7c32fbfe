"""Shared helpers for the benchmarks in bench/: servers in subprocesses, a low-overhead sequential
HTTP client, ``wrk`` runs and their parsing, percentiles, and loading a tidal function by path.

Everything here talks to 127.0.0.1 only, and every wait is bounded in time.
"""

from __future__ import annotations

import contextlib
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
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


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
