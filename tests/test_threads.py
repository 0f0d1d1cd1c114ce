"""Work split over the batch (tinyfn.kernels.threads): every slice runs once, errors reach the
caller, and the kernels give the same bits whatever the number of threads."""

import contextlib
import multiprocessing
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyfn import kernels
from tinyfn.kernels import threads


@contextlib.contextmanager
def using_threads(count):
    """The number of threads set to ``count`` inside the block, restored after it."""
    before = threads.num_threads()
    threads.set_num_threads(count)
    try:
        yield
    finally:
        threads.set_num_threads(before)


@given(size=st.integers(0, 40), count=st.integers(1, 5))
def test_slices_cover_the_batch_once_in_order(size, count):
    seen, lock = [], threading.Lock()

    def work(start, stop):
        with lock:
            seen.append((start, stop, threading.get_ident()))

    with using_threads(count):
        threads.over_batch(size, work)
    slices = sorted((start, stop) for start, stop, _ in seen)
    expected_count = max(1, min(count, size))
    assert len(slices) == expected_count
    assert slices[0][0] == 0 and slices[-1][1] == size
    assert all(stop == next_start for (_, stop), (next_start, _) in zip(slices, slices[1:]))
    sizes = [stop - start for start, stop in slices]
    assert max(sizes) - min(sizes) <= 1
    assert len({ident for _, _, ident in seen}) == expected_count  # each slice on its own thread


@using_threads(3)
def test_an_error_in_a_helper_reaches_the_caller_after_every_slice_is_done():
    finished = []

    def work(start, stop):
        if start == 0:
            time.sleep(0.05)  # the caller's own slice is the slowest
            finished.append(start)
        elif stop == 10:
            raise RuntimeError("slice failed")
        else:
            finished.append(start)

    with pytest.raises(RuntimeError, match="slice failed"):
        threads.over_batch(10, work)
    assert sorted(finished) == [0, 3]
    # the helpers still work afterwards
    out = np.zeros(10)
    threads.over_batch(10, lambda start, stop: out.__setitem__(slice(start, stop), 1))
    assert out.sum() == 10


@using_threads(2)
def test_a_call_from_inside_the_work_runs_in_one_slice():
    inner = []

    def work(start, stop):
        threads.over_batch(4, lambda a, b: inner.append((a, b)))

    threads.over_batch(6, work)
    assert sorted(inner) == [(0, 4), (0, 4)]


@using_threads(2)
def test_calls_from_several_threads_at_once_give_the_results_of_one_thread():
    expected = _conv_outputs()
    results, errors = [], []

    def convolve_repeatedly():
        try:
            for _ in range(20):
                results.append(_conv_outputs())
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    workers = [threading.Thread(target=convolve_repeatedly) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors
    assert len(results) == 60
    for outputs in results:
        for got, want in zip(outputs, expected):
            np.testing.assert_array_equal(got, want)


def test_set_num_threads_refuses_what_is_not_a_positive_int():
    for bad in (0, -1, 2.0, True, "2"):
        with pytest.raises(ValueError, match="positive int"):
            threads.set_num_threads(bad)


def test_the_environment_variable_is_checked(monkeypatch):
    monkeypatch.setenv("TINYFN_NUM_THREADS", "3")
    assert threads._default_threads() == 3
    monkeypatch.setenv("TINYFN_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="TINYFN_NUM_THREADS.*'two'"):
        threads._default_threads()


def _conv_outputs():
    """Forward pass, both VJPs, bias+ReLU and max pooling of one convolution, on fixed data."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 4, 9, 8)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    settings = ((2, 1), (1, 2), (1, 1), 2)  # stride, padding, dilation, groups
    y, cols = kernels.conv2d(x, w, b, *settings)
    g = rng.standard_normal(y.shape).astype(np.float32)
    relu_out = kernels.bias_relu_(y.copy(), b)
    pooled, argmax = kernels.max_pool2d(relu_out, (2, 2), (2, 2), (0, 0))
    return [
        y,
        kernels.conv2d_input_vjp(g, w, x.shape, *settings),
        kernels.conv2d_weight_vjp(g, cols, w.shape, settings[-1]),
        relu_out,
        *kernels.bias_relu_vjp(g, relu_out),
        pooled,
        kernels.max_pool2d_vjp(pooled, argmax, relu_out.shape, (0, 0)),
    ]


def test_kernels_give_the_same_bits_for_any_number_of_threads():
    with using_threads(1):
        alone = _conv_outputs()
    for count in (2, 3, 7):
        with using_threads(count):
            outputs = _conv_outputs()
        for together, expected in zip(outputs, alone):
            assert together.dtype == expected.dtype
            np.testing.assert_array_equal(together, expected)


# Run in a fresh interpreter: the test process may hold other libraries' threads (JAX,
# PyTorch), and forking those is unsafe in itself.
FORK_CHILD_CODE = """
import multiprocessing, sys
import numpy as np
from tinyfn import kernels
from tinyfn.kernels import threads

def convolve(queue):
    y, _ = kernels.conv2d(np.ones((4, 1, 5, 5)), np.ones((1, 1, 3, 3)), None, (1, 1), (0, 0), (1, 1), 1)
    queue.put(float(y.sum()))

threads.set_num_threads(2)
convolve(multiprocessing.Queue())  # the parent's helper threads are now running
context = multiprocessing.get_context("fork")
queue = context.Queue()
child = context.Process(target=convolve, args=(queue,))
child.start()
child.join(timeout=60)
if child.exitcode is None:  # hung: waiting for helpers that do not exist in the child
    child.kill()
    child.join()
print(child.exitcode, queue.get(timeout=1) if child.exitcode == 0 else None)
"""


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_a_forked_child_starts_its_own_helpers():
    result = subprocess.run([sys.executable, "-c", FORK_CHILD_CODE], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    # exit code 0 (not -9: killed because it hung), and 4 images of 3x3 outputs that each sum 9 ones
    assert result.stdout.split() == ["0", str(4.0 * 9 * 9)], result.stdout
