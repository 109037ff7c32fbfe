"""The store seam: one Protocol per concern, and ``Store`` for all of them.

Callers depend on the narrowest one they use (the metering writer on ActivationStore, the key ring
on KeyStore), so another backend, or a fake in a unit test, implements only what it must.
SQLiteStore implements ``Store``; tests pin that member by member.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from tidal.routing.model import RouteRecord
from tidal.store.models import (
    Activation,
    ActivationCutoff,
    ActivationRow,
    FunctionRecord,
    InstanceLife,
    Job,
    KeyRecord,
    Revision,
    RevisionWindow,
    Rollout,
    RolloutDecision,
    ShadowConfig,
    ShadowResult,
    TrafficTarget,
    TriggerRecord,
    UsageSums,
)


class FunctionStore(Protocol):
    """Functions, their revisions, function-level settings and traffic."""

    def add_revision(
        self, draft: Revision, settings: dict[str, object] | None = None, serve: bool = True
    ) -> tuple[Revision, bool]:
        """Store ``draft`` as the next revision unless its digest equals the newest one's.

        Returns (revision, created). In the same transaction: creates the function if new,
        replaces its settings if ``settings`` is given, and with ``serve`` sends all its traffic
        to the returned revision (also when unchanged).
        """
        ...

    def function_names(self) -> list[str]: ...

    def functions(self) -> list[FunctionRecord]:
        """All functions, by name."""
        ...

    def function(self, name: str) -> FunctionRecord | None: ...

    def revision(self, revision_id: str) -> Revision | None: ...

    def revisions(self, function: str) -> list[Revision]:
        """The function's revisions, newest first."""
        ...

    def latest_revisions(self) -> list[Revision]:
        """Each function's newest revision, by function name (not necessarily the one served)."""
        ...

    def set_function_settings(self, name: str, settings: dict[str, object]) -> None:
        """Replace the function's settings; KeyError if there is no such function."""
        ...

    def set_traffic(self, name: str, targets: list[TrafficTarget]) -> None:
        """Replace the function's traffic at once; ValueError for an invalid split (see check_traffic),
        KeyError if there is no such function."""
        ...

    def delete_function(self, name: str) -> bool:
        """Delete the function with its revisions and traffic; False if there was none."""
        ...

    def code_digests(self) -> set[str]:
        """The code digest of every stored revision: a code dir outside this set serves nothing."""
        ...

    def environments(self) -> set[str]:
        """The environment key of every stored revision that has one (unused ones can go)."""
        ...


class KeyStore(Protocol):
    """API keys, by id and by the SHA-256 of the secret."""

    def add_key(self, key_id: str, key_hash: str, scopes: list[str], description: str = "") -> KeyRecord: ...

    def key_by_hash(self, key_hash: str) -> KeyRecord | None: ...

    def list_keys(self) -> list[KeyRecord]: ...

    def revoke_key(self, key_id: str) -> bool: ...


class ActivationStore(Protocol):
    """The record of every invocation."""

    def add_activations(self, activations: Iterable[Activation]) -> None:
        """Store a batch in one transaction (a repeated id replaces the earlier record)."""
        ...

    def add_activation_rows(self, rows: Sequence[ActivationRow]) -> None:
        """``add_activations`` for records already in row form (the journal folder's)."""
        ...

    def activations(
        self, function: str, limit: int = 50, activation_id: str | None = None
    ) -> list[Activation]:
        """The function's newest ``limit`` activations, or the one with ``activation_id``."""
        ...

    def activation(self, activation_id: str) -> Activation | None: ...

    def delete_activations(self, before: float, keep_newest: int, batch: int) -> int:
        """Delete at most ``batch`` of the oldest activations that started before ``before`` or are
        not among the newest ``keep_newest`` (0: no row limit); returns how many went."""
        ...

    def activations_cutoff(self, before: float, keep_newest: int) -> ActivationCutoff:
        """Where ``delete_activations`` would cut now: activations below it started before
        ``before`` or are not among the newest ``keep_newest``. Costs a walk past the newest
        ``keep_newest`` rows, so a retention sweep asks once and deletes below it in batches."""
        ...

    def delete_activations_below(self, cutoff: ActivationCutoff, batch: int) -> int:
        """Delete at most ``batch`` of the oldest activations below ``cutoff``; how many went."""
        ...

    def add_rejections(self, counts: Mapping[tuple[str, int], int]) -> None:
        """Add 429 counts keyed by (function, minute: epoch seconds, a multiple of 60), in one transaction."""
        ...

    def rejections(self, function: str, since: float) -> list[dict[str, int]]:
        """The function's rejections per minute from ``since`` on, newest first, each {minute, count}."""
        ...

    def delete_rejections(self, before: float, batch: int) -> int:
        """Delete at most ``batch`` of the per-minute counts older than ``before``; how many went."""
        ...

    def revision_windows(self, function: str, since: float, until: float) -> list[RevisionWindow]:
        """Per revision, the function's activations that started in [since, until): counts by
        status, cold starts, and the warm calls' durations ascending; by revision id."""
        ...


