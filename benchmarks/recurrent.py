"""The recurrent benchmark: an LSTM training step, tinyfn vs PyTorch eager, and the measurements
behind tinyfn's policy for the small products of each step.

    python benchmarks/recurrent.py            # full run (3 to 5 minutes on 2 cores)
    python benchmarks/recurrent.py --quick    # short run (noisier)
    python benchmarks/recurrent.py --threads 1

**The step.** A character model's training step: a batch of 32 sequences of 50 one-hot
characters (65 symbols), an LSTM with 128 hidden units, a dense layer to 65 logits at every
step, softmax cross-entropy averaged over the 1,600 predictions, plain SGD (learning rate
0.1), float32. ``tinyfn`` is ``value_and_grad`` of ``softmax_cross_entropy(model.apply(...))``
with ``model = serial(LSTM(128), Dense(65))``, then ``optim.sgd_step``; ``tinyfn-static`` the
same with ``static_graph=True``; ``torch`` is ``nn.LSTM(65, 128, batch_first=True)`` and
``nn.Linear``, ``F.cross_entropy`` and ``torch.optim.SGD`` (on a CPU, PyTorch runs the LSTM
through oneDNN's fused RNN kernels). All start from the same weights (tinyfn's
initialisation; the LSTM's parameters have PyTorch's names and layout); the run prints the
losses of two steps of each before timing.

**The policy for the small products.** Each of the 50 steps multiplies (32, 128) by
(128, 512) in the forward pass and (32, 512) by (512, 128) in the backward pass, one after
the other. ``tinyfn`` splits the batch over the threads (``tinyfn.kernels.threads``: each
thread runs every step for its rows) and holds BLAS to one thread around the loops
(``recurrent.STEP_BLAS_THREADS = 1``, through threadpoolctl). The alternatives are in the
table too: ``tinyfn-one-thread-loop`` runs the loops on one thread, BLAS still held to one;
``tinyfn-one-thread-loop-blas-all`` runs them on one thread with BLAS on every thread
(``STEP_BLAS_THREADS = None``), which is what numpy does by itself; ``tinyfn-python-loop``
runs each step from Python (``recurrent.USE_NUMBA_LOOPS = False``: ``np.matmul``, then one
kernel call) instead of the whole loop over time in one Numba kernel per thread that calls
numpy's BLAS itself (``tinyfn.kernels.blas``); ``tinyfn-blas-one-thread``
holds BLAS to one thread for the whole step, the dense layers' products too, leaving the
second core to tinyfn's split of the recurrence. Below the table, the
products alone: the step's forward product through numpy's BLAS on 1 thread and on all
threads, with ``weight_hh.T`` as a transposed view and as a contiguous copy (what the
kernels pass).

**The figures.** Training samples/s (sequences per second: batch / seconds per step), median
and min-max of the repeats, which run round-robin after a warm-up, with a ``torch`` repeat
before each round and after every other repeat (``common.measure``); *speed vs torch* is each
repeat's speed against the mean of the two ``torch`` repeats around it (above 1: faster).
Then the first training step in a fresh interpreter with an empty Numba cache (the kernels
compile) and with a warm one.

**Threads.** ``--threads`` (default: all cores) sets ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``TINYFN_NUM_THREADS`` before numpy is
imported and calls ``torch.set_num_threads``. The run prints the load average and how much of
the machine other processes used while the repeats ran: on 2 cores, a figure taken while
something else runs is worth little, and multi-threaded BLAS suffers most.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import common
import transformer

BATCH, STEPS, SYMBOLS, HIDDEN = 32, 50, 65, 128
LEARNING_RATE = 0.1
TARGET_RATIO = 1.0  # tinyfn's goal: at least PyTorch eager's samples/s
PRODUCTS_PER_CALL = 200  # products per timed call in step_products, so that setting the threads costs nothing


def parse_args(argv=None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter repeats")
    parser.add_argument("--threads", type=common.positive_int, default=os.cpu_count(), help="threads for BLAS and PyTorch (default: all cores, %(default)s)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even when it is installed")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- the model and the data


def tinyfn_model():
    """``serial(LSTM(128), Dense(65))``: one-hot characters (batch, T, 65) -> logits (batch, T, 65)."""
    from tinyfn import layers
    from tinyfn.layers.recurrent import LSTM

    return layers.serial(LSTM(HIDDEN), layers.Dense(SYMBOLS))


def init_params(seed: int = 0) -> dict:
    """The model's initial parameters (tinyfn's initialisation), as writable numpy arrays."""
    import numpy as np

    import tinyfn

    _, params = tinyfn_model().init(tinyfn.random.key(seed), (BATCH, STEPS, SYMBOLS))
    return tinyfn.tree.map(np.array, params)


def make_data(seed: int = 0):
    """A random batch: one-hot inputs (batch, T, 65) float32 and the next characters (batch, T) int64."""
    import numpy as np

    rng = np.random.default_rng(seed)
    text = rng.integers(0, SYMBOLS, (BATCH, STEPS + 1))
    return np.eye(SYMBOLS, dtype=np.float32)[text[:, :-1]], text[:, 1:]


# ----------------------------------------------------------------------------- implementations
# Each returns a zero-argument callable that runs one training step from its own copy of the
# weights (carried from step to step) and returns the loss.


def tinyfn_step(params, x, y, static_graph: bool = False, split_batch: bool = True, step_blas_threads: int | None = 1, blas_threads: int | None = None, numba_loops: bool = True):
    """tinyfn as a user writes it. While the step runs, ``split_batch=False`` runs the steps of
    the recurrence on one thread (``kernels.threads`` set to 1) instead of splitting the batch
    over the threads, ``step_blas_threads`` is ``recurrent.STEP_BLAS_THREADS``,
    ``blas_threads`` (if not None) limits BLAS for the whole step, dense layers included, and
    ``numba_loops`` is ``recurrent.USE_NUMBA_LOOPS``."""
    from contextlib import nullcontext

    import tinyfn
    from tinyfn.kernels import threads
    from tinyfn.layers import recurrent

    step = common.tinyfn_sgd_step(tinyfn_model(), tinyfn.tree.freeze(params), x, y, LEARNING_RATE, static_graph)
    controller = blas_controller() if blas_threads is not None else None

    def with_policy():
        saved = threads.num_threads(), recurrent.STEP_BLAS_THREADS, recurrent.USE_NUMBA_LOOPS
        threads.set_num_threads(saved[0] if split_batch else 1)
        recurrent.STEP_BLAS_THREADS, recurrent.USE_NUMBA_LOOPS = step_blas_threads, numba_loops
        try:
            with nullcontext() if controller is None else controller.limit(limits=blas_threads, user_api="blas"):
                return step()
        finally:
            threads.set_num_threads(saved[0])
            recurrent.STEP_BLAS_THREADS, recurrent.USE_NUMBA_LOOPS = saved[1], saved[2]

    return with_policy


def blas_controller():
    """A threadpoolctl controller of the BLAS libraries loaded (made once: it scans them)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def torch_step(params, x, y):
    """PyTorch eager: ``nn.LSTM`` and ``nn.Linear`` with ``torch.optim.SGD``."""
    import torch
    import torch.nn.functional as F

    lstm, head = torch.nn.LSTM(SYMBOLS, HIDDEN, batch_first=True), torch.nn.Linear(HIDDEN, SYMBOLS)
    with torch.no_grad():
        for name, value in params["lstm_0"].items():  # the same names, with PyTorch's layer suffix
            getattr(lstm, f"{name}_l0").copy_(torch.from_numpy(value))
        head.weight.copy_(torch.from_numpy(params["dense_1"]["w"].T))  # Linear stores (out, in)
        head.bias.copy_(torch.from_numpy(params["dense_1"]["b"]))
    optimizer = torch.optim.SGD([*lstm.parameters(), *head.parameters()], lr=LEARNING_RATE)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        optimizer.zero_grad(set_to_none=True)
        out, _ = lstm(xt)
        loss = F.cross_entropy(head(out).reshape(-1, SYMBOLS), yt.reshape(-1))
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


