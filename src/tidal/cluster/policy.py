"""Which gateway runs what, when several share a PostgreSQL store."""

from __future__ import annotations

# The supervised loops that must not run twice across gateways: cron and other trigger sources
# (one tick, one job), retention sweeps, and rollout decisions (each step changes traffic once).
# The others run on every gateway: each scales its own pools, claims jobs (each claim is atomic),
# writes its own records.
LEADER_ONLY_LOOPS = ("triggers", "retention", "rollouts")
