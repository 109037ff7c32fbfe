"""Per-revision environments: what they add to a deploy, and whether a cold start inside one is
still a fork.

Two gateways, one after the other, sharing one uv cache that starts empty:

1. Gateway A, cold cache: deploy echo with no requirements (tidal's own environment: the
   baseline), then echo with ``requirements.txt`` (default ``scikit-learn==1.3.2``: numpy, scipy,
   joblib, threadpoolctl) as ``echo_env``, a new environment from an empty cache.
2. Gateway B, a new state dir, warm cache: the same two deploys (the environment is built again,
   files hard-linked from the cache), then ``echo_env`` again with changed code and unchanged
   requirements (no resolving, no installing), then ``--trials`` cold starts from zero of echo
   and echo_env taking turns (``--scale-to-zero-after 1s``; each trial waits for zero instances).

Prints each deploy's wall time (`tidal deploy` from start to exit) and the cold starts' p50/max,
with ratios to the no-requirements baseline measured in the same run.

Run: ``.venv/bin/python bench/environments.py [--trials 15] [--requirement scikit-learn==1.3.2]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cold_start import trial
from common import REPO_ROOT, Tidal, median, stop_on_sigterm, summarize_ms, write_json

ECHO = (REPO_ROOT / "examples" / "echo.py").read_text()
PAYLOAD = json.dumps({"hello": "world"}).encode()


def bundles(workdir: Path, requirement: str) -> tuple[Path, Path]:
    """echo as it is, and echo named echo_env with ``requirement`` in its requirements.txt."""
    plain = workdir / "echo"
    plain.mkdir()
    (plain / "main.py").write_text(ECHO)
    with_env = workdir / "echo_env"
    with_env.mkdir()
    (with_env / "main.py").write_text(ECHO.replace('name="echo"', 'name="echo_env"'))
    (with_env / "requirements.txt").write_text(f"{requirement}\n")
    return plain, with_env


def timed_deploy(tidal: Tidal, path: Path, *flags: str) -> tuple[float, str]:
    start = time.perf_counter()
    output = tidal.deploy(path, "--scale-to-zero-after", "1s", *flags, timeout=900)
    return (time.perf_counter() - start) * 1e3, output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--requirement", default="scikit-learn==1.3.2")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    stop_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="tidal-bench-envs-"))
    cache = workdir / "uv-cache"
    env = {"UV_CACHE_DIR": str(cache), "TIDAL_TEMPLATES": "1"}
    plain, with_env = bundles(workdir, args.requirement)
    results: dict[str, Any] = {"requirement": args.requirement, "deploy_ms": {}, "cold_start": {}}
    deploys = results["deploy_ms"]
    try:
        (workdir / "a").mkdir()
        tidal = Tidal.start(workdir / "a", name="tidal-envs-a", env=env)
        try:
            deploys["no requirements"], _ = timed_deploy(tidal, plain)
            deploys["new environment, cold cache"], output = timed_deploy(tidal, with_env)
            print(output, flush=True)
        finally:
            tidal.stop()
        (workdir / "b").mkdir()
        tidal = Tidal.start(workdir / "b", name="tidal-envs-b", env=env)
        try:
            deploys["no requirements (2nd gateway)"], _ = timed_deploy(tidal, plain)
            deploys["new environment, warm cache"], output = timed_deploy(tidal, with_env)
            print(output, flush=True)
            (with_env / "main.py").write_text((with_env / "main.py").read_text() + "\n# changed\n")
            deploys["new code, unchanged requirements"], output = timed_deploy(tidal, with_env)
            print(output, flush=True)
            samples: dict[str, list[dict[str, Any]]] = {"echo": [], "echo_env": []}
            for name in samples:
                trial(tidal, name, PAYLOAD, wait_idle=False)  # the template may still be building
            for round_ in range(args.trials):
                for name, trials in samples.items():
                    result = trial(tidal, name, PAYLOAD, wait_idle=True)
                    trials.append(result)
                    print(f"  round {round_ + 1}/{args.trials} {name:<9} {result['wall_ms']:7.1f} ms "
                          f"cold {result['cold']} via {','.join(result['started_via'])}", flush=True)  # fmt: skip
        finally:
            tidal.stop()
        for name, trials in samples.items():
            good = [t["wall_ms"] for t in trials if t.get("status") == 200 and t.get("cold")]
            results["cold_start"][name] = {**summarize_ms(good), "bad_trials": len(trials) - len(good)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results)
    write_json(args.json, results)
    return 0


def report(results: dict[str, Any]) -> None:
    deploys, cold = results["deploy_ms"], results["cold_start"]
    base = median([deploys["no requirements"], deploys["no requirements (2nd gateway)"]])
    print(f"\nDeploy wall time (`tidal deploy`), requirement {results['requirement']}")
    for label, ms in deploys.items():
        print(f"  {label:<34} {ms:8.0f} ms   x{ms / base:5.2f} of no requirements")
    print("\nCold start from zero (p50 / max of the trials that answered 200 cold)")
    for name, summary in cold.items():
        if summary.get("n"):
            ratio = summary["p50"] / cold["echo"]["p50"] if cold["echo"].get("n") else float("nan")
            print(f"  {name:<9} p50 {summary['p50']:6.1f} ms  max {summary['max']:6.1f} ms  n={summary['n']}  "
                  f"x{ratio:4.2f} of echo without requirements  (bad trials: {summary['bad_trials']})")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
