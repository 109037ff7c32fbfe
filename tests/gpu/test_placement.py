"""The GPU allocator: counts, shares, spreading and packing, refusals that say why, release."""

from __future__ import annotations

from fractions import Fraction

import pytest

from tidal.backends.gpu_placement import GpuAllocator, GpuUnavailable, place, share_of, visible_devices
from tidal.spec import SpecError, validate_spec


def test_whole_gpus_spread_over_the_free_ones() -> None:
    gpus = GpuAllocator([0, 1, 2, 3])
    grants = [gpus.allocate(f"fn-00001-{i}", 1) for i in range(3)]
    assert [grant.visible_devices for grant in grants if grant] == ["0", "1", "2"]
    with pytest.raises(GpuUnavailable) as refused:
        gpus.allocate("big-00001-a", 2)
    assert str(refused.value) == (
        "gpu=2 needs 2 free GPUs; 1 of 4 is free: GPU 0 is held by fn-00001-0; "
        "GPU 1 is held by fn-00001-1; GPU 2 is held by fn-00001-2"
    )
    gpus.release("fn-00001-1")
    pair = gpus.allocate("big-00001-a", 2)
    assert pair is not None and pair.visible_devices == "1,3" and pair.share == 1


def test_a_count_larger_than_the_host_is_refused() -> None:
    with pytest.raises(GpuUnavailable, match=r"^gpu=2 asks for 2 GPUs; this host has 1$"):
        GpuAllocator([0]).allocate("x", 2)
    with pytest.raises(
        GpuUnavailable, match=r"^gpu=1 asks for 1 GPU; this host has none \(no NVIDIA driver found\)$"
    ):
        GpuAllocator([], "no NVIDIA driver found").allocate("x", 1)
    with pytest.raises(GpuUnavailable, match=r"^gpu=0.5 asks for a share of a GPU; this host has none$"):
        GpuAllocator([]).allocate("x", 0.5)


def test_shares_pack_onto_the_fullest_gpu_with_room() -> None:
    gpus = GpuAllocator([0, 1])
    halves = [gpus.allocate(f"half-00001-{i}", 0.5) for i in range(2)]
    assert [grant.visible_devices for grant in halves if grant] == ["0", "0"]  # GPU 1 stays whole
    whole = gpus.allocate("whole-00001-a", 1)
    assert whole is not None and whole.visible_devices == "1"
    with pytest.raises(GpuUnavailable) as refused:
        gpus.allocate("quarter-00001-a", 0.25)
    assert str(refused.value) == (
        "no GPU has 0.25 free: GPU 0 is held by half-00001-0 (0.5), half-00001-1 (0.5); "
        "GPU 1 is held by whole-00001-a"
    )
    gpus.release("half-00001-0")
    quarters = [gpus.allocate(f"quarter-00001-{i}", 0.25) for i in range(2)]
    assert [grant.visible_devices for grant in quarters if grant] == ["0", "0"]
    assert gpus.holdings()[0] == {"half-00001-1": 0.5, "quarter-00001-0": 0.25, "quarter-00001-1": 0.25}


def test_best_fit_prefers_a_partly_used_gpu_and_thirds_fill_one_exactly() -> None:
    holdings = {0: {}, 1: {"a": Fraction(1, 2)}, 2: {"b": Fraction(3, 4)}}
    assert place(0.25, holdings) == (2,)  # the fullest that still has room
    assert place(0.5, holdings) == (1,)
    thirds = GpuAllocator([0])
    for i in range(3):
        thirds.allocate(f"t{i}", 0.3333)
    with pytest.raises(GpuUnavailable, match=r"no GPU has 0\.333 free"):
        thirds.allocate("t3", 0.3333)


def test_a_whole_gpu_is_never_given_one_that_holds_a_share() -> None:
    gpus = GpuAllocator([0])
    gpus.allocate("small", 0.25)
    with pytest.raises(
        GpuUnavailable, match=r"gpu=1 needs 1 free GPU; 0 of 1 are free: GPU 0 is held by small \(0.25\)"
    ):
        gpus.allocate("big", 1)


def test_release_is_idempotent_and_gpu_0_is_no_grant() -> None:
    gpus = GpuAllocator([0])
    assert gpus.allocate("cpu-only", 0) is None
    gpus.release("cpu-only")
    gpus.release("never-seen")
    grant = gpus.allocate("a", 1)
    gpus.release("a")
    gpus.release("a")
    assert gpus.holdings() == {0: {}}
    assert visible_devices(grant, True) == "0"
    assert visible_devices(None, True) == "" and visible_devices(None, False) is None


def test_many_holders_are_cut_short_in_the_reason() -> None:
    gpus = GpuAllocator([0])
    for i in range(8):
        gpus.allocate(f"f{i}", 0.125)
    with pytest.raises(
        GpuUnavailable, match=r"f0 \(0.125\), f1 \(0.125\), f2 \(0.125\), f3 \(0.125\) and 4 more$"
    ):
        gpus.allocate("f8", 0.125)


def test_share_of_takes_the_nearest_whole_divisor() -> None:
    assert [share_of(v) for v in (0, 0.5, 0.25, 0.3333, 1, 3)] == [
        Fraction(0),
        Fraction(1, 2),
        Fraction(1, 4),
        Fraction(1, 3),
        Fraction(1),
        Fraction(3),
    ]


@pytest.mark.parametrize("value", [0, 1, 2, 16, 0.5, 0.25, 0.2, 0.125, 0.0625, 0.3333])
def test_the_spec_takes_counts_and_even_shares(value: float) -> None:
    assert validate_spec({"name": "x", "gpu": value}).gpu == pytest.approx(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.5, "more than one GPU must be a whole number"),
        (17, "at most 16 per instance"),
        (0.3, "a share of a GPU must be 1/k for a whole k up to 16"),
        (0.01, "a share of a GPU must be 1/k"),
        (-1, "must be 0 (no GPU), a count of GPUs"),
        (float("nan"), "must be 0 (no GPU)"),
    ],
)
def test_the_spec_refuses_other_gpu_values(value: float, message: str) -> None:
    with pytest.raises(SpecError, match=r"spec\.gpu") as refused:
        validate_spec({"name": "x", "gpu": value})
    assert message in str(refused.value)


def test_whole_counts_are_stored_as_before() -> None:
    """Specs (and revision digests) written when `gpu` was an int read and dump the same."""
    assert validate_spec({"name": "x", "gpu": 1}).revision_fields()["gpu"] == 1
    assert isinstance(validate_spec({"name": "x"}).revision_fields()["gpu"], int)
    assert validate_spec({"name": "x", "gpu": 0.5}).revision_fields()["gpu"] == 0.5
