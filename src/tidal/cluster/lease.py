"""The leader lease: one gateway of those sharing a store runs the singleton duties.

The lease is ``pg_try_advisory_lock`` on a session of its own: the lock lives exactly as long as
that session, so a leader that crashes or is killed frees it (its socket closes; a vanished host
is noticed by TCP keepalives, tidal.cluster.pg). Every ``RENEW_S`` the leader checks that its
session still answers (a broken one means the lock may be gone: it stops leading at once) and a
follower tries to take the lock. Takeover after a ``kill -9`` is thus bounded by ``RENEW_S``.

Singleton duties (cron and other triggers, retention, rollout decisions) run under
``leader_only``: started when this gateway becomes leader, cancelled when it stops being one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from tidal.cluster.pg import Session, connect

log = logging.getLogger("tidal.cluster")

RENEW_S = 2.0
CHECK_TIMEOUT_S = 2.0
# The lock's key: one per schema, since advisory locks are per database.
LOCK_SQL = "SELECT pg_try_advisory_lock(hashtext('tidal-leader:' || current_schema()))"


class LeaderLease:
    def __init__(self, url: str, clock: Callable[[], float] = time.time) -> None:
        self.url, self.clock = url, clock
        self.leader = False
        self.since = 0.0  # when this gateway last became leader, or stopped being one
        self.takeovers = 0  # how many times this gateway became leader
        self._leading = asyncio.Event()
        self._following = asyncio.Event()
        self._following.set()

    def _set(self, leader: bool) -> None:
        if leader == self.leader:
            return
        self.leader, self.since = leader, self.clock()
        if leader:
            self.takeovers += 1
            self._following.clear()
            self._leading.set()
            log.info("this gateway is now the leader (cron, retention, rollouts run here)")
        else:
            self._leading.clear()
            self._following.set()
            log.warning("this gateway is no longer the leader")

    async def wait_leading(self) -> None:
        await self._leading.wait()

    async def wait_following(self) -> None:
        await self._following.wait()

    async def run(self) -> None:
        """Hold or try for the lock until cancelled; a broken session ends leadership (then the
        supervisor restarts this loop with a new session)."""
        session = await connect(self.url, "leader-lease")
        try:
            while True:
                await asyncio.wait_for(self._renew(session), CHECK_TIMEOUT_S)
                await asyncio.sleep(RENEW_S)
        finally:
            self._set(False)
            with contextlib.suppress(Exception):
                await session.close()  # releases the lock, if held

    async def _renew(self, session: Session) -> None:
        if self.leader:
            await session.execute("SELECT 1")  # the session is alive, so is its lock
            return
        row = await (await session.execute(LOCK_SQL)).fetchone()
        self._set(bool(row and row[0]))


def leader_only(lease: LeaderLease, run: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """``run`` while ``lease`` is held: started on becoming leader, cancelled on losing it."""

    async def run_while_leading() -> None:
        while True:
            await lease.wait_leading()
            duty = asyncio.ensure_future(run())
            lost = asyncio.ensure_future(lease.wait_following())
            done: set[asyncio.Future[None]] = set()
            try:
                done, _ = await asyncio.wait({duty, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (duty, lost):
                    task.cancel()
                await asyncio.gather(duty, lost, return_exceptions=True)
            if duty in done and lost not in done:
                duty.result()  # a crash goes to the supervisor, which restarts this wrapper
                return  # it returned: the supervisor says so

    return run_while_leading
