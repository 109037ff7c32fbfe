"""The admin API under /v1: functions, revisions, instances, activations, logs, keys.

Every route needs a key with the ``admin`` scope. Errors use the same body as invocations:
``{"error": {"type", "message"}}``.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import Field

from tidal.cluster import cluster_status
from tidal.deploy.service import Deployed, DeployError, DeployOptions
from tidal.gateway.key_limits import LimitFields, key_view
from tidal.gateway.platform import Platform
from tidal.router.router import Route
from tidal.store.models import Activation, Revision


class ApiError(HTTPException):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(status, message)
        self.error_type = error_type


async def json_object(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object, or a 400 that says it must be one."""
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "BadRequest", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequest", "the body must be a JSON object")
    return body


def platform_of(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


async def require_admin(
    request: Request, authorization: Annotated[str | None, Header(include_in_schema=False)] = None
) -> Platform:
    """Runs on the event loop (not FastAPI's thread pool): routes read state the loop owns."""
    platform = platform_of(request)
    caller = await platform.keys.identify(authorization)
    if not caller.authenticated:
        raise ApiError(401, "Unauthorized", "a valid admin API key is required (Authorization: Bearer KEY)")
    if not caller.may("admin"):
        raise ApiError(403, "Forbidden", "this key lacks the admin scope")
    return platform


Admin = Annotated[Platform, Depends(require_admin)]
router = APIRouter(prefix="/v1")


# Length limits of what the admin API stores or echoes (hardening: no megabyte descriptions).
MAX_DESCRIPTION = 500
MAX_SCOPES = 100
MAX_SCOPE_LENGTH = 80  # "invoke:" and a function name (63) fit
MAX_PATH_TEXT = 1024  # --entry, --handler, the deployed path's name
MAX_OVERRIDES = 64 * 1024  # the JSON of spec overrides


class KeyRequest(LimitFields):  # with rate, burst and quotas (tidal.gateway.key_limits)
    scopes: list[Annotated[str, Field(max_length=MAX_SCOPE_LENGTH)]] = Field(
        examples=[["invoke:embed"]], max_length=MAX_SCOPES
    )
    description: str = Field("", max_length=MAX_DESCRIPTION)


def _plain(value: Any) -> Any:
    return msgspec.to_builtins(value)


def _route_or_404(platform: Platform, name: str) -> Route:
    route = platform.router.route(name)
    if route is None:
        raise ApiError(404, "NotFound", f"no function named {name!r}")
    return route


DEPLOY_SPOOL_BYTES = 8 * 1024 * 1024  # a deploy body past this waits in a temporary file
REJECTIONS_SHOWN_S = 3600.0  # `GET /v1/functions/NAME` shows the last hour of 429s, per minute
INSTANCE_COUNTS = ("ready", "starting", "desired", "in_flight", "queued", "panic", "starts",
                   "start_failures", "start_retry_in_s", "start_error", "lost", "recycled", "rejected",
                   "last_lost")  # fmt: skip


async def describe_function(
    platform: Platform, route: Route, revisions: list[Revision] | None = None
) -> dict[str, Any]:
    """One function as the API shows it. Instance counts are the primary revision's (the one with the
    largest share); ``traffic`` lists every serving revision with its own counts.
    """
    primary = route.primary
    pool = primary.pool.describe()
    # Revision-level fields from the primary revision, function-level ones (public, sticky_key,
    # retries, destinations ...) as the function's stored settings hold them.
    settings = platform.function_settings.get(route.function, {})
    spec = {**primary.spec.model_dump(mode="json"), **settings, "public": route.public}
    body: dict[str, Any] = {
        "name": route.function,
        "url": f"/fn/{route.function}",
        "revision": primary.revision.id,
        "style": primary.revision.style,
        "public": route.public,
        "spec": spec,
        "isolation": platform.backend.describe_isolation(),
        "traffic": [
            {
                "revision": target.revision.id,
                "percent": target.percent,
                "tag": target.tag,
                **{key: target.pool.describe()[key] for key in ("ready", "starting", "in_flight", "queued")},
            }
            for target in route.targets
        ],
        "instances": {key: pool[key] for key in INSTANCE_COUNTS},
        # The primary revision's warm template (pid, rss_mb, pss_mb, idle_s, built_at ...), or None.
        "template": platform.backend.template_of(primary.pool.launch),
        # The keep-alive policy, its windows and why, idle times learned, phase now; None: no policy.
        "keep_alive": platform.keep_alive.describe(route.function),
        "shadow": _shadow_of(route),  # the candidate copies go to (tidal shadow), or None
    }
    body["instances"]["list"] = pool["instances"]
    await _add_gpus(platform, body, with_usage=revisions is not None)
    if revisions is not None:
        body["revisions"] = [_plain(revision) for revision in revisions]
        body["events"] = await asyncio.to_thread(platform.store.scaling_events, route.function)
        await platform.recorder.flush()  # 429s are counted per minute and written in batches
        since = time.time() - REJECTIONS_SHOWN_S
        body["rejections"] = await asyncio.to_thread(platform.store.rejections, route.function, since)
        rollout = await asyncio.to_thread(platform.store.rollout, route.function)
        running = rollout is not None and rollout.state == "running"
        # The running canary rollout in short (`tidal rollout status NAME` has the numbers).
        body["rollout"] = _plain(rollout) if running else None
    return body


async def _add_gpus(platform: Platform, body: dict[str, Any], with_usage: bool) -> None:
    """Each instance's GPU indices (its CUDA_VISIBLE_DEVICES) and, in one function's view where the
    driver tells, the GPU memory its process holds (``gpu_memory_mb``); ``gpus``: the host's GPUs.
    """
    gpus = platform.backend.gpus
    usage = None
    if with_usage and gpus.allocator.has_gpus:  # the driver is asked in a thread: nvidia-smi is slow
        usage = await asyncio.to_thread(gpus.usage, time.monotonic())
    for instance in body["instances"]["list"]:
        visible = instance.get("extra", {}).get("gpus")
        instance["gpus"] = [int(index) for index in visible.split(",") if index] if visible else []
        pid = instance.get("pid")
        instance["gpu_memory_mb"] = usage.by_pid.get(pid) if usage is not None and pid else None
    body["gpus"] = gpus.describe(usage)


def _shadow_of(route: Route) -> dict[str, Any] | None:
    if route.shadow is None:
        return None
    pool = route.shadow.target.pool.describe()
    return {
        "revision": route.shadow.target.revision.id,
        "percent": route.shadow.percent,
        "compare": str(route.shadow.comparator),
        **{key: pool[key] for key in ("ready", "starting", "in_flight", "queued")},
    }


@router.get("/functions", summary="List functions")
async def list_functions(platform: Admin) -> dict[str, Any]:
    routes = list(platform.router.routes.values())
    return {"functions": [await describe_function(platform, route) for route in routes]}


@router.get("/functions/{name}", summary="A function: spec, traffic, revisions, instances")
async def get_function(name: str, platform: Admin) -> dict[str, Any]:
    route = _route_or_404(platform, name)
    revisions = await asyncio.to_thread(platform.store.revisions, name)
    return await describe_function(platform, route, revisions)


@router.post(
    "/functions",
    status_code=201,
    summary="Deploy a code bundle (zip) as new revisions",
    description="With `Accept: application/x-ndjson` the answer is a stream of JSON lines: "
    '`{"event": "progress", "line"}` while requirements install, then one `{"event": "done", '
    '"status": 201, "deployed"}` or `{"event": "error", "status": 400, "error"}`.',
)
async def deploy(
    request: Request,
    platform: Admin,
    source: Annotated[
        str, Query(description="name of the deployed file or folder", max_length=MAX_PATH_TEXT)
    ] = "",
    name: Annotated[str | None, Query(max_length=63)] = None,
    entry: Annotated[str | None, Query(max_length=MAX_PATH_TEXT)] = None,
    handler: Annotated[str | None, Query(max_length=MAX_PATH_TEXT)] = None,
    style: Annotated[str | None, Query(max_length=32)] = None,
    overrides: Annotated[
        str | None, Query(description="JSON object of spec fields", max_length=MAX_OVERRIDES)
    ] = None,
    no_traffic: Annotated[
        bool, Query(description="make the revision without sending it traffic (the function's traffic stays)")
    ] = False,
) -> Any:
    try:
        parsed = json.loads(overrides) if overrides else {}
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ApiError(400, "BadRequest", f"overrides is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ApiError(400, "BadRequest", "overrides must be a JSON object of spec fields")
    options = DeployOptions(source, name, entry, handler, style, parsed, no_traffic)
    limit = platform.config.max_deploy_bytes
    # Spooled: a large bundle goes to a temporary file, never whole into the gateway's memory.
    bundle = tempfile.SpooledTemporaryFile(max_size=DEPLOY_SPOOL_BYTES)  # noqa: SIM115 (closed below)
    streamed = False  # the ndjson answer closes the bundle itself, once the deploy is done
    try:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "PayloadTooLarge", f"the bundle exceeds {limit} bytes")
            bundle.write(chunk)
        bundle.seek(0)
        if "application/x-ndjson" in request.headers.get("accept", ""):
            streamed = True
            events = _deploy_events(platform, bundle, options)
            return StreamingResponse(events, media_type="application/x-ndjson")
        try:
            deployed = await platform.deployer.deploy(bundle, options)  # type: ignore[arg-type]
        except DeployError as exc:
            raise ApiError(400, "DeployError", str(exc)) from None
        return _deployed(deployed)
    finally:
        if not streamed:
            bundle.close()


def _deployed(deployed: list[Deployed]) -> dict[str, Any]:
    return {
        "deployed": [
            {
                "function": item.revision.function,
                "revision": item.revision.id,
                "created": item.created,
                "url": f"/fn/{item.revision.function}",
                "environment": item.revision.environment,
            }
            for item in deployed
        ]
    }


async def _deploy_events(platform: Platform, bundle: Any, options: DeployOptions) -> AsyncIterator[bytes]:
    """The deploy's progress lines as they come, then its outcome, one JSON document a line.

    The deploy runs on its own: a client that hangs up does not stop it half-way.
    """
    lines: asyncio.Queue[str] = asyncio.Queue()
    work = platform.run_chore(platform.deployer.deploy(bundle, options, lines.put_nowait))
    work.add_done_callback(lambda _: bundle.close())
    while not work.done() or not lines.empty():
        waiter = asyncio.ensure_future(lines.get())
        await asyncio.wait({waiter, work}, return_when=asyncio.FIRST_COMPLETED)
        if waiter.done():
            yield _event({"event": "progress", "line": waiter.result()})
        else:
            waiter.cancel()
    error = work.exception()
    if isinstance(error, DeployError):
        yield _event(
            {"event": "error", "status": 400, "error": {"type": "DeployError", "message": str(error)}}
        )
    elif error is not None:
        yield _event({"event": "error", "status": 500, "error": {"type": "Internal", "message": "the deploy failed inside the gateway; see its log"}})  # fmt: skip
    else:
        yield _event({"event": "done", "status": 201, **_deployed(work.result())})


def _event(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode() + b"\n"


@router.delete("/functions/{name}", summary="Remove a function, its revisions and instances")
async def remove_function(name: str, platform: Admin) -> dict[str, Any]:
    in_store = await asyncio.to_thread(platform.store.delete_function, name)
    in_router = platform.router.remove(name)
    if not (in_router or in_store):
        raise ApiError(404, "NotFound", f"no function named {name!r}")
    platform.remove_unused_code_later()  # its code dirs, unless another revision uses them
    return {"deleted": name}


@router.get("/functions/{name}/revisions", summary="Revisions, newest first")
async def list_revisions(name: str, platform: Admin) -> dict[str, Any]:
    revisions = await asyncio.to_thread(platform.store.revisions, name)
    if not revisions:
        raise ApiError(404, "NotFound", f"no function named {name!r}")
    return {"revisions": [_plain(revision) for revision in revisions]}


async def _known_function(platform: Platform, name: str) -> None:
    if platform.router.route(name) is None and not await asyncio.to_thread(platform.store.revisions, name):
        raise ApiError(404, "NotFound", f"no function named {name!r}")


async def _flushed(platform: Platform) -> None:
    """Activations are written in batches; a reader asking now should see the ones already done."""
    await platform.recorder.flush()


@router.get("/functions/{name}/activations", summary="Recent activations, newest first")
async def list_activations(
    name: str,
    platform: Admin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    status: Annotated[list[str] | None, Query(description="only these statuses: error, timeout,...")] = None,
    since: Annotated[str | None, Query(max_length=32, description="only the last 1h, 7d...")] = None,
) -> dict[str, Any]:
    from tidal.gateway.usage_api import since_epoch, statuses_of  # filters shared with /v1/usage

    statuses, start = statuses_of(status), since_epoch(since, time.time())
    await _known_function(platform, name)
    await _flushed(platform)
    activations = await asyncio.to_thread(
        platform.store.find_activations, name, limit, statuses, start or 0.0
    )
    return {"activations": [_activation(item, with_logs=False) for item in activations]}


@router.get("/functions/{name}/logs", summary="Captured stdout/stderr per activation")
async def function_logs(
    name: str,
    platform: Admin,
    activation: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> dict[str, Any]:
    await _known_function(platform, name)
    await _flushed(platform)
    activations = await asyncio.to_thread(platform.store.activations, name, limit, activation)
    if activation is not None and not activations:
        raise ApiError(404, "NotFound", f"no activation {activation!r} of {name!r}")
    return {
        "logs": [
            {
                "activation": item.id,
                "start": item.start,
                "status": item.status,
                "instance": item.instance,
                "logs": item.logs,
            }
            for item in activations
        ]
    }


@router.get("/activations/{activation_id}", summary="One activation record")
async def get_activation(activation_id: str, platform: Admin) -> dict[str, Any]:
    await _flushed(platform)
    activation = await asyncio.to_thread(platform.store.activation, activation_id)
    if activation is None:
        raise ApiError(404, "NotFound", f"no activation {activation_id!r}")
    return _activation(activation, with_logs=True)


def _activation(activation: Activation, with_logs: bool) -> dict[str, Any]:
    body: dict[str, Any] = msgspec.to_builtins(activation)
    body["cold"] = bool(body["cold"])
    if not with_logs:
        body.pop("logs")
    return body


@router.get("/instances", summary="Every running instance")
async def list_instances(platform: Admin) -> dict[str, Any]:
    instances = []
    for pool in platform.router.pools():
        for instance in pool.describe()["instances"]:  # type: ignore[attr-defined]
            instances.append({"function": pool.revision.function, "revision": pool.revision.id, **instance})
    return {"instances": instances}


@router.get("/templates", summary="Warm templates: pid, memory (RSS, PSS), idle time, revisions")
async def list_templates(platform: Admin) -> dict[str, Any]:
    return {"templates": platform.backend.templates()}


@router.get("/loops", summary="The gateway's background loops: running, restarts, last error")
async def list_loops(platform: Admin) -> dict[str, Any]:
    # `cluster`: this gateway's place among those sharing a PostgreSQL store (leader or not).
    return {"loops": [vars(status) for status in platform.supervisor.status()],
            "cluster": cluster_status(platform.cluster)}  # fmt: skip


@router.get("/keys", summary="API keys (never the secrets)")
async def list_keys(platform: Admin) -> dict[str, Any]:
    return {"keys": [key_view(_plain(key)) for key in await asyncio.to_thread(platform.store.list_keys)]}


@router.post("/keys", status_code=201, summary="Create a key; the secret is shown only in this answer")
async def create_key(body: KeyRequest, platform: Admin) -> dict[str, Any]:
    try:
        limits = body.limits()
        record, key = await asyncio.to_thread(platform.keys.create, body.scopes, body.description, limits)
    except ValueError as exc:
        raise ApiError(400, "BadRequest", str(exc)) from None
    return {**key_view(_plain(record)), "key": key}


@router.delete("/keys/{key_id}", summary="Revoke a key")
async def revoke_key(key_id: str, platform: Admin) -> dict[str, Any]:
    if not await asyncio.to_thread(platform.keys.revoke, key_id):
        raise ApiError(404, "NotFound", f"no active key {key_id!r}")
    return {"revoked": key_id}
