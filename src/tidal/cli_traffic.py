"""``tidal traffic``: split a function's requests over its revisions, and tag revisions."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer
from rich.table import Table

from tidal.cli import app, call, fail, out

SHARE = re.compile(r"^([A-Za-z0-9_-]+)=(\d{1,3})$")
TAGGED = re.compile(r"^([A-Za-z0-9_-]+)=([a-z][a-z0-9_-]{0,31})$")


def revision_id(function: str, given: str) -> str:
    """``2`` or ``00002`` -> ``NAME-00002``; a full revision id stays as it is."""
    return f"{function}-{int(given):05d}" if given.isdigit() else given


def traffic_request(function: str, shares: list[str], tags: list[str]) -> dict[str, Any]:
    """The PUT body for ``REV=PCT ...`` and ``--tag REV=TAG ...``; a tagged revision not in the
    shares serves at 0% (reachable by its tag only).
    """
    targets: dict[str, dict[str, Any]] = {}
    for share in shares:
        match = SHARE.match(share)
        if match is None:
            fail(f"{share!r} is not REVISION=PERCENT (e.g. {function}-00002=10 or 2=10)")
            raise AssertionError  # fail() exits
        revision = revision_id(function, match.group(1))
        targets[revision] = {"revision": revision, "percent": int(match.group(2)), "tag": None}
    for tag in tags:
        match = TAGGED.match(tag)
        if match is None:
            fail(f"--tag {tag!r} is not REVISION=TAG (a tag is a lowercase word, e.g. 2=canary)")
            raise AssertionError
        revision = revision_id(function, match.group(1))
        targets.setdefault(revision, {"revision": revision, "percent": 0, "tag": None})["tag"] = match.group(
            2
        )
    return {"targets": list(targets.values())}


@app.command()
def traffic(
    name: str,
    shares: Annotated[
        list[str] | None, typer.Argument(help="REVISION=PERCENT ... (adding up to 100)")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option(help="REVISION=TAG: name a revision (repeatable)")] = None,
) -> None:
    """Show or set how a function's requests are split over its revisions.

    `tidal traffic embed 1=90 2=10 --tag 2=canary` sends 10% to embed-00002, which also answers
    `POST /fn/embed@canary`. With no shares, prints the current split.
    """
    if shares or tag:
        answer = call(
            "PUT", f"/v1/functions/{name}/traffic", json=traffic_request(name, shares or [], tag or [])
        )
    else:
        answer = call("GET", f"/v1/functions/{name}/traffic")
    table = Table("revision", "percent", "tag")
    for target in answer["traffic"]:
        table.add_row(target["revision"], f"{target['percent']}%", target["tag"] or "")
    out.print(table)
    if answer.get("rollout_aborted"):  # a split set by hand wins over a running canary rollout
        out.print(f"[yellow]{answer['rollout_aborted']}[/yellow]", highlight=False)
