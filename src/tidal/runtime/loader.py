"""Import a deployed module from its copied code directory and find its functions.

Used in two places: at deploy time (``python -m tidal.runtime.inspect``, in a throwaway process,
so user code never runs inside the gateway) and in every instance, to build the callable.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from tidal.runtime.typed_input import Validator, target_adapter
from tidal.sdk.decorator import DECLARATION_ATTRIBUTE, FunctionDeclaration


def import_entry(code_dir: Path, module_name: str) -> ModuleType:
    """Import ``module_name`` with ``code_dir`` first on sys.path (the revision's private copy)."""
    code = str(code_dir)
    if code not in sys.path:
        sys.path.insert(0, code)
    return importlib.import_module(module_name)


def declared_functions(module: ModuleType) -> list[tuple[str, FunctionDeclaration]]:
    """The ``@tidal.function`` objects defined in ``module`` itself (not ones it imported)."""
    found = []
    for attribute, value in vars(module).items():
        declaration = getattr(value, DECLARATION_ATTRIBUTE, None)
        if (
            isinstance(declaration, FunctionDeclaration)
            and getattr(value, "__module__", None) == module.__name__
        ):
            found.append((attribute, declaration))
    return found


@dataclass(frozen=True)
class Target:
    """The per-request callable of an instance plus what the worker needs to know about it."""

    call: Callable[..., Any]
    wants_context: bool
    is_async: bool
    is_stream: bool
    is_async_stream: bool
    # The class's optional ``setup_instance()``: run once in each instance, after the fork (or after
    # ``setup()`` in a fresh process), before it reports ready. GPU work belongs there: a template
    # that touched CUDA cannot fork children that use it.
    setup_instance: Callable[[], None] | None = None
    # Model multiplexing (spec ``max_models``): the class's ``load_model(model_id)`` and optional
    # ``unload_model(model_id, model)`` (tidal.runtime.models).
    load_model: Callable[[str], Any] | None = None
    unload_model: Callable[[str, Any], None] | None = None
    # Typed inputs: the validator of the first parameter's pydantic model / dataclass / TypedDict
    # (tidal.runtime.typed_input), built once here; None when the input is untyped.
    input_adapter: Validator | None = None


def build_target(module: ModuleType, attribute: str, is_class: bool) -> tuple[Target, Callable[[], None]]:
    """Return the per-request target and its ``setup()`` (a no-op for plain functions).

    ``setup()`` may run in the template (``load_once``); ``target.setup_instance`` always runs in
    the instance itself (see ``tidal.runtime.worker.serve``).
    """
    obj = getattr(module, attribute, None)
    if obj is None:
        raise LookupError(f"module {module.__name__!r} has no attribute {attribute!r}")
    setup: Callable[[], None] = lambda: None  # noqa: E731
    setup_instance: Callable[[], None] | None = None
    load_model = unload_model = None
    if is_class:
        instance = obj()
        setup = getattr(instance, "setup", setup)
        setup_instance = getattr(instance, "setup_instance", None)
        if setup_instance is not None and not callable(setup_instance):
            raise TypeError(
                f"{attribute}.setup_instance must be a method, not {type(setup_instance).__name__}"
            )
        load_model = getattr(instance, "load_model", None)
        unload_model = getattr(instance, "unload_model", None)
        call = instance.__call__ if callable(instance) else None
        if call is None:
            raise TypeError(f"class {attribute!r} must define __call__(self, payload)")
        function = type(instance).__call__
    else:
        if not callable(obj):
            raise TypeError(f"{attribute!r} in {module.__name__!r} is not callable")
        call = function = obj
    target = Target(
        call=call,
        wants_context=_positional_count(call) >= 2,
        is_async=inspect.iscoroutinefunction(function),
        is_stream=inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function),
        is_async_stream=inspect.isasyncgenfunction(function),
        setup_instance=setup_instance,
        load_model=load_model,
        unload_model=unload_model,
        input_adapter=target_adapter(type(instance) if is_class else obj),
    )
    return target, setup


def _positional_count(call: Callable[..., Any]) -> int:
    """How many positional arguments ``call`` accepts (``*args`` counts as two)."""
    try:
        parameters = inspect.signature(call).parameters.values()
    except (TypeError, ValueError):
        return 1
    count = 0
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return 2
        if parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            count += 1
    return count
