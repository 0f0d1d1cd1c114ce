"""Explicit PRNG keys: determinism, independence of split streams, distributions."""

import subprocess
import sys

import numpy as np

from tinyfn import random


def test_the_same_key_gives_the_same_numbers():
    k = random.key(42)
    np.testing.assert_array_equal(random.normal(k, (5,)), random.normal(k, (5,)))
    np.testing.assert_array_equal(random.permutation(k, 10), random.permutation(k, 10))


def test_the_same_key_gives_the_same_numbers_in_a_fresh_process():
    code = "import tinyfn.random as r; print(r.normal(r.split(r.key(7))[1], (3,), 'float64').tolist())"
    out = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(2)]
    assert out[0] == out[1]
    assert out[0].strip() == str(random.normal(random.split(random.key(7))[1], (3,), np.float64).tolist())


def test_split_keys_differ_from_each_other_and_from_the_parent():
    k = random.key(0)
    keys = random.split(k, 4)
    assert keys.shape == (4, 2) and keys.dtype == np.uint64
    rows = {tuple(x) for x in keys} | {tuple(k)}
    assert len(rows) == 5
    samples = [random.normal(s, (1000,), np.float64) for s in keys]
    correlation = np.corrcoef(samples)
    assert np.all(np.abs(correlation[np.triu_indices(4, 1)]) < 0.15)


def test_fold_in_gives_distinct_reproducible_keys():
    k = random.key(1)
    a, b = random.fold_in(k, 0), random.fold_in(k, 1)
    assert tuple(a) != tuple(b)
    np.testing.assert_array_equal(a, random.fold_in(k, 0))
    assert tuple(a) not in {tuple(s) for s in random.split(k, 8)}


def test_distributions_have_the_right_moments_and_dtypes():
    k1, k2, k3 = random.split(random.key(3), 3)
    n = random.normal(k1, (20000,))
    u = random.uniform(k2, (20000,), minval=-1.0, maxval=3.0)
    b = random.bernoulli(k3, 0.3, (20000,))
    assert n.dtype == np.float32 and abs(n.mean()) < 0.03 and abs(n.std() - 1) < 0.03
    assert u.dtype == np.float32 and u.min() >= -1.0 and u.max() < 3.0 and abs(u.mean() - 1.0) < 0.05
    assert b.dtype == bool and abs(b.mean() - 0.3) < 0.02
    assert sorted(random.permutation(k1, 7).tolist()) == list(range(7))
    assert set(random.choice(k2, 3, 50).tolist()) <= {0, 1, 2}


def test_numpy_integers_and_lists_are_accepted_for_ints_and_shapes():
    # bad seeds, counts and shapes are refused: see tests/test_bad_inputs_core.py
    k = random.key(np.uint64(42))
    np.testing.assert_array_equal(k, random.key(42))
    np.testing.assert_array_equal(random.split(k, np.int32(3)), random.split(k, 3))
    np.testing.assert_array_equal(random.fold_in(k, np.int64(5)), random.fold_in(k, 5))
    np.testing.assert_array_equal(random.normal(k, [2, np.int64(3)]), random.normal(k, (2, 3)))
    np.testing.assert_array_equal(random.normal(k, 4), random.normal(k, (4,)))
    np.testing.assert_array_equal(
        random.uniform(k, (3,), np.float64, np.float32(-1), 2), random.uniform(k, (3,), np.float64, -1.0, 2.0)
    )
    np.testing.assert_array_equal(random.bernoulli(k, np.float64(0.3), (50,)), random.bernoulli(k, 0.3, (50,)))
    np.testing.assert_array_equal(random.permutation(k, np.int64(6)), random.permutation(k, 6))
    np.testing.assert_array_equal(
        random.choice(k, 4, 5, p=np.full(4, 0.25, np.float32)), random.choice(k, 4, 5, p=[0.25] * 4)
    )


def test_edge_sizes_that_numpy_allows_still_work():
    k = random.key(0)
    assert random.split(k, 0).shape == (0, 2)
    assert random.normal(k, (0, 3)).shape == (0, 3)
    assert random.choice(k, 0, 0).shape == (0,)
    assert random.randint(k, (2,), -(2**63), 2**63 - 1).dtype == np.int64
    assert np.all(random.uniform(k, (4,), minval=2.0, maxval=2.0) == 2.0)
