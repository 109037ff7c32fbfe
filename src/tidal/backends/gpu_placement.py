"""Which GPUs a new instance gets: a pure allocator over the host's GPU indices.

A spec's ``gpu`` is a count (1, 2 ... whole GPUs) or a fraction 1/k (0.5, 0.25, 0.2 ...: k
instances share one GPU). Shares are kept as exact fractions, so two 0.5 instances fill a GPU
exactly and so do three of 1/3 (written 0.3333).

- A whole-GPU instance takes GPUs nobody holds any part of, the lowest free indices first; two
  instances of ``gpu=1`` therefore spread over GPU 0 and GPU 1.
- A fractional instance packs: it goes to the fullest GPU that still has room for its share (ties:
  the lowest index), so whole GPUs stay free for the functions that need them. Two 0.5 instances
  share GPU 0 even when GPU 1 is idle.
- An instance no GPU can host gets ``GpuUnavailable`` with the reason, naming who holds what; the
  start fails with it and the pool retries after its backoff (the function stays pending).

The allocator holds no clock and does no I/O: the backend asks it at start and tells it at exit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

WHOLE = Fraction(1)
MAX_HOLDERS_SHOWN = 4


class GpuUnavailable(Exception):
    """No GPU can host this instance now (or ever, on this host); the message says why."""


def share_of(gpu: float) -> Fraction:
    """The exact share a spec's ``gpu`` asks for: 2 -> 2, 1 -> 1, 0.5 -> 1/2, 0.3333 -> 1/3, 0 -> 0.

    The spec validates the value first (a fraction is 1/k for a whole k); the nearest 1/k is taken.

    >>> share_of(0.25), share_of(0.3333), share_of(2.0)
    (Fraction(1, 4), Fraction(1, 3), Fraction(2, 1))
    """
    if gpu <= 0:
        return Fraction(0)
    if gpu >= 1:
        return Fraction(round(gpu))
    return Fraction(1, round(1 / gpu))


def show(share: Fraction) -> str:
    """A share as people write it: 1 -> ``1``, 1/2 -> ``0.5``, 1/3 -> ``0.333``."""
    return str(share.numerator) if share.denominator == 1 else f"{float(share):.3g}"


@dataclass(frozen=True)
class Grant:
    """What one instance holds: these GPU indices, each whole or a ``share`` of it."""

    holder: str
    indices: tuple[int, ...]
    share: Fraction  # per GPU: 1 for whole GPUs, 1/k for a fraction

    @property
    def visible_devices(self) -> str:
        """The value of CUDA_VISIBLE_DEVICES for this instance: ``0`` or ``0,1``."""
        return ",".join(str(index) for index in self.indices)


def _held_by(holders: Mapping[str, Fraction]) -> str:
    names = [name if share == WHOLE else f"{name} ({show(share)})" for name, share in sorted(holders.items())]
    more = len(names) - MAX_HOLDERS_SHOWN
    return ", ".join(names[:MAX_HOLDERS_SHOWN]) + (f" and {more} more" if more > 0 else "")


def _who_holds(holdings: Mapping[int, Mapping[str, Fraction]]) -> str:
    parts = [
        f"GPU {index} is held by {_held_by(holders)}"
        for index, holders in sorted(holdings.items())
        if holders
    ]
    return "; ".join(parts) or "no GPU is held"


def place(
    gpu: float, holdings: Mapping[int, Mapping[str, Fraction]], no_gpu_note: str = ""
) -> tuple[int, ...]:
    """The GPU indices for a new instance asking ``gpu``, given who holds what on every host GPU
    (``holdings``: index -> holder -> share). Raises GpuUnavailable with the reason.

    >>> place(1, {0: {"a": Fraction(1)}, 1: {}})
    (1,)
    >>> place(0.5, {0: {}, 1: {"b": Fraction(1, 2)}})
    (1,)
    """
    share = share_of(gpu)
    if share == 0:
        return ()
    free = {index: WHOLE - sum(holders.values(), Fraction(0)) for index, holders in holdings.items()}
    if share >= WHOLE:
        count = int(share)
        plural = "s" if count != 1 else ""
        if count > len(free):
            have = len(free) or "none" + (f" ({no_gpu_note})" if no_gpu_note else "")
            raise GpuUnavailable(f"gpu={count} asks for {count} GPU{plural}; this host has {have}")
        idle = sorted(index for index, left in free.items() if left == WHOLE)
        if len(idle) < count:
            raise GpuUnavailable(
                f"gpu={count} needs {count} free GPU{plural}; {len(idle)} of {len(free)} "
                f"{'is' if len(idle) == 1 else 'are'} free: {_who_holds(holdings)}"
            )
        return tuple(idle[:count])
    if not free:
        note = f" ({no_gpu_note})" if no_gpu_note else ""
        raise GpuUnavailable(f"gpu={show(share)} asks for a share of a GPU; this host has none{note}")
    # Best fit: the fullest GPU with room (least free left), then the lowest index.
    fits = sorted((left, index) for index, left in free.items() if left >= share)
    if not fits:
        raise GpuUnavailable(f"no GPU has {show(share)} free: {_who_holds(holdings)}")
    return (fits[0][1],)


class GpuAllocator:
    """The GPUs of one host and which instance holds what share of each."""

    def __init__(self, indices: Sequence[int], no_gpu_note: str = "") -> None:
        self._held: dict[int, dict[str, Fraction]] = {index: {} for index in indices}
        self._grants: dict[str, Grant] = {}
        self.no_gpu_note = no_gpu_note  # why the host has none, for the refusal's message

    @property
    def has_gpus(self) -> bool:
        return bool(self._held)

    def allocate(self, holder: str, gpu: float) -> Grant | None:
        """Reserve GPUs for ``holder`` (None for ``gpu=0``); GpuUnavailable when none can host it."""
        indices = place(gpu, self._held, self.no_gpu_note)
        if not indices:
            return None
        grant = Grant(holder, indices, min(share_of(gpu), WHOLE))
        for index in indices:
            self._held[index][holder] = grant.share
        self._grants[holder] = grant
        return grant

    def release(self, holder: str) -> None:
        """``holder`` is gone: its GPUs (or shares) are free again. Unknown holders are ignored."""
        grant = self._grants.pop(holder, None)
        if grant is not None:
            for index in grant.indices:
                self._held[index].pop(holder, None)

    def holdings(self) -> dict[int, dict[str, float]]:
        """Who holds what share of each GPU (for status)."""
        return {
            index: {name: float(share) for name, share in holders.items()}
            for index, holders in self._held.items()
        }


def visible_devices(grant: Grant | None, host_has_gpus: bool) -> str | None:
    """CUDA_VISIBLE_DEVICES for an instance: its GPUs; "" (none) for ``gpu=0`` on a GPU host;
    None (left alone) for ``gpu=0`` on a host without GPUs.
    """
    if grant is not None:
        return grant.visible_devices
    return "" if host_has_gpus else None