class ScalingEventStore(Protocol):
    """What the autoscaler decided, for `tidal status` and the dashboard."""

    def add_scaling_event(
        self, function: str, revision: str, at: float, from_count: int, to_count: int, reason: str
    ) -> None: ...

    def scaling_events(self, function: str, limit: int = 20) -> list[dict[str, object]]:
        """Newest first, each {revision, at, from_count, to_count, reason}."""
        ...

    def delete_scaling_events(self, before: float, batch: int) -> int:
        """Delete at most ``batch`` of the oldest events from before ``before``; how many went."""
        ...


class RolloutStore(Protocol):
    """Canary rollouts (tidal.rollout): persisted, so a gateway restart resumes them."""

    def start_rollout(
        self, draft: Rollout, traffic: list[TrafficTarget], decision: RolloutDecision | None = None
    ) -> Rollout:
        """Store ``draft`` as running, make ``traffic`` the function's traffic and add ``decision``
        (its first history entry), in one transaction; the stored rollout (with its id).
        KeyError: no such function; ValueError: a rollout of it is already running, or
        ``traffic`` is invalid."""
        ...

    def rollout(self, function: str) -> Rollout | None:
        """The function's newest rollout, running or finished."""
        ...

    def running_rollouts(self) -> list[Rollout]: ...

    def rollout_decisions(self, rollout_id: int) -> list[RolloutDecision]:
        """The rollout's history, oldest first."""
        ...

    def save_rollout(
        self,
        rollout: Rollout,
        decision: RolloutDecision | None = None,
        traffic: list[TrafficTarget] | None = None,
        expected: list[TrafficTarget] | None = None,
    ) -> bool:
        """In one transaction: update a running ``rollout`` (step, clock, state, reason), add
        ``decision``, and set ``traffic`` if given. With ``expected``, nothing is written unless
        the function's traffic is still exactly that (a change by hand wins). False if nothing
        was written (the traffic differed, or the rollout no longer runs)."""
        ...


class ShadowStore(Protocol):
    """Shadow traffic (tidal.shadow): a function's candidate, and what became of the copies."""

    def set_shadow(self, config: ShadowConfig) -> None:
        """Make ``config`` the function's shadow (replacing any); KeyError: no such function,
        ValueError: the revision is not one of the function's."""
        ...

    def shadow(self, function: str) -> ShadowConfig | None: ...

    def delete_shadow(self, function: str) -> bool:
        """Stop the function's shadow; False if it had none. Its results stay (retention ages them)."""
        ...

    def add_shadow_results(
        self, results: Iterable[ShadowResult], skips: Mapping[tuple[str, str, int, str], int]
    ) -> None:
        """Store results and add skip counts keyed by (function, revision, minute, reason), in one
        transaction (a minute is epoch seconds, a multiple of 60)."""
        ...

    def shadow_results(
        self, function: str, since: float, revision: str | None = None, limit: int = 100_000
    ) -> list[ShadowResult]:
        """The function's newest ``limit`` results from ``since`` on (of ``revision`` only, if given),
        newest first."""
        ...

    def shadow_skips(self, function: str, since: float, revision: str | None = None) -> dict[str, int]:
        """Skipped copies from ``since`` on, by reason (tidal.store.models.SHADOW_SKIPS)."""
        ...

    def delete_shadow_results(self, before: float, batch: int) -> int:
        """Delete at most ``batch`` results and ``batch`` skip counts from before ``before``; how many went."""
        ...


