"""What metering and metrics cost the warm path, in instructions: a count that noise cannot move.

``bench/metering_overhead.py`` measures throughput and CPU time, which on a small shared VM vary by
10% or more between identical rounds. This one counts instructions with valgrind's callgrind,
which gives the same count run after run, so a change to the hot path shows even when it is 1%:

* the gateway process, per request, in each mode (``TIDAL_METRICS`` 1, journal, 0: see
  metering_overhead.py): ``tidal up`` runs under callgrind with instrumentation off until the
  load starts (startup is not counted), then ``--requests`` calls from 16 keep-alive connections;
  its instances, templates and journal folder are started with ``exec`` and run natively;
* the journal folder, per record: ``--segments`` journal segments folded in turn into one SQLite
  store by one process, as the folder does under load (a segment every 200 ms, of 400 to 2,000
  echo records whose instance, duration, CPU, memory, queue time and billed milliseconds vary),
  minus the first third of them (Python's start cancels out).

Instructions are not time: a record that costs 40,000 instructions in the folder may cost more time
than that suggests when it runs next to the gateway (caches, the shared cores). They say where the
work is and whether a change removed any. Baseline: the gateway with metering off, same run.

Run: ``.venv/bin/python bench/metering_instructions.py [--quick] [--json PATH]`` (needs valgrind:
``apt-get install -y valgrind``). Takes a few minutes: callgrind runs Python about 50x slower.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import HOST, REPO_ROOT, SequentialClient, Server, ServerError, free_port, tidal_bin, write_json

PAYLOAD = {"text": "hello", "n": 1}
SWITCH = {"on": "1", "journal": "journal", "off": "0"}  # mode -> TIDAL_METRICS
CONNECTIONS = 16
TOTALS = re.compile(rb"^totals:\s+(\d+)", re.MULTILINE)

# Folds the journal segments at argv[2:] into a new SQLite store at argv[1] with the folder's own
# loop (tidal.metering.folder.serve, as the gateway runs it), counting the records stored.
FOLD_SCRIPT = """
import os
import sys
from tidal.metering import folder
stored = []
opened = folder.open_folder_store
def counted(location):
    store = opened(location)
    add = store.add_activation_rows
    def add_counted(rows):
        add(rows)
        stored.append(len(rows))
    store.add_activation_rows = add_counted
    return store
