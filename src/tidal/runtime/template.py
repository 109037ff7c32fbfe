"""The template (zygote): a warm process that forks instances in milliseconds.

Started by the local backend as ``python -m tidal.runtime.template``, once per revision code +
module (+ target, when the spec says ``load_once``), with its configuration (JSON) in
TIDAL_TEMPLATE_CONFIG and one end of a SOCK_SEQPACKET socketpair inherited as TIDAL_CONTROL_FD.
It imports everything an instance needs (the worker, msgspec, uvloop, the user's module) and,
with ``load_once``, builds the target and runs ``setup()`` (the model load), so an instance is a
``fork()`` away with the model already in memory, shared copy-on-write.

It stays single-threaded and blocking (no event loop exists before a fork). Each control message
is one JSON datagram (``ControlMessage``): the backend sends ``Fork`` with the instance's
already-listening socket attached (SCM_RIGHTS); the template forks, answers ``Forked`` (or
``ForkFailed``), reaps its children as they exit (SIGCHLD wakes the loop) and reports ``Exited``.

fork() copies only the calling thread, so libraries whose thread pools were running in the template
would deadlock the child: torch's OpenMP pool above all. The template therefore runs with
OMP_NUM_THREADS=MKL_NUM_THREADS=1 (and refuses to serve when user code raised torch's thread
count); each child restores the instance's environment and raises torch's threads to its cpu.

GPUs: a forked child can use CUDA only if the template never initialised it (measured on an
H200: a template that ran one forward, or a plain ``torch.cuda.is_available()``, gives every child
``CUDA error: initialization error``). The template of a ``gpu > 0`` function therefore runs with
PYTORCH_NVML_BASED_CUDA_CHECK=1 (``is_available()`` asks NVML, fork-safe), and checks
``torch.cuda.is_initialized()`` once ready and before each fork: when set, it refuses for good
(``TemplateFailed`` of type CudaInitialized, or a lasting ``ForkFailed``) and exits, and the
backend starts that function's instances as fresh processes, showing why. Each child sets its own
CUDA_VISIBLE_DEVICES first thing; the class's ``setup_instance()`` then moves the model to the GPU.

The template dies with the gateway (PR_SET_PDEATHSIG) or when the backend closes the control
socket; its children do not die with it: they are instances, and each exits when its gateway
connection closes.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

import msgspec

from tidal.runtime import sandbox, worker
from tidal.runtime.loader import Target, build_target, import_entry

# Set in the template's environment (never an instance's) so the pinned values and the marker
# can be undone in each child; user code may look at TIDAL_TEMPLATE to tell where it runs.
PINNED_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TIDAL_TEMPLATE": "1"}
# Pinned too in the template of a gpu > 0 function: torch.cuda.is_available() then asks NVML
# instead of initialising CUDA, so the common `"cuda" if is_available() else "cpu"` stays fork-safe.
GPU_PINNED_ENV = {"PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
CUDA_INITIALISED = "CudaInitialized"  # TemplateFailed.type: a lasting refusal (the code must change)
CUDA_REFUSAL = (
    "the template initialised CUDA during import or setup(), so forked instances could not use the"
    " GPU; instances start as fresh processes (slow). Move GPU work (model.to('cuda'), warm-up"
    " forwards) into setup_instance()"
)
MAX_MESSAGE = 1 << 20


class TemplateConfig(msgspec.Struct, frozen=True):
    code_dir: str
    module: str
    attribute: str | None = None  # with load_once: the target built (and set up) in the template
    is_class: bool = False
    load_once: bool = False
    restore_env: dict[str, str | None] = {}  # the instance's own values of the pinned names
    gpu: bool = False  # a gpu > 0 function: CUDA must stay uninitialised here (cuda_initialised)


def pinned_env(gpu: bool) -> dict[str, str]:
    """What the template runs with, undone in each child (``restore_env``)."""
    return {**PINNED_ENV, **GPU_PINNED_ENV} if gpu else dict(PINNED_ENV)


class Control(msgspec.Struct, frozen=True, tag_field="kind"):
    """One datagram on the control socket."""


class TemplateReady(Control, tag="ready", frozen=True):
    pid: int
    import_ms: float
    setup_ms: float
    threads: int  # OS threads of the template when it became ready (1 is the safest to fork)


class TemplateFailed(Control, tag="failed", frozen=True):
    type: str
    message: str


class Fork(Control, tag="fork", frozen=True):
    """Fork an instance. Two descriptors travel with it: the listening socket, then the log file
    (opened by the gateway: the template's own mount view has no state dir to open it in).
    """

    id: int
    config: worker.InstanceConfig
    cpu: float = 1.0


class Forked(Control, tag="forked", frozen=True):
    id: int
    pid: int
    fork_ms: float  # inside the template: from the request's arrival to fork() returning


class ForkFailed(Control, tag="fork_failed", frozen=True):
    id: int
    message: str
    lasting: bool = False  # this template will never fork again (it exits): do not rebuild it soon


class Exited(Control, tag="exited", frozen=True):
    pid: int
    code: int  # like Popen.returncode: -N for a process killed by signal N


ControlMessage = TemplateReady | TemplateFailed | Fork | Forked | ForkFailed | Exited
_decoder = msgspec.json.Decoder(ControlMessage)


def encode(message: Control) -> bytes:
    return msgspec.json.encode(message)


def decode(data: bytes) -> ControlMessage:
    return _decoder.decode(data)


def os_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def preload(config: TemplateConfig) -> tuple[Target | None, float, float]:
    """Import the module (and with load_once build + set up the target): (target, import_ms, setup_ms)."""
    started = time.perf_counter()
    module = import_entry(Path(config.code_dir), config.module)
    check_torch_threads()
    target: Target | None = None
    import_ms, setup_ms = (time.perf_counter() - started) * 1000, 0.0
    if config.load_once and config.attribute is not None:
        target, setup = build_target(module, config.attribute, config.is_class)
        import_ms = (time.perf_counter() - started) * 1000
        setup_started = time.perf_counter()
        setup()
        setup_ms = (time.perf_counter() - setup_started) * 1000
        check_torch_threads()
    return target, import_ms, setup_ms


def cuda_initialised() -> bool:
    """Whether this process initialised CUDA: a fork from it then gives children a dead CUDA
    context (``CUDA error: initialization error``). Only torch is checked, and only if imported.
    """
    torch: Any = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_initialized())
    except AttributeError:  # a torch-like module without torch.cuda: nothing CUDA ran through it
        return False


def check_torch_threads() -> None:
    """Refuse to be a template when user code gave torch more than one thread (OMP_NUM_THREADS=1 is ours).

    Lowering it again would not help: an op that already ran on several OpenMP threads leaves a
    pool behind that a forked child deadlocks on.
    """
    torch: Any = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() > 1:
        raise RuntimeError(
            f"user code set torch to {torch.get_num_threads()} threads in the template; forking after a"
            " multi-threaded op can deadlock, so instances of this module start as fresh processes"
        )


class Template:
    def __init__(self, control: socket.socket, config: TemplateConfig, target: Target | None) -> None:
        self.control = control
        self.config = config
        self.target = target
        self.refused = False  # set when it refused a fork for good (CUDA initialised)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def send(self, message: Control) -> None:
        self.control.send(encode(message))

    def loop(self) -> None:
        """Serve fork requests until the backend closes the control socket."""
        signal.set_wakeup_fd(self.wake_w)  # SIGCHLD wakes select() at once: exits are reported fast
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the gateway's; it closes us itself
        control = self.control.fileno()
        while True:
            readable, _, _ = select.select([control, self.wake_r], [], [], 1.0)
            if self.wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self.wake_r, 512):
                        pass
            self.reap()
            if control in readable:
                try:
                    data, fds, _, _ = socket.recv_fds(self.control, MAX_MESSAGE, 4)
                except OSError:
                    return
                if not data:
                    return  # the backend is gone or replaced us; our instances carry on
                self.handle(data, fds)
                if self.refused:
                    return

    def handle(self, data: bytes, fds: list[int]) -> None:
        try:
            request = decode(data)
        except msgspec.DecodeError as exc:
            for fd in fds:
                os.close(fd)
            print(f"tidal template: bad control message: {exc}", file=sys.stderr)
            return
        if not isinstance(request, Fork):
            for fd in fds:
                os.close(fd)
            return
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            self.send(
                ForkFailed(request.id, f"expected a listening socket and a log file, got {len(fds)} fds")
            )
            return
        self.fork(request, fds[0], fds[1])

    def fork(self, request: Fork, listen_fd: int, log_fd: int) -> None:
        started = time.perf_counter()
        if self.config.gpu and cuda_initialised():  # checked at ready too; user threads may run on
            os.close(listen_fd)
            os.close(log_fd)
            self.send(ForkFailed(request.id, CUDA_REFUSAL, lasting=True))
            self.refused = True  # it can never fork a GPU instance again: exit, the backend spawns them
            return
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(listen_fd)
            os.close(log_fd)
            self.send(ForkFailed(request.id, f"fork failed: {exc}"))
            return
        if pid == 0:
            self.child(request, listen_fd, log_fd)
        os.close(listen_fd)
        os.close(log_fd)
        self.send(Forked(request.id, pid, (time.perf_counter() - started) * 1000))

    def child(self, request: Fork, listen_fd: int, log_fd: int) -> NoReturn:
        """In the forked child: become the instance. Never returns into the template's loop."""
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a spawned instance
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.control.close()
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.close(log_fd)
            for name, value in self.config.restore_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            worker.show_only_gpus(request.config.visible_gpus)  # first: before torch is touched
            torch: Any = sys.modules.get("torch")
            if torch is not None:
                torch.set_num_threads(max(1, int(request.cpu)))
            reseed_random_generators()
            worker.run(request.config, socket.socket(fileno=listen_fd), self.target)
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
        os._exit(1)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            with contextlib.suppress(OSError):
                self.send(Exited(pid, os.waitstatus_to_exitcode(status)))


def reseed_random_generators() -> None:
    """Give each forked sibling its own random stream.

    Python's ``random`` reseeds itself after fork; numpy's and torch's global generators do not, so
    without this every instance of a template would draw the same "random" numbers (same dropout
    masks, same sampled tokens).
    """
    numpy_random: Any = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()
    torch: Any = sys.modules.get("torch")
    if torch is not None:
        torch.seed()


def main() -> None:
    worker.die_with_parent()
    parent = os.environ.pop("TIDAL_PARENT_PID", "")
    if parent and os.getppid() != int(parent):
        os._exit(1)  # the gateway died before PR_SET_PDEATHSIG took hold
    config = msgspec.json.decode(os.environ.pop("TIDAL_TEMPLATE_CONFIG"), type=TemplateConfig)
    control = socket.socket(fileno=int(os.environ.pop("TIDAL_CONTROL_FD")))
    control.setblocking(True)
    try:
        sandbox.enter_from_env()  # before the function's module is imported: all it runs is inside
    except sandbox.SandboxError as exc:
        control.send(encode(TemplateFailed("SandboxError", str(exc))))
        os._exit(1)
    worker.die_with_parent()  # a change of uid cleared the parent-death signal: set it again
    if parent and os.getppid() != int(parent):
        os._exit(1)
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401  (imported once here, not in every instance)
    try:
        target, import_ms, setup_ms = preload(config)
    except BaseException as exc:
        traceback.print_exc()
        with contextlib.suppress(OSError):
            control.send(encode(TemplateFailed(type(exc).__name__, str(exc) or repr(exc))))
        sys.stderr.flush()
        os._exit(1)
    if config.gpu and cuda_initialised():  # its children could not use the GPU: let them spawn
        print(f"tidal template: {CUDA_REFUSAL}", file=sys.stderr, flush=True)
        with contextlib.suppress(OSError):
            control.send(encode(TemplateFailed(CUDA_INITIALISED, CUDA_REFUSAL)))
        os._exit(1)
    control.send(encode(TemplateReady(os.getpid(), import_ms, setup_ms, os_threads())))
    Template(control, config, target).loop()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
