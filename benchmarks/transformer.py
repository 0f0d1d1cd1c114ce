"""The transformer benchmark: a training step of one transformer block, and attention alone, tinyfn vs PyTorch eager.

    python benchmarks/transformer.py            # full run (about 4 minutes on 2 cores)
    python benchmarks/transformer.py --quick    # short run (noisier)
    python benchmarks/transformer.py --threads 1

**The block step.** ``TransformerBlock(4, causal=True)`` (``tinyfn.layers.attention``) (pre-norm: LayerNorm,
4-head causal self-attention, LayerNorm, MLP 128-512-128 with the exact GELU) on a batch of
16 sequences of 64 tokens of width 128, float32; the loss is the mean squared error against
a random target, and plain SGD (learning rate 0.01) updates the weights. ``tinyfn`` is
``value_and_grad`` of that loss then ``optim.sgd_step``; ``tinyfn-static`` the same with
``static_graph=True``; ``torch`` is PyTorch eager with ``nn.LayerNorm``,
``nn.MultiheadAttention(batch_first=True)`` (called with ``is_causal=True`` and
``need_weights=False``, its fastest training path), ``nn.Linear``, ``nn.GELU``,
``F.mse_loss`` and ``torch.optim.SGD``. Every implementation starts from the same weights
(tinyfn's initialisation, copied by the layout documented in ``MultiHeadAttention``); before
timing, the run prints the losses of two steps of each.

**Attention alone.** The forward and backward pass of causal scaled dot-product attention on
``q, k, v`` of shape (16, 4, 64, 32): ``value_and_grad`` of ``sum(attention(q, k, v) * w)``
with respect to ``q, k, v`` against ``F.scaled_dot_product_attention(..., is_causal=True)``
and ``backward``. Then the same for tinyfn with the batch split over the threads or left
to OpenBLAS (``kernels.attention.SPLIT_UP_TO``), at 64 and at 256 tokens: the measurement
behind that policy (skipped with ``--threads 1``).

**The figures.** Samples/s (sequences per second: batch / seconds per call), median and
min-max of the repeats, which run round-robin after a warm-up with a ``torch`` repeat before
each round and after every other repeat (``common.measure``); *speed vs torch* is each
repeat's speed against the mean of the two ``torch`` repeats around it (above 1: faster).
Then the cost of a cold start: the first attention call in a fresh interpreter with an
empty Numba cache (the kernels compile) and with the cache warm.

**Threads.** ``--threads`` (default: all cores) sets ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` and ``TINYFN_NUM_THREADS`` before numpy is imported and calls
``torch.set_num_threads``. The run prints how much of the machine other processes used:
on 2 cores, figures taken while something else runs are not worth much.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

import common

BATCH, LENGTH, WIDTH, HEADS = 16, 64, 128, 4
LEARNING_RATE = 0.01
TARGET_RATIO = 1.0  # tinyfn's goal: at least PyTorch eager's samples/s, for the block and for attention


def parse_args(argv=None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter repeats")
    parser.add_argument(
        "--threads", type=common.positive_int, default=os.cpu_count(), help="threads for BLAS, tinyfn and PyTorch (default: all cores, %(default)s)"
    )
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even when it is installed")
    return parser.parse_args(argv)


def random_arrays(seed: int, *shapes) -> list:
    """float32 standard normal arrays of ``shapes``, from tinyfn's keys."""
    import numpy as np

    from tinyfn import random

    keys = random.split(random.key(seed), len(shapes))
    return [random.normal(k, shape, np.float32) for k, shape in zip(keys, shapes)]


# ----------------------------------------------------------------------------- the block


def block_model():
    """The benchmark's block as a tinyfn layer."""
    from tinyfn.layers.attention import TransformerBlock

    return TransformerBlock(HEADS, causal=True)