STEPS_BY_NAME = {
    "tinyfn": tinyfn_step,
    "tinyfn-static": lambda p, x, y: tinyfn_step(p, x, y, static_graph=True),
    "tinyfn-python-loop": lambda p, x, y: tinyfn_step(p, x, y, numba_loops=False),
    "tinyfn-one-thread-loop": lambda p, x, y: tinyfn_step(p, x, y, split_batch=False),
    "tinyfn-one-thread-loop-blas-all": lambda p, x, y: tinyfn_step(p, x, y, split_batch=False, step_blas_threads=None),
    "tinyfn-blas-one-thread": lambda p, x, y: tinyfn_step(p, x, y, blas_threads=1),
    "torch": torch_step,
}


def agreement(names) -> dict:
    """The losses of two consecutive steps of each implementation from the same weights and batch."""
    params, (x, y) = init_params(), make_data(seed=1)
    report = {}
    for name in names:
        step = STEPS_BY_NAME[name](params, x, y)
        report[name] = [float(step()), float(step())]
    return report


# ----------------------------------------------------------------------------- the products alone


def step_products(settings, threads: int) -> dict:
    """Microseconds of one step's forward product ``h @ weight_hh.T``, (32, 128) @ (128, 512):
    on 1 BLAS thread and on ``threads``, with the transposed view and with a contiguous copy."""
    import numpy as np

    rng = np.random.default_rng(0)
    h = rng.standard_normal((BATCH, HIDDEN), dtype=np.float32)
    weight_hh = rng.standard_normal((4 * HIDDEN, HIDDEN), dtype=np.float32)
    contiguous = np.ascontiguousarray(weight_hh.T)
    out = np.empty((BATCH, 4 * HIDDEN), np.float32)
    controller = blas_controller()

    def product(w, count):
        def run():
            with controller.limit(limits=count, user_api="blas"):
                for _ in range(PRODUCTS_PER_CALL):
                    np.matmul(h, w, out=out)

        return run

    cases = {
        f"{count} thread{'s' * (count > 1)}, {kind}": product(w, count)
        for count in sorted({1, threads})
        for kind, w in (("transposed view", weight_hh.T), ("contiguous copy", contiguous))
    }
    timings = common.measure(cases, settings)
    return {name: timing.seconds.map(lambda s: s / PRODUCTS_PER_CALL * 1e6) for name, timing in timings.items()}


