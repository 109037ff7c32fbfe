"""Change propagation: each gateway LISTENs for ``tidal_changes`` and re-reads what changed.

The store's triggers (tidal.cluster.schema) stamp each change of a function, key or route with a
sequence number and NOTIFY it at commit. A notification only wakes this loop: it then reads every
change after the last number it applied, so a lost notification (a reconnect) is caught by the
same query, run anyway every ``POLL_S``. Applying a change is re-reading it: ``publish(NAME)``
for a function (its traffic, settings, routes), forgetting a cached key, reloading the routes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import psycopg

from tidal.cluster.pg import CONNECT_TIMEOUT_S, Session, connect
from tidal.store.errors import StoreError
from tidal.store.postgres_sql import parse_state_url

log = logging.getLogger("tidal.cluster")

CHANNEL = "tidal_changes"
POLL_S = 5.0
SINCE_SQL = "SELECT kind, name, seq FROM changes WHERE seq > %s ORDER BY seq"
LAST_SQL = "SELECT coalesce(max(seq), 0) FROM changes"


@dataclass(frozen=True)
class Changed:
    """What to re-read, from a batch of change rows: each named once."""

    functions: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    routes: bool = False


def changed(rows: Iterable[Sequence[object]]) -> Changed:
    """Group change rows ``(kind, name, seq)`` by what to do; unknown kinds are ignored.

    >>> changed([("function", "a", 1), ("key", "k1", 2), ("function", "a", 3), ("route", "a", 4)])
    Changed(functions=['a'], keys=['k1'], routes=True)
    """
    functions: dict[str, None] = {}
    keys: dict[str, None] = {}
    routes = False
    for kind, name, _ in rows:
        if kind == "function":
            functions[str(name)] = None
        elif kind == "key":
            keys[str(name)] = None
        elif kind == "route":
            routes = True
    return Changed(list(functions), list(keys), routes)


@dataclass
class Appliers:
    """What a change does on this gateway (the platform's methods)."""

    publish: Callable[[str], Awaitable[object]]
    forget_key: Callable[[str], None]
    reload_routes: Callable[[], Awaitable[None]]


class ChangeListener:
    def __init__(self, url: str, schema: str, appliers: Appliers) -> None:
        self.url, self.schema, self.appliers = url, schema, appliers
        self.last_seq: int | None = None  # None: not started; the platform published all at start
        self.applied = 0  # changes applied (for status and tests)
        self._pending = False  # a notification for this schema not yet read back
        self._heard_changes: dict[tuple[str, str], None] = {}  # (kind, name) notified, in order

    def mark_start(self) -> None:
        """Note the newest change number now, before the platform reads and serves everything:
        a change after this is applied even if it slipped in between (blocking: call at start)."""
        conninfo, schema = parse_state_url(self.url)
        options = f"-c search_path={schema}"
        try:
            with psycopg.connect(
                conninfo, autocommit=True, options=options, connect_timeout=CONNECT_TIMEOUT_S
            ) as db:
                row = db.execute(LAST_SQL).fetchone()
        except psycopg.Error as exc:  # `tidal up` says so in a line, as for the store itself
            raise StoreError(f"PostgreSQL schema {schema}: cannot read its change numbers: {exc}") from None
        self.last_seq = int(row[0]) if row else 0

    async def run(self) -> None:
        session = await connect(self.url, "changes")
        # psycopg keeps the notifications that arrive while a query runs for the next notifies().
        try:
            await session.execute(f"LISTEN {CHANNEL}")
            if self.last_seq is None:
                row = await (await session.execute(LAST_SQL)).fetchone()
                self.last_seq = int(row[0]) if row else 0
            self._pending = True  # what a reconnect may have missed
            while True:
                while self._pending:
                    self._pending = False
                    await self.catch_up(session)
                # Closed on leaving: the generator holds the session's lock until it is.
                async with contextlib.aclosing(session.notifies(timeout=POLL_S)) as notices:
                    async for notice in notices:
                        self._heard(notice)
                        if self._pending:
                            break
                self._pending = True  # woken, or POLL_S passed: read what changed either way
        finally:
            await session.close()

    def _heard(self, notice: psycopg.Notify) -> None:
        schema, _, change = notice.payload.partition(" ")
        kind, _, name = change.partition(":")
        if schema == self.schema and name:
            self._heard_changes[(kind, name)] = None
            self._pending = True

    async def catch_up(self, session: Session) -> Changed:
        """Apply the changes after ``last_seq`` and those heard of. Both, because a transaction
        that took an earlier number may commit after a later one was read (its notification
        names it), and a notification may be lost (the numbers name it)."""
        rows = await (await session.execute(SINCE_SQL, (self.last_seq or 0,))).fetchall()
        heard, self._heard_changes = self._heard_changes, {}
        batch = changed([*rows, *((kind, name, 0) for kind, name in heard)])
        if rows:
            self.last_seq = max(int(row[2]) for row in rows)
        await self.apply(batch)
        return batch

    async def apply(self, batch: Changed) -> None:
        """Each change on its own: one that fails is logged, the others still apply."""
        if not (batch.functions or batch.keys or batch.routes):
            return
        for key_id in batch.keys:
            self.appliers.forget_key(key_id)
        for function in batch.functions:
            try:
                await self.appliers.publish(function)
            except Exception:
                log.exception("re-serving %s after a change through another gateway failed", function)
        if batch.routes:
            await self.appliers.reload_routes()
        self.applied += len(batch.functions) + len(batch.keys) + int(batch.routes)
        if batch.functions:
            log.info("re-served after a change in the store: %s", ", ".join(batch.functions))
