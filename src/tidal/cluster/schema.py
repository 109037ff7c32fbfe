"""The PostgreSQL store's migration 2: what several gateways need to coordinate.

- ``gateways``: one heartbeat row per running gateway (tidal.cluster.heartbeat).
- ``changes``: per changed thing (``function``/``key``/``route`` and its name), the sequence
  number of its last change. Triggers on the tables a user changes keep it, in the writer's own
  transaction, and send ``NOTIFY tidal_changes, 'SCHEMA KIND:NAME'`` (delivered at commit), so no
  write path of the store has to remember to. A gateway that missed a notification catches up
  from the sequence (tidal.cluster.changes).
- ``code_bundles``: each deployed code dir, zipped, by its digest: a gateway serving a revision
  deployed through another one unpacks it from here (tidal.cluster.code).

The schema name is in the payload because NOTIFY is per database and several tidal schemas may
share one. An UPDATE that changes nothing notifies nothing (no loop of re-publishes).
"""

from __future__ import annotations

from typing import Any

import psycopg

# (table, kind of change, column naming the thing) for every table whose rows a gateway serves.
WATCHED = (
    ("functions", "function", "name"),
    ("revisions", "function", "function"),
    ("traffic", "function", "function"),
    ("shadows", "function", "function"),
    ("keys", "key", "id"),
    ("routes", "route", "function"),
)

CLUSTER_SCHEMA = """
CREATE TABLE gateways (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    beat_at DOUBLE PRECISION NOT NULL
);
CREATE SEQUENCE changes_seq;
CREATE TABLE changes (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE INDEX changes_by_seq ON changes (seq);
CREATE TABLE code_bundles (
    code_digest TEXT PRIMARY KEY,
    bundle BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE FUNCTION tidal_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    thing TEXT;
BEGIN
    IF TG_OP = 'UPDATE' AND OLD IS NOT DISTINCT FROM NEW THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        thing := to_jsonb(OLD) ->> TG_ARGV[1];
    ELSE
        thing := to_jsonb(NEW) ->> TG_ARGV[1];
    END IF;
    EXECUTE format(
        'INSERT INTO %I.changes (kind, name, seq) VALUES ($1, $2, nextval(%L)) '
        'ON CONFLICT (kind, name) DO UPDATE SET seq = EXCLUDED.seq',
        TG_TABLE_SCHEMA, TG_TABLE_SCHEMA || '.changes_seq'
    ) USING TG_ARGV[0], thing;
    PERFORM pg_notify('tidal_changes', TG_TABLE_SCHEMA || ' ' || TG_ARGV[0] || ':' || thing);
    RETURN NULL;
END
$$;
"""


def watch_statements() -> list[str]:
    """One trigger per watched table (skipped where a table is absent, so the order of the store's
    own migrations cannot break this one)."""
    statements = []
    for table, kind, column in WATCHED:
        statements.append(
            f"DO $$ BEGIN IF to_regclass('{table}') IS NOT NULL THEN "
            f"CREATE TRIGGER {table}_changed AFTER INSERT OR UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION tidal_changed('{kind}', '{column}'); END IF; END $$"
        )
    return statements


def apply_cluster_schema(connection: psycopg.Connection[Any]) -> None:
    """Migration 2 (tidal.store.postgres_migrations), inside the step's transaction."""
    connection.execute(CLUSTER_SCHEMA)  # one script: the trigger function's body holds `;`
    for statement in watch_statements():
        connection.execute(statement)
