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
        return self


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
