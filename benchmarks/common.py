"""Timing helpers shared by every benchmark: warm-up, interleaved repeats, median/min/max.

One helper, :func:`measure`, times everything that runs in this process. It takes several
callables at once and runs their repeats round-robin (a repeat of A, a repeat of B, a repeat
of A, ...), so a slow drift of the machine (another process, thermal state, frequency)
affects all of them alike, and a ratio of two of them measured by one call is meaningful.
:func:`run_fresh` times things that need a fresh interpreter (import time, first step).

Each figure is a :class:`Stats`: the median of the repeats, with their min and max.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Settings:
    """How long to measure: warm-up time per callable, number of repeats, time per repeat."""

    warmup_s: float
    repeats: int
    repeat_s: float
    fresh_runs: int  # fresh-interpreter runs for import and first-step times
    settle_s: float  # idle time before each timed block (see measure)
    rewarm_s: float  # untimed calls after that idle time, before the timed block (see measure)


FULL = Settings(warmup_s=2.0, repeats=9, repeat_s=0.2, fresh_runs=5, settle_s=1.0, rewarm_s=0.15)
QUICK = Settings(warmup_s=0.3, repeats=5, repeat_s=0.05, fresh_runs=2, settle_s=0.3, rewarm_s=0.05)

# Head to head: two cases that share one thread pool (tinyfn and the numpy floor both run on
# numpy's OpenBLAS) need no idle pause between their repeats, so many short repeats fit in a
# few seconds, and their median ratio is tight enough to hold against a threshold.
FULL_HEAD_TO_HEAD = Settings(warmup_s=1.0, repeats=101, repeat_s=0.05, fresh_runs=0, settle_s=0.0, rewarm_s=0.0)
QUICK_HEAD_TO_HEAD = Settings(warmup_s=0.3, repeats=31, repeat_s=0.02, fresh_runs=0, settle_s=0.0, rewarm_s=0.0)


@dataclass(frozen=True)
class Stats:
    """The median, min and max of a set of samples (all in the same unit)."""

    median: float
    min: float
    max: float

    @classmethod
    def of(cls, samples) -> "Stats":
        """Stats of a non-empty sequence of numbers."""
        samples = list(samples)
        return cls(statistics.median(samples), min(samples), max(samples))

    def map(self, f: Callable[[float], float]) -> "Stats":
        """Apply a monotonic function to each figure; a decreasing one (such as a rate from a
        time) swaps min and max so that ``min <= median <= max`` still holds."""
        return Stats(*_map_ordered(f, self.median, self.min, self.max))

    def as_dict(self) -> dict:
        """``{"median", "min", "max"}``, for the JSON report."""
        return asdict(self)


def median_interval(samples, confidence: float = 0.95) -> tuple[float, float]:
    """A confidence interval for the median of the distribution the samples come from, assuming
    only that they are independent: ``(low, high)``, the j-th smallest and j-th largest sample.

    Each sample lies below the true median with probability 1/2, so the number below it is
    Binomial(n, 1/2), and the true median lies outside the interval when at most j - 1 samples
    fall on one side of it. j is the largest rank for which that has probability at most
    ``1 - confidence``. With too few samples (five or fewer at 95%) no rank is enough, and the
    interval is the whole range.
    """
    ordered = sorted(samples)
    n = len(ordered)

    def two_sided_tail(j: int) -> float:  # P(at most j samples on a given side), both sides
        return 2 * sum(math.comb(n, i) for i in range(j + 1)) / 2**n

    j = 1
    while j < n // 2 and two_sided_tail(j) <= 1 - confidence:
        j += 1
    return ordered[j - 1], ordered[n - j]


def _map_ordered(f: Callable[[float], float], middle: float, low: float, high: float) -> tuple[float, float, float]:
    """``(f(middle), f(low), f(high))`` with the two bounds in order again: a decreasing ``f``
    (a rate from a time) would otherwise swap them."""
    low, high = sorted((f(low), f(high)))
    return f(middle), low, high


@dataclass(frozen=True)
class Estimate:
    """The median of a set of samples with a confidence interval for it (:func:`median_interval`):
    what a figure that is held against a threshold, or against another version, is given with."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, samples, confidence: float = 0.95) -> "Estimate":
        """The median of a non-empty sequence of numbers and its ``confidence`` interval."""
        samples = list(samples)
        return cls(statistics.median(samples), *median_interval(samples, confidence))

    def map(self, f: Callable[[float], float]) -> "Estimate":
        """Apply a monotonic function to the median and both bounds (a decreasing one keeps
        ``low <= median <= high``): the interval of ``f(median)`` is ``f`` of the interval."""
        return Estimate(*_map_ordered(f, self.median, self.low, self.high))

    def as_dict(self) -> dict:
        """``{"median", "low", "high"}``, for a JSON report."""
        return asdict(self)


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one callable, one sample per repeat; with a reference case (see
    :func:`measure`), ``reference`` holds, for each repeat, the reference's seconds per call
    around it (the mean of the reference repeats just before and just after)."""

    samples: tuple
    reference: tuple = ()

    @property
    def seconds(self) -> Stats:
        """Seconds per call."""
        return Stats.of(self.samples)

    def per_second(self, items_per_call: float = 1.0) -> Stats:
        """Items per second (for example samples/s for a training step on a batch)."""
        return self.seconds.map(lambda s: items_per_call / s)

    def ratios_to_reference(self) -> list[float]:
        """Speed relative to the reference case of :func:`measure` (above 1: faster), one
        ratio per repeat, against the reference repeats on either side of it."""
        return [r / s for s, r in zip(self.samples, self.reference)]

    def speed_vs_reference(self) -> Stats:
        """The median, min and max of :meth:`ratios_to_reference`."""
        return Stats.of(self.ratios_to_reference())


def speed_ratios(a: Timing, b: Timing) -> list[float]:
    """Case ``a``'s speed relative to case ``b``'s, one ratio per round of one :func:`measure`
    call with a reference that is neither of them (above 1: ``a`` is faster).

    In each round, each case's repeat is compared with the reference repeats just before and
    just after it, and the two ratios are divided: ``(ref / a) / (ref / b)``. A drift of the
    machine over the round then cancels to first order, as it does in each ratio to the
    reference, where dividing the raw times of ``a`` and ``b`` would pair repeats up to a
    round apart.
    """
    if len(a.reference) != len(a.samples) or len(b.reference) != len(b.samples) or len(a.samples) != len(b.samples):
        raise ValueError("speed_ratios: both cases need one bracketed repeat per round of the same measure call (neither may be the reference)")
    return [ra / rb for ra, rb in zip(a.ratios_to_reference(), b.ratios_to_reference())]


def _calls_per_second(fn: Callable[[], object], seconds: float) -> float:
    """Call ``fn`` once (first-call costs such as compilation are not counted), then for about
    ``seconds`` (at least twice); return the calls per second seen."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if calls >= 2 and elapsed >= seconds:
            return calls / elapsed


