"""Typed inputs: a native function whose first parameter is annotated with a pydantic model, a
dataclass or a TypedDict gets its JSON body validated before it runs.

This runs in the instance (and, for the schema, in the sandboxed deploy inspection), never in
the gateway: function code is untrusted, and the gateway does not import it. The adapter is built
once when the instance loads; an invalid body ends the call with ``InvalidInput``, which the
worker answers as a caller-fault Error frame carrying pydantic's error list (a 422 for the client).
pydantic is imported only when a function has such a parameter: untyped functions pay nothing.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import typing
from collections.abc import Callable
from typing import Any, Protocol

MAX_SCHEMA_BYTES = 256 * 1024  # a larger schema is not stored (the input is still validated)


class Validator(Protocol):
    def validate_python(self, value: Any) -> Any: ...

    def json_schema(self) -> dict[str, Any]: ...


class InvalidInput(Exception):
    """The body does not fit the function's input type: ``errors`` is pydantic's list, as JSON text."""

    def __init__(self, summary: str, errors: str) -> None:
        super().__init__(summary)
        self.errors = errors


def input_type(call: Callable[..., Any], skip_self: bool = False) -> Any | None:
    """The annotation of the first parameter of ``call`` when it is a pydantic model, a dataclass or
    a TypedDict; None otherwise (no annotation, ``dict``, ``list[...]``, or one that cannot be resolved).
    """
    try:
        parameters = list(inspect.signature(call).parameters.values())
        hints = typing.get_type_hints(call)
    except (TypeError, ValueError, NameError, AttributeError):
        return None
    if skip_self and parameters:
        parameters = parameters[1:]
    if not parameters or parameters[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        return None
    annotation = hints.get(parameters[0].name)
    return annotation if _is_typed(annotation) else None


def _is_typed(annotation: Any) -> bool:
    if not isinstance(annotation, type):
        return False
    if dataclasses.is_dataclass(annotation) or typing.is_typeddict(annotation):
        return True
    extensions = sys.modules.get("typing_extensions")  # its TypedDict is another class before 3.12
    if extensions is not None and extensions.is_typeddict(annotation):
        return True
    pydantic = sys.modules.get("pydantic")  # a pydantic model means pydantic is imported already
    return pydantic is not None and issubclass(annotation, pydantic.BaseModel)


def adapter_for(annotation: Any) -> Validator:
    from pydantic import TypeAdapter  # only typed functions load pydantic

    adapter: Validator = TypeAdapter(annotation)
    return adapter


def target_adapter(obj: Any) -> Validator | None:
    """The validator of a function (or a class's ``__call__``), or None when its input is untyped."""
    annotation = input_type(obj.__call__, skip_self=True) if isinstance(obj, type) else input_type(obj)
    return adapter_for(annotation) if annotation is not None else None


def validate(adapter: Validator, event: Any) -> Any:
    """The body as the function's type (model / dataclass instance, or a dict for a TypedDict)."""
    from pydantic import ValidationError

    try:
        return adapter.validate_python(event)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        summary = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}" for e in errors
        )
        raise InvalidInput(summary, json.dumps(errors, default=str)) from None


def schema_text(obj: Any) -> str:
    """The JSON Schema of the function's input as JSON text, "" when untyped (or beyond reason)."""
    adapter = target_adapter(obj)
    if adapter is None:
        return ""
    text = json.dumps(adapter.json_schema())
    return text if len(text) <= MAX_SCHEMA_BYTES else ""