class JobStore(Protocol):
    """Async jobs (tidal.jobs): a durable queue with leases, idempotency keys and dead letters.

    The job dispatcher and the jobs API depend on this seam only: SQLite implements it
    (sqlite_jobs.py); a Redis Streams queue (`tidal up --queue redis://...`) can implement it too.
    Every change of a job's state is one atomic step; ``finish_attempt`` is fenced by the attempt
    number, so an attempt presumed lost can never overwrite the state of the attempt after it.
    """

    def add_job(self, job: Job) -> tuple[Job, bool]:
        """Store a new job; (job, True). If the same owner already used ``job.idempotency_key``
        for the same function, nothing is stored: (that job, False)."""
        ...

    def job(self, job_id: str) -> Job | None: ...

    def jobs(self, function: str | None = None, state: str | None = None, limit: int = 100) -> list[Job]:
        """Jobs newest first, of one function and in one state if given."""
        ...

    def due_functions(self, now: float) -> list[str]:
        """Functions with queued jobs due at ``now``, by name."""
        ...

    def claim_jobs(self, function: str, now: float, lease_until: float, limit: int) -> list[Job]:
        """Up to ``limit`` of the function's due queued jobs, oldest due first, now running under a
        lease until ``lease_until``: attempts + 1, started_at = ``now``, in one transaction."""
        ...

    def expired_leases(self, now: float, limit: int) -> list[Job]:
        """Running jobs whose lease ended before ``now`` (their gateway stopped mid-attempt)."""
        ...

    def finish_attempt(self, job: Job, attempt: int, follow_up: Job | None = None) -> bool:
        """Write ``job`` (its state after an attempt: queued again, or final) if it is still running
        attempt number ``attempt``; with ``follow_up`` (a destination's job) added in the same
        transaction. False if nothing was written (it was cancelled, or already recovered)."""
        ...

    def cancel_job(self, job_id: str, now: float) -> Job | None:
        """Cancel the job if it is queued; the job as it is afterwards (None: no such job)."""
        ...

    def redrive_jobs(self, function: str, job_id: str | None, now: float, expires_at: float) -> list[str]:
        """Queue the function's dead jobs again (or only ``job_id``, dead or failed) with attempts
        reset and a new ``expires_at``; the ids requeued."""
        ...

    def claim_callbacks(self, now: float, lease_until: float, limit: int) -> list[Job]:
        """Finished jobs whose callback is due at ``now``, due again at ``lease_until`` (should the
        gateway stop while delivering)."""
        ...

    def save_callback(self, job_id: str, state: str, attempts: int, at: float, error: str) -> None:
        """Record a delivery attempt: the callback's state, attempts, next due time and last error."""
        ...

    def job_activations(self, job_id: str) -> list[str]:
        """The ids of the activations that were attempts of the job, oldest first."""
        ...

    def delete_jobs(self, before: float, batch: int) -> int:
        """Delete at most ``batch`` of the finished jobs that finished before ``before`` (and whose
        callback is not pending); how many went."""
        ...


class TriggerStore(Protocol):
    """Event triggers (tidal.triggers): their config, origin and the state each source keeps."""

    def add_trigger(self, trigger: TriggerRecord) -> bool:
        """Store a new trigger; False (nothing stored) if its function does not exist."""
        ...

    def trigger(self, trigger_id: str) -> TriggerRecord | None: ...

    def triggers(self, function: str | None = None) -> list[TriggerRecord]:
        """Triggers by function, then age; of one function if given."""
        ...

    def delete_trigger(self, trigger_id: str) -> bool: ...

    def sync_spec_triggers(self, function: str, declared: list[TriggerRecord]) -> None:
        """Make the function's spec-origin triggers ``declared``: others go, new ones are added,
        existing ones (same id) keep their state."""
        ...

    def save_trigger_state(self, trigger_id: str, state: dict[str, object], events: int, at: float) -> None:
        """Replace the source state, count ``events`` more (at ``at``), clear the last error."""
        ...

    def add_trigger_events(self, trigger_id: str, events: int, at: float) -> None: ...

    def set_trigger_error(self, trigger_id: str, error: str, at: float) -> None: ...


