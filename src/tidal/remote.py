"""Call deployed functions from Python, as a data scientist would::

    import tidal

    embed = tidal.Function.lookup("embed")            # TIDAL_URL / TIDAL_API_KEY, or the CLI's defaults
    vector = embed.remote({"text": "hello"})          # a synchronous call: the decoded JSON answer
    job = embed.spawn({"text": "a long one"})         # an async job (durable, retried by the gateway)
    job.get(timeout=60)                               # its result, or the error it ended with, raised
    for vector in embed.map(texts, concurrency=16, progress=True):   # in input order
        ...

One ``httpx.Client`` per Function: connections are reused, and it is safe to share between the
threads ``map`` uses. A 429 or 503 is retried with exponential backoff (honouring Retry-After);
a connection that could not be opened too (nothing was sent). Errors are typed: ``RemoteError``
and a subclass per kind of failure, each carrying the HTTP ``status``, the error ``type`` the
gateway gave, and the ``activation`` id (``tidal logs NAME --activation ID``) when there is one.
"""

from __future__ import annotations

import base64
import json
import os
import random
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tidal.client import DEFAULT_URL, resolve_key
from tidal.invoke.outcome import OUTCOMES, OutcomeKind

RETRIES = 5  # of a 429/503 or a refused connection, before the error is raised
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.1, 8.0
RETRY_AFTER_MAX_S = 60.0
POLL_FIRST_S, POLL_MAX_S = 0.05, 1.0
FINAL_STATES = frozenset({"succeeded", "failed", "dead", "cancelled"})


class RemoteError(Exception):
    """A call failed. ``status``: the HTTP status (None for a job's error), ``error_type``: the
    exception's name or tidal's error type, ``activation``: the failed invocation's id."""

    def __init__(
        self, message: str, *, status: int | None = None, error_type: str = "", activation: str | None = None,
        job_id: str | None = None, kind: str = "",
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.message, self.status, self.error_type = message, status, error_type
        self.activation, self.job_id, self.kind = activation, job_id, kind


class AuthError(RemoteError):
    """401/403: no valid key, or a key without ``invoke:NAME``."""


class NotFoundError(RemoteError):
    """404: no such function (or revision, or job)."""


class InvalidInput(RemoteError):
    """400/413/422: malformed or too large a body, or the function raised ``tidal.InputError``."""


class Overloaded(RemoteError):
    """429/503 still, after the retries."""


class FunctionError(RemoteError):
    """The function raised; ``error_type`` is the exception's name."""


class FunctionTimeout(RemoteError):
    """504: past the function's timeout."""


class InstanceError(RemoteError):
    """502: the instance died, ran out of memory, or the module failed to start."""


class Cancelled(RemoteError):
    """The job was cancelled (or the call was)."""


class GatewayError(RemoteError):
    """tidal itself failed, or could not be reached."""


ERROR_OF_KIND: dict[OutcomeKind, type[RemoteError]] = {
    OutcomeKind.FUNCTION_ERROR: FunctionError,
    OutcomeKind.BAD_RESPONSE: FunctionError,
    OutcomeKind.BAD_INPUT: InvalidInput,
    OutcomeKind.INPUT_REJECTED: InvalidInput,
    OutcomeKind.TOO_LARGE: InvalidInput,
    OutcomeKind.UNAUTHENTICATED: AuthError,
    OutcomeKind.FORBIDDEN: AuthError,
    OutcomeKind.NOT_FOUND: NotFoundError,
    OutcomeKind.QUEUE_FULL: Overloaded,
    OutcomeKind.UNAVAILABLE: Overloaded,
    OutcomeKind.INSTANCE_LOST: InstanceError,
    OutcomeKind.OUT_OF_MEMORY: InstanceError,
    OutcomeKind.SETUP_FAILED: InstanceError,
    OutcomeKind.TIMEOUT: FunctionTimeout,
    OutcomeKind.CANCELLED: Cancelled,
    OutcomeKind.INTERNAL: GatewayError,
}
# The class of an HTTP status, from the gateway's one table of statuses (500 is told apart by type;
# a 502 is the instance's, as the function's bad answers were before they had a kind of their own).
ERROR_OF_STATUS: dict[int, type[RemoteError]] = {
    OUTCOMES[kind].http_status: error
    for kind, error in ERROR_OF_KIND.items()
    if kind not in (OutcomeKind.INTERNAL, OutcomeKind.BAD_RESPONSE)
}
RETRIED_STATUSES = frozenset({429, 503})


def error_of_response(response: httpx.Response) -> RemoteError:
    """The typed error an HTTP error answer stands for."""
    try:
        error = response.json()["error"]
        error_type, message, activation = str(error["type"]), str(error["message"]), error.get("activation")
    except (ValueError, KeyError, TypeError):
        error_type, message, activation = "", response.text[:200] or f"HTTP {response.status_code}", None
    status = response.status_code
    cls = (
        GatewayError
        if status == 500 and error_type == "InternalError"
        else ERROR_OF_STATUS.get(status, RemoteError)
    )
    text = f"{error_type}: {message}" if error_type else message
    return cls(text, status=status, error_type=error_type, activation=activation)


def error_of_job(record: dict[str, Any]) -> RemoteError:
    """The typed error a job ended with (``failed``, ``dead`` or ``cancelled``)."""
    job_id, state = record["id"], record["state"]
    if state == "cancelled":
        return Cancelled(f"job {job_id} was cancelled", job_id=job_id, kind="cancelled")
    error = record.get("error") or {}
    kind = str(error.get("kind", ""))
    try:
        cls = ERROR_OF_KIND.get(OutcomeKind(kind), RemoteError)
    except ValueError:  # not an outcome kind (a newer gateway's): the base class
        cls = RemoteError
    message = f"job {job_id} {state}: {error.get('type', 'Error')}: {error.get('message', '')}"
    return cls(message, error_type=str(error.get("type", "")), activation=error.get("activation"), job_id=job_id,
               kind=kind)  # fmt: skip


def _decoded(content: bytes, content_type: str) -> Any:
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return json.loads(content) if content else None
    return content


def _body(payload: Any) -> tuple[bytes, str]:
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload), "application/octet-stream"
    return json.dumps(payload).encode(), "application/json"


