"""Higher-order derivatives of the MLP loss: their cost as a multiple of one gradient, against torch.func.

    python benchmarks/higher_order.py            # about 2 minutes on 2 cores
    python benchmarks/higher_order.py --quick    # about 40 seconds; noisier
    python benchmarks/higher_order.py --batch 64 --threads 1 --no-torch

**The function.** The loss of ``mlp.py``'s model (784-512-256-10, ReLUs fused into the dense
layers, softmax cross-entropy, float32) on a random MNIST-shaped batch (default 32), as a
function of the parameters; ``v`` is a random direction with the parameters' structure.

**The operations**, each a call that returns its result:

=====================  ===============================================  =================================================
operation              tinyfn                                           torch.func
=====================  ===============================================  =================================================
gradient (the unit)    ``value_and_grad(loss)(params, x, y)``           ``grad_and_value(loss)(params, x, y)``
hvp                    ``transforms.hvp(loss)(params, x, y, v)``:       ``jvp(grad(loss), (params,), (v,))``: forward
                       reverse over reverse                             over reverse, the recipe of torch.func's docs
jvp                    ``transforms.jvp(loss, (params,), (v,))``:       ``jvp(loss, (params,), (v,))``: forward mode
                       the transpose of the VJP                         (dual numbers)
per-example gradients  ``per_example.per_example_grads(losses)``,       ``vmap(grad(loss of one example))``
                       one traced pass, ``B`` gradients
=====================  ===============================================  =================================================

(``losses``: the same loss with ``reduction="none"``, one loss per example.)

**The figures.** Each framework's operations are timed together by ``common.measure``, every
repeat bracketed by repeats of that framework's gradient: the *multiple* of an operation is
its time divided by the mean of the two gradient repeats around it, median and 95% interval
over the rounds. So tinyfn's hvp is compared with tinyfn's gradient and torch.func's with
torch.func's, each in the same seconds of the machine's life. ``tinyfn / torch`` divides the
two medians of time per call (not a paired ratio: the frameworks run one after the other,
not interleaved, so that neither leaves a thread pool spinning under the other). *Same maths*:
the largest difference between tinyfn's result and torch.func's, relative to the largest
entry. Rows whose tinyfn module is not importable (``tinyfn.transforms``,
``tinyfn.per_example``) are skipped with a note.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from typing import Callable

import common

OPERATIONS = ("gradient", "hvp", "jvp", "per-example gradients")


def parse_args(argv=None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter repeats")
    parser.add_argument("--batch", type=common.positive_int, default=32, help="examples in the batch (default %(default)s)")
    parser.add_argument(
        "--threads", type=common.positive_int, default=os.cpu_count(), help="threads for BLAS and PyTorch (default: all cores, %(default)s)"
    )
    parser.add_argument("--no-torch", action="store_true", help="skip torch.func even when PyTorch is installed")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- tinyfn


def tinyfn_operations(params, x, y, v) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """``({operation: zero-argument callable}, {skipped operation: why})`` in tinyfn."""
    import mlp

    import tinyfn

    model, tree = mlp.tinyfn_params(params)

    def loss(p, x, y, reduction="mean"):
        return tinyfn.losses.softmax_cross_entropy(model.apply(p, x), y, reduction=reduction)

    value_and_grad = tinyfn.value_and_grad(loss)
    calls = {"gradient": lambda: value_and_grad(tree, x, y)[1]}
    skipped = {}
    try:
        from tinyfn import transforms
    except ImportError as error:
        skipped.update(dict.fromkeys(("hvp", "jvp"), f"tinyfn.transforms is not importable ({error})"))
    else:
        hvp = transforms.hvp(loss)
        calls["hvp"] = lambda: hvp(tree, x, y, v)
        calls["jvp"] = lambda: transforms.jvp(lambda p: loss(p, x, y), (tree,), (v,))[1]
    try:
        from tinyfn import per_example
    except ImportError as error:
        skipped["per-example gradients"] = f"tinyfn.per_example is not importable ({error})"
    else:
        per_example_grads = per_example.per_example_grads(lambda p, x, y: loss(p, x, y, reduction="none"))
        calls["per-example gradients"] = lambda: per_example_grads(tree, x, y)
    return calls, skipped


# ----------------------------------------------------------------------------- torch.func


def torch_operations(params, x, y, v) -> dict[str, Callable[[], object]]:
    """``{operation: zero-argument callable}`` with torch.func, on the same weights, batch and direction."""
    import torch
    import torch.nn.functional as F
    from torch import func

    def tensors(t):  # copies: torch wants writable arrays, and tinyfn's parameters are read-only
        return {name: {k: torch.tensor(a) for k, a in layer.items()} for name, layer in t.items()}

    tree, direction = tensors(params_tree(params)), tensors(v)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def loss(p, x, y):
        h = x
        for i, name in enumerate(sorted(p)):
            h = h @ p[name]["w"] + p[name]["b"]
            if i < len(p) - 1:
                h = torch.relu(h)
        return F.cross_entropy(h, y)

    def loss_of_one(p, x, y):
        return loss(p, x[None], y[None])

    grad_and_value, grad = func.grad_and_value(loss), func.grad(loss)
    per_example = func.vmap(func.grad(loss_of_one), in_dims=(None, 0, 0))
    return {
        "gradient": lambda: grad_and_value(tree, xt, yt)[0],
        "hvp": lambda: func.jvp(lambda p: grad(p, xt, yt), (tree,), (direction,))[1],
        "jvp": lambda: func.jvp(lambda p: loss(p, xt, yt), (tree,), (direction,))[1],
        "per-example gradients": lambda: per_example(tree, xt, yt),
    }


# ----------------------------------------------------------------------------- the run


def params_tree(params: list) -> dict:
    """``mlp.init_params()``'s weights as the parameter tree of ``mlp.tinyfn_model()``."""
    import mlp

    return mlp.tinyfn_params(params)[1]


