"""The char-GPT benchmark: one full training step of ``tinyfn train shakespeare-char``'s model, tinyfn vs PyTorch eager.

    python benchmarks/gpt.py            # full run (about 2 minutes on 2 cores)
    python benchmarks/gpt.py --quick    # short run (noisier)
    python benchmarks/gpt.py --threads 1

**The step.** The task's model, ``tinyfn.tasks.gpt(62)`` (token and learned position
embeddings of width 128, four causal pre-norm transformer blocks of 4 heads with the exact
GELU, a final LayerNorm and a dense head to the 62 characters of the Shakespeare text), on
the task's batch of 32 windows of 64 characters (random ids here), float32; the softmax
cross-entropy averaged over the 2,048 predictions, and AdamW with the task's learning rate
5e-3 and weight decay 0.1. ``tinyfn`` is ``value_and_grad`` of the loss, then
``optim.adamw``'s update and ``apply_updates``; ``torch`` is the same model in PyTorch eager
(``nn.Embedding``, a position parameter, the blocks of ``benchmarks/transformer.py`` with
``nn.MultiheadAttention``, ``nn.LayerNorm``, ``nn.Linear``), ``F.cross_entropy`` and
``torch.optim.AdamW``. Both start from the same weights (tinyfn's initialisation); the run
prints the losses of two steps of each before timing.

**The figures** are those of the other benchmarks: samples/s (windows per second) of
interleaved repeats, median and min-max, and each repeat's speed against the mean of the two
``torch`` repeats around it (``common.measure``); then the first step in a fresh interpreter
with an empty Numba cache (every kernel compiles) and with a warm one.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import common
import transformer

BATCH, CONTEXT, VOCAB = 32, 64, 62
LEARNING_RATE, WEIGHT_DECAY = 5e-3, 0.1


def parse_args(argv=None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter repeats")
    parser.add_argument(
        "--threads", type=common.positive_int, default=os.cpu_count(), help="threads for BLAS, tinyfn and PyTorch (default: all cores, %(default)s)"
    )
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even when it is installed")
    return parser.parse_args(argv)


def model():
    """The task's GPT (``tinyfn.tasks.gpt``) for the Shakespeare text's 62 characters."""
    from tinyfn import tasks

    return tasks.gpt(VOCAB, context=CONTEXT)


def init_params(seed: int = 0) -> dict:
    """The model's initial weights (tinyfn's initialisation)."""
    from tinyfn import random

    return model().init(random.key(seed), (BATCH, CONTEXT))[1]


def make_data(seed: int = 1) -> tuple:
    """Random character ids (BATCH, CONTEXT) and their next characters, both int64."""
    import numpy as np

    text = np.random.default_rng(seed).integers(0, VOCAB, (BATCH, CONTEXT + 1))
    return text[:, :-1], text[:, 1:]


def tinyfn_step(params, x, y):
    """tinyfn: ``value_and_grad`` of the cross-entropy, then AdamW. Returns ``step() -> loss``."""
    import tinyfn

    gpt = model()
    optimizer = tinyfn.optim.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    state = optimizer.init(params)

    def loss_fn(params, x, y):
        return tinyfn.losses.softmax_cross_entropy(gpt.apply(params, x, train=True), y)

    loss_and_grads = tinyfn.value_and_grad(loss_fn)

    def step():
        nonlocal params, state
        loss, grads = loss_and_grads(params, x, y)
        updates, state = optimizer.update(grads, state, params)
        params = tinyfn.optim.apply_updates(params, updates)
        return loss

    return step


def torch_model(params):
    """The same GPT in PyTorch, holding ``params`` (tinyfn's tree)."""
    import torch

    nn = torch.nn
    blocks = sorted(name for name in params if name.startswith("transformer_block"))
    head_ln, head = next(n for n in params if n.startswith("layer_norm")), next(n for n in params if n.startswith("dense"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(VOCAB, transformer.WIDTH)
            self.position = nn.Parameter(torch.tensor(params["positional_embedding_1"]["w"]))
            self.blocks = nn.Sequential(*[transformer.torch_block(params[name]) for name in blocks])
            self.ln = nn.LayerNorm(transformer.WIDTH)
            self.head = nn.Linear(transformer.WIDTH, VOCAB)

        def forward(self, ids):
            return self.head(self.ln(self.blocks(self.embedding(ids) + self.position[: ids.shape[1]])))

    gpt = GPT()
    with torch.no_grad():
        gpt.embedding.weight.copy_(torch.tensor(params["embedding_0"]["w"]))
        gpt.ln.weight.copy_(torch.tensor(params[head_ln]["gamma"]))
        gpt.ln.bias.copy_(torch.tensor(params[head_ln]["beta"]))
        gpt.head.weight.copy_(torch.tensor(params[head]["w"].T))
        gpt.head.bias.copy_(torch.tensor(params[head]["b"]))
    return gpt


def torch_step(params, x, y):
    """PyTorch eager: cross-entropy, backward, ``torch.optim.AdamW``. Returns ``step() -> loss``."""
    import torch
    import torch.nn.functional as F

    gpt = torch_model(params)
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(gpt(xt).reshape(-1, VOCAB), yt.reshape(-1))
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


STEPS = {"tinyfn": tinyfn_step, "torch": torch_step}


def first_step_seconds() -> float:
    """Seconds of the first training step in this interpreter (the Numba kernels compile, or
    load from the on-disk cache)."""
    step = tinyfn_step(init_params(), *make_data())
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main(argv=None) -> dict:
    """Run the benchmark, print the report, and return its figures as a dict."""
    args = parse_args(argv)
    common.set_thread_variables(args.threads)
    settings = common.QUICK if args.quick else common.FULL
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    with_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    if with_torch:
        common.configure_torch(args.threads)
    else:
        print("torch: skipped (not installed; pip install torch==2.13.0, or --no-torch given)")
    names = [n for n in STEPS if with_torch or n != "torch"]
    params, (x, y) = init_params(), make_data()
    losses = {}
    for name in names:
        step = STEPS[name](params, x, y)
        losses[name] = [float(step()), float(step())]

    meter = common.CpuMeter()
    timings = common.measure({n: STEPS[n](params, x, y) for n in names}, settings, "torch" if with_torch else None)
    foreign = meter.foreign_share()
    fresh = transformer.fresh_first_call(settings.fresh_runs, "gpt", "first_step_seconds")

    print(f"char-GPT training step: batch {BATCH}, context {CONTEXT}, vocabulary {VOCAB}, width 128, 4 blocks of 4 heads, AdamW, float32 (benchmarks/gpt.py)")
    print(f"threads: {args.threads} (BLAS, OpenMP, tinyfn, PyTorch)")
    rows = []
    for name in names:
        versus = common.fmt_stats(timings[name].speed_vs_reference(), 2) if with_torch else "-"
        rows.append([name, common.fmt_stats(timings[name].per_second(BATCH)), f"{timings[name].seconds.median * 1e3:,.1f}", versus, f"{losses[name][0]:.6f} {losses[name][1]:.6f}"])
    print(common.format_table(["implementation", "samples/s median (min-max)", "ms/step", "speed vs torch", "losses of 2 steps"], rows))
    if foreign is not None:
        warning = "  (figures unreliable: the machine was not idle)" if foreign > 0.05 else ""
        print(f"other processes used {foreign:.0%} of the machine while the repeats ran{warning}")
    print(f"load average: {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after it")
    cold, warm = common.fmt_stats(fresh["cold_s"], 2), common.fmt_stats(fresh["warm_s"], 2)
    print(f"first training step in a fresh interpreter: empty kernel cache {cold} s (every kernel compiles), warm cache {warm} s")
    print(f"benchmark time: {time.perf_counter() - start:.0f} s")
    return {
        "samples_per_s": {n: t.per_second(BATCH).as_dict() for n, t in timings.items()},
        "speed_vs_torch": {n: t.speed_vs_reference().as_dict() for n, t in timings.items()} if with_torch else {},
        "losses": losses,
        "fresh": {k: v.as_dict() for k, v in fresh.items()},
        "foreign_cpu": foreign,
    }


if __name__ == "__main__":
    main()