def _pause_s(attempt: int, retry_after: str | None) -> float:
    """Retry-After (seconds) when the gateway gave it, else exponential backoff with jitter."""
    if retry_after is not None:
        try:
            return min(max(0.0, float(retry_after)), RETRY_AFTER_MAX_S)
        except ValueError:
            pass  # an HTTP date: back off as if none was given
    ceiling = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**attempt)
    return ceiling * (0.5 + random.random() / 2)


class Function:
    """A deployed function. ``lookup`` does not call the gateway: a missing function (or a key
    that may not call it) shows on the first call, as NotFoundError (AuthError)."""

    def __init__(
        self, name: str, url: str, key: str | None, timeout: float = 300.0, retries: int = RETRIES
    ) -> None:
        self.name, self.url, self.retries = name, url.rstrip("/"), retries
        headers = {"authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=64)
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, limits=limits)

    @classmethod
    def lookup(
        cls, name: str, url: str | None = None, key: str | None = None, timeout: float = 300.0
    ) -> Function:
        """``url`` and ``key`` default to TIDAL_URL and TIDAL_API_KEY, then to the CLI's defaults
        (http://127.0.0.1:8080 and TIDAL_STATE_DIR/admin.key, the state dir defaulting to .tidal)."""
        url = url or os.environ.get("TIDAL_URL") or DEFAULT_URL
        key = (
            key
            or os.environ.get("TIDAL_API_KEY")
            or resolve_key(None, Path(os.environ.get("TIDAL_STATE_DIR", ".tidal")))
        )
        return cls(name, url, key, timeout)

    def __repr__(self) -> str:
        return f"Function({self.name!r}, url={self.url!r})"

    def __enter__(self) -> Function:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One HTTP call, retried on 429/503 and refused connections; an error answer raised typed."""
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.ConnectError as exc:  # nothing was sent: trying again cannot run anything twice
                if attempt == self.retries:
                    raise GatewayError(f"cannot reach tidal at {self.url}: {exc}") from None
                time.sleep(_pause_s(attempt, None))
                continue
            except httpx.TimeoutException:
                raise GatewayError(
                    f"tidal at {self.url} did not answer within the client's timeout"
                ) from None
            if response.status_code in RETRIED_STATUSES and attempt < self.retries:
                time.sleep(_pause_s(attempt, response.headers.get("retry-after")))
                continue
            if response.status_code >= 400:
                raise error_of_response(response)
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")

    def remote(self, payload: Any = None) -> Any:
        """Call the function and wait: its JSON answer decoded (bytes for a raw answer)."""
        content, content_type = _body(payload)
        response = self.request(
            "POST", f"/fn/{self.name}", content=content, headers={"content-type": content_type}
        )
        return _decoded(response.content, response.headers.get("content-type", ""))

    def spawn(
        self, payload: Any = None, idempotency_key: str | None = None, callback_url: str | None = None
    ) -> Job:
        """Queue a call as a job and return its handle at once. Without ``idempotency_key`` one is
        made up, so that a retried request can never queue the job twice."""
        content, content_type = _body(payload)
        headers = {"content-type": content_type, "prefer": "respond-async",
                   "idempotency-key": idempotency_key or str(uuid.uuid4())}  # fmt: skip
        if callback_url is not None:
            headers["x-callback-url"] = callback_url
        response = self.request("POST", f"/fn/{self.name}", content=content, headers=headers)
        return Job(self, response.json()["job_id"])

    def job(self, job_id: str) -> Job:
        """The handle of a job spawned earlier (by id)."""
        return Job(self, job_id)

    def map(
        self,
        inputs: Iterable[Any],
        concurrency: int = 8,
        progress: bool = False,
        return_exceptions: bool = False,
    ) -> Iterator[Any]:
        """``remote`` over ``inputs``, ``concurrency`` calls at a time, yielding results in input
        order. The first failure is raised when its turn comes (with ``return_exceptions`` it is
        yielded instead). ``progress`` draws a rich progress bar on stderr."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        total = len(inputs) if isinstance(inputs, Sized) else None
        items = iter(inputs)
        window: deque[Future[Any]] = deque()
        bar = _ProgressBar(self.name, total) if progress else None
        with ThreadPoolExecutor(concurrency, thread_name_prefix=f"tidal-map-{self.name}") as pool:
            try:
                while True:
                    while len(window) < 2 * concurrency and (item := next(items, _END)) is not _END:
                        window.append(pool.submit(self.remote, item))
                    if not window:
                        return
                    future = window.popleft()
                    try:
                        result = future.result()
                    except RemoteError as exc:
                        if not return_exceptions:
                            raise
                        result = exc
                    if bar is not None:
                        bar.advance()
                    yield result
            finally:
                for pending in window:
                    pending.cancel()
                if bar is not None:
                    bar.close()


