"""The CNN benchmark: training throughput of a small convolutional network, tinyfn vs PyTorch.

    python benchmarks/cnn.py            # full run (about 2 minutes on 2 cores)
    python benchmarks/cnn.py --quick    # short run (noisier)
    python benchmarks/cnn.py --threads 1

**The model.** conv(1->8, 3x3, padding 1) - ReLU - max-pool 2 - conv(8->16, 3x3, padding 1) -
ReLU - max-pool 2 - flatten - dense(784->10), softmax cross-entropy (mean over the batch),
plain SGD (learning rate 0.01), float32, on a random batch of 64 MNIST-shaped images
(pixels uniform in [0, 1), labels in 0..9). Every implementation starts from the same
weights (tinyfn's default initialisation); before timing, the run checks that they compute
the same losses over two steps.

**The implementations.**

* ``tinyfn``: as a user writes it, ``value_and_grad`` of ``softmax_cross_entropy(model.apply(...))``
  then ``optim.sgd_step``, with ``Conv2D(..., activation="relu")`` (bias and ReLU fused into
  the convolution: one pass over the activations instead of three);
* ``tinyfn-unfused``: the same with separate ``layers.Relu()`` layers, to show what fusing saves;
* ``tinyfn-static``: the ``tinyfn`` step with ``value_and_grad(..., static_graph=True)`` (the
  loss traced once, then its primitives replayed; see ``tinyfn.staging``);
* ``torch``: PyTorch eager, ``nn.Sequential``, ``F.cross_entropy``, ``torch.optim.SGD``.

**The figures.** Training samples/s (batch size / seconds per step): median and min-max of
the repeats, which run round-robin over the implementations after a warm-up (see
``common.measure``), and each implementation's speed relative to ``torch``, per repeat
against the ``torch`` repeats run just before and just after it.
PyTorch in this process runs with the malloc settings tinyfn makes on import (freed memory
is kept for reuse, see ``tinyfn.kernels.memory``), which speed it up too; it is also timed
in a fresh interpreter without them, as it runs on its own. Then
the first training step: in this process (Numba compiles the kernels, or loads them from
its on-disk cache), and in fresh interpreters with an empty kernel cache (``NUMBA_CACHE_DIR``
set to a new temporary directory) and with that same cache warm.

**Threads.** ``--threads`` (default: all cores) sets ``OMP_NUM_THREADS`` and
``OPENBLAS_NUM_THREADS`` before numpy is imported, ``TINYFN_NUM_THREADS`` (tinyfn's kernels
split each batch over that many threads, see ``tinyfn.kernels.threads``) and
``torch.set_num_threads``. Numbers are only
meaningful on an otherwise idle machine; the run prints how much of it other processes used.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

import common

BATCH = 64
LEARNING_RATE = 0.01
TARGET_RATIO = 1.5  # tinyfn's goal: at least this many times PyTorch eager's samples/s
IMPLEMENTATIONS = ("tinyfn", "tinyfn-unfused", "tinyfn-static", "torch")


def parse_args(argv=None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter repeats")
    parser.add_argument("--threads", type=common.positive_int, default=os.cpu_count(), help="threads for BLAS and PyTorch (default: all cores, %(default)s)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even when it is installed")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- the model


def tinyfn_model(fused: bool = True, lib=None):
    """The benchmark's model as a tinyfn layer stack (ReLUs fused into the convolutions or not);
    ``lib`` is the tinyfn package to build it with (default: ``tinyfn``)."""
    if lib is None:
        import tinyfn as lib
    conv, layers = lib.conv, lib.layers

    def conv_relu(channels):
        if fused:
            return [conv.Conv2D(channels, 3, padding=1, activation="relu")]
        return [conv.Conv2D(channels, 3, padding=1), layers.Relu()]

    return layers.serial(
        *conv_relu(8), conv.MaxPool2D(2), *conv_relu(16), conv.MaxPool2D(2), layers.Flatten(), layers.Dense(10)
    )


def init_weights(seed: int = 0) -> list:
    """Initial weights ``[(w, b) of conv 1, conv 2, dense]`` from tinyfn's default initialisation."""
    import numpy as np
    import tinyfn

    _, params = tinyfn_model().init(tinyfn.random.key(seed), (-1, 1, 28, 28))
    return [(np.array(params[k]["w"]), np.array(params[k]["b"])) for k in ("conv2d_0", "conv2d_2", "dense_5")]


