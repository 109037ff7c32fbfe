"""A throwaway two-node Ray cluster on this machine, for the Ray backend's tests and benchmark.

Each node is its own `ray start --block` in a process group of its own (its raylet and agents
are its children), so one node can be stopped alone by killing its group: nothing else on the
machine is touched (no `ray stop`, which ends every Ray process of the host). Token auth as
Ray 2.60 wants it for `ray start --head` (DESIGN.md): a fresh token in RAY_AUTH_TOKEN for the
nodes and for every client started with ``client_env()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
NODE_START_S = 90.0  # two cores shared with other work: a node takes 5-15 s, sometimes more


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Node:
    name: str
    resources: dict[str, float]
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        """Kill the node at once (its raylet, agents and log monitor): a node that dies."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@dataclass
class LocalRayCluster:
    root: Path
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    nodes: dict[str, Node] = field(default_factory=dict)
    cpus: int = 4  # logical CPUs of each node (what instances reserve, not cores)
    # Ray's session dirs hold Unix sockets (plasma store, raylet), whose paths may not pass 107
    # bytes: under pytest's deep temp paths a node hangs its clients. The nodes live in a short dir.
    nodes_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp")))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client_env(self) -> dict[str, str]:
        return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def start(self, head_resources: dict[str, float], worker_resources: dict[str, float]) -> LocalRayCluster:
        try:
            self._start_node("head", head_resources, head=True)
            self.wait_nodes(1)
            self._start_node("worker", worker_resources, head=False)
            self.wait_nodes(2)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, name: str, resources: dict[str, float], head: bool) -> None:
        log_path = self.root / f"ray-{name}.log"
        command = [RAY, "start", "--block", "--num-cpus", str(self.cpus), "--resources", json.dumps(resources),
                   "--temp-dir", str(self.nodes_dir / name), "--disable-usage-stats"]  # fmt: skip
        if head:
            command += ["--head", "--port", str(self.port), "--include-dashboard=false",
                        "--ray-client-server-port", str(free_port())]  # fmt: skip
        else:
            command += ["--address", self.address, "--dashboard-agent-listen-port", str(free_port())]
        # Each node's tidal host keeps its code cache and logs here, gone with the test's temp dir.
        env = {**self.client_env(), "TIDAL_RAY_NODE_DIR": str(self.nodes_dir / name / "tidal")}
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.nodes[name] = Node(name, resources, process, log_path)

    def alive_nodes(self) -> list[dict[str, object]]:
        """The cluster's live nodes as `ray.nodes()` sees them, asked from a short-lived client."""
        code = (
            f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False);"
            "print(json.dumps([{'id': n['NodeID'], 'resources': n['Resources']} for n in ray.nodes() if n['Alive']]))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=self.client_env(), timeout=60
        )
        if result.returncode != 0:
            return []
        nodes: list[dict[str, object]] = json.loads(result.stdout.strip().splitlines()[-1])
        return nodes

    def wait_nodes(self, count: int, timeout_s: float = NODE_START_S) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in self.nodes.values():
                if node.process.poll() is not None:
                    raise RuntimeError(f"ray node {node.name} exited: {node.log_path.read_text()[-3000:]}")
            nodes = self.alive_nodes()
            if len(nodes) == count:
                return nodes
            time.sleep(0.5)
        logs = "\n".join(node.log_path.read_text()[-1500:] for node in self.nodes.values())
        raise RuntimeError(f"the Ray cluster did not reach {count} live node(s) in {timeout_s:g} s:\n{logs}")

    def node_id_with(self, resource: str) -> str:
        for node in self.alive_nodes():
            resources = node["resources"]
            if isinstance(resources, dict) and resource in resources:
                return str(node["id"])
        raise LookupError(f"no live node offers {resource}")

    def stop(self) -> None:
        for node in reversed(list(self.nodes.values())):
            node.stop()
        shutil.rmtree(self.nodes_dir, ignore_errors=True)


@contextlib.contextmanager
def running_cluster(
    root: Path, head_resources: dict[str, float], worker_resources: dict[str, float]
) -> Iterator[LocalRayCluster]:
    """A started cluster, with RAY_AUTH_MODE/RAY_AUTH_TOKEN set for the `tidal up`s started meanwhile
    (restored after), stopped at the end."""
    cluster = LocalRayCluster(root).start(head_resources, worker_resources)  # raises with the nodes' logs
    saved = {name: os.environ.get(name) for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.token)
    try:
        yield cluster
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        cluster.stop()
