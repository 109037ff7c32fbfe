"""``tidal deploy``: one option per spec field, built from FunctionSpec, and the deploy itself
(uv's lines while a bundle's requirements install; ``--canary`` starts a rollout after it).
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from rich.markup import escape

from tidal import cli
from tidal.cli import app, fail, out, seconds, settings
from tidal.client import TidalError
from tidal.spec import DURATION_FIELDS, FunctionSpec, default_text, is_duration

# Flags whose "off" side is not --no-FLAG.
OFF_SWITCHES = {"public": "--private"}


def spec_flag(name: str) -> str:
    """The ``tidal deploy`` flag of a spec field: ``min_instances`` -> ``--min-instances``."""
    return "--" + name.replace("_", "-")


def spec_flag_parameter(name: str, field: FieldInfo) -> inspect.Parameter:
    """One ``tidal deploy`` option for a FunctionSpec field, typed and described from the field.

    None is "not given": the spec from the code and tidal.toml stands.
    """
    flag = spec_flag(name)
    # Backticks are Markdown for the README's table; a terminal shows them as they are.
    help_text = f"{field.description} (default {default_text(name)})".replace("`", "")
    option_type: Any = field.annotation
    decls = [flag]
    metavar = None
    if is_duration(field):
        option_type, metavar = str, "DURATION"  # parsed by seconds(): 2s, 500ms, 5m, 1h
    elif option_type is bool:
        decls = [f"{flag}/{OFF_SWITCHES.get(name, '--no-' + flag[2:])}"]
    elif typing.get_origin(option_type) is dict:
        option_type, metavar = list[str], "KEY=VALUE"
        help_text += "; repeatable"
    elif typing.get_origin(option_type) is list:  # triggers: a JSON list, checked by the spec
        option_type, metavar = str, "JSON"
    elif typing.get_origin(option_type) in (types.UnionType, typing.Union):  # float | None
        (option_type,) = [arg for arg in typing.get_args(option_type) if arg is not type(None)]
    if isinstance(option_type, type) and issubclass(option_type, BaseModel):  # batch: text the spec parses
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        option_type, metavar = str, cast(str | None, extra.get("flag_metavar"))
    option = typer.Option(*decls, help=help_text, metavar=metavar, show_default=False)
    annotation = cast(Any, Annotated)[option_type | None, option]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def with_spec_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` one keyword option per FunctionSpec field (but ``name``, its own option).

    Typer reads a command's parameters from its signature, so the signature is extended here:
    a new spec field is a new flag, with no edit to this file.
    """
    signature = inspect.signature(command, eval_str=True)
    fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    flags = [
        spec_flag_parameter(name, field)
        for name, field in FunctionSpec.model_fields.items()
        if name != "name"
    ]
    command.__signature__ = signature.replace(parameters=[*fixed, *flags])  # type: ignore[attr-defined]
    return command


def spec_overrides(flags: dict[str, Any]) -> dict[str, Any]:
    """The spec fields given on the command line, as the gateway takes them (durations in seconds)."""
    overrides: dict[str, Any] = {}
    for name, value in flags.items():
        if value is None or value == []:
            continue
        if name in DURATION_FIELDS:
            value = seconds(value, spec_flag(name))
        elif name in JSON_FLAGS:
            value = json_flag(value, spec_flag(name))
        elif isinstance(value, list):  # a dict field given as KEY=VALUE ... (env)
            value = key_values(value, spec_flag(name))
        overrides[name] = value
    return overrides


JSON_FLAGS = frozenset(
    name for name, field in FunctionSpec.model_fields.items() if typing.get_origin(field.annotation) is list
)


def json_flag(text: str, flag: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{flag} takes JSON: {exc}")
        raise AssertionError from None  # fail() exits


def key_values(items: list[str], flag: str) -> dict[str, str]:
    pairs = [item.partition("=") for item in items]
    if any(not sep for _, sep, _ in pairs):
        fail(f"{flag} takes KEY=VALUE")
    return {key: value for key, _, value in pairs}


@app.command()
@with_spec_flags
def deploy(
    path: Annotated[Path, typer.Argument(help="a .py file or a folder (with main.py or a tidal.toml)")],
    name: Annotated[
        str | None, typer.Option(help="function name (default: the decorated function's)")
    ] = None,
    handler: Annotated[str | None, typer.Option(help="Lambda-style handler: NAME or module.NAME")] = None,
    style: Annotated[str | None, typer.Option(help="native | lambda | lambda-http")] = None,
    entry: Annotated[str | None, typer.Option(help="file to run inside a folder (default main.py)")] = None,
    no_traffic: Annotated[
        bool, typer.Option("--no-traffic", help="make the revision but keep the function's traffic as it is")
    ] = False,
    canary: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=99,
            metavar="PERCENT",
            help="deploy with no traffic, then roll out from this percent "
            "(tidal rollout's defaults: 25, 50, 100 every 60s, at most 1% errors)",
        ),
    ] = None,
    **spec_flags: Any,
) -> None:
    """Deploy a function: a new revision when code or spec changed, a no-op otherwise.

    Every spec field is a flag (they win over the code's and tidal.toml's); durations take 2s,
    500ms, 5m or 1h.
    """
    overrides = spec_overrides(spec_flags)
    options = {
        "name": name,
        "handler": handler,
        "style": style,
        "entry": entry,
        "no_traffic": no_traffic or canary is not None or None,
    }
    try:
        with cli.client() as api, out.status("deploying", spinner="dots") as spinner:

            def progress(line: str) -> None:  # installing requirements: uv's lines as they come
                out.print(f"[dim]  {escape(line)}[/dim]")
                spinner.update(f"deploying: {escape(line)[:80]}")

            deployed = api.deploy(path, options, overrides, progress)
    except TidalError as exc:
        fail(str(exc))
    for item in deployed:
        state = "[green]new revision[/green]" if item["created"] else "unchanged"
        out.print(f"{item['function']}: {item['revision']} ({state})  POST {settings.url}{item['url']}")
    if canary is not None:
        from tidal.cli_rollout import start_canary

        start_canary(deployed, canary)
