"""``tidal``: run the gateway (``up``) and drive it (deploy, ls, status, invoke, logs, keys...)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tidal.client import DEFAULT_URL, Client, TidalError, resolve_key
from tidal.spec import parse_duration

app = typer.Typer(
    help="tidal: serverless AI inference on your own machines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
# Piped output (scripts, grep) gets wide tables instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 250)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 250)


class Settings:
    url: str = DEFAULT_URL
    key: str | None = None
    state_dir: Path = Path(".tidal")


settings = Settings()

StateDir = Annotated[
    Path, typer.Option("--state-dir", envvar="TIDAL_STATE_DIR", help="where tidal keeps its state")
]


@app.callback()
def main(
    url: Annotated[str, typer.Option(envvar="TIDAL_URL", help="the gateway to talk to")] = DEFAULT_URL,
    key: Annotated[
        str | None, typer.Option(envvar="TIDAL_API_KEY", help="API key (default: STATE_DIR/admin.key)")
    ] = None,
    state_dir: StateDir = Path(".tidal"),
) -> None:
    settings.url, settings.key, settings.state_dir = url, key, state_dir


def client() -> Client:
    return Client(settings.url, resolve_key(settings.key, settings.state_dir))


def fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(1)


def call(method: str, path: str, **kwargs: Any) -> Any:
    try:
        with client() as api:
            return api.json(method, path, **kwargs)
    except TidalError as exc:
        fail(str(exc))


@app.command("ls")
def list_functions(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List functions with their serving revision and instances."""
    functions = call("GET", "/v1/functions")["functions"]
    if as_json:
        out.print_json(data=functions)
        return
    table = Table(
        "name", "revision", "style", "ready", "starting", "in flight", "memory", "concurrency", "public"
    )
    for item in functions:
        spec, instances = item["spec"], item["instances"]
        table.add_row(
            item["name"],
            item["revision"],
            item["style"],
            str(instances["ready"]),
            str(instances["starting"]),
            str(instances["in_flight"]),
            f"{spec['memory']} MiB",
            str(spec["concurrency"]),
            "yes" if spec["public"] else "no",
        )
    out.print(table)