def _time_calls(fn: Callable[[], object], number: int) -> float:
    """Seconds per call over ``number`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def measure(cases: dict[str, Callable[[], object]], settings: Settings, reference: str | None = None) -> dict[str, Timing]:
    """Time each zero-argument callable of ``cases``; returns a :class:`Timing` per name.

    Each callable is first warmed up for ``settings.warmup_s`` seconds, which also sets how
    many calls make one repeat (about ``settings.repeat_s`` seconds). Then the repeats run
    round-robin over the cases, starting each round with the next case, so that no case
    always follows the same neighbour.

    With a ``reference`` (the name of one case), a repeat of the reference runs before the
    first case of each round and after every case: each repeat of another case is bracketed
    by two reference repeats, and :meth:`Timing.speed_vs_reference` compares it with their
    mean. A ratio then comes from three repeats within a few seconds, and a drift of the
    machine during the round (which this VM shows: 10-20% within a minute) cancels out to
    first order, where a plain round-robin would pair repeats up to a round apart.

    Before each warm-up and each timed block the process sleeps ``settings.settle_s``
    seconds, so that the worker threads of the previous case's library stop spinning:
    OpenBLAS threads keep spinning for a while after a matrix product and take a core from
    whatever runs next (on the 2-core machine PyTorch ran at half speed right after numpy;
    a one-second pause removed that).

    The pause has a cost of its own: on this VM the first steps after an idle second are
    slow, and speed comes back over about 15 steps (the CNN's first tinyfn step took 6.9 ms
    against 3.5 ms from the 20th on; PyTorch's 7.4 against 4.9). That cost is nearly the same
    in milliseconds for every case, so it weighed most on the fastest: it took 12% off
    tinyfn's CNN figure and 2% off PyTorch's. So the timed block starts only after
    ``settings.rewarm_s`` seconds of untimed calls of the same case, and a repeat measures
    the steady state that a training loop runs in. A callable must finish its work before
    it returns (block on asynchronous results).
    """
    names = list(cases)

    def calls_per_second(name: str, seconds: float) -> float:
        time.sleep(settings.settle_s)
        return _calls_per_second(cases[name], seconds)

    number = {name: max(1, math.ceil(settings.repeat_s * calls_per_second(name, settings.warmup_s))) for name in names}

    def repeat(name: str) -> float:
        calls_per_second(name, settings.rewarm_s)  # untimed: back to full speed after the pause
        return _time_calls(cases[name], number[name])

    samples: dict[str, list[float]] = {name: [] for name in names}
    brackets: dict[str, list[float]] = {name: [] for name in names}
    others = [name for name in names if name != reference]
    for r in range(settings.repeats):
        if reference is not None:
            before = repeat(reference)
            samples[reference].append(before)
        for i in range(len(others)):
            name = others[(r + i) % len(others)]
            samples[name].append(repeat(name))
            if reference is not None:
                after = repeat(reference)
                samples[reference].append(after)
                brackets[name].append((before + after) / 2)
                before = after
    if reference is not None:
        brackets[reference] = samples[reference]
    return {name: Timing(tuple(samples[name]), tuple(brackets[name])) for name in names}


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TINYFN_NUM_THREADS")


def set_thread_variables(threads: int) -> None:
    """Set the thread-count variables that OpenBLAS, MKL, PyTorch and tinyfn read when they are
    imported (:data:`THREAD_VARIABLES`); this must run before numpy or torch is imported, and
    the fresh interpreters of :func:`run_fresh` inherit it."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)


def configure_torch(threads: int) -> dict | None:
    """Import PyTorch when installed and give it ``threads`` intra-op threads; returns
    ``{"intra_op", "inter_op"}`` or None."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}


def cpu_model() -> str:
    """The processor's name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a thread count, a batch size)."""
    if not text.isdigit() or int(text) < 1:
        raise ValueError(text)
    return int(text)


def run_fresh(code: str, runs: int, *, timeout: float = 600) -> list[dict]:
    """Run ``python -c code`` ``runs`` times, each in a fresh interpreter (same environment,
    so the same thread settings); the code prints one JSON object on its last line of
    stdout. Returns the parsed objects. Raises ``RuntimeError`` with the child's stderr if
    a run fails.
    """
    results = []
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise RuntimeError(f"fresh-interpreter run failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def run_cold_and_warm(code: str, runs: int) -> tuple[list[dict], list[dict]]:
    """Run ``code`` (as :func:`run_fresh` does) ``runs`` times in pairs of fresh interpreters:
    the first with a new, empty ``NUMBA_CACHE_DIR`` (every kernel compiles), the second with
    the cache the first filled. Returns the ``(cold, warm)`` lists of the printed objects."""
    cold, warm = [], []
    previous = os.environ.get("NUMBA_CACHE_DIR")
    try:
        for _ in range(runs):
            with tempfile.TemporaryDirectory() as cache:
                os.environ["NUMBA_CACHE_DIR"] = cache
                cold += run_fresh(code, 1)
                warm += run_fresh(code, 1)
    finally:
        if previous is None:
            os.environ.pop("NUMBA_CACHE_DIR", None)
        else:
            os.environ["NUMBA_CACHE_DIR"] = previous
    return cold, warm


def _machine_busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux ``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU seconds used by this process and the child processes it has waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuMeter:
    """Measures how much of the machine other processes used since the meter was made.

    Benchmarks on a small machine are only meaningful when nothing else runs: with every
    core in a BLAS pool, one busy core elsewhere can slow a multi-threaded matrix product
    many times over.
    """

    def __init__(self):
        self._start = (time.perf_counter(), _machine_busy_seconds(), _own_cpu_seconds())

    def foreign_share(self) -> float | None:
        """Fraction of the machine's capacity (all cores) used by other processes, or None
        where it cannot be measured."""
        wall0, busy0, own0 = self._start
        busy = _machine_busy_seconds()
        if busy is None or busy0 is None:
            return None
        foreign = (busy - busy0) - (_own_cpu_seconds() - own0)
        return max(0.0, foreign) / ((time.perf_counter() - wall0) * (os.cpu_count() or 1))


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]

    def line(row):
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), "-" * len(line(header))] + [line(row) for row in rows])


