"""GPU instances on a GPU host, checked and timed in one short run (about 3-5 minutes).

One ``tidal up`` in a temporary state dir, then, each phase bounded in time and reported even when
it fails:

1. ``gpu_bert`` (examples/gpu_bert, ``--gpu 1 --scale-to-zero-after 2s``): the first call (it may
   wait for the template's build), N cold starts from zero (waiting for zero instances between),
   warm p50 over ~200 sequential calls; checks that the answering instance had
   CUDA_VISIBLE_DEVICES set and that torch in it ran on "cuda", and shows its GPU memory.
2. ``gpu_bert_naive`` (examples/gpu_bert_naive): its ``setup()`` moves the model to the GPU in the
   template, so tidal must drop the template and spawn fresh processes; checks that it still
   answers, shows the reason from status and times its cold starts.
3. ``gpu_half``: ``gpu=0.5`` with ``min_instances=2``: both instances share GPU 0.
4. ``gpu_too_big``: ``gpu`` = the host's GPU count + 1: the call gets the clear pending error.

Functions are removed after their phase, so each finds the GPUs free. On a host without GPUs the
GPU parts are reported as skipped, with the reason; ``TIDAL_FAKE_GPUS=1`` runs the placement
parts on a fake GPU (torch then runs on the CPU: the timings mean nothing there).

Run (tidal and the torch extra installed, no network needed):
    python bench/gpu_check.py --json gpu_check.json [--cold 5] [--warm 200] [--naive-cold 2]
    TIDAL_FAKE_GPUS=1 python bench/gpu_check.py --quick     # a CPU-only machine
``--no-sandbox`` passes ``--insecure-no-sandbox`` to ``tidal up`` (if the sandbox cannot start).
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO_ROOT,
    SequentialClient,
    ServerError,
    Tidal,
    http_call,
    http_request,
    stop_on_sigterm,
    summarize_ms,
    write_json,
)

EXAMPLES = REPO_ROOT / "examples"
TEXTS = json.dumps({"texts": ["a cold start is the time to the first answer"]}).encode()
CALL_TIMEOUT_S = 150.0  # a naive cold start on a GPU host: a fresh process, 14-20 s measured
IDLE_WAIT_S = 40.0
READY_WAIT_S = 150.0

HALF = """
import os

import tidal

try:
    import torch
except ImportError:
    torch = None


@tidal.function(name="gpu_half", gpu=0.5, min_instances=2, max_instances=2, concurrency=1)
class Half:
    def setup_instance(self):
        self.device = "cpu"
        if torch is not None and torch.cuda.is_available():  # each instance holds a little GPU memory
            self.device = "cuda"
            self.block = torch.ones(1024, 1024, device="cuda")

    def __call__(self, payload):
        import time
        time.sleep(0.3)  # hold the only slot: a concurrent call goes to the other instance
        return {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": self.device,
                "pid": os.getpid()}
"""

PROBE = "gpu_probe"
PROBE_SOURCE = """
import tidal


@tidal.function(name="gpu_probe")
def probe(payload):
    return "deployed only so that its status shows the host's GPUs"
"""

TOO_BIG = """
import tidal


@tidal.function(name="gpu_too_big", gpu={gpus})
def too_big(payload):
    return "never"
