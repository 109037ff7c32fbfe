"""Warm-path benchmark: echo through tidal vs a raw Starlette + uvicorn echo vs a direct call.

All in one run on this machine:

* direct: ``echo(payload)`` from examples/echo.py, imported in-process, timed per call;
* sequential: N requests one after another on one keep-alive connection per server, the servers
  taking turns in blocks so that drift on a noisy machine hits both alike; p50 / p99;
* throughput: ``wrk -t2 -c16`` against each server in turn, several rounds, median req/s.

Targets (2 cores): tidal's sequential p50 at most 3x the raw echo's; tidal's throughput at least
25% of the raw echo's. The raw echo returns the body bytes as received (no JSON decode/encode);
tidal decodes and re-encodes, which is part of the overhead measured.

Run: ``.venv/bin/python bench/warm_path.py`` (``--quick`` for a short run, ``--json PATH`` to save
the results, ``--no-tidal`` for the baselines alone, ``--attach PORT`` to measure a gateway that is
already running instead of starting one). Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BENCH_DIR,
    HOST,
    REPO_ROOT,
    SequentialClient,
    Server,
    ServerError,
    WrkResult,
    free_port,
    http_request,
    json_equal,
    load_function,
    median,
    percentile,
    run_wrk,
    write_wrk_script,
    wrk_available,
)

PAYLOAD: dict[str, Any] = {"text": "hello", "n": 1}
ECHO_PATH = "/fn/echo"
TARGET_P50_RATIO = 3.0  # tidal seq p50 / raw seq p50 at most this
TARGET_RPS_RATIO = 0.25  # tidal req/s / raw req/s at least this
RAY_REFERENCE = "measured on this machine earlier: 6.3 ms p50, ~400 req/s"
REFERENCE = {"ray_serve": {"p50_ms": 6.3, "rps": 400.0}, "raw_uvicorn": {"p50_ms": 0.33, "rps": 30_000.0}}
SEQ_PHASE_LIMIT_S = 900.0  # the whole sequential phase, all targets
COLD_START_LIMIT_S = 90.0  # the first answer (a cold start, maybe retried) must come within this
REQUEST_TIMEOUT_S = 30.0  # any later request


@dataclass
class Target:
    """An HTTP echo under test."""

    name: str
    port: int
    headers: dict[str, str] = field(default_factory=dict)
    admin_headers: dict[str, str] = field(default_factory=dict)  # --limited-key: the admin key's, for status
    server: Server | None = None  # None when attached to a server this script did not start
    seq_ns: list[int] = field(default_factory=list)
    reconnects: int = 0
    wrk: list[WrkResult] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{ECHO_PATH}"


# ------------------------------------------------------------------------------------------ options


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="400 requests, 3 s of wrk, one round")
    p.add_argument("--requests", type=int, help="sequential requests per target (default 2000)")
    p.add_argument("--block", type=int, default=200, help="requests per interleaved block (200)")
    p.add_argument("--warmup", type=int, default=200, help="warm-up requests per target (200)")
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 10)")
    p.add_argument("--rounds", type=int, help="wrk rounds per target, median reported (default 3)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON here")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--echo-file", type=Path, default=REPO_ROOT / "examples" / "echo.py")
    p.add_argument("--no-tidal", action="store_true", help="measure the baselines only")
    p.add_argument("--tidal-bin", help="the `tidal` executable (default: beside this Python, then PATH)")
    p.add_argument(
        "--tidal-log-level",
        default="warning",
        help="`tidal up --log-level` (warning, like the raw echo's; '' passes none)",
    )
    p.add_argument("--attach", type=int, metavar="PORT", help="use a tidal gateway already on PORT")
    p.add_argument("--key", help="API key for --attach (default: read --key-file)")
    p.add_argument("--key-file", type=Path, default=REPO_ROOT / ".tidal" / "admin.key")
    p.add_argument("--no-ray", action="store_true", help="skip Ray Serve even when installed")
    p.add_argument(
        "--limited-key",
        action="store_true",
        help="invoke tidal with a new key that has a rate limit and a quota (--key-rate, --key-quota)",
    )
    p.add_argument("--key-rate", default="1000000/s", help="--limited-key's rate (1000000/s: never reached)")
    p.add_argument("--key-quota", default="1000000000/day", help="--limited-key's quota (1000000000/day)")
    p.add_argument("--keep-logs", action="store_true", help="keep the temporary dir with server logs")
    args = p.parse_args(argv)
    args.requests = args.requests or (400 if args.quick else 2000)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if args.requests < 1 or args.block < 1 or args.rounds < 1 or args.warmup < 0:
        p.error("--requests, --block and --rounds must be positive, --warmup not negative")
    return args


# ------------------------------------------------------------------------------------------ servers


def start_raw(workdir: Path) -> Target:
    port = free_port()
    server = Server(
        name="raw uvicorn",
        cmd=[
            sys.executable,
            "-m",
            "uvicorn",
            "raw_echo:app",
            "--app-dir",
            str(BENCH_DIR),
            "--host",
            HOST,
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
            "--workers",
            "1",
        ],
        port=port,
        log_path=workdir / "raw_uvicorn.log",
    )
    target = Target("raw uvicorn", port, server=server)
    server.start()
    server.wait_http("/healthz", timeout=30.0)
    return target


def tidal_executable(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "tidal"
    if beside.exists():
        return str(beside)
    return shutil.which("tidal")


def start_tidal(workdir: Path, echo_file: Path, tidal_bin: str | None, log_level: str) -> Target:
    exe = tidal_executable(tidal_bin)
    if exe is None:
        raise ServerError("no `tidal` executable beside this Python or on PATH (pip install -e .)")
    port = free_port()
    state = workdir / "tidal-state"
    server = Server(
        name="tidal",
        cmd=[
            exe,
            "up",
            "--host",
            HOST,
            "--port",
            str(port),
            "--state-dir",
            str(state),
            "--deploy",
            str(echo_file),
            *(["--log-level", log_level] if log_level else []),
        ],
        port=port,
        log_path=workdir / "tidal.log",
    )
    target = Target("tidal", port, server=server)
    try:
        server.start()
        server.wait_http("/healthz", timeout=90.0)
        key = wait_for_file(state / "admin.key", server, timeout=30.0)
        target.headers = {"Authorization": f"Bearer {key}"}
        server.wait_http("/v1/functions/echo", timeout=60.0, headers=target.headers)
    except BaseException:
        server.stop()
        raise
    return target


def attach_tidal(port: int, key: str | None, key_file: Path) -> Target:
    if key is None:
        try:
            key = key_file.read_text().strip()
        except OSError as exc:
            raise ServerError(f"--attach needs --key or a readable --key-file ({exc})") from exc
    target = Target("tidal", port, headers={"Authorization": f"Bearer {key}"})
    status, body = http_request(port, "GET", "/v1/functions/echo", headers=target.headers)
    if status != 200:
        raise ServerError(f"GET /v1/functions/echo on port {port}: HTTP {status} {body[:200]!r}")
    return target


def use_limited_key(target: Target, rate: str, quota: str) -> dict[str, Any]:
    """Create a key with a rate limit and a quota (admin key of ``target``) and invoke with it from
    now on, so that every measured request goes through the per-key limit check."""
    request = json.dumps({"scopes": ["invoke:echo"], "rate": rate, "quotas": [quota], "description": "bench"})
    headers = {**target.headers, "Content-Type": "application/json"}
    status, body = http_request(target.port, "POST", "/v1/keys", body=request.encode(), headers=headers)
    if status != 201:
        raise ServerError(f"POST /v1/keys: HTTP {status} {body[:300]!r}")
    created = json.loads(body)
    target.admin_headers = target.headers
    target.headers = {"Authorization": f"Bearer {created['key']}"}
    return {"id": created["id"], "limits": created["limits"]}


def start_ray(workdir: Path) -> Target:
    port = free_port()
    server = Server(
        name="Ray Serve",
        cmd=[sys.executable, str(BENCH_DIR / "ray_echo.py"), str(port)],
        port=port,
        log_path=workdir / "ray_serve.log",
    )
    target = Target("Ray Serve", port, server=server)
    try:
        server.start()
        server.wait_http("/-/healthz", timeout=180.0)
    except BaseException:
        server.stop()
        raise
    return target


def wait_for_file(path: Path, server: Server, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.check_alive()
        if path.is_file():
            text = path.read_text().strip()
            if text:
                return text
        time.sleep(0.1)
    raise ServerError(f"{path} did not appear within {timeout:.0f}s.\n{server.log_tail()}")


def function_info(target: Target) -> dict[str, Any]:
    """What tidal says about the echo function (instances, mostly); empty for other targets."""
    if target.name != "tidal":
        return {}
    try:
        headers = target.admin_headers or target.headers
        status, body = http_request(target.port, "GET", "/v1/functions/echo", headers=headers)
        if status != 200:
            return {"error": f"HTTP {status}"}
        info = json.loads(body)
    except (OSError, ValueError) as exc:
        return {"error": str(exc)}
    instances = info.get("instances") if isinstance(info, dict) else None
    if isinstance(instances, list):
        return {"instances": len(instances)}
    if isinstance(instances, dict):  # a summary: keep its numbers, count its list
        summary = {k: v for k, v in instances.items() if isinstance(v, int | float | str)}
        for key, value in instances.items():
            if isinstance(value, list):
                summary[f"{key}_len"] = len(value)
        return summary
    return {"instances": instances}


# ------------------------------------------------------------------------------------ measurements


def bench_direct(echo_file: Path, count: int) -> dict[str, Any]:
    fn = load_function(echo_file, "echo")
    payload = dict(PAYLOAD)
    if fn(payload) != PAYLOAD:
        raise RuntimeError(f"{echo_file}: echo(payload) did not return the payload")
    clock = time.perf_counter_ns
    for _ in range(min(count, 200)):  # warm up
        fn(payload)
    samples: list[int] = []
    gc.disable()
    try:
        for _ in range(count):
            start = clock()
            fn(payload)
            samples.append(clock() - start)
    finally:
        gc.enable()
    return {
        "calls": count,
        "p50_us": percentile(samples, 50) / 1e3,
        "p99_us": percentile(samples, 99) / 1e3,
        "mean_us": sum(samples) / len(samples) / 1e3,
    }


def make_check(target: Target) -> Callable[[int, bytes], str | None]:
    def check(status: int, data: bytes) -> str | None:
        if status != 200:
            return f"{target.name}: HTTP {status} {data[:300]!r}"
        if not json_equal(data, PAYLOAD):
            return f"{target.name}: answer is not the payload: {data[:300]!r}"
        return None

    return check


def first_answer(t: Target, client: SequentialClient) -> None:
    """The first request may meet a cold start: allow it time, and retry a 5xx for a while."""
    check = make_check(t)
    deadline = time.monotonic() + COLD_START_LIMIT_S
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServerError(f"{t.name}: no good answer within {COLD_START_LIMIT_S:.0f}s")
        client.set_timeout(remaining)
        try:
            status, data = client.post()
        except TimeoutError as exc:
            raise ServerError(f"{t.name}: no answer within {COLD_START_LIMIT_S:.0f}s (cold start?)") from exc
        error = check(status, data)
        if error is None:
            client.set_timeout(REQUEST_TIMEOUT_S)
            return
        if status < 500 or deadline - time.monotonic() < 1.0:
            raise ServerError(error)
        time.sleep(1.0)


def sequential(targets: list[Target], body: bytes, count: int, block: int, warmup: int) -> None:
    """Interleaved blocks: A B, B A, A B ... so both see the same machine, in the same order."""
    clients = {
        t.name: SequentialClient(t.port, ECHO_PATH, body, t.headers, REQUEST_TIMEOUT_S) for t in targets
    }
    try:
        for t in targets:
            first_answer(t, clients[t.name])
            if warmup:
                clients[t.name].timed_block(warmup, make_check(t))
        deadline = time.monotonic() + SEQ_PHASE_LIMIT_S
        done = 0
        turn = 0
        while done < count:
            if time.monotonic() > deadline:
                raise ServerError(f"sequential phase passed {SEQ_PHASE_LIMIT_S:.0f}s; aborted")
            n = min(block, count - done)
            order = targets if turn % 2 == 0 else targets[::-1]
            for t in order:
                for server_target in targets:
                    if server_target.server is not None:
                        server_target.server.check_alive()
                gc.disable()
                try:
                    t.seq_ns.extend(clients[t.name].timed_block(n, make_check(t)))
                finally:
                    gc.enable()
            done += n
            turn += 1
    finally:
        for t in targets:
            t.reconnects = clients[t.name].reconnects
            clients[t.name].close()


def throughput(targets: list[Target], workdir: Path, args: argparse.Namespace, body: bytes) -> None:
    scripts = {
        t.name: write_wrk_script(workdir / f"post-{i}.lua", body, t.headers) for i, t in enumerate(targets)
    }
    warm_s = 1.0 if args.quick else 2.0
    for t in targets:  # let connection pools and any autoscaling settle; not measured
        warm = run_wrk(
            t.url, scripts[t.name], threads=args.threads, connections=args.connections, duration_s=warm_s
        )
        if warm.requests and warm.non_2xx == warm.requests:
            raise ServerError(f"{t.name}: every wrk request of the warm-up got a non-2xx answer")
    for r in range(args.rounds):
        order = targets if r % 2 == 0 else targets[::-1]
        for t in order:
            if t.server is not None:
                t.server.check_alive()
            result = run_wrk(
                t.url,
                scripts[t.name],
                threads=args.threads,
                connections=args.connections,
                duration_s=args.duration,
            )
            t.wrk.append(result)
            print(
                f"  wrk round {r + 1}/{args.rounds} {t.name:<12} {result.ok_per_s:>10,.0f} req/s"
                f"  non-2xx {result.non_2xx}",
                flush=True,
            )


# -------------------------------------------------------------------------------------------- report


def summarize(t: Target) -> dict[str, Any]:
    out: dict[str, Any] = {"port": t.port}
    if t.seq_ns:
        out["seq"] = {
            "requests": len(t.seq_ns),
            "p50_ms": percentile(t.seq_ns, 50) / 1e6,
            "p99_ms": percentile(t.seq_ns, 99) / 1e6,
            "mean_ms": sum(t.seq_ns) / len(t.seq_ns) / 1e6,
            "reconnects": t.reconnects,
        }
    if t.wrk:
        out["wrk"] = {
            "rounds": [w.to_dict() for w in t.wrk],
            "median_rps": median([w.ok_per_s for w in t.wrk]),
            "non_2xx": sum(w.non_2xx for w in t.wrk),
            "socket_errors": sum(sum(w.socket_errors.values()) for w in t.wrk),
            "median_p50_ms": _median_opt([w.latency_p50_ms for w in t.wrk]),
            "median_p99_ms": _median_opt([w.latency_p99_ms for w in t.wrk]),
        }
    if t.info:
        out["info"] = t.info
    return out


def _median_opt(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return median(present) if present else None


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    cfg = results["config"]
    print()
    print(
        f"Warm path on {cfg['cpus']} CPU(s), payload {cfg['payload']} ({cfg['payload_bytes']} bytes); "
        f"sequential: {cfg['requests']} requests per target in interleaved blocks of {cfg['block']}; "
        f"wrk -t{cfg['wrk_threads']} -c{cfg['wrk_connections']} -d{cfg['wrk_duration_s']:g}s "
        f"x{cfg['wrk_rounds']} (median); 1-min load average {cfg['loadavg_start']:.2f} at start, "
        f"{cfg['loadavg_end']:.2f} at end"
    )
    header = (
        f"{'target':<14}{'seq p50':>11}{'seq p99':>11}{'req/s':>10}{'non-2xx':>9}{'sock err':>9}"
        f"{'wrk p50':>10}{'wrk p99':>10}"
    )
    if cfg.get("limited_key"):
        limits = cfg["limited_key"]["limits"]
        print(
            f"tidal invoked with a limited key: rate {limits['rate']}, quotas {', '.join(limits['quotas'])}"
        )
    print(header)
    print("-" * len(header))
    for name, r in results["targets"].items():
        seq = r.get("seq", {})
        wrk = r.get("wrk", {})
        cells = [
            (_fmt(seq.get("p50_ms"), ".3f", " ms"), 11),
            (_fmt(seq.get("p99_ms"), ".3f", " ms"), 11),
            (_fmt(wrk.get("median_rps"), ",.0f"), 10),
            (_fmt(wrk.get("non_2xx"), "d"), 9),
            (_fmt(wrk.get("socket_errors"), "d"), 9),
            (_fmt(wrk.get("median_p50_ms"), ".2f", " ms"), 10),
            (_fmt(wrk.get("median_p99_ms"), ".2f", " ms"), 10),
        ]
        print(f"{name:<14}" + "".join(text.rjust(width) for text, width in cells))
    direct = results.get("direct")
    if direct:
        print(
            f"{'direct call':<14}{direct['p50_us']:>8.2f} us{direct['p99_us']:>8.2f} us"
            f"   (echo(payload) in-process, {direct['calls']} calls)"
        )
    for name, err in results["errors"].items():
        print(f"{name}: FAILED: {err.splitlines()[0] if err else ''}")
    tidal = results["targets"].get("tidal", {})
    info = tidal.get("info")
    for when, summary in (info or {}).items():
        fields = " ".join(f"{k}={v}" for k, v in summary.items())
        print(f"tidal echo instances {when.replace('_', ' ')}: {fields}")
    ratios = results.get("ratios", {})
    if "seq_p50" in ratios:
        ok = ratios["seq_p50"] <= TARGET_P50_RATIO
        print(
            f"tidal / raw  seq p50: {ratios['seq_p50']:.2f}x  (target <= {TARGET_P50_RATIO:g}x: "
            f"{'PASS' if ok else 'MISS'})"
        )
    if "rps" in ratios:
        verdict = "PASS" if ratios["rps"] >= TARGET_RPS_RATIO else "MISS"
        print(f"tidal / raw  req/s:   {ratios['rps']:.2f}   (target >= {TARGET_RPS_RATIO:g}: {verdict})")
    if "seq_p50" in ratios and "seq" in tidal:
        ref = REFERENCE["ray_serve"]
        tidal_rps = _fmt(tidal.get("wrk", {}).get("median_rps"), ",.0f")
        print(
            f"for scale, Ray Serve measured here earlier: {ref['p50_ms']} ms p50, ~{ref['rps']:.0f} req/s "
            f"(tidal: {tidal['seq']['p50_ms']:.2f} ms, {tidal_rps} req/s)"
        )
    if results.get("ray_note"):
        print(results["ray_note"])
    print("note: the raw echo returns the body bytes as received; tidal decodes and re-encodes JSON.")


# ---------------------------------------------------------------------------------------------- main


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop servers on `kill` too, via finally
    if wrk_available() is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    body = json.dumps(PAYLOAD, separators=(",", ":")).encode()
    workdir = Path(tempfile.mkdtemp(prefix="tidal-warm-path-"))
    targets: list[Target] = []
    results: dict[str, Any] = {
        "config": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "payload": json.dumps(PAYLOAD),
            "payload_bytes": len(body),
            "requests": args.requests,
            "block": args.block,
            "warmup": args.warmup,
            "wrk_threads": args.threads,
            "wrk_connections": args.connections,
            "wrk_duration_s": args.duration,
            "wrk_rounds": args.rounds,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "loadavg_start": os.getloadavg()[0],
        },
        "targets": {},
        "errors": {},
        "reference": REFERENCE,
    }
    failed = False
    try:
        print(f"direct call: {args.echo_file} ...", flush=True)
        try:
            results["direct"] = bench_direct(args.echo_file, args.requests)
        except Exception as exc:  # the HTTP comparison is still worth running
            results["errors"]["direct"] = f"{type(exc).__name__}: {exc}"
            failed = True

        print("starting raw uvicorn ...", flush=True)
        targets.append(start_raw(workdir))

        if not args.no_tidal:
            print(
                "tidal: " + (f"attaching to port {args.attach}" if args.attach else "starting ..."),
                flush=True,
            )
            try:
                if args.attach:
                    targets.append(attach_tidal(args.attach, args.key, args.key_file))
                else:
                    targets.append(start_tidal(workdir, args.echo_file, args.tidal_bin, args.tidal_log_level))
                if args.limited_key:
                    results["config"]["limited_key"] = use_limited_key(
                        targets[-1], args.key_rate, args.key_quota
                    )
            except (ServerError, OSError) as exc:
                results["errors"]["tidal"] = str(exc)
                args.keep_logs = True
                print(f"tidal: could not start, measuring the baselines only:\n{exc}", file=sys.stderr)
                failed = True

        if args.no_ray:
            results["ray_note"] = "Ray Serve: skipped (--no-ray)"
        elif importlib.util.find_spec("ray") is None:
            results["ray_note"] = f"Ray Serve: not installed, skipped ({RAY_REFERENCE})"
        else:
            print("starting Ray Serve ...", flush=True)
            try:
                targets.append(start_ray(workdir))
            except (ServerError, OSError) as exc:
                results["errors"]["Ray Serve"] = str(exc)
                results["ray_note"] = f"Ray Serve: failed to start ({RAY_REFERENCE})"

        print(f"sequential: {args.requests} requests x {len(targets)} target(s) ...", flush=True)
        sequential(targets, body, args.requests, args.block, args.warmup)
        for t in targets:
            t.info["before_wrk"] = function_info(t)
        print(f"throughput: wrk x {args.rounds} round(s) of {args.duration:g}s ...", flush=True)
        throughput(targets, workdir, args, body)
        for t in targets:
            t.info["after_wrk"] = function_info(t)
            if not any(t.info.values()):
                t.info = {}
    except KeyboardInterrupt:
        print("\ninterrupted; stopping servers", file=sys.stderr)
        failed = True
        args.keep_logs = True
    except (ServerError, RuntimeError, OSError) as exc:
        print(f"\nbenchmark failed: {exc}", file=sys.stderr)
        for t in targets:
            if t.server is not None:
                print(t.server.log_tail(), file=sys.stderr)
        results["errors"]["run"] = str(exc)
        failed = True
        args.keep_logs = True
    finally:
        for t in reversed(targets):
            if t.server is not None:
                t.server.stop()
        if args.keep_logs:
            print(f"server logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    results["config"]["loadavg_end"] = os.getloadavg()[0]
    for t in targets:
        results["targets"][t.name] = summarize(t)
    raw = results["targets"].get("raw uvicorn", {})
    tidal = results["targets"].get("tidal", {})
    ratios: dict[str, float] = {}
    if "seq" in raw and "seq" in tidal:
        ratios["seq_p50"] = tidal["seq"]["p50_ms"] / raw["seq"]["p50_ms"]
        ratios["seq_p99"] = tidal["seq"]["p99_ms"] / raw["seq"]["p99_ms"]
    if "wrk" in raw and "wrk" in tidal and raw["wrk"]["median_rps"] > 0:
        ratios["rps"] = tidal["wrk"]["median_rps"] / raw["wrk"]["median_rps"]
    results["ratios"] = ratios
    met = {
        "seq_p50": ratios["seq_p50"] <= TARGET_P50_RATIO if "seq_p50" in ratios else None,
        "rps": ratios["rps"] >= TARGET_RPS_RATIO if "rps" in ratios else None,
    }
    results["targets_met"] = met
    results["targets_spec"] = {"seq_p50_ratio_max": TARGET_P50_RATIO, "rps_ratio_min": TARGET_RPS_RATIO}

    print_report(results, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")
    if failed:
        return 1
    if args.check and not all(v is True for v in met.values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
