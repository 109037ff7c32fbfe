"""Gateways beat every 5 s in the ``gateways`` table; a gateway is live while its beat is under
15 s old (3 missed beats). Times are the database's clock, so gateways' clocks may differ.

With the local backend each gateway runs its own instances, so a function's ``min_instances``
and ``max_instances`` are split across the live gateways: each takes ``ceil(min / live)`` and
``ceil(max / live)`` (min 3, max 10 on 2 gateways: 2 and 5 each). The shares are applied to the
pools' specs every second, so a pool created between beats is bounded within a second.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import socket
from collections.abc import Callable, Iterable

from tidal.cluster.pg import Session, connect
from tidal.router.pool import RevisionPool
from tidal.spec import FunctionSpec

log = logging.getLogger("tidal.cluster")

BEAT_S = 5.0
LIVE_FOR_S = 15.0  # 3 missed beats
FORGET_AFTER_S = 3600.0  # a gateway silent this long is dropped from the table
APPLY_S = 1.0

BEAT_SQL = """
INSERT INTO gateways (id, host, pid, started_at, beat_at)
VALUES (%(id)s, %(host)s, %(pid)s, extract(epoch FROM clock_timestamp()), extract(epoch FROM clock_timestamp()))
ON CONFLICT (id) DO UPDATE SET beat_at = EXCLUDED.beat_at
"""
LIVE_SQL = "SELECT count(*) FROM gateways WHERE beat_at > extract(epoch FROM clock_timestamp()) - %s"
FORGET_SQL = "DELETE FROM gateways WHERE beat_at < extract(epoch FROM clock_timestamp()) - %s"
LEAVE_SQL = "DELETE FROM gateways WHERE id = %s"


def new_gateway_id() -> str:
    """``HOST-PID-RANDOM``: readable in `tidal status`, unique across restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def share(total: int, live: int) -> int:
    """One gateway's share of a per-function bound: ceil(3 / 2) = 2, ceil(0 / 2) = 0."""
    return math.ceil(total / max(live, 1))


def shared_spec(spec: FunctionSpec, live: int) -> FunctionSpec:
    """``spec`` with this gateway's share of min_instances and max_instances."""
    if live <= 1:
        return spec
    bounds = {
        "min_instances": share(spec.min_instances, live),
        "max_instances": share(spec.max_instances, live),
    }
    return spec.model_copy(update=bounds)


def apply_shares(pools: Iterable[RevisionPool], live: int) -> int:
    """Bound each pool by its share (from the revision's own spec); how many pools changed."""
    changed = 0
    for pool in pools:
        wanted = shared_spec(pool.launch.spec, live)
        current = pool.spec
        if (current.min_instances, current.max_instances) != (wanted.min_instances, wanted.max_instances):
            pool.spec = wanted
            changed += 1
    return changed


class Heartbeat:
    """Beats for this gateway, counts the live ones, and bounds the local pools by their share."""

    def __init__(
        self,
        url: str,
        gateway_id: str,
        pools: Callable[[], list[RevisionPool]],
        split_bounds: bool = True,
        beat_s: float = BEAT_S,
    ) -> None:
        self.url, self.gateway_id, self.pools, self.beat_s = url, gateway_id, pools, beat_s
        # Local backend: each gateway runs its own instances, so it takes a share of the bounds.
        # Ray backend: one fleet for all, scaled by the leader; nothing to split.
        self.split_bounds = split_bounds
        self.live = 1  # until the first count: alone, so the full bounds

    async def run(self) -> None:
        connection = await connect(self.url, "heartbeat")
        try:
            while True:
                await self.beat(connection)
                for _ in range(max(1, round(self.beat_s / APPLY_S))):
                    if self.split_bounds:
                        apply_shares(self.pools(), self.live)
                    await asyncio.sleep(min(APPLY_S, self.beat_s))
        finally:
            await self._leave(connection)

    async def beat(self, connection: Session) -> None:
        await connection.execute(
            BEAT_SQL, {"id": self.gateway_id, "host": socket.gethostname(), "pid": os.getpid()}
        )
        await connection.execute(FORGET_SQL, (FORGET_AFTER_S,))
        row = await (await connection.execute(LIVE_SQL, (LIVE_FOR_S,))).fetchone()
        live = max(int(row[0]) if row else 1, 1)
        if live != self.live:
            split = "; min/max instances are split among them" if self.split_bounds else ""
            log.info("%d live gateway(s) share this store%s", live, split)
        self.live = live

    async def _leave(self, connection: Session) -> None:
        """Stopping: the others stop counting this gateway at once, not after 15 s."""
        try:
            await asyncio.shield(connection.execute(LEAVE_SQL, (self.gateway_id,)))
        except Exception:
            log.warning("could not remove this gateway's heartbeat row; it expires in %.0f s", LIVE_FOR_S)
        finally:
            await connection.close()