"""


class Phase(Exception):
    """A phase could not go on; the message says why (the run goes on with the next phase)."""


def log(line: str) -> None:
    print(line, flush=True)


class Check:
    """The run's state: the gateway, the report, and the time left."""

    def __init__(self, tidal: Tidal, budget_s: float) -> None:
        self.tidal = tidal
        self.deadline = time.monotonic() + budget_s
        self.report: dict[str, Any] = {"phases": {}, "checks": []}

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, name: str, ok: bool, detail: Any = "") -> bool:
        self.report["checks"].append({"check": name, "ok": bool(ok), "detail": detail})
        log(f"  [{'ok' if ok else 'FAIL'}] {name}" + (f": {detail}" if detail != "" else ""))
        return ok

    def post(self, name: str, body: bytes, timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        """One call: status, wall ms, the JSON answer (or the error text), cold-start headers."""
        headers = {**self.tidal.headers, "Content-Type": "application/json"}
        started = time.perf_counter()
        try:
            status, reply, data = http_call(
                self.tidal.port, "POST", f"/fn/{name}", body=body, headers=headers,
                timeout=min(timeout, max(5.0, self.left_s())),
            )  # fmt: skip
        except (OSError, http.client.HTTPException) as exc:
            return {"status": 0, "wall_ms": (time.perf_counter() - started) * 1e3, "error": repr(exc)}
        out: dict[str, Any] = {"status": status, "wall_ms": round((time.perf_counter() - started) * 1e3, 2)}
        out["cold"] = reply.get("x-tidal-cold-start") == "1"
        out["detail"] = reply.get("x-tidal-cold-start-detail")
        try:
            out["answer"] = json.loads(data)
        except ValueError:
            out["error"] = data[:400].decode(errors="replace")
        if status != 200:
            out["error"] = data[:400].decode(errors="replace")
            out.pop("answer", None)
        return out

    def describe(self, name: str) -> dict[str, Any]:
        return dict(self.tidal.get_json(f"/v1/functions/{name}", timeout=20.0))

    def wait(self, condition: Callable[[], bool], timeout_s: float, what: str) -> float:
        """Seconds until ``condition()`` held; Phase when it did not within the bound."""
        started = time.monotonic()
        limit = min(timeout_s, max(1.0, self.left_s()))
        while not condition():
            self.tidal.server.check_alive()
            if time.monotonic() - started > limit:
                raise Phase(f"timed out after {limit:.0f} s waiting for {what}")
            time.sleep(0.1)
        return time.monotonic() - started

    def deploy(self, path: Path, *flags: str) -> None:
        try:
            self.tidal.deploy(path, *flags, timeout=min(240.0, max(10.0, self.left_s())))
        except (ServerError, subprocess.TimeoutExpired) as exc:
            raise Phase(f"deploy failed: {exc}") from None

    def remove(self, name: str) -> None:
        """Delete the function and wait (bounded) until no GPU is held by it."""
        try:
            http_request(
                self.tidal.port, "DELETE", f"/v1/functions/{name}", headers=self.tidal.headers, timeout=30
            )
        except (OSError, http.client.HTTPException) as exc:
            log(f"  (could not remove {name}: {exc!r})")
            return
        try:
            self.wait(lambda: _no_gpu_held(self.tidal), 30.0, f"{name}'s GPUs to be given back")
        except (Phase, ServerError, OSError, http.client.HTTPException) as exc:
            log(f"  ({exc})")

    def phase(self, name: str, minimum_s: float, run: Callable[[dict[str, Any]], None]) -> None:
        """Run one phase, recording ok / skipped / failed with the reason; never raises."""
        result: dict[str, Any] = {}
        self.report["phases"][name] = result
        log(f"\n== {name}")
        if self.left_s() < minimum_s:
            result.update(
                status="skipped",
                reason=f"{self.left_s():.0f} s left of the budget, it needs ~{minimum_s:.0f}",
            )
            log(f"  skipped: {result['reason']}")
            return
        started = time.monotonic()
        try:
            run(result)
            result.setdefault("status", "ok")
        except Skip as exc:
            result.update(status="skipped", reason=str(exc))
            log(f"  skipped: {exc}")
        except (Phase, ServerError) as exc:
            result.update(status="failed", error=str(exc))
            log(f"  FAILED: {exc}")
        except Exception as exc:
            result.update(status="failed", error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc())
            log(f"  FAILED: {type(exc).__name__}: {exc}")
        result["phase_s"] = round(time.monotonic() - started, 1)


class Skip(Exception):
    """The phase does not apply on this host (no GPU, no transformers); the message says why."""


def _no_gpu_held(tidal: Tidal) -> bool:
    """Whether the gateway's GPU view shows nobody holding a GPU (read through the probe function,
    which stays deployed: every function's status carries the host's GPUs)."""
    status, body = http_request(
        tidal.port, "GET", f"/v1/functions/{PROBE}", headers=tidal.headers, timeout=10
    )
    if status != 200:
        time.sleep(3.0)  # no probe to ask: give the instances time to stop
        return True
    return all(not gpu["held_by"] for gpu in json.loads(body).get("gpus", {}).get("gpus", []))


def host_facts() -> dict[str, Any]:
    """The host's GPUs as tidal sees them, and torch's view (asked in a child, without touching CUDA)."""
    from tidal.backends.gpus import discover

    inventory = discover()
    facts: dict[str, Any] = {
        "gpus": [gpu.as_dict() for gpu in inventory.gpus],
        "source": inventory.source,
        "summary": inventory.describe(),
        "transformers": importlib.util.find_spec("transformers") is not None,
    }
    # Instances run under a uid of their own (the sandbox, as root): the device nodes must let them in.
    facts["device_nodes"] = {
        str(node): oct(node.stat().st_mode & 0o777)
        for node in sorted(Path("/dev").glob("nvidia*"))
        if node.exists()
    }
    probe = "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())"
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
            env={"PYTORCH_NVML_BASED_CUDA_CHECK": "1", "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        facts["torch"] = done.stdout.strip() or done.stderr.strip()[-300:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        facts["torch"] = f"not checked: {exc!r}"
    return facts


def needs_gpu_model(host: dict[str, Any]) -> None:
    if not host["gpus"]:
        raise Skip(f"this host has no GPU ({host['summary']}); TIDAL_FAKE_GPUS=1 runs it on a fake one")
    if not host["transformers"]:
        raise Skip("transformers is not installed (pip install -e '.[torch]')")


def cold_starts(check: Check, name: str, count: int) -> list[dict[str, Any]]:
    trials = []
    for index in range(count):
        if check.left_s() < 30:
            log(f"  cold start {index + 1}: skipped, the budget is nearly spent")
            break
        idle_s = check.wait(lambda: _idle(check, name), IDLE_WAIT_S, f"{name} to scale to zero")
        # The stopped instance frees its GPU once its process has exited: a cold start from zero
        # begins from a free GPU, not from one still held by the instance going away.
        idle_s += check.wait(lambda: _gpus_free(check, name), IDLE_WAIT_S, f"{name}'s GPU to be free")
        trial = check.post(name, TEXTS)
        trial["idle_wait_s"] = round(idle_s, 1)
        answer = trial.pop("answer", {}) or {}
        trial.update({key: answer.get(key) for key in ("device", "cuda_visible_devices", "pid")})
        log(f"  cold start {index + 1}: {trial['wall_ms']:.0f} ms, HTTP {trial['status']}, "
            f"{trial.get('detail')}, device {trial.get('device')}" + (f", {trial['error']}" if "error" in trial else ""))  # fmt: skip
        trials.append(trial)
    return trials


def _gpus_free(check: Check, name: str) -> bool:
    gpus = check.describe(name).get("gpus") or {}
    return not any(gpu.get("held_by") for gpu in gpus.get("gpus", []))


def _idle(check: Check, name: str) -> bool:
    counts = check.describe(name)["instances"]
    return bool(counts["ready"] == 0 and counts["starting"] == 0)


def instance_view(info: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": item["id"],
            "gpus": item.get("gpus"),
            "gpu_memory_mb": item.get("gpu_memory_mb"),
            "started_via": item.get("extra", {}).get("started_via"),
            "template_error": item.get("extra", {}).get("template_error"),
        }
        for item in info["instances"]["list"]
    ]


def run_gpu_bert(
    check: Check, host: dict[str, Any], args: argparse.Namespace, result: dict[str, Any]
) -> None:
    needs_gpu_model(host)
    check.deploy(EXAMPLES / "gpu_bert", "--gpu", "1", "--scale-to-zero-after", "2s")
    first = check.post("gpu_bert", TEXTS)
    result["first_call"] = {key: value for key, value in first.items() if key != "answer"}
    log(f"  first call (may wait for the template build): {first['wall_ms']:.0f} ms, HTTP {first['status']}")
    if first["status"] != 200:
        raise Phase(f"gpu_bert did not answer: {first.get('error')}")
    answer = first["answer"]
    fake = host["source"] == "fake"
    check.check("gpu_bert: CUDA_VISIBLE_DEVICES set in the instance", answer.get("cuda_visible_devices") == "0",
                answer.get("cuda_visible_devices"))  # fmt: skip
    if fake:
        result["note"] = "fake GPUs: torch ran on the CPU, timings mean nothing"
        check.check(
            "gpu_bert: answered (fake GPU: on the CPU)", answer.get("device") == "cpu", answer.get("device")
        )
    else:
        device = str(answer.get("device", ""))
        hint = (
            ""
            if device.startswith("cuda")
            else " (the sandbox's uid cannot open /dev/nvidia*? try --no-sandbox)"
        )
        check.check("gpu_bert: torch ran on cuda", device.startswith("cuda"), device + hint)
    check.check(
        "gpu_bert: 384-dim embedding", len(answer["embeddings"][0]) == 384, len(answer["embeddings"][0])
    )
    result["cold"] = cold_starts(check, "gpu_bert", args.cold)
    ok = [trial["wall_ms"] for trial in result["cold"] if trial["status"] == 200 and trial["cold"]]
    result["cold_ms"] = summarize_ms(ok)
    forks = [trial.get("detail") for trial in result["cold"]]
    check.check(
        "gpu_bert: cold starts are forks of the template",
        bool(forks) and all(d == "fork" for d in forks),
        forks,
    )
    client = SequentialClient(check.tidal.port, "/fn/gpu_bert", TEXTS, check.tidal.headers, timeout=60.0)
    try:
        client.post()  # a cold start if it had scaled to zero meanwhile: not timed
        samples = client.timed_block(
            args.warm, lambda status, data: None if status == 200 else f"HTTP {status}: {data[:200]!r}"
        )
    finally:
        client.close()
    result["warm_ms"] = summarize_ms([ns / 1e6 for ns in samples])
    log(
        f"  warm: p50 {result['warm_ms']['p50']:.2f} ms, p99 {result['warm_ms']['p99']:.2f} ms over {args.warm} calls"
    )
    info = check.describe("gpu_bert")
    result["instances"] = instance_view(info)
    result["host_gpus"] = info.get("gpus", {}).get("gpus")
    result["template"] = {
        key: (info.get("template") or {}).get(key)
        for key in ("state", "import_ms", "setup_ms", "rss_mb", "error")
    }
    log(f"  instances: {result['instances']}")
    check.remove("gpu_bert")


def run_naive(check: Check, host: dict[str, Any], args: argparse.Namespace, result: dict[str, Any]) -> None:
    needs_gpu_model(host)
    check.deploy(EXAMPLES / "gpu_bert_naive", "--scale-to-zero-after", "2s")
    first = check.post("gpu_bert_naive", TEXTS)
    result["first_call"] = {key: value for key, value in first.items() if key != "answer"}
    log(f"  first call: {first['wall_ms']:.0f} ms, HTTP {first['status']}, {first.get('detail')}")
    check.check("naive: still answers", first["status"] == 200, first.get("error", ""))
    answer = first.get("answer") or {}
    result["device"] = answer.get("device")
    info = check.describe("gpu_bert_naive")
    result["template"] = info.get("template")
    result["instances"] = instance_view(info)
    template = info.get("template") or {}
    if host["source"] != "fake":
        check.check("naive: the template was refused (CUDA initialised)", template.get("state") == "failed",
                    template.get("error"))  # fmt: skip
        check.check("naive: its instance was spawned", all(i["started_via"] == "spawn" for i in result["instances"]),
                    [i["started_via"] for i in result["instances"]])  # fmt: skip
        check.check(
            "naive: ran on cuda", str(answer.get("device", "")).startswith("cuda"), answer.get("device")
        )
    else:
        result["note"] = "fake GPUs: is_available() is False, so the template never touches CUDA and forks"
    result["cold"] = cold_starts(check, "gpu_bert_naive", args.naive_cold)
    result["cold_ms"] = summarize_ms(
        [t["wall_ms"] for t in result["cold"] if t["status"] == 200 and t["cold"]]
    )
    check.remove("gpu_bert_naive")


def run_half(check: Check, host: dict[str, Any], workdir: Path, result: dict[str, Any]) -> None:
    if not host["gpus"]:
        raise Skip(f"this host has no GPU ({host['summary']})")
    folder = workdir / "gpu_half"
    folder.mkdir(exist_ok=True)
    (folder / "main.py").write_text(HALF)
    check.deploy(folder)
    check.wait(
        lambda: check.describe("gpu_half")["instances"]["ready"] == 2, READY_WAIT_S, "two gpu_half instances"
    )
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: check.post("gpu_half", b"{}"), range(2)))
    seen = [(a.get("answer") or {}).get("cuda_visible_devices") for a in answers]
    result["answers"] = [a.get("answer") or a.get("error") for a in answers]
    check.check("gpu=0.5: two instances, both on GPU 0", seen == ["0", "0"], seen)
    info = check.describe("gpu_half")
    result["instances"] = instance_view(info)
    held = (info.get("gpus", {}).get("gpus") or [{}])[0].get("held_by", {})
    result["gpu_0_held_by"] = held
    check.check("gpu=0.5: GPU 0 held by both, 0.5 each", sorted(held.values()) == [0.5, 0.5], held)
    check.remove("gpu_half")


