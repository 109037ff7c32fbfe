"""``tidal shadow``: copy a share of a function's calls to a candidate revision, compare the answers.

tidal shadow NAME --to REV [--percent 20] [--compare 'cosine>=0.99']   start (or change) it
tidal shadow NAME                                                      show it
tidal shadow report NAME [--since 1h]                                  what the copies showed
tidal shadow stop NAME                                                 stop it
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from tidal.cli import app, call, fail, out
from tidal.cli_traffic import revision_id
from tidal.shadow.compare import SPEC_FORMS, parse_comparator
from tidal.spec import parse_duration

ACTIONS = ("report", "stop")


def _show(answer: dict[str, Any]) -> None:
    shadow = answer["shadow"]
    if shadow is None:
        out.print(
            f"{answer['function']} has no shadow (start one: tidal shadow {answer['function']} --to REV)"
        )
        return
    table = Table("candidate", "percent", "compare", "max in flight", "in flight", "copying", "since")
    table.add_row(
        shadow["revision"], f"{shadow['percent']}%", shadow["compare"], str(shadow["max_in_flight"]),
        str(shadow["in_flight"]), "yes" if shadow["active"] else "no (its code is missing)",
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(shadow["created_at"])),
    )  # fmt: skip
    out.print(table)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _report(answer: dict[str, Any]) -> None:
    name = answer["function"]
    if answer["revision"] is None:
        out.print(f"{name}: no shadow copies in the last {answer['since_s']:g} s")
        return
    rate = answer["agreement_rate"]
    compare = f", compared by {answer['compare']}" if answer["compare"] else ""
    out.print(
        f"shadow of {name} -> {answer['revision']}{compare}, last {answer['since_s']:g} s", highlight=False
    )
    not_compared = answer["not_compared"]
    out.print(
        f"copies sent: {answer['sent']}   compared: {answer['compared']}   "
        f"agreed: {answer['agreed']}   disagreed: {answer['disagreed']}   "
        f"agreement: {'-' if rate is None else f'{rate:.2%}'}",
        highlight=False,
    )
    out.print(
        f"candidate errors: {answer['candidate_errors']['count']}   dropped: {answer['dropped']}   "
        f"not compared: {not_compared['primary_failed']} (primary failed), {not_compared['streamed']} (streamed)",
        highlight=False,
    )
    if answer["scores"]:
        scores = answer["scores"]
        out.print(
            f"scores: min {scores['min']:.6g}, p50 {scores['p50']:.6g}, max {scores['max']:.6g}",
            highlight=False,
        )
    latency = Table("latency", "p50", "p99")
    for side in ("primary", "candidate"):
        latency.add_row(side, _ms(answer["latency"][side]["p50_ms"]), _ms(answer["latency"][side]["p99_ms"]))
    out.print(latency)
    if answer["disagreements"]:
        examples = Table("primary activation", "candidate activation", "diff", title="disagreements (newest)")
        for item in answer["disagreements"]:
            # Text, not markup: a diff quotes the function's own output, which may hold "[/x]".
            examples.add_row(item["activation"], item["candidate_activation"], Text(item["diff"]))
        out.print(examples)
    for message in answer["candidate_errors"]["messages"]:
        out.print(f"candidate error: {message}", highlight=False, markup=False)
    if answer["sampled_only"]:
        out.print("(more copies than a report reads: the newest were summarised)")


@app.command()
def shadow(
    args: Annotated[list[str], typer.Argument(help="NAME, `report NAME` or `stop NAME`", show_default=False)],
    to: Annotated[str | None, typer.Option("--to", help="candidate revision: 2, 00002 or NAME-00002")] = None,
    percent: Annotated[int | None, typer.Option(help="share of calls copied, 0..100 (default 100)")] = None,
    compare: Annotated[str | None, typer.Option(help=f"{SPEC_FORMS} (default exact)")] = None,
    max_in_flight: Annotated[
        int | None, typer.Option(help="copies running at once at most; more are dropped (default 16)")
    ] = None,
    since: Annotated[str, typer.Option(help="report: how far back (30m, 1h, 7d)")] = "1h",
) -> None:
    """Copy a share of a function's calls to a candidate revision and compare its answers.

    Clients only ever get the answer of the revision their traffic chose; the candidate's answers,
    errors and timeouts never reach them. Quote comparisons with < or > ('cosine>=0.99'), or write
    cosine:0.99.
    """
    action, name = _parse(args)
    if action != "set" and (to or percent is not None or compare or max_in_flight is not None):
        fail(
            f"--to, --percent, --compare and --max-in-flight go with `tidal shadow NAME --to REV`, not {action}"
        )
    if action == "report":
        try:
            seconds = parse_duration(since)
        except ValueError as exc:
            fail(f"--since: {exc}")
            raise AssertionError from None  # fail() exits
        _report(call("GET", f"/v1/functions/{name}/shadow/report", params={"since": seconds}))
    elif action == "stop":
        answer = call("DELETE", f"/v1/functions/{name}/shadow")
        out.print(f"stopped the shadow of {name}" if answer["stopped"] else f"{name} had no shadow")
    elif to is None:
        if percent is not None or compare or max_in_flight is not None:
            fail("name the candidate revision with --to REV")
        _show(call("GET", f"/v1/functions/{name}/shadow"))
    else:
        _show(
            call(
                "PUT",
                f"/v1/functions/{name}/shadow",
                json=_request(name, to, percent, compare, max_in_flight),
            )
        )


def _parse(args: list[str]) -> tuple[str, str]:
    """(action, function): ``[NAME]`` -> ("set", NAME); ``[report|stop, NAME]`` -> (that, NAME)."""
    if len(args) == 1:
        return "set", args[0]
    if len(args) == 2 and args[0] in ACTIONS:
        return args[0], args[1]
    fail("usage: tidal shadow NAME [--to REV ...] | tidal shadow report NAME | tidal shadow stop NAME")
    raise AssertionError  # fail() exits


def _request(
    name: str, to: str, percent: int | None, compare: str | None, max_in_flight: int | None
) -> dict[str, Any]:
    """The PUT body; what can be checked here is, with the accepted forms in the message."""
    if percent is not None and not 0 <= percent <= 100:
        fail(f"--percent {percent}: must be 0..100")
    if compare is not None:
        try:
            parse_comparator(compare)
        except ValueError as exc:
            fail(f"--compare: {exc}")
    body: dict[str, Any] = {"revision": revision_id(name, to)}
    for key, value in (("percent", percent), ("compare", compare), ("max_in_flight", max_in_flight)):
        if value is not None:
            body[key] = value
    return body
