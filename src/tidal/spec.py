"""FunctionSpec: the one validated description of a function, checked once at deploy time.

Every field a function can set is declared here and only here: the decorator's keywords are pinned
to ``FunctionSpec.model_fields`` by a test, the ``tidal deploy`` flags and the README's table are
derived from them. User code declares a spec through ``@tidal.function(...)`` (plain keyword
arguments, no validation there so that importing the SDK stays cheap inside an instance). The
gateway validates the merged declaration + ``tidal.toml`` + CLI overrides here and stores the
result; the hot path only reads plain attributes.

Each field has a level (in its metadata): a revision-level field is part of the immutable revision
(changing it makes a new one); a function-level field (``public``) belongs to the function and
applies to every revision at once.
"""

from __future__ import annotations

import json
import math
import re
import sys
from enum import StrEnum
from typing import Annotated, Any, Literal, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic.json_schema import JsonDict

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
ENV_KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DURATION_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

Level = Literal["revision", "function"]
REVISION: JsonDict = {"level": "revision"}  # part of the revision: a change makes a new one
FUNCTION: JsonDict = {"level": "function"}  # the function's own: applies to every revision at once


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``500ms`` -> 0.5, ``2s`` -> 2.0, ``5m`` -> 300.0, ``1h`` -> 3600.0,
    ``7d`` -> 604800.0, ``90`` -> 90.0.

    >>> parse_duration("1.5m")
    90.0
    """
    match = DURATION_PATTERN.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration: give seconds (90) or a number and a unit (500ms, 2s, 5m, 1h, 7d)"
        )
    return float(match.group(1)) * UNIT_SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The short form of a duration: 60.0 -> ``60s``, 0.5 -> ``500ms``, 0.0 -> ``0s``."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def _seconds(value: Any) -> Any:
    """Numbers are seconds already; strings are parsed; anything else is left to float's checks."""
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, bool):  # float() would take True for 1 second
        raise ValueError("a duration is a number of seconds or a string like 2s, not true/false")
    return value


_DURATION_VALIDATOR = BeforeValidator(_seconds, json_schema_input_type=float | str)
# Seconds as a float; a spec may also say "500ms", "2s", "5m", "1h" (or "90", seconds).
Duration = Annotated[float, _DURATION_VALIDATOR]


def _gpu_count(value: float) -> float:
    """0, a whole count 1..16, or a share 1/k of one GPU (k up to 16); 0.3333 is taken as 1/3.

    A share must divide a GPU evenly, so instances of one function always fill it exactly.
    """
    if value < 0 or not math.isfinite(value):
        raise ValueError("must be 0 (no GPU), a count of GPUs (1, 2 ...) or a share of one (0.5, 0.25)")
    if value >= 1:
        if value != int(value):
            raise ValueError(f"{value:g} GPUs: more than one GPU must be a whole number (1, 2 ... 16)")
        if value > 16:
            raise ValueError(f"{value:g} GPUs: at most 16 per instance")
        return value
    if value > 0:
        parts = 1 / value
        if round(parts) > 16 or abs(parts - round(parts)) > 1e-3 * parts:
            raise ValueError(
                f"a share of a GPU must be 1/k for a whole k up to 16 (0.5, 0.25, 0.2 ...), not {value:g}"
            )
    return value


def _gpu_as_written(value: float) -> float | int:
    """Whole counts are stored as ints: specs (and revision digests) written before shares existed stay equal."""
    return int(value) if value == int(value) else value


# 0 (no GPU), a count of whole GPUs, or a share 1/k of one (several instances on one GPU).
GpuCount = Annotated[float, AfterValidator(_gpu_count), PlainSerializer(_gpu_as_written)]


BATCH_KEYS = {"max_size": "max_size", "size": "max_size", "max_wait": "max_wait_ms", "max_wait_ms": "max_wait_ms",
              "target_p99": "target_p99_ms", "target_p99_ms": "target_p99_ms"}  # fmt: skip


