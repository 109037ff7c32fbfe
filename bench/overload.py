"""Overload: 5x a function's capacity, open loop, then recovery at half capacity.

``busy`` sleeps 50 ms (concurrency 1) on exactly 2 instances (``--min-instances 2
--max-instances 2``) with ``--max-queue 20``: capacity is about 2 / 0.05 = 40 req/s. Phase
``overload`` sends 5x that (200 req/s) for 30 s whatever comes back; the excess must be refused
at once with 429 (Retry-After), not queued without bound: the 429s' p99 should stay under 50 ms
and the gateway's memory flat. Phase ``recovery`` then sends 0.5x capacity for 10 s: every answer
200, p50 close to the 50 ms service time.

Reported per phase: status counts, latency p50/p99 of the 200s and of the 429s apart, 200s per
second, the queue seen by ``GET /v1/functions/busy`` (max), the gateway's RSS (VmRSS of the
``tidal up`` process, sampled every 0.25 s) and how late the client sent.

Run: ``.venv/bin/python bench/overload.py [--quick] [--json PATH]`` (``--quick``: 10 s of overload).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    HttpPool,
    ServerError,
    Shot,
    Tidal,
    cpu_sample,
    cpu_usage,
    new_event_loop,
    open_loop,
    proc_cpu_s,
    proc_rss_kb,
    status_counts,
    stop_on_sigterm,
    summarize_ms,
    write_json,
)

SERVICE_S = 0.05
INSTANCES = 2
MAX_QUEUE = 20
CAPACITY = INSTANCES / SERVICE_S  # req/s
BUSY_SOURCE = f'''"""A fixed service time: {SERVICE_S * 1e3:.0f} ms of sleep, one request at a time."""
import time

import tidal


@tidal.function(name="busy", concurrency=1)
def busy(payload):
    time.sleep({SERVICE_S})
    return {{}}
'''
FAST_429_MS = 50.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10 s of overload")
    p.add_argument("--overload-s", type=float, help="seconds of overload (default 30)")
    p.add_argument("--factor", type=float, default=5.0, help="overload rate / capacity (5)")
    p.add_argument("--recovery-s", type=float, default=10.0, help="seconds of recovery at 0.5x (10)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON here")
    p.add_argument("--keep-logs", action="store_true", help="keep the temporary dir with the gateway log")
    args = p.parse_args(argv)
    args.overload_s = args.overload_s or (10.0 if args.quick else 30.0)
    if args.overload_s <= 0 or args.recovery_s <= 0 or args.factor <= 0:
        p.error("durations and --factor must be positive")
    return args


async def phase(tidal: Tidal, rate: float, seconds: float) -> tuple[list[Shot], dict[str, Any]]:
    """Open loop at ``rate`` req/s for ``seconds``, sampling RSS and the queue meanwhile."""
    pool = HttpPool(tidal.port, tidal.headers, limit=2048)
    poller = HttpPool(tidal.port, tidal.headers, limit=2)
    rss: list[int] = []
    queued: list[int] = []

    async def sample() -> None:
        tick = 0
        while True:
            kb = proc_rss_kb(tidal.pid)
            if kb is not None:
                rss.append(kb)
            if tick % 2 == 0:
                with contextlib.suppress(ServerError, ValueError, KeyError):
                    queued.append((await poller.get_json("/v1/functions/busy"))["instances"]["queued"])
            tick += 1
            await asyncio.sleep(0.25)

    task = asyncio.create_task(sample())
    cpu_before, gw_before, me_before = cpu_sample(), proc_cpu_s(tidal.pid), time.process_time()
    schedule = [i / rate for i in range(round(rate * seconds))]
    try:
        shots = await open_loop(pool, "/fn/busy", schedule, lambda i: b"{}", timeout=60.0, drain_s=60.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        pool.close()
        poller.close()
    gw_after, me_after = proc_cpu_s(tidal.pid), time.process_time()
    gw_cpu_ms = None if gw_before is None or gw_after is None else (gw_after - gw_before) * 1e3
    end = max((s.at + s.lag_ms / 1e3 + s.latency_ms / 1e3 for s in shots), default=seconds)
    ok = [s.latency_ms for s in shots if s.status == 200]
    return shots, {
        "rate": rate,
        "seconds": seconds,
        "sent": len(shots),
        "status": status_counts(shots),
        "latency_200_ms": summarize_ms(ok),
        "latency_429_ms": summarize_ms([s.latency_ms for s in shots if s.status == 429]),
        "ok_per_s": len(ok) / end if end > 0 else 0.0,
        "queued_max": max(queued, default=None),
        "rss_kb": summarize_ms([float(k) for k in rss]) | {"first": rss[0] if rss else None},
        "send_lag_ms": summarize_ms([s.lag_ms for s in shots]),
        "connections_opened": pool.opened,
        "cpu": cpu_usage(cpu_before, cpu_sample()),
        "gateway_cpu_ms_per_request": None if gw_cpu_ms is None else gw_cpu_ms / max(1, len(shots)),
        "client_cpu_ms_per_request": (me_after - me_before) * 1e3 / max(1, len(shots)),
    }


def print_phase(name: str, r: dict[str, Any]) -> None:
    print(f"\n{name}: {r['sent']} requests at {r['rate']:g} req/s for {r['seconds']:g} s")
    print(f"  status: {r['status']}")
    for code in ("200", "429"):
        lat = r[f"latency_{code}_ms"]
        if lat["n"]:
            print(
                f"  {code}s: n={lat['n']:<6} p50 {lat['p50']:7.1f} ms  p99 {lat['p99']:7.1f} ms"
                f"  max {lat['max']:.1f} ms"
            )
    rss, lag = r["rss_kb"], r["send_lag_ms"]
    print(f"  200s per second: {r['ok_per_s']:.1f} (capacity {CAPACITY:g}); queue max {r['queued_max']}")
    if rss["n"]:
        first, top = rss["first"] / 1024, rss["max"] / 1024
        print(f"  gateway RSS: first {first:.1f} MiB, max {top:.1f} MiB ({rss['n']} samples)")
    print(f"  client send lag: p50 {lag['p50']:.2f} ms  p99 {lag['p99']:.2f} ms  max {lag['max']:.1f} ms")
    gw = r["gateway_cpu_ms_per_request"]
    print(
        f"  CPU per request: gateway {'-' if gw is None else f'{gw:.2f}'} ms, "
        f"this client {r['client_cpu_ms_per_request']:.2f} ms"
        + (
            f"; machine {r['cpu']['busy_pct']:.0f}% busy, {r['cpu']['steal_pct']:.0f}% stolen"
            if r["cpu"]
            else ""
        )
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="tidal-overload-"))
    module = workdir / "busy.py"
    module.write_text(BUSY_SOURCE)
    results: dict[str, Any] = {
        "config": {
            "service_s": SERVICE_S,
            "instances": INSTANCES,
            "max_queue": MAX_QUEUE,
            "capacity_rps": CAPACITY,
            "factor": args.factor,
        },
        "errors": {},
    }
    failed = False
    tidal: Tidal | None = None
    try:
        tidal = Tidal.start(workdir)
        flags = ["--min-instances", str(INSTANCES), "--max-instances", str(INSTANCES)]
        tidal.deploy(module, *flags, "--max-queue", str(MAX_QUEUE))
        deadline = time.monotonic() + 60.0
        while tidal.instances("busy")["ready"] < INSTANCES:
            if time.monotonic() > deadline:
                raise ServerError(f"busy: not {INSTANCES} instances ready within 60 s")
            time.sleep(0.1)
        results["rss_idle_kb"] = proc_rss_kb(tidal.pid)
        loop = new_event_loop()
        try:
            rate = CAPACITY * args.factor
            print(
                f"overload: {rate:g} req/s for {args.overload_s:g} s (capacity {CAPACITY:g}) ...", flush=True
            )
            _, results["overload"] = loop.run_until_complete(phase(tidal, rate, args.overload_s))
            print(f"recovery: {CAPACITY / 2:g} req/s for {args.recovery_s:g} s ...", flush=True)
            _, results["recovery"] = loop.run_until_complete(phase(tidal, CAPACITY / 2, args.recovery_s))
        finally:
            loop.close()
        results["rss_after_kb"] = proc_rss_kb(tidal.pid)
        inst = tidal.instances("busy")
        results["instances_after"] = {k: v for k, v in inst.items() if k != "list"}
    except (ServerError, OSError) as exc:
        results["errors"]["run"] = str(exc)
        print(f"benchmark failed: {exc}", file=sys.stderr)
        if tidal is not None:
            print(tidal.server.log_tail(), file=sys.stderr)
        failed = args.keep_logs = True
    except KeyboardInterrupt:
        failed = args.keep_logs = True
    finally:
        if tidal is not None:
            tidal.stop()
        if args.keep_logs:
            print(f"gateway log kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    if "overload" in results:
        print_phase("overload", results["overload"])
        lat429 = results["overload"]["latency_429_ms"]
        if lat429["n"]:
            fast = lat429["p99"] < FAST_429_MS
            verdict = "met" if fast else "MISSED"
            print(f"  429 p99 {lat429['p99']:.1f} ms (target < {FAST_429_MS:g} ms: {verdict})")
        if any(k.startswith("5") or k.startswith("error") for k in results["overload"]["status"]):
            print("  !!!!! 5xx or client errors during overload !!!!!")
    if "recovery" in results:
        rec = results["recovery"]
        print_phase("recovery", rec)
        all_ok = rec["status"] == {"200": rec["sent"]}
        p50 = rec["latency_200_ms"].get("p50")
        ratio = "" if p50 is None else f"; p50 / service time {p50 / (SERVICE_S * 1e3):.2f}x"
        print(f"  all 200: {'yes' if all_ok else '!!!!! NO !!!!!'}{ratio}")
    if results.get("rss_idle_kb") and results.get("rss_after_kb"):
        idle, after = results["rss_idle_kb"] / 1024, results["rss_after_kb"] / 1024
        print(f"\ngateway RSS: idle {idle:.1f} MiB -> after {after:.1f} MiB")
    write_json(args.json, results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
