"""The gateway's side of the journal folder (tidal.metering.folder): start it, hand it each finished
journal segment, wait for its answers, and start it again when it dies.

``fold`` is what ``ActivationRecorder.flush`` awaits: it returns once every segment handed over so
far has an answer, so a reader that flushes first (admin API, rollouts, usage) sees every record
answered before it asked. Whenever no folder process runs (before the first start, between a
crash and its restart, after stop), segments are folded here instead, in a thread: slower for
the event loop, never lost. A folder that dies leaves its unanswered segments to that fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec

from tidal.metering.folder import STORE_ENV, FoldAnswer, fold_segment
from tidal.observability.stats import RevisionSeries
from tidal.store.models import ActivationRow
from tidal.store.open import DATABASE

log = logging.getLogger("tidal.metering")

END_WAIT_S = 10.0  # at stop, how long the folder may take to answer what it was sent


class FolderExited(RuntimeError):
    """The folder process ended while the gateway runs (the supervisor starts it again)."""


class JournalFolder:
    def __init__(self, store_location: str, store_here: Callable[[list[ActivationRow]], None]) -> None:
        self.store_location = store_location  # a SQLite path or a state URL: the gateway's own store
        self.store_here = store_here  # the fallback: the gateway's store (add_activation_rows), in a thread
        self._process: asyncio.subprocess.Process | None = None
        self._waiting: dict[str, asyncio.Future[None]] = {}  # sent, not yet answered (in order)
        self._refused: list[str] = []  # the store refused them: sent again with the next fold
        # Where each segment's counts go (InvocationStats.add); None: not counted (metrics off).
        self.counted: Callable[[list[tuple[str, str, RevisionSeries]]], None] | None = None
        self._counted_unstored: set[str] = set()  # refused segments whose counts were added

    @property
    def running(self) -> bool:
        process = self._process
        return process is not None and process.returncode is None and process.stdin is not None

    async def fold(self, finished: list[Path]) -> None:
        """Have the ``finished`` segments and any refused before stored; return once every segment
        handed over so far is answered (stored, or refused and kept for the next fold)."""
        names, self._refused = self._refused, []
        names.extend(str(path) for path in finished)
        if self.running:
            for name in names:
                self._send(name)
        elif names:
            await self._fold_here(names)
        if self._waiting:
            await asyncio.wait(list(self._waiting.values()))  # never cancels them: others wait too

    async def run(self) -> None:
        """Run the folder process until cancelled (supervised: a folder that exits is restarted)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tidal.metering.folder",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, STORE_ENV: self.store_location},
        )  # fmt: skip
        self._process = process
        try:
            for name in list(self._waiting):  # handed to a folder that died before answering
                self._send(name)
            await self._answers(process)
            code = await process.wait()
        except asyncio.CancelledError:
            await self._end(process)
            raise
        finally:
            self._process = None
            if self._waiting:  # the folder is gone: what it did not answer is folded here
                await self._fold_here(list(self._waiting))
        raise FolderExited(f"the journal folder exited with code {code}")

    def _send(self, name: str) -> None:
        if name not in self._waiting:
            self._waiting[name] = asyncio.get_running_loop().create_future()
        process = self._process
        assert process is not None and process.stdin is not None
        with contextlib.suppress(ConnectionError):  # it died: run() folds what it left here
            process.stdin.write(f"{name}\n".encode())

    async def _answers(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        decode = msgspec.json.Decoder(FoldAnswer).decode
        while line := await process.stdout.readline():
            try:
                answer = decode(line)
            except msgspec.DecodeError:
                log.error("the journal folder said %r", line[:200])
                continue
            self._settle(answer)

    def _settle(self, answer: FoldAnswer) -> None:
        """Take one segment's answer: count its records once, keep it for the next fold if refused,
        and wake whoever waits for it."""
        name = answer.path
        if name in self._counted_unstored:  # counted when it was refused before
            if answer.stored:
                self._counted_unstored.discard(name)
        elif answer.counts and self.counted is not None:
            self.counted(answer.counts)
            if not answer.stored:
                self._counted_unstored.add(name)
        if not answer.stored:
            log.error("the journal folder could not store %s (%s); trying again later", name, answer.why)
            self._refused.append(name)
        future = self._waiting.pop(name, None)
        if future is not None and not future.done():
            future.set_result(None)

    async def _end(self, process: asyncio.subprocess.Process) -> None:
        """Stop: no more input; the folder answers what it holds and exits (or is killed)."""
        if process.stdin is not None:
            process.stdin.close()
        try:
            async with asyncio.timeout(END_WAIT_S):
                await self._answers(process)
                await process.wait()
        except TimeoutError:
            log.error("the journal folder did not end within %g s: killed", END_WAIT_S)
            process.kill()
            await process.wait()

    async def _fold_here(self, names: list[str]) -> None:
        for name in names:
            self._settle(await asyncio.to_thread(fold_segment, Path(name), self.store_here))


def folder_store_location(state_url: str | None, state_dir: Path) -> str:
    """Where the folder stores: the gateway's own store, its state URL (PostgreSQL) or its SQLite
    file (tidal.store.open)."""
    return state_url or str(state_dir / DATABASE)
