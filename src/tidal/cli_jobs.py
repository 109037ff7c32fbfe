"""``tidal jobs ...`` and ``tidal invoke --async``: async invocations from the shell."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tidal.cli import app, call, client, err, fail, out, seconds
from tidal.client import TidalError

jobs_app = typer.Typer(help="Async jobs: list, show, cancel; dead letters and redrive.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")

FINAL = ("succeeded", "failed", "dead", "cancelled")
STATE_COLOURS = {
    "succeeded": "green",
    "failed": "red",
    "dead": "red",
    "cancelled": "yellow",
    "running": "cyan",
}


def submit(name: str, body: str, idempotency_key: str | None, callback_url: str | None) -> None:
    """`tidal invoke NAME JSON --async`: queue the call as a job and print the job's id."""
    headers = {"content-type": "application/json", "prefer": "respond-async"}
    if idempotency_key is not None:
        headers["idempotency-key"] = idempotency_key
    if callback_url is not None:
        headers["x-callback-url"] = callback_url
    try:
        with client() as api:
            response = api.request("POST", f"/fn/{name}", content=body.encode(), headers=headers)
    except TidalError as exc:
        fail(str(exc))
        raise AssertionError from None  # fail() exits
    answer = response.json()
    out.print(answer["job_id"], highlight=False)
    replayed = (
        " (an earlier job with this idempotency key)" if response.headers.get("idempotent-replayed") else ""
    )
    err.print(f"[dim]{answer['state']}{replayed}: tidal jobs show {answer['job_id']} --wait[/dim]")


def _job_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table("id", "function", "state", "attempts", "created", "ended / next", "error")
    for job in jobs:
        colour = STATE_COLOURS.get(job["state"], "white")
        ended = job["finished_at"] or job["next_attempt_at"]
        error = job["error"]
        table.add_row(
            job["id"], job["function"], f"[{colour}]{job['state']}[/{colour}]",
            f"{job['attempts']}/{job['max_attempts']}", _time(job["created_at"]), _time(ended) if ended else "",
            escape(f"{error['type']}: {error['message']}"[:80]) if error else "",
        )  # fmt: skip
    return table


def _time(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


@jobs_app.command("ls")
def list_jobs(
    name: Annotated[str | None, typer.Argument(help="only this function's jobs")] = None,
    state: Annotated[
        str | None, typer.Option(help="queued, running, succeeded, failed, dead or cancelled")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Jobs, newest first (needs an admin key)."""
    params: dict[str, Any] = {"limit": limit}
    if name is not None:
        params["function"] = name
    if state is not None:
        params["state"] = state
    jobs = call("GET", "/v1/jobs", params=params)["jobs"]
    if as_json:
        sys.stdout.write(json.dumps(jobs, indent=2) + "\n")
    else:
        out.print(_job_table(jobs))


@jobs_app.command("show")
def show(
    job_id: str,
    wait: Annotated[
        bool, typer.Option("--wait", help="wait until the job ended; exit 1 unless it succeeded")
    ] = False,
    timeout: Annotated[str, typer.Option(help="with --wait: give up after this long (30s, 5m)")] = "10m",
) -> None:
    """A job's record: state, attempts, result or error, activations (JSON)."""
    deadline = time.monotonic() + (seconds(timeout, "--timeout") or 0.0)
    delay = 0.05
    job = call("GET", f"/v1/jobs/{job_id}")
    while wait and job["state"] not in FINAL:
        if time.monotonic() >= deadline:
            sys.stdout.write(json.dumps(job, indent=2) + "\n")
            fail(f"job {job_id} is still {job['state']} after {timeout}")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
        job = call("GET", f"/v1/jobs/{job_id}")
    sys.stdout.write(json.dumps(job, indent=2) + "\n")
    if wait and job["state"] != "succeeded":
        raise typer.Exit(1)


@jobs_app.command("cancel")
def cancel(job_id: str) -> None:
    """Cancel a queued job (a running attempt cannot be stopped)."""
    job = call("DELETE", f"/v1/jobs/{job_id}")
    out.print(f"{job['id']}: {job['state']}", highlight=False)


@jobs_app.command("dlq")
def dead_letters(
    name: str,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The function's dead jobs: every attempt failed, or the job outlived its max_event_age."""
    jobs = call("GET", "/v1/jobs", params={"function": name, "state": "dead", "limit": limit})["jobs"]
    if as_json:
        sys.stdout.write(json.dumps(jobs, indent=2) + "\n")
        return
    out.print(_job_table(jobs))
    err.print(f"[dim]{len(jobs)} dead job(s); `tidal jobs redrive {name}` queues them again[/dim]")


@jobs_app.command("redrive")
def redrive(
    name: str,
    job_id: Annotated[str | None, typer.Option("--id", help="only this job (dead or failed)")] = None,
) -> None:
    """Queue the function's dead jobs again, attempts reset (e.g. after deploying a fix)."""
    answer = call("POST", "/v1/jobs/redrive", json={"function": name, "id": job_id})
    redriven = answer["redriven"]
    out.print(f"{len(redriven)} job(s) of {name} queued again", highlight=False)
    for redriven_id in redriven:
        out.print(f"  {redriven_id}", highlight=False)
