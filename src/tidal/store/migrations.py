"""Numbered schema migrations of ``tidal.db``, applied in order when a store opens.

The schema version is ``PRAGMA user_version``; ``schema_migrations`` records when each step ran.
Each step runs in its own transaction together with its version bump, so a failed step leaves the
database at the previous version, and two processes opening one state dir cannot both apply it.

Version 1 is the schema of tidal 0.1.0, which had no version: a database at user_version 0 that
already has the 0.1.0 tables is stamped 1 and migrated from there.

To change the schema, append ``Migration(N + 1, "what it does", apply)`` to ``MIGRATIONS``. Never
edit a migration that was released: state dirs out there already ran it. ``apply`` gets a
connection inside the open transaction; it must not commit, and must not use
``executescript`` (which commits first). Add a test that migrates a state dir of the previous
release (see tests/store/fixtures).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tidal.store.errors import StoreError
from tidal.store.models import revision_digest

log = logging.getLogger("tidal.store")


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[sqlite3.Connection], None]


class Executes(Protocol):
    """A connection to run a statement on: SQLite's, or PostgreSQL's (postgres_migrations.py)."""

    def execute(self, statement: str, /) -> object: ...


def execute_all(connection: Executes, script: str) -> None:
    """Run ``;``-separated statements one by one, inside the step's transaction (SQLite's
    executescript would commit it)."""
    for statement in script.split(";"):
        if statement.strip():
            connection.execute(statement)


# -- 1: the 0.1.0 schema, as released (it was created with IF NOT EXISTS and no version) ----------

SCHEMA_0_1_0 = """
CREATE TABLE functions (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
CREATE TABLE revisions (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    digest TEXT NOT NULL,
    code_digest TEXT NOT NULL,
    module TEXT NOT NULL,
    attribute TEXT NOT NULL,
    is_class INTEGER NOT NULL,
    style TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (function, number)
);
CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE activations (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    revision TEXT NOT NULL,
    instance TEXT NOT NULL,
    start REAL NOT NULL,
    duration_ms REAL NOT NULL,
    billed_ms INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    cold INTEGER NOT NULL,
    status TEXT NOT NULL,
    http_status INTEGER NOT NULL,
    error_type TEXT NOT NULL,
    error_message TEXT NOT NULL,
    cpu_ms REAL NOT NULL,
    peak_rss_kb INTEGER NOT NULL,
    queue_ms REAL NOT NULL,
    instance_start_ms REAL NOT NULL,
    import_ms REAL NOT NULL,
    setup_ms REAL NOT NULL,
    logs TEXT NOT NULL
);
CREATE INDEX activations_by_function ON activations (function, start);
CREATE TABLE scaling_events (
    function TEXT NOT NULL,
    revision TEXT NOT NULL,
    at REAL NOT NULL,
    from_count INTEGER NOT NULL,
    to_count INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX scaling_events_by_function ON scaling_events (function, at);
"""
BASELINE_TABLES = ("functions", "revisions", "keys", "activations", "scaling_events")


def _schema_0_1_0(connection: sqlite3.Connection) -> None:
    execute_all(connection, SCHEMA_0_1_0)


# -- 2: activation caller and trigger; function settings and traffic out of revisions -------------

SCHEMA_2 = """
ALTER TABLE activations ADD COLUMN key_id TEXT NOT NULL DEFAULT '';
ALTER TABLE activations ADD COLUMN trigger TEXT NOT NULL DEFAULT 'http';
ALTER TABLE functions ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
CREATE TABLE traffic (
    function TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
    revision TEXT NOT NULL REFERENCES revisions(id) ON DELETE CASCADE,
    percent INTEGER NOT NULL,
    tag TEXT,
    PRIMARY KEY (function, revision)
);
"""
NEWEST_REVISIONS = (
    "SELECT function, id, spec FROM revisions r "
    "WHERE number = (SELECT MAX(number) FROM revisions WHERE function = r.function)"
)


def _settings_and_traffic(connection: sqlite3.Connection) -> None:
    execute_all(connection, SCHEMA_2)
    newest = {function: (rev_id, spec) for function, rev_id, spec in connection.execute(NEWEST_REVISIONS)}
    for (name,) in connection.execute("SELECT name FROM functions").fetchall():
        rev_id, spec = newest.get(name, (None, "{}"))
        # 0.1.0 kept `public` in every revision; the newest one is what the gateway obeyed.
        settings = {"public": bool(json.loads(spec).get("public", False))}
        connection.execute("UPDATE functions SET settings = ? WHERE name = ?", (json.dumps(settings), name))
        if rev_id is not None:  # 0.1.0 served each function's newest revision
            connection.execute(
                "INSERT INTO traffic (function, revision, percent) VALUES (?, ?, 100)", (name, rev_id)
            )
    _strip_public_from_revisions(connection)


def _strip_public_from_revisions(connection: sqlite3.Connection) -> None:
    """Revision specs keep revision-level fields only; digests follow, so a redeploy stays "unchanged"."""
    rows = connection.execute(
        "SELECT id, code_digest, module, attribute, is_class, style, spec FROM revisions"
    ).fetchall()
    for rev_id, code_digest, module, attribute, is_class, style, spec_json in rows:
        spec = json.loads(spec_json)
        spec.pop("public", None)
        # Today's revision_digest: should it ever change, a later migration recomputes digests again.
        digest = revision_digest(code_digest, module, attribute, bool(is_class), style, spec)
        connection.execute(
            "UPDATE revisions SET spec = ?, digest = ? WHERE id = ?", (json.dumps(spec), digest, rev_id)
        )


# -- 3: retention deletes by age (indexes on time); 429s counted per function per minute ----------

SCHEMA_3 = """
CREATE INDEX activations_by_start ON activations (start);
CREATE INDEX scaling_events_by_time ON scaling_events (at);
CREATE TABLE rejections (
    function TEXT NOT NULL,
    minute INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (function, minute)
);
CREATE INDEX rejections_by_minute ON rejections (minute);
"""


def _retention_and_rejections(connection: sqlite3.Connection) -> None:
    execute_all(connection, SCHEMA_3)


# -- 4: the environment a revision runs in (its bundle's requirements, installed; "" = tidal's own) --


def _revision_environment(connection: sqlite3.Connection) -> None:
    connection.execute("ALTER TABLE revisions ADD COLUMN environment TEXT NOT NULL DEFAULT ''")


# -- 5: canary rollouts (tidal.rollout): at most one running per function, and their decisions ------

SCHEMA_5 = """
CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    function TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
    canary TEXT NOT NULL,
    stable TEXT NOT NULL,
    steps TEXT NOT NULL,
    interval_s REAL NOT NULL,
    max_error_rate REAL NOT NULL,
    max_p99_ms REAL,
    min_requests INTEGER NOT NULL,
    step INTEGER NOT NULL,
    step_started_at REAL NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE UNIQUE INDEX rollouts_one_running ON rollouts (function) WHERE state = 'running';
CREATE TABLE rollout_decisions (
    rollout INTEGER NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    at REAL NOT NULL,
    step INTEGER NOT NULL,
    percent INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    reason TEXT NOT NULL,
    canary TEXT NOT NULL,
    stable TEXT NOT NULL
);
CREATE INDEX rollout_decisions_by_rollout ON rollout_decisions (rollout, at);
"""


def _rollouts(connection: sqlite3.Connection) -> None:
    execute_all(connection, SCHEMA_5)


# -- 6: shadow traffic (tidal.shadow): one candidate per function, compared copies, skip counts -----

SCHEMA_6 = """
CREATE TABLE shadows (
    function TEXT PRIMARY KEY REFERENCES functions(name) ON DELETE CASCADE,
    revision TEXT NOT NULL REFERENCES revisions(id) ON DELETE CASCADE,
    percent INTEGER NOT NULL,
    compare TEXT NOT NULL,
    max_in_flight INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE shadow_results (
    function TEXT NOT NULL,
    revision TEXT NOT NULL,
    primary_revision TEXT NOT NULL,
    activation TEXT NOT NULL,
    candidate_activation TEXT NOT NULL,
    at REAL NOT NULL,
    verdict TEXT NOT NULL,
    detail TEXT NOT NULL,
    score REAL,
    primary_ms REAL NOT NULL,
    candidate_ms REAL NOT NULL
);
CREATE INDEX shadow_results_by_function ON shadow_results (function, at);
CREATE INDEX shadow_results_by_time ON shadow_results (at);
CREATE TABLE shadow_skips (
    function TEXT NOT NULL,
    revision TEXT NOT NULL,
    minute INTEGER NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (function, revision, minute, reason)
);
CREATE INDEX shadow_skips_by_minute ON shadow_skips (minute);
"""


def _shadows(connection: sqlite3.Connection) -> None:
    execute_all(connection, SCHEMA_6)


# -- 7: async jobs (tidal.jobs): the durable queue, and the job each activation was an attempt of ----

SCHEMA_7 = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    state TEXT NOT NULL,
    body BLOB NOT NULL,
    content_type TEXT NOT NULL,
    context TEXT NOT NULL,
    owner TEXT NOT NULL,
    scopes TEXT NOT NULL,
    idempotency_key TEXT,
    request_digest TEXT NOT NULL,
    callback_url TEXT,
    max_attempts INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    created_at REAL NOT NULL,
    run_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_until REAL NOT NULL DEFAULT 0,
    started_at REAL,
    finished_at REAL,
    revision TEXT NOT NULL DEFAULT '',
    result BLOB,
    result_type TEXT NOT NULL DEFAULT '',
    error_type TEXT NOT NULL DEFAULT '',
    error_message TEXT NOT NULL DEFAULT '',
    error_kind TEXT NOT NULL DEFAULT '',
    activation TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '',
    callback_state TEXT NOT NULL DEFAULT '',
    callback_attempts INTEGER NOT NULL DEFAULT 0,
    callback_at REAL NOT NULL DEFAULT 0,
    callback_error TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX jobs_by_idempotency_key ON jobs (function, owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_due ON jobs (state, function, run_at);
CREATE INDEX jobs_by_function ON jobs (function, created_at);
CREATE INDEX jobs_by_created ON jobs (created_at);
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_callbacks_due ON jobs (callback_at) WHERE callback_state = 'pending';
ALTER TABLE activations ADD COLUMN job TEXT NOT NULL DEFAULT '';
CREATE INDEX activations_by_job ON activations (job) WHERE job != ''
"""


def _jobs(connection: sqlite3.Connection) -> None:
    execute_all(connection, SCHEMA_7)


# -- 8: event triggers (tidal.triggers) ----------------------------------------------------------------

SCHEMA_8 = """
CREATE TABLE triggers (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL REFERENCES functions (name) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    origin TEXT NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT '{}',
    last_error TEXT NOT NULL DEFAULT '',
    last_error_at REAL NOT NULL DEFAULT 0,
    events INTEGER NOT NULL DEFAULT 0,
    last_event_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX triggers_by_function ON triggers (function, created_at);
ALTER TABLE activations ADD COLUMN trigger_id TEXT NOT NULL DEFAULT ''
"""


def _triggers(connection: sqlite3.Connection) -> None:
    execute_all(connection, SCHEMA_8)


# -- 9: revision digests leave out fields at their default (a new field makes no new revision) ----


def _digests_without_defaults(connection: sqlite3.Connection) -> None:
    rows = connection.execute(
        "SELECT id, code_digest, module, attribute, is_class, style, spec, environment FROM revisions"
    ).fetchall()
    for rev_id, code_digest, module, attribute, is_class, style, spec_json, environment in rows:
        digest = revision_digest(
            code_digest, module, attribute, bool(is_class), style, json.loads(spec_json), environment
        )
        connection.execute("UPDATE revisions SET digest = ? WHERE id = ?", (digest, rev_id))


# -- 10: metering: GPUs per activation; instance lifetimes (the idle cost of keeping warm) ----------

SCHEMA_10 = """
ALTER TABLE activations ADD COLUMN gpus REAL NOT NULL DEFAULT 0;
CREATE TABLE instance_lives (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    revision TEXT NOT NULL,
    memory_mb INTEGER NOT NULL,
    gpus REAL NOT NULL DEFAULT 0,
    started REAL NOT NULL,
    stopped REAL NOT NULL DEFAULT 0,
    cold_detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX instance_lives_by_start ON instance_lives (started);
CREATE INDEX instance_lives_by_function ON instance_lives (function, started)
"""


def _metering(connection: sqlite3.Connection) -> None:
    execute_all(connection, SCHEMA_10)


# -- 11: keep-alive: the idle-time histogram of each function (tidal.keepalive) ----------------------

SCHEMA_11 = """
CREATE TABLE idle_histograms (
    function TEXT PRIMARY KEY REFERENCES functions (name) ON DELETE CASCADE,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL
)
"""


def _idle_histograms(connection: sqlite3.Connection) -> None:
    execute_all(connection, SCHEMA_11)


# -- 12: the batch size and the model (multiplexing) of each activation ---------------------------------

SCHEMA_12 = """
ALTER TABLE activations ADD COLUMN batch_size INTEGER NOT NULL DEFAULT 0;
ALTER TABLE activations ADD COLUMN model TEXT NOT NULL DEFAULT ''
"""


def _batch_size_and_model(connection: sqlite3.Connection) -> None:
    execute_all(connection, SCHEMA_12)


# -- 13: HTTP routes by method and path (tidal.gateway routes), with their CORS settings ----------------

SCHEMA_13 = """
CREATE TABLE routes (
    id TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    function TEXT NOT NULL REFERENCES functions (name) ON DELETE CASCADE,
    origin TEXT NOT NULL,
    cors TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    UNIQUE (method, path)
);
CREATE INDEX routes_by_function ON routes (function)
"""


def _routes(connection: sqlite3.Connection) -> None:
    execute_all(connection, SCHEMA_13)


# -- 14: rate limits and quotas per API key; the input schema of each revision ------------------------

SCHEMA_14 = """
ALTER TABLE keys ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';
CREATE TABLE quota_usage (
    key_id TEXT NOT NULL,
    period TEXT NOT NULL,
    period_start REAL NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    gb_s REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, period, period_start)
);
ALTER TABLE revisions ADD COLUMN input_schema TEXT NOT NULL DEFAULT ''
"""


def _limits_and_schemas(connection: sqlite3.Connection) -> None:
    execute_all(connection, SCHEMA_14)


# -- 15: how the instance of each cold activation started ------------------------------------------

SCHEMA_15 = """
ALTER TABLE activations ADD COLUMN cold_detail TEXT NOT NULL DEFAULT ''
"""


def _cold_detail(connection: sqlite3.Connection) -> None:
    execute_all(connection, SCHEMA_15)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "tidal 0.1.0 schema", _schema_0_1_0),
    Migration(2, "activation key_id and trigger; function settings and traffic", _settings_and_traffic),
    Migration(3, "time indexes for retention; rejection counts per minute", _retention_and_rejections),
    Migration(4, "the environment each revision runs in", _revision_environment),
    Migration(5, "canary rollouts and their decisions", _rollouts),
    Migration(6, "shadow traffic: candidates, compared copies, skip counts", _shadows),
    Migration(7, "async jobs; the job of each activation", _jobs),
    Migration(8, "event triggers and their state; the trigger of each activation", _triggers),
    Migration(9, "revision digests without fields at their default", _digests_without_defaults),
    Migration(10, "GPUs per activation; instance lifetimes", _metering),
    Migration(11, "idle-time histograms for keep-alive", _idle_histograms),
    Migration(12, "batch size and model of each activation", _batch_size_and_model),
    Migration(13, "HTTP routes by method and path", _routes),
    Migration(14, "rate limits and quotas per key; input schema per revision", _limits_and_schemas),
    Migration(15, "how the instance of each cold activation started", _cold_detail),
)


# -- the runner ---------------------------------------------------------------------------------------


def migrate(
    connection: sqlite3.Connection,
    migrations: Sequence[Migration] = MIGRATIONS,
    clock: Callable[[], float] = time.time,
) -> list[int]:
    """Bring the database to the newest version in ``migrations``; return the versions applied.

    ``connection`` must be in autocommit mode (``isolation_level=None``): each step opens its own
    transaction. Raises StoreError for a database newer than ``migrations`` or a failed step.
    """
    if connection.isolation_level is not None:
        raise ValueError("migrate needs a connection with isolation_level=None")
    _check_numbering(migrations)
    latest = latest_version(migrations)
    _refuse_newer(connection, _version(connection), latest)
    applied: list[int] = []
    if migrations and _version(connection) == 0 and _has_baseline(connection):
        applied += _step(connection, migrations[0], latest, clock, run=False)
    for migration in migrations:
        applied += _step(connection, migration, latest, clock, run=True)
    return applied


def latest_version(migrations: Sequence[Migration] = MIGRATIONS) -> int:
    return migrations[-1].version if migrations else 0


def _step(
    connection: sqlite3.Connection,
    migration: Migration,
    latest: int,
    clock: Callable[[], float],
    run: bool,
) -> list[int]:
    """Apply (or, ``run=False``, only record) one migration; [] if the database already has it."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        # Read again under the write lock: another process may have migrated since we looked.
        current = _version(connection)
        _refuse_newer(connection, current, latest)
        if current >= migration.version:
            connection.execute("ROLLBACK")
            return []
        if run:
            migration.apply(connection)
        _record(connection, migration, clock())
        connection.execute("COMMIT")
    except BaseException as error:
        if connection.in_transaction:  # some errors make SQLite roll back on its own
            connection.execute("ROLLBACK")
        if isinstance(error, StoreError | KeyboardInterrupt | SystemExit):
            raise
        raise StoreError(
            f"schema migration {migration.version} ({migration.description}) failed: {error!r}; "
            f"the state dir stays at schema {migration.version - 1}"
        ) from error
    log.info("state: schema %d, %s", migration.version, migration.description if run else "baseline")
    return [migration.version]


def _record(connection: sqlite3.Connection, migration: Migration, applied_at: float) -> None:
    # The runner's own bookkeeping, not part of any migration: it must exist before step 1 records.
    connection.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, description TEXT, applied_at REAL)"
    )
    connection.execute(
        "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
        (migration.version, migration.description, applied_at),
    )
    # PRAGMA takes no parameters; the version is an int from our own list.
    connection.execute(f"PRAGMA user_version = {int(migration.version)}")


def _version(connection: sqlite3.Connection) -> int:
    return int(connection.execute("PRAGMA user_version").fetchone()[0])


def _refuse_newer(connection: sqlite3.Connection, current: int, latest: int) -> None:
    if current > latest:
        raise StoreError(
            f"state dir {_state_dir(connection)} was written by a newer tidal "
            f"(schema {current}, this release knows {latest})"
        )


def _has_baseline(connection: sqlite3.Connection) -> bool:
    """Whether an unversioned database holds the 0.1.0 tables (all of them, or none: else refuse)."""
    names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    present = [table for table in BASELINE_TABLES if table in names]
    if present and len(present) < len(BASELINE_TABLES):
        raise StoreError(
            f"state dir {_state_dir(connection)} has an unversioned schema with tables {present} "
            f"but not {sorted(set(BASELINE_TABLES) - set(present))}: not a tidal 0.1.0 database"
        )
    return bool(present)


def _state_dir(connection: sqlite3.Connection) -> str:
    for _, name, file in connection.execute("PRAGMA database_list"):
        if name == "main":
            return str(Path(file).parent) if file else ":memory:"
    return "?"


def _check_numbering(migrations: Sequence[Migration]) -> None:
    versions = [migration.version for migration in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migrations must be numbered 1, 2, 3... in order, got {versions}")
