"""The cluster's parts wired to a gateway (imported only with a PostgreSQL store: psycopg)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from tidal.auth.keys import KeyRing
from tidal.cluster.changes import Appliers, ChangeListener
from tidal.cluster.code import CodeShelf
from tidal.cluster.heartbeat import Heartbeat, new_gateway_id, shared_spec
from tidal.cluster.lease import LeaderLease, leader_only
from tidal.cluster.policy import LEADER_ONLY_LOOPS
from tidal.store.postgres_sql import parse_state_url


class ClusterPlatform(Protocol):
    """What the cluster needs of tidal.gateway.platform.Platform (typed here to avoid the cycle)."""

    config: Any
    keys: KeyRing
    supervisor: Any
    router: Any
    routes: Any
    jobs: Any
    deployer: Any

    async def publish(self, function: str) -> object: ...


@dataclass
class Cluster:
    gateway_id: str
    schema: str
    heartbeat: Heartbeat
    lease: LeaderLease
    changes: ChangeListener
    code: CodeShelf
    fleet: Any = None  # tidal.cluster.fleet.Fleet with --backend ray

    def status(self) -> dict[str, object]:
        """What ``GET /v1/loops`` shows under ``cluster``."""
        return {
            "gateway": self.gateway_id,
            "leader": self.lease.leader,
            "leader_for_s": round(time.time() - self.lease.since, 1) if self.lease.leader else 0.0,
            "live_gateways": self.heartbeat.live,
            "changes_applied": self.changes.applied,
            "leader_only_loops": list(LEADER_ONLY_LOOPS) + (["ray-fleet-leader"] if self.fleet else []),
            **({"fleet_instances": len(self.fleet.registered)} if self.fleet else {}),
        }


def wire_cluster(platform: ClusterPlatform, url: str) -> Cluster:
    """The cluster's loops, supervised, and the leader-only loops gated."""
    _, schema = parse_state_url(url)
    gateway_id = new_gateway_id()
    appliers = Appliers(platform.publish, platform.keys.forget, platform.routes.reload)
    local = getattr(platform.config, "backend", "local") == "local"
    heartbeat = Heartbeat(url, gateway_id, platform.router.pools, split_bounds=local)
    cluster = Cluster(
        gateway_id, schema, heartbeat, LeaderLease(url), ChangeListener(url, schema, appliers), CodeShelf(url)
    )
    if local:  # a new pool starts with its share, not the whole min_instances
        platform.router.share_bounds = lambda spec: shared_spec(spec, heartbeat.live)
    if getattr(platform.config, "backend", "local") == "ray":  # one fleet, scaled by the leader
        from tidal.cluster.fleet import join_fleet

        cluster.fleet = join_fleet(platform, url, gateway_id, cluster.lease)
    for name in LEADER_ONLY_LOOPS:
        platform.supervisor.wrap(name, lambda run: leader_only(cluster.lease, run))
    platform.supervisor.add("gateway-heartbeat", cluster.heartbeat.run)
    platform.supervisor.add("leader-lease", cluster.lease.run)
    cluster.changes.mark_start()  # before Platform.start serves what the store holds
    platform.supervisor.add("change-listener", cluster.changes.run)
    # Other gateways may be running jobs: only an expired lease makes a running job an orphan.
    platform.jobs.dispatcher.sole_gateway = False
    platform.deployer.share_code = cluster.code.put
    return cluster