def block_params(seed: int = 0) -> dict:
    """The block's initial weights (tinyfn's initialisation)."""
    from tinyfn import random

    return block_model().init(random.key(seed), (BATCH, LENGTH, WIDTH))[1]


def block_data(seed: int = 1) -> tuple:
    """A random batch ``x`` and target ``y``, both (BATCH, LENGTH, WIDTH) float32."""
    return tuple(random_arrays(seed, (BATCH, LENGTH, WIDTH), (BATCH, LENGTH, WIDTH)))


def tinyfn_block_step(params, x, y, static_graph: bool = False):
    """A tinyfn training step: ``value_and_grad`` of the MSE, then ``sgd_step``. Returns ``step() -> loss``."""
    import tinyfn

    model = block_model()

    def loss_fn(params, x, y):
        return tinyfn.losses.mse(model.apply(params, x), y)

    loss_and_grads = tinyfn.value_and_grad(loss_fn, static_graph=static_graph)

    def step():
        nonlocal params
        loss, grads = loss_and_grads(params, x, y)
        params = tinyfn.optim.sgd_step(params, grads, LEARNING_RATE)
        return loss

    return step


def torch_block(params):
    """The same block in PyTorch, holding ``params`` (tinyfn's tree)."""
    import torch

    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
            self.attn = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH))
            self.register_buffer("causal_mask", nn.Transformer.generate_square_subsequent_mask(LENGTH))

        def forward(self, x):
            h = self.ln_1(x)
            x = x + self.attn(h, h, h, attn_mask=self.causal_mask, is_causal=True, need_weights=False)[0]
            return x + self.mlp(self.ln_2(x))

    block = Block()
    tensor = torch.tensor  # a copy: tinyfn's parameters are read-only arrays
    with torch.no_grad():
        for ln, p in ((block.ln_1, params["ln_1"]), (block.ln_2, params["ln_2"])):
            ln.weight.copy_(tensor(p["gamma"]))
            ln.bias.copy_(tensor(p["beta"]))
        attn = params["attn"]
        block.attn.in_proj_weight.copy_(torch.cat([tensor(attn[n]["w"].T) for n in "qkv"]))
        block.attn.in_proj_bias.copy_(torch.cat([tensor(attn[n]["b"]) for n in "qkv"]))
        block.attn.out_proj.weight.copy_(tensor(attn["out"]["w"].T))
        block.attn.out_proj.bias.copy_(tensor(attn["out"]["b"]))
        for linear, p in ((block.mlp[0], params["mlp"]["dense_0"]), (block.mlp[2], params["mlp"]["dense_2"])):
            linear.weight.copy_(tensor(p["w"].T))
            linear.bias.copy_(tensor(p["b"]))
    return block


def torch_block_step(params, x, y):
    """A PyTorch eager training step: MSE, backward, ``torch.optim.SGD``. Returns ``step() -> loss``."""
    import torch

    block = torch_block(params)
    optimizer = torch.optim.SGD(block.parameters(), lr=LEARNING_RATE)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(block(xt), yt)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


BLOCK_STEPS = {
    "tinyfn": tinyfn_block_step,
    "tinyfn-static": lambda params, x, y: tinyfn_block_step(params, x, y, static_graph=True),
    "torch": torch_block_step,
}


# ----------------------------------------------------------------------------- attention alone


def attention_data(length: int = LENGTH, seed: int = 2) -> list:
    """``q, k, v`` and the output weights ``w``, each (BATCH, HEADS, length, WIDTH // HEADS) float32."""
    shape = (BATCH, HEADS, length, WIDTH // HEADS)
    return random_arrays(seed, shape, shape, shape, shape)


def tinyfn_attention(q, k, v, w):
    """tinyfn: ``value_and_grad`` of ``sum(attention(q, k, v) * w)`` w.r.t. q, k, v. Returns a callable."""
    import tinyfn
    from tinyfn.layers.attention import scaled_dot_product_attention

    def loss(q, k, v):
        return tinyfn.ops.sum(scaled_dot_product_attention(q, k, v, causal=True) * w)

    loss_and_grads = tinyfn.value_and_grad(loss, argnums=(0, 1, 2))
    return lambda: loss_and_grads(q, k, v)


def torch_attention(q, k, v, w):
    """PyTorch: ``F.scaled_dot_product_attention(is_causal=True)`` times ``w``, summed, then backward."""
    import torch

    qt, kt, vt = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
    wt = torch.from_numpy(w)

    def call():
        for t in (qt, kt, vt):
            t.grad = None
        loss = (torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True) * wt).sum()
        loss.backward()
        return loss.detach()

    return call


