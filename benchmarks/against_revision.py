"""First-order speed, head to head against an earlier revision of tinyfn in one process.

    python benchmarks/against_revision.py --revision a776d6f          # about 6 minutes on 2 cores
    python benchmarks/against_revision.py --revision a776d6f --quick  # about 2 minutes; noisier
    python benchmarks/against_revision.py --revision HEAD~3 --threads 1 --no-torch

**Two versions in one process.** ``git archive <revision> tinyfn`` is extracted into a
temporary folder, renamed to a package ``tinyfn_before``, and imported beside the working
tree's ``tinyfn``. This works because tinyfn's modules import each other only relatively
(``from . import ops``); the run checks every module of the old copy for an absolute
``import tinyfn`` before it imports it. Both versions start with an empty Numba kernel cache
(``NUMBA_CACHE_DIR`` is set to a new temporary folder), so their first calls compare like with
like: each compiles its own kernels.

**The workloads**: the same benchmark code run on both versions (``new``: the working tree;
``old``: the revision), their repeats interleaved and each bracketed by repeats of a reference:

* the MLP 784-512-256-10 training step at batch 256 and at batch 32 (``mlp.tinyfn_impl``);
  reference: the hand-written numpy floor (``mlp.numpy_impl``);
* a chain of 100 small elementwise ops (``tanh, * 0.9, + 0.1, exp``, 25 times) on a (16,)
  float32 array, and the gradient of its sum: microseconds per op, forward and backward, which
  is nearly all framework overhead; reference: PyTorch eager autograd on the same chain;
* the CNN training step at batch 64 (``cnn.tinyfn_step``); reference: PyTorch eager
  (``cnn.torch_step``).

Without PyTorch (not installed, or ``--no-torch``) the old version is the reference of the
chain and the CNN.

**The figures.** Per case: time per call (per op for the chain), the median of the repeats
with a 95% confidence interval (``common.Estimate``); speed relative to the reference, the
median and interval of the per-repeat ratios to the reference repeats just before and after;
the first call in this process (Numba compiling the kernels, first-call set-up); and how far
its first result (a loss, or the chain's gradient) is from the new version's. Then
``new / old``: per round, the new version's ratio to the reference divided by the old
version's (``common.speed_ratios``); above 1 when the new version is faster. The MLP and the
chain use ``common.FULL_HEAD_TO_HEAD`` (101 rounds of 0.05 s repeats, no pause: all their cases
run on numpy's OpenBLAS or on no thread pool at all); the CNN, where PyTorch's OpenMP threads
keep spinning after each step, uses ``common.FULL`` with 21 rounds (a one-second pause before
each repeat).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

import common

REPO = Path(__file__).resolve().parents[1]
OLD_PACKAGE = "tinyfn_before"
CHAIN_OPS = 100  # elementwise ops in the chain (its final sum not counted)
CHAIN_SIZE = 16
FOREIGN_CPU_WARNING = 0.05  # share of the machine used by other processes above which figures are flagged
LABELS = {"new": "tinyfn new", "old": "tinyfn old", "numpy": "numpy floor", "torch": "torch eager"}


class RevisionError(Exception):
    """The revision cannot be extracted or run beside the working tree."""


def parse_args(argv=None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--revision", required=True, help="the git revision to compare with (a commit, tag or branch)")
    parser.add_argument("--quick", action="store_true", help="fewer and shorter repeats")
    parser.add_argument(
        "--threads", type=common.positive_int, default=os.cpu_count(), help="threads for BLAS, PyTorch and tinyfn's kernels (default: all cores, %(default)s)"
    )
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even when it is installed")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- the old revision


def git(*args: str) -> bytes:
    """Run a read-only git command in the repository; its stdout, or RevisionError with git's message."""
    try:
        # GIT_OPTIONAL_LOCKS=0: git status must not refresh the index (this script changes nothing)
        proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except FileNotFoundError:
        raise RevisionError("git is not installed") from None
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RevisionError(f"git {args[0]} failed: {message[-1] if message else f'exit {proc.returncode}'}")
    return proc.stdout


