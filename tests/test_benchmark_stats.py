"""The statistics behind the benchmark's acceptance verdicts (benchmarks/common.py)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import common  # noqa: E402


@pytest.mark.parametrize(
    "n, ranks",
    # The 95% ranks tabulated for the sign-test interval of a median (for example in
    # Conover, Practical Nonparametric Statistics, table A3): (j, n + 1 - j).
    [(6, (1, 6)), (9, (2, 8)), (20, (6, 15)), (100, (40, 61))],
)
def test_median_interval_takes_the_tabulated_order_statistics(n, ranks):
    samples = np.random.default_rng(n).permutation(np.arange(1, n + 1))
    assert common.median_interval(samples) == ranks


@pytest.mark.parametrize("n", [1, 2, 5])
def test_median_interval_of_too_few_samples_is_the_whole_range(n):
    samples = [3.0 + i for i in range(n)]
    assert common.median_interval(samples) == (min(samples), max(samples))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(10, 150), shift=st.floats(-5, 5))
def test_median_interval_covers_the_true_median_at_least_95_percent_of_the_time(n, shift):
    rng = np.random.default_rng(n)
    trials = 400
    covered = 0
    for _ in range(trials):
        low, high = common.median_interval(shift + rng.standard_exponential(n))
        covered += low <= shift + np.log(2) <= high  # the exponential's median is ln 2
    # Exact coverage is at least 95%; 400 trials put 3.3 standard errors below that at 0.913.
    assert covered / trials >= 0.91
