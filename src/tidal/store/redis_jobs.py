"""Async jobs (tidal.jobs) on Redis: the durable queue behind ``JobStore`` for `tidal up --queue redis://`.

The same contract as the SQLite table group (sqlite_jobs.py), on these keys (``P`` is the prefix,
``tidal:`` unless the URL says ``?prefix=``):

- ``P job:ID``            the job (a msgpack-encoded ``Job``): the one source of truth for its state
- ``P queue:FUNCTION``    a Redis Stream of due job ids; the consumer group ``dispatchers`` hands each
                          entry to one gateway (an entry a dead gateway was handed is claimed again
                          after ``STUCK_MS`` with XAUTOCLAIM)
- ``P delayed``           sorted set of queued jobs by ``run_at`` (a new job, a retry waiting out its
                          backoff, a redriven one); ``due_functions`` moves the due ones to the streams
- ``P leases``            sorted set of running jobs by ``lease_until``
- ``P callbacks``         sorted set of jobs with a pending callback by ``callback_at``
- ``P finished``          sorted set of ended jobs by ``finished_at`` (retention)
- ``P by-function:F``, ``P all``   sorted sets of job ids by ``created_at`` (listing)
- ``P idem:F:OWNER:KEY``  the job an idempotency key names
- ``P functions``         the functions that ever had a queue

Every change of one job is one optimistic transaction (WATCH the job, read, MULTI, write the job
and its index entries, EXEC; retried when another gateway changed it first), so a job has exactly
one state at a time, and a finish is fenced by the attempt number as in SQLite. Moving due jobs
to the streams is one Lua script, so two gateways never queue a job twice.
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgspec
import redis

from tidal.store.models import Job

T = TypeVar("T")
GROUP = "dispatchers"
STUCK_MS = 30_000  # an entry handed to a gateway that never took it (it died) is handed out again
LIST_PAGE = 200
SEP = "\x00"

# Move every delayed job due at ARGV[1] into its function's stream (at most ARGV[2] of them).
# KEYS[1] = the delayed set; ARGV[3] = the key prefix. Returns how many moved.
MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
    redis.call('ZREM', KEYS[1], member)
    local cut = string.find(member, '\\0', 1, true)
    local function_name = string.sub(member, 1, cut - 1)
    local job_id = string.sub(member, cut + 1)
    redis.call('XADD', ARGV[3] .. 'queue:' .. function_name, '*', 'job', job_id)
end
return #due
"""

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Job)


