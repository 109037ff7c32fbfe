"""The cgroup v2 layout, against a fake cgroupfs (this host mounts v1, where the real thing is
tested end to end): which files get which values, and how OOM and kills are read and done.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tidal.backends.cgroups import Cgroups, Limits


def fake_tree(tmp_path: Path, controllers: str = "cpuset cpu io memory pids") -> Path:
    root = tmp_path / "cgroup"
    own = root / "user.slice" / "tidal.service"
    own.mkdir(parents=True)
    (root / "cgroup.controllers").write_text(controllers)
    (own / "cgroup.controllers").write_text(controllers)
    (own / "cgroup.procs").write_text(f"{os.getpid()}\n")
    return root


def test_the_gateway_moves_into_a_leaf_and_enables_the_controllers(tmp_path: Path) -> None:
    root = fake_tree(tmp_path)
    cgroups = Cgroups.detect("tidal-42", root, proc_cgroup="0::/user.slice/tidal.service\n")
    own = root / "user.slice" / "tidal.service"
    assert cgroups.unified and cgroups.enforced and cgroups.describe() == "cgroup v2: cpu, memory, pids"
    assert (own / "tidal-42-gateway" / "cgroup.procs").read_text() == str(os.getpid())
    assert (own / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (own / "tidal-42" / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"

    group = cgroups.create("echo-00001-abc", Limits(memory_mb=256, cpu=0.5, pids=64))
    folder = own / "tidal-42" / "echo-00001-abc"
    assert (folder / "memory.max").read_text() == str(256 * 1024 * 1024)
    assert (folder / "memory.swap.max").read_text() == "0"
    assert (folder / "cpu.max").read_text() == "50000 100000"
    assert (folder / "pids.max").read_text() == "64"

    assert not group.oom_killed()
    (folder / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert group.oom_killed()

    child = subprocess.Popen(["sleep", "30"])
    (folder / "cgroup.procs").write_text(f"{child.pid}\n")
    try:
        assert group.kill_all(timeout_s=0.05) >= 1
        assert child.wait(5) == -9
        assert (folder / "cgroup.freeze").read_text() == "0", "frozen while killing, thawed after"
    finally:
        child.kill()


def test_without_memory_or_pids_delegated_nothing_is_claimed(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, controllers="cpu io")
    cgroups = Cgroups.detect("tidal-42", root, proc_cgroup="0::/user.slice/tidal.service\n")
    assert not cgroups.enforced and cgroups.bases == {}
    assert "no writable cgroup controllers" in cgroups.describe()


def test_a_refused_move_falls_back_to_no_groups(tmp_path: Path) -> None:
    root = fake_tree(tmp_path)
    own = root / "user.slice" / "tidal.service"
    (own / "tidal-42-gateway").mkdir()
    (own / "tidal-42-gateway" / "cgroup.procs").mkdir()  # writing it fails, as an EACCES would
    cgroups = Cgroups.detect("tidal-42", root, proc_cgroup="0::/user.slice/tidal.service\n")
    assert cgroups.bases == {}
