"""Records the store keeps, and the pure rules about them (a revision's digest, a valid traffic split).

msgspec Structs: cheap to build on the hot path, cheap to encode.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Collection, Iterable
from typing import Any

import msgspec


class Revision(msgspec.Struct, frozen=True):
    """An immutable snapshot of a function: code digest + entry + revision-level spec."""

    id: str  # "<function>-00001", numbered per function like Knative's revisions
    function: str
    number: int
    digest: str  # revision_digest(...) of the fields below: equal digest = identical deploy
    code_digest: str
    module: str
    attribute: str
    is_class: bool
    style: str
    # Revision-level spec fields only; function-level ones (``public``) live in FunctionRecord.settings.
    spec: dict[str, object]
    created_at: float
    # The key of the environment its bundle's requirements were installed into ("" = tidal's own
    # virtualenv: the bundle declares none). Derived from the code, so not part of ``digest``.
    environment: str = ""
    # The JSON Schema of the function's typed input (a pydantic model, dataclass or TypedDict
    # parameter), found when the bundle was inspected; "" when the input is untyped.
    input_schema: str = ""


class TrafficTarget(msgspec.Struct, frozen=True):
    """A share of a function's calls. A tagged target at 0 percent is reachable by its tag only."""

    revision: str
    percent: int
    tag: str | None = None


class FunctionRecord(msgspec.Struct, frozen=True):
    """A function apart from its revisions: function-level settings and where its traffic goes."""

    name: str
    created_at: float
    settings: dict[str, object]  # function-level spec fields, today only {"public": bool}
    traffic: list[TrafficTarget]  # empty: deployed but not served


class KeyRecord(msgspec.Struct, frozen=True):
    id: str
    scopes: list[str]
    created_at: float
    description: str = ""
    revoked_at: float | None = None
    limits: str = "{}"  # rate limit and quotas of the key, JSON (tidal.auth.limits); "{}": none


class Activation(msgspec.Struct):
    """The record of one invocation, billed to the millisecond.

    Fields are also the activations table's columns, in this order (the store derives its SQL from
    ``__struct_fields__``); add new ones at the end, with a default and a migration.
    """

    id: str
    function: str
    revision: str
    instance: str
    start: float  # epoch seconds when the gateway received the request
    duration_ms: float  # gateway-observed, request in to answer out (cold start included)
    billed_ms: int  # instance time rounded up to the next millisecond, at least 1
    memory_mb: int
    cold: bool
    status: str  # "ok" | "error" | "timeout" | "cancelled" | "lost" | "rejected"
    http_status: int
    error_type: str = ""
    error_message: str = ""
    cpu_ms: float = 0.0
    peak_rss_kb: int = 0
    # Where the time went. queue_ms: waiting for an instance with room (a cold start, or all busy).
    # For a cold start also the new instance's start (backend start to Ready), of which import_ms
    # went to importing the module and setup_ms to setup() (the model load).
    queue_ms: float = 0.0
    instance_start_ms: float = 0.0
    import_ms: float = 0.0
    setup_ms: float = 0.0
    logs: str = ""
    key_id: str = ""  # the caller's API key id; "" for a public call made without a key
    trigger: str = "http"  # what made the call: "http" (later also job, cron, bucket, queue)
    job: str = ""  # the async job this call was an attempt of ("" for any other call)
    trigger_id: str = ""  # the event trigger (tidal.triggers) whose event this call served
    gpus: float = 0.0  # GPUs the instance held (a count, or a share such as 0.5): GPU-s = gpus x billed
    batch_size: int = 0  # batched functions: how many requests shared the call (0: not batched)
    model: str = ""  # multiplexed functions (max_models): the model the request named
    # How the instance of a cold call started: "fork" (from a warm template), "template-built" (the
    # template was built for it) or "spawn"; "" for a warm call (or when the backend does not say).
    cold_detail: str = ""


# An Activation as the store inserts it: its fields in order (msgspec.structs.astuple). The journal
# folder moves records from the journal into the store as rows, never building Activation objects.
ActivationRow = tuple[Any, ...]
# Where a retention sweep cuts the activations: the (start, rowid) below which they go, oldest first.
ActivationCutoff = tuple[float, int]


