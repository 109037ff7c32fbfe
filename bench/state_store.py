"""What the state store's calls cost: SQLite (the default) vs PostgreSQL (`tidal up --state`), same run.

The calls a gateway makes off its hot path: a deploy (``add_revision``), reading a function back
(``function``), a key looked up on a cache miss (``key_by_hash``), a batch of 100 activation
records (the metering writer's unit), and one async job's claim and finish. Each is timed N times
on each store, interleaved so drift hits both alike; p50 and p99 in microseconds. No targets:
PostgreSQL pays a network round trip (and its write lock) per statement, and these calls are
never on a request's path (keys are cached, records are written in batches off the event loop).

Run: ``.venv/bin/python bench/state_store.py [--quick] [--url postgresql://...] [--json PATH]``
(default: the machine's PostgreSQL, a schema of its own, dropped at the end).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import msgspec
import psycopg

from tidal.auth.keys import Caller
from tidal.invoke.request import InvocationRequest
from tidal.jobs.model import DEFAULT_SETTINGS, new_job
from tidal.store import Activation, Revision, SQLiteStore, revision_digest
from tidal.store.postgres import PostgresStore

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
CALLER = Caller("k1", frozenset({"invoke:f"}), presented=True)


def draft(number: int) -> Revision:
    spec: dict[str, object] = {"name": "f", "memory": 128 + number}
    digest = revision_digest(f"code-{number}", "f", "handler", False, "native", spec)
    return Revision("", "f", 0, digest, f"code-{number}", "f", "handler", False, "native", spec, 1000.0)


def calls(store: SQLiteStore) -> dict[str, Callable[[int], object]]:
    store.add_key("k1", "hash-1", ["admin"])
    record = Activation("a", "f", "f-00001", "i", 0.0, 1.0, 1, 128, False, "ok", 200)

    def activations(n: int) -> None:
        store.add_activations(
            msgspec.structs.replace(record, id=f"a{n}-{i}", start=n + i / 100) for i in range(100)
        )

    def job(n: int) -> None:
        store.add_job(new_job(InvocationRequest("f", b"{}", caller=CALLER), DEFAULT_SETTINGS, 10.0))
        (claimed,) = store.claim_jobs("f", 20.0, 80.0, 1)
        store.finish_attempt(msgspec.structs.replace(claimed, state="succeeded", finished_at=21.0), 1)

    return {
        "add_revision (deploy)": lambda n: store.add_revision(draft(n)),
        "function (read back)": lambda n: store.function("f"),
        "key_by_hash (cache miss)": lambda n: store.key_by_hash("hash-1"),
        "add_activations x100": activations,
        "job claim + finish": job,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 calls each instead of 300")
    parser.add_argument("--url", default=DEFAULT_URL, help="a PostgreSQL database (a schema is made in it)")
    parser.add_argument("--json", type=Path, help="save the figures here")
    args = parser.parse_args()
    rounds = 50 if args.quick else 300
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as folder:
        stores = {
            "sqlite": SQLiteStore(Path(folder) / "tidal.db"),
            "postgres": PostgresStore(f"{args.url}?schema={schema}"),
        }
        try:
            timings: dict[str, dict[str, list[float]]] = {}
            table = {kind: calls(store) for kind, store in stores.items()}
            for name in table["sqlite"]:
                for n in range(rounds):
                    for kind in stores:  # interleaved
                        started = time.perf_counter()
                        table[kind][name](n)
                        timings.setdefault(name, {}).setdefault(kind, []).append(
                            (time.perf_counter() - started) * 1e6
                        )
        finally:
            for store in stores.values():
                store.close()
            with psycopg.connect(args.url, autocommit=True) as connection:
                connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    figures = {
        name: {kind: {"p50_us": statistics.median(values), "p99_us": sorted(values)[int(len(values) * 0.99) - 1]}
               for kind, values in by_kind.items()}
        for name, by_kind in timings.items()
    }  # fmt: skip
    print(
        f"{'call':28} {'sqlite p50':>11} {'p99':>9} {'postgres p50':>13} {'p99':>9}   ({rounds} calls each, us)"
    )
    for name, by_kind in figures.items():
        lite, pg = by_kind["sqlite"], by_kind["postgres"]
        print(
            f"{name:28} {lite['p50_us']:11.0f} {lite['p99_us']:9.0f} {pg['p50_us']:13.0f} {pg['p99_us']:9.0f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