@app.command()
def status(name: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """One function: spec, revisions, instances."""
    info = call("GET", f"/v1/functions/{name}")
    if as_json:
        out.print_json(data=info)
        return
    instances = info["instances"]
    out.print(
        f"[bold]{info['name']}[/bold]  serving {info['revision']}  ({info['style']})  POST {info['url']}"
    )
    panic = "  [red]PANIC MODE[/red]" if instances["panic"] else ""
    out.print(
        f"instances: ready {instances['ready']}, starting {instances['starting']}, desired {instances['desired']}; "
        f"requests in flight {instances['in_flight']}, queued {instances['queued']}{panic}"
    )
    out.print(
        f"since start: {instances['starts']} starts, {instances['start_failures']} failed, {instances['lost']} lost, "
        f"{instances['recycled']} replaced after a timeout, "
        f"{instances['rejected']} requests rejected (queue full)"
    )
    if instances["start_retry_in_s"] or instances.get("start_error"):  # the error stays until a start works
        retry = instances["start_retry_in_s"]
        when = (
            f"the next try is in {retry} s"
            if retry
            else "the backoff is over: the next start needed tries again"
        )
        out.print(f"[red]starts are failing[/red]: {when}")
    if instances.get("start_error"):
        out.print(f"[red]last start failed[/red]: {instances['start_error']}", highlight=False)
    if instances.get("last_lost"):
        out.print(f"[yellow]last instance lost[/yellow]: {instances['last_lost']}", highlight=False)
    extras = [(item["id"], item.get("extra", {})) for item in instances["list"]]
    placed = [f"{instance} on node {extra['node']}" for instance, extra in extras if "node" in extra]
    if placed:  # the Ray backend: where each instance runs
        out.print("instances: " + "; ".join(placed), highlight=False)
    rejected_last_hour = sum(minute["count"] for minute in info.get("rejections", []))
    if rejected_last_hour:
        out.print(f"[yellow]{rejected_last_hour} requests rejected (queue full) in the last hour[/yellow]")
    if len(info.get("traffic", [])) > 1:
        shares = ", ".join(
            f"{t['revision']} {t['percent']}%" + (f" ({t['tag']})" if t["tag"] else "")
            for t in info["traffic"]
        )
        out.print(f"traffic: {shares}", highlight=False)
    rollout = info.get("rollout")
    if rollout:
        steps = rollout["steps"]
        out.print(
            f"rollout: {rollout['canary']} at {steps[rollout['step']]}% (step {rollout['step'] + 1} of "
            f"{len(steps)}) over {rollout['stable']}; `tidal rollout status {info['name']}` has the numbers",
            highlight=False,
        )
    shadow = info.get("shadow")
    if shadow:
        out.print(
            f"shadow: {shadow['percent']}% of calls copied to {shadow['revision']} ({shadow['compare']}); "
            f"`tidal shadow report {info['name']}` has the results",
            highlight=False,
        )
    isolation = info.get("isolation") or {}
    out.print(
        f"sandbox: {isolation.get('sandbox', '?')}; limits: {isolation.get('limits', '?')}", highlight=False
    )
    out.print(template_line(info.get("template")), highlight=False)
    if info.get("keep_alive"):
        from tidal.keepalive.view import keep_alive_line

        out.print(keep_alive_line(info["keep_alive"], time.time()), highlight=False)
    for line in gpu_lines(info):
        out.print(line, highlight=False)
    held = [f"{item['id']}: {', '.join(item['models'])}" for item in instances["list"] if item.get("models")]
    if held:  # a multiplexed function (max_models)
        out.print("models loaded (least recently used first): " + "; ".join(held), highlight=False)
    out.print("spec: " + json.dumps(info["spec"]), highlight=False)
    table = Table("revision", "created", "code digest", "entry", "environment")
    for revision in info["revisions"]:
        table.add_row(
            revision["id"],
            _time(revision["created_at"]),
            revision["code_digest"][:12],
            f"{revision['module']}.{revision['attribute']}",
            revision.get("environment", "")[:12] or "tidal's own",
        )
    out.print(table)
    if info["events"]:
        events = Table("scaling event", "revision", "from", "to", "reason")
        for event in info["events"]:
            events.add_row(
                _time(event["at"]),
                event["revision"],
                str(event["from_count"]),
                str(event["to_count"]),
                event["reason"],
            )
        out.print(events)


@app.command()
def rm(name: str) -> None:
    """Remove a function: its revisions, instances and route."""
    call("DELETE", f"/v1/functions/{name}")
    out.print(f"removed {name}")


@app.command()
def invoke(
    name: str,
    data: Annotated[str, typer.Argument(help="JSON body; '-' reads standard input")] = "null",
    run_async: Annotated[
        bool, typer.Option("--async", help="queue it as a job and print the job's id (`tidal jobs show ID`)")
    ] = False,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="with --async: the same key again gives the same job, never a second run"),
    ] = None,
    callback_url: Annotated[
        str | None, typer.Option(help="with --async: POST the job's final record to this http(s) URL")
    ] = None,
) -> None:
    """Invoke a function with a JSON body and print its answer (with --async: its job's id)."""
    body = sys.stdin.read() if data == "-" else data
    if run_async:
        cli_jobs.submit(name, body, idempotency_key, callback_url)
        return
    if idempotency_key is not None or callback_url is not None:
        fail("--idempotency-key and --callback-url go with --async")
    try:
        with client() as api:
            response = api.request(
                "POST", f"/fn/{name}", content=body.encode(), headers={"content-type": "application/json"}
            )
    except TidalError as exc:
        fail(str(exc))
    sys.stdout.write(response.text + ("\n" if not response.text.endswith("\n") else ""))
    err.print(
        f"[dim]activation {response.headers.get('x-tidal-activation')}  revision "
        f"{response.headers.get('x-tidal-revision')}  cold {response.headers.get('x-tidal-cold-start')}[/dim]"
    )