def make_data(batch: int = BATCH, seed: int = 0):
    """A random batch: images ``(batch, 1, 28, 28)`` float32 in [0, 1), int64 labels in [0, 10)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.random((batch, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, batch)


# ----------------------------------------------------------------------------- implementations
# Each make_step(weights, x, y) returns a zero-argument callable that runs one training step
# from its own copy of the weights (carried from step to step) and returns the loss.


def tinyfn_step(weights, x, y, fused: bool = True, static_graph: bool = False, lib=None):
    """tinyfn as a user writes it (``lib``: the tinyfn package to run, default ``tinyfn``)."""
    if lib is None:
        import tinyfn as lib

    model = tinyfn_model(fused, lib)
    names = ("conv2d_0", "conv2d_2", "dense_5") if fused else ("conv2d_0", "conv2d_3", "dense_7")
    params = lib.tree.freeze({name: {"w": w, "b": b} for name, (w, b) in zip(names, weights)})
    return common.tinyfn_sgd_step(model, params, x, y, LEARNING_RATE, static_graph, lib)


def torch_step(weights, x, y):
    """PyTorch eager with ``torch.optim.SGD`` (which updates the weights in place)."""
    import torch

    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(784, 10),
    )
    with torch.no_grad():
        for layer, (w, b) in zip([model[0], model[3], model[7]], weights):
            layer.weight.copy_(torch.from_numpy(w.T if w.ndim == 2 else w))  # Linear stores (out, in)
            layer.bias.copy_(torch.from_numpy(b))
    return common.torch_sgd_step(model, x, y, LEARNING_RATE)


STEPS = {
    "tinyfn": tinyfn_step,
    "tinyfn-unfused": lambda weights, x, y: tinyfn_step(weights, x, y, fused=False),
    "tinyfn-static": lambda weights, x, y: tinyfn_step(weights, x, y, static_graph=True),
    "torch": torch_step,
}


def first_step_seconds() -> float:
    """Seconds of tinyfn's first training step in this interpreter: compiling the Numba
    kernels (or loading them from the on-disk cache) and first-call set-up."""
    step = tinyfn_step(init_weights(), *make_data())
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def fresh_first_step(runs: int) -> dict:
    """The first step in fresh interpreters: with an empty Numba cache, then with it warm.

    Each run gets a new temporary ``NUMBA_CACHE_DIR``; the interpreter that fills it is the
    cold run and a second one reading it the warm run. Returns ``{"cold_s", "warm_s",
    "import_s"}`` Stats (``import_s``: ``import tinyfn, tinyfn.conv`` in the warm runs).
    """
    code = "\n".join(
        [
            "import time",
            "start = time.perf_counter()",
            "import tinyfn, tinyfn.conv, tinyfn.optim",
            "import_s = time.perf_counter() - start",
            "import json, sys",
            f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})",
            "import cnn",
            "print(json.dumps({'import_s': import_s, 'first_step_s': cnn.first_step_seconds()}))",
        ]
    )
    cold, warm = common.run_cold_and_warm(code, runs)
    return {
        "cold_s": common.Stats.of(r["first_step_s"] for r in cold),
        "warm_s": common.Stats.of(r["first_step_s"] for r in warm),
        "import_s": common.Stats.of(r["import_s"] for r in warm),
    }


def stock_torch(quick: bool) -> common.Stats:
    """PyTorch's samples/s in a fresh interpreter where tinyfn leaves malloc's settings alone
    (``TINYFN_KEEP_FREED_MEMORY=0``): PyTorch as it runs on its own. In this process it also
    profits from the memory that tinyfn keeps for reuse (see ``tinyfn.kernels.memory``)."""
    code = "\n".join(
        [
            "import json, sys",
            f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})",
            "import cnn, common, torch",
            f"torch.set_num_threads({os.environ['OMP_NUM_THREADS']})",
            f"settings = common.{'QUICK' if quick else 'FULL'}",
            "timing = common.measure({'torch': cnn.torch_step(cnn.init_weights(), *cnn.make_data())}, settings)['torch']",
            f"print(json.dumps(timing.per_second({BATCH}).as_dict()))",
        ]
    )
    previous = os.environ.get("TINYFN_KEEP_FREED_MEMORY")
    os.environ["TINYFN_KEEP_FREED_MEMORY"] = "0"
    try:
        return common.Stats(**common.run_fresh(code, 1)[0])
    finally:
        if previous is None:
            del os.environ["TINYFN_KEEP_FREED_MEMORY"]
        else:
            os.environ["TINYFN_KEEP_FREED_MEMORY"] = previous


# ----------------------------------------------------------------------------- the run


def agreement(names) -> dict:
    """The losses of two consecutive steps of each implementation from the same weights and
    batch (the second shows the update was the same too)."""
    weights, (x, y) = init_weights(), make_data(seed=1)
    report = {}
    for name in names:
        step = STEPS[name](weights, x, y)
        report[name] = [float(step()), float(step())]
    return report


def thread_report(threads: int, torch_loaded: bool) -> str:
    """One line naming the thread settings in force."""
    from tinyfn.kernels.threads import num_threads

    parts = [f"tinyfn kernels {num_threads()}", f"OpenBLAS/OpenMP {threads}"]
    if torch_loaded:
        import torch

        parts.append(f"PyTorch {torch.get_num_threads()} threads")
    return "threads: " + ", ".join(parts)


def main(argv=None) -> dict:
    """Run the benchmark, print the report, and return its figures as a dict."""
    args = parse_args(argv)
    common.set_thread_variables(args.threads)
    settings = common.QUICK if args.quick else common.FULL

    start = time.perf_counter()
    first_step = first_step_seconds()  # before anything else has run a kernel in this process
    names = [n for n in IMPLEMENTATIONS if n != "torch" or (not args.no_torch and importlib.util.find_spec("torch"))]
    if "torch" in names:
        import torch

        torch.set_num_threads(args.threads)
    else:
        print("torch: skipped (not installed; pip install torch==2.13.0, or --no-torch given)")

    losses = agreement(names)
    weights, (x, y) = init_weights(), make_data()
    meter = common.CpuMeter()
    timings = common.measure(
        {name: STEPS[name](weights, x, y) for name in names}, settings, reference="torch" if "torch" in names else None
    )
    foreign = meter.foreign_share()
    fresh = fresh_first_step(settings.fresh_runs)
    stock = stock_torch(args.quick) if "torch" in names else None

    print(f"CNN training step, batch {BATCH}, float32 (model and method: benchmarks/cnn.py)")
    print(thread_report(args.threads, "torch" in names))
    rows = []
    for name in names:
        rate = timings[name].per_second(BATCH)
        versus = common.fmt_stats(timings[name].speed_vs_reference(), 2) if "torch" in names else "-"
        rows.append([name, common.fmt_stats(rate), f"{timings[name].seconds.median * 1e6:,.0f}", versus, f"{losses[name][0]:.6f} {losses[name][1]:.6f}"])
    print(common.format_table(["implementation", "samples/s median (min-max)", "us/step", "speed vs torch", "losses of 2 steps"], rows))
    if "torch" in names:
        ratio = timings["tinyfn"].speed_vs_reference().median
        verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
        print(f"target: tinyfn >= {TARGET_RATIO}x PyTorch eager: {verdict} ({ratio:.2f}x)")
    if stock is not None:
        tinyfn_rate = timings["tinyfn"].per_second(BATCH).median
        print(
            f"PyTorch on its own (fresh interpreter, malloc untouched): {common.fmt_stats(stock)} samples/s; "
            f"tinyfn's median is {tinyfn_rate / stock.median:.2f}x that (not a paired ratio)"
        )
    if foreign is not None:
        warning = "  (figures unreliable: the machine was not idle)" if foreign > 0.05 else ""
        print(f"other processes used {foreign:.0%} of the machine while the repeats ran{warning}")
    print(f"first training step in this process: {first_step:.2f} s (Numba compiles its kernels, or loads them from the on-disk cache)")
    print(
        f"first training step in a fresh interpreter: empty kernel cache {common.fmt_stats(fresh['cold_s'], 2)} s, "
        f"warm cache {common.fmt_stats(fresh['warm_s'], 2)} s (import {fresh['import_s'].median:.2f} s)"
    )
    print(f"benchmark time: {time.perf_counter() - start:.0f} s")
    return {
        "samples_per_s": {n: timings[n].per_second(BATCH).as_dict() for n in names},
        "first_step_s": first_step,
        "fresh": {k: v.as_dict() for k, v in fresh.items()},
        "torch_on_its_own": stock.as_dict() if stock is not None else None,
        "foreign_cpu": foreign,
    }


if __name__ == "__main__":
    main()
