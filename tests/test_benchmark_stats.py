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


# ----------------------------------------------------------------------------- Estimate, speed_ratios


def test_estimate_is_the_median_with_the_median_interval():
    samples = np.random.default_rng(0).standard_normal(41)
    estimate = common.Estimate.of(samples)
    assert estimate.median == np.median(samples)
    assert (estimate.low, estimate.high) == common.median_interval(samples)
    assert estimate.low <= estimate.median <= estimate.high


def test_estimate_map_keeps_the_bounds_in_order_under_a_decreasing_function():
    per_second = common.Estimate(median=2.0, low=1.0, high=4.0).map(lambda s: 1 / s)
    assert per_second == common.Estimate(median=0.5, low=0.25, high=1.0)


def test_fmt_stats_formats_an_estimate_by_its_interval():
    assert common.fmt_stats(common.Estimate(1.5, 1.25, 2.0), 2) == "1.50 (1.25-2.00)"


def test_speed_ratios_divide_the_bracketed_ratios_round_by_round():
    # Round r: the reference runs at 1 s, then b takes 2 s, then a takes 1 s (a twice as fast),
    # while the machine slows by 10% a round; the drift cancels in every ratio.
    a = common.Timing(samples=(1.0, 1.1, 1.21), reference=(1.0, 1.1, 1.21))
    b = common.Timing(samples=(2.0, 2.2, 2.42), reference=(1.0, 1.1, 1.21))
    assert common.speed_ratios(a, b) == pytest.approx([2.0, 2.0, 2.0])


def test_speed_ratios_come_from_one_measure_call():
    calls = {"ref": lambda: sum(range(200)), "a": lambda: sum(range(100)), "b": lambda: sum(range(400))}
    quick = common.Settings(warmup_s=0.01, repeats=7, repeat_s=0.002, fresh_runs=0, settle_s=0.0, rewarm_s=0.0)
    timings = common.measure(calls, quick, reference="ref")
    ratios = common.speed_ratios(timings["a"], timings["b"])
    assert len(ratios) == 7 and all(r > 0 for r in ratios)
    with pytest.raises(ValueError, match="reference"):
        common.speed_ratios(timings["a"], timings["ref"])  # the reference has a repeat per case, not per round


@pytest.mark.parametrize("text, value", [("1", 1), ("16", 16)])
def test_positive_int_accepts_whole_numbers_from_one(text, value):
    assert common.positive_int(text) == value


@pytest.mark.parametrize("text", ["0", "-2", "1.5", "two", ""])
def test_positive_int_refuses_anything_else(text):
    with pytest.raises(ValueError):
        common.positive_int(text)


# ----------------------------------------------------------------------------- against_revision


def test_tinyfn_imports_itself_only_relatively_so_a_renamed_copy_runs_beside_it():
    import against_revision

    assert against_revision.absolute_self_imports(Path(__file__).resolve().parents[1] / "tinyfn") == []


def test_absolute_self_imports_are_found_in_code_but_not_in_docstrings(tmp_path):
    import against_revision

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text('"""Use it as:\n\n    import tinyfn\n"""\nfrom . import b\nimport numpy\n')
    (package / "b.py").write_text("import os\nfrom tinyfn.ops import add\nimport tinyfnx\n")
    assert against_revision.absolute_self_imports(package) == ["pkg/b.py:2"]
