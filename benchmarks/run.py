"""Run tinyfn's benchmark suite: a table on stdout and a JSON file.

    python benchmarks/run.py            # full run (about 20 minutes on 2 cores)
    python benchmarks/run.py --quick    # short run (about 4 minutes; noisier)

Everything but the standard library and :mod:`common` is imported inside functions, after
:func:`main` has set the thread-count variables that OpenBLAS and PyTorch read at import.

PyTorch and JAX are optional references (``pip install -e '.[bench]'``); each is skipped with
a message when it is not installed. See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import common

BENCH_DIR = Path(__file__).resolve().parent
TRAIN_BATCHES = (256, 32)
FOREIGN_CPU_WARNING = 0.05  # share of the machine used by other processes above which figures are flagged
ACCEPTANCE = (  # (figure, minimum speed relative to the hand-written numpy floor)
    ("train_256", 0.95),
    ("train_32", 0.85),
    ("infer_1", 1 / 1.2),
)


def parse_args(argv=None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter repeats")
    parser.add_argument(
        "--threads", type=common.positive_int, default=os.cpu_count(), help="threads for BLAS and PyTorch (default: all cores, %(default)s)"
    )
    parser.add_argument("--json", default=str(BENCH_DIR / "results.json"), help="where to write the results (%(default)s)")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- environment


def thread_pools() -> list[dict]:
    """The native thread pools loaded in this process (BLAS, OpenMP), from threadpoolctl
    when it is installed, else numpy's BLAS build information."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        import numpy as np

        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return [{"internal_api": blas.get("name"), "version": blas.get("version"), "num_threads": "unknown (install threadpoolctl)"}]
    return [{k: pool.get(k) for k in ("internal_api", "prefix", "version", "num_threads")} for pool in threadpool_info()]


def environment(args, torch_threads) -> dict:
    """Versions, machine and thread settings, recorded with the results."""
    import numpy as np

    import tinyfn

    versions = {"python": platform.python_version(), "numpy": np.__version__, "tinyfn": tinyfn.__version__}
    for name in ("numba", "torch", "jax", "jaxlib"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass  # an optional reference that is not installed
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "cpu": common.cpu_model(),
        "cores": os.cpu_count(),
        "versions": versions,
        "thread_variables": {name: os.environ.get(name) for name in common.THREAD_VARIABLES},
        "torch_threads": torch_threads,
        "thread_pools": thread_pools(),
        "load_average_before": os.getloadavg()[0],
    }


# ----------------------------------------------------------------------------- sections


def bench_gemm(settings, sizes) -> dict:
    """Float32 square matrix products through numpy's BLAS: GFLOP/s per size and the peak
    (the best median)."""
    import numpy as np

    rng = np.random.default_rng(0)
    operands = {n: (rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)) for n in sizes}
    timings = common.measure({str(n): (lambda a=a, b=b: a @ b) for n, (a, b) in operands.items()}, settings)
    gflops = {n: timings[str(n)].per_second(2 * n**3 / 1e9) for n in sizes}
    return {"per_size": {str(n): s.as_dict() for n, s in gflops.items()}, "peak_gflops": max(s.median for s in gflops.values())}


def bench_products(settings, torch_installed: bool) -> dict:
    """The MLP step's matrix products alone (``mlp.products_only``) at each training batch,
    through numpy's BLAS and, when installed, PyTorch's: seconds per step, and PyTorch's
    speed relative to numpy's."""
    import mlp

    cases = {f"numpy_{batch}": mlp.products_only(batch) for batch in TRAIN_BATCHES}
    if torch_installed:
        import torch

        cases.update({f"torch_{batch}": mlp.products_only(batch, torch.from_numpy) for batch in TRAIN_BATCHES})
    timings = common.measure(cases, settings)
    results = {}
    for batch in TRAIN_BATCHES:
        row = {"numpy_seconds": timings[f"numpy_{batch}"].seconds.as_dict()}
        if torch_installed:
            row["torch_seconds"] = timings[f"torch_{batch}"].seconds.as_dict()
            row["torch_speed_vs_numpy"] = row["numpy_seconds"]["median"] / row["torch_seconds"]["median"]
        results[str(batch)] = row
    return results


