"""``tidal ab`` (per-revision numbers over a window) and ``tidal rollout`` (canary rollouts that
promote or roll back on their own); ``tidal deploy --canary N`` starts one through ``start_canary``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from tidal.cli import app, call, fail, out, seconds
from tidal.cli_traffic import revision_id

DEFAULT_STEPS = "10,25,50,100"
ACTIONS = ("status", "abort")


def _clock(epoch: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch)) if epoch else ""


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def error_rate(text: str) -> float:
    """``1%`` -> 0.01, ``0.5%`` -> 0.005, ``0.02`` -> 0.02 (a fraction); anything else exits."""
    number = text.strip().removesuffix("%")
    try:
        value = float(number)
    except ValueError:
        fail(f"--max-error-rate takes a percent like 1% or 0.5%, not {text!r}")
        raise AssertionError from None  # fail() exits
    if text.strip().endswith("%"):
        value /= 100
    elif value > 1:
        fail(f"--max-error-rate {text}: a fraction is at most 1; for a percent write {text}%")
    return value


def step_list(text: str) -> list[int]:
    """``5,25,50,100`` -> [5, 25, 50, 100]; the gateway checks that they increase to 100."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        fail(f"--steps takes percents separated by commas, e.g. 5,25,50,100, not {text!r}")
        raise AssertionError from None


@app.command()
def ab(
    name: str,
    since: Annotated[str, typer.Option(help="the window, back from now: 15m, 1h, 7d")] = "1h",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Per revision of a function: calls, errors, error rate and p50/p99 latency over a window.

    Errors are the revision's own (it raised, timed out, ran out of memory, lost its instance,
    failed to start); the caller's faults (400, 422, 401/403, a client that left) are counted
    apart. Latency is of warm calls; cold starts are counted apart.
    """
    window_s = seconds(since, "--since")
    answer = call("GET", f"/v1/functions/{name}/ab", params={"since": window_s})
    if as_json:
        out.print_json(data=answer)
        return
    table = Table("revision", "tag", "traffic", "calls", "ok", "errors", "error rate", "caller faults",
                  "cold", "p50 ms", "p99 ms", title=f"{name}, last {since}")  # fmt: skip
    for row in answer["revisions"]:
        table.add_row(
            row["revision"], row["tag"] or "", f"{row['percent']}%" if row["serving"] else "not serving",
            str(row["requests"]), str(row["ok"]), str(row["errors"]), _pct(row["error_rate"]),
            str(row["caller_faults"]), str(row["cold"]), _ms(row["p50_ms"]), _ms(row["p99_ms"]),
        )  # fmt: skip
    out.print(table)


@app.command()
def rollout(
    args: Annotated[list[str], typer.Argument(metavar="[status|abort] NAME", help="a function's name")],
    to: Annotated[str | None, typer.Option(help="the revision to roll out (2, or NAME-00002)")] = None,
    steps: Annotated[
        str, typer.Option(help="the canary's percent at each step, ending at 100")
    ] = DEFAULT_STEPS,
    interval: Annotated[str, typer.Option(help="how long each step runs before it is judged")] = "60s",
    max_error_rate: Annotated[str, typer.Option(help="the canary's error-rate limit: 1%, 0.5%")] = "1%",
    max_p99_ms: Annotated[
        float | None, typer.Option(help="the canary's warm p99 limit, ms (default: latency not judged)")
    ] = None,
    min_requests: Annotated[int, typer.Option(help="canary calls a step needs before it is judged")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Roll a revision out step by step; each step is judged and promoted or rolled back on its own.

    `tidal rollout embed --to 2 --steps 5,25,50,100 --interval 60s --max-error-rate 1%` gives
    embed-00002 5% of the calls, then after each healthy minute the next step; an unhealthy step
    sends everything back to the revision that served most before. `tidal rollout status embed`
    shows the step and the numbers so far; `tidal rollout abort embed` returns to that revision.
    """
    if len(args) == 2 and args[0] in ACTIONS:
        action, name = args
    elif len(args) == 1:
        action, name = ("start" if to is not None else "status"), args[0]
    else:
        fail(
            "usage: tidal rollout NAME --to REV [options] | tidal rollout status NAME | tidal rollout abort NAME"
        )
        raise AssertionError
    if action == "start":
        assert to is not None
        body = {
            "to": revision_id(name, to),
            "steps": step_list(steps),
            "interval": seconds(interval, "--interval"),
            "max_error_rate": error_rate(max_error_rate),
            "max_p99_ms": max_p99_ms,
            "min_requests": min_requests,
        }
        answer = call("POST", f"/v1/functions/{name}/rollout", json=body)
    elif action == "abort":
        answer = call("DELETE", f"/v1/functions/{name}/rollout")
    else:
        answer = call("GET", f"/v1/functions/{name}/rollout")
    if as_json:
        out.print_json(data=answer)
    else:
        show(answer)