def revision_digest(
    code_digest: str, module: str, attribute: str, is_class: bool, style: str, spec: dict[str, object],
    environment: str = "",
) -> str:  # fmt: skip
    """The identity of a deploy: equal digests mean an identical revision (a redeploy is "unchanged").

    ``spec`` holds revision-level fields only, so flipping a function-level setting such as
    ``public`` does not make a new revision. Fields at their default are left out, so a release
    that adds a field (with a default) makes no new revision of code that does not set it.
    ``environment`` counts only when set. The deployer and migrations 2 and 9 call this.
    """
    from tidal.spec import FunctionSpec  # here: the store needs pydantic only to make a digest

    defaults = FunctionSpec.revision_defaults()
    identity = {
        name: value for name, value in spec.items() if name not in defaults or defaults[name] != value
    }
    parts: list[object] = [code_digest, module, attribute, is_class, style, identity]
    if environment:
        parts.append(environment)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def check_traffic(function: str, targets: list[TrafficTarget], revision_ids: Collection[str]) -> None:
    """Raise ValueError unless ``targets`` is a valid split of ``function``'s calls.

    Valid: empty (not served), or percents in 0..100 summing to 100 (e.g. 90 + 10), each revision
    one of ``revision_ids`` (the function's own) at most once, each tag used at most once.
    """
    if not targets:
        return
    for target in targets:
        if target.revision not in revision_ids:
            raise ValueError(f"revision {target.revision!r} is not a revision of function {function!r}")
        if not 0 <= target.percent <= 100:
            raise ValueError(f"traffic to {target.revision} is {target.percent}%: must be 0..100")
    repeated = _repeated(target.revision for target in targets)
    if repeated:
        raise ValueError(f"revision(s) {repeated} appear more than once in the traffic of {function!r}")
    repeated_tags = _repeated(target.tag for target in targets if target.tag is not None)
    if repeated_tags:
        raise ValueError(f"tag(s) {repeated_tags} appear more than once in the traffic of {function!r}")
    total = sum(target.percent for target in targets)
    if total != 100:
        raise ValueError(f"traffic of {function!r} sums to {total}%, not 100%")


def _repeated(names: Iterable[str]) -> list[str]:
    counts = Counter(names)
    return sorted(name for name, count in counts.items() if count > 1)


# -- canary rollouts and per-revision windows (tidal.rollout) -------------------------------------------


class RevisionWindow(msgspec.Struct, frozen=True):
    """One revision's activations in a time window, as the store counts them; tidal.rollout.stats
    turns this into error rates and percentiles."""

    revision: str
    statuses: dict[str, int]  # activation status -> count, e.g. {"ok": 97, "error": 3}
    cold: int  # cold starts among them
    warm_ms: list[float]  # duration_ms of the warm calls, ascending (a new revision always starts cold)


ROLLOUT_STATES = ("running", "promoted", "rolled_back", "aborted")


class Rollout(msgspec.Struct, frozen=True):
    """A canary rollout of ``canary`` over ``stable``: at step ``step`` the canary gets
    ``steps[step]`` percent. Fields are the rollouts table's columns, in this order."""

    id: int  # 0 until stored
    function: str
    canary: str
    stable: str
    steps: list[int]  # e.g. [5, 25, 50, 100]: increasing, ending at 100
    interval_s: float  # how long each step runs before it is judged
    max_error_rate: float  # a fraction: 0.01 is 1%
    max_p99_ms: float | None  # None: latency is not judged
    min_requests: int  # canary calls a step needs before it is judged
    step: int  # index into ``steps``
    step_started_at: float  # epoch s: the judged window is [step_started_at, now)
    state: str  # one of ROLLOUT_STATES
    reason: str = ""
    created_at: float = 0.0
    finished_at: float | None = None

    @property
    def percent(self) -> int:
        return self.steps[self.step]


class RolloutDecision(msgspec.Struct, frozen=True):
    """One entry of a rollout's history: what was decided, why, and the window's numbers."""

    rollout: int
    at: float
    step: int
    percent: int
    verdict: str  # start | wait | next | promote | roll_back | abort
    reason: str
    canary: dict[str, object] = {}
    stable: dict[str, object] = {}


# -- shadow traffic (tidal.shadow) ----------------------------------------------------------------------


class ShadowConfig(msgspec.Struct, frozen=True):
    """Copies of ``percent`` % of a function's calls go to its revision ``revision``, whose answers
    are compared with the primary's by ``compare``. Fields are the shadows table's columns."""

    function: str
    revision: str  # the candidate
    percent: int  # 0..100
    compare: str  # a comparator spec (tidal.shadow.compare): exact, abs<=T, rel<=T, cosine>=T
    max_in_flight: int  # copies running at once at most; one more is dropped (and counted)
    created_at: float


