"""The interval the metering benchmark judges its target by (bench/common.py, median_interval)."""

from __future__ import annotations

import importlib.util
import math
import random
import sys

from paths import REPO_ROOT

# bench/ is not a package: its helpers load by path, under a name no test module uses.
_spec = importlib.util.spec_from_file_location("bench_common", REPO_ROOT / "bench" / "common.py")
assert _spec is not None and _spec.loader is not None
bench_common = importlib.util.module_from_spec(_spec)
sys.modules["bench_common"] = bench_common  # its dataclasses look their module up there
_spec.loader.exec_module(bench_common)
median_interval = bench_common.median_interval


def test_the_interval_is_the_order_statistics_a_binomial_table_gives() -> None:
    # Ranks from the binomial tables for a 95% interval of the median: 12 values -> the 3rd and
    # 10th, 24 -> the 7th and 18th, 6 -> the extremes; 5 values are too few for one.
    assert median_interval([float(v) for v in range(12, 0, -1)]) == (3.0, 10.0)
    assert median_interval([float(v) for v in range(1, 25)]) == (7.0, 18.0)
    assert median_interval([4.0, 1.0, 6.0, 2.0, 5.0, 3.0]) == (1.0, 6.0)
    assert median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) is None


def test_the_interval_holds_the_true_median_about_as_often_as_it_says() -> None:
    rng = random.Random(11)
    samples = 2000
    covered = 0
    for _ in range(samples):
        values = [rng.expovariate(1.0) for _ in range(24)]  # skewed noise: median ln 2
        interval = median_interval(values)
        assert interval is not None
        covered += interval[0] <= math.log(2) <= interval[1]
    assert 0.95 <= covered / samples <= 0.995  # exact coverage at n=24 is 0.9773
