"""Bursty traffic from zero: the Azure LLM conversation trace (2023) replayed against ``embed``.

The trace's arrival times (the first ``--minutes`` minutes, compressed ``--speed`` times: by
default 10 minutes -> 60 s) drive an open-loop load: each request goes out at its scheduled time
whatever the earlier ones are doing. Each request embeds one sentence whose length follows the
row's ContextTokens loosely (tokens / 16 words, 1..64). ``embed`` is deployed with
``--scale-to-zero-after 5s --max-instances 4`` (concurrency 4, its own) and starts at zero.

Reported: requests sent, status counts (any 5xx is flagged loudly), latency p50/p95/p99, cold
starts (``x-tidal-cold-start: 1``), instances over time (``GET /v1/functions/embed`` every 0.5 s,
summarized per 5 s), instance-seconds used (integral of ready instances over the replay) vs a
fixed fleet at the peak for the same time, and how late the client sent (it must keep up).

Run: ``.venv/bin/python bench/burst.py [--quick] [--json PATH] [--speed 10] [--minutes 10]``
(``--quick``: the first 3 minutes of the trace, 18 s of replay).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO_ROOT,
    HttpPool,
    ServerError,
    Shot,
    Tidal,
    cpu_sample,
    cpu_usage,
    new_event_loop,
    open_loop,
    percentile,
    proc_cpu_s,
    status_counts,
    stop_on_sigterm,
    summarize_ms,
    write_json,
)

TRACE = REPO_ROOT.parent / "shared" / "data" / "traces" / "azure_llm_conv_2023.csv"
EMBED = REPO_ROOT / "examples" / "embed"
# fmt: off
WORDS = ["the", "a", "model", "serves", "requests", "quickly", "when", "warm", "and", "slowly", "cold",
         "so", "we", "measure", "how", "instances", "scale", "with", "bursty", "traffic", "from", "real",
         "trace", "of", "conversations", "sent", "to", "large", "language", "service"]
# fmt: on
POLL_S = 0.5
BUCKET_S = 5.0
REQUEST_TIMEOUT_S = 60.0
DRAIN_S = 90.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the first 3 minutes of the trace")
    p.add_argument("--minutes", type=float, help="trace minutes to replay (default 10)")
    p.add_argument("--speed", type=float, default=10.0, help="time compression (10)")
    p.add_argument("--trace", type=Path, default=TRACE)
    p.add_argument("--max-instances", type=int, default=4)
    p.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON here")
    p.add_argument("--keep-logs", action="store_true", help="keep the temporary dir with the gateway log")
    args = p.parse_args(argv)
    args.minutes = args.minutes or (3.0 if args.quick else 10.0)
    if args.minutes <= 0 or args.speed <= 0:
        p.error("--minutes and --speed must be positive")
    return args


def load_trace(path: Path, minutes: float, speed: float) -> tuple[list[float], list[int]]:
    """Send times (s from the start, compressed) and ContextTokens of the rows in the window."""
    times: list[float] = []
    tokens: list[int] = []
    t0: datetime | None = None
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            ts = datetime.fromisoformat(row["TIMESTAMP"])  # 7 fractional digits: 3.11 truncates
            t0 = t0 or ts
            offset = (ts - t0).total_seconds()
            if offset >= minutes * 60:
                break
            times.append(offset / speed)
            tokens.append(int(row["ContextTokens"]))
    return times, tokens


def make_bodies(tokens: list[int]) -> list[bytes]:
    rng = random.Random(0)
    bodies = []
    for n in tokens:
        words = rng.choices(WORDS, k=max(1, min(64, round(n / 16))))
        bodies.append(json.dumps({"texts": [" ".join(words)]}).encode())
    return bodies


async def replay(
    tidal: Tidal, times: list[float], bodies: list[bytes]
) -> tuple[list[Shot], list[dict[str, Any]], dict[str, Any]]:
    pool = HttpPool(tidal.port, tidal.headers, limit=2048)
    poller = HttpPool(tidal.port, tidal.headers, limit=2)
    samples: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    async def poll() -> None:
        while True:
            try:
                inst = (await poller.get_json("/v1/functions/embed"))["instances"]
                keys = ("ready", "starting", "desired", "queued", "in_flight")
                samples.append({"t": time.perf_counter() - t0, **{k: inst.get(k, 0) for k in keys}})
            except (ServerError, ValueError, KeyError) as exc:
                samples.append({"t": time.perf_counter() - t0, "error": str(exc)[:200]})
            await asyncio.sleep(POLL_S)

    task = asyncio.create_task(poll())
    try:
        shots = await open_loop(
            pool, "/fn/embed", times, bodies.__getitem__, timeout=REQUEST_TIMEOUT_S, drain_s=DRAIN_S
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        pool.close()
        poller.close()
    return shots, samples, {"connections_opened": pool.opened, "stale_reconnects": pool.stale}


def instance_seconds(samples: list[dict[str, Any]], end: float) -> tuple[float, int]:
    """Integral of ``ready`` over [0, end] (each sample held until the next), and the peak of
    ``ready`` over every sample (the drain after the last send included): a fixed fleet's size."""
    good = [s for s in samples if "ready" in s and s["t"] <= end]
    total = 0.0
    for a, b in zip(good, [*good[1:], {"t": end}], strict=True):
        total += a["ready"] * max(0.0, b["t"] - a["t"])
    return total, max((s["ready"] for s in samples if "ready" in s), default=0)


