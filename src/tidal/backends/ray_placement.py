"""Where an instance may run on a Ray cluster: pure arithmetic on resource tables, no Ray calls.

An instance reserves one placement-group bundle built from its function's spec; a bundle no
node could ever hold (even empty) is refused at once with the reason, instead of a start that
waits forever for a node that does not exist.
"""

from __future__ import annotations

from collections.abc import Mapping

from tidal.spec import FunctionSpec

MiB = 1024 * 1024
# Ray's accelerator_type:NAME resource is 1 on nodes with that accelerator; asking for a sliver
# of it selects such nodes without limiting how many instances share one.
ACCELERATOR_SHARE = 0.001


def bundle_for(spec: FunctionSpec) -> dict[str, float]:
    """The resources one instance reserves.

    >>> from tidal.spec import FunctionSpec
    >>> bundle_for(FunctionSpec(name="f", cpu=0.5, memory=256, resources={"edge": 1}))
    {'CPU': 0.5, 'memory': 268435456.0, 'edge': 1.0}
    """
    bundle: dict[str, float] = {"CPU": float(spec.cpu), "memory": float(spec.memory * MiB)}
    if spec.gpu > 0:
        bundle["GPU"] = float(spec.gpu)
    if spec.accelerator_type:
        bundle[f"accelerator_type:{spec.accelerator_type}"] = ACCELERATOR_SHARE
    bundle.update({name: float(amount) for name, amount in spec.resources.items()})
    return bundle


def describe_bundle(bundle: Mapping[str, float]) -> str:
    """The bundle as a person reads it.

    >>> describe_bundle({"CPU": 1.0, "memory": 536870912.0, "edge": 1.0})
    'CPU 1, memory 512 MiB, edge 1'
    """
    parts = []
    for name, amount in bundle.items():
        parts.append(f"memory {amount / MiB:g} MiB" if name == "memory" else f"{name} {amount:g}")
    return ", ".join(parts)


def unplaceable_reason(bundle: Mapping[str, float], node_totals: list[Mapping[str, float]]) -> str | None:
    """Why no live node (by its total resources) can ever hold ``bundle``; None when one can.

    >>> unplaceable_reason({"CPU": 1.0, "edge": 1.0}, [{"CPU": 4.0}, {"CPU": 0.5, "edge": 1.0}])
    'no node of the Ray cluster has CPU 1, edge 1 (the closest lacks edge: 0 of 1)'
    >>> unplaceable_reason({"CPU": 1.0}, [{"CPU": 1.0}]) is None
    True
    """
    if not node_totals:
        return "the Ray cluster has no live node"
    best_missing: list[str] | None = None
    for totals in node_totals:
        missing = [
            f"{name}: {totals.get(name, 0.0) / (MiB if name == 'memory' else 1):g} of "
            f"{amount / (MiB if name == 'memory' else 1):g}"
            for name, amount in bundle.items()
            if totals.get(name, 0.0) + 1e-9 < amount
        ]
        if not missing:
            return None
        if best_missing is None or len(missing) < len(best_missing):
            best_missing = missing
    return (
        f"no node of the Ray cluster has {describe_bundle(bundle)}"
        f" (the closest lacks {'; '.join(best_missing or [])})"
    )
