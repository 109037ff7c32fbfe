"""The instance main loop: load the function once, then serve framed invocations.

Started by a backend as ``python -m tidal.runtime.worker`` with its configuration (JSON) in the
environment variable TIDAL_INSTANCE and an already-listening socket inherited as fd
TIDAL_LISTEN_FD, or forked from a warm template (``tidal.runtime.template``), which calls ``run``
with the same two things. The gateway connects at once (the kernel's backlog holds the
connection) and receives Ready when setup is done, so no one polls for readiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import dataclasses
import functools
import os
import resource
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn, cast

import msgspec

from tidal.runtime import capture, codec, sandbox
from tidal.runtime.batching import BATCH_SIZE_HEADER, BatchConfig, Batcher
from tidal.runtime.gateway_auth import gateway_connections
from tidal.runtime.loader import Target, build_target, import_entry
from tidal.runtime.models import MODEL_HEADER, ModelCache, check_model_id
from tidal.runtime.protocol import (
    CallStats,
    Cancel,
    Chunk,
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
from tidal.runtime.typed_input import InvalidInput, validate
from tidal.sdk.batch import ItemError
from tidal.sdk.context import Context
from tidal.sdk.errors import InputError

# An instance whose gateway never connects (it died, or gave up on the start) does not linger.
ACCEPT_TIMEOUT_S = 120.0


class InstanceConfig(msgspec.Struct, frozen=True):
    instance_id: str
    function: str
    revision: str
    code_dir: str
    module: str
    attribute: str
    is_class: bool
    style: str = "native"
    timeout: float = 60.0
    concurrency: int = 1
    memory_mb: int = 512
    # CUDA_VISIBLE_DEVICES of this instance: "0" or "0,1" (its GPUs), "" (none: gpu=0 on a GPU
    # host), None (left alone: no GPUs here). Set before any user code runs in the instance.
    visible_gpus: str | None = None
    # The spec's batch: gather concurrent requests into one call of a list-taking function.
    batch: BatchConfig | None = None
    # The spec's max_models: an LRU of models loaded by the class's load_model (tidal.runtime.models).
    max_models: int = 0
    # On a Ray node of several gateways (tidal.cluster.fleet): accept one connection per gateway.
    several_gateways: bool = False
    # TCP instances: the secret a gateway sends first on each connection (tidal.runtime.gateway_auth);
    # "" on a Unix socket, whose directory only the gateway can reach.
    connect_token: str = ""


def multiplexed(config: InstanceConfig, target: Target) -> ModelCache | None:
    """The instance's model cache when the spec asks for one (``max_models``), else None."""
    if not config.max_models:
        return None
    if target.load_model is None or not target.wants_context:
        raise TypeError(
            "max_models needs a class with load_model(self, model_id) whose __call__ takes (payload, context):"
            " the request's model is context.model"
        )
    return ModelCache(config.max_models, target.load_model, target.unload_model)


def gpu_env(visible: str) -> dict[str, str]:
    """The environment that shows a process only the GPUs ``visible`` ("0,1"; "" for none).

    CUDA numbers GPUs fastest first unless told otherwise; PCI_BUS_ID order makes its indices the
    ones nvidia-smi and NVML (which tidal places by) use.
    """
    return {
        "CUDA_VISIBLE_DEVICES": visible,
        "NVIDIA_VISIBLE_DEVICES": visible,
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }


def show_only_gpus(visible: str | None) -> None:
    """Make the instance see only its GPUs. A forked child calls this before anything touches CUDA
    (CUDA reads CUDA_VISIBLE_DEVICES when it initialises, which the template never did)."""
    if visible is not None:
        os.environ.update(gpu_env(visible))


