"""``tidal up``: run the gateway in the foreground, with its options (state, backend, limits)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from tidal.cli import StateDir, app, err, fail, seconds
from tidal.metering.prices import PriceSheet
from tidal.metering.retention import DEFAULT_MAX_ROWS, DEFAULT_RETENTION
from tidal.spec import parse_duration


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


def _price_sheet(path: Path | None) -> PriceSheet:
    """``tidal up --price-sheet FILE``: the prices in FILE (a bad file exits with its reason)."""
    from tidal.metering.prices import PriceSheetError, load_price_sheet

    try:
        return load_price_sheet(path)
    except PriceSheetError as exc:
        fail(f"--price-sheet: {exc}")
        raise AssertionError from None  # fail() exits
