"""Completion callbacks: a job's final record POSTed to the ``X-Callback-Url`` it was submitted with.

Sent by the gateway (never by function code), with no credentials: no Authorization header, no
cookies, redirects not followed. A URL must be http(s), name a host, carry no user:password, and
not point at the gateway itself (the address and port it was called on, or a loopback address on
its port): a callback can never drive the gateway's own API. A delivery that gets no answer, a
5xx, 408, 425 or 429 is tried again (1, 2, 4 ... s later) up to 5 times; a 2xx is delivered, any
other answer final. The callback's state is in the job's row, written in the transaction that
ended the job, so a gateway stopped before delivering delivers after its restart (at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Collection
from urllib.parse import urlsplit

import httpx
import msgspec

from tidal.jobs.model import JOB_HEADER, document
from tidal.jobs.policy import after_delivery
from tidal.store.models import Job
from tidal.store.protocols import JobStore

log = logging.getLogger("tidal.jobs")

MAX_URL_LENGTH = 2048
TIMEOUT_S = 10.0  # per delivery
POLL_S = 0.5
BATCH = 20  # deliveries at once
LEASE_S = TIMEOUT_S + 30.0  # a claimed delivery is due again after this, should the gateway stop


def check_callback_url(url: str, gateway: Collection[tuple[str, int]]) -> str:
    """``url`` if a callback may go there, else ValueError saying why. ``gateway``: the (host,
    port) pairs the gateway answers on, as the request that submitted the job reached it.

    >>> check_callback_url("https://hooks.example.com/done", [("127.0.0.1", 8080)])
    'https://hooks.example.com/done'
    >>> check_callback_url("http://localhost:8080/v1/keys", [("127.0.0.1", 8080)])
    Traceback (most recent call last):
    ...
    ValueError: X-Callback-Url may not point at the gateway itself (localhost:8080)
    """
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"X-Callback-Url is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"X-Callback-Url is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("X-Callback-Url must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("X-Callback-Url may not carry user:password (it is stored with the job)")
    host = parts.hostname.lower()
    port = port or (443 if parts.scheme == "https" else 80)
    own_ports = {own_port for _, own_port in gateway}
    if (host, port) in {(own_host.lower(), own_port) for own_host, own_port in gateway} or (
        port in own_ports and _is_local(host)
    ):
        raise ValueError(f"X-Callback-Url may not point at the gateway itself ({host}:{port})")
    return url


def _is_local(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


class CallbackSender:
    """The supervised loop that delivers due callbacks."""

    def __init__(
        self,
        store: JobStore,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store, self.clock, self.transport = store, clock, transport
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        async with httpx.AsyncClient(
            follow_redirects=False, timeout=TIMEOUT_S, transport=self.transport, trust_env=False
        ) as http:
            while True:
                self._wake.clear()
                await self.deliver_due(http)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_S)

    async def deliver_due(self, http: httpx.AsyncClient) -> int:
        now = self.clock()
        due = await asyncio.to_thread(self.store.claim_callbacks, now, now + LEASE_S, BATCH)
        await asyncio.gather(*(self._deliver(http, job) for job in due))
        return len(due)

    async def _deliver(self, http: httpx.AsyncClient, job: Job) -> None:
        assert job.callback_url is not None
        attempts = job.callback_attempts + 1
        status: int | None = None
        try:
            response = await http.post(
                job.callback_url,
                content=msgspec.json.encode(document(job)),
                headers={
                    "content-type": "application/json",
                    "user-agent": "tidal-callback",
                    JOB_HEADER: job.id,
                },
            )
            status = response.status_code
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        delivery = after_delivery(status, attempts)
        if delivery.state == "failed":
            log.warning("job %s: callback to %s failed after %d attempt(s): %s", job.id, job.callback_url,
                        attempts, error)  # fmt: skip
        try:
            await asyncio.to_thread(
                self.store.save_callback,
                job.id,
                delivery.state,
                attempts,
                self.clock() + delivery.delay_s,
                error,
            )
        except Exception:  # its lease runs out: delivered again later (at least once)
            log.exception("job %s: recording the callback's delivery failed", job.id)