def with_split_up_to(value: int, call):
    """``call`` run with :data:`tinyfn.kernels.attention.SPLIT_UP_TO` set to ``value``."""
    from tinyfn.kernels import attention as kernels

    def run():
        saved, kernels.SPLIT_UP_TO = kernels.SPLIT_UP_TO, value
        try:
            return call()
        finally:
            kernels.SPLIT_UP_TO = saved

    return run


def policy_cases(length: int) -> dict:
    """tinyfn's attention at ``length`` tokens with the batch split over the threads, and in one
    call (each product threaded by OpenBLAS, if large enough)."""
    call = tinyfn_attention(*attention_data(length))
    return {f"split over threads, T={length}": with_split_up_to(2**62, call), f"one call, T={length}": with_split_up_to(0, call)}


# ----------------------------------------------------------------------------- cold start


def first_attention_seconds() -> float:
    """Seconds of the first attention forward and backward pass in this interpreter
    (compiling the Numba kernels, or loading them from the on-disk cache)."""
    call = tinyfn_attention(*attention_data())
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def fresh_first_call(runs: int, module: str = "transformer", function: str = "first_attention_seconds") -> dict:
    """``{"cold_s", "warm_s"}``: the seconds that ``module.function()`` (a benchmark module
    of this folder, a function timing a first call) returns in fresh interpreters with an
    empty Numba cache (a new ``NUMBA_CACHE_DIR``), then with that cache filled."""
    code = "\n".join(
        [
            "import json, sys",
            f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})",
            f"import {module}",
            f"print(json.dumps({{'seconds': {module}.{function}()}}))",
        ]
    )
    cold, warm = common.run_cold_and_warm(code, runs)
    return {"cold_s": common.Stats.of(r["seconds"] for r in cold), "warm_s": common.Stats.of(r["seconds"] for r in warm)}


# ----------------------------------------------------------------------------- the run


def two_losses(step) -> list[float]:
    """The losses of two consecutive steps (the second shows the updates agree too)."""
    return [float(step()), float(step())]


def print_table(title: str, timings: dict, has_reference: bool, notes: dict | None = None) -> None:
    """Samples/s, microseconds per call and the speed against the reference, one row per case."""
    print(title)
    rows = []
    for name, timing in timings.items():
        versus = common.fmt_stats(timing.speed_vs_reference(), 2) if has_reference else "-"
        rows.append([name, common.fmt_stats(timing.per_second(BATCH)), f"{timing.seconds.median * 1e6:,.0f}", versus] + ([notes[name]] if notes else []))
    header = ["implementation", "samples/s median (min-max)", "us/call", "speed vs torch"] + (["losses of 2 steps"] if notes else [])
    print(common.format_table(header, rows))


def verdict(what: str, timings: dict) -> str:
    """One line: whether tinyfn's median speed against torch reaches :data:`TARGET_RATIO`."""
    ratio = timings["tinyfn"].speed_vs_reference().median
    return f"target: tinyfn {what} >= {TARGET_RATIO}x PyTorch eager: {'met' if ratio >= TARGET_RATIO else 'NOT met'} ({ratio:.2f}x)"


