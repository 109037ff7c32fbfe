"""How a submitted invocation becomes a job, how a job becomes an invocation again, and how a
job reads in the API (``GET /v1/jobs/ID``, the callback's body, a destination's event).

The result: a function's JSON answer is ``result`` as JSON; any other answer (raw bytes, a
lambda-http handler's HTML, a generator's chunks joined) is ``result_base64`` with
``result_content_type``, and ``result`` is null.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from tidal.auth.keys import Caller
from tidal.invoke.request import InvocationRequest, RequestContext, Trigger
from tidal.spec import FunctionSpec
from tidal.store.models import Job

# A job id is the capability to read an anonymous job: 128 random bits, unguessable.
JOB_ID_PREFIX = "job-"
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # visible ASCII, as the IETF draft's examples
NEVER_STORED = frozenset({"authorization", "cookie"})  # credentials never reach the jobs table
JOB_HEADER, ATTEMPT_HEADER = "x-tidal-job", "x-tidal-attempt"  # what the function sees of its job
PLATFORM_OWNER = "platform"  # the owner of a destination's job
TRIGGER_HEADER = "x-tidal-trigger"  # the event trigger (tidal.triggers) whose event a job carries
# Kept on an event's job, so that its attempts are recorded as cron / bucket / queue calls.
EVENT_TRIGGERS = frozenset({Trigger.CRON, Trigger.BUCKET, Trigger.QUEUE})


@dataclass(frozen=True)
class JobSettings:
    """A function's async settings (function-level spec fields), with FunctionSpec's defaults."""

    retries: int
    max_event_age_s: float
    on_success: str | None = None
    on_failure: str | None = None

    @property
    def max_attempts(self) -> int:
        return self.retries + 1


def _default(name: str) -> Any:
    return FunctionSpec.model_fields[name].get_default()


DEFAULT_SETTINGS = JobSettings(_default("retries"), _default("max_event_age"))


def job_settings(settings: Mapping[str, object]) -> JobSettings:
    """The async settings in a function's stored settings (validated at deploy); a function
    deployed before jobs existed has none and gets the defaults."""
    retries, age = settings.get("retries"), settings.get("max_event_age")
    on_success, on_failure = settings.get("on_success"), settings.get("on_failure")
    return JobSettings(
        retries if isinstance(retries, int) else DEFAULT_SETTINGS.retries,
        float(age) if isinstance(age, int | float) else DEFAULT_SETTINGS.max_event_age_s,
        on_success if isinstance(on_success, str) else None,
        on_failure if isinstance(on_failure, str) else None,
    )


def new_job_id() -> str:
    return JOB_ID_PREFIX + secrets.token_hex(16)


def check_idempotency_key(value: str) -> str:
    if not IDEMPOTENCY_KEY.match(value):
        raise ValueError("Idempotency-Key must be 1 to 255 visible ASCII characters (a UUID is a good one)")
    return value


def request_digest(request: InvocationRequest) -> str:
    """What an idempotency key stands for: the same body, type and target revision."""
    identity = hashlib.sha256()
    for part in (request.content_type, request.context.revision or "", request.body):
        chunk = part.encode() if isinstance(part, str) else part
        identity.update(len(chunk).to_bytes(8, "big") + chunk)
    return identity.hexdigest()


def new_job(
    request: InvocationRequest, settings: JobSettings, now: float, idempotency_key: str | None = None,
    callback_url: str | None = None, source: str = "",
) -> Job:  # fmt: skip
    context = request.context
    headers = {key: value for key, value in context.headers.items() if key not in NEVER_STORED}
    return Job(
        id=new_job_id(),
        function=request.function,
        state="queued",
        body=request.body,
        content_type=request.content_type,
        context={
            "revision": context.revision,
            "sticky_key": context.sticky_key,
            "headers": headers,
            "method": context.method,
            "path": context.path,
            "query": context.query,
            **({"trigger": request.trigger.value} if request.trigger in EVENT_TRIGGERS else {}),
        },
        owner=request.caller.key_id,
        scopes=sorted(request.caller.scopes),
        idempotency_key=idempotency_key,
        request_digest=request_digest(request),
        callback_url=callback_url,
        max_attempts=settings.max_attempts,
        expires_at=now + settings.max_event_age_s,
        created_at=now,
        run_at=now,
        source=source,
    )


def invocation_of(job: Job, now: float) -> InvocationRequest:
    """The invocation one attempt makes: the submitter's identity, routing and headers, plus the
    job's id and attempt number (``context.headers`` in the function)."""
    context = job.context
    headers = dict(_strings(context.get("headers")))
    headers[JOB_HEADER], headers[ATTEMPT_HEADER] = job.id, str(job.attempts)
    caller = Caller(job.owner, frozenset(job.scopes), presented=bool(job.owner))
    routing = RequestContext(
        revision=_text(context.get("revision")),
        sticky_key=_text(context.get("sticky_key")),
        headers=headers,
        method=_text(context.get("method")) or "POST",
        path=_text(context.get("path")) or "/",
        query=_text(context.get("query")) or "",
    )
    kind = context.get("trigger")
    trigger = Trigger(kind) if isinstance(kind, str) and kind in EVENT_TRIGGERS else Trigger.JOB
    return InvocationRequest(job.function, job.body, job.content_type, caller, trigger, routing, None, now)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _strings(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(key): str(item) for key, item in value.items()}


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def document(job: Job, activations: list[str] | None = None) -> dict[str, Any]:
    """The job as ``GET /v1/jobs/ID`` shows it (and a callback or a destination receives it).

    ``error`` is the latest failed attempt's (also while a retry waits); ``result`` is set once
    the job succeeded.
    """
    body: dict[str, Any] = {
        "id": job.id,
        "function": job.function,
        "state": job.state,
        "revision": job.revision or None,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "next_attempt_at": job.run_at if job.state == "queued" else None,
        "expires_at": job.expires_at,
        "activation": job.activation or None,
        "result": None,
        "error": None,
        "idempotency_key": job.idempotency_key,
        "source": job.source or None,
        "callback": None,
    }
    if job.state == "succeeded" and job.result is not None:
        body.update(_result(job.result, job.result_type))
    if job.error_type:
        body["error"] = {"type": job.error_type, "message": job.error_message, "kind": job.error_kind,
                         "activation": job.activation or None}  # fmt: skip
    if job.callback_url is not None:
        body["callback"] = {"url": job.callback_url, "state": job.callback_state or "none",
                            "attempts": job.callback_attempts, "error": job.callback_error or None}  # fmt: skip
    if activations is not None:
        body["activations"] = activations
    return body


def _result(result: bytes, content_type: str) -> dict[str, Any]:
    if is_json(content_type):
        try:
            return {"result": msgspec.json.decode(result)}
        except msgspec.DecodeError:
            pass  # a lambda-http handler's body that only claims to be JSON
    return {"result_base64": base64.b64encode(result).decode(), "result_content_type": content_type}


def destination_event(job: Job) -> bytes:
    """What an ``on_success`` / ``on_failure`` function receives: the job's record and its request
    (``request``: the JSON body; another body is ``request_base64`` with ``request_content_type``)."""
    event = document(job)
    request = _result(job.body, job.content_type) if job.body else {"result": None}
    event["request"] = request.get("result")
    if "result_base64" in request:
        event["request_base64"] = request["result_base64"]
        event["request_content_type"] = request["result_content_type"]
    return msgspec.json.encode(event)