_END = object()


class _ProgressBar:
    def __init__(self, name: str, total: int | None) -> None:
        from rich.progress import Progress  # only when asked for: rich costs an import

        self._progress = Progress(transient=False)
        self._progress.start()
        self._task = self._progress.add_task(f"tidal map {name}", total=total)

    def advance(self) -> None:
        self._progress.advance(self._task)

    def close(self) -> None:
        self._progress.stop()


class Job:
    """A spawned call: ``state()``, ``get(timeout)``, ``cancel()``."""

    def __init__(self, function: Function, job_id: str) -> None:
        self.function, self.id = function, job_id

    def __repr__(self) -> str:
        return f"Job({self.id!r}, function={self.function.name!r})"

    def info(self) -> dict[str, Any]:
        """The job's record, as ``GET /v1/jobs/ID`` gives it."""
        record: dict[str, Any] = self.function.request("GET", f"/v1/jobs/{self.id}").json()
        return record

    def state(self) -> str:
        """queued, running, succeeded, failed, dead or cancelled."""
        return str(self.info()["state"])

    def get(self, timeout: float | None = None) -> Any:
        """Wait for the job to end (polling, 50 ms growing to 1 s): its result, or its error raised
        (a RemoteError subclass by the failure's kind; Cancelled if cancelled). TimeoutError if it
        has not ended within ``timeout`` seconds (it keeps running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = POLL_FIRST_S
        while (record := self.info())["state"] not in FINAL_STATES:
            if deadline is not None and time.monotonic() + delay > deadline:
                raise TimeoutError(f"job {self.id} is still {record['state']} after {timeout} s")
            time.sleep(delay)
            delay = min(delay * 1.5, POLL_MAX_S)
        if record["state"] != "succeeded":
            raise error_of_job(record)
        if record.get("result_base64") is not None:
            return base64.b64decode(record["result_base64"])
        return record.get("result")

    def cancel(self) -> bool:
        """Cancel the job if it is still queued: True if it is cancelled now, False if it is
        running (an attempt cannot be stopped) or already ended."""
        try:
            self.function.request("DELETE", f"/v1/jobs/{self.id}")
        except RemoteError as exc:
            if exc.status == 409:
                return False
            raise
        return True