folder.open_folder_store = counted
os.environ[folder.STORE_ENV] = sys.argv[1]
folder.serve([path + "\\n" for path in sys.argv[2:]])
print(sum(stored))
"""
SEGMENT_RECORDS = (400, 2000)  # records a segment holds under load: 2,000 to 10,000 requests a second


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=0, help="measured requests per mode (default 3200)")
    p.add_argument("--segments", type=int, default=0, help="journal segments folded (default 12)")
    p.add_argument("--quick", action="store_true", help="fewer requests and segments")
    p.add_argument("--folder-only", action="store_true", help="count the journal folder only (a minute)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.requests = args.requests or (800 if args.quick else 3200)
    args.segments = args.segments or (6 if args.quick else 12)
    return args


def instructions(callgrind_out: Path) -> int:
    """The instruction count a callgrind output file holds (the sum over its parts)."""
    total = 0
    for part in [callgrind_out, *sorted(callgrind_out.parent.glob(callgrind_out.name + ".*"))]:
        if part.is_file():
            total += sum(int(count) for count in TOTALS.findall(part.read_bytes()))
    return total


def gateway_per_request(mode: str, requests: int, workdir: Path) -> float:
    """Instructions the gateway process runs per request with ``TIDAL_METRICS`` of ``mode``."""
    state, port = workdir / f"state-{mode}", free_port()
    out = workdir / f"gateway-{mode}.callgrind"
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
               sys.executable, tidal_bin(), "up", "--host", HOST, "--port", str(port), "--state-dir",
               str(state), "--deploy", str(REPO_ROOT / "examples" / "echo.py"), "--log-level", "warning"]  # fmt: skip
    server = Server(mode, command, port, workdir / f"tidal-{mode}.log",
                    env={**os.environ, "TIDAL_METRICS": SWITCH[mode]})  # fmt: skip
    server.start()
    try:
        server.wait_http("/healthz", timeout=600.0)
        key_path = state / "admin.key"
        deadline = time.monotonic() + 60
        while not key_path.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        headers = {"Authorization": f"Bearer {key_path.read_text().strip()}"}
        body = json.dumps(PAYLOAD).encode()
        clients = [SequentialClient(port, "/fn/echo", body, headers, 300.0) for _ in range(CONNECTIONS)]
        load(clients, CONNECTIONS * 20)  # the cold start, then every connection warm
        assert server.proc is not None
        control(server.proc.pid, "-i", "on")
        load(clients, requests)
        control(server.proc.pid, "-i", "off")
        control(server.proc.pid, "--dump")
        for client in clients:
            client.close()
    finally:
        server.stop()
    return instructions(out) / requests


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def load(clients: list[SequentialClient], requests: int) -> None:
    """``requests`` calls spread over the clients, each on its own thread; raises on a non-200."""
    errors: list[str] = []

    def calls(client: SequentialClient, count: int) -> None:
        for _ in range(count):
            status, data = client.post()
            if status != 200:
                errors.append(f"HTTP {status}: {data[:200]!r}")
                return

    share, extra = divmod(requests, len(clients))
    threads = [
        threading.Thread(target=calls, args=(client, share + (index < extra)))
        for index, client in enumerate(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} call(s) failed, the first: {errors[0]}")


def folder_per_record(segments: int, workdir: Path) -> float:
    """Instructions the journal folder runs per record: folding ``segments`` segments in turn
    minus folding the first third of them."""
    sizes = random.Random(7).choices(range(SEGMENT_RECORDS[0], SEGMENT_RECORDS[1] + 1), k=segments)
    counts, records = [], []
    for taken in (segments // 3, segments):
        journal = workdir / f"journal-{taken}"
        paths = [
            write_segment(journal, size, first=sum(sizes[:index])) for index, size in enumerate(sizes[:taken])
        ]
        out = workdir / f"folder-{taken}.callgrind"
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c",
                   FOLD_SCRIPT, str(workdir / f"folded-{taken}.db"), *map(str, paths)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
        records.append(sum(sizes[:taken]))
        if done.returncode != 0 or done.stdout.split()[-1:] != [str(records[-1])]:
            raise RuntimeError(
                f"folding {records[-1]} records failed: {done.stdout[-500:]} {done.stderr[-1500:]}"
            )
        counts.append(instructions(out))
    return (counts[1] - counts[0]) / (records[1] - records[0])


def write_segment(folder: Path, count: int, first: int) -> Path:
    """A finished journal segment of ``count`` records like those of warm echo calls under load,
    numbered from ``first``."""
    from tidal.metering.journal import ActivationJournal
    from tidal.store.models import Activation

    vary = random.Random(first)
    journal = ActivationJournal(folder, segment_bytes=count * 200 + 4096)
    start = 1_790_000_000.0  # the same records in every run
    for number in range(first, first + count):
        journal.append(
            Activation(
                id=f"a1b2c3d4e5{number:06x}", function="echo", revision="echo-00001",
                instance=f"echo-1-a1b{vary.randrange(3)}", start=start + number / 1000,
                duration_ms=round(vary.uniform(0.3, 3.0), 3), billed_ms=vary.choice((1, 1, 1, 2)),
                memory_mb=128, cold=False, status="ok", http_status=200,
                cpu_ms=round(vary.uniform(0.03, 0.2), 3), peak_rss_kb=41_000 + vary.randrange(4) * 4,
                queue_ms=vary.choice((0.0, 0.0, 0.0, round(vary.uniform(0.01, 0.5), 3))),
            )
        )  # fmt: skip
    (segment,) = journal.rotate()
    return segment


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed: apt-get install -y valgrind", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="tidal-instructions-"))
    results: dict[str, Any] = {}
    try:
        for mode in () if args.folder_only else SWITCH:
            print(f"gateway with metering {mode}: {args.requests} requests under callgrind ...", flush=True)
            results[f"gateway_{mode}"] = gateway_per_request(mode, args.requests, workdir)
        print(f"journal folder: {args.segments} segments under callgrind ...", flush=True)
        results["folder_per_record"] = folder_per_record(args.segments, workdir)
    except (ServerError, RuntimeError, OSError, subprocess.SubprocessError, KeyboardInterrupt) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.folder_only:
        print(f"journal folder: {results['folder_per_record']:,.0f} instructions per record")
        write_json(args.json, results)
        return 0
    off = results["gateway_off"]
    print(f"\n{'gateway':<22}{'instructions/request':>22}{'vs off':>10}")
    for mode in SWITCH:
        count = results[f"gateway_{mode}"]
        print(f"{'metering ' + mode:<22}{count:>22,.0f}{(count / off - 1) * 100:>+9.1f}%")
    folder = results["folder_per_record"]
    added = results["gateway_on"] - off + folder
    results["metering_share_of_gateway"] = added / off
    print(f"{'journal folder':<22}{folder:>22,.0f}  per record")
    print(f"metering on adds {added:,.0f} instructions a request (gateway + folder): "
          f"{added / off * 100:.1f}% of what the gateway runs with it off")  # fmt: skip
    results["config"] = {"cpus": os.cpu_count(), **vars(args) | {"json": None}}
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