@app.command()
def activations(
    name: str,
    limit: int = 20,
    status: Annotated[
        list[str] | None, typer.Option(help="only this status: ok, error, timeout... (repeatable)")
    ] = None,
    since: Annotated[str | None, typer.Option(help="only the last 1h, 30m, 7d")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recent invocations of a function, newest first."""
    params: dict[str, Any] = {"limit": limit, "status": status or [], **({"since": since} if since else {})}
    items = call("GET", f"/v1/functions/{name}/activations", params=params)["activations"]
    if as_json:
        out.print_json(data=items)
        return
    table = Table(
        "activation",
        "start",
        "revision",
        "instance",
        "status",
        "http",
        "duration ms",
        "billed ms",
        "cold",
        "memory",
        "error",
    )
    for item in items:
        table.add_row(
            item["id"],
            _time(item["start"]),
            item["revision"],
            item["instance"],
            item["status"],
            str(item["http_status"]),
            f"{item['duration_ms']:.2f}",
            str(item["billed_ms"]),
            (item.get("cold_detail") or "yes") if item["cold"] else "no",  # how it started: fork, spawn
            f"{item['memory_mb']} MiB",
            f"{item['error_type']}: {item['error_message']}" if item["error_type"] else "",
        )
    out.print(table)


@app.command()
def logs(
    name: str,
    activation: Annotated[str | None, typer.Option(help="only this activation's output")] = None,
    limit: int = 20,
) -> None:
    """stdout/stderr captured per invocation, oldest of the recent ones first."""
    params: dict[str, Any] = {"limit": limit}
    if activation:
        params["activation"] = activation
    entries = call("GET", f"/v1/functions/{name}/logs", params=params)["logs"]
    for entry in reversed(entries):
        header = f"--- {entry['activation']} {_time(entry['start'])} {entry['status']} ({entry['instance']})"
        out.print(f"[dim]{header}[/dim]", highlight=False)
        if entry["logs"]:
            sys.stdout.write(entry["logs"] if entry["logs"].endswith("\n") else entry["logs"] + "\n")
            sys.stdout.flush()


RateOption = Annotated[
    str | None, typer.Option(help="requests per second, token bucket: 50/s, 600/m, 1000/h")
]
BurstOption = Annotated[int | None, typer.Option(help="calls allowed at once (default: one second's worth)")]
QuotaOption = Annotated[
    list[str] | None,
    typer.Option(help="100000/day, 1000000/month (requests) or 2000gb-s/month (repeatable)"),
]


@keys_app.command("create")
def keys_create(
    scope: Annotated[list[str], typer.Option(help="admin, invoke:*, or invoke:NAME (repeatable)")],
    description: str = "",
    rate: RateOption = None,
    burst: BurstOption = None,
    quota: QuotaOption = None,
) -> None:
    """Create a key; its secret is printed once. Past its --rate or --quota a call answers 429."""
    body = {"scopes": scope, "description": description, "rate": rate, "burst": burst, "quotas": quota or []}
    record = call("POST", "/v1/keys", json=body)
    err.print(f"key {record['id']} with scopes {', '.join(record['scopes'])} (shown only now):")
    out.print(record["key"], highlight=False)


@keys_app.command("limits")
def keys_limits(
    key_id: str,
    rate: RateOption = None,
    burst: BurstOption = None,
    quota: QuotaOption = None,
) -> None:
    """Set a key's rate limit and quotas (replacing its old ones; with none given, it has no limits)."""
    body = {"rate": rate, "burst": burst, "quotas": quota or []}
    changed = call("PATCH", f"/v1/keys/{key_id}", json=body)
    out.print(f"key {key_id}: {_limits_text(changed['limits'])}")


def _limits_text(limits: dict[str, Any]) -> str:
    """``{"rate": "50/s", "burst": 100, "quotas": ["100000/day"]}`` -> ``50/s burst 100, 100000/day``."""
    parts = [f"{limits['rate']} burst {limits['burst']}"] if limits.get("rate") else []
    return ", ".join(parts + list(limits.get("quotas") or [])) or "no limits"


@keys_app.command("ls")
def keys_list() -> None:
    """List keys (never their secrets)."""
    table = Table("id", "scopes", "limits", "created", "revoked", "description")
    for key in call("GET", "/v1/keys")["keys"]:
        table.add_row(
            key["id"],
            ", ".join(key["scopes"]),
            _limits_text(key.get("limits") or {}),
            _time(key["created_at"]),
            _time(key["revoked_at"]) if key["revoked_at"] else "",
            key["description"],
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key at once."""
    call("DELETE", f"/v1/keys/{key_id}")
    out.print(f"revoked {key_id}")


def seconds(text: str | None, flag: str) -> float | None:
    """``2s`` -> 2.0, ``500ms`` -> 0.5, ``5m`` -> 300.0, ``90`` -> 90.0 (seconds); a bad one exits."""
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError:
        fail(f"{flag} takes a duration like 2s, 500ms, 5m or 1h, not {text!r}")
        raise AssertionError from None  # fail() exits


def template_line(template: dict[str, Any] | None) -> str:
    """`tidal status`'s line about the function's warm template: its memory and how long unused."""
    if template is None:
        return "template: none kept (the next cold start builds one)"
    if template.get("state") == "failed":  # instances start as fresh processes meanwhile
        when = "until the code changes" if template.get("lasting") else "for now"
        return f"template: failed ({when}), instances start as fresh processes: {template['error']}"
    memory = "memory unknown" if template["rss_mb"] is None else f"{template['rss_mb']} MB RSS"
    if template["pss_mb"] is not None:
        memory += f" ({template['pss_mb']} MB PSS)"
    if template["built_at"] is None:
        return f"template: pid {template['pid']} building, {memory}"
    live = len(template["instances"])
    use = (
        f"parent of {live} live instance{'s' if live != 1 else ''}"
        if live
        else f"idle {template['idle_s']:g} s (stopped after {template['idle_limit_s']:g} s)"
    )
    return f"template: pid {template['pid']}, {memory}, {use}, built {_time(template['built_at'])}"


def gpu_lines(info: dict[str, Any]) -> list[str]:
    """`tidal status`'s GPU lines: the host's GPUs, then each instance's GPUs and GPU memory.

    Nothing for a gpu=0 function on a host without GPUs.
    """
    host = info.get("gpus") or {}
    gpu = info["spec"].get("gpu", 0)
    listing = info["instances"].get("list", [])
    if not gpu and not host.get("gpus"):
        return []
    lines = [f"host {host.get('summary', 'gpus: unknown')}"]
    for item in host.get("gpus", []):
        used = "" if item.get("memory_used_mb") is None else f", {item['memory_used_mb']} MiB used"
        holders = ", ".join(
            name if share >= 1 else f"{name} ({share:g})"
            for name, share in sorted(item.get("held_by", {}).items())
        )
        lines.append(f"  GPU {item['index']}{used}; held by {holders or 'nobody'}")
    if gpu:
        for instance in listing:
            memory = instance.get("gpu_memory_mb")
            shown = "memory not reported" if memory is None else f"{memory} MiB GPU memory"
            where = ",".join(str(index) for index in instance.get("gpus", [])) or "?"
            lines.append(f"  instance {instance['id']}: GPU {where} (gpu={gpu:g}), {shown}")
    return lines


def _time(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


# Commands kept in modules of their own register on ``app`` when imported.
from tidal import (  # noqa: E402, F401
    cli_buckets,
    cli_deploy,
    cli_jobs,
    cli_optimize,
    cli_rollout,
    cli_routes,
    cli_shadow,
    cli_simulate,
    cli_top,
    cli_traffic,
    cli_triggers,
    cli_up,
    cli_usage,
)

if __name__ == "__main__":
    app()