def parse_queue_url(url: str) -> tuple[str, str]:
    """``redis://host:6379/0?prefix=team-a:`` -> (the URL redis-py takes, the key prefix).

    Only redis:// and rediss:// (TLS) are queues; anything else is refused with the reason.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"--queue takes a redis:// or rediss:// URL, not {url!r}")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    prefix = query.pop("prefix", ["tidal:"])[-1] or "tidal:"
    rest = urllib.parse.urlencode(query, doseq=True)
    return urllib.parse.urlunsplit(parts._replace(query=rest)), prefix


class RedisJobStore:
    """``JobStore`` on Redis. ``activations`` answers ``job_activations`` (the records stay in the
    main store, SQLite, which the activation writer fills)."""

    def __init__(
        self,
        url: str,
        activations: Callable[[str], list[str]],
        prefix: str | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        redis_url, url_prefix = parse_queue_url(url)
        self.prefix = prefix if prefix is not None else url_prefix
        # Typed Any: redis-py's annotations mix the bytes and str answers of its two decode modes.
        self.redis: Any = client or redis.Redis.from_url(
            redis_url, socket_timeout=10, health_check_interval=30
        )
        self.redis.ping()  # a wrong address fails `tidal up` now, not the first job
        self._activations = activations
        self._move_due = self.redis.register_script(MOVE_DUE)
        self._consumer = f"gateway-{id(self):x}"

    # -- keys -------------------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _job_key(self, job_id: str) -> str:
        return self._key("job", job_id)

    def _idempotency_key(self, job: Job) -> str:
        return self._key("idem", job.function, job.owner, job.idempotency_key or "")

    # -- reading ----------------------------------------------------------------------------------

    def job(self, job_id: str) -> Job | None:
        data = self.redis.get(self._job_key(job_id))
        return None if data is None else _decoder.decode(data)

    def jobs(self, function: str | None = None, state: str | None = None, limit: int = 100) -> list[Job]:
        index = self._key("by-function", function) if function is not None else self._key("all")
        found: list[Job] = []
        for job in self._newest_first(index):
            if state is None or job.state == state:
                found.append(job)
                if len(found) >= limit:
                    break
        return found

    def _newest_first(self, index: str) -> Iterator[Job]:
        start = 0
        while True:
            ids = self.redis.zrevrange(index, start, start + LIST_PAGE - 1)
            if not ids:
                return
            for data in self.redis.mget([self._job_key(_text(job_id)) for job_id in ids]):
                if data is not None:
                    yield _decoder.decode(data)
            start += LIST_PAGE

    def job_activations(self, job_id: str) -> list[str]:
        return self._activations(job_id)

    # -- the queue --------------------------------------------------------------------------------

    def add_job(self, job: Job) -> tuple[Job, bool]:
        if job.idempotency_key is None:
            with self.redis.pipeline() as pipe:
                self._write_new(pipe, job)
                pipe.execute()
            return job, True
        idempotency = self._idempotency_key(job)

        def add(pipe: Any) -> tuple[Job, bool]:
            existing = pipe.get(idempotency)
            if existing is not None:
                earlier = self.job(_text(existing))
                if earlier is not None:
                    return earlier, False
            pipe.multi()
            pipe.set(idempotency, job.id)
            self._write_new(pipe, job)
            return job, True

        return self._atomically(add, idempotency)

    def _write_new(self, pipe: Any, job: Job) -> None:
        pipe.set(self._job_key(job.id), _encoder.encode(job))
        pipe.zadd(self._key("all"), {job.id: job.created_at})
        pipe.zadd(self._key("by-function", job.function), {job.id: job.created_at})
        pipe.sadd(self._key("functions"), job.function)
        self._index_state(pipe, job)

    def _index_state(self, pipe: Any, job: Job) -> None:
        """The sorted-set entries that follow from the job's state (none are left from before)."""
        member = job.function + SEP + job.id
        if job.state == "queued":
            pipe.zadd(self._key("delayed"), {member: job.run_at})
        else:
            pipe.zrem(self._key("delayed"), member)
        if job.state == "running":
            pipe.zadd(self._key("leases"), {job.id: job.lease_until})
        else:
            pipe.zrem(self._key("leases"), job.id)
        if job.finished_at is not None:
            pipe.zadd(self._key("finished"), {job.id: job.finished_at})
        else:
            pipe.zrem(self._key("finished"), job.id)
        if job.callback_state == "pending":
            pipe.zadd(self._key("callbacks"), {job.id: job.callback_at})
        else:
            pipe.zrem(self._key("callbacks"), job.id)

    def _queue_due(self, now: float) -> None:
        while self._move_due(keys=[self._key("delayed")], args=[repr(now), 1000, self.prefix]) == 1000:
            pass

    def due_functions(self, now: float) -> list[str]:
        self._queue_due(now)
        functions = sorted(_text(name) for name in self.redis.smembers(self._key("functions")))
        with self.redis.pipeline(transaction=False) as pipe:
            for function in functions:
                pipe.xlen(self._key("queue", function))
            lengths = pipe.execute()
        return [function for function, length in zip(functions, lengths, strict=True) if length]

    def claim_jobs(self, function: str, now: float, lease_until: float, limit: int) -> list[Job]:
        stream = self._key("queue", function)
        self._queue_due(now)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.xgroup_create(stream, GROUP, id="0", mkstream=True)
            pipe.execute(raise_on_error=False)  # BUSYGROUP: it exists already
        entries = self._stuck_entries(stream, limit)
        if len(entries) < limit:
            answer = self.redis.xreadgroup(GROUP, self._consumer, {stream: ">"}, count=limit - len(entries))
            entries += [entry for _, stream_entries in answer for entry in stream_entries]
        claimed = []
        for entry_id, fields in entries:
            job = self._claim_one(_text(fields[b"job"]), now, lease_until)
            self.redis.xack(stream, GROUP, entry_id)
            self.redis.xdel(stream, entry_id)
            if job is not None:
                claimed.append(job)
        return claimed

    def _stuck_entries(self, stream: str, limit: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Entries handed to a gateway that died before it claimed their jobs."""
        answer = self.redis.xautoclaim(stream, GROUP, self._consumer, STUCK_MS, "0-0", count=limit)
        return [entry for entry in answer[1] if entry[1]]  # deleted entries come back as (id, None)

    def _claim_one(self, job_id: str, now: float, lease_until: float) -> Job | None:
        """queued -> running, attempts + 1; None when the job is no longer queued (cancelled)."""

        def running(job: Job) -> Job | None:
            if job.state != "queued":
                return None
            return msgspec.structs.replace(
                job, state="running", attempts=job.attempts + 1, started_at=now, lease_until=lease_until
            )

        return self._change(job_id, running)

    def expired_leases(self, now: float, limit: int) -> list[Job]:
        top = "+inf" if math.isinf(now) else f"({now!r}"
        ids = self.redis.zrangebyscore(self._key("leases"), "-inf", top, start=0, num=limit)
        jobs = [self.job(_text(job_id)) for job_id in ids]
        return [job for job in jobs if job is not None and job.state == "running"]

    def finish_attempt(self, job: Job, attempt: int, follow_up: Job | None = None) -> bool:
        key = self._job_key(job.id)

        def finish(pipe: Any) -> bool:
            data = pipe.get(key)
            current = None if data is None else _decoder.decode(data)
            if current is None or current.state != "running" or current.attempts != attempt:
                return False
            written = _with_identity(job, current)
            pipe.multi()
            pipe.set(key, _encoder.encode(written))
            self._index_state(pipe, written)
            if follow_up is not None:
                self._write_new(pipe, follow_up)
            return True

        return self._atomically(finish, key)

    def cancel_job(self, job_id: str, now: float) -> Job | None:
        def cancelled(job: Job) -> Job | None:
            return (
                msgspec.structs.replace(job, state="cancelled", finished_at=now)
                if job.state == "queued"
                else None
            )

        self._change(job_id, cancelled)
        return self.job(job_id)

    def redrive_jobs(self, function: str, job_id: str | None, now: float, expires_at: float) -> list[str]:
        if job_id is None:
            candidates = [job.id for job in self._oldest_first(function) if job.state == "dead"]
            states: tuple[str, ...] = ("dead",)
        else:
            candidates, states = [job_id], ("dead", "failed")

        def again(job: Job) -> Job | None:
            if job.function != function or job.state not in states:
                return None
            return msgspec.structs.replace(
                job, state="queued", attempts=0, run_at=now, expires_at=expires_at, lease_until=0.0,
                finished_at=None, result=None, result_type="", error_type="", error_message="",
                error_kind="", callback_state="", callback_attempts=0, callback_at=0.0, callback_error="",
            )  # fmt: skip

        return [candidate for candidate in candidates if self._change(candidate, again) is not None]

    def _oldest_first(self, function: str) -> list[Job]:
        return list(reversed(list(self._newest_first(self._key("by-function", function)))))

    # -- callbacks and retention ------------------------------------------------------------------

    def claim_callbacks(self, now: float, lease_until: float, limit: int) -> list[Job]:
        ids = self.redis.zrangebyscore(self._key("callbacks"), "-inf", repr(now), start=0, num=limit)

        def leased(job: Job) -> Job | None:
            if job.callback_state != "pending" or job.callback_at > now:
                return None  # delivered meanwhile, or another gateway leased it
            return msgspec.structs.replace(job, callback_at=lease_until)

        claimed = [self._change(_text(job_id), leased) for job_id in ids]
        # The job as it was due: the sender reads its attempts and URL, not the lease.
        return [msgspec.structs.replace(job, callback_at=now) for job in claimed if job is not None]

    def save_callback(self, job_id: str, state: str, attempts: int, at: float, error: str) -> None:
        def saved(job: Job) -> Job:
            return msgspec.structs.replace(
                job, callback_state=state, callback_attempts=attempts, callback_at=at, callback_error=error
            )

        self._change(job_id, saved)

    def delete_jobs(self, before: float, batch: int) -> int:
        ids = self.redis.zrangebyscore(self._key("finished"), "-inf", f"({before!r}", start=0, num=batch)
        deleted = 0
        for job_id in map(_text, ids):
            job = self.job(job_id)
            if job is not None and job.callback_state == "pending":
                continue  # its callback is still owed
            with self.redis.pipeline() as pipe:
                pipe.delete(self._job_key(job_id))
                pipe.zrem(self._key("finished"), job_id)
                pipe.zrem(self._key("all"), job_id)
                if job is not None:
                    pipe.zrem(self._key("by-function", job.function), job_id)
                    pipe.zrem(self._key("callbacks"), job_id)
                    if job.idempotency_key is not None:
                        pipe.delete(self._idempotency_key(job))
                pipe.execute()
            deleted += 1
        return deleted

    # -- one job, changed atomically ----------------------------------------------------------------

    def _change(self, job_id: str, change: Callable[[Job], Job | None]) -> Job | None:
        """Apply ``change`` to the stored job in one optimistic transaction; the job written, or
        None when there is no such job or ``change`` declined."""
        key = self._job_key(job_id)

        def apply(pipe: Any) -> Job | None:
            data = pipe.get(key)
            if data is None:
                return None
            changed = change(_decoder.decode(data))
            if changed is None:
                return None
            pipe.multi()
            pipe.set(key, _encoder.encode(changed))
            self._index_state(pipe, changed)
            return changed

        return self._atomically(apply, key)

    def _atomically(self, work: Callable[[Any], T], key: str) -> T:
        """Run ``work`` with ``key`` watched until its MULTI/EXEC went through unchanged."""
        result: T = self.redis.transaction(work, key, value_from_callable=True)
        return result

    def close(self) -> None:
        self.redis.close()


def _with_identity(ended: Job, stored: Job) -> Job:
    """What an attempt's end writes: its outcome, on the job's identity and request as stored."""
    return msgspec.structs.replace(
        ended,
        id=stored.id, function=stored.function, body=stored.body, content_type=stored.content_type,
        context=stored.context, owner=stored.owner, scopes=stored.scopes,
        idempotency_key=stored.idempotency_key, request_digest=stored.request_digest,
        callback_url=stored.callback_url, created_at=stored.created_at, source=stored.source,
    )  # fmt: skip


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def open_job_store(queue_url: str | None, main: Any) -> Any:
    """The job store ``tidal up --queue`` asks for: the main store itself (SQLite) when None."""
    if queue_url is None:
        return main
    return RedisJobStore(queue_url, main.job_activations)