def resolve(revision: str) -> str:
    """The full commit hash of ``revision``."""
    try:
        return git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}").decode().strip()
    except RevisionError:
        raise RevisionError(f"{revision!r} is not a commit of the repository at {REPO}") from None


def absolute_self_imports(package: Path) -> list[str]:
    """``"module.py:line"`` of every ``import tinyfn...`` / ``from tinyfn... import`` statement in
    the package's code (docstrings do not count): each would load the working tree's tinyfn
    instead of the renamed copy's own module."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if any(name == "tinyfn" or name.startswith("tinyfn.") for name in names):
                found.append(f"{path.relative_to(package.parent)}:{node.lineno}")
    return found


def import_revision(commit: str, folder: Path):
    """Extract ``tinyfn/`` at ``commit`` into ``folder`` as the package :data:`OLD_PACKAGE`
    and import it."""
    with tarfile.open(fileobj=io.BytesIO(git("archive", commit, "tinyfn"))) as tar:
        tar.extractall(folder, filter="data")
    package = folder / OLD_PACKAGE
    (folder / "tinyfn").rename(package)
    absolute = absolute_self_imports(package)
    if absolute:
        raise RevisionError(f"the revision's tinyfn imports itself by name ({', '.join(absolute)}), so it cannot run renamed")
    sys.path.insert(0, str(folder))
    return importlib.import_module(OLD_PACKAGE)


def describe_working_tree() -> str:
    """The commit the working tree is on, and whether tinyfn/ has uncommitted changes."""
    head = git("rev-parse", "--short=12", "HEAD").decode().strip()
    dirty = git("status", "--porcelain", "--", "tinyfn").strip()
    return f"working tree at {head}" + (" with uncommitted changes in tinyfn/" if dirty else "")


# ----------------------------------------------------------------------------- the chain of small ops


def chain(x, tanh, exp):
    """:data:`CHAIN_OPS` elementwise ops on ``x``: ``exp(tanh(x) * 0.9 + 0.1)``, repeated;
    the values stay between 0.4 and 2.8, so the same chain runs in any framework."""
    for _ in range(CHAIN_OPS // 4):
        x = exp(tanh(x) * 0.9 + 0.1)
    return x


def chain_input():
    import numpy as np

    return np.linspace(-1, 1, CHAIN_SIZE, dtype=np.float32)


def tinyfn_chain(lib) -> Callable[[], object]:
    """The gradient of the chain's sum with ``lib`` (a tinyfn package): a traced forward, then
    the backward pass."""
    grad = lib.grad(lambda x: lib.ops.sum(chain(x, lib.ops.tanh, lib.ops.exp)))
    x = chain_input()
    return lambda: grad(x)


def torch_chain() -> Callable[[], object]:
    """The same gradient with PyTorch eager autograd."""
    import torch

    x = torch.from_numpy(chain_input()).requires_grad_()

    def gradient():
        (g,) = torch.autograd.grad(chain(x, torch.tanh, torch.exp).sum(), x)
        return g

    return gradient


# ----------------------------------------------------------------------------- workloads


@dataclasses.dataclass
class Workload:
    """One comparison: zero-argument callables by case name (``new``, ``old`` and maybe a
    reference), the case every other is bracketed by, and how to time and report them."""

    name: str  # short, for the summary
    title: str
    cases: dict[str, Callable[[], object]]
    reference: str
    settings: common.Settings
    unit: str  # what one reported time is per: "step" or "op"
    per_call: int = 1  # units in one call (the chain's ops)


def workloads(new, old, with_torch: bool, quick: bool) -> list[Workload]:
    """The MLP steps, the chain and the CNN step, on both versions."""
    import cnn
    import mlp

    head_to_head = common.QUICK_HEAD_TO_HEAD if quick else common.FULL_HEAD_TO_HEAD
    paused = dataclasses.replace(common.QUICK, repeats=9) if quick else dataclasses.replace(common.FULL, repeats=21)
    params = mlp.init_params()
    result = []
    for batch in (256, 32):
        x, y = mlp.make_data(batch)
        cases = {"numpy": mlp.numpy_impl(params).make_step(x, y)}
        cases.update({name: mlp.tinyfn_impl(params, lib=lib).make_step(x, y) for name, lib in (("new", new), ("old", old))})
        title = f"MLP {'-'.join(map(str, mlp.SIZES))} training step, batch {batch}"
        result.append(Workload(f"MLP step, batch {batch}", title, cases, "numpy", head_to_head, "step"))

    cases = {"new": tinyfn_chain(new), "old": tinyfn_chain(old)}
    if with_torch:
        cases["torch"] = torch_chain()
    title = f"Chain of {CHAIN_OPS} elementwise ops on ({CHAIN_SIZE},) float32, gradient of the sum (per op, forward and backward)"
    result.append(Workload("chain of small ops", title, cases, "torch" if with_torch else "old", head_to_head, "op", CHAIN_OPS))

    weights, (x, y) = cnn.init_weights(), cnn.make_data()
    cases = {name: cnn.tinyfn_step(weights, x, y, lib=lib) for name, lib in (("new", new), ("old", old))}
    if with_torch:
        cases["torch"] = cnn.torch_step(weights, x, y)
    title = f"CNN training step, batch {cnn.BATCH} (benchmarks/cnn.py)"
    result.append(Workload(f"CNN step, batch {cnn.BATCH}", title, cases, "torch" if with_torch else "old", paused, "step"))
    return result


def first_call(fn: Callable[[], object]) -> tuple[float, object]:
    """Seconds of the first call of ``fn`` in this process, and its result as a numpy array."""
    import numpy as np

    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return seconds, np.asarray(out.detach() if hasattr(out, "detach") else out, dtype=np.float64)


def new_vs_old(timings: dict[str, common.Timing], reference: str) -> list[float]:
    """The new version's speed relative to the old one's, one ratio per round."""
    if reference == "old":
        return timings["new"].ratios_to_reference()
    return common.speed_ratios(timings["new"], timings["old"])


def run_workload(w: Workload) -> dict:
    """First calls, then the interleaved repeats; every figure of the workload."""
    import numpy as np

    first = {name: first_call(fn) for name, fn in w.cases.items()}
    meter = common.CpuMeter()
    timings = common.measure(w.cases, w.settings, reference=w.reference)
    foreign = meter.foreign_share()
    cases = {}
    for name, timing in timings.items():
        seconds, out = first[name]
        cases[name] = {
            "us_per_" + w.unit: common.Estimate.of(timing.samples).map(lambda s: s * 1e6 / w.per_call).as_dict(),
            "speed_vs_reference": None if name == w.reference else common.Estimate.of(timing.ratios_to_reference()).as_dict(),
            "first_call_s": seconds,
            "result_diff_from_new": float(np.max(np.abs(out - first["new"][1])) / np.max(np.abs(first["new"][1]))),
        }
    ratios = new_vs_old(timings, w.reference)
    return {
        "name": w.name,
        "title": w.title,
        "unit": w.unit,
        "reference": w.reference,
        "rounds": w.settings.repeats,
        "repeat_s": w.settings.repeat_s,
        "cases": cases,
        "new_vs_old": common.Estimate.of(ratios).as_dict(),
        "foreign_cpu": foreign,
    }


# ----------------------------------------------------------------------------- report


def verdict(ratio: common.Estimate) -> str:
    """What a new/old speed ratio says, given its 95% interval."""
    if ratio.low > 1:
        return "new is faster"
    if ratio.high < 1:
        return "new is SLOWER"
    return "no difference measured"


def format_workload(result: dict) -> str:
    """One workload's table and its new/old line."""
    unit, reference = result["unit"], LABELS[result["reference"]]
    rows = []
    for name, case in result["cases"].items():
        speed = case["speed_vs_reference"]
        rows.append([
            LABELS[name],
            common.fmt_stats(common.Estimate(**case["us_per_" + unit]), 2 if unit == "op" else 0),
            "reference" if speed is None else common.fmt_stats(common.Estimate(**speed), 3),
            f"{case['first_call_s']:.3f}",
            f"{case['result_diff_from_new']:.1e}",
        ])
    header = [
        "case", f"us/{unit}, median (95% CI)", f"speed vs {reference} (95% CI)", "first call s", "result vs new's",
    ]
    ratio = common.Estimate(**result["new_vs_old"])
    lines = [
        f"{result['title']}: {result['rounds']} rounds of {result['repeat_s']:g} s repeats, each bracketed by {reference}",
        common.format_table(header, rows),
        f"new / old speed: {common.fmt_stats(ratio, 3)}: {verdict(ratio)}",
    ]
    if result["foreign_cpu"] is not None:
        flag = "  (figures unreliable: the machine was not idle)" if result["foreign_cpu"] > FOREIGN_CPU_WARNING else ""
        lines.append(f"other processes used {result['foreign_cpu']:.0%} of the machine during the repeats{flag}")
    return "\n".join(lines)