def first_step_seconds() -> float:
    """Seconds of tinyfn's first training step in this interpreter (the Numba kernels compile,
    or load from the on-disk cache)."""
    step = tinyfn_step(init_params(), *make_data())
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- the run


def main(argv=None) -> dict:
    """Run the benchmark, print the report, and return its figures as a dict."""
    args = parse_args(argv)
    common.set_thread_variables(args.threads)
    settings = common.QUICK if args.quick else common.FULL
    start = time.perf_counter()
    names = [n for n in STEPS_BY_NAME if n != "torch" or (not args.no_torch and importlib.util.find_spec("torch"))]
    if "torch" in names:
        common.configure_torch(args.threads)
    else:
        print("torch: skipped (not installed; pip install torch==2.13.0, or --no-torch given)")
    if importlib.util.find_spec("threadpoolctl") is None:
        for name in ("tinyfn-one-thread-loop-blas-all", "tinyfn-blas-one-thread"):  # these need threadpoolctl
            names.remove(name)
        print("threadpoolctl is not installed: BLAS keeps its threads in the loops (pip install threadpoolctl)")

    losses = agreement(names)
    params, (x, y) = init_params(), make_data()
    meter = common.CpuMeter()
    timings = common.measure(
        {name: STEPS_BY_NAME[name](params, x, y) for name in names}, settings, reference="torch" if "torch" in names else None
    )
    foreign = meter.foreign_share()
    products = step_products(settings, args.threads) if importlib.util.find_spec("threadpoolctl") else {}
    fresh = transformer.fresh_first_call(settings.fresh_runs, "recurrent", "first_step_seconds")

    print(f"LSTM training step: batch {BATCH}, {STEPS} steps, {SYMBOLS} one-hot inputs, {HIDDEN} hidden units, float32 (benchmarks/recurrent.py)")
    print(f"threads: {args.threads} (BLAS, OpenMP, PyTorch); load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    rows = []
    for name in names:
        versus = common.fmt_stats(timings[name].speed_vs_reference(), 2) if "torch" in names else "-"
        rate = timings[name].per_second(BATCH)
        rows.append([name, common.fmt_stats(rate), f"{timings[name].seconds.median * 1e3:,.2f}", versus, f"{losses[name][0]:.6f} {losses[name][1]:.6f}"])
    print(common.format_table(["implementation", "samples/s median (min-max)", "ms/step", "speed vs torch", "losses of 2 steps"], rows))
    if "torch" in names:
        ratio = timings["tinyfn"].speed_vs_reference().median
        print(f"target: tinyfn >= {TARGET_RATIO}x PyTorch eager: {'met' if ratio >= TARGET_RATIO else 'NOT met'} ({ratio:.2f}x)")
    if foreign is not None:
        warning = "  (figures unreliable: the machine was not idle)" if foreign > 0.05 else ""
        print(f"other processes used {foreign:.0%} of the machine while the repeats ran{warning}")
    if products:
        print("\none step's product h @ weight_hh.T, (32, 128) @ (128, 512), through numpy's BLAS:")
        print(common.format_table(["case", "us median (min-max)"], [[name, common.fmt_stats(s, 1)] for name, s in products.items()]))
    cold, warm = common.fmt_stats(fresh["cold_s"], 2), common.fmt_stats(fresh["warm_s"], 2)
    print(f"first training step in a fresh interpreter: empty kernel cache {cold} s (the kernels compile), warm cache {warm} s")
    print(f"benchmark time: {time.perf_counter() - start:.0f} s")
    return {
        "samples_per_s": {n: timings[n].per_second(BATCH).as_dict() for n in names},
        "speed_vs_torch": {n: timings[n].speed_vs_reference().as_dict() for n in names} if "torch" in names else {},
        "step_product_us": {n: s.as_dict() for n, s in products.items()},
        "losses": losses,
        "fresh": {k: v.as_dict() for k, v in fresh.items()},
        "foreign_cpu": foreign,
    }


if __name__ == "__main__":
    main()