class RouteStore(Protocol):
    """HTTP routes by method and path (tidal.routing), each with its CORS policy."""

    def add_route(self, route: RouteRecord) -> RouteRecord | None:
        """Store ``route``, or return the stored route it conflicts with; LookupError: no such function."""
        ...

    def route(self, route_id: str) -> RouteRecord | None: ...

    def routes(self, function: str | None = None) -> list[RouteRecord]: ...

    def delete_route(self, route_id: str) -> bool: ...

    def sync_spec_routes(
        self, function: str, declared: list[RouteRecord]
    ) -> list[tuple[RouteRecord, RouteRecord]]:
        """Make the function's spec-origin routes ``declared``; the refused ones with their conflicts."""
        ...


class UsageStore(Protocol):
    """Metering: usage sums, filtered activation listings, instance lives (tidal.metering)."""

    def find_activations(
        self, function: str, limit: int = 50, statuses: Sequence[str] = (), since: float = 0.0
    ) -> list[Activation]:
        """The function's newest ``limit`` activations from ``since`` on with one of ``statuses`` (empty: any)."""
        ...

    def usage_sums(self, since: float, until: float, by: str) -> list[UsageSums]:
        """Activations that started in [since, until) summed per group: function, revision, key or day."""
        ...

    def first_activity(self) -> float | None:
        """When the oldest activation or instance life started, or None."""
        ...

    def add_instance_lives(
        self, started: Iterable[InstanceLife], stopped: Iterable[tuple[str, float]]
    ) -> None:
        """Record started instances, then (instance id, stop time) of stopped ones, in one transaction."""
        ...

    def instance_lives(self, since: float, until: float) -> list[InstanceLife]:
        """Instances alive at some moment of [since, until)."""
        ...

    def busy_ms(self, since: float, until: float) -> dict[str, int]:
        """Billed ms per instance of the activations that started in [since, until)."""
        ...

    def close_open_lives(self) -> int:
        """End the lives a killed gateway left open; how many."""
        ...

    def delete_instance_lives(self, before: float, batch: int) -> int:
        """Delete at most ``batch`` lives that ended before ``before``; how many went."""
        ...


class KeepAliveStore(Protocol):
    """Keep-alive (tidal.keepalive): each function's learned idle times, as opaque JSON text."""

    def idle_histograms(self) -> dict[str, str]:
        """Function -> its stored keep-alive state (JSON text), for every function that has one."""
        ...

    def save_idle_histograms(self, states: Mapping[str, str], at: float) -> None:
        """Store each function's state in one transaction; functions no longer stored are skipped."""
        ...


class LimitStore(Protocol):
    """Rate limits and quotas per key (tidal.auth.limits): the limits of a key, the usage counted."""

    def set_key_limits(self, key_id: str, limits: str) -> bool:
        """Replace an active key's limits (JSON text); False when no active key has that id."""
        ...

    def add_quota_usage(self, deltas: Mapping[tuple[str, str, float], tuple[int, float]]) -> None:
        """Add (requests, GB-s) per (key id, period, period start), in one transaction."""
        ...

    def quota_usage(self, since: float) -> list[tuple[str, str, float, int, float]]:
        """(key id, period, period start, requests, GB-s) of the windows that started at ``since`` or later."""
        ...


class Store(
    KeepAliveStore, LimitStore,
    FunctionStore, KeyStore, ActivationStore, ScalingEventStore, RolloutStore, ShadowStore, JobStore,
    TriggerStore, UsageStore, RouteStore, Protocol,
):  # fmt: skip
    """Everything the platform keeps."""

    def close(self) -> None: ...
