"""Work split over the batch: one slice of the batch per core.

Every kernel of a convolution works sample by sample, so a batch splits into independent
slices. :func:`over_batch` calls ``work(start, stop)`` for one slice per thread at the same
time: the calling thread takes the first slice, a small pool of helper threads the others.
The work must release the GIL to run in parallel; tinyfn's Numba kernels are compiled with
``nogil=True``, and numpy's matrix products release it while BLAS works.

Why threads of its own, and not Numba's ``parallel=True``? Both reasons were measured on
the CNN benchmark (2 cores; ``benchmarks/cnn.py``):

* A convolution's matrix products are one small product per sample. OpenBLAS runs a product
  that small on a single thread (it splits only products above about ``2**18``
  multiply-adds), so ``np.matmul`` over the batch kept one core idle for about half of the
  step. The products need splitting over the batch too, and a Numba parallel loop cannot
  call numpy's BLAS: Python threads can.
* Numba's OpenMP worker threads keep spinning for milliseconds after each parallel loop,
  waiting for the next one. With as many threads as cores, that spinning takes the core
  that the helper thread's product needs: splitting the products alone made the step slower.
  With all the parallel work on one pool of threads, nothing spins.

The threads never share a sum: whatever a kernel adds over the batch, it adds per sample,
and the caller sums those after every slice is done. So the results are the same, bit for
bit, for any number of threads.

The number of threads is ``TINYFN_NUM_THREADS`` if set, else the number of cores this
process may run on; :func:`set_num_threads` changes it.
"""

from __future__ import annotations

import os
import threading
from typing import Callable

__all__ = ["num_threads", "set_num_threads", "over_batch"]


def _default_threads() -> int:
    setting = os.environ.get("TINYFN_NUM_THREADS")
    if setting is None:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not setting.isdigit() or int(setting) < 1:
        raise ValueError(f"TINYFN_NUM_THREADS must be a positive integer, found {setting!r}")
    return int(setting)


_threads = _default_threads()


def num_threads() -> int:
    """How many threads :func:`over_batch` splits a batch over."""
    return _threads


def set_num_threads(count: int) -> None:
    """Split batches over ``count`` threads (a positive int) from now on."""
    global _threads
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"set_num_threads: expected a positive int, found {count!r}")
    _threads = count


class _Helper:
    """A thread that runs one slice of work at a time.

    The work is handed over through two locks used as signals, not through a queue and
    futures: a hand-over then costs about 6 microseconds instead of about 50 (measured with
    empty work), which matters for kernels that take 50 to 300 microseconds.
    """

    def __init__(self):
        self._go, self._done = threading.Lock(), threading.Lock()
        self._go.acquire()  # released by start()
        self._done.acquire()  # released by the thread when the slice is done
        self._job = None
        self._error = None
        threading.Thread(target=self._serve, name="tinyfn-helper", daemon=True).start()

    def _serve(self):
        while True:
            self._go.acquire()
            work, start, stop = self._job
            try:
                work(start, stop)
            except BaseException as error:  # handed to the caller by join()
                self._error = error
            self._job = None
            self._done.release()

    def start(self, work, start: int, stop: int) -> None:
        self._job = (work, start, stop)
        self._go.release()

    def join(self) -> BaseException | None:
        """Wait for the slice; return what it raised (None if nothing)."""
        self._done.acquire()
        error, self._error = self._error, None
        return error


_helpers: list[_Helper] = []
_in_use = threading.Lock()  # one batch at a time on the helpers; other callers run alone


def _forget_helpers() -> None:
    # A forked child has none of its parent's threads: helpers inherited from the parent
    # would take work and never do it. The child starts its own when it needs them.
    global _helpers, _in_use
    _helpers, _in_use = [], threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers)


def over_batch(size: int, work: Callable[[int, int], object]) -> None:
    """Call ``work(start, stop)`` for consecutive slices that cover ``range(size)``, in parallel.

    One slice per thread (fewer if ``size`` is smaller), of sizes that differ by at most one.
    Returns when every slice is done; an exception raised by any slice is raised here. While
    one call runs, calls from other threads (or from inside ``work``) run in their own
    thread, in one slice.
    """
    threads = min(_threads, size)
    if threads < 2 or not _in_use.acquire(blocking=False):
        work(0, size)
        return
    try:
        while len(_helpers) < threads - 1:
            _helpers.append(_Helper())
        bounds = [size * t // threads for t in range(threads + 1)]
        helpers = _helpers[: threads - 1]
        for helper, start, stop in zip(helpers, bounds[1:-1], bounds[2:]):
            helper.start(work, start, stop)
        try:
            work(bounds[0], bounds[1])
        finally:
            errors = [helper.join() for helper in helpers]  # the slices write into the caller's arrays: wait for all
        for error in errors:
            if error is not None:
                raise error
    finally:
        _in_use.release()