def main(argv=None) -> dict:
    """Run the benchmark, print the report, and return its figures as a dict."""
    args = parse_args(argv)
    common.set_thread_variables(args.threads)
    settings = common.QUICK if args.quick else common.FULL
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    first_call = first_attention_seconds()  # before anything else has run a kernel in this process
    with_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    if with_torch:
        import torch

        torch.set_num_threads(args.threads)
    else:
        print("torch: skipped (not installed; pip install torch==2.13.0, or --no-torch given)")
    block_names = [n for n in BLOCK_STEPS if with_torch or n != "torch"]
    reference = "torch" if with_torch else None
    params, (x, y) = block_params(), block_data()
    output_dtype = block_model().apply(params, x).dtype
    losses = {name: two_losses(BLOCK_STEPS[name](params, x, y)) for name in block_names}
    attention_cases = {"tinyfn": tinyfn_attention(*attention_data())}
    if with_torch:
        attention_cases["torch"] = torch_attention(*attention_data())

    meter = common.CpuMeter()
    block = common.measure({n: BLOCK_STEPS[n](params, x, y) for n in block_names}, settings, reference)
    attention = common.measure(attention_cases, settings, reference)
    policy = common.measure({**policy_cases(LENGTH), **policy_cases(4 * LENGTH)}, settings) if args.threads > 1 else None
    foreign = meter.foreign_share()
    fresh = fresh_first_call(settings.fresh_runs)

    print(f"Transformer block training step: batch {BATCH}, {LENGTH} tokens, width {WIDTH}, {HEADS} heads, causal, float32 (benchmarks/transformer.py)")
    print(f"threads: OpenBLAS/OpenMP/tinyfn {args.threads}" + (f", PyTorch {torch.get_num_threads()}" if with_torch else ""))
    print(f"tinyfn's block computes in {output_dtype} (float32 expected)")
    print_table("\nblock training step", block, with_torch, {n: f"{a:.6f} {b:.6f}" for n, (a, b) in losses.items()})
    if with_torch:
        print(verdict("block step", block))
    print_table(f"\nattention alone, forward and backward: q, k, v ({BATCH}, {HEADS}, {LENGTH}, {WIDTH // HEADS})", attention, with_torch)
    if with_torch:
        print(verdict("attention", attention))
    if policy is not None:
        print(f"\ntinyfn attention: the batch split over {args.threads} threads, or one call", end=" ")
        print(f"(OpenBLAS threads each product of more than {2**18:,} multiply-adds)")
        rows = [[n, common.fmt_stats(t.per_second(BATCH)), f"{t.seconds.median * 1e6:,.0f}"] for n, t in policy.items()]
        print(common.format_table(["case", "samples/s median (min-max)", "us/call"], rows))
    if foreign is not None:
        warning = "  (figures unreliable: the machine was not idle)" if foreign > 0.05 else ""
        print(f"\nother processes used {foreign:.0%} of the machine while the repeats ran{warning}")
        print(f"load average: {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after it")
    print(f"first attention call in this process: {first_call:.2f} s (Numba compiles the kernels, or loads them from the on-disk cache)")
    cold, warm = common.fmt_stats(fresh["cold_s"], 2), common.fmt_stats(fresh["warm_s"], 2)
    print(f"first attention call in a fresh interpreter: empty kernel cache {cold} s, warm cache {warm} s")
    print(f"benchmark time: {time.perf_counter() - start:.0f} s")
    return {
        "block_samples_per_s": {n: t.per_second(BATCH).as_dict() for n, t in block.items()},
        "attention_samples_per_s": {n: t.per_second(BATCH).as_dict() for n, t in attention.items()},
        "policy_samples_per_s": {n: t.per_second(BATCH).as_dict() for n, t in (policy or {}).items()},
        "block_output_dtype": str(output_dtype),
        "first_call_s": first_call,
        "fresh": {k: v.as_dict() for k, v in fresh.items()},
        "foreign_cpu": foreign,
    }


if __name__ == "__main__":
    main()