def _rows(timings: dict, items_per_call: float) -> dict:
    """Per framework: seconds per call, items per second and the speed relative to the
    hand-written numpy floor (above 1: faster than it)."""
    return {
        name: {
            "seconds": t.seconds.as_dict(),
            "per_second": t.per_second(items_per_call).as_dict(),
            "speed_vs_numpy": t.speed_vs_reference().as_dict(),
        }
        for name, t in timings.items()
    }


def bench_training(impls: dict, settings, batch: int) -> dict:
    """Samples/s of one training step at ``batch``, all frameworks interleaved."""
    import mlp

    x, y = mlp.make_data(batch)
    timings = common.measure({name: impl.make_step(x, y) for name, impl in impls.items()}, settings, reference="numpy")
    return _rows(timings, batch)


def bench_inference(impls: dict, settings) -> dict:
    """Latency of one prediction on a batch of 1, all frameworks interleaved."""
    import mlp

    x, _ = mlp.make_data(1)
    timings = common.measure({name: impl.make_predict(x) for name, impl in impls.items()}, settings, reference="numpy")
    return _rows(timings, 1)


def bench_head_to_head(impls: dict, settings) -> dict:
    """The acceptance figures, measured head to head: tinyfn against the numpy floor alone, in
    many short interleaved repeats (see ``common.FULL_HEAD_TO_HEAD``). Per figure: tinyfn's
    speed relative to numpy, median (min-max) of the per-repeat ratios, with a 95% confidence
    interval for the median and the number of ratios."""
    import mlp

    pair = {name: impls[name] for name in ("tinyfn", "numpy")}
    calls = {"infer_1": {name: impl.make_predict(mlp.make_data(1)[0]) for name, impl in pair.items()}}
    for batch in TRAIN_BATCHES:
        calls[f"train_{batch}"] = {name: impl.make_step(*mlp.make_data(batch)) for name, impl in pair.items()}
    results = {}
    for figure, cases in calls.items():
        ratios = common.measure(cases, settings, reference="numpy")["tinyfn"].ratios_to_reference()
        low, high = common.median_interval(ratios)
        results[figure] = {"speed_vs_numpy": common.Stats.of(ratios).as_dict(), "interval_95": [low, high], "ratios": len(ratios)}
    return results


def bench_startup(names: list[str], runs: int) -> dict:
    """Import time and first-step time of each framework, in fresh interpreters."""
    import mlp

    results = {}
    for name in names:
        if name not in mlp.IMPORTS:
            continue
        runs_ = common.run_fresh(mlp.startup_code(name), runs)
        results[name] = {key: common.Stats.of(r[key] for r in runs_).as_dict() for key in ("import_s", "first_step_s")}
    return results


def bench_script(name: str, quick: bool, threads: int) -> dict:
    """A benchmark of its own (``benchmarks/<name>.py``: ``cnn``, ``higher_order``), run as a
    script in its own interpreter with the same ``--threads`` (and ``--quick``); its stdout
    is included as it is."""
    script = BENCH_DIR / f"{name}.py"
    if not script.exists():
        return {"skipped": f"benchmarks/{name}.py is not there"}
    command = [sys.executable, str(script), "--threads", str(threads)] + (["--quick"] if quick else [])
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"skipped": f"benchmarks/{name}.py failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"}
    return {"stdout": proc.stdout}