def start_canary(deployed: list[dict[str, Any]], percent: int) -> None:
    """``tidal deploy --canary N``: the default rollout (N%, then 25, 50, 100; 60 s steps; at most 1%
    errors; 20 canary calls a step) of each revision the deploy made, with no traffic yet."""
    steps = [percent] + [step for step in (25, 50, 100) if step > percent]
    for item in deployed:
        if not item["created"]:
            out.print(f"{item['function']}: unchanged, so there is nothing to roll out")
            continue
        body = {"to": item["revision"], "steps": steps}
        show(call("POST", f"/v1/functions/{item['function']}/rollout", json=body))


def show(answer: dict[str, Any]) -> None:
    """A rollout as `tidal rollout status` prints it: state and limits, the step's window, history."""
    state = answer["rollout"]
    steps = state["steps"]
    header = f"[bold]rollout of {state['function']}[/bold]: {state['canary']} over {state['stable']}, "
    if state["state"] == "running":
        header += f"step {state['step'] + 1} of {len(steps)} ({state['percent']}%)"
        header += (
            ", waiting for enough canary calls"
            if state["waiting"]
            else f", judged in {state['judged_in_s']:g} s"
        )
    else:
        header += f"[bold]{state['state']}[/bold] at {_clock(state['finished_at'])}: {state['reason']}"
    out.print(header, highlight=False)
    p99 = "not judged" if state["max_p99_ms"] is None else f"<= {state['max_p99_ms']:g} ms"
    out.print(
        f"steps {','.join(map(str, steps))} every {state['interval_s']:g} s; error rate <= "
        f"{_pct(state['max_error_rate'])}, p99 {p99}; at least {state['min_requests']} canary calls a step",
        highlight=False,
    )
    window = answer.get("window")
    if window:
        table = Table("role", "revision", "calls", "errors", "error rate", "cold", "p50 ms", "p99 ms",
                      title=f"this step since {_clock(window['since'])}")  # fmt: skip
        for role in ("canary", "stable"):
            numbers = window[role]
            table.add_row(role, numbers["revision"], str(numbers["judged"]), str(numbers["errors"]),
                          _pct(numbers["error_rate"]), str(numbers["cold"]), _ms(numbers["p50_ms"]),
                          _ms(numbers["p99_ms"]))  # fmt: skip
        out.print(table)
    history = Table("time", "step", "percent", "decision", "canary calls", "canary error rate",
                    "stable error rate", "reason", title="decisions")  # fmt: skip
    for decision in answer["decisions"]:
        canary, stable = decision["canary"], decision["stable"]
        history.add_row(
            _clock(decision["at"]), str(decision["step"] + 1), f"{decision['percent']}%", decision["verdict"],
            str(canary.get("judged", "")), _pct(canary["error_rate"]) if canary else "",
            _pct(stable["error_rate"]) if stable else "", decision["reason"],
        )  # fmt: skip
    out.print(history)
