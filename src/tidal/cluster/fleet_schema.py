"""The PostgreSQL store's migration 3: one Ray fleet shared by every gateway (tidal.cluster.fleet).

- ``instances``: each running instance of the shared Ray fleet, registered by the leader gateway
  that started (or adopted) it, with the TCP address every gateway connects to; removed when it
  exits. A trigger sends ``NOTIFY tidal_instances, 'SCHEMA'`` at commit, so followers connect
  to a new instance (and drain a removed one) at once instead of at their next poll.
- ``demand``: per gateway and revision, that gateway's averaged concurrency at its last tick;
  the leader scales the fleet from the sum of the fresh samples of live gateways.
"""

from __future__ import annotations

from typing import Any

import psycopg

FLEET_SCHEMA = """
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    revision TEXT NOT NULL,
    address TEXT NOT NULL,
    node TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL DEFAULT 'running',
    extra TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX instances_by_revision ON instances (revision);
CREATE TABLE demand (
    gateway TEXT NOT NULL,
    revision TEXT NOT NULL,
    concurrency DOUBLE PRECISION NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (gateway, revision)
);
CREATE FUNCTION tidal_instances_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tidal_instances', TG_TABLE_SCHEMA);
    RETURN NULL;
END
$$;
CREATE TRIGGER instances_changed AFTER INSERT OR UPDATE OR DELETE ON instances
FOR EACH STATEMENT EXECUTE FUNCTION tidal_instances_changed();
"""


def apply_fleet_schema(connection: psycopg.Connection[Any]) -> None:
    """Migration 3 (tidal.store.postgres_migrations), inside the step's transaction."""
    connection.execute(FLEET_SCHEMA)  # one script: the trigger function's body holds `;`