def timeline(shots: list[Shot], samples: list[dict[str, Any]], span: float) -> list[dict[str, Any]]:
    rows = []
    for i in range(int(span // BUCKET_S) + 1):
        lo, hi = i * BUCKET_S, (i + 1) * BUCKET_S
        ss = [s for s in samples if lo <= s["t"] < hi and "ready" in s]
        sh = [s for s in shots if lo <= s.at < hi]
        lat = [s.latency_ms for s in sh if s.status == 200]
        rows.append(
            {
                "t": lo,
                "sent": len(sh),
                "cold": sum(s.cold for s in sh),
                "p50_ms": percentile(lat, 50) if lat else None,
                **{f"{k}_max": max((s[k] for s in ss), default=0) for k in ("ready", "desired", "queued")},
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    times, tokens = load_trace(args.trace, args.minutes, args.speed)
    if not times:
        print(f"no rows in the first {args.minutes:g} minutes of {args.trace}", file=sys.stderr)
        return 2
    span = times[-1]
    print(f"{len(times)} requests over {span:.1f} s ({len(times) / max(span, 1e-9):.1f} req/s mean)")
    workdir = Path(tempfile.mkdtemp(prefix="tidal-burst-"))
    results: dict[str, Any] = {
        "config": {"trace": str(args.trace), "minutes": args.minutes, "speed": args.speed, "span_s": span},
        "errors": {},
    }
    failed = False
    tidal: Tidal | None = None
    try:
        tidal = Tidal.start(workdir)
        tidal.deploy(EMBED, "--scale-to-zero-after", "5s", "--max-instances", str(args.max_instances))
        tidal.wait_idle("embed", 30.0)
        time.sleep(2.0)  # let a template (if any) finish building: measure scale-up, not deploy
        print(f"replaying against embed (max {args.max_instances} instances) ...", flush=True)
        loop = new_event_loop()
        cpu_before, gw_before, me_before = cpu_sample(), proc_cpu_s(tidal.pid), time.process_time()
        try:
            shots, samples, client = loop.run_until_complete(replay(tidal, times, make_bodies(tokens)))
        finally:
            loop.close()
        results["cpu"] = cpu_usage(cpu_before, cpu_sample())
        gw_after = proc_cpu_s(tidal.pid)
        results["cpu"]["client_s"] = time.process_time() - me_before
        if gw_before is not None and gw_after is not None:
            results["cpu"]["gateway_s"] = gw_after - gw_before
        info = tidal.get_json("/v1/functions/embed")
        results["events"] = info.get("events", [])[-200:]
        results["instances_after"] = {k: v for k, v in info["instances"].items() if k != "list"}
    except (ServerError, OSError) as exc:
        results["errors"]["run"] = str(exc)
        print(f"benchmark failed: {exc}", file=sys.stderr)
        if tidal is not None:
            print(tidal.server.log_tail(), file=sys.stderr)
        failed = args.keep_logs = True
        shots, samples, client = [], [], {}
    except KeyboardInterrupt:
        failed = args.keep_logs = True
        shots, samples, client = [], [], {}
    finally:
        if tidal is not None:
            tidal.stop()
        if args.keep_logs:
            print(f"gateway log kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if not shots:
        write_json(args.json, results)
        return 1

    counts = status_counts(shots)
    ok = [s.latency_ms for s in shots if s.status == 200]
    five_xx = sum(n for k, n in counts.items() if k.startswith("5"))
    used, peak = instance_seconds(samples, span)
    results.update(
        sent=len(shots),
        status=counts,
        five_xx=five_xx,
        latency_ok_ms=summarize_ms(ok),
        latency_cold_ms=summarize_ms([s.latency_ms for s in shots if s.cold and s.status == 200]),
        cold_starts=sum(s.cold for s in shots),
        client=client | {"send_lag_ms": summarize_ms([s.lag_ms for s in shots])},
        instance_seconds=used,
        peak_ready=peak,
        fixed_fleet_instance_seconds=peak * span,
        timeline=timeline(shots, samples, span),
        samples=samples,
    )
    lat, lag = results["latency_ok_ms"], results["client"]["send_lag_ms"]
    print(
        f"\nBurst replay: {len(shots)} requests in {span:.1f} s (trace x{args.speed:g}, {args.minutes:g} min)"
    )
    print(f"status: {counts}")
    if five_xx or any(k != "200" for k in counts):
        print(f"!!!!! {five_xx} 5xx answers, {len(shots) - len(ok)} not 200 in all !!!!!")
    if ok:
        print(f"latency (200s): p50 {lat['p50']:.1f} ms  p95 {lat['p95']:.1f} ms  p99 {lat['p99']:.1f} ms")
    cold = results["latency_cold_ms"]
    print(
        f"cold starts: {results['cold_starts']} requests answered x-tidal-cold-start: 1"
        + (f" (their p50 {cold['p50']:.0f} ms, max {cold['max']:.0f} ms)" if cold["n"] else "")
    )
    print(f"client send lag: p50 {lag['p50']:.2f} ms  p99 {lag['p99']:.2f} ms  max {lag['max']:.1f} ms")
    if results.get("cpu"):
        cpu = results["cpu"]
        print(
            f"CPU during the replay: gateway {cpu.get('gateway_s', 0):.1f} s, "
            f"this client {cpu['client_s']:.1f} s; machine {cpu.get('busy_pct', 0):.0f}% busy, "
            f"{cpu.get('steal_pct', 0):.0f}% stolen (VM)"
        )
    cols = f"{'t (s)':>7}{'sent':>6}{'cold':>6}{'p50 ms':>8}{'ready':>7}{'desired':>8}{'queued':>7}"
    print(cols + "  (max per 5 s)")
    for row in results["timeline"]:
        p50 = "-" if row["p50_ms"] is None else f"{row['p50_ms']:.0f}"
        print(
            f"{row['t']:>7.0f}{row['sent']:>6}{row['cold']:>6}{p50:>8}{row['ready_max']:>7}"
            f"{row['desired_max']:>8}{row['queued_max']:>7}"
        )
    fixed = results["fixed_fleet_instance_seconds"]
    print(
        f"instance-seconds: {used:.1f} used vs {fixed:.1f} for a fixed fleet of {peak} (the peak) "
        f"over {span:.1f} s: {used / fixed:.2f}x"
        if fixed
        else f"instance-seconds: {used:.1f}"
    )
    write_json(args.json, results)
    return 1 if failed or five_xx else 0


if __name__ == "__main__":
    sys.exit(main())
