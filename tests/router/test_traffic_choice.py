"""Choosing a revision for a request: weights, sticky keys, named revisions and tags."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import msgspec

from tidal.invoke.request import RequestContext
from tidal.router.router import Router, ServingTarget, Target, choose_target, sticky_draw
from tidal.spec import validate_spec
from tidal.store.models import Revision


def target(number: int, percent: int, tag: str | None = None) -> Target:
    revision = Revision(
        f"fn-{number:05d}", "fn", number, "d", "c", "m", "f", False, "native", {}, time.time()
    )
    pool: Any = object()
    return Target(revision, validate_spec({"name": "fn"}), pool, percent, tag)


def test_a_single_target_takes_everything() -> None:
    only = target(1, 100)
    assert all(choose_target([only], RequestContext(), draw) is only for draw in (0.0, 0.5, 0.999))


def test_weights_split_the_draws() -> None:
    stable, canary = target(1, 90), target(2, 10)
    picks = Counter(
        choose_target([stable, canary], RequestContext(), i / 1000).revision.id for i in range(1000)
    )  # type: ignore[union-attr]
    assert picks == {"fn-00001": 900, "fn-00002": 100}


def test_a_zero_percent_target_gets_nothing_unless_named() -> None:
    stable, dark = target(1, 100), target(2, 0, "dark")
    assert all(choose_target([stable, dark], RequestContext(), i / 100) is stable for i in range(100))
    assert choose_target([stable, dark], RequestContext(revision="dark"), 0.5) is dark
    assert choose_target([stable, dark], RequestContext(revision="fn-00001"), 0.5) is stable
    assert choose_target([stable, dark], RequestContext(revision="nope"), 0.5) is None


def test_sticky_keys_stay_put_and_a_weight_change_moves_only_its_share() -> None:
    keys = [f"user-{i}" for i in range(2000)]
    before = [target(1, 90), target(2, 10)]
    after = [target(1, 80), target(2, 20)]

    def assign(targets: list[Target]) -> dict[str, str]:
        # The random draw (0.0) must not matter when a sticky key is given.
        return {key: choose_target(targets, RequestContext(sticky_key=key), 0.0).revision.id for key in keys}  # type: ignore[union-attr]

    first, again, moved_to = assign(before), assign(before), assign(after)
    assert first == again, "the same key lands on the same revision while weights stay"
    moved = [key for key in keys if first[key] != moved_to[key]]
    assert all(first[key] == "fn-00001" and moved_to[key] == "fn-00002" for key in moved)
    assert 0.07 < len(moved) / len(keys) < 0.13, "about 10% of keys moved, no more"
    assert 0 <= sticky_draw("x") < 1 and sticky_draw("x") == sticky_draw("x")


class IdleBackend:
    """Enough of a backend for Router.serve: nothing is started (no min_instances)."""

    async def prepare(self, launch: Any) -> None:
        pass

    async def release(self, launch: Any) -> None:
        pass


async def test_a_flip_of_shares_moves_only_the_keys_that_changed_hands() -> None:
    router = Router(IdleBackend())  # type: ignore[arg-type]
    old, new = (msgspec.structs.replace(target(n, 0).revision, spec={"name": "fn"}) for n in (1, 2))

    def split(old_percent: int, new_percent: int) -> dict[str, str]:
        # The store lists the larger share first: the slices must not follow that order.
        serving = sorted(
            [ServingTarget(old, "/code", old_percent), ServingTarget(new, "/code", new_percent)],
            key=lambda item: -item.percent,
        )
        route = router.serve("fn", False, serving)
        return {key: router.pick(route, RequestContext(sticky_key=key)).revision.id  # type: ignore[union-attr]
                for key in (f"user-{i}" for i in range(5000))}  # fmt: skip

    before, after = split(40, 60), split(60, 40)
    moved = [key for key in before if before[key] != after[key]]
    assert all(before[key] == "fn-00002" for key in moved), "keys only move from the shrinking revision"
    # 20% of 5,000 keys change hands: mean 1,000, standard deviation about 28; 5 sigma either side.
    assert 860 <= len(moved) <= 1140, len(moved)
    await router.close()
