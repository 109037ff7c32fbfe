"""What metering and metrics cost the warm path: echo through tidal with them on vs off, same run.

* on: as shipped (each call's activation record journaled, then stored by the journal folder
  process; counted for /metrics; /metrics scraped every ``--scrape-every`` seconds during the
  load, as Prometheus would, each scrape timed: it waits for the records journaled before it to
  be stored and counted);
* journal: ``TIDAL_METRICS=journal`` (each record journaled before its answer, as shipped, but
  its segment deleted where it would be folded: nothing stored or counted, no /metrics). What
  the request path costs alone; "on" minus it is what storing and counting the records costs;
* off: ``TIDAL_METRICS=0`` (no records, no counts). Both are benchmark-only switches.

Three gateways, each with its own state dir, serving examples/echo.py. They take turns, so drift
on a noisy machine hits all alike: sequential requests on one keep-alive connection in interleaved
blocks (p50, p99), then ``wrk -t2 -c16`` rounds in a rotating order. Each round starts the three
gateways afresh, in that round's order: two identical gateways can differ by 4% in CPU per request
for the whole life of their processes (memory layout, hash seeds), which no number of rounds on the
same processes averages out. Before each measured run, every gateway stores what it journaled (its
journal folder would otherwise fold one mode's records during the next mode's run), then the mode
runs ``--warmup`` seconds unmeasured, longer than a fold interval (FOLD_INTERVAL_S): its own folds
then run in its window as under long load. Reported per mode: the median req/s, the gateway
process's CPU time per request, that of the gateway with every process under it (the journal
folder, templates, instances: the folder stores the records in a process of its own, so its CPU
is part of what metering costs), the folder's alone, the machine's (every process, wrk and
the kernel included), and the time the gateway waited for a core ("gw wait": its event loop
limits throughput, so what takes its core costs throughput beyond its own CPU time). The loss:
the median over rounds of 1 - on/off within a round (the modes of one round run back to back),
with its quartiles and a 95% confidence interval (distribution-free), and the loss of the median
req/s. Target: throughput loss (1 - on/off) at most 5%, judged met or missed only when that
interval lies wholly on one side of it.

Run: ``.venv/bin/python bench/metering_overhead.py [--quick] [--json PATH]``. 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    HOST,
    REPO_ROOT,
    SequentialClient,
    Server,
    ServerError,
    WrkResult,
    free_port,
    http_request,
    median,
    median_interval,
    percentile,
    proc_cpu_s,
    run_wrk,
    stop_on_sigterm,
    tidal_bin,
    write_json,
    write_wrk_script,
    wrk_available,
)

from tidal.metering.recorder import FOLD_INTERVAL_S

PAYLOAD = {"text": "hello", "n": 1}
SWITCH = {"on": "1", "journal": "journal", "off": "0"}  # mode -> TIDAL_METRICS
TARGET_LOSS = 0.05


@dataclass
class Mode:
    name: str  # "on" | "journal" | "off"
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    server: Server | None = None
    headers: dict[str, str] = field(default_factory=dict)
    seq_ns: list[int] = field(default_factory=list)
    wrk: list[WrkResult] = field(default_factory=list)
    cpu_us_per_request: list[float] = field(default_factory=list)  # the gateway process's, per wrk round
    tree_cpu_us_per_request: list[float] = field(default_factory=list)  # gateway + its descendants
    folder_cpu_us_per_request: list[float] = field(default_factory=list)  # the journal folder's share
    machine_cpu_us_per_request: list[float] = field(default_factory=list)  # every process, wrk included
    # Time the gateway was runnable but waited for a core (its /proc/PID/schedstat), per request:
    # the gateway's event loop is what limits throughput here, so work that takes its core
    # (the journal folder's, say) costs more throughput than its own CPU time.
    wait_us_per_request: list[float] = field(default_factory=list)
    scrapes: int = 0
    scrape_ms: list[float] = field(default_factory=list)  # how long each GET /metrics took


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="600 sequential requests, 2 rounds of 3 s wrk")
    p.add_argument("--requests", type=int, help="sequential requests per mode (default 2000)")
    p.add_argument("--block", type=int, default=200, help="requests per interleaved block (200)")
    p.add_argument("--duration", type=float, help="seconds per measured wrk run (default 5; quick 3)")
    p.add_argument("--rounds", type=int, help="rounds, each on fresh gateways (default 6; quick 2)")
    p.add_argument(
        "--warmup", type=float, default=FOLD_INTERVAL_S + 1.0,
        help=f"seconds of load before each measured run, unmeasured (default {FOLD_INTERVAL_S + 1.0:g})",
    )  # fmt: skip
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--scrape-every", type=float, default=2.0, help="GET /metrics on 'on' this often (0: never)"
    )
    p.add_argument(
        "--modes", default="on,journal,off", help="which of on, journal, off to run (on,off at least)"
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON here")
    args = p.parse_args(argv)
    args.modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if not {"on", "off"} <= set(args.modes) <= set(SWITCH):
        p.error("--modes: a list of on, journal, off with on and off in it")
    args.requests = args.requests or (600 if args.quick else 2000)
    args.duration = args.duration or (3.0 if args.quick else 5.0)
    args.rounds = args.rounds or (2 if args.quick else 6)
    return args


def start(mode: Mode, workdir: Path) -> None:
    state = workdir / f"state-{mode.name}"
    command = [tidal_bin(), "up", "--host", HOST, "--port", str(mode.port), "--state-dir", str(state),
               "--deploy", str(REPO_ROOT / "examples" / "echo.py"), "--log-level", "warning"]  # fmt: skip
    mode.server = Server(mode.name, command, mode.port, workdir / f"tidal-{mode.name}.log",
                         env={**os.environ, **mode.env})  # fmt: skip
    mode.server.start()
    mode.server.wait_http("/healthz", timeout=90.0)
    key_path = state / "admin.key"
    deadline = time.monotonic() + 30
    while not key_path.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    mode.headers = {"Authorization": f"Bearer {key_path.read_text().strip()}"}
    mode.server.wait_http("/v1/functions/echo", timeout=60.0, headers=mode.headers)


def rotated(modes: list[Mode], turn: int) -> list[Mode]:
    """Each mode goes first, middle and last equally often: on, journal, off; journal, off, on ..."""
    shift = turn % len(modes)
    return modes[shift:] + modes[:shift]


def check(status: int, data: bytes) -> str | None:
    return None if status == 200 and json.loads(data) == PAYLOAD else f"HTTP {status}: {data[:200]!r}"


def sequential(modes: list[Mode], body: bytes, count: int, block: int) -> None:
    clients = {mode.name: SequentialClient(mode.port, "/fn/echo", body, mode.headers, 30.0) for mode in modes}
    try:
        for mode in modes:  # the first call is a cold start; then a warm-up, not measured
            clients[mode.name].set_timeout(90.0)
            clients[mode.name].timed_block(1, check)
            clients[mode.name].set_timeout(30.0)
            clients[mode.name].timed_block(200, check)
        done, turn = 0, 0
        while done < count:
            n = min(block, count - done)
            for mode in rotated(modes, turn):
                mode.seq_ns.extend(clients[mode.name].timed_block(n, check))
            done, turn = done + n, turn + 1
    finally:
        for client in clients.values():
            client.close()


def scraping(mode: Mode, every_s: float, stop: threading.Event) -> None:
    """GET /metrics every ``every_s`` s while ``stop`` is unset (the 'on' gateway under load)."""
    while not stop.wait(every_s):
        began = time.perf_counter()
        status, _ = http_request(mode.port, "GET", "/metrics", headers=mode.headers, timeout=10)
        if status == 200:  # a scrape stores and counts what was journaled first: it waits for a fold
            mode.scrapes += 1
            mode.scrape_ms.append((time.perf_counter() - began) * 1000)


def throughput(modes: list[Mode], workdir: Path, args: argparse.Namespace, body: bytes) -> None:
    scripts = {
        mode.name: write_wrk_script(workdir / f"{mode.name}.lua", body, mode.headers) for mode in modes
    }
    url = {mode.name: f"http://{HOST}:{mode.port}/fn/echo" for mode in modes}
    for round_number in range(args.rounds):
        order = rotated(modes, round_number)
        if round_number > 0:  # fresh processes, started in this round's order
            for mode in modes:
                assert mode.server is not None
                mode.server.stop()
            for mode in order:
                start(mode, workdir)
        for mode in order:
            for other in modes:  # every journal folded: no other gateway's fold runs in this window
                quiesce(other)
            # Warm-up, not measured (the first call is a cold start): longer than a fold interval,
            # so that the window folds as under long load, what came before it included.
            run_wrk(url[mode.name], scripts[mode.name], threads=args.threads, connections=args.connections,
                    duration_s=args.warmup)  # fmt: skip
            measure(mode, url[mode.name], scripts[mode.name], args)
            print(f"  round {round_number + 1}/{args.rounds} metering {mode.name:<7} "
                  f"{mode.wrk[-1].ok_per_s:>9,.0f} req/s  p50 {mode.wrk[-1].latency_p50_ms} ms  "
                  f"non-2xx {mode.wrk[-1].non_2xx}", flush=True)  # fmt: skip


def quiesce(mode: Mode) -> None:
    """Wait until ``mode``'s gateway has stored every record it journaled (its activations API
    flushes first). A gateway folds its journal every FOLD_INTERVAL_S: without this, the fold of
    the records of one mode's turn would run in the next mode's window."""
    status, data = http_request(
        mode.port, "GET", "/v1/functions/echo/activations?limit=1", headers=mode.headers, timeout=120
    )
    if status != 200:
        raise ServerError(f"{mode.name}: flushing its records answered HTTP {status}: {data[:200]!r}")


def measure(mode: Mode, url: str, script: Path, args: argparse.Namespace) -> None:
    """One wrk run on ``mode``'s gateway, with the CPU time it cost (scraping /metrics, for "on")."""
    stop = threading.Event()
    scraper = None
    if mode.name == "on" and args.scrape_every > 0:
        scraper = threading.Thread(target=scraping, args=(mode, args.scrape_every, stop), daemon=True)
        scraper.start()
    assert mode.server is not None and mode.server.proc is not None
    cpu_before = proc_cpu_s(mode.server.proc.pid)
    wait_before = runqueue_wait_s(mode.server.proc.pid)
    tree_before = tree_cpu_s(mode.server.proc.pid)
    machine_before = machine_cpu_s()
    result = run_wrk(
        url, script, threads=args.threads, connections=args.connections, duration_s=args.duration
    )
    cpu_after = proc_cpu_s(mode.server.proc.pid)
    wait_after = runqueue_wait_s(mode.server.proc.pid)
    tree_after = tree_cpu_s(mode.server.proc.pid)
    machine_after = machine_cpu_s()
    stop.set()
    if scraper is not None:
        scraper.join()
    if result.requests:
        if cpu_before is not None and cpu_after is not None:
            mode.cpu_us_per_request.append((cpu_after - cpu_before) / result.requests * 1e6)
        if wait_before is not None and wait_after is not None:
            mode.wait_us_per_request.append((wait_after - wait_before) / result.requests * 1e6)
        alive = (
            tree_after.keys() & tree_before.keys()
        )  # processes alive at both ends (a warm path starts none)
        spent = sum(tree_after[pid] - tree_before[pid] for pid in alive)
        mode.tree_cpu_us_per_request.append(spent / result.requests * 1e6)
        folding = sum(tree_after[pid] - tree_before[pid] for pid in alive if is_folder(pid))
        mode.folder_cpu_us_per_request.append(folding / result.requests * 1e6)
        mode.machine_cpu_us_per_request.append((machine_after - machine_before) / result.requests * 1e6)
    mode.wrk.append(result)


