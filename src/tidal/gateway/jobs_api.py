"""Async invocations over HTTP: the async branch of ``POST /fn/NAME`` and ``/v1/jobs``.

``POST /fn/NAME`` with ``Prefer: respond-async`` (or ``?mode=async``) passes the same checks as a
synchronous call (key, refusal, body limit: a 401/403/404/413 stays that), then the job is stored
and the answer is 202 with ``{"job_id", "status_url", "state"}`` and ``Location: /v1/jobs/ID``.
``Idempotency-Key`` (1-255 visible ASCII characters) names one job per function and caller for as
long as the job is kept: the same key again answers 202 with the same job (``Idempotent-Replayed:
true``), the same key with another body 422. ``X-Callback-Url`` asks for the final record to be
POSTed there (tidal.jobs.callbacks says which URLs are refused, with 400).

``GET /v1/jobs/ID`` and ``DELETE /v1/jobs/ID`` answer the submitting key, an admin key, or (for a
job submitted without a key) anyone with its id; to anyone else the job does not exist (404).
``GET /v1/jobs`` and ``POST /v1/jobs/redrive`` need an admin key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec
from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import BaseModel, Field

from tidal.auth.keys import Caller
from tidal.gateway.admin import Admin, ApiError, platform_of
from tidal.gateway.asgi import JSON_TYPE, Headers, Scope, Send, respond, respond_error
from tidal.gateway.platform import Platform
from tidal.invoke.request import InvocationRequest
from tidal.jobs.callbacks import check_callback_url
from tidal.jobs.model import check_idempotency_key, document
from tidal.jobs.service import IdempotencyConflict, JobFinished, JobRunning, JobService
from tidal.router.router import Router
from tidal.runtime.codec import is_raw
from tidal.spec import NAME_PATTERN, Style
from tidal.store.models import JOB_STATES, Job

router = APIRouter(prefix="/v1")
JOBS_PATH = "/v1/jobs/"


def wants_async(headers: Mapping[str, str], query: str) -> bool:
    """``Prefer: respond-async`` (RFC 7240) or ``?mode=async``.

    >>> wants_async({"prefer": "respond-async, wait=5"}, ""), wants_async({}, "x=1&mode=async")
    (True, True)
    """
    prefer = headers.get("prefer")
    if prefer is not None and any(
        part.split(";", 1)[0].strip().lower() == "respond-async" for part in prefer.split(",")
    ):
        return True
    return "mode=async" in query and "mode=async" in query.split("&")


class AsyncIntake:
    """Stores an already admitted ``POST /fn/NAME`` as a job and answers 202 (raw ASGI, like the
    invoke route that calls it)."""

    def __init__(self, jobs: JobService, router: Router) -> None:
        self.jobs, self.router = jobs, router

    wanted = staticmethod(wants_async)

    async def submit(
        self, send: Send, scope: Scope, request: InvocationRequest, headers: Mapping[str, str]
    ) -> None:
        key, url = headers.get("idempotency-key"), headers.get("x-callback-url")
        try:
            key = None if key is None else check_idempotency_key(key.strip())
        except ValueError as exc:
            return await respond_error(send, 400, "BadIdempotencyKey", str(exc))
        if url is not None and not request.caller.authenticated:
            # An anonymous caller (of a public function; function code holds no key) must not make
            # the gateway send requests to addresses of its choosing inside the network.
            return await respond_error(
                send, 401, "Unauthenticated", "a callback URL needs an API key (Authorization: Bearer KEY)"
            )
        try:
            url = None if url is None else check_callback_url(url.strip(), _gateway_addresses(scope, headers))
        except ValueError as exc:
            return await respond_error(send, 400, "BadCallbackUrl", str(exc))
        malformed = self._malformed(request)
        if malformed is not None:
            return await respond_error(send, 400, "BadRequest", malformed)
        try:
            submitted = await self.jobs.submit(request, key, url)
        except IdempotencyConflict as exc:
            return await respond_error(send, 422, "IdempotencyKeyReused", str(exc))
        job = submitted.job
        answer: Headers = [
            (b"location", (JOBS_PATH + job.id).encode()),
            (b"preference-applied", b"respond-async"),
        ]
        if not submitted.created:
            answer.append((b"idempotent-replayed", b"true"))
        body = {
            "job_id": job.id,
            "status_url": JOBS_PATH + job.id,
            "state": job.state,
            "function": job.function,
        }
        await respond(send, 202, msgspec.json.encode(body), JSON_TYPE, answer)

    def _malformed(self, request: InvocationRequest) -> str | None:
        """A JSON body that does not parse is refused now (400), not after it was queued."""
        route = self.router.route(request.function)
        if not request.body or is_raw(request.content_type) or route is None:
            return None
        if any(target.revision.style == Style.LAMBDA_HTTP for target in route.targets):
            return None
        try:
            msgspec.json.decode(request.body)
        except msgspec.DecodeError as exc:
            return f"malformed JSON body: {exc}"
        return None


def _gateway_addresses(scope: Scope, headers: Mapping[str, str]) -> list[tuple[str, int]]:
    """Where this gateway answers, as far as the request tells: its socket and its Host header."""
    addresses = []
    server = scope.get("server")
    if server and server[1] is not None:
        addresses.append((str(server[0]), int(server[1])))
    host = headers.get("host")
    if host:
        try:
            parts = urlsplit("//" + host)
            if parts.hostname:
                addresses.append((parts.hostname, parts.port or (server[1] if server else 80)))
        except ValueError:
            pass  # a malformed Host header names nothing
    return addresses


async def caller_of(
    request: Request, authorization: Annotated[str | None, Header(include_in_schema=False)] = None
) -> tuple[Platform, Caller]:
    """Who asks: any key, or none (a job submitted without a key is readable by its id)."""
    platform = platform_of(request)
    caller = await platform.keys.identify(authorization)
    if caller.presented and not caller.authenticated:
        raise ApiError(401, "Unauthorized", "the API key is not valid (Authorization: Bearer KEY)")
    return platform, caller


Asker = Annotated[tuple[Platform, Caller], Depends(caller_of)]
StateFilter = Annotated[str | None, Query(description=f"one of {', '.join(JOB_STATES)}")]


class RedriveRequest(BaseModel):
    function: Annotated[str, Field(pattern=NAME_PATTERN.pattern, examples=["embed"])]
    id: Annotated[
        str | None, Field(max_length=100, description="one dead or failed job; all dead ones if none")
    ] = None


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, "NotFound", f"no job {job_id!r} (or not one this key may see)")


async def _document(platform: Platform, job: Job) -> dict[str, Any]:
    await platform.recorder.flush()  # attempts' activation records are written in batches
    activations = await asyncio.to_thread(platform.store.job_activations, job.id)
    return document(job, activations)


@router.get("/jobs/{job_id}", summary="A job: state, attempts, result or error")
async def get_job(job_id: str, asker: Asker) -> dict[str, Any]:
    platform, caller = asker
    job = await platform.jobs.get(job_id, caller)
    if job is None:
        raise _not_found(job_id)
    return await _document(platform, job)


@router.delete("/jobs/{job_id}", summary="Cancel a queued job")
async def cancel_job(job_id: str, asker: Asker) -> dict[str, Any]:
    platform, caller = asker
    try:
        job = await platform.jobs.cancel(job_id, caller)
    except JobRunning as exc:
        raise ApiError(409, "JobRunning", str(exc)) from None
    except JobFinished as exc:
        raise ApiError(409, "JobFinished", str(exc)) from None
    if job is None:
        raise _not_found(job_id)
    return await _document(platform, job)


@router.get("/jobs", summary="Jobs, newest first (admin)")
async def list_jobs(
    platform: Admin,
    function: Annotated[str | None, Query(max_length=63)] = None,
    state: StateFilter = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    if state is not None and state not in JOB_STATES:
        raise ApiError(400, "BadRequest", f"state must be one of {', '.join(JOB_STATES)}, not {state!r}")
    jobs = await asyncio.to_thread(platform.job_store.jobs, function, state, limit)
    return {"jobs": [document(job) for job in jobs]}


@router.post("/jobs/redrive", summary="Queue a function's dead jobs again, attempts reset (admin)")
async def redrive_jobs(body: RedriveRequest, platform: Admin) -> dict[str, Any]:
    known = platform.router.route(body.function) is not None
    if not known and not await asyncio.to_thread(platform.store.revisions, body.function):
        raise ApiError(404, "NotFound", f"no function named {body.function!r}")
    redriven = await platform.jobs.redrive(body.function, body.id)
    if body.id is not None and not redriven:
        raise ApiError(404, "NotFound", f"no dead or failed job {body.id!r} of {body.function!r}")
    return {"function": body.function, "redriven": redriven}
