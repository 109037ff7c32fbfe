"""The Ray backend against the local backend and Ray Serve, in one run: warm p50 and cold start.

- A two-node Ray cluster on this machine (tests/raybackend/local_ray.py: a head and a worker,
  token auth), a ``tidal up --backend ray`` on it, and a ``tidal up`` (local backend), each
  serving examples/echo.py deployed with ``--scale-to-zero-after 1s``.
- Warm: sequential POSTs on one keep-alive connection, interleaved blocks (local, ray, ray,
  local, ...) so both see the same machine; p50 of each. Then Ray Serve's echo (bench/ray_echo.py,
  its own Ray instance, started after the cluster is stopped so it does not share the cores with
  it) the same way, alone.
- Cold start (template already on the node): wait until the function has no instance, one POST,
  wall time from send to the last byte; the trials must answer 200 with ``x-tidal-cold-start: 1``.
  The first cold start after deploy (it builds the template on the node) is left out. The Ray
  backend's breakdown (placement group, node host call, fork) comes from the instance's record.

Targets: Ray backend warm p50 / local warm p50 <= 1.5; Ray backend cold start p50 < 100 ms.
Run: ``.venv/bin/python bench/ray_backend.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent / "tests" / "raybackend")]

from common import (  # noqa: E402
    REPO_ROOT,
    SequentialClient,
    Server,
    ServerError,
    Tidal,
    free_port,
    http_call,
    median,
    stop_on_sigterm,
    write_json,
)
from local_ray import LocalRayCluster  # noqa: E402

ECHO = REPO_ROOT / "examples" / "echo.py"
BODY = json.dumps({"hello": "world"}).encode()
IDLE_WAIT_S = 30.0


def warm_p50(ports: dict[str, tuple[int, dict[str, str]]], count: int, block: int) -> dict[str, float]:
    """p50 ms of ``count`` sequential POSTs per target, in interleaved blocks (after a warm-up)."""
    clients = {
        name: SequentialClient(port, "/fn/echo", BODY, headers, 60.0)
        for name, (port, headers) in ports.items()
    }

    def check(status: int, data: bytes) -> str | None:
        return (
            None
            if status == 200 and json.loads(data) == {"hello": "world"}
            else f"HTTP {status}: {data[:200]!r}"
        )

    samples: dict[str, list[int]] = {name: [] for name in ports}
    try:
        for client in clients.values():
            client.timed_block(200, check)
        names = list(ports)
        for turn in range(0, count, block):
            for name in names if (turn // block) % 2 == 0 else names[::-1]:
                gc.disable()
                try:
                    samples[name].extend(clients[name].timed_block(min(block, count - turn), check))
                finally:
                    gc.enable()
    finally:
        for client in clients.values():
            client.close()
    return {name: median(values) / 1e6 for name, values in samples.items()}


def cold_trials(tidal: Tidal, trials: int) -> list[dict[str, Any]]:
    results = []
    for _ in range(trials):
        tidal.wait_idle("echo", IDLE_WAIT_S)
        headers = {**tidal.headers, "Content-Type": "application/json"}
        start = time.perf_counter()
        status, reply, _ = http_call(tidal.port, "POST", "/fn/echo", body=BODY, headers=headers, timeout=120)
        wall_ms = (time.perf_counter() - start) * 1e3
        listing = tidal.instances("echo")["list"]
        extra = listing[0].get("extra", {}) if listing else {}
        results.append({
            "wall_ms": wall_ms, "status": status, "cold": reply.get("x-tidal-cold-start") == "1",
            "detail": reply.get("x-tidal-cold-start-detail"),
            **{key: float(extra[key]) for key in ("place_ms", "host_ms", "fork_ms") if key in extra},
        })  # fmt: skip
    return results


def serve_warm(workdir: Path, count: int) -> float:
    port = free_port()
    server = Server(
        "Ray Serve", [sys.executable, str(BENCH / "ray_echo.py"), str(port)], port, workdir / "serve.log"
    )
    try:
        server.start()
        server.wait_http("/-/healthz", timeout=180.0)
        return warm_p50({"serve": (port, {})}, count, count)["serve"]
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and trials")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-serve", action="store_true", help="skip Ray Serve")
    args = parser.parse_args(argv)
    count, trials = (1000, 8) if args.quick else (4000, 20)
    stop_on_sigterm()
    results: dict[str, Any] = {"count": count, "trials": trials}
    with tempfile.TemporaryDirectory(prefix="tidal-bench-ray-") as tmp:
        workdir = Path(tmp)
        cluster = LocalRayCluster(workdir / "ray")
        (workdir / "ray").mkdir()
        started = time.perf_counter()
        cluster.start({"head_node": 1}, {"edge": 1})
        print(f"Ray cluster of 2 nodes up in {time.perf_counter() - started:.1f} s", flush=True)
        token_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.token}
        local = ray = None
        try:
            local = Tidal.start(workdir, name="tidal-local")
            ray = Tidal.start(workdir, name="tidal-ray", env=token_env,
                              extra_args=["--backend", "ray", "--ray-address", cluster.address])  # fmt: skip
            for tidal in (local, ray):
                tidal.deploy(ECHO, "--scale-to-zero-after", "1s")
                http_call(tidal.port, "POST", "/fn/echo", body=BODY, headers=tidal.headers, timeout=120)
            warm = warm_p50(
                {"local": (local.port, local.headers), "ray": (ray.port, ray.headers)}, count, 250
            )
            results["warm_p50_ms"] = warm
            print(f"warm p50: local {warm['local']:.3f} ms, ray backend {warm['ray']:.3f} ms", flush=True)
            for label, tidal in (("local", local), ("ray", ray)):
                results[f"cold_{label}"] = cold_trials(tidal, trials)
                good = [t["wall_ms"] for t in results[f"cold_{label}"] if t["status"] == 200 and t["cold"]]
                print(
                    f"cold start {label}: p50 {median(good):.1f} ms over {len(good)} good trials", flush=True
                )
        finally:
            for tidal in (ray, local):
                if tidal is not None:
                    tidal.stop()
            cluster.stop()
        if not args.no_serve:
            results["warm_p50_ms"]["serve"] = serve_warm(workdir, count)
    report(results)
    write_json(args.json, results)
    return 0


def report(results: dict[str, Any]) -> None:
    warm = results["warm_p50_ms"]
    cold = {
        label: [t for t in results[f"cold_{label}"] if t["status"] == 200 and t["cold"]]
        for label in ("local", "ray")
    }
    cold_p50 = {label: median([t["wall_ms"] for t in trials]) for label, trials in cold.items()}
    print("\nwarm p50 (sequential POSTs)        ms      x local")
    for name in ("local", "ray", "serve"):
        if name in warm:
            print(f"  {name:<32} {warm[name]:7.3f}  {warm[name] / warm['local']:6.2f}")
    print("cold start p50 (template on node)  ms")
    for label in ("local", "ray"):
        print(f"  {label:<32} {cold_p50[label]:7.1f}  ({len(cold[label])} good trials)")
    for key in ("place_ms", "host_ms", "fork_ms"):
        values = [t[key] for t in cold["ray"] if key in t]
        if values:
            print(f"    ray {key:<28} {median(values):7.2f}")
    ratio = warm["ray"] / warm["local"]
    print(f"\ntarget warm ray/local <= 1.5: {ratio:.2f} {'MET' if ratio <= 1.5 else 'MISSED'}")
    print(
        f"target ray cold start < 100 ms: {cold_p50['ray']:.1f} {'MET' if cold_p50['ray'] < 100 else 'MISSED'}"
    )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
