"""Deploy: bundle bytes + options -> validated revisions, stored and serving.

User code is imported only in a throwaway subprocess (``tidal.runtime.inspect_module``), never in
the gateway. Options come from three layers, later ones winning: the decorator's keywords, the
bundle's ``tidal.toml``, the deploy command's flags.

Code dirs (``code/<code digest>``) are shared by every revision with the same code, of any
function. ``remove_unused_code`` deletes those no stored revision references (after `tidal rm`);
it and the unpacking of a bundle exclude each other, and a digest whose deploy is still under way
is never removed, so a deploy never finds its code gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import time
import tomllib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from tidal.backends.isolation import Isolation, instance_env
from tidal.deploy.bundle import BundleError, disk_usage, unpack
from tidal.environments.builder import EnvironmentBuilder, EnvironmentBuildError, Progress
from tidal.environments.requirements import Requirements, RequirementsError, declared
from tidal.environments.runtime import Environments
from tidal.spec import SpecError, Style, default_name, validate_spec
from tidal.store.models import Revision, revision_digest
from tidal.store.protocols import FunctionStore

INSPECT_TIMEOUT_S = 180.0
MAX_INPUT_SCHEMA = 256 * 1024  # a typed input's JSON Schema, as the inspection found it
ORPHAN_PIPES_S = 5.0  # after killing what an import forked, its pipes close in this time
DEPLOY_CONFIG = "tidal.toml"
ENTRY_CANDIDATES = ("main.py", "handler.py", "lambda_function.py", "app.py")
# What unpack() leaves in the code root: code/<sha256 hex>, and .unpack-* while it writes one.
CODE_DIR_NAME = re.compile(r"^([0-9a-f]{64}|\.unpack-.+)$")
# The sandbox user of deploy-time inspection: not a function name (those cannot hold a colon).
INSPECTION_USER = ":inspect"


def _no_progress(line: str) -> None:
    pass


class DeployError(ValueError):
    """A deploy refused for a reason the user can fix; the message says which."""


@dataclass
class DeployOptions:
    source: str = ""  # the uploaded path's name, the default function name for Lambda modules
    name: str | None = None
    entry: str | None = None
    handler: str | None = None
    style: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    no_traffic: bool = (
        False  # make the revision, keep the function's traffic as it is (Knative's --no-traffic)
    )


@dataclass(frozen=True)
class Deployed:
    revision: Revision
    created: bool


class Deployer:
    """Stores revisions and the function's settings and traffic, then has them published (served)."""

    def __init__(
        self,
        store: FunctionStore,
        code_root: Path,
        publish: Callable[[str], Awaitable[object]],
        environments: Environments,
        builder: EnvironmentBuilder,
        isolation: Isolation | None = None,
        code_quota_bytes: int = 0,
    ) -> None:
        self.store = store
        self.code_root = code_root
        self.publish = publish
        self.environments = environments  # which Python a revision runs (inspection included)
        self.builder = builder  # installs a bundle's requirements
        self.isolation = isolation  # inspection imports user code: in the sandbox, like instances
        self.code_quota_bytes = code_quota_bytes  # all code dirs together, at most (0: no quota)
        self._lock = asyncio.Lock()  # deploys are rare; one at a time keeps numbering obvious
        self._code_lock = asyncio.Lock()  # unpacking a bundle vs removing unused code dirs
        self._deploying: Counter[str] = Counter()  # code digests of deploys under way
        # Several gateways: the code goes to the shared store before its revision (tidal.cluster.code).
        self.share_code: Callable[[Path, str], Awaitable[None]] | None = None

    def code_dir(self, revision: Revision) -> Path:
        return self.code_root / revision.code_digest

    async def ensure_environment(self, revision: Revision, code_dir: Path) -> bool:
        """Build the environment of a revision deployed through another gateway (tidal.cluster)
        from its code, as that deploy did: the same requirements give the same key. False (and
        the reason logged) if it cannot be built here."""
        if not revision.environment or self.environments.path(revision.environment).exists():
            return True
        try:
            names = sorted(
                path.relative_to(code_dir).as_posix() for path in code_dir.rglob("*") if path.is_file()
            )
            from_config = _read_settings(code_dir).get("requirements")
            requirements = declared(code_dir, names, from_config, revision.module.replace(".", "/") + ".py")
            if requirements is None:
                raise RequirementsError("its code declares no requirements")
            async with self.builder.environment(requirements, code_dir, _no_progress) as key:
                if key == revision.environment:
                    return True
                raise RequirementsError(f"its requirements give environment {key[:12]} here")
        except (DeployError, RequirementsError, EnvironmentBuildError) as exc:
            logging.getLogger("tidal.deploy").error(
                "environment %s of %s cannot be built on this gateway: %s",
                revision.environment[:12], revision.id, exc,
            )  # fmt: skip
            return False

    async def deploy(
        self, bundle: bytes | BinaryIO, options: DeployOptions, progress: Progress = _no_progress
    ) -> list[Deployed]:
        """Store and publish the bundle's functions; ``progress`` hears what takes time (installing
        requirements), a line at a time.
        """
        async with self._code_lock:
            try:
                code_dir, code_digest, names = await asyncio.to_thread(self._unpack, bundle)
            except BundleError as exc:
                raise DeployError(str(exc)) from None
            self._deploying[code_digest] += 1
        try:
            if self.share_code is not None:
                await self.share_code(code_dir, code_digest)
            return await self._deploy_code(code_dir, code_digest, names, options, progress)
        finally:
            self._deploying[code_digest] -= 1
            if not self._deploying[code_digest]:
                del self._deploying[code_digest]

    def _unpack(self, bundle: bytes | BinaryIO) -> tuple[Path, str, list[str]]:
        disk_left = None
        if self.code_quota_bytes:
            disk_left = self.code_quota_bytes - disk_usage(self.code_root)
        return unpack(bundle, self.code_root, disk_left)

    async def remove_unused_code(self, in_use: Collection[str] = ()) -> list[str]:
        """Delete the code dirs that no stored revision, no deploy under way and nothing in
        ``in_use`` (digests of running pools) needs; their names, sorted.
        """
        async with self._code_lock:
            keep = await asyncio.to_thread(self.store.code_digests)
            keep |= set(in_use) | set(self._deploying)
            return await asyncio.to_thread(_remove_code_dirs, self.code_root, keep)

    async def remove_unused_environments(self, in_use: Collection[str] = ()) -> list[str]:
        """Delete the environments no stored revision, no deploy under way and nothing in ``in_use``
        (keys of running pools) needs; their keys, sorted.
        """
        keep = await asyncio.to_thread(self.store.environments)
        return await self.builder.remove_unused(keep | set(in_use))

    async def _deploy_code(
        self, code_dir: Path, code_digest: str, names: list[str], options: DeployOptions, progress: Progress
    ) -> list[Deployed]:
        settings = _read_settings(code_dir)
        _check_setting_types(settings)
        from_config = settings.pop("requirements", None)
        style = _style(options.style or settings.pop("style", None) or "native")
        handler = options.handler or settings.pop("handler", None)
        entry = options.entry or settings.pop("entry", None) or _default_entry(names)
        name = options.name or settings.pop("name", None)
        declared_spec = settings.pop("spec", {})
        if settings:
            raise DeployError(f"{DEPLOY_CONFIG}: unknown key(s) {sorted(settings)}")
        if style is not Style.NATIVE and not handler:
            raise DeployError(f"style {style.value!r} needs --handler NAME (the function AWS would call)")
        module, handler = _module_and_handler(entry, handler, names)
        try:
            requirements = declared(code_dir, names, from_config, module.replace(".", "/") + ".py")
        except RequirementsError as exc:
            raise DeployError(str(exc)) from None
        async with self._environment(requirements, code_dir, progress) as environment:
            return await self._deploy_revisions(
                code_dir, code_digest, module, handler, name, style, declared_spec, environment, options
            )

    @contextlib.asynccontextmanager
    async def _environment(
        self, requirements: Requirements | None, code_dir: Path, progress: Progress
    ) -> AsyncIterator[str]:
        """The environment key for ``requirements`` ("" without any), kept while the block runs."""
        if requirements is None:
            yield ""
            return
        try:
            async with self.builder.environment(requirements, code_dir, progress) as key:
                yield key
        except EnvironmentBuildError as exc:
            raise DeployError(str(exc)) from None

    async def _deploy_revisions(
        self, code_dir: Path, code_digest: str, module: str, handler: str | None, name: str | None,
        style: Style, declared_spec: dict[str, Any], environment: str, options: DeployOptions,
    ) -> list[Deployed]:  # fmt: skip
        found = await self._inspect(code_dir, module, handler, environment)
        if name and len(found) > 1:
            raise DeployError(f"--name given but {module}.py declares {len(found)} functions")
        async with self._lock:
            deployed = []
            for item in found:
                default = Path(options.source).stem if handler else default_name(item["attribute"])
                spec_input = {**item["spec"], **declared_spec, **options.overrides}
                spec_input["name"] = name or spec_input.get("name") or default
                try:
                    spec = validate_spec(spec_input)
                except SpecError as exc:
                    raise DeployError(f"function {spec_input['name']!r}: {exc}") from None
                if spec.batch is not None and (item.get("is_stream") or style is not Style.NATIVE):
                    streams = item.get("is_stream")
                    why = "a streaming (generator) function" if streams else f"style {style.value!r}"
                    raise DeployError(
                        f"function {spec.name!r}: batch needs a native function that takes a list and returns"
                        f" a list; {why} cannot be batched"
                    )
                # Function-level settings (who may call it) are not part of the revision: changing
                # them updates the function, never makes a new revision or a cold start.
                draft = _draft(
                    spec.revision_fields(), code_digest, module, item["attribute"], item["is_class"], style,
                    environment, _input_schema(item, style),
                )  # fmt: skip
                if options.no_traffic:
                    await self._check_serving(draft.function)
                revision, created = await asyncio.to_thread(
                    self.store.add_revision, draft, spec.function_settings(), not options.no_traffic
                )
                await self.publish(revision.function)
                deployed.append(Deployed(revision, created))
            return deployed

    async def _check_serving(self, function: str) -> None:
        record = await asyncio.to_thread(self.store.function, function)
        if record is None or not record.traffic:
            raise DeployError(
                f"--no-traffic keeps {function!r}'s traffic as it is, but it has none yet: deploy it once without it"
            )

    async def _inspect(
        self, code_dir: Path, module: str, handler: str | None, environment: str
    ) -> list[dict[str, Any]]:
        interpreter = await asyncio.to_thread(self.environments.interpreter, environment)
        command = [interpreter.python, "-m", "tidal.runtime.inspect_module", str(code_dir), module]
        if handler:
            command.append(handler)
        # Like an instance: none of the gateway's environment, and in the sandbox where there is one.
        own = dict(interpreter.env)
        if self.isolation is not None:
            sandbox = self.isolation.plan(INSPECTION_USER, str(code_dir), interpreter.paths)
            if sandbox is not None:
                await asyncio.to_thread(self.isolation.prepare_code, str(code_dir))
                own["TIDAL_SANDBOX"] = msgspec.json.encode(sandbox).decode()
        # A session of its own: whatever the import forks can be found (its process group) and ended.
        process = await asyncio.create_subprocess_exec(
            *command, cwd=code_dir, env=instance_env({}, own), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        try:
            stdout, stderr, outlived = await asyncio.wait_for(_inspection_output(process), INSPECT_TIMEOUT_S)
        except TimeoutError:
            _kill_group(process.pid)
            raise DeployError(f"importing {module!r} took longer than {INSPECT_TIMEOUT_S:g} s") from None
        if outlived:
            raise DeployError(
                f"importing {module!r} started processes that outlive the import (os.fork, a daemon):"
                " start them in setup or in the call, not at import"
            )
        try:
            answer = json.loads(stdout)
        except json.JSONDecodeError:
            tail = stderr.decode(errors="replace").strip().splitlines()[-5:]
            raise DeployError(f"inspecting {module!r} failed: {' | '.join(tail) or 'no output'}") from None
        if not answer.get("ok"):
            raise DeployError(answer.get("error", "inspection failed"))
        return list(answer["functions"])


async def _inspection_output(process: asyncio.subprocess.Process) -> tuple[bytes, bytes, bool]:
    """The inspection's stdout and stderr, and whether processes it forked outlived it (they are
    killed: they would hold its pipes open, and the deploy with them, until the timeout).
    """
    assert process.stdout is not None and process.stderr is not None
    reads = asyncio.gather(process.stdout.read(), process.stderr.read())
    try:
        await process.wait()
        outlived = _kill_group(process.pid)
        stdout, stderr = await asyncio.wait_for(reads, ORPHAN_PIPES_S)
    except BaseException:
        reads.cancel()
        raise
    return stdout, stderr, outlived


def _kill_group(group: int) -> bool:
    """Kill every process of ``group``; whether there was any."""
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of the group changed user: only its pipes are ours to close
        return True
    return True


def _remove_code_dirs(code_root: Path, keep: set[str]) -> list[str]:
    if not code_root.is_dir():
        return []
    removed = []
    for entry in sorted(code_root.iterdir()):
        if CODE_DIR_NAME.match(entry.name) and entry.name not in keep and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


def _read_settings(code_dir: Path) -> dict[str, Any]:
    path = code_dir / DEPLOY_CONFIG
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise DeployError(f"{DEPLOY_CONFIG} is not valid TOML: {exc}") from None
    except OSError as exc:  # a folder of that name, say
        raise DeployError(f"{DEPLOY_CONFIG} cannot be read: {exc.strerror}") from None


# tidal.toml keys read here and the type each must have (requirements checks its own).
SETTING_TYPES: dict[str, tuple[type, str]] = {
    "name": (str, "a string"),
    "entry": (str, "a string (a .py file of the bundle)"),
    "handler": (str, "a string"),
    "style": (str, "a string"),
    "spec": (dict, "a table of spec fields ([spec])"),
}


def _check_setting_types(settings: dict[str, Any]) -> None:
    for key, (wanted, described) in SETTING_TYPES.items():
        if key in settings and not isinstance(settings[key], wanted):
            found = type(settings[key]).__name__
            raise DeployError(f"{DEPLOY_CONFIG}: {key} must be {described}, not {found}")


def _style(value: str) -> Style:
    try:
        return Style(value)
    except ValueError:
        raise DeployError(
            f"unknown style {value!r}; use one of: {', '.join(s.value for s in Style)}"
        ) from None


def _default_entry(names: list[str]) -> str:
    top_level = [name for name in names if "/" not in name and name.endswith(".py")]
    if len(top_level) == 1:
        return top_level[0]
    for candidate in ENTRY_CANDIDATES:
        if candidate in top_level:
            return candidate
    raise DeployError(
        f"cannot tell which file to run among {top_level or 'no .py files'}: add main.py, "
        f"pass --entry FILE, or set entry in {DEPLOY_CONFIG}"
    )


def _module_and_handler(entry: str, handler: str | None, names: list[str]) -> tuple[str, str | None]:
    """``--handler lambda_function.handler`` (AWS style) names the module too."""
    if handler and "." in handler:
        module, _, handler = handler.rpartition(".")
        entry = module.replace(".", "/") + ".py"
    if entry not in names:
        raise DeployError(f"entry file {entry!r} is not in the bundle")
    module = entry.removesuffix(".py").replace("/", ".")
    return module, handler


def _input_schema(item: dict[str, Any], style: Style) -> str:
    """The inspection's JSON Schema of a native function's typed input, if it is a JSON object.
    The inspection ran user code: its answer is checked here, never trusted."""
    text = item.get("input_schema")
    if style is not Style.NATIVE or not isinstance(text, str) or not text or len(text) > MAX_INPUT_SCHEMA:
        return ""
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return ""
    return text if isinstance(parsed, dict) else ""


def _draft(
    spec: dict[str, Any], code_digest: str, module: str, attribute: str, is_class: bool, style: Style,
    environment: str, input_schema: str = "",
) -> Revision:  # fmt: skip
    return Revision(
        id="",
        function=spec["name"],
        number=0,
        digest=revision_digest(code_digest, module, attribute, is_class, style.value, spec, environment),
        code_digest=code_digest,
        module=module,
        attribute=attribute,
        is_class=is_class,
        style=style.value,
        spec=spec,
        created_at=time.time(),
        environment=environment,
        input_schema=input_schema,
    )
