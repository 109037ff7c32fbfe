"""``python -m tidal.runtime.inspect_module CODE_DIR MODULE [HANDLER]``: what a deploy would create.

Runs in a throwaway process at deploy time and prints one JSON document on stdout:
``{"ok": true, "functions": [{"attribute", "is_class", "spec", "is_stream"}]}`` or
``{"ok": false, "error": "..."}``. The gateway validates the specs; nothing here trusts them.
"""

from __future__ import annotations

import inspect
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from tidal.runtime import sandbox
from tidal.runtime.loader import declared_functions, import_entry
from tidal.runtime.typed_input import schema_text


def describe(code_dir: Path, module_name: str, handler: str | None) -> dict[str, Any]:
    try:
        module = import_entry(code_dir, module_name)
    except BaseException as exc:  # the user's module may raise anything, SystemExit included
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return {"ok": False, "error": f"importing {module_name!r} failed: {detail}"}
    if handler is not None:
        target = getattr(module, handler, None)
        if not callable(target):
            return {"ok": False, "error": f"module {module_name!r} has no callable {handler!r}"}
        return {"ok": True, "functions": [{"attribute": handler, "is_class": False, "spec": {}}]}
    try:
        functions = _declared(module)
    except TypedInputError as exc:
        return {"ok": False, "error": str(exc)}
    if not functions:
        return {
            "ok": False,
            "error": f"module {module_name!r} declares no @tidal.function; "
            "for a Lambda-style module pass --handler NAME --style lambda",
        }
    return {"ok": True, "functions": functions}


def _declared(module: Any) -> list[dict[str, Any]]:
    return [
        {
            "attribute": attribute,
            "is_class": declaration.is_class,
            "spec": declaration.spec,
            "is_stream": _is_generator(getattr(module, attribute)),
            "input_schema": _input_schema(getattr(module, attribute)),
        }
        for attribute, declaration in declared_functions(module)
    ]


def _input_schema(obj: Any) -> str:
    """The JSON Schema of a typed input (tidal.runtime.typed_input) as text; "" when untyped.
    A type pydantic cannot handle fails here, at deploy, not at the first call."""
    try:
        return schema_text(obj)
    except Exception as exc:
        raise TypedInputError(
            f"the input type of {getattr(obj, '__name__', obj)!r} cannot be validated: {exc}"
        ) from exc


class TypedInputError(Exception):
    pass


def _is_generator(obj: Any) -> bool:
    """Whether calls of ``obj`` (a function, or a class's ``__call__``) stream: they cannot be batched."""
    call = obj.__call__ if isinstance(obj, type) else obj
    return inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call)


def main() -> None:
    code_dir, module_name = Path(sys.argv[1]), sys.argv[2]
    handler = sys.argv[3] if len(sys.argv) > 3 else None
    # User code may print while importing; keep stdout for the one JSON answer.
    real_stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        sandbox.enter_from_env()  # the same view and user as the function's instances will have
    except sandbox.SandboxError as exc:
        result: dict[str, Any] = {"ok": False, "error": f"the inspection could not enter its sandbox: {exc}"}
    else:
        result = describe(code_dir, module_name, handler)
    real_stdout.write(json.dumps(result, default=str))
    real_stdout.flush()


if __name__ == "__main__":
    main()
