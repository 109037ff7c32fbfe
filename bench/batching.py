"""Adaptive batching benchmark: MiniLM embeddings through tidal, batched vs not, vs offline, one run.

For each model, all in this one process tree on this machine:

* offline: the batched example's own code in one process (a child of this one), no tidal, called
  with lists of 1, 8, 32, 64 texts (GPU: 1, 32, 128, 256); its best items/s is the baseline;
* tidal, no batching: the plain example (one text per request, ``concurrency`` 4);
* tidal, fixed batching: the batched example with ``--batch SIZE,max_wait=10ms``;
* tidal, adaptive batching: ``--batch SIZE,target_p99=T``.

Each tidal run: one instance (``--min-instances 1 --max-instances 1``, as the offline run has
one process), N concurrent closed-loop clients (raw keep-alive HTTP/1.1 in asyncio, split over
client processes), a warm-up, then a fixed duration. Printed: items/s, p50/p99 latency, the mean
batch size (from ``x-tidal-batch-size``), and the ratio to offline. Target: batched at least 85% of
offline at the p99 the user set. Ray Serve's ``@serve.batch`` is compared when ray is installed
(it is not, here: reported as skipped).

Models: ``onnx`` (examples/embed, embed_batched), ``torch`` (examples/embed_torch,
embed_torch_batched), and with ``--gpu`` the config-built BERT of examples/gpu_bert and
gpu_bert_batched (torch + transformers only, no packaged weights, no network).

Run: ``.venv/bin/python bench/batching.py [--duration 10] [--clients 64] [--models onnx,torch]``
     ``python3 bench/batching.py --gpu --duration 10 --json OUT``   (a GPU host, about 3-4 minutes)
Every wait is bounded, and the whole run by ``--budget`` (225 s with ``--gpu``): a phase that fails
or would not fit is reported as skipped, with the reason, and the rest run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import HOST, REPO_ROOT, ServerError, Tidal, http_request, load_module, percentile, write_json

EXAMPLES = REPO_ROOT / "examples"
TEXT = "batching gathers concurrent requests into one call of the model"
READY_WAIT_S = 240.0  # a GPU template builds BERT from its config: 10-13 s measured; a CPU one < 5 s


@dataclass(frozen=True)
class Model:
    key: str
    plain: str  # example folder = function name, one request {"texts": [text]}
    batched: str  # example folder = function name, one request {"text": text}
    max_size: int
    target_p99_ms: float
    offline_sizes: tuple[int, ...]


MODELS = {
    "onnx": Model("onnx", "embed", "embed_batched", 32, 500.0, (1, 8, 32, 64)),
    "torch": Model("torch", "embed_torch", "embed_torch_batched", 32, 1000.0, (1, 8, 32, 64)),
    "gpu": Model("gpu", "gpu_bert", "gpu_bert_batched", 256, 50.0, (1, 32, 128, 256)),
}


def log(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------------------------------- offline


def offline(model_key: str, seconds_per_size: float) -> dict[str, Any]:
    """In this (child) process: the batched example's class, set up as an instance would be, timed."""
    model = MODELS[model_key]
    module = load_module(EXAMPLES / model.batched / "main.py")
    cls = next(v for v in vars(module).values() if isinstance(v, type) and hasattr(v, "__tidal_function__"))
    instance = cls()
    instance.setup()
    if hasattr(instance, "setup_instance"):
        instance.setup_instance()
    rates: dict[str, float] = {}
    for size in model.offline_sizes:
        payloads = [{"text": f"{TEXT} {i}"} for i in range(size)]
        instance(payloads)  # warm this shape
        samples, deadline = [], time.monotonic() + seconds_per_size
        while time.monotonic() < deadline or len(samples) < 3:
            started = time.perf_counter()
            instance(payloads)
            samples.append(size / (time.perf_counter() - started))
        rates[str(size)] = sorted(samples)[len(samples) // 2]  # median over the calls
    best = max(rates, key=lambda size: rates[size])
    device = getattr(instance, "device", "cpu")
    return {"items_per_s": rates, "best_size": int(best), "best_items_per_s": rates[best], "device": device}


def run_offline(model: Model, seconds_per_size: float, timeout_s: float) -> dict[str, Any]:
    command = [sys.executable, __file__, "--offline", model.key, "--seconds-per-size", str(seconds_per_size)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"offline run failed: {done.stderr.strip()[-600:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------------------------------------- load


async def one_client(
    port: int, request: bytes, stop_at: float, record_from: float, out: list[list[float]]
) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while (now := time.monotonic()) < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            await reader.readexactly(int(fields.get("content-length", "0")))
            if now >= record_from:
                latency = (time.monotonic() - now) * 1000
                out.append([latency, float(fields.get("x-tidal-batch-size", "1")), float(status)])
    finally:
        writer.close()


async def load_worker(
    port: int, path: str, key: str, body: bytes, clients: int, warmup_s: float, duration_s: float
) -> list[list[float]]:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    request = head.encode() + body
    out: list[list[float]] = []
    record_from = time.monotonic() + warmup_s
    stop_at = record_from + duration_s
    await asyncio.gather(*(one_client(port, request, stop_at, record_from, out) for _ in range(clients)))
    return out


def drive(
    tidal: Tidal, function: str, body: bytes, clients: int, processes: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """N closed-loop clients over ``processes`` child processes; latencies, sizes, errors, items/s."""
    share = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    children = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--load",
                str(tidal.port),
                f"/fn/{function}",
                tidal.key,
                body.decode(),
                str(count),
                str(warmup_s),
                str(duration_s),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for count in share
        if count
    ]
    rows: list[list[float]] = []
    for child in children:
        output, _ = child.communicate(timeout=warmup_s + duration_s + 60)
        rows.extend(json.loads(output))
    ok = [row for row in rows if row[2] == 200]
    latencies = [row[0] for row in ok]
    return {
        "clients": clients,
        "requests": len(rows),
        "errors": len(rows) - len(ok),
        "items_per_s": len(ok) / duration_s,
        "p50_ms": percentile(latencies, 50) if latencies else None,
        "p99_ms": percentile(latencies, 99) if latencies else None,
        "mean_batch_size": sum(row[1] for row in ok) / len(ok) if ok else None,
    }


# -------------------------------------------------------------------------------------------- phases


def wait_answer(tidal: Tidal, function: str, body: bytes, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        tidal.server.check_alive()
        status, reply = http_request(
            tidal.port,
            "POST",
            f"/fn/{function}",
            body=body,
            headers={**tidal.headers, "Content-Type": "application/json"},
            timeout=max(1.0, deadline - time.monotonic()),
        )
        if status == 200:
            return
        last = f"HTTP {status}: {reply[:200]!r}"
        time.sleep(0.5)
    raise ServerError(f"{function} did not answer 200 within {timeout_s:g} s ({last})")


def remove(tidal: Tidal, function: str) -> None:
    http_request(tidal.port, "DELETE", f"/v1/functions/{function}", headers=tidal.headers, timeout=30)


def left_s(args: argparse.Namespace) -> float:
    return float(args.deadline - time.monotonic())


def tidal_run(tidal: Tidal, args: argparse.Namespace, model: Model, mode: str) -> dict[str, Any]:
    needed = args.warmup + args.duration + 15
    if left_s(args) < needed + 10:
        raise TimeoutError(f"{left_s(args):.0f} s left of --budget, a run needs about {needed + 10:.0f} s")
    one = ["--min-instances", "1", "--max-instances", "1", "--max-queue", "2000"]
    batch = None
    if mode == "no batching":
        folder, name, flags = model.plain, f"{model.plain}_plain", one
        body = json.dumps({"texts": [TEXT]}).encode()
    else:
        folder, name = model.batched, f"{model.batched}_{'fixed' if mode == 'fixed' else 'adaptive'}"
        batch = (
            f"{model.max_size},max_wait=10ms"
            if mode == "fixed"
            else f"{model.max_size},target_p99={model.target_p99_ms:g}ms"
        )
        flags, body = [*one, "--batch", batch], json.dumps({"text": TEXT}).encode()
    if args.gpu:
        flags += ["--gpu", "1"]
    tidal.deploy(EXAMPLES / folder, "--name", name, *flags, timeout=min(READY_WAIT_S, left_s(args) - needed))
    try:
        wait_answer(tidal, name, body, min(READY_WAIT_S, left_s(args) - needed))
        result = drive(tidal, name, body, args.clients, args.client_processes, args.warmup, args.duration)
        result["batch"] = batch
        return result
    finally:
        remove(tidal, name)


def bench_model(tidal: Tidal | None, args: argparse.Namespace, model: Model, results: dict[str, Any]) -> None:
    entry: dict[str, Any] = {"runs": {}, "skipped": {}}
    results["models"][model.key] = entry
    log(f"\n== {model.key}: {model.plain} vs {model.batched}")
    try:
        entry["offline"] = run_offline(
            model, args.seconds_per_size, timeout_s=min(180, max(10, left_s(args) - 30))
        )
        rates = ", ".join(f"b{size} {rate:,.0f}/s" for size, rate in entry["offline"]["items_per_s"].items())
        log(f"offline ({entry['offline']['device']}): {rates}; best batch {entry['offline']['best_size']}")
    except Exception as exc:  # reported; the tidal runs go on without a ratio
        entry["skipped"]["offline"] = f"{type(exc).__name__}: {exc}"
        log(f"offline skipped: {entry['skipped']['offline']}")
    if tidal is None:
        return
    for mode in args.modes:
        try:
            run = tidal_run(tidal, args, model, mode)
        except Exception as exc:
            entry["skipped"][mode] = f"{type(exc).__name__}: {str(exc)[:400]}"
            log(f"{mode}: skipped: {entry['skipped'][mode]}")
            continue
        best = entry.get("offline", {}).get("best_items_per_s")
        run["ratio_to_offline"] = run["items_per_s"] / best if best else None
        entry["runs"][mode] = run
        log(format_run(mode, run, model))


def format_run(mode: str, run: dict[str, Any], model: Model) -> str:
    def number(value: Any, unit: str = "") -> str:
        return "-" if value is None else f"{value:,.1f}{unit}"

    ratio = "-" if run["ratio_to_offline"] is None else f"{run['ratio_to_offline']:.2f}x offline"
    target = f" (target p99 {model.target_p99_ms:g} ms)" if mode == "adaptive" else ""
    return (
        f"{mode:>12}: {run['items_per_s']:,.0f} items/s  p50 {number(run['p50_ms'], ' ms')}  p99 "
        f"{number(run['p99_ms'], ' ms')}{target}  mean batch {number(run['mean_batch_size'])}  {ratio}"
        f"  ({run['requests']} requests, {run['errors']} errors, {run['clients']} clients)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="onnx,torch", help="comma-separated: onnx, torch (--gpu: gpu)")
    parser.add_argument(
        "--gpu", action="store_true", help="the config-built BERT of examples/gpu_bert on the GPU"
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per tidal run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--clients", type=int, default=None, help="concurrent clients (64; --gpu 256)")
    parser.add_argument("--client-processes", type=int, default=None, help="(1; --gpu 6)")
    parser.add_argument(
        "--seconds-per-size", type=float, default=None, help="offline: per batch size (2; --gpu 1)"
    )
    parser.add_argument("--modes", default=None, help="no batching,fixed,adaptive (--gpu: adaptive first)")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds for the whole run (900; --gpu 225)"
    )
    parser.add_argument("--offline-only", action="store_true", help="the offline baselines alone")
    parser.add_argument("--no-sandbox", action="store_true", help="tidal up --insecure-no-sandbox")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--offline", help=argparse.SUPPRESS)
    parser.add_argument("--load", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.offline:
        print(json.dumps(offline(args.offline, args.seconds_per_size or 2.0)))
        return
    if args.load:
        port, path, key, body, clients, warmup, duration = args.load
        rows = asyncio.run(
            load_worker(int(port), path, key, body.encode(), int(clients), float(warmup), float(duration))
        )
        print(json.dumps([[round(r[0], 3), r[1], r[2]] for r in rows]))
        return
    args.modes = args.modes or ("adaptive,no batching,fixed" if args.gpu else "no batching,fixed,adaptive")
    args.modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    args.deadline = time.monotonic() + (args.budget or (225.0 if args.gpu else 900.0))
    args.clients = args.clients or (256 if args.gpu else 64)
    args.client_processes = args.client_processes or (6 if args.gpu else 1)
    args.seconds_per_size = args.seconds_per_size or (1.0 if args.gpu else 2.0)
    keys = ["gpu"] if args.gpu else [key.strip() for key in args.models.split(",") if key.strip()]
    results: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "models": {},
        "skipped": {},
    }
    if importlib.util.find_spec("ray") is None:
        results["skipped"]["ray serve"] = "ray is not installed here"
        log("ray serve @serve.batch: skipped (ray is not installed here)")
    if args.gpu:
        probe = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        gpus = probe.stdout.strip()
        log(f"GPUs visible to torch: {gpus or probe.stderr.strip()[-300:]}")
        results["gpus"] = gpus
    with tempfile.TemporaryDirectory(prefix="tidal-bench-batching-") as workdir:
        tidal = None
        if not args.offline_only:
            extra = ["--insecure-no-sandbox"] if args.no_sandbox else []
            tidal = Tidal.start(Path(workdir), extra_args=extra, env={"PYTHONUNBUFFERED": "1"})
        try:
            for key in keys:
                try:
                    bench_model(tidal, args, MODELS[key], results)
                except Exception:
                    results["skipped"][key] = traceback.format_exc()[-600:]
                    log(f"{key}: skipped:\n{results['skipped'][key]}")
        finally:
            if tidal is not None:
                tidal.stop()
    summary(results)
    write_json(args.json, results)


def summary(results: dict[str, Any]) -> None:
    log("\n== summary (items/s; ratio to offline best)")
    for key, entry in results["models"].items():
        best = entry.get("offline", {}).get("best_items_per_s")
        parts = [f"offline {best:,.0f}" if best else "offline -"]
        for mode, run in entry["runs"].items():
            ratio = f" ({run['ratio_to_offline']:.2f})" if run.get("ratio_to_offline") else ""
            parts.append(f"{mode} {run['items_per_s']:,.0f}{ratio} p99 {run['p99_ms'] or 0:,.0f} ms")
        log(f"{key}: " + "; ".join(parts))
        for what, why in entry["skipped"].items():
            log(f"{key}: {what} skipped: {why}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