def _batch_input(value: Any) -> Any:
    """``tidal.Batch(...)``, a mapping, or the flag's text: ``32`` or ``max_size=32,max_wait=10ms,target_p99=50ms``.

    In the text, ``max_wait``/``target_p99`` take durations (``10ms``, ``0.05s``; a bare number is
    milliseconds, as in ``max_wait_ms``).

    >>> _batch_input("16,max_wait=5ms")
    {'max_size': '16', 'max_wait_ms': 5.0}
    """
    if hasattr(value, "as_spec"):  # tidal.Batch (the SDK's dataclass)
        return value.as_spec()
    if not isinstance(value, str):
        return value
    parsed: dict[str, Any] = {}
    for position, part in enumerate(piece.strip() for piece in value.split(",") if piece.strip()):
        key, sep, text = part.partition("=")
        if not sep and position == 0:
            key, text = "max_size", part
        if key.strip() not in BATCH_KEYS:
            raise ValueError(f"unknown batch setting {key.strip()!r}; known: max_size, max_wait, target_p99")
        name = BATCH_KEYS[key.strip()]
        if name == "max_size":
            parsed[name] = text.strip()
        else:
            bare = text.strip().replace(".", "", 1).isdigit()
            parsed[name] = float(text) if bare else parse_duration(text) * 1000
    return parsed


