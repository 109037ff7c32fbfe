"""The cluster's own PostgreSQL sessions: one each for the heartbeat, the leader lease and LISTEN.

They are separate from the store's connections on purpose: the lease is a session-level advisory
lock (it lives exactly as long as its session) and LISTEN needs a session that waits. TCP
keepalives make a dead peer (a host gone, a cut network) end the session in about 11 s, so the
lock of a leader whose host died frees itself; a ``kill -9`` closes the socket at once.
"""

from __future__ import annotations

import socket
from typing import Any

import psycopg

from tidal.store.postgres_sql import parse_state_url

Session = psycopg.AsyncConnection[tuple[Any, ...]]
CONNECT_TIMEOUT_S = 5


async def connect(url: str, purpose: str) -> Session:
    """An autocommit session on the state URL's schema, named in pg_stat_activity by ``purpose``."""
    conninfo, schema = parse_state_url(url)
    return await psycopg.AsyncConnection.connect(
        conninfo,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_S,
        application_name=f"tidal {purpose} {socket.gethostname()}"[:63],
        options=f"-c search_path={schema}",
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
    )
