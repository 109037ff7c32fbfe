"""The per-invocation context handed to user code (Lambda-compatible attribute names)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Context:
    """Who is being invoked and how much time is left.

    Both the tidal names (``activation_id``, ``function``) and the AWS Lambda names
    (``aws_request_id``, ``function_name``, ``memory_limit_in_mb``,
    ``get_remaining_time_in_millis()``) are provided so Lambda handlers run unmodified.
    """

    activation_id: str
    function: str
    revision: str
    instance: str
    memory_mb: int
    deadline: float  # wall-clock epoch seconds
    headers: dict[str, str] = field(default_factory=dict)
    # Model multiplexing (spec ``max_models``): the model the request named (``x-tidal-model``) and
    # what the class's ``load_model`` returned for it.
    model_id: str | None = None
    model: Any = None
    # A request that came by an HTTP route (``tidal route add GET /items/{id} NAME``): the path's
    # parameters ({"id": "42"}) and the query string ({"x": "1"}; a repeated key joins with ",").
    path_params: dict[str, str] = field(default_factory=dict)
    query_params: dict[str, str] = field(default_factory=dict)

    @property
    def aws_request_id(self) -> str:
        return self.activation_id

    @property
    def function_name(self) -> str:
        return self.function

    @property
    def function_version(self) -> str:
        return self.revision

    @property
    def memory_limit_in_mb(self) -> int:
        return self.memory_mb

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:tidal:function:local:{self.function}"

    @property
    def log_group_name(self) -> str:
        return f"/tidal/{self.function}"

    @property
    def log_stream_name(self) -> str:
        return self.instance

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.time()) * 1000))
