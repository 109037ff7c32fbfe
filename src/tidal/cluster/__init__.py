"""Several gateways on one PostgreSQL store (docs/several-gateways.md).

Each gateway beats in ``gateways`` (heartbeat.py), one holds the leader lease and runs the
singleton loops (lease.py), and every one re-reads what another changed (changes.py) and
unpacks code deployed through another (code.py). With SQLite none of this runs: the one
gateway is always the leader.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tidal.cluster.policy import LEADER_ONLY_LOOPS

if TYPE_CHECKING:
    from tidal.cluster.wiring import Cluster, ClusterPlatform

SCHEMES = ("postgresql", "postgres")


def is_postgres_url(url: object) -> bool:
    return isinstance(url, str) and urlsplit(url).scheme in SCHEMES


def join_cluster(platform: ClusterPlatform) -> Cluster | None:
    """With a PostgreSQL store: the cluster's loops, supervised, and the leader-only loops gated;
    None with SQLite (one gateway, always the leader; psycopg is not even imported)."""
    url: Any = getattr(platform.config, "state_url", None)
    if not is_postgres_url(url):
        return None
    from tidal.cluster.wiring import wire_cluster

    return wire_cluster(platform, url)


def cluster_status(cluster: Cluster | None) -> dict[str, object]:
    """What ``GET /v1/loops`` shows under ``cluster``."""
    if cluster is None:
        return {"gateway": "local", "leader": True, "live_gateways": 1, "store": "sqlite"}
    return cluster.status()


__all__ = ["LEADER_ONLY_LOOPS", "cluster_status", "is_postgres_url", "join_cluster"]
