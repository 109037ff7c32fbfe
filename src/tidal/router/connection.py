"""The router's end of one instance connection: many calls in flight, matched by id."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import cast

from tidal.backends.base import CONNECT_TOKEN, InstanceHandle
from tidal.runtime.protocol import (
    CallStats,
    Cancel,
    End,
    Error,
    FrameReader,
    Invoke,
    Message,
    ProtocolError,
    Ready,
    Result,
    SetupFailed,
    encode,
)

log = logging.getLogger("tidal.router")
_NO_STATS = CallStats(0.0, 0.0, 0)


class InstanceLost(Exception):
    """The instance's connection closed while calls were in flight (it crashed or was killed)."""


class OutOfMemory(InstanceLost):
    """The instance was killed for passing its memory limit."""


class StartFailed(Exception):
    """The instance never became ready: its module failed to import or its setup raised."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


class Call:
    """One invocation in flight. The first answer resolves ``first``; stream frames after it queue up."""

    __slots__ = ("first", "id", "stream")

    def __init__(self, call_id: int, loop: asyncio.AbstractEventLoop) -> None:
        self.id = call_id
        self.first: asyncio.Future[Message] = loop.create_future()
        self.stream: asyncio.Queue[Message] | None = None

    async def answer(self, timeout: float) -> Message:
        """The first answer, or TimeoutError after ``timeout`` seconds.

        A timer on the future itself: cheaper than asyncio.wait_for, which wraps it in a task.
        """
        timer = asyncio.get_running_loop().call_later(timeout, self._expire)
        try:
            return await self.first
        finally:
            timer.cancel()

    def _expire(self) -> None:
        if not self.first.done():
            self.first.set_exception(TimeoutError())

    def deliver(self, message: Message) -> None:
        if not self.first.done():
            self.first.set_result(message)
            return
        if self.stream is None:
            self.stream = asyncio.Queue()
        self.stream.put_nowait(message)

    def fail(self, exc: Exception) -> None:
        if not self.first.done():
            self.first.set_exception(exc)
        else:
            self.deliver(Error(self.id, type(exc).__name__, str(exc), stats=_NO_STATS))

    async def next_stream_frame(self) -> Message:
        if self.stream is None:
            self.stream = asyncio.Queue()
        return await self.stream.get()


class InstanceClient(asyncio.Protocol):
    """Connection to one instance. ``outstanding`` is what least-outstanding routing reads."""

    def __init__(self, handle: InstanceHandle, on_lost: Callable[[InstanceClient], None]) -> None:
        self.handle = handle
        self._on_lost = on_lost
        self._loop = asyncio.get_running_loop()
        self._reader = FrameReader()
        self._transport: asyncio.Transport | None = None
        self._calls: dict[int, Call] = {}
        self._ids = itertools.count(1)
        self.ready: asyncio.Future[Ready] = self._loop.create_future()
        self.lost = False
        self.draining = False
        self.recycle = False  # the instance asked to be replaced (a call's thread outlived its deadline)
        self.assigned = 0  # requests the pool routed here and not yet released (routing reads this)
        self.served = 0  # requests finished: 0 means the next one is this instance's first (cold) call
        self.start_ms = 0.0  # from asking the backend to the Ready frame
        self.models: tuple[str, ...] = ()  # multiplexed: the models it holds, as its last answer said

    @property
    def id(self) -> str:
        return self.handle.id

    @property
    def outstanding(self) -> int:
        return len(self._calls)

    @classmethod
    async def connect(
        cls, handle: InstanceHandle, on_lost: Callable[[InstanceClient], None]
    ) -> InstanceClient:
        kind, _, where = handle.address.partition(":")
        loop = asyncio.get_running_loop()
        if kind == "unix":
            _, client = await loop.create_unix_connection(lambda: cls(handle, on_lost), where)
        elif kind == "tcp":
            host, _, port = where.rpartition(":")
            transport, client = await loop.create_connection(lambda: cls(handle, on_lost), host, int(port))
            token = handle.extra.get(CONNECT_TOKEN)
            if token:  # first, before anything else: the instance serves no connection without it
                transport.write(token.encode())
        else:
            raise ValueError(f"unsupported instance address {handle.address!r}")
        return client

    def call(self, build: Callable[[int], Invoke]) -> Call:
        """Send the invocation ``build(call_id)``; the caller then awaits ``call.first``."""
        if self._transport is None or self.lost:
            raise InstanceLost(f"instance {self.id} is gone")
        call_id = next(self._ids)
        call = Call(call_id, self._loop)
        self._calls[call_id] = call
        self._transport.write(encode(build(call_id)))
        return call

    def cancel(self, call: Call) -> None:
        if self._calls.pop(call.id, None) is not None and self._transport is not None and not self.lost:
            self._transport.write(encode(Cancel(call.id)))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._reader.feed(data)
        except ProtocolError as exc:
            log.error("instance %s sent garbage, dropping it: %s", self.id, exc)
            self.close()
            return
        for message in messages:
            self._dispatch(message)

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, Ready):
            if not self.ready.done():
                self.ready.set_result(message)
            return
        if isinstance(message, SetupFailed):
            if not self.ready.done():
                self.ready.set_exception(StartFailed(message.type, message.message))
            return
        call_id = getattr(message, "id", None)
        call = self._calls.get(call_id) if isinstance(call_id, int) else None
        if call is None:
            return  # an answer to a call the router already gave up on (cancelled, timed out)
        if isinstance(message, Result | Error | End):
            del self._calls[call.id]
            self.models = message.stats.models
            if isinstance(message, Error) and message.recycle:
                self.recycle = True
        call.deliver(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.ready.done():
            self.ready.set_exception(StartFailed("InstanceExited", "the instance exited before it was ready"))
        reason = self.handle.loss_reason()
        lost = (
            OutOfMemory(reason)
            if reason
            else InstanceLost(f"instance {self.id} exited with requests in flight")
        )
        calls, self._calls = self._calls, {}
        for call in calls.values():
            call.fail(lost)
        self._on_lost(self)
