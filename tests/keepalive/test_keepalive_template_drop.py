"""Keep-alive's unload of a template (``Templates.drop``): now, but never under a live or pending
instance, nor while the template still builds; the next start builds it again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

from tidal.backends.base import InstanceSpec
from tidal.backends.template_registry import Templates
from tidal.backends.templates import TemplateKey, TemplateProcess
from tidal.spec import FunctionSpec
from tidal.store.models import Revision

LAUNCH = InstanceSpec(
    Revision("f-00001", "f", 1, "d", "c", "f", "handler", False, "native", {"name": "f"}, 0.0),
    FunctionSpec(name="f"),
    "/code/c",
)


class FakeTemplate:
    """Just what the registry reads of a template process."""

    def __init__(self, key: TemplateKey, memory_mb: int, on_death: Callable[[Any], None]) -> None:
        self.key, self.pid, self.children = key, 4242, 0
        self.built_at: float | None = None
        self.last_used = time.monotonic()
        self.closed = False
        self.ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    @property
    def live_instances(self) -> int:
        return self.children

    async def launch(self) -> None:
        pass

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def info(self) -> dict[str, object]:
        return {"rss_mb": 12.5}

    async def close(self) -> None:
        self.closed = True


def make(key: TemplateKey, memory_mb: int, on_death: Callable[[TemplateProcess], None]) -> TemplateProcess:
    return cast(TemplateProcess, FakeTemplate(key, memory_mb, on_death))


async def test_drop_stops_an_idle_template_now_and_keeps_a_busy_or_building_one() -> None:
    templates = Templates(make, idle_s=600.0)
    await templates.prepare(LAUNCH)
    template = cast(FakeTemplate, templates.get(TemplateKey.of(LAUNCH)))
    assert not await templates.drop(LAUNCH)  # still building: a start may be waiting for it
    template.built_at = time.time()
    template.children = 1
    assert not await templates.drop(LAUNCH)  # the parent of a live instance stays
    template.children = 0
    assert await templates.drop(LAUNCH)  # long before the 600 s idle limit
    assert template.closed and templates.describe(LAUNCH) is None
    assert not await templates.drop(LAUNCH)  # nothing left to drop
    await templates.prepare(LAUNCH)  # the next start (or a pre-warm) builds a new one
    assert templates.get(TemplateKey.of(LAUNCH)) not in (None, template)