class ShadowResult(msgspec.Struct, frozen=True):
    """One copy that reached the candidate, and what came of it. Fields are the shadow_results
    table's columns, in this order."""

    function: str
    revision: str  # the candidate's
    primary_revision: str
    activation: str  # the primary's (the client's call)
    candidate_activation: str
    at: float  # epoch s when the copy started
    verdict: str  # "agree" | "disagree" | "error" (the candidate failed: no comparison)
    detail: str  # a short diff, or the candidate's error
    score: float | None  # the comparator's score (largest difference, smallest cosine)
    primary_ms: float
    candidate_ms: float


SHADOW_SKIPS = ("dropped", "primary_failed", "streamed")  # sampled calls that were not compared


# -- async jobs (tidal.jobs) -----------------------------------------------------------------------------

JOB_STATES = ("queued", "running", "succeeded", "failed", "dead", "cancelled")
FINAL_JOB_STATES = frozenset({"succeeded", "failed", "dead", "cancelled"})
CALLBACK_STATES = ("", "pending", "delivered", "failed")  # "": the job has no callback URL


class Job(msgspec.Struct):
    """A durable async invocation and what became of it. Fields are the jobs table's columns.

    ``attempts`` counts attempts started (a claim adds one); ``lease_until`` is when a running
    attempt is presumed lost with its gateway. ``owner`` is the key id that submitted it ("" for
    an anonymous call of a public function, "platform" for a destination's job).
    """

    id: str
    function: str
    state: str  # one of JOB_STATES
    body: bytes
    content_type: str
    context: dict[str, object]  # routing and HTTP details: revision, sticky_key, headers, method, path, query
    owner: str
    scopes: list[str]  # the submitting key's scopes when it submitted (it runs with them)
    idempotency_key: str | None
    request_digest: str  # of the body and content type: a key reused for another request is refused
    callback_url: str | None
    max_attempts: int  # the function's `retries` + 1, when submitted
    expires_at: float  # submitted + the function's `max_event_age`: no attempt starts later
    created_at: float
    run_at: float  # while queued: when the next attempt is due
    attempts: int = 0
    lease_until: float = 0.0
    started_at: float | None = None  # the latest attempt's start
    finished_at: float | None = None
    revision: str = ""  # the revision of the latest attempt
    result: bytes | None = None
    result_type: str = ""  # the result's content type
    error_type: str = ""
    error_message: str = ""
    error_kind: str = ""  # the outcome kind of the failed attempt (tidal.invoke.outcome.OutcomeKind)
    activation: str = ""  # the latest attempt's activation id
    source: str = ""  # the job whose destination (on_success/on_failure) this job is
    callback_state: str = ""  # one of CALLBACK_STATES
    callback_attempts: int = 0
    callback_at: float = 0.0  # when the next delivery is due (while pending)
    callback_error: str = ""


# -- event triggers (tidal.triggers) ---------------------------------------------------------------------

TRIGGER_ORIGINS = ("spec", "cli")  # declared in the function's spec, or added by hand


class TriggerRecord(msgspec.Struct):
    """A trigger of a function and its running state. Fields are the triggers table's columns.

    ``config`` is ``tidal.triggers.model.check_trigger``'s output (kind and every option);
    ``state`` is the source's own: cron's ``decided_until`` / ``last_fire`` / ``missed``, a bucket
    scan's cursor. ``last_error`` is the latest run-time failure ("" once it runs again).
    """

    id: str
    function: str
    kind: str  # cron | bucket | queue
    config: dict[str, object]
    origin: str  # one of TRIGGER_ORIGINS
    created_at: float
    state: dict[str, object] = {}
    last_error: str = ""
    last_error_at: float = 0.0
    events: int = 0  # invocations submitted (jobs created)
    last_event_at: float = 0.0


# -- metering: usage sums and instance lives (tidal.metering) ------------------------------------------


class UsageSums(msgspec.Struct, frozen=True):
    """One group of activations as the store sums them (tidal.metering.usage prices it).

    ``mb_ms`` is the sum of billed_ms x memory_mb and ``gpu_ms`` of billed_ms x gpus: exact
    integers (GPU shares aside), so GB-s and GPU-s are computed once, from the sums.
    """

    key: str  # the function, revision, key id or UTC day ("2026-11-26") of the group
    requests: int
    errors: int  # activations whose status is not "ok"
    billed_ms: int
    mb_ms: int
    gpu_ms: float


class InstanceLife(msgspec.Struct, frozen=True):
    """One instance from start to stop (``stopped`` 0: still running). Fields are the
    instance_lives table's columns, in this order."""

    id: str
    function: str
    revision: str
    memory_mb: int
    gpus: float
    started: float  # epoch s: when the backend started its process
    stopped: float = 0.0  # epoch s: when its connection ended (stopped, or lost)
    cold_detail: str = ""  # fork | template-built | spawn