class Worker:
    """Serves one gateway connection; each Invoke runs as its own task."""

    def __init__(self, config: InstanceConfig, target: Target, models: ModelCache | None = None) -> None:
        self.config = config
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.slots = asyncio.Semaphore(config.concurrency)
        self.threads = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="call")
        self.running: dict[int, tuple[asyncio.Task[None], threading.Event]] = {}
        self.in_threads: set[int] = set()  # calls whose user code is running in a thread right now
        self.closed = self.loop.create_future()
        self.batcher = Batcher(config.batch.settings(), self.call_batch) if config.batch is not None else None
        self.batch_size_of: dict[int, int] = {}  # request id -> the size of the batch it ran in
        self.models = models  # multiplexed functions' loaded models (spec max_models)

    def send(self, message: Message) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(message))

    def send_threadsafe(self, message: Message) -> None:
        self.loop.call_soon_threadsafe(self.send, message)

    def receive(self, message: Message) -> None:
        if isinstance(message, Invoke):
            if message.remaining_s > 0:  # the deadline on this host's clock
                message = msgspec.structs.replace(message, deadline=time.time() + message.remaining_s)
            stop = threading.Event()
            task = self.loop.create_task(self.invoke(message, stop))
            self.running[message.id] = (task, stop)
            task.add_done_callback(lambda _: self.running.pop(message.id, None))
        elif isinstance(message, Cancel) and message.id in self.running:
            task, stop = self.running[message.id]
            stop.set()
            task.cancel()

    async def invoke(self, request: Invoke, stop: threading.Event) -> None:
        buffer = capture.LogBuffer()
        capture.current_buffer.set(buffer)  # this task's own context: invocations never mix logs
        started, cpu_started = time.perf_counter(), time.process_time()
        cpu_box = [0.0]
        try:
            async with self.slots:
                remaining = request.deadline - time.time()
                if remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(remaining):
                    await self.run_call(request, stop, buffer, started, cpu_box)
        except asyncio.CancelledError:
            stop.set()
            self.send(Error(request.id, "Cancelled", "the client went away", self.stats(started, cpu_box)))
        except TimeoutError:
            stop.set()
            message = f"the function ran past its timeout of {self.config.timeout:g} s"
            stats, logs = self.stats(started, cpu_box), capture.collected(buffer)
            recycle = request.id in self.in_threads or (self.batcher is not None and self.batcher.running)
            self.send(Error(request.id, "Timeout", message, stats, logs, recycle=recycle))
        except codec.BadRequest as exc:
            stats = self.stats(started, cpu_box)
            self.send(Error(request.id, "BadRequest", str(exc), stats, caller_fault=True))
        except InvalidInput as exc:  # the body does not fit the function's typed input: it never ran
            stats = self.stats(started, cpu_box)
            self.send(
                Error(request.id, "ValidationError", str(exc), stats, caller_fault=True, errors=exc.errors)
            )
        except InputError as exc:  # the function refused its input: the caller's fault, not a crash
            stats, logs = self.stats(started, cpu_box, cpu_started, request.id), capture.collected(buffer)
            self.send(Error(request.id, type(exc).__name__, str(exc), stats, logs, caller_fault=True))
        except ItemError as exc:  # one item of a batch failed, as the function said: no traceback
            stats, logs = self.stats(started, cpu_box, cpu_started, request.id), capture.collected(buffer)
            self.send(Error(request.id, type(exc).__name__, str(exc), stats, logs))
        except Exception as exc:
            print(traceback.format_exc(), file=sys.stderr, end="")
            stats = self.stats(started, cpu_box, cpu_started, request.id)
            self.send(Error(request.id, type(exc).__name__, str(exc), stats, capture.collected(buffer)))

    def stats(
        self, started: float, cpu_box: list[float], cpu_started: float | None = None, request_id: int = -1
    ) -> CallStats:
        cpu = cpu_box[0] if cpu_box[0] else (time.process_time() - cpu_started if cpu_started else 0.0)
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        batch_size = self.batch_size_of.pop(request_id, 0)
        models = self.models.loaded if self.models is not None else ()
        return CallStats((time.perf_counter() - started) * 1000, cpu * 1000, peak_kb, batch_size, models)

    async def run_call(
        self,
        request: Invoke,
        stop: threading.Event,
        buffer: capture.LogBuffer,
        started: float,
        cpu_box: list[float],
    ) -> None:
        args = self.arguments(request)
        target = self.target
        if self.batcher is not None:
            await self.run_in_batch(request, args, buffer, started, cpu_box)
            return
        if self.models is not None:  # the model may take a while to load: in a thread, not the loop
            args = await self.loop.run_in_executor(self.threads, self.with_model, args)
        if target.is_async_stream:
            cpu_started = time.process_time()
            async for item in target.call(*args):
                self.send(Chunk(request.id, codec.encode_chunk(item)))
            cpu_box[0] = time.process_time() - cpu_started
            self.send(End(request.id, self.stats(started, cpu_box), capture.collected(buffer)))
            return
        if target.is_async:
            cpu_started = time.process_time()
            value = await target.call(*args)
            cpu_box[0] = time.process_time() - cpu_started
        else:
            context = contextvars.copy_context()
            value = await self.loop.run_in_executor(
                self.threads, context.run, self.call_in_thread, request, args, stop, cpu_box
            )
        if target.is_stream:  # a sync generator streamed from its thread; End follows here
            self.send(End(request.id, self.stats(started, cpu_box), capture.collected(buffer)))
            return
        self.answer(request, value, self.stats(started, cpu_box), capture.collected(buffer))

    async def run_in_batch(
        self,
        request: Invoke,
        args: tuple[Any, ...],
        buffer: capture.LogBuffer,
        started: float,
        cpu_box: list[float],
    ) -> None:
        """Wait for this request's place in a batch; answer with its own output (or its item error)."""
        assert self.batcher is not None
        done = await self.batcher.submit(args[0], args[1] if len(args) > 1 else None)
        cpu_box[0] = done.cpu_s
        self.batch_size_of[request.id] = done.batch_size
        if done.logs:
            buffer.write(done.logs)
        stats = self.stats(started, cpu_box, request_id=request.id)
        if isinstance(done.output, BaseException):  # the item's own failure, or its whole batch's
            failure = done.output
            caller_fault = isinstance(failure, InputError)
            name, logs = type(failure).__name__, capture.collected(buffer)
            self.send(Error(request.id, name, str(failure), stats, logs, caller_fault=caller_fault))
            return
        body, content_type = codec.encode_result(done.output)
        headers = {BATCH_SIZE_HEADER: str(done.batch_size)}
        self.send(
            Result(request.id, body, stats, content_type, headers=headers, logs=capture.collected(buffer))
        )

    async def call_batch(self, inputs: list[Any], contexts: list[Any]) -> tuple[Any, float]:
        """One call of the batched function: ``f(inputs)`` or ``f(inputs, contexts)``; its CPU seconds."""
        args = (inputs, contexts) if self.target.wants_context else (inputs,)
        if self.target.is_async:
            cpu_started = time.process_time()
            value = await self.target.call(*args)
            return value, time.process_time() - cpu_started

        def in_thread() -> tuple[Any, float]:
            cpu_started = time.thread_time()
            value = self.target.call(*args)
            return value, time.thread_time() - cpu_started

        return await self.loop.run_in_executor(self.threads, contextvars.copy_context().run, in_thread)

    def call_in_thread(
        self, request: Invoke, args: tuple[Any, ...], stop: threading.Event, cpu: list[float]
    ) -> Any:
        cpu_started = time.thread_time()
        self.in_threads.add(request.id)
        try:
            value = self.target.call(*args)
            if self.target.is_stream:
                for item in value:
                    if stop.is_set():
                        break
                    self.send_threadsafe(Chunk(request.id, codec.encode_chunk(item)))
                return None
            return value
        finally:
            self.in_threads.discard(request.id)
            cpu[0] = time.thread_time() - cpu_started

    def arguments(self, request: Invoke) -> tuple[Any, ...]:
        config = self.config
        if config.style == "lambda-http":
            event: Any = codec.lambda_http_event(request, config.function)
        else:
            event = codec.decode_body(request)
            if config.style == "lambda" and event is None:
                event = {}
            elif self.target.input_adapter is not None and config.style == "native" and self.batcher is None:
                event = validate(self.target.input_adapter, event)  # InvalidInput: a 422, and no call
        if config.style == "native" and not self.target.wants_context:
            return (event,)
        model_id = None
        if self.models is not None:
            try:
                model_id = check_model_id(request.headers.get(MODEL_HEADER))
            except ValueError as exc:
                raise InputError(str(exc)) from None
        context = Context(
            activation_id=request.activation,
            function=config.function,
            revision=config.revision,
            instance=config.instance_id,
            memory_mb=config.memory_mb,
            deadline=request.deadline,
            headers=request.headers,
            model_id=model_id,
            path_params=request.path_params,
            query_params=codec.query_parameters(request.query) if request.query else {},
        )
        return (event, context)

    def with_model(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """The call's arguments with its context holding the request's model (loaded if need be)."""
        assert self.models is not None
        event, context = args
        return event, dataclasses.replace(context, model=self.models.get(context.model_id))

    def answer(self, request: Invoke, value: Any, stats: CallStats, logs: str) -> None:
        if self.config.style == "lambda-http":
            status, headers, body, content_type = codec.lambda_http_response(value)
            self.send(Result(request.id, body, stats, content_type, status, headers, logs))
            return
        body, content_type = codec.encode_result(value)
        self.send(Result(request.id, body, stats, content_type, logs=logs))


class Connection(asyncio.Protocol):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.reader = FrameReader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.worker.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.reader.feed(data)
        except ProtocolError as exc:
            print(f"tidal: protocol error from gateway: {exc}", file=sys.stderr)
            assert self.worker.transport is not None
            self.worker.transport.close()
            return
        for message in messages:
            self.worker.receive(message)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.worker.closed.done():
            self.worker.closed.set_result(None)


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when the gateway that started it dies (no orphans)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass


def load(config: InstanceConfig) -> tuple[Target, Callable[[], None], float]:
    started = time.perf_counter()
    module = import_entry(Path(config.code_dir), config.module)
    target, setup = build_target(module, config.attribute, config.is_class)
    return target, setup, (time.perf_counter() - started) * 1000


async def serve(config: InstanceConfig, listener: socket.socket, preloaded: Target | None = None) -> None:
    """Accept the gateway's connection, load (unless ``preloaded``: set up in a template), serve it.

    Returns when the gateway closes the connection (or never connects within ACCEPT_TIMEOUT_S):
    an instance never outlives the gateway's interest in it, whoever its parent process is.
    """
    loop = asyncio.get_running_loop()
    several = config.several_gateways and listener.family != socket.AF_UNIX  # one per gateway
    connections = gateway_connections(listener, config.connect_token)
    try:
        connection = await asyncio.wait_for(anext(connections), ACCEPT_TIMEOUT_S)
    except TimeoutError:
        print(f"tidal: no gateway connected within {ACCEPT_TIMEOUT_S:g} s; exiting", file=sys.stderr)
        await connections.aclose()
        listener.close()
        return
    if not several:
        await connections.aclose()
        listener.close()
    try:
        if preloaded is not None:  # forked from a template that already imported and set it up
            target, import_ms, setup_ms = preloaded, 0.0, 0.0
        else:
            target, setup, import_ms = load(config)
            setup_started = time.perf_counter()
            setup()
            setup_ms = (time.perf_counter() - setup_started) * 1000
        if target.setup_instance is not None:  # in this instance, whoever ran setup()
            setup_started = time.perf_counter()
            target.setup_instance()
            setup_ms += (time.perf_counter() - setup_started) * 1000
        models = multiplexed(config, target)
    except BaseException as exc:
        traceback.print_exc()
        connection.setblocking(True)
        connection.sendall(encode(SetupFailed(type(exc).__name__, str(exc) or repr(exc))))
        connection.close()
        await connections.aclose()
        listener.close()
        return
    worker = Worker(config, target, models)
    await loop.connect_accepted_socket(lambda: Connection(worker), connection)
    worker.send(Ready(os.getpid(), setup_ms, import_ms))
    if several:
        await serve_gateways(worker, listener, connections)
        return
    await worker.closed  # the gateway closed the connection: this instance is done


async def serve_gateways(
    first: Worker, listener: socket.socket, connections: AsyncGenerator[socket.socket, None]
) -> None:
    """TCP mode: every gateway of a shared store connects to the instance on its own connection.

    Each connection has its own calls (request ids are per connection), but all share the
    instance's ``concurrency`` slots and call threads: a call beyond them waits here, in the
    instance, whichever gateway sent it. The instance ends when its last connection closes.
    """
    loop = asyncio.get_running_loop()
    live = {first}

    async def accept() -> None:
        async for connection in connections:
            worker = Worker(first.config, first.target, first.models)
            worker.slots, worker.threads = first.slots, first.threads
            live.add(worker)
            await loop.connect_accepted_socket(functools.partial(Connection, worker), connection)
            worker.send(Ready(os.getpid(), 0.0, 0.0))

    acceptor = loop.create_task(accept())
    try:
        while live:
            await asyncio.wait([worker.closed for worker in live], return_when=asyncio.FIRST_COMPLETED)
            live = {worker for worker in live if not worker.closed.done()}
    finally:
        acceptor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acceptor  # its generator is closed with it
        await connections.aclose()
        listener.close()


def run(config: InstanceConfig, listener: socket.socket, preloaded: Target | None = None) -> NoReturn:
    """The rest of an instance's life, from a fresh process or a template's forked child; never returns."""
    listener.setblocking(False)
    show_only_gpus(config.visible_gpus)  # a spawned instance got them at exec already; same values
    os.environ.update({"TIDAL_FUNCTION": config.function, "TIDAL_REVISION": config.revision})
    capture.install()
    try:
        import uvloop

        uvloop.run(serve(config, listener, preloaded))
    except ImportError:
        asyncio.run(serve(config, listener, preloaded))
    os._exit(0)  # do not wait on user threads that may still be running


def main() -> None:
    config = msgspec.json.decode(os.environ.pop("TIDAL_INSTANCE"), type=InstanceConfig)
    listener = socket.socket(fileno=int(os.environ.pop("TIDAL_LISTEN_FD")))
    sandbox.enter_from_env()  # a spawned instance sandboxes itself before it imports the function
    die_with_parent()  # after the sandbox: a change of uid clears the parent-death signal
    run(config, listener)


if __name__ == "__main__":
    main()