def acceptance(results: dict) -> dict:
    """The issue's acceptance criteria, checked on the head-to-head medians (``head_to_head``);
    a check is marked unreliable when other processes used the machine while it ran."""
    share = results["foreign_cpu"].get("head_to_head")
    checks = {}
    for figure, minimum in ACCEPTANCE:
        measured = results["head_to_head"][figure]
        checks[figure] = {
            "tinyfn_speed_vs_numpy": measured["speed_vs_numpy"]["median"],
            "interval_95": measured["interval_95"],
            "minimum": minimum,
            "passed": measured["speed_vs_numpy"]["median"] >= minimum,
            "reliable": share is None or share < FOREIGN_CPU_WARNING,
        }
    return checks


# ----------------------------------------------------------------------------- report


def contention_note(results: dict, key: str) -> list[str]:
    """A warning line when other processes used a noticeable share of the machine while
    section ``key`` ran (its figures are then low and noisy)."""
    share = results["foreign_cpu"].get(key)
    if share is None or share < FOREIGN_CPU_WARNING:
        return []
    return [f"WARNING: other processes used {100 * share:.0f}% of the machine's CPU during this section; its figures are unreliable"]


def report(results: dict) -> str:
    """The results as text tables."""
    import mlp

    env = results["environment"]
    pools = ", ".join(f"{p.get('prefix') or p['internal_api']} {p.get('version') or ''}: {p['num_threads']}" for p in env["thread_pools"])
    torch_threads = env["torch_threads"] or {}
    lines = [
        f"tinyfn benchmarks ({'quick' if env['quick'] else 'full'} run, {env['date']})",
        f"machine: {env['cpu']}, {env['cores']} cores; load average before the run {env['load_average_before']:.2f}, after {env['load_average_after']:.2f}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        "threads: " + ", ".join(f"{k}={v}" for k, v in env["thread_variables"].items())
        + f"; torch intra-op {torch_threads.get('intra_op', '-')}, inter-op {torch_threads.get('inter_op', '-')}"
        + f"; JAX: XLA's own pool; loaded pools (threads): {pools}",
        "figures: median (min-max) over the repeats; speed vs numpy = median (min-max) of per-repeat ratios",
    ]
    for name, reason in results["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    gemm = results["gemm"]
    flops = mlp.flops_per_sample()
    lines += ["", "Peak float32 GEMM (numpy BLAS, n x n @ n x n)"]
    lines.append(common.format_table(
        ["n", "GFLOP/s"], [[n, common.fmt_stats(common.Stats(**s), 1)] for n, s in gemm["per_size"].items()]
    ))
    lines += contention_note(results, "gemm")
    lines += ["", "The MLP step's matrix products alone (mlp.products_only; us per step): the floor each BLAS sets"]
    lines.append(common.format_table(
        ["batch", "numpy (OpenBLAS)", "torch", "torch speed vs numpy"],
        [
            [
                batch,
                common.fmt_stats(common.Stats(**row["numpy_seconds"]).map(lambda s: s * 1e6)),
                common.fmt_stats(common.Stats(**row["torch_seconds"]).map(lambda s: s * 1e6)) if "torch_seconds" in row else "-",
                f"{row['torch_speed_vs_numpy']:.2f}" if "torch_speed_vs_numpy" in row else "-",
            ]
            for batch, row in results["products"].items()
        ],
    ))
    lines += contention_note(results, "products")
    for batch in TRAIN_BATCHES:
        rows = results[f"train_{batch}"]
        lines += ["", f"MLP {'-'.join(map(str, mlp.SIZES))} training step, batch {batch} ({flops / 1e6:.2f} MFLOP/sample)"]
        lines.append(common.format_table(
            ["framework", "samples/s", "us/step", "speed vs numpy", "% of GEMM peak"],
            [
                [
                    name,
                    common.fmt_stats(common.Stats(**row["per_second"])),
                    f"{row['seconds']['median'] * 1e6:,.0f}",
                    common.fmt_stats(common.Stats(**row["speed_vs_numpy"]), 2),
                    f"{100 * row['per_second']['median'] * flops / 1e9 / gemm['peak_gflops']:.0f}%",
                ]
                for name, row in rows.items()
            ],
        ))
        lines += contention_note(results, f"train_{batch}")
    lines += ["", "MLP inference, batch 1"]
    lines.append(common.format_table(
        ["framework", "us/call", "speed vs numpy"],
        [
            [name, common.fmt_stats(common.Stats(**row["seconds"]).map(lambda s: s * 1e6), 1), common.fmt_stats(common.Stats(**row["speed_vs_numpy"]), 2)]
            for name, row in results["infer_1"].items()
        ],
    ))
    lines += contention_note(results, "infer_1")
    lines += ["", f"Start-up in a fresh interpreter (median (min-max) of {results['startup_runs']} runs; first step at batch 256)"]
    lines.append(common.format_table(
        ["framework", "import s", "first step s"],
        [[name, common.fmt_stats(common.Stats(**r["import_s"]), 3), common.fmt_stats(common.Stats(**r["first_step_s"]), 3)] for name, r in results["startup"].items()],
    ))
    lines += contention_note(results, "startup")
    lines += ["", "Same maths check (largest difference from numpy over two steps and a prediction)"]
    lines.append(common.format_table(
        ["framework", "loss diff", "logit diff"],
        [[name, f"{r['max_loss_diff']:.1e}", f"{r['max_logit_diff']:.1e}"] for name, r in results["agreement"].items()],
    ))
    for key, title in (("cnn", "CNN benchmark (benchmarks/cnn.py)"), ("higher_order", "Higher-order derivatives (benchmarks/higher_order.py)")):
        lines += ["", title, results[key].get("stdout", "").rstrip() or "skipped: " + results[key]["skipped"]]
    ratios = next(iter(results["head_to_head"].values()))["ratios"]
    lines += ["", f"Acceptance: tinyfn speed vs the numpy floor head to head (median of {ratios} interleaved ratios, 95% interval)"]
    for figure, check in results["acceptance"].items():
        verdict = ("PASS" if check["passed"] else "FAIL") + ("" if check["reliable"] else " (unreliable: the machine was busy)")
        low, high = check["interval_95"]
        lines.append(f"  {figure:10s} {check['tinyfn_speed_vs_numpy']:.3f} ({low:.3f}-{high:.3f}; needs >= {check['minimum']:.3f})  {verdict}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Run every benchmark, print the tables and write the JSON file."""
    args = parse_args(argv)
    common.set_thread_variables(args.threads)
    torch_threads = common.configure_torch(args.threads)

    import mlp

    settings = common.QUICK if args.quick else common.FULL
    names, skipped = mlp.available()
    results = {"environment": environment(args, torch_threads), "skipped": skipped, "settings": dataclasses.asdict(settings)}
    results["foreign_cpu"] = {}

    def section(key, fn, *fn_args):
        meter = common.CpuMeter()
        results[key] = fn(*fn_args)
        results["foreign_cpu"][key] = meter.foreign_share()

    impls = mlp.implementations(names, mlp.init_params())
    results["agreement"] = mlp.agreement(impls)
    section("gemm", bench_gemm, settings, (1024,) if args.quick else (512, 1024, 2048))
    section("products", bench_products, settings, "torch" in names)
    for batch in TRAIN_BATCHES:
        section(f"train_{batch}", bench_training, impls, settings, batch)
    section("infer_1", bench_inference, impls, settings)
    head_to_head = common.QUICK_HEAD_TO_HEAD if args.quick else common.FULL_HEAD_TO_HEAD
    section("head_to_head", bench_head_to_head, impls, head_to_head)
    results["startup_runs"] = settings.fresh_runs
    section("startup", bench_startup, names, settings.fresh_runs)
    section("cnn", bench_script, "cnn", args.quick, args.threads)
    section("higher_order", bench_script, "higher_order", args.quick, args.threads)
    results["acceptance"] = acceptance(results)
    results["environment"]["load_average_after"] = os.getloadavg()[0]
    print(report(results))
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
