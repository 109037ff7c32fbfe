"""``tidal.Batch`` and ``tidal.ItemError``: what a batched function declares and returns.

No heavy imports (cold path). A batched function takes a list of inputs and returns a list of
outputs of the same length, in order; the instance gathers concurrent requests into one call:

    @tidal.function(batch=tidal.Batch(max_size=32, max_wait_ms=10))
    def embed(texts: list[dict]) -> list[dict]:
        return [{"vector": v} for v in model([t["text"] for t in texts])]

An output that is a ``tidal.ItemError`` (or any exception instance) fails only that item's request.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Batch:
    """How an instance gathers requests into one call; checked at deploy time, not here.

    ``max_size``: the most items in one call. ``max_wait_ms``: how long the first request of a
    batch may wait for company. ``target_p99_ms``: adaptive mode: the instance chooses each wait
    from the measured call time so that a request's latency stays within this target (``max_wait_ms``
    then only caps the wait).
    """

    max_size: int = 32
    max_wait_ms: float = 10.0
    target_p99_ms: float | None = None

    def as_spec(self) -> dict[str, Any]:
        """The plain mapping the spec stores (what tidal.toml's ``[spec.batch]`` table says)."""
        return {key: value for key, value in asdict(self).items() if value is not None}


class ItemError(Exception):
    """Return (do not raise) one of these in place of an item's output to fail only that item.

    ``return [out_a, tidal.ItemError("text too long"), out_c]``: the second request gets the usual
    error answer (500, type ItemError, the message); the first and third succeed. Return a
    ``tidal.InputError`` instead for a 422 (the caller's fault). Raising fails the whole batch.
    """
