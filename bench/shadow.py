"""Shadow benchmark: the client-visible latency of a warm echo with a 100% shadow vs without.

One gateway, one run: echo-00001 serves the calls; echo-00002 (the same code, another digest) is
the candidate, tagged at 0% so that its pool stays warm while the shadow is switched on and off.
Blocks of sequential requests on one keep-alive connection alternate between "no shadow" and
"100% shadow" (the order flips every round, so drift on a noisy machine hits both alike); each
block's p50 is taken, and the median over blocks is reported for each mode, with their ratio.
The shadow's own report (copies sent, dropped, agreement) shows that the copies really ran.

Run: ``.venv/bin/python bench/shadow.py`` (``--quick`` for a short run, ``--json PATH`` to save).
Only 127.0.0.1 is contacted. No pass/fail target: a copy costs the machine a second call, and on
2 cores some of that shows up in the next client call; the number to watch is the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    HOST,
    REPO_ROOT,
    SequentialClient,
    Server,
    ServerError,
    free_port,
    http_request,
    median,
    percentile,
    stop_on_sigterm,
)

PAYLOAD = {"text": "hello", "n": 1}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="4 rounds of 200 requests per mode")
    p.add_argument("--rounds", type=int, help="rounds; each has one block per mode (default 10)")
    p.add_argument("--block", type=int, default=300, help="requests per block (300)")
    p.add_argument("--warmup", type=int, default=300, help="warm-up requests (300)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON here")
    p.add_argument("--echo-file", type=Path, default=REPO_ROOT / "examples" / "echo.py")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (4 if args.quick else 10)
    if args.quick:
        args.block = min(args.block, 200)
    return args


class Gateway:
    def __init__(self, workdir: Path, echo_file: Path) -> None:
        self.tidal = str(Path(sys.executable).parent / "tidal")
        self.port = free_port()
        self.state = workdir / "state"
        self.server = Server(
            name="tidal",
            cmd=[self.tidal, "up", "--host", HOST, "--port", str(self.port), "--state-dir", str(self.state),
                 "--deploy", str(echo_file), "--log-level", "warning"],
            port=self.port,
            log_path=workdir / "tidal.log",
        )  # fmt: skip
        self.headers: dict[str, str] = {}

    def start(self) -> None:
        self.server.start()
        self.server.wait_http("/healthz", timeout=90.0)
        deadline = time.monotonic() + 30
        while not (self.state / "admin.key").is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.headers = {"Authorization": f"Bearer {(self.state / 'admin.key').read_text().strip()}"}

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {**self.headers, "Content-Type": "application/json"}
        status, reply = http_request(self.port, method, path, body=data, headers=headers, timeout=60)
        if status >= 400:
            raise ServerError(f"{method} {path}: HTTP {status} {reply[:300]!r}")
        return json.loads(reply)

    def deploy_candidate(self, echo_file: Path, workdir: Path) -> None:
        """The same echo under another code digest, deployed without traffic, tagged at 0%."""
        folder = workdir / "candidate"
        folder.mkdir()
        shutil.copy(echo_file, folder / echo_file.name)
        with open(folder / echo_file.name, "a") as source:
            source.write("\n# the shadow benchmark's candidate\n")
        env = {**os.environ, "TIDAL_URL": f"http://{HOST}:{self.port}",
               "TIDAL_API_KEY": self.headers["Authorization"].split()[1]}  # fmt: skip
        done = subprocess.run([self.tidal, "deploy", str(folder / echo_file.name), "--no-traffic"],
                              capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
        if done.returncode != 0:
            raise ServerError(f"deploying the candidate failed: {done.stderr}")
        self.api("PUT", "/v1/functions/echo/traffic", {"targets": [
            {"revision": "echo-00001", "percent": 100}, {"revision": "echo-00002", "percent": 0, "tag": "candidate"}
        ]})  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="tidal-shadow-bench-"))
    gateway = Gateway(workdir, args.echo_file)
    body = json.dumps(PAYLOAD, separators=(",", ":")).encode()
    try:
        gateway.start()
        gateway.deploy_candidate(args.echo_file, workdir)
        client = SequentialClient(gateway.port, "/fn/echo", body, gateway.headers, timeout=30)
        warm = SequentialClient(gateway.port, "/fn/echo@candidate", body, gateway.headers, timeout=30)
        warm.timed_block(20, lambda status, _: None if status == 200 else f"candidate: HTTP {status}")

        def check(status: int, data: bytes) -> str | None:
            return None if status == 200 and json.loads(data) == PAYLOAD else f"HTTP {status}: {data[:200]!r}"

        client.timed_block(args.warmup, check)
        p50s: dict[str, list[float]] = {"off": [], "on": []}
        for round_number in range(args.rounds):
            for mode in ("off", "on") if round_number % 2 == 0 else ("on", "off"):
                if mode == "on":
                    shadow = {"revision": "echo-00002", "percent": 100, "max_in_flight": 64}
                    gateway.api("PUT", "/v1/functions/echo/shadow", shadow)
                else:
                    gateway.api("DELETE", "/v1/functions/echo/shadow")
                samples = client.timed_block(args.block, check)
                p50s[mode].append(percentile(samples, 50) / 1e6)
        report = gateway.api("GET", "/v1/functions/echo/shadow/report?since=3600&revision=echo-00002")
        off, on = median(p50s["off"]), median(p50s["on"])
        results = {
            "blocks_per_mode": args.rounds,
            "block": args.block,
            "p50_ms_no_shadow": round(off, 4),
            "p50_ms_shadow_100": round(on, 4),
            "ratio": round(on / off, 3),
            "block_p50s_ms": {mode: [round(v, 4) for v in values] for mode, values in p50s.items()},
            "copies": {key: report[key] for key in ("sent", "compared", "agreement_rate", "dropped")},
            "cpus": os.cpu_count(),
        }
        print(f"client p50, no shadow:   {off:.3f} ms  (median of {args.rounds} blocks of {args.block})")
        print(f"client p50, 100% shadow: {on:.3f} ms")
        print(f"ratio (shadow / none):   {on / off:.2f}x")
        copies = results["copies"]
        print(
            f"copies: sent {copies['sent']}, dropped {copies['dropped']}, agreement {copies['agreement_rate']}"
        )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    except ServerError as exc:
        print(f"error: {exc}\n{gateway.server.log_tail()}", file=sys.stderr)
        return 1
    finally:
        gateway.server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
