"""FunctionSpec: the one validated description of a function, checked once at deploy time.

User code declares a spec through ``@tidal.function(...)`` (plain keyword arguments, no validation
there so that importing the SDK stays cheap inside an instance). The gateway validates the merged
declaration + CLI overrides here and stores the result; the hot path only reads plain attributes.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
ENV_KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Style(StrEnum):
    """How the gateway hands a request to user code."""

    NATIVE = "native"  # tidal function: gets the decoded body (and optionally a Context)
    LAMBDA = "lambda"  # AWS Lambda handler(event, context): the JSON body is the event
    LAMBDA_HTTP = "lambda-http"  # handler gets an API Gateway v2 event, returns {statusCode, ...}


class FunctionSpec(BaseModel):
    """Resources, limits and scaling of one function. Units are in the field names' docs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    memory: int = Field(512, ge=64, le=262_144, description="memory per instance, MiB")
    cpu: float = Field(1.0, gt=0, le=256, description="CPU cores per instance")
    gpu: int = Field(0, ge=0, le=16, description="GPUs per instance")
    timeout: float = Field(60.0, gt=0, le=3600, description="seconds one invocation may run")
    concurrency: int = Field(1, ge=1, le=1000, description="requests in flight per instance")
    min_instances: int = Field(0, ge=0, le=1000)
    max_instances: int = Field(10, ge=1, le=1000)
    env: dict[str, str] = Field(default_factory=dict, description="environment of each instance")
    public: bool = Field(False, description="invoke without an API key")
    # -- elastic scaling (Knative KPA-style; see tidal.autoscale.decider) --
    target_concurrency: float | None = Field(
        None,
        gt=0,
        description="in-flight requests per instance the autoscaler aims at (default 70% of concurrency)",
    )
    stable_window: float = Field(60.0, ge=1, le=3600, description="seconds averaged for scaling decisions")
    panic_window: float = Field(6.0, ge=1, le=3600, description="short window that triggers panic mode")
    panic_threshold: float = Field(2.0, gt=1, le=100, description="panic when demand reaches this x capacity")
    max_scale_up_rate: float = Field(1000.0, gt=1, description="at most this x ready instances per decision")
    max_scale_down_rate: float = Field(2.0, gt=1, description="at least ready / this instances per decision")
    scale_down_delay: float = Field(
        0.0, ge=0, le=3600, description="seconds the demand must stay low to scale down"
    )
    scale_to_zero_after: float = Field(
        60.0, ge=1, le=86400, description="idle seconds before the last instance goes"
    )
    max_queue: int = Field(
        100, ge=0, le=100_000, description="requests held while no instance has room; more get 429"
    )
    load_once: bool = Field(
        False, description="run setup() in the template so instances fork with the model loaded"
    )

    @field_validator("name")
    @classmethod
    def _name_is_url_safe(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(
                "must start with a lowercase letter and hold only lowercase letters, digits, '-' or '_'"
                " (at most 63 characters)"
            )
        return value

    @field_validator("env")
    @classmethod
    def _env_keys_are_identifiers(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [key for key in value if not ENV_KEY_PATTERN.match(key)]
        if bad:
            raise ValueError(f"invalid environment variable name(s): {', '.join(sorted(bad))}")
        return value

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
