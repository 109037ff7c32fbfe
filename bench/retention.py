"""What a retention sweep costs at the row cap: the state a gateway under steady load lives in.

Once the activations table holds ``--activation-max-rows`` (a million by default), every sweep (one
a minute) deletes what arrived since the last one, in batches of 2,000. Where the cap cuts is the
newest row beyond the newest million: SQLite finds it by stepping through a million entries of the
index on start (an OFFSET is a walk). Two ways of sweeping, on one SQLite store, same run:

* per batch (the baseline, tidal before 2026-11-27): ``delete_activations(before, keep_newest,
  batch)`` until a batch comes back short, which finds the edge again for every batch;
* once (``Retention.sweep``): ``activations_cutoff`` once, then ``delete_activations_below`` in
  batches.

Each round adds ``--arrivals`` echo records (a minute at that many a minute), then sweeps one way;
the ways take turns, so the table is at the cap before each. Reported: CPU per deleted row (this
process: SQLite runs in it) and the ratio. Filling the table takes a while (about 5 us a row).

Run: ``.venv/bin/python bench/retention.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgspec
from common import median, write_json

from tidal.metering.retention import BATCH_ROWS, DEFAULT_MAX_ROWS
from tidal.store import Activation, SQLiteStore
from tidal.store.models import ActivationRow

FILL_CHUNK = 10_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a cap of 100,000 rows, 10,000 arrivals, 2 rounds")
    p.add_argument("--rows", type=int, help=f"the row cap, filled first (default {DEFAULT_MAX_ROWS:,})")
    p.add_argument("--arrivals", type=int, help="records added before each sweep (default 100,000)")
    p.add_argument("--rounds", type=int, help="sweeps each way (default 3)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON here")
    args = p.parse_args(argv)
    args.rows = args.rows or (100_000 if args.quick else DEFAULT_MAX_ROWS)
    args.arrivals = args.arrivals or (10_000 if args.quick else 100_000)
    args.rounds = args.rounds or (2 if args.quick else 3)
    return args


class Arrivals:
    """Echo records with rising starts, a thousand a second, as the journal folder stores them."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.count = 0

    def add(self, total: int) -> None:
        for first in range(self.count, self.count + total, FILL_CHUNK):
            size = min(FILL_CHUNK, self.count + total - first)
            self.store.add_activation_rows([self.row(number) for number in range(first, first + size)])
        self.count += total

    @staticmethod
    def row(number: int) -> ActivationRow:
        return msgspec.structs.astuple(
            Activation(
                id=f"b1c2d3e4f5{number:08x}", function="echo", revision="echo-00001",
                instance=f"echo-1-{number % 3}", start=1_790_000_000.0 + number / 1000,
                duration_ms=0.5 + number % 7 / 10, billed_ms=1, memory_mb=128, cold=False, status="ok",
                http_status=200, cpu_ms=0.1, peak_rss_kb=41_000,
            )
        )  # fmt: skip


def in_batches(delete: Callable[[], int]) -> int:
    """Call ``delete`` (one batch) until a batch comes back short, as Retention does; how many went."""
    deleted = 0
    while (count := delete()) > 0:
        deleted += count
        if count < BATCH_ROWS:
            break
    return deleted


def sweep_per_batch(store: SQLiteStore, keep: int) -> int:
    return in_batches(lambda: store.delete_activations(0.0, keep, BATCH_ROWS))


def sweep_once(store: SQLiteStore, keep: int) -> int:
    cutoff = store.activations_cutoff(0.0, keep)
    return in_batches(lambda: store.delete_activations_below(cutoff, BATCH_ROWS))


WAYS: dict[str, Callable[[SQLiteStore, int], int]] = {"per batch": sweep_per_batch, "once": sweep_once}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tidal-retention-") as folder:
        store = SQLiteStore(Path(folder) / "tidal.db")
        arrivals = Arrivals(store)
        print(f"filling the table to the cap: {args.rows:,} rows ...", flush=True)
        started = time.perf_counter()
        arrivals.add(args.rows)
        print(f"  {time.perf_counter() - started:.1f} s", flush=True)
        per_row: dict[str, list[float]] = {name: [] for name in WAYS}
        for round_number in range(args.rounds):
            order = list(WAYS) if round_number % 2 == 0 else list(reversed(WAYS))
            for name in order:
                arrivals.add(args.arrivals)
                cpu = time.process_time()
                deleted = WAYS[name](store, args.rows)
                cpu = time.process_time() - cpu
                if deleted != args.arrivals:
                    print(
                        f"the sweep {name!r} deleted {deleted:,} rows, not {args.arrivals:,}", file=sys.stderr
                    )
                    return 1
                per_row[name].append(cpu / deleted * 1e6)
                print(f"  round {round_number + 1}/{args.rounds} {name:<9} {cpu:7.2f} s CPU  "
                      f"{per_row[name][-1]:7.1f} us a deleted row", flush=True)  # fmt: skip
        store.close()
    results: dict[str, Any] = {
        name: {"cpu_us_per_deleted_row": median(values), "rounds": values} for name, values in per_row.items()
    }
    ratio = results["per batch"]["cpu_us_per_deleted_row"] / results["once"]["cpu_us_per_deleted_row"]
    results["config"] = {
        "rows": args.rows,
        "arrivals": args.arrivals,
        "rounds": args.rounds,
        "batch": BATCH_ROWS,
    }
    print(
        f"\nat a cap of {args.rows:,} rows, sweeping {args.arrivals:,} arrivals in batches of {BATCH_ROWS:,}:"
    )
    for name in WAYS:
        print(f"  {name:<9} {results[name]['cpu_us_per_deleted_row']:8.1f} us CPU a deleted row (median)")
    print(f"  per batch / once: {ratio:.1f}x the CPU")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
