"""``@tidal.function``: marks a plain function or a class as a deployable function.

A plain function is called once per request. A class is instantiated once per instance; its
optional ``setup()`` runs before the instance reports ready (load the model there), and its
``__call__`` serves each request:

    @tidal.function(memory=1024, concurrency=4)
    class Embed:
        def setup(self) -> None:
            self.model = load()

        def __call__(self, payload: dict) -> dict:
            return {"embeddings": self.model(payload["texts"])}

An optional ``setup_instance()`` runs once in every instance, after ``setup()``, before it reports
ready. With ``load_once=True`` ``setup()`` runs once in the warm template and instances are forked
from it; ``setup_instance()`` still runs in each instance. GPU work goes there: a template that
initialised CUDA cannot fork instances that use it. Load on the CPU in ``setup()``, move to the
instance's GPU in ``setup_instance()``:

    @tidal.function(gpu=1, load_once=True)
    class Embed:
        def setup(self) -> None:  # in the template: shared by every forked instance
            self.model = load()  # on the CPU; no torch.cuda calls beyond is_available()

        def setup_instance(self) -> None:  # in each instance: it sees only its own GPU
            self.model.to("cuda")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from tidal.sdk.batch import Batch

DECLARATION_ATTRIBUTE = "__tidal_function__"

Target = TypeVar("Target", bound=Callable[..., Any])

# Every keyword the decorator takes: the fields of tidal.spec.FunctionSpec, in its order. Written
# out because this module must not import pydantic (it is on every instance's cold path);
# tests/unit/test_spec_registry.py fails, naming the field, when the two lists differ.
SPEC_FIELDS: tuple[str, ...] = (
    "name",
    "memory",
    "cpu",
    "gpu",
    "accelerator_type",
    "resources",
    "timeout",
    "concurrency",
    "min_instances",
    "max_instances",
    "env",
    "public",
    "sticky_key",
    "target_concurrency",
    "stable_window",
    "panic_window",
    "panic_threshold",
    "max_scale_up_rate",
    "max_scale_down_rate",
    "scale_down_delay",
    "scale_to_zero_after",
    "keep_alive",
    "max_queue",
    "load_once",
    "batch",
    "max_models",
    "retries",
    "max_event_age",
    "on_success",
    "on_failure",
    "triggers",
    "routes",
    "cors",
)


@dataclass(frozen=True)
class FunctionDeclaration:
    """What the decorator recorded: the raw spec keywords, validated later at deploy time."""

    python_name: str
    is_class: bool
    spec: dict[str, Any] = field(default_factory=dict)


@overload
def function(target: Target, /) -> Target: ...
@overload
def function(target: None = None, /, **spec: Any) -> Callable[[Target], Target]: ...


def function(target: Any = None, /, **spec: Any) -> Any:
    """Declare a function. Usable bare (``@function``) or with spec keywords (``@function(memory=1024)``).

    Any field of the spec is a keyword; durations may be strings (``timeout="30s"``). Values are
    checked at deploy time, not here.
    """
    unknown = [key for key in spec if key not in SPEC_FIELDS]
    if unknown:
        raise TypeError(f"unknown spec field(s) {unknown}; known: {', '.join(SPEC_FIELDS)}")

    declared = dict(spec)
    if isinstance(declared.get("batch"), Batch):  # stored as the plain mapping tidal.toml would give
        declared["batch"] = declared["batch"].as_spec()

    def mark(obj: Target) -> Target:
        declaration = FunctionDeclaration(obj.__name__, isinstance(obj, type), declared)
        setattr(obj, DECLARATION_ATTRIBUTE, declaration)
        return obj

    return mark(target) if target is not None else mark
