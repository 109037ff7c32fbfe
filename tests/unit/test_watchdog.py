"""The RSS watchdog's decision and its view of a process tree."""

from __future__ import annotations

import os
import subprocess

from tidal.backends.watchdog import descendants, over_limit, resident_kb


def test_only_instances_past_their_limit_are_picked() -> None:
    assert over_limit(
        {"a": 300 * 1024, "b": 100 * 1024, "c": 256 * 1024}, {"a": 256, "b": 256, "c": 256}
    ) == ["a"]
    assert over_limit({}, {}) == []


def test_a_process_tree_and_its_memory_are_seen_whole() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        tree = descendants(os.getpid())
        assert tree[0] == os.getpid() and child.pid in tree
        assert resident_kb(tree) >= resident_kb([os.getpid()]) > 1024
    finally:
        child.kill()
        child.wait()