class BatchSpec(BaseModel):
    """Batching inside an instance: concurrent requests gathered into one call of a list-taking function."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_size: int = Field(32, ge=1, le=500, description="most items in one call")
    max_wait_ms: float = Field(
        10.0, ge=0, le=10_000, description="longest wait of a batch's first request for company (ms)"
    )
    target_p99_ms: float | None = Field(
        None,
        gt=0,
        le=600_000,
        description="adaptive mode: choose each wait from the measured call time to keep latency within this (ms)",
    )


class Style(StrEnum):
    """How the gateway hands a request to user code."""

    NATIVE = "native"  # tidal function: gets the decoded body (and optionally a Context)
    LAMBDA = "lambda"  # AWS Lambda handler(event, context): the JSON body is the event
    LAMBDA_HTTP = "lambda-http"  # handler gets an API Gateway v2 event, returns {statusCode, ...}


_REVISION_DEFAULTS: dict[str, Any] = {}  # filled once by FunctionSpec.revision_defaults()


def _keep_alive_policy(value: Any) -> Any:
    """A keep-alive policy as its canonical text (``300`` -> ``fixed:5m``); ValueError names what is taken."""
    if value is None:
        return None
    from tidal.keepalive.policy import describe, parse_policy  # small: pure parsing, no I/O

    return describe(parse_policy(value))


RESOURCE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
# Ray's built-in resources: each comes from a field of its own.
RESERVED_RESOURCES = {"CPU": "cpu", "GPU": "gpu", "memory": "memory", "object_store_memory": "none"}


class FunctionSpec(BaseModel):
    """Resources, limits and scaling of one function. Each field's ``description`` says its unit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        description="URL-safe: a lowercase letter first, then `a-z 0-9 - _`, at most 63 characters",
        json_schema_extra={**REVISION, "default_text": "the Python name (`MyModel` → `my_model`)"},
    )
    memory: int = Field(
        512,
        ge=64,
        le=262_144,
        description="MiB per instance (billed with the duration)",
        json_schema_extra=REVISION,
    )
    cpu: float = Field(1.0, gt=0, le=256, description="CPU cores per instance", json_schema_extra=REVISION)
    gpu: GpuCount = Field(
        0,
        description="GPUs per instance: a count (1, 2 ... 16) or a share of one GPU (0.5, 0.25: 1/k);"
        " each instance sees only its own through `CUDA_VISIBLE_DEVICES`",
        json_schema_extra=REVISION,
    )
    accelerator_type: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="on the Ray backend: only nodes with this accelerator (`A100`, `H100`, `T4`:"
        " Ray's `accelerator_type:NAME` resource); the local backend ignores it",
        json_schema_extra={**REVISION, "default_text": "any"},
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="on the Ray backend: custom resources each instance reserves, `{edge = 1}`; it runs only"
        " on nodes that offer them (`ray start --resources`); the local backend ignores them",
        json_schema_extra={**REVISION, "default_text": "`{}`", "flag_metavar": "JSON"},
    )
    timeout: Duration = Field(
        60.0,
        gt=0,
        le=3600,
        description="how long one invocation may run; past it the client gets 504",
        json_schema_extra=REVISION,
    )
    concurrency: int = Field(
        1, ge=1, le=1000, description="requests in flight per instance", json_schema_extra=REVISION
    )
    min_instances: int = Field(
        0, ge=0, le=1000, description="instances kept warm (replaced if they die)", json_schema_extra=REVISION
    )
    max_instances: int = Field(
        10, ge=1, le=1000, description="most instances of one revision", json_schema_extra=REVISION
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="environment variables of each instance", json_schema_extra=REVISION
    )
    public: bool = Field(False, description="invoke without an API key", json_schema_extra=FUNCTION)
    sticky_key: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="a top-level field of the JSON body whose value keeps a caller on one revision "
        "while a split's weights stay (the `x-tidal-key` header wins; no such field: a random draw)",
        json_schema_extra={**FUNCTION, "default_text": "none"},
    )
    # -- elastic scaling (Knative KPA-style; see tidal.autoscale.decider) --
    target_concurrency: float | None = Field(
        None,
        gt=0,
        description="in-flight requests per instance the autoscaler aims at",
        json_schema_extra={**REVISION, "default_text": "70% of `concurrency`"},
    )
    stable_window: Duration = Field(
        60.0,
        ge=1,
        le=3600,
        description="how much recent demand is averaged for normal scaling decisions",
        json_schema_extra=REVISION,
    )
    panic_window: Duration = Field(
        6.0,
        ge=1,
        le=3600,
        description="the short window of demand that can trigger panic mode",
        json_schema_extra=REVISION,
    )
    panic_threshold: float = Field(
        2.0,
        gt=1,
        le=100,
        description="panic when the panic window's demand reaches this x ready capacity",
        json_schema_extra=REVISION,
    )
    max_scale_up_rate: float = Field(
        1000.0,
        gt=1,
        description="per decision, at most this x ready instances",
        json_schema_extra=REVISION,
    )
    max_scale_down_rate: float = Field(
        2.0,
        gt=1,
        description="per decision, at least ready / this instances (2: at most halving)",
        json_schema_extra=REVISION,
    )
    scale_down_delay: Duration = Field(
        0.0,
        ge=0,
        le=3600,
        description="how long demand must stay low before scaling down",
        json_schema_extra=REVISION,
    )
    scale_to_zero_after: Duration = Field(
        60.0,
        ge=1,
        le=86400,
        description="idle time before the last instance goes (with `min_instances` 0)",
        json_schema_extra=REVISION,
    )
    keep_alive: Annotated[str | None, BeforeValidator(_keep_alive_policy)] = Field(
        None,
        description="how long an idle function keeps its template and an instance loaded, and when it"
        " pre-warms: seconds (`300`, `10m`, `fixed:10m`) or `hybrid` (learns the idle times between"
        " calls; `hybrid:bin=1s,range=2m,...`); see docs/keep-alive.md",
        json_schema_extra={**FUNCTION, "default_text": "none (`scale_to_zero_after`, `--template-idle`)"},
    )
    max_queue: int = Field(
        100,
        ge=0,
        le=100_000,
        description="requests held while no instance has room; more get 429",
        json_schema_extra=REVISION,
    )
    load_once: bool = Field(
        False,
        description="run `setup()` in the warm template, so instances fork with the model loaded",
        json_schema_extra=REVISION,
    )
    batch: Annotated[BatchSpec | None, BeforeValidator(_batch_input)] = Field(
        None,
        description="gather concurrent requests into one call of a function that takes a list and returns"
        " a list: `{max_size, max_wait_ms, target_p99_ms}` (`tidal.Batch(...)`; flag: `32,max_wait=10ms`);"
        " `concurrency` then defaults to 2 x `max_size` and may not be below it",
        json_schema_extra={
            **REVISION,
            "default_text": "none",
            "flag_metavar": "SIZE[,max_wait=DUR][,target_p99=DUR]",
        },
    )
    max_models: int = Field(
        0,
        ge=0,
        le=1000,
        description="model multiplexing: each instance keeps up to this many models loaded (LRU) through the"
        " class's `load_model(self, model_id)`; a request names its model with the `x-tidal-model` header and"
        " is routed to an instance that holds it; 0: off",
        json_schema_extra=REVISION,
    )
    # -- async jobs (tidal.jobs): what happens to a job whose attempt failed, and after it ends --
    retries: int = Field(
        2,
        ge=0,
        le=20,
        description="async jobs: attempts after the first that failed retryably (backoff with jitter), then dead",
        json_schema_extra=FUNCTION,
    )
    max_event_age: Duration = Field(
        6 * 3600.0,
        ge=1,
        le=7 * 86400,
        description="async jobs: no attempt starts this long after the job was submitted (it goes dead)",
        json_schema_extra={**FUNCTION, "default_text": "6h"},
    )
    on_success: str | None = Field(
        None,
        pattern=NAME_PATTERN.pattern,
        description="async jobs: a function invoked (as a job) with the record of each job that succeeded",
        json_schema_extra={**FUNCTION, "default_text": "none"},
    )
    on_failure: str | None = Field(
        None,
        pattern=NAME_PATTERN.pattern,
        description="async jobs: a function invoked (as a job) with the record of each job that failed or went dead",
        json_schema_extra={**FUNCTION, "default_text": "none"},
    )
    # -- event triggers (tidal.triggers): cron schedules, bucket objects, queue messages --
    triggers: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=32,
        description="event triggers, each a job of this function per event: `tidal.cron(...)`, `tidal.bucket(...)`,"
        " `tidal.queue(...)` (flag: a JSON list; see Event triggers)",
        json_schema_extra={**FUNCTION, "default_text": "`[]`", "flag_metavar": "JSON"},
    )
    # -- HTTP routes and CORS (tidal.routing) --
    routes: list[str] = Field(
        default_factory=list,
        max_length=64,
        description='HTTP routes to this function, `"GET /items/{id}"` (`{name+}`: the rest of the path;'
        " a bare path: any method); path parameters and the query reach the function (see Routes)",
        json_schema_extra={**FUNCTION, "default_text": "`[]`", "flag_metavar": "JSON"},
    )
    cors: dict[str, Any] = Field(
        default_factory=dict,
        description="CORS for its routes and `POST /fn/NAME`: `{origins = [...], methods, headers, max_age,"
        " credentials}`; preflights are answered without waking an instance",
        json_schema_extra={**FUNCTION, "default_text": "none"},
    )

    @field_validator("routes")
    @classmethod
    def _routes_are_valid(cls, value: list[str]) -> list[str]:
        from tidal.routing.spec import check_spec_routes

        return check_spec_routes(value)

    @field_validator("cors", mode="before")
    @classmethod
    def _cors_is_valid(cls, value: Any) -> dict[str, Any]:
        from tidal.routing.spec import check_spec_cors

        return check_spec_cors(value)

    @field_validator("name")
    @classmethod
    def _name_is_url_safe(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(
                "must start with a lowercase letter and hold only lowercase letters, digits, '-' or '_'"
                " (at most 63 characters)"
            )
        return value

    @field_validator("triggers")
    @classmethod
    def _triggers_are_valid(cls, value: list[dict[str, Any]], info: ValidationInfo) -> list[dict[str, Any]]:
        from tidal.triggers.model import TriggerError, check_trigger  # croniter: loaded when a spec has one

        checked = []
        for index, raw in enumerate(value):
            try:
                checked.append(check_trigger(raw, str(info.data.get("name", ""))))
            except TriggerError as exc:
                raise ValueError(f"triggers[{index}]: {exc}") from None
        return checked

    @field_validator("resources")
    @classmethod
    def _resources_are_custom(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if not RESOURCE_PATTERN.match(name):
                raise ValueError(f"{name!r} is not a resource name (letters, digits, `_ - . :`, at most 64)")
            if name in RESERVED_RESOURCES:
                raise ValueError(f"{name!r} is set by its own field ({RESERVED_RESOURCES[name]}), not here")
            if not (0 < amount <= 1_000_000) or math.isnan(amount):
                raise ValueError(f"{name}: the amount must be above 0 and at most 1000000, got {amount:g}")
        return value

    @field_validator("env")
    @classmethod
    def _env_keys_are_identifiers(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [key for key in value if not ENV_KEY_PATTERN.match(key)]
        if bad:
            raise ValueError(f"invalid environment variable name(s): {', '.join(sorted(bad))}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _batch_fills_an_instance(cls, raw: Any) -> Any:
        """A batched function left at the default concurrency admits 2 x max_size requests: one batch
        running, the next one gathering (``max_size=32`` -> ``concurrency=64``, capped at 1000)."""
        if not isinstance(raw, dict) or raw.get("batch") is None or raw.get("concurrency") is not None:
            return raw
        try:
            size = BatchSpec.model_validate(_batch_input(raw["batch"])).max_size
        except (ValueError, TypeError):
            return raw  # the batch field's own validation names the problem
        return {**raw, "concurrency": min(1000, 2 * size)}

    @model_validator(mode="after")
    def _bounds_are_ordered(self) -> FunctionSpec:
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"min_instances ({self.min_instances}) is above max_instances ({self.max_instances})"
            )
        if self.panic_window > self.stable_window:
            raise ValueError(
                f"panic_window ({self.panic_window:g}) is longer than stable_window ({self.stable_window:g})"
            )
        if self.batch is not None and self.concurrency < self.batch.max_size:
            raise ValueError(
                f"concurrency ({self.concurrency}) is below batch.max_size ({self.batch.max_size}): an instance"
                " could never fill a batch; raise it or leave it out (it then becomes 2 x max_size)"
            )
        if self.max_models and self.batch is not None:
            raise ValueError(
                "max_models and batch cannot be combined: a batch may mix requests for several models"
            )
        if self.target_concurrency is not None and self.target_concurrency > self.concurrency:
            raise ValueError(
                f"target_concurrency ({self.target_concurrency:g}) is above concurrency ({self.concurrency})"
            )
        return self

    @property
    def target(self) -> float:
        """In-flight requests per instance the autoscaler aims at: 70% of ``concurrency`` by default.

        >>> FunctionSpec(name="x", concurrency=10).target, FunctionSpec(name="x").target
        (7.0, 1.0)
        """
        if self.target_concurrency is not None:
            return self.target_concurrency
        return max(1.0, 0.7 * self.concurrency)

    def revision_fields(self) -> dict[str, Any]:
        """What a revision stores and its digest covers: every field but the function-level ones.

        >>> "public" in FunctionSpec(name="x", public=True).revision_fields()
        False
        """
        return self.model_dump(mode="json", exclude=set(FUNCTION_LEVEL_FIELDS))

    @staticmethod
    def revision_defaults() -> dict[str, Any]:
        """Every revision-level field's default, as stored (JSON): a revision's identity leaves out
        fields at their default, so a field added in a later release changes no stored revision.
        """
        if not _REVISION_DEFAULTS:
            _REVISION_DEFAULTS.update(FunctionSpec(name="defaults").revision_fields())
            del _REVISION_DEFAULTS["name"]
        return _REVISION_DEFAULTS

    def function_settings(self) -> dict[str, Any]:
        """The function-level fields only: they apply to every revision, and change none.

        >>> sorted(FunctionSpec(name="x", public=True).function_settings())[:4]
        ['cors', 'keep_alive', 'max_event_age', 'on_failure']
        """
        return self.model_dump(mode="json", include=set(FUNCTION_LEVEL_FIELDS))


def _extra(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def field_level(name: str) -> Level:
    """The level marked in a field's metadata; a field without one is a bug (a test checks all)."""
    level = _extra(FunctionSpec.model_fields[name]).get("level")
    if level not in ("revision", "function"):
        raise LookupError(f"FunctionSpec.{name} has no level in its metadata")
    return cast(Level, level)


def is_duration(field: FieldInfo) -> bool:
    """Whether a field is a ``Duration`` (takes ``2s``, ``500ms``, ...)."""
    return _DURATION_VALIDATOR in field.metadata


FUNCTION_LEVEL_FIELDS: frozenset[str] = frozenset(
    name for name in FunctionSpec.model_fields if field_level(name) == "function"
)
DURATION_FIELDS: frozenset[str] = frozenset(
    name for name, field in FunctionSpec.model_fields.items() if is_duration(field)
)


class SpecError(ValueError):
    """A spec refused at deploy time; the message names every offending field."""


def validate_spec(raw: dict[str, Any]) -> FunctionSpec:
    """Validate a declared spec, turning pydantic's report into one line per field.

    >>> validate_spec({"name": "echo", "memory": 0})
    Traceback (most recent call last):
    ...
    tidal.spec.SpecError: spec.memory: Input should be greater than or equal to 64
    """
    try:
        return FunctionSpec.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "spec"
            lines.append(f"spec.{field}: {error['msg']}" if error["loc"] else f"spec: {error['msg']}")
        raise SpecError("; ".join(lines)) from None


def default_name(python_name: str) -> str:
    """A function's name when the decorator gives none: ``MyEmbedder`` -> ``my_embedder``."""
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", python_name).lower()
    return snake.strip("_") or "function"


# -- the README's table ---------------------------------------------------------------------------


def default_text(name: str) -> str:
    """A field's default as the docs show it: ``512``, ``60s``, ``false``, ``{}``."""
    field = FunctionSpec.model_fields[name]
    shown = _extra(field).get("default_text")
    if shown is not None:
        return str(shown)
    value = field.get_default(call_default_factory=True)
    if is_duration(field):
        return format_duration(value)
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{json.dumps(value)}`"
    return json.dumps(value)


def markdown_table() -> str:
    """The spec's fields as the README's Markdown table (``python -m tidal.spec --markdown``)."""
    rows = ["| field | default | meaning |", "| --- | --- | --- |"]
    for name, field in FunctionSpec.model_fields.items():
        meaning = field.description or ""
        if field_level(name) == "function":
            meaning += " (function-level: a change makes no new revision)"
        rows.append(f"| `{name}` | {default_text(name)} | {meaning} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m tidal.spec --markdown   (prints the README's spec table)")
    sys.stdout.write(markdown_table())
