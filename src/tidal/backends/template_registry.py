"""The warm templates of one local backend: which exist, who uses them, which failed, and when an
idle one is stopped.

A ``TemplateProcess`` is one template (templates.py); this registry keeps one per ``TemplateKey``,
built on first use or ahead of it (``prepare``), shared by the revisions whose instances fork
alike (``users``), replaced when it dies, and stopped by ``reap`` once it forked no live
instance and served no start for ``idle_s``. A template that failed is not tried again for
``TEMPLATE_RETRY_S`` (instances spawn meanwhile), or at all when the failure is lasting (a GPU
function's template that initialised CUDA: only new code can fix it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from tidal.backends.base import InstanceSpec
from tidal.backends.template_usage import reap_tick_s, should_reap
from tidal.backends.templates import TemplateKey, TemplateProcess, TemplateUnavailable
from tidal.runtime.template import TemplateReady

log = logging.getLogger("tidal.backends.local")

TEMPLATE_READY_TIMEOUT_S = 300.0  # like a start: a model load may be slow
TEMPLATE_RETRY_S = 60.0  # a template that failed to come up is not retried sooner (spawn meanwhile)

# Makes (does not start) the process of a template: (key, memory MiB, on its death) -> process.
MakeTemplate = Callable[[TemplateKey, int, Callable[[TemplateProcess], None]], TemplateProcess]


@dataclass
class Failure:
    at: float
    reason: str
    warned: bool = False
    lasting: bool = False  # not retried after TEMPLATE_RETRY_S: only new code can fix it


def _log_ready(key: TemplateKey, ready: asyncio.Future[TemplateReady]) -> None:
    if not ready.cancelled() and ready.exception() is None:
        info = ready.result()
        log.info(
            "template %s for %s%s ready: import %.0f ms, setup %.0f ms, %d thread(s)",
            info.pid,
            key.module,
            f".{key.attribute} (load_once)" if key.load_once else "",
            info.import_ms,
            info.setup_ms,
            info.threads,
        )


class Templates:
    def __init__(
        self, make: MakeTemplate, idle_s: float, on_death: Callable[[TemplateProcess], None] = lambda _: None
    ) -> None:
        self.make = make
        self.idle_s = idle_s  # an unused template is reaped after this long
        self.on_death = on_death  # the backend's own bookkeeping (its cradles)
        self.closed = False
        self._live: dict[TemplateKey, TemplateProcess] = {}
        self._users: dict[TemplateKey, set[str]] = {}  # revision ids that asked for one
        self._failures: dict[TemplateKey, Failure] = {}

    def get(self, key: TemplateKey) -> TemplateProcess | None:
        return self._live.get(key)

    async def prepare(self, launch: InstanceSpec) -> None:
        """Start the revision's template in the background, so its first cold start is a fork."""
        if self.closed:
            return
        key = TemplateKey.of(launch)
        self._users.setdefault(key, set()).add(launch.revision.id)
        if key in self._live:
            self._live[key].touch()  # a new revision of the same code: used again
        elif not self.recently_failed(key):
            with contextlib.suppress(TemplateUnavailable):
                await self._launch(key, launch.spec.memory)

    async def release(self, launch: InstanceSpec) -> None:
        """The revision is retired: stop its template unless another live revision shares it."""
        key = TemplateKey.of(launch)
        users = self._users.get(key, set())
        users.discard(launch.revision.id)
        if users:
            return
        self._users.pop(key, None)
        template = self._live.pop(key, None)
        if template is not None:
            await template.close()

    def describe_all(self) -> list[dict[str, object]]:
        """What each live template is: pid, state, module, import/setup ms, forks, live instances,
        memory (RSS, PSS), idle seconds, and the revisions that use it.
        """
        return [self._describe(template) for template in self._live.values()]

    def describe(self, launch: InstanceSpec) -> dict[str, object] | None:
        """The template ``launch``'s instances fork from now; its failure ({"state": "failed",
        "error", "lasting"}) while instances spawn instead; None (none kept: reaped, off).
        """
        key = TemplateKey.of(launch)
        template = self._live.get(key)
        if template is not None:
            return self._describe(template)
        failure = self._failures.get(key)
        if failure is not None and self.recently_failed(key):
            return {"state": "failed", "error": failure.reason, "lasting": failure.lasting}
        return None

    def _describe(self, template: TemplateProcess) -> dict[str, object]:
        users = sorted(self._users.get(template.key, ()))
        return {**template.info(), "revisions": users, "idle_limit_s": self.idle_s}

    def recently_failed(self, key: TemplateKey) -> bool:
        failure = self._failures.get(key)
        return failure is not None and (failure.lasting or time.monotonic() - failure.at < TEMPLATE_RETRY_S)

    async def _launch(self, key: TemplateKey, memory_mb: int) -> TemplateProcess:
        template = self.make(key, memory_mb, self._died)
        self._live[key] = template
        template.ready.add_done_callback(lambda ready: _log_ready(key, ready))
        try:
            await template.launch()
        except OSError as exc:
            self._live.pop(key, None)
            self.failed(key, f"could not start the template: {exc}")
            raise TemplateUnavailable(str(exc)) from None
        return template

    async def ready_for(self, launch: InstanceSpec) -> TemplateProcess:
        """The revision's ready template (started now if need be), or TemplateUnavailable."""
        key = TemplateKey.of(launch)
        self._users.setdefault(key, set()).add(launch.revision.id)
        template = self._live.get(key)
        if template is None:
            failure = self._failures.get(key)
            if failure is not None and self.recently_failed(key):
                raise TemplateUnavailable(failure.reason)
            template = await self._launch(key, launch.spec.memory)
        # In use from here to the fork (a pending fork counts as a live instance), so a reaper tick
        # that falls inside wait_ready's yield does not stop the template this start just picked.
        template.touch()
        try:
            await template.wait_ready(TEMPLATE_READY_TIMEOUT_S)
        except TemplateUnavailable as exc:
            self.failed(key, str(exc), exc.lasting)
            raise
        self._failures.pop(key, None)
        template.touch()  # a slow build is over: the caller forks next, with no await in between
        return template

    def failed(self, key: TemplateKey, reason: str, lasting: bool = False) -> None:
        if key not in self._failures or self._failures[key].reason != reason:
            log.warning("template for %s (%s) failed: %s", key.module, key.code_dir, reason)
        self._failures[key] = Failure(time.monotonic(), reason, lasting=lasting)

    def _died(self, template: TemplateProcess) -> None:
        self.on_death(template)
        if self._live.get(template.key) is template:
            del self._live[template.key]
        if template.closing or self.closed:
            return
        failure = self._failures.get(template.key)
        if failure is not None and failure.lasting:
            return  # it refused for good and exited (a GPU function's template that touched CUDA)
        if template.ready.done() and not template.ready.exception():
            log.warning(
                "template %s for %s exited with code %s; the next start builds a new one (log: %s)",
                template.pid,
                template.key.module,
                template.exit_code,
                template.log_path,
            )
        else:
            error = template.ready.exception()
            lasting = isinstance(error, TemplateUnavailable) and error.lasting
            self.failed(template.key, str(error), lasting)

    async def reap(self, now: float | None = None) -> int:
        """Stop every ready template that forked no live instance and served no start for
        ``idle_s`` (``should_reap``); how many were stopped. ``now``: monotonic seconds.

        One still building is kept (a start may be waiting for it), and so is one whose instances
        live: they are its children. The key stays with its revisions, so the next start builds it
        again. A template that fails to stop is logged; the others are still reaped.
        """
        now = time.monotonic() if now is None else now
        idle = [
            template
            for template in self._live.values()
            if template.built_at is not None
            and should_reap(now, template.last_used, template.live_instances, self.idle_s)
        ]
        for template in idle:
            del self._live[template.key]  # from here on a start builds a new one
        await asyncio.gather(*(self._reap(template, now - template.last_used) for template in idle))
        return len(idle)

    async def drop(self, launch: InstanceSpec) -> bool:
        """Stop ``launch``'s template now, as keep-alive's unload does; whether it went.

        Kept (False) while it builds (a start may wait for it) or is the parent of a live or forking
        instance; the caller asks again later. The next start builds it again.
        """
        key = TemplateKey.of(launch)
        template = self._live.get(key)
        if template is None or template.built_at is None or template.live_instances > 0:
            return False
        del self._live[key]
        await self._reap(template, time.monotonic() - template.last_used)
        return True

    async def _reap(self, template: TemplateProcess, idle_s: float) -> None:
        rss_mb = template.info()["rss_mb"]
        try:
            await template.close()
        except Exception:
            log.exception("template %s for %s did not stop cleanly", template.pid, template.key.module)
            return
        log.info("template %s for %s reaped after %.0f s unused (%s MB RSS freed)",
                 template.pid, template.key.module, idle_s, rss_mb)  # fmt: skip

    async def reap_forever(self) -> None:
        """The gateway's template-reaper loop: ``reap`` every ``reap_tick_s`` seconds."""
        while True:
            await asyncio.sleep(reap_tick_s(self.idle_s))
            await self.reap()

    def note_fallback(self, launch: InstanceSpec, error: TemplateUnavailable) -> bool:
        """An instance of ``launch`` spawns because its template is unavailable: record a lasting
        refusal, and say whether this failure was already warned about (one warning each).
        """
        key = TemplateKey.of(launch)
        if error.lasting:
            self.failed(key, str(error), lasting=True)
        failure = self._failures.get(key)
        quiet = failure is not None and failure.warned
        if failure is not None:
            failure.warned = True
        return quiet

    async def close(self) -> None:
        self.closed = True
        templates = list(self._live.values())
        self._live.clear()
        await asyncio.gather(*(template.close() for template in templates), return_exceptions=True)