def tree_cpu_s(root: int) -> dict[int, float]:
    """CPU seconds of ``root`` and of every process under it, by pid."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, changed = {root}, True
    while changed:
        grown = tree | {pid for pid, parent in parents.items() if parent in tree}
        changed, tree = grown != tree, grown
    spent = {pid: proc_cpu_s(pid) for pid in tree}
    return {pid: cpu for pid, cpu in spent.items() if cpu is not None}


def runqueue_wait_s(pid: int) -> float | None:
    """Seconds the process has spent runnable but waiting for a core (the second number of
    /proc/PID/schedstat), None where the kernel does not keep it."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def is_folder(pid: int) -> bool:
    """Whether ``pid`` is a journal folder process (python -m tidal.metering.folder)."""
    try:
        return b"tidal.metering.folder" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def machine_cpu_s() -> float:
    """CPU seconds this machine has spent busy, every process and the kernel (from /proc/stat):
    on a saturated machine, throughput follows the CPU time one request costs in all, wrk's and the
    loopback's included. Time stolen by the hypervisor is not counted, so a noisy neighbour moves
    it less than req/s."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(value) for value in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def paired_losses(mode: Mode, off: Mode) -> list[float]:
    """1 - mode/off in each round (the two ran back to back, on processes started together)."""
    return [1 - a.ok_per_s / b.ok_per_s for a, b in zip(mode.wrk, off.wrk, strict=False) if b.ok_per_s]


def summary(mode: Mode) -> dict[str, Any]:
    return {
        "seq_p50_ms": percentile(mode.seq_ns, 50) / 1e6,
        "seq_p99_ms": percentile(mode.seq_ns, 99) / 1e6,
        "wrk_median_rps": median([w.ok_per_s for w in mode.wrk]),
        "wrk_median_p50_ms": median([w.latency_p50_ms or 0.0 for w in mode.wrk]),
        "wrk_rounds_rps": [round(w.ok_per_s) for w in mode.wrk],
        "gateway_cpu_us_per_request": median(mode.cpu_us_per_request) if mode.cpu_us_per_request else None,
        "tree_cpu_us_per_request": median(mode.tree_cpu_us_per_request or [0.0]) or None,
        "folder_cpu_us_per_request": median(mode.folder_cpu_us_per_request or [0.0]),
        "machine_cpu_us_per_request": median(mode.machine_cpu_us_per_request or [0.0]) or None,
        "gateway_wait_us_per_request": median(mode.wait_us_per_request) if mode.wait_us_per_request else None,
        "gateway_cpu_us_rounds": [round(value, 1) for value in mode.cpu_us_per_request],
        "machine_cpu_us_rounds": [round(value, 1) for value in mode.machine_cpu_us_per_request],
        "gateway_wait_us_rounds": [round(value, 1) for value in mode.wait_us_per_request],
        "non_2xx": sum(w.non_2xx for w in mode.wrk),
        "metrics_scrapes": mode.scrapes,
        "metrics_scrape_p50_ms": median(mode.scrape_ms) if mode.scrape_ms else None,
        "metrics_scrape_max_ms": max(mode.scrape_ms, default=None),
    }


def report(results: dict[str, Any], names: list[str]) -> None:
    print(f"\n{'metering':<10}{'seq p50':>10}{'seq p99':>10}{'req/s':>10}{'wrk p50':>10}{'gw CPU/req':>12}"
          f"{'tidal CPU/req':>15}{'folder':>9}{'machine':>10}{'gw wait':>10}")  # fmt: skip
    for name in names:
        row = results[name]
        cpu, tree = row["gateway_cpu_us_per_request"], row["tree_cpu_us_per_request"]
        machine, wait = row["machine_cpu_us_per_request"], row["gateway_wait_us_per_request"]
        print(f"{name:<10}{row['seq_p50_ms']:>7.3f} ms{row['seq_p99_ms']:>7.3f} ms"
              f"{row['wrk_median_rps']:>10,.0f}{row['wrk_median_p50_ms']:>7.2f} ms"
              f"{'-' if cpu is None else f'{cpu:.0f} us':>12}{'-' if tree is None else f'{tree:.0f} us':>15}"
              f"{row['folder_cpu_us_per_request']:>6.1f} us{'-' if machine is None else f'{machine:.0f} us':>10}"
              f"{'-' if wait is None else f'{wait:.1f} us':>10}")  # fmt: skip
    off = results["off"]
    for name in [name for name in names if name != "off"]:
        row = results[name]
        loss = 1 - row["wrk_median_rps"] / off["wrk_median_rps"]
        cpu, base = row["gateway_cpu_us_per_request"], off["gateway_cpu_us_per_request"]
        cpu_text = f"gateway CPU/request {cpu / base * 100 - 100:+.1f}%" if cpu and base else ""
        tree, tree_base = row["tree_cpu_us_per_request"], off["tree_cpu_us_per_request"]
        if tree and tree_base:
            cpu_text += f", with the processes under it {tree / tree_base * 100 - 100:+.1f}%"
        machine, machine_base = row["machine_cpu_us_per_request"], off["machine_cpu_us_per_request"]
        if machine and machine_base:  # the throughput a saturated machine loses to the extra CPU
            cpu_text += f", machine CPU/request {machine / machine_base * 100 - 100:+.1f}%"
        paired, quartiles = row.get("paired_loss"), row.get("paired_loss_quartiles")
        interval = row.get("paired_loss_interval")
        paired_text = (
            ""
            if paired is None
            else (
                f" (paired by round: median {paired * 100:.1f}%, quartiles {quartiles[0] * 100:.1f}% to "
                f"{quartiles[1] * 100:.1f}%"
                + (
                    ""
                    if interval is None
                    else f", 95% interval {interval[0] * 100:.1f}% to {interval[1] * 100:.1f}%"
                )
                + ")"
            )
        )
        what = "records+metrics" if name == "on" else "journal only"
        verdict = (
            "" if name != "on" else f" (target <= {TARGET_LOSS * 100:g}%: {judge(paired, interval, loss)})"
        )
        print(f"{what:<16} vs off: throughput loss {loss * 100:.1f}%{paired_text}{verdict}; {cpu_text}; "
              f"seq p50 {(row['seq_p50_ms'] - off['seq_p50_ms']) * 1000:+.0f} us")  # fmt: skip
    on = results["on"]
    took = (
        f", each in {on['metrics_scrape_p50_ms']:.1f} ms (median; longest {on['metrics_scrape_max_ms']:.1f} ms)"
        if on["metrics_scrapes"]
        else ""
    )
    print(f"/metrics scraped {on['metrics_scrapes']} times during the 'on' runs{took}")


def judge(paired: float | None, interval: list[float] | None, loss: float) -> str:
    """The verdict on the target: met or missed only when the 95% interval of the paired median
    lies wholly on one side of it; on a noisy machine it often spans it, and then no run decides."""
    if interval is None:
        estimate = paired if paired is not None else loss
        side = "under" if estimate <= TARGET_LOSS else "over"
        return f"{side} it, but too few rounds for an interval (--rounds 6 at least)"
    if interval[1] <= TARGET_LOSS:
        return "met, the whole 95% interval under it"
    if interval[0] > TARGET_LOSS:
        return "MISSED, the whole 95% interval over it"
    return "NOT DECIDED, the 95% interval spans it: more rounds or a quieter machine"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    if wrk_available() is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    body = json.dumps(PAYLOAD).encode()
    workdir = Path(tempfile.mkdtemp(prefix="tidal-metering-"))
    modes = [Mode(name, {"TIDAL_METRICS": SWITCH[name]}) for name in args.modes]
    try:
        for mode in modes:
            print(f"starting tidal with metering {mode.name} ...", flush=True)
            start(mode, workdir)
        print(f"sequential: {args.requests} requests per mode ...", flush=True)
        sequential(modes, body, args.requests, args.block)
        print(f"throughput: wrk x {args.rounds} round(s) of {args.duration:g} s per mode ...", flush=True)
        throughput(modes, workdir, args, body)
    except (ServerError, RuntimeError, OSError, KeyboardInterrupt) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        for mode in modes:
            if mode.server is not None:
                print(mode.server.log_tail(), file=sys.stderr)
        return 1
    finally:
        for mode in modes:
            if mode.server is not None:
                mode.server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    results: dict[str, Any] = {mode.name: summary(mode) for mode in modes}
    off_mode = next(mode for mode in modes if mode.name == "off")
    for mode in modes:
        losses = paired_losses(mode, off_mode)
        if mode is not off_mode and losses:
            results[mode.name]["paired_loss"] = median(losses)
            results[mode.name]["paired_loss_quartiles"] = [percentile(losses, 25), percentile(losses, 75)]
            interval = median_interval(losses)
            results[mode.name]["paired_loss_interval"] = None if interval is None else list(interval)
            results[mode.name]["paired_losses"] = [round(loss, 4) for loss in losses]
    results["throughput_loss"] = 1 - results["on"]["wrk_median_rps"] / results["off"]["wrk_median_rps"]
    results["seq_p50_delta_ms"] = results["on"]["seq_p50_ms"] - results["off"]["seq_p50_ms"]
    results["config"] = {"cpus": os.cpu_count(), "loadavg": os.getloadavg()[0], **vars(args) | {"json": None}}
    report(results, args.modes)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