def fmt_stats(stats: Stats | Estimate, digits: int = 0) -> str:
    """``"median (min-max)"`` of a :class:`Stats`, or ``"median (low-high)"`` of an
    :class:`Estimate`, with ``digits`` decimals and thousands separators."""
    low, high = (stats.low, stats.high) if isinstance(stats, Estimate) else (stats.min, stats.max)
    return f"{stats.median:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def torch_sgd_step(model, x, y, learning_rate: float):
    """A PyTorch eager training step on numpy arrays ``x`` and integer labels ``y``: zero the
    gradients, cross-entropy, backward, ``torch.optim.SGD`` update. Returns ``step() -> loss``."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xt), yt)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def tinyfn_sgd_step(model, params, x, y, learning_rate: float, static_graph: bool = False, lib=None):
    """A tinyfn training step as a user writes it: ``value_and_grad`` of the softmax
    cross-entropy of ``model.apply`` (with ``static_graph`` as given), then ``optim.sgd_step``.
    The parameters are carried from step to step inside the closure. Returns ``step() -> loss``.

    ``lib`` is the tinyfn package to run (default: ``tinyfn``; ``against_revision.py`` passes
    an older revision imported under another name)."""
    if lib is None:
        import tinyfn as lib

    def loss_fn(params, x, y):
        return lib.losses.softmax_cross_entropy(model.apply(params, x), y)

    loss_and_grads = lib.value_and_grad(loss_fn, static_graph=static_graph)
    sgd_step = lib.optim.sgd_step

    def step():
        nonlocal params
        loss, grads = loss_and_grads(params, x, y)
        params = sgd_step(params, grads, learning_rate)
        return loss

    return step
