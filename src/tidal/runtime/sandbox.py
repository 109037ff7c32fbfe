"""Entering the sandbox, inside a template or a spawned instance, before any user code runs.

The gateway decides the plan (``tidal.backends.isolation``); this module only carries it out,
in the process that will import the function's module:

1. A mount namespace of its own (as root), or a user + mount namespace (as an ordinary user).
2. Every path in ``hide`` (the state dir, /tmp, root's home ...) is covered by an empty tmpfs,
   so the admin key, the database, logs and other functions' code are simply not there.
3. Every path in ``keep`` that lay under a hidden one (the interpreter, the virtualenv, the
   function's own code) is bound back at the same path, read-only.
4. As root: all groups dropped, then the function's own uid and gid (other functions, the
   gateway and its templates are other uids: no signals, no ptrace, no /proc/PID/environ).
5. No new privileges from here on (setuid binaries do not elevate).

Forked instances inherit all of it from their template, so a cold start pays none of it.
Linux only; uses libc through ctypes (Python 3.11 has no os.unshare or mount).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import PurePosixPath

import msgspec

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
PR_SET_DUMPABLE = 4
O_PATH = 0o10000000


class SandboxPlan(msgspec.Struct, frozen=True):
    """What one function's processes may see and who they run as."""

    code_dir: str
    hide: list[str]  # covered by an empty tmpfs (writable only where listed in ``scratch``)
    keep: list[str]  # bound back read-only where a hidden path covered them
    scratch: list[str] = []  # hidden paths whose tmpfs the function may write (/tmp)
    uid: int | None = None  # as root: run as this uid/gid; None keeps the gateway's
    gid: int | None = None
    user_namespace: bool = False  # not root: a user namespace makes the mounts possible
    scratch_mb: int = 512  # size of each scratch tmpfs


class SandboxError(RuntimeError):
    pass


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise SandboxError(f"{what} failed: {os.strerror(errno)} (errno {errno})")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = lambda text: text.encode() if text is not None else None  # noqa: E731
    result = _libc.mount(encode(source), target.encode(), encode(fstype), ctypes.c_ulong(flags), encode(data))
    _check(result, f"mount {source or fstype} on {target}")


def _under(path: str, parent: str) -> bool:
    return PurePosixPath(path).is_relative_to(parent)


def enter(plan: SandboxPlan) -> None:
    """Carry out ``plan`` in this process. Raises SandboxError: a process that cannot be
    sandboxed must not go on to run the function.
    """
    uid, gid = os.getuid(), os.getgid()
    if plan.user_namespace:
        _check(
            _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(dumpable)"
        )  # /proc/self/*_map are ours to write
        _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare(user, mount)")
        for name, content in (
            ("setgroups", "deny"),
            ("uid_map", f"{uid} {uid} 1"),
            ("gid_map", f"{gid} {gid} 1"),
        ):
            with open(f"/proc/self/{name}", "w") as file:
                file.write(content)
    else:
        _check(_libc.unshare(CLONE_NEWNS), "unshare(mount)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    hidden = [path for path in plan.hide if os.path.isdir(path)]
    # Handles on what must come back, taken before anything is covered.
    kept: dict[str, int] = {}
    for path in plan.keep:
        if any(_under(path, h) for h in hidden):
            try:
                kept[path] = os.open(path, O_PATH)
            except PermissionError:
                continue  # out of this user's reach before the sandbox: it stays out of reach
    try:
        for path in sorted(hidden, key=len):
            if any(_under(path, other) and other != path for other in hidden):
                continue  # already covered by its parent's tmpfs
            scratch = path in plan.scratch
            options = f"mode={'1777' if scratch else '0755'},size={plan.scratch_mb if scratch else 1}m"
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, options)
        for path, handle in sorted(kept.items()):
            if os.path.isdir(f"/proc/self/fd/{handle}"):
                os.makedirs(path, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "a").close()
            _mount(f"/proc/self/fd/{handle}", path, None, MS_BIND | MS_REC)
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
    finally:
        for handle in kept.values():
            os.close(handle)
    os.chdir(plan.code_dir)
    if plan.uid is not None and plan.gid is not None:
        os.setgroups([])
        os.setresgid(plan.gid, plan.gid, plan.gid)
        os.setresuid(plan.uid, plan.uid, plan.uid)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(no_new_privs)")


def enter_from_env() -> None:
    """Enter the sandbox described by TIDAL_SANDBOX, when the gateway asked for one."""
    raw = os.environ.pop("TIDAL_SANDBOX", None)
    if raw:
        enter(msgspec.json.decode(raw, type=SandboxPlan))
