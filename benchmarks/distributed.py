"""Data-parallel training on MPI: step time on 1 and 2 ranks, bytes moved, fixed-order sum vs Allreduce.

    python benchmarks/distributed.py              # launches itself under mpiexec (about 6 minutes on 2 cores)
    python benchmarks/distributed.py --quick      # fewer, shorter repeats, noisier (about 2 minutes)
    python benchmarks/distributed.py --no-gpt     # the MLP and the CNN only

Needs the extra ``mpi`` (mpi4py and an ``mpiexec``: the one beside this Python, else on PATH).

**The models and batches.** The digits MLP of ``tinyfn train digits`` (64-128-64-10, SGD with
momentum) and the digits CNN (``tasks.digits_cnn``) (two convolutions, BatchNorm,
dropout; Adam), each on a global batch of 64 digits; the char GPT of ``tinyfn.tasks.gpt``
(context 64, width 128, 4 blocks, the 62 characters of the Shakespeare text; AdamW) on a
global batch of 16 random windows. float32 throughout.

**The runs.** The script starts ``mpiexec -n N python -m mpi4py`` itself for each setting:
1 rank with one thread, 2 ranks with one thread each, and 1 rank with every core's threads
(``TINYFN_NUM_THREADS``, ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``). In each run rank 0
times, in interleaved repeats with a barrier before and after each (so a repeat lasts until
the slowest rank is done):

* ``step``: :func:`tinyfn.distributed.data_parallel_step` on the global batch, with the
  fixed-order sum (the default);
* ``step-allreduce``: the same with ``fixed_order=False`` (MPI's ``Allreduce``);
* ``sum``: ``World.psum`` of the model's gradient tree alone, fixed order; ``allreduce``:
  the same with ``fixed_order=False``.

**The figures.** Milliseconds per call: median and min-max over the repeats. Scaling
efficiency: ``T(1 rank x 1 thread) / (ranks x threads x T)`` for the same global batch, so
1.0 is perfect strong scaling over the cores used (the last setting compares threads with
ranks). Bytes moved: what each rank sends per step with the fixed-order sum, the
``2 (N - 1) / N`` times the buffer of a reduce-scatter plus an all-gather (the gradients and
BatchNorm's statistics in one float32 buffer, the loss and metrics in a float64 one). The
figures are only meaningful on an otherwise idle machine: the script prints how much of it
other processes used.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

GLOBAL_BATCH = {"mlp": 64, "cnn": 64, "gpt": 16}
MODELS = tuple(GLOBAL_BATCH)


def parse_args(argv=None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter repeats")
    parser.add_argument("--no-gpt", action="store_true", help="skip the char GPT (the slowest step)")
    parser.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)  # a rank of a run; rank 0 writes JSON
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- one run, on every rank


def setup(name: str):
    """``(model, optimizer, input_shape, global_batch)`` of one benchmark model."""
    import numpy as np

    from tinyfn import datasets, optim, random, tasks

    if name == "gpt":
        ids = random.randint(random.key(0), (GLOBAL_BATCH[name], 65), 0, 62)
        return tasks.gpt(62), optim.adamw(1e-3), (-1, 64), (ids[:, :-1], ids[:, 1:])
    images, labels = datasets.digits(images=True)
    images = (images[: GLOBAL_BATCH[name]] / 16.0).astype(np.float32)
    labels = labels[: GLOBAL_BATCH[name]]
    if name == "mlp":
        mlp = tasks.get_task("digits").model()
        return mlp, optim.sgd(0.05, momentum=0.9), (-1, 64), (images.reshape(-1, 64), labels)
    return tasks.digits_cnn(), optim.adam(3e-3), (-1, 1, 8, 8), (images, labels)


def worker(out: str, models, quick: bool) -> None:
    """Time the cases of each model on every rank of this run; rank 0 writes the figures to ``out``."""
    import numpy as np

    from tinyfn import distributed, losses, random, train, tree

    world = distributed.current_world()
    repeats, seconds = (5, 0.3) if quick else (9, 0.5)
    report = {"ranks": world.size, "threads": os.environ.get("TINYFN_NUM_THREADS"), "models": {}}
    for name in models:
        model, optimizer, input_shape, batch = setup(name)
        state = world.broadcast(train.init_train_state(model, optimizer, random.key(0), input_shape))
        metrics = {} if name == "gpt" else None
        steps = {fixed: distributed.data_parallel_step(model, optimizer, losses.softmax_cross_entropy, metrics=metrics,
                                                       world=world, fixed_order=fixed)
                 for fixed in (True, False)}
        grads = tree.map(np.ones_like, state["params"])
        cases = {
            "step": lambda: steps[True](state, batch),
            "step-allreduce": lambda: steps[False](state, batch),
            "sum": lambda: world.psum(grads),
            "allreduce": lambda: world.psum(grads, fixed_order=False),
        }

        def timed(case, calls: int) -> float:
            world.barrier()
            start = time.perf_counter()
            for _ in range(calls):
                cases[case]()
            world.barrier()
            return (time.perf_counter() - start) / calls

        # calls per repeat: from rank 0's warm-up, the same on every rank (they meet in collectives)
        calls = {case: max(1, round(seconds / max(timed(case, 3), 1e-6))) for case in cases}
        calls = world.broadcast(calls)
        samples = {case: [] for case in cases}
        names = list(cases)
        for r in range(repeats):
            for i in range(len(names)):
                case = names[(r + i) % len(names)]
                samples[case].append(timed(case, calls[case]))
        floats = tree.size(state["params"]) + tree.size(state["model_state"])
        report["models"][name] = {
            "params": tree.size(state["params"]),
            "buffer_bytes": 4 * floats,
            "metric_bytes": 8 * (1 + (0 if name == "gpt" else 1)),
            "seconds": samples,
        }
    if world.rank == 0:
        Path(out).write_text(json.dumps(report))


# ----------------------------------------------------------------------------- the driver


def launch(ranks: int, threads: int, args, out: Path) -> dict:
    """Run this script's worker on ``ranks`` ranks of ``threads`` threads; rank 0's report."""
    from tinyfn import distributed

    env = {**os.environ, **{name: str(threads) for name in common.THREAD_VARIABLES}}
    command = [distributed.mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", __file__, "--worker", str(out)]
    command += ["--quick"] * args.quick + ["--no-gpt"] * args.no_gpt
    subprocess.run(command, env=env, check=True)
    return json.loads(out.read_text())


def moved_bytes(buffer: int, ranks: int) -> float:
    """Bytes each rank sends in a reduce-scatter and an all-gather of ``buffer`` bytes."""
    return 2 * (ranks - 1) / ranks * buffer


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, [m for m in MODELS if not (args.no_gpt and m == "gpt")], args.quick)
        return
    cores = os.cpu_count() or 1
    meter = common.CpuMeter()
    settings = [(1, 1), (2, 1), (1, cores)]
    reports = {}
    with tempfile.TemporaryDirectory() as folder:
        for ranks, threads in settings:
            print(f"running {ranks} rank(s), {threads} thread(s) each ...", flush=True)
            reports[ranks, threads] = launch(ranks, threads, args, Path(folder) / f"{ranks}x{threads}.json")
    print(f"\n{common.cpu_model()}, {cores} cores; other processes used "
          f"{100 * (meter.foreign_share() or 0):.0f}% of the machine during the runs\n")
    baseline = reports[1, 1]["models"]
    rows = []
    for (ranks, threads), report in reports.items():
        for name, figures in report["models"].items():
            stats = {case: common.Stats.of(s).map(lambda t: 1000 * t) for case, s in figures["seconds"].items()}
            t1 = common.Stats.of(baseline[name]["seconds"]["step"]).median
            efficiency = t1 / (ranks * threads * stats["step"].median / 1000)
            sum_ratio = stats["sum"].median / stats["allreduce"].median
            moved = moved_bytes(figures["buffer_bytes"], ranks) + moved_bytes(figures["metric_bytes"], ranks)
            rows.append([
                f"{name} ({figures['params']:,} params)", f"{ranks} x {threads}",
                common.fmt_stats(stats["step"], 2), common.fmt_stats(stats["step-allreduce"], 2),
                f"{efficiency:.2f}", common.fmt_stats(stats["sum"], 3), common.fmt_stats(stats["allreduce"], 3),
                f"{sum_ratio:.2f}",
                f"{figures['buffer_bytes']:,}", f"{moved:,.0f}",
            ])
    header = ["model", "ranks x threads", "step ms", "step (Allreduce) ms", "efficiency", "sum ms", "Allreduce ms",
              "sum/Allreduce", "buffer bytes", "sent/rank/step"]
    print(common.format_table(header, rows))
    print(f"\nglobal batch: {GLOBAL_BATCH}; efficiency = T(1 rank x 1 thread) / (ranks x threads x T), so 1.0 is "
          "perfect scaling over the cores used; sent/rank/step = 2 (N - 1) / N x (float32 buffer + float64 metrics)")


if __name__ == "__main__":
    main()
