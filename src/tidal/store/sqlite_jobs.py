"""Async jobs (tidal.jobs) in SQLite: the durable queue behind ``JobStore``.

A job moves queued -> running (a claim, under a lease) -> queued again (a retry) or final, each
step one transaction. A finished attempt is written only while the job is still running that very
attempt (``attempts`` is the fence): an attempt presumed lost and retried can never overwrite what
the retry wrote, so a job has exactly one final state even when an attempt ran twice.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import msgspec

from tidal.store.models import Job
from tidal.store.sqlite_base import SQLiteConnection

JOB_FIELDS = Job.__struct_fields__
JOB_COLUMNS = ", ".join(JOB_FIELDS)
JOB_PLACEHOLDERS = ", ".join("?" * len(JOB_FIELDS))
# Everything an attempt's end may change (the identity and the request stay as submitted).
UPDATED_FIELDS = tuple(
    name
    for name in JOB_FIELDS
    if name not in ("id", "function", "body", "content_type", "context", "owner", "scopes",
                    "idempotency_key", "request_digest", "callback_url", "created_at", "source")
)  # fmt: skip
UPDATE_JOB = f"UPDATE jobs SET {', '.join(f'{name} = ?' for name in UPDATED_FIELDS)} WHERE id = ?"


class JobTables(SQLiteConnection):
    def add_job(self, job: Job) -> tuple[Job, bool]:
        with self._transaction() as db:
            return _add_job(db, job)

    def job(self, job_id: str) -> Job | None:
        rows = self._query(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def jobs(self, function: str | None = None, state: str | None = None, limit: int = 100) -> list[Job]:
        where, params = _filters(function, state)
        rows = self._query(
            f"SELECT {JOB_COLUMNS} FROM jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (*params, limit),
        )
        return [_job(row) for row in rows]

    def due_functions(self, now: float) -> list[str]:
        # One index step per function (the jobs_due index), whatever the length of its queue.
        rows = self._query(
            "SELECT function, MIN(run_at) FROM jobs WHERE state = 'queued' GROUP BY function ORDER BY function"
        )
        return [function for function, due in rows if due <= now]

    def claim_jobs(self, function: str, now: float, lease_until: float, limit: int) -> list[Job]:
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'queued' AND function = ? AND run_at <= ? "
                "ORDER BY run_at, rowid LIMIT ?",
                (function, now, limit),
            ).fetchall()
            claimed = [
                msgspec.structs.replace(
                    job, state="running", attempts=job.attempts + 1, started_at=now, lease_until=lease_until
                )
                for job in map(_job, rows)
            ]
            db.executemany(
                "UPDATE jobs SET state = 'running', attempts = ?, started_at = ?, lease_until = ? WHERE id = ?",
                [(job.attempts, now, lease_until, job.id) for job in claimed],
            )
        return claimed

    def expired_leases(self, now: float, limit: int) -> list[Job]:
        rows = self._query(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running' AND lease_until < ? LIMIT ?",
            (now, limit),
        )
        return [_job(row) for row in rows]

    def finish_attempt(self, job: Job, attempt: int, follow_up: Job | None = None) -> bool:
        values = _row(job)
        with self._transaction() as db:
            cursor = db.execute(
                UPDATE_JOB + " AND state = 'running' AND attempts = ?",
                (*(values[name] for name in UPDATED_FIELDS), job.id, attempt),
            )
            if cursor.rowcount == 0:
                return False
            if follow_up is not None:
                _add_job(db, follow_up)
        return True

    def cancel_job(self, job_id: str, now: float) -> Job | None:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = ? WHERE id = ? AND state = 'queued'",
                (now, job_id),
            )
            row = db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def redrive_jobs(self, function: str, job_id: str | None, now: float, expires_at: float) -> list[str]:
        params: tuple[str, ...]
        if job_id is None:
            which, params = "function = ? AND state = 'dead'", (function,)
        else:
            which, params = "function = ? AND id = ? AND state IN ('dead', 'failed')", (function, job_id)
        with self._transaction() as db:
            ids = [row[0] for row in db.execute(f"SELECT id FROM jobs WHERE {which} ORDER BY rowid", params)]
            db.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, run_at = ?, expires_at = ?, lease_until = 0, "
                "finished_at = NULL, result = NULL, result_type = '', error_type = '', error_message = '', "
                "error_kind = '', callback_state = '', callback_attempts = 0, callback_at = 0, "
                f"callback_error = '' WHERE {which}",
                (now, expires_at, *params),
            )
        return ids

    def claim_callbacks(self, now: float, lease_until: float, limit: int) -> list[Job]:
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE callback_state = 'pending' AND callback_at <= ? "
                "ORDER BY callback_at LIMIT ?",
                (now, limit),
            ).fetchall()
            db.executemany(
                "UPDATE jobs SET callback_at = ? WHERE id = ?", [(lease_until, row[0]) for row in rows]
            )
        return [_job(row) for row in rows]

    def save_callback(self, job_id: str, state: str, attempts: int, at: float, error: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET callback_state = ?, callback_attempts = ?, callback_at = ?, callback_error = ? "
                "WHERE id = ?",
                (state, attempts, at, error, job_id),
            )

    def job_activations(self, job_id: str) -> list[str]:
        rows = self._query("SELECT id FROM activations WHERE job = ? ORDER BY start, rowid", (job_id,))
        return [row[0] for row in rows]

    def delete_jobs(self, before: float, batch: int) -> int:
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM jobs WHERE rowid IN (SELECT rowid FROM jobs WHERE finished_at < ? "
                "AND callback_state != 'pending' ORDER BY finished_at LIMIT ?)",
                (before, batch),
            )
            return cursor.rowcount


def _add_job(db: sqlite3.Connection, job: Job) -> tuple[Job, bool]:
    if job.idempotency_key is not None:
        row = db.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE function = ? AND owner = ? AND idempotency_key = ?",
            (job.function, job.owner, job.idempotency_key),
        ).fetchone()
        if row is not None:
            return _job(row), False
    db.execute(f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({JOB_PLACEHOLDERS})", tuple(_row(job).values()))
    return job, True


def _filters(function: str | None, state: str | None) -> tuple[str, tuple[Any, ...]]:
    clauses, params = [], []
    if function is not None:
        clauses.append("function = ?")
        params.append(function)
    if state is not None:
        clauses.append("state = ?")
        params.append(state)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def _row(job: Job) -> dict[str, Any]:
    row = msgspec.structs.asdict(job)
    row["context"], row["scopes"] = json.dumps(job.context), json.dumps(job.scopes)
    return row


def _job(row: tuple[Any, ...]) -> Job:
    values = dict(zip(JOB_FIELDS, row, strict=True))
    values["context"], values["scopes"] = json.loads(values["context"]), json.loads(values["scopes"])
    return Job(**values)
