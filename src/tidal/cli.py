"""``tidal``: run the gateway (``up``) and drive it (deploy, ls, status, invoke, logs, keys...)."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tidal.client import DEFAULT_URL, Client, TidalError, resolve_key
from tidal.metering.prices import PriceSheet
from tidal.metering.retention import DEFAULT_MAX_ROWS, DEFAULT_RETENTION
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


@app.command()
def up(
    host: str = "127.0.0.1",
    port: int = 8080,
    state_dir: StateDir = Path(".tidal"),
    deploy: Annotated[
        list[Path] | None, typer.Option(help="deploy this file or folder at start (repeatable)")
    ] = None,
    max_body: Annotated[int, typer.Option(help="largest request body, bytes")] = 6 * 1024 * 1024,
    max_queued_body_mb: Annotated[
        int,
        typer.Option(
            min=0,
            help="bodies of requests waiting for an instance, all functions together, MiB; "
            "past it 429 (0: no budget)",
        ),
    ] = 256,
    insecure_no_sandbox: Annotated[
        bool,
        typer.Option(
            "--insecure-no-sandbox",
            help="DEBUGGING ONLY: run function code without the sandbox (it can then read tidal's keys and state)",
        ),
    ] = False,
    template_idle: Annotated[
        str, typer.Option(help="stop a function's warm template after this long unused (2s, 10m, 1h)")
    ] = "10m",
    activation_retention: Annotated[
        str, typer.Option(help="delete records and log files older than this (7d, 12h; 0: keep)")
    ] = DEFAULT_RETENTION,
    activation_max_rows: Annotated[
        int, typer.Option(min=0, help="keep at most this many activations, the newest (0: no limit)")
    ] = DEFAULT_MAX_ROWS,
    buckets_dir: Annotated[
        Path | None, typer.Option(help="local-folder buckets live here (default STATE_DIR/buckets)")
    ] = None,
    price_sheet: Annotated[
        Path | None,
        typer.Option(help="TOML prices for `tidal usage` (default: AWS Lambda's; docs/metering.md)"),
    ] = None,
    queue: Annotated[
        str | None,
        typer.Option(
            help="keep async jobs on Redis: redis://HOST:PORT/DB[?prefix=tidal:] (default: tidal.db)"
        ),
    ] = None,
    state: Annotated[
        str | None,
        typer.Option(
            envvar="TIDAL_STATE",
            help="keep functions, keys, jobs and records in PostgreSQL, shared by several gateways: "
            "postgresql://USER@HOST:PORT/DB[?schema=NAME] (default: STATE_DIR/tidal.db)",
        ),
    ] = None,
    max_header_bytes: Annotated[
        int, typer.Option(min=1024, help="largest request line and headers, bytes (past it: 431)")
    ] = 64 * 1024,
    header_timeout: Annotated[
        str, typer.Option(help="a request line and headers must arrive within this (slowloris: 408, closed)")
    ] = "10s",
    body_timeout: Annotated[
        str, typer.Option(help="close a connection whose request body stops arriving for this long")
    ] = "30s",
    code_quota_mb: Annotated[
        int, typer.Option(min=0, help="disk for all deployed code together, MiB (0: no quota)")
    ] = 20 * 1024,
    metrics_public: Annotated[
        bool, typer.Option("--metrics-public", help="serve GET /metrics without the admin key")
    ] = False,
    otel_endpoint: Annotated[
        str | None,
        typer.Option(help="send OpenTelemetry traces over OTLP/HTTP (http://HOST:4318; the otel extra)"),
    ] = None,
    backend: Annotated[
        str, typer.Option(help="where instances run: local (processes on this host) or ray (a Ray cluster)")
    ] = "local",
    ray_address: Annotated[
        str, typer.Option(help="with --backend ray: the cluster, auto (started on this host) or HOST:PORT")
    ] = "auto",
    log_level: str = "info",
) -> None:
    """Run the gateway in the foreground (functions deployed earlier come back)."""
    import uvicorn
    from redis.exceptions import RedisError

    from tidal.gateway.app import Gateway
    from tidal.gateway.http_guard import HttpLimits, guarded_protocol
    from tidal.gateway.platform import GatewayConfig, StateDirBusy
    from tidal.store.errors import StoreError

    for path in deploy or []:
        if not path.exists():
            fail(f"--deploy {path}: no such file or folder")
    if backend not in ("local", "ray"):
        fail(f"--backend {backend}: expected local or ray")
    try:
        template_idle_s = parse_duration(template_idle)
    except ValueError as exc:
        fail(f"--template-idle: {exc}")
        raise AssertionError from None  # fail() exits
    retention_s = seconds(activation_retention, "--activation-retention")
    http_limits = HttpLimits(
        max_header_bytes, seconds(header_timeout, "--header-timeout") or 10.0,
        seconds(body_timeout, "--body-timeout") or 30.0,
    )  # fmt: skip
    prices = _price_sheet(price_sheet)
    if otel_endpoint is not None and not otel_endpoint.startswith(("http://", "https://")):
        fail(f"--otel-endpoint {otel_endpoint}: expected an http:// or https:// URL (OTLP/HTTP)")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        gateway = Gateway(
            GatewayConfig(
                state_dir=state_dir,
                max_body_bytes=max_body,
                max_queued_body_bytes=max_queued_body_mb * 1024 * 1024,
                deploy_paths=list(deploy or []),
                template_idle_s=template_idle_s,
                insecure_no_sandbox=insecure_no_sandbox,
                activation_retention_s=retention_s or 0.0,
                activation_max_rows=activation_max_rows,
                buckets_dir=buckets_dir,
                code_quota_bytes=code_quota_mb * 1024 * 1024,
                queue_url=queue,
                state_url=state,
                metrics_public=metrics_public,
                otel_endpoint=otel_endpoint,
                prices=prices,
                backend=backend,
                ray_address=ray_address,
            )
        )
    except (StateDirBusy, StoreError) as exc:
        fail(str(exc))
    except RuntimeError as exc:  # --backend ray: Ray missing, or no cluster there (RayUnavailable)
        if type(exc).__name__ != "RayUnavailable":
            raise
        fail(str(exc))
    except ValueError as exc:  # a --queue URL that names no Redis, a --state URL that names no PostgreSQL
        fail(str(exc))
    except RedisError as exc:
        fail(f"--queue {queue}: Redis does not answer ({exc})")
        raise AssertionError from None  # fail() exits
    shared = "" if state is None else f", shared state: {getattr(gateway.platform.store, 'url', '')}"
    err.print(
        f"tidal on http://{host}:{port}  (state: {state_dir}{shared}, admin key: {gateway.platform.admin_key_path})"
    )
    isolation = gateway.platform.backend.describe_isolation()
    style = "bold red" if insecure_no_sandbox else "dim"
    err.print(
        f"[{style}]sandbox: {isolation['sandbox']}; limits: {isolation['limits']}[/{style}]", highlight=False
    )
    err.print(f"[dim]{gateway.platform.backend.gpus.inventory.describe()}[/dim]", highlight=False)
    config = uvicorn.Config(
        gateway,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        loop="uvloop",
        # httptools with a header size limit and header/body timeouts (tidal.gateway.http_guard).
        http=guarded_protocol(http_limits),
        timeout_keep_alive=5,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise typer.Exit(1)


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
    if instances["start_retry_in_s"]:
        out.print(f"[red]starts are failing[/red]: the next try is in {instances['start_retry_in_s']} s")
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
            "yes" if item["cold"] else "no",
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


def _price_sheet(path: Path | None) -> PriceSheet:
    """``tidal up --price-sheet FILE``: the prices in FILE (a bad file exits with its reason)."""
    from tidal.metering.prices import PriceSheetError, load_price_sheet

    try:
        return load_price_sheet(path)
    except PriceSheetError as exc:
        fail(f"--price-sheet: {exc}")
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
    cli_usage,
)

if __name__ == "__main__":
    app()
