"""``tidal triggers add/ls/rm``: event triggers from the shell (cron, bucket, queue)."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.markup import escape
from rich.table import Table

from tidal.cli import app, call, fail, out, seconds

triggers_app = typer.Typer(
    help="Event triggers: cron schedules, bucket objects, queue messages.", no_args_is_help=True
)
app.add_typer(triggers_app, name="triggers")


def trigger_body(
    name: str, cron: str | None, tz: str | None, catchup: str | None, bucket: str | None, prefix: str | None,
    suffix: str | None, output_prefix: str | None, s3_endpoint: str | None, s3_region: str | None, queue: str | None, stream: str | None, batch: int | None,
    concurrency: int | None, max_deliveries: int | None, dead_letter: str | None, visibility_timeout: str | None,
) -> dict[str, Any]:  # fmt: skip
    """The POST /v1/triggers body the flags ask for; exactly one of --cron, --bucket, --queue."""
    kinds = [flag for flag, value in (("--cron", cron), ("--bucket", bucket), ("--queue", queue)) if value]
    if len(kinds) != 1:
        fail("give exactly one of --cron SCHEDULE, --bucket BUCKET, --queue URL")
    options: dict[str, Any]
    if cron is not None:
        options = {"kind": "cron", "schedule": cron, "tz": tz, "catchup": seconds(catchup, "--catchup")}
    elif bucket is not None:
        options = {"kind": "bucket", "bucket": bucket, "prefix": prefix, "suffix": suffix,
                   "output_prefix": output_prefix, "s3_endpoint": s3_endpoint, "s3_region": s3_region}  # fmt: skip
    else:
        options = {"kind": "queue", "url": queue, "stream": stream, "batch": batch, "concurrency": concurrency,
                   "max_deliveries": max_deliveries, "dead_letter": dead_letter,
                   "visibility_timeout": seconds(visibility_timeout, "--visibility-timeout")}  # fmt: skip
    return {"function": name, **{key: value for key, value in options.items() if value is not None}}


@triggers_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="the function the trigger invokes")],
    cron: Annotated[str | None, typer.Option(help="cron schedule: '*/5 * * * *' (a 6th field is seconds)")] = None,
    tz: Annotated[str | None, typer.Option(help="--cron: time zone (default UTC)")] = None,
    catchup: Annotated[str | None, typer.Option(help="--cron: fire a run missed while down if at most this old (1h)")] = None,
    bucket: Annotated[str | None, typer.Option(help="a local-folder bucket: each object created fires")] = None,
    prefix: Annotated[str | None, typer.Option(help="--bucket: only keys under this prefix")] = None,
    suffix: Annotated[str | None, typer.Option(help="--bucket: only keys with this suffix")] = None,
    output_prefix: Annotated[str | None, typer.Option(help="--bucket: write the JSON result to PREFIX+KEY.json")] = None,
    s3_endpoint: Annotated[str | None, typer.Option(help="--bucket: an S3-compatible store: aws or http(s)://HOST:PORT")] = None,
    s3_region: Annotated[str | None, typer.Option(help="--bucket with --s3-endpoint: the region (us-east-1)")] = None,
    queue: Annotated[str | None, typer.Option(help="the queue's server: redis://HOST:PORT/DB, nats://HOST:PORT or amqp://USER:PASS@HOST:PORT/VHOST")] = None,
    stream: Annotated[str | None, typer.Option(help="--queue: the stream (default tidal)")] = None,
    batch: Annotated[int | None, typer.Option(help="--queue: messages read at once (10)")] = None,
    concurrency: Annotated[int | None, typer.Option(help="--queue: messages in flight at once (4)")] = None,
    max_deliveries: Annotated[int | None, typer.Option(help="--queue: attempts before the dead letter (5)")] = None,
    dead_letter: Annotated[str | None, typer.Option(help="--queue: dead-letter stream (STREAM:dead)")] = None,
    visibility_timeout: Annotated[str | None, typer.Option(help="--queue: reclaim a message pending this long (60s)")] = None,
) -> None:  # fmt: skip
    """Add a trigger to a function: --cron, --bucket or --queue (checked now; a bad one is refused)."""
    body = trigger_body(name, cron, tz, catchup, bucket, prefix, suffix, output_prefix, s3_endpoint, s3_region, queue, stream, batch,
                        concurrency, max_deliveries, dead_letter, visibility_timeout)  # fmt: skip
    trigger = call("POST", "/v1/triggers", json=body)
    out.print(f"{trigger['id']}  {trigger['function']}: {escape(trigger['description'])}", highlight=False)
    token = trigger["state"].get("webhook_token")
    if token:  # where the S3-compatible store's event notifications go
        out.print(f"webhook: POST /v1/buckets/events/{trigger['id']}?token={token}", highlight=False)


def _status(trigger: dict[str, Any]) -> str:
    """What the trigger did last: its error, or its events and (cron) next run and missed runs."""
    if trigger["last_error"]:
        return f"[red]error {_time(trigger['last_error_at'])}: {escape(trigger['last_error'][:100])}[/red]"
    parts = [f"{trigger['events']} event(s)"]
    if trigger["last_event_at"]:
        parts.append(f"last {_time(trigger['last_event_at'])}")
    state = trigger["state"]
    if trigger["kind"] == "cron":
        if state.get("next_at"):
            parts.append(f"next {_time(state['next_at'])}")
        if state.get("missed"):
            parts.append(f"[yellow]{state['missed']} missed while down (skipped)[/yellow]")
    return ", ".join(parts)


def _time(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


@triggers_app.command("ls")
def list_triggers(
    name: Annotated[str | None, typer.Argument(help="only this function's triggers")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Triggers: what each listens to, where it comes from (spec or cli), and how it runs."""
    params = {"function": name} if name is not None else {}
    triggers = call("GET", "/v1/triggers", params=params)["triggers"]
    if as_json:
        sys.stdout.write(json.dumps(triggers, indent=2) + "\n")
        return
    table = Table("id", "function", "trigger", "from", "status")
    for trigger in triggers:
        table.add_row(trigger["id"], trigger["function"], escape(trigger["description"]), trigger["origin"],
                      _status(trigger))  # fmt: skip
    out.print(table)


@triggers_app.command("rm")
def remove(trigger_id: str) -> None:
    """Remove a trigger added by hand (a declared one goes by removing it from the code)."""
    call("DELETE", f"/v1/triggers/{quote(trigger_id, safe='')}")
    out.print(f"removed {trigger_id}")
