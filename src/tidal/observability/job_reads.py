"""What a scrape reads about async jobs and triggers from the state dir's SQLite file.

A read-only connection of its own (WAL lets it read while the gateway writes), used only from a
worker thread at scrape time, so the store's one connection and its lock are never held for metrics.
The store has no "count jobs by state" call; these few GROUP BY queries stand in for one, over the
``jobs_due`` index (state, function, run_at).
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

TRIGGER_OF_JOB = """json_extract(context, '$.headers."x-tidal-trigger"')"""  # tidal.jobs.model.TRIGGER_HEADER


@dataclass
class JobCounts:
    by_state: dict[tuple[str, str], int] = field(default_factory=dict)  # (function, state) -> jobs
    oldest_due: dict[str, float] = field(default_factory=dict)  # function -> earliest run_at still queued
    oldest_due_by_trigger: dict[str, float] = field(default_factory=dict)  # trigger id -> earliest run_at


class JobReader:
    def __init__(self, database: Path) -> None:
        self.database = database
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def counts(self, now: float) -> JobCounts:
        """Jobs per function and state, and the oldest due-but-waiting job per function and trigger."""
        with self._lock:
            db = self._connect()
            if db is None:
                return JobCounts()
            try:
                return _read(db, now)
            except sqlite3.OperationalError:  # a state dir older than the jobs table
                return JobCounts()

    def _connect(self) -> sqlite3.Connection | None:
        if self._connection is None and self.database.exists():
            self._connection = sqlite3.connect(
                f"file:{self.database}?mode=ro", uri=True, check_same_thread=False, timeout=1.0
            )
        return self._connection

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


def _read(db: sqlite3.Connection, now: float) -> JobCounts:
    counts = JobCounts()
    for function, state, jobs in db.execute("SELECT function, state, COUNT(*) FROM jobs GROUP BY 1, 2"):
        counts.by_state[(str(function), str(state))] = int(jobs)
    due = "FROM jobs WHERE state = 'queued' AND run_at <= ?"
    for function, oldest in db.execute(f"SELECT function, MIN(run_at) {due} GROUP BY 1", (now,)):
        counts.oldest_due[str(function)] = float(oldest)
    for trigger, oldest in db.execute(
        f"SELECT {TRIGGER_OF_JOB} AS trigger, MIN(run_at) {due} AND trigger IS NOT NULL GROUP BY 1", (now,)
    ):
        counts.oldest_due_by_trigger[str(trigger)] = float(oldest)
    return counts