def format_summary(results: list[dict]) -> str:
    """Every workload on one line: each version's speed against the reference, and new/old."""
    rows = []
    for r in results:
        speed = {n: r["cases"][n]["speed_vs_reference"] for n in ("new", "old")}
        rows.append([
            r["name"],
            LABELS[r["reference"]],
            *("-" if speed[n] is None else common.fmt_stats(common.Estimate(**speed[n]), 3) for n in ("new", "old")),
            common.fmt_stats(common.Estimate(**r["new_vs_old"]), 3),
            verdict(common.Estimate(**r["new_vs_old"])),
        ])
    return common.format_table(["workload", "reference", "new vs reference", "old vs reference", "new / old", ""], rows)


def main(argv=None) -> int:
    """Extract the revision, run every workload on both versions, print the report."""
    args = parse_args(argv)
    common.set_thread_variables(args.threads)
    load_before = Path("/proc/loadavg").read_text().strip() if Path("/proc/loadavg").exists() else "-"
    with tempfile.TemporaryDirectory(prefix="tinyfn-against-") as scratch:
        os.environ["NUMBA_CACHE_DIR"] = str(Path(scratch) / "numba-cache")  # before numba is imported
        try:
            commit = resolve(args.revision)
            tree = describe_working_tree()
            sys.path.insert(0, str(REPO))  # the working tree's tinyfn, whatever is installed
            import tinyfn as new

            old = import_revision(commit, Path(scratch))
        except RevisionError as error:
            print(f"against_revision.py: error: {error}", file=sys.stderr)
            return 2
        with_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
        torch_threads = common.configure_torch(args.threads) if with_torch else None

        import numba
        import numpy as np

        numba.njit(lambda v: v + 1)(1)  # Numba's one-time set-up (LLVM), charged to neither version

        print(f"tinyfn head to head against {args.revision} ({'quick' if args.quick else 'full'} run)")
        print(f"new: {Path(new.__file__).parent} ({tree}); old: {args.revision} = {commit[:12]}, extracted as {OLD_PACKAGE}")
        print(f"machine: {common.cpu_model()}, {os.cpu_count()} cores; /proc/loadavg before: {load_before}")
        versions = f"numpy {np.__version__}, numba {numba.__version__}"
        if with_torch:
            import torch

            versions += f", torch {torch.__version__} ({torch_threads['intra_op']} intra-op threads)"
        print(f"versions: python {sys.version.split()[0]}, {versions}; threads: {', '.join(f'{k}={os.environ[k]}' for k in common.THREAD_VARIABLES)}")
        if not with_torch:
            print("torch: skipped (not installed, or --no-torch given); the old version is the reference of the chain and the CNN")
        print(
            "first call: in this process, both versions starting with an empty Numba kernel cache (it includes compiling "
            "their kernels); result vs new's: largest difference from the new version's first result, relative to its largest value"
        )

        start = time.perf_counter()
        results = []
        for workload in workloads(new, old, with_torch, args.quick):
            results.append(run_workload(workload))
            print("\n" + format_workload(results[-1]), flush=True)

    load_after = Path("/proc/loadavg").read_text().strip() if Path("/proc/loadavg").exists() else "-"
    print("\nSummary (medians of per-round ratios, 95% intervals)")
    print(format_summary(results))
    print(f"\n/proc/loadavg after: {load_after}; benchmark time: {time.perf_counter() - start:.0f} s")
    if args.json:
        report = {"revision": args.revision, "commit": commit, "working_tree": tree, "load_before": load_before, "load_after": load_after, "workloads": results}
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
