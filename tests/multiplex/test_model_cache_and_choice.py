"""The pure parts of model multiplexing: the instance's LRU of models and the router's choice."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from tidal.invoke.request import RequestContext
from tidal.router.multiplex import choose_for_model
from tidal.runtime.models import ModelCache, check_model_id


def test_the_cache_keeps_the_most_recently_used_models_and_tells_what_it_drops() -> None:
    loads: list[str] = []
    dropped: list[tuple[str, str]] = []
    cache = ModelCache(
        2, lambda name: loads.append(name) or f"model-{name}", lambda name, m: dropped.append((name, m))
    )
    assert cache.get("a") == "model-a" and cache.get("b") == "model-b"
    assert cache.get("a") == "model-a"  # a hit: no load, and "a" is now the most recent
    assert cache.get("c") == "model-c"  # one too many: "b" (least recent) goes
    assert loads == ["a", "b", "c"] and dropped == [("b", "model-b")]
    assert cache.loaded == ("a", "c")


def test_requests_for_one_model_arriving_together_load_it_once() -> None:
    loads: list[str] = []

    def slow_load(name: str) -> str:
        loads.append(name)
        time.sleep(0.2)
        return name.upper()

    cache = ModelCache(3, slow_load)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("x"))) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["X"] * 5 and loads == ["x"]


def test_a_failed_load_is_not_cached_and_can_be_tried_again() -> None:
    attempts = []

    def flaky(name: str) -> str:
        attempts.append(name)
        if len(attempts) == 1:
            raise FileNotFoundError(name)
        return name

    cache = ModelCache(1, flaky)
    with pytest.raises(FileNotFoundError):
        cache.get("m")
    assert cache.loaded == () and cache.get("m") == "m" and cache.loaded == ("m",)


def test_model_ids_are_checked() -> None:
    assert check_model_id("tenant-7/v2") == "tenant-7/v2"
    with pytest.raises(ValueError, match="name one with the x-tidal-model header"):
        check_model_id(None)
    with pytest.raises(ValueError, match="visible ASCII"):
        check_model_id("has space")


@dataclass
class Instance:
    name: str
    assigned: int = 0
    models: tuple[str, ...] = ()


def pick(ready: list[Instance], model: str | None, concurrency: int = 2) -> str | None:
    chosen = choose_for_model(ready, concurrency, RequestContext(model_id=model))
    if chosen is not None:
        chosen.assigned += 1
    return None if chosen is None else chosen.name


def test_a_model_goes_where_it_is_held_else_where_fewest_are_held() -> None:
    a, b = Instance("a", models=("m1",)), Instance("b", models=("m2", "m3"))
    assert pick([a, b], "m2") == "b"  # held by b
    assert pick([a, b], "m4") == "a"  # held nowhere: a holds fewer; a now expects m4
    assert a.models == ("m1", "m4")
    assert pick([a, b], "m4") == "a"  # the next request for m4 follows the first, while it loads
    assert pick([a, b], "m4") == "b"  # a is full (concurrency 2): b loads it too rather than wait
    assert pick([a, b], "m5") is None  # both full: the request waits in the pool's queue


def test_a_held_model_with_no_room_there_loads_elsewhere_rather_than_wait() -> None:
    a, b = Instance("a", assigned=2, models=("m1",)), Instance("b")
    assert pick([a, b], "m1") == "b" and b.models == ("m1",)


def test_without_a_model_the_least_busy_instance_is_chosen() -> None:
    a, b = Instance("a", assigned=1), Instance("b")
    assert pick([a, b], None) == "b"
    assert choose_for_model([], 2, RequestContext()) is None
    assert (
        choose_for_model([Instance("c", assigned=2)], 2, RequestContext(headers={"x-tidal-model": "x"}))
        is None
    )
