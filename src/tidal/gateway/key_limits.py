"""Per-key limits at the HTTP edge: the fields the admin API takes (``POST /v1/keys``,
``PATCH /v1/keys/{id}``), how a key shows them, and the 429 of the invoke hot path.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Annotated, Any

from pydantic import BaseModel, Field

from tidal.auth.limits import KeyLimits, Verdict, amount_text, build_limits, limits_from_json
from tidal.gateway.asgi import ClientGone, Headers, Receive, Send, discard_body, respond_error

MAX_QUOTAS = 4  # requests and GB-s, per day and per month
LIMIT_TEXT = 40
DISCARD_LIMIT = 1024 * 1024  # a refused request's body is read (and dropped) up to this


class LimitFields(BaseModel):
    rate: str | None = Field(None, max_length=LIMIT_TEXT, examples=["50/s"], description="N/s, N/m or N/h")
    burst: int | None = Field(
        None, ge=1, le=10**9, description="calls allowed at once (default: one second's worth)"
    )
    quotas: list[Annotated[str, Field(max_length=LIMIT_TEXT)]] = Field(
        default_factory=list, max_length=MAX_QUOTAS, examples=[["100000/day", "2000gb-s/month"]],
        description="N/day, N/month (requests) or Ngb-s/day, Ngb-s/month",
    )  # fmt: skip

    def limits(self) -> KeyLimits:
        """The limits these fields name; ValueError says which one does not parse."""
        return build_limits(self.rate, self.burst, self.quotas)


def key_view(record: dict[str, Any]) -> dict[str, Any]:
    """A stored key as the API shows it, ``limits`` as text: ``{"rate": "50/s", "burst": 100, "quotas": [...]}``."""
    try:
        limits = limits_from_json(str(record.get("limits") or "{}"))
    except (ValueError, KeyError, TypeError):
        limits = KeyLimits()
    return {**record, "limits": limits.describe()}


def rate_headers(verdict: Verdict) -> Headers:
    """The IETF draft's ``RateLimit-*`` headers: the tightest limit's size, what is left, seconds to reset."""
    return [
        (b"ratelimit-limit", amount_text(verdict.limit).encode()),
        (b"ratelimit-remaining", str(verdict.remaining).encode()),
        (b"ratelimit-reset", str(verdict.reset_s).encode()),
    ]


def with_rate_headers(send: Send, verdict: Verdict) -> Send:
    """A send that adds an admitted call's ``RateLimit-*`` headers to its answer (limited keys only:
    the unlimited hot path is not wrapped)."""
    extra = rate_headers(verdict)

    async def sending(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return sending


async def respond_limited(receive: Receive, send: Send, verdict: Verdict) -> None:
    """429 with ``Retry-After`` and the IETF draft's ``RateLimit-*`` headers. The body is read first:
    a client that writes it all before reading must see the answer, not a reset."""
    try:
        await discard_body(receive, DISCARD_LIMIT)
    except ClientGone:
        return
    headers = [(b"retry-after", str(verdict.retry_after_s).encode()), *rate_headers(verdict)]
    await respond_error(send, 429, verdict.error_type, verdict.message, headers)