def run_too_big(check: Check, host: dict[str, Any], workdir: Path, result: dict[str, Any]) -> None:
    asked = len(host["gpus"]) + 1
    if asked > 16:
        raise Skip(f"this host has {len(host['gpus'])} GPUs; the spec allows at most 16")
    folder = workdir / "gpu_too_big"
    folder.mkdir(exist_ok=True)
    (folder / "main.py").write_text(TOO_BIG.format(gpus=asked))
    check.deploy(folder)
    reply = check.post("gpu_too_big", b"{}", timeout=30.0)
    result["reply"] = {key: reply.get(key) for key in ("status", "error", "wall_ms")}
    have = len(host["gpus"]) or "none"
    plural = "s" if asked > 1 else ""
    expected = f"gpu={asked} asks for {asked} GPU{plural}; this host has {have}"
    check.check("too big: the call gets the clear error", reply["status"] == 502 and expected in reply.get("error", ""),
                reply.get("error"))  # fmt: skip
    counts = check.describe("gpu_too_big")["instances"]
    result["start_error"] = counts.get("start_error")
    check.check(
        "too big: status shows it", expected in (counts.get("start_error") or ""), counts.get("start_error")
    )
    check.remove("gpu_too_big")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="write the report here too")
    parser.add_argument("--cold", type=int, default=5, help="cold starts of gpu_bert")
    parser.add_argument("--naive-cold", type=int, default=2, help="cold starts of gpu_bert_naive")
    parser.add_argument("--warm", type=int, default=200, help="sequential warm calls of gpu_bert")
    parser.add_argument("--budget-s", type=float, default=330.0, help="stop starting phases after this")
    parser.add_argument("--quick", action="store_true", help="--cold 2 --naive-cold 1 --warm 30")
    parser.add_argument("--no-sandbox", action="store_true", help="tidal up --insecure-no-sandbox")
    args = parser.parse_args()
    if args.quick:
        args.cold, args.naive_cold, args.warm = 2, 1, 30
    stop_on_sigterm()
    started = time.monotonic()
    host = host_facts()
    log(f"host: {host['summary']}; torch: {host['torch']}; transformers: {host['transformers']}")
    if host["device_nodes"]:
        log(f"device nodes: {host['device_nodes']} (a sandboxed instance needs them readable by others)")
    report: dict[str, Any] = {"host": host, "args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="tidal-gpu-check-") as temp:
        workdir = Path(temp)
        extra = ["--insecure-no-sandbox"] if args.no_sandbox else []
        try:
            tidal = Tidal.start(workdir, name="tidal-gpu", extra_args=extra, log_level="info")
        except ServerError as exc:
            log(f"tidal up failed: {exc}")
            report["error"] = str(exc)
            write_json(args.json, report)
            return 1
        check = Check(tidal, args.budget_s - (time.monotonic() - started))
        try:
            (workdir / PROBE).mkdir()
            (workdir / PROBE / "main.py").write_text(PROBE_SOURCE)
            try:
                check.deploy(workdir / PROBE)
            except Phase as exc:
                log(f"(no probe function: {exc})")
            check.phase("gpu_bert", 60, lambda result: run_gpu_bert(check, host, args, result))
            check.phase("gpu_bert_naive", 60, lambda result: run_naive(check, host, args, result))
            check.phase("gpu_half", 20, lambda result: run_half(check, host, workdir, result))
            check.phase("gpu_too_big", 10, lambda result: run_too_big(check, host, workdir, result))
        except KeyboardInterrupt:
            log("interrupted")
        finally:
            report["gateway_log_tail"] = tidal.server.log_tail(40)
            tidal.stop()
        report.update(check.report)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    summary(report)
    write_json(args.json, report)
    failed = [c for c in report.get("checks", []) if not c["ok"]]
    broken = [n for n, p in report.get("phases", {}).items() if p.get("status") == "failed"]
    return 1 if failed or broken else 0


def summary(report: dict[str, Any]) -> None:
    log(f"\n== summary ({report['elapsed_s']} s)  host: {report['host']['summary']}")
    for name, phase in report.get("phases", {}).items():
        line = f"  {name}: {phase.get('status')}"
        if "cold_ms" in phase and phase["cold_ms"].get("n"):
            line += f"; cold p50 {phase['cold_ms']['p50']:.0f} ms (n={phase['cold_ms']['n']})"
        if "warm_ms" in phase and phase["warm_ms"].get("n"):
            line += f"; warm p50 {phase['warm_ms']['p50']:.2f} ms"
        if "first_call" in phase:
            line += f"; first call {phase['first_call']['wall_ms']:.0f} ms"
        line += "".join(f"; {phase[key]}" for key in ("reason", "error", "note") if key in phase)
        log(line)
    checks = report.get("checks", [])
    log(f"  checks: {sum(c['ok'] for c in checks)} of {len(checks)} passed")
    for item in checks:
        if not item["ok"]:
            log(f"    FAIL {item['check']}: {item['detail']}")


if __name__ == "__main__":
    sys.exit(main())
