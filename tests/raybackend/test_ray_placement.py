"""Pure placement arithmetic of the Ray backend, and the spec fields it reads (no cluster needed)."""

from __future__ import annotations

import pytest

from tidal.backends.ray_placement import MiB, bundle_for, unplaceable_reason
from tidal.spec import SpecError, validate_spec


def test_a_bundle_holds_every_resource_the_spec_asks_for() -> None:
    spec = validate_spec({"name": "f", "cpu": 2, "memory": 1024, "gpu": 0.5, "accelerator_type": "H100",
                          "resources": {"edge": 1, "tpu_slice": 0.25}})  # fmt: skip
    assert bundle_for(spec) == {
        "CPU": 2.0, "memory": 1024.0 * MiB, "GPU": 0.5, "accelerator_type:H100": 0.001, "edge": 1.0, "tpu_slice": 0.25,
    }  # fmt: skip


def test_a_bundle_no_node_could_ever_hold_is_refused_with_what_is_missing() -> None:
    bundle = bundle_for(validate_spec({"name": "f", "memory": 4096, "resources": {"edge": 2}}))
    nodes = [{"CPU": 0.5, "memory": 64e9}, {"CPU": 1.0, "memory": 2048.0 * MiB, "edge": 2.0}]
    reason = unplaceable_reason(bundle, nodes)
    assert reason is not None and "memory 4096 MiB" in reason and "edge 2" in reason
    assert "memory: 2048 of 4096" in reason  # the node that lacks least is the one described
    nodes[1]["memory"] = 8192.0 * MiB
    assert unplaceable_reason(bundle, nodes) is None
    assert unplaceable_reason(bundle, []) == "the Ray cluster has no live node"


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"GPU": 1}, "set by its own field"),
        ({"bad name!": 1}, "not a resource name"),
        ({"edge": 0}, "above 0"),
    ],
)
def test_bad_resources_are_refused_at_validation(resources: dict[str, float], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        validate_spec({"name": "f", "resources": resources})


def test_a_bad_accelerator_type_is_refused() -> None:
    with pytest.raises(SpecError, match="accelerator_type"):
        validate_spec({"name": "f", "accelerator_type": "A100; rm -rf /"})