def random_direction(tree, seed: int = 1) -> dict:
    """A direction ``v`` with the tree's structure: standard normal float32 entries."""
    import numpy as np

    import tinyfn

    rng = np.random.default_rng(seed)
    return tinyfn.tree.map(lambda leaf: rng.standard_normal(leaf.shape).astype(np.float32), tree)


def as_arrays(result) -> list:
    """The leaves of a result (a tree of numpy arrays or torch tensors), as numpy float64 arrays."""
    import numpy as np

    if isinstance(result, dict):
        return [a for key in sorted(result) for a in as_arrays(result[key])]
    return [np.asarray(result.detach() if hasattr(result, "detach") else result, dtype=np.float64)]


def relative_difference(a, b) -> float:
    """Largest entry of ``|a - b|`` over all leaves, relative to the largest entry of ``b``."""
    import numpy as np

    a, b = as_arrays(a), as_arrays(b)
    scale = max(float(np.max(np.abs(leaf))) for leaf in b)
    return max(float(np.max(np.abs(p - q))) for p, q in zip(a, b)) / scale


def time_framework(calls: dict[str, Callable[[], object]], settings: common.Settings) -> dict:
    """First calls, then interleaved repeats bracketed by the gradient: per operation, seconds
    per call (Estimate), multiple of one gradient (Estimate, None for the gradient), first
    call seconds, and the first result."""
    first = {}
    for name, call in calls.items():
        start = time.perf_counter()
        out = call()
        first[name] = (time.perf_counter() - start, out)
    meter = common.CpuMeter()
    timings = common.measure(calls, settings, reference="gradient")
    figures = {
        name: {
            "seconds": common.Estimate.of(t.samples),
            "multiple": None if name == "gradient" else common.Estimate.of(1 / r for r in t.ratios_to_reference()),
            "first_call_s": first[name][0],
            "result": first[name][1],
        }
        for name, t in timings.items()
    }
    return {"operations": figures, "foreign_cpu": meter.foreign_share()}


def format_report(batch: int, settings: common.Settings, ours: dict, theirs: dict | None) -> str:
    """The table: per operation, tinyfn's time and multiple, torch.func's, their ratio and agreement."""
    rows = []
    for name in OPERATIONS:
        mine = ours["operations"].get(name)
        other = theirs["operations"][name] if theirs else None
        if mine is None and other is None:
            continue

        def cells(f):
            if f is None:
                return ["skipped", "-", "-"]
            multiple = "1 (the unit)" if f["multiple"] is None else common.fmt_stats(f["multiple"], 2)
            return [common.fmt_stats(f["seconds"].map(lambda s: s * 1e6)), multiple, f"{f['first_call_s']:.3f}"]

        both = mine is not None and other is not None
        ratio = f"{mine['seconds'].median / other['seconds'].median:.2f}" if both else "-"
        same = f"{relative_difference(mine['result'], other['result']):.1e}" if both else "-"
        rows.append([name, *cells(mine), *(cells(other) + [ratio, same] if theirs else [])])
    header = ["operation", "tinyfn us/call (95% CI)", "x gradient (95% CI)", "first call s"]
    if theirs:
        header += ["torch.func us/call (95% CI)", "x gradient (95% CI)", "first call s", "tinyfn / torch time", "same maths"]
    lines = [
        f"Higher-order derivatives of the MLP loss at batch {batch}, float32: cost as a multiple of one gradient "
        f"({settings.repeats} rounds of {settings.repeat_s:g} s repeats, each bracketed by the same framework's gradient)",
        common.format_table(header, rows),
    ]
    for label, result in (("tinyfn", ours), ("torch.func", theirs)):
        if result and result["foreign_cpu"] is not None:
            flag = "  (figures unreliable: the machine was not idle)" if result["foreign_cpu"] > 0.05 else ""
            lines.append(f"other processes used {result['foreign_cpu']:.0%} of the machine during the {label} repeats{flag}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Run the benchmark, print the report, and return its figures."""
    args = parse_args(argv)
    common.set_thread_variables(args.threads)
    with_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    if with_torch:
        common.configure_torch(args.threads)
    import mlp

    settings = common.QUICK_HEAD_TO_HEAD if args.quick else common.FULL_HEAD_TO_HEAD
    params, (x, y) = mlp.init_params(), mlp.make_data(args.batch)
    v = random_direction(params_tree(params))
    start = time.perf_counter()
    calls, skipped = tinyfn_operations(params, x, y, v)
    ours = time_framework(calls, settings)
    theirs = None
    if with_torch:
        time.sleep(1.0)  # let OpenBLAS's threads stop spinning before PyTorch's run
        theirs = time_framework(torch_operations(params, x, y, v), settings)
    print(format_report(args.batch, settings, ours, theirs))
    for name, why in skipped.items():
        print(f"tinyfn {name}: skipped, {why}")
    if not with_torch:
        print("torch.func: skipped (PyTorch not installed, or --no-torch given; pip install torch==2.13.0)")
    print(f"benchmark time: {time.perf_counter() - start:.0f} s")
    return {
        label: {
            name: {k: (v.as_dict() if isinstance(v, common.Estimate) else v) for k, v in f.items() if k != "result"}
            for name, f in result["operations"].items()
        }
        for label, result in (("tinyfn", ours), ("torch_func", theirs))
        if result
    }


if __name__ == "__main__":
    main()
