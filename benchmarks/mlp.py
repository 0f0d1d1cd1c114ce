"""The MLP benchmark: 784-512-256-10, ReLU, softmax cross-entropy, plain SGD, float32.

The same model, the same initial weights and the same random MNIST-shaped batch in every
framework:

* ``tinyfn``: written the way a user would, ``value_and_grad`` of a loss built from
  ``model.apply`` and ``losses.softmax_cross_entropy``, then ``optim.sgd_step``, with the
  hidden layers written ``Dense(n, activation="relu")`` (the ReLU fused into the layer);
* ``tinyfn-unfused``: the same with ``Dense(n), Relu()`` as separate layers, to show what
  fusing saves;
* ``tinyfn-static``: the ``tinyfn`` step with ``value_and_grad(..., static_graph=True)``, which
  traces the loss once and then replays the recorded primitives (see ``tinyfn.staging``);
* ``numpy``: the floor, a hand-written forward and backward pass with no framework at all
  (float32 throughout, no gradient for the input batch), whose SGD update makes new weight
  arrays each step, as tinyfn's does;
* ``numpy-inplace``: the same, updating the weights in place (what PyTorch's SGD does);
* ``torch``: PyTorch eager, ``nn.Sequential`` + ``F.cross_entropy`` + ``torch.optim.SGD``;
* ``jax``: ``jax.jit`` of ``value_and_grad`` and the SGD update (blocked on every step).

Each implementation gives ``make_step(x, y)``, a zero-argument callable that runs one
training step from its own copy of the initial weights (carrying them from step to step)
and returns the loss, and ``make_predict(x)``, a callable returning the logits.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from typing import Callable

import common
import numpy as np

import tinyfn
from tinyfn import layers as tl

SIZES = (784, 512, 256, 10)
LEARNING_RATE = 0.01


def flops_per_sample(sizes=SIZES) -> int:
    """Floating-point operations of one training step per sample, counting matrix products
    only (2 per multiply-add): forward, weight gradients, and input gradients of every layer
    but the first."""
    products = [n_in * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    return 2 * (2 * sum(products) + sum(products[1:]))


def make_data(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random MNIST-shaped batch: pixels ``(batch, 784)`` float32 in [0, 1), labels int64 in [0, 10)."""
    rng = np.random.default_rng(seed)
    return rng.random((batch, SIZES[0]), dtype=np.float32), rng.integers(0, SIZES[-1], batch)


def tinyfn_model(fused: bool = True, lib=tinyfn) -> tl.Layer:
    """The benchmark's model as a tinyfn layer stack (ReLUs fused into the dense layers or not);
    ``lib`` is the tinyfn package to build it with (``against_revision.py`` passes an older one)."""
    layers = lib.layers
    if fused:
        hidden = [layers.Dense(n, activation="relu") for n in SIZES[1:-1]]
    else:
        hidden = [layer for n in SIZES[1:-1] for layer in (layers.Dense(n), layers.Relu())]
    return layers.serial(*hidden, layers.Dense(SIZES[-1]))


def init_params(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Initial weights ``[(w (in, out), b (out,)), ...]``, from tinyfn's default initialisation."""
    _, params = tinyfn_model().init(tinyfn.random.key(seed), (-1, SIZES[0]))
    return [(np.array(params[k]["w"]), np.array(params[k]["b"])) for k in sorted(params)]


def products_only(batch: int, convert: Callable = np.asarray) -> Callable[[], object]:
    """A callable that runs just the matrix products of one training step at ``batch``, on
    random operands of the right shapes: forward ``h @ w`` and weight gradients ``h.T @ g`` of
    every layer, input gradients ``g @ w.T`` of every layer but the first. Nothing else a step
    does (bias, ReLU, loss, update, framework) is in it, so its time is the floor that a BLAS
    sets for every framework that uses it. ``convert`` turns each numpy operand into the
    library's array (``torch.from_numpy`` for PyTorch's BLAS)."""
    rng = np.random.default_rng(0)
    inputs = [convert(rng.random((batch, n), dtype=np.float32)) for n in SIZES[:-1]]
    cotangents = [convert(rng.random((batch, n), dtype=np.float32)) for n in SIZES[1:]]
    weights = [convert(w) for w, _ in init_params()]

    def products():
        for h, w, g in zip(inputs, weights, cotangents):
            h @ w
            h.T @ g
        return [g @ w.T for g, w in zip(cotangents[1:], weights[1:])]

    return products


@dataclass(frozen=True)
class Impl:
    """One framework's version of the benchmark (see the module docstring)."""

    make_step: Callable[[np.ndarray, np.ndarray], Callable[[], object]]
    make_predict: Callable[[np.ndarray], Callable[[], object]]


# ----------------------------------------------------------------------------- tinyfn


def tinyfn_params(params: list, fused: bool = True, lib=tinyfn) -> tuple[tl.Layer, dict]:
    """The model and its parameter tree (read-only) holding the weights ``params``."""
    model = tinyfn_model(fused, lib)
    _, template = model.init(lib.random.key(0), (-1, SIZES[0]))
    return model, lib.tree.freeze({name: {"w": w, "b": b} for name, (w, b) in zip(sorted(template), params)})


def tinyfn_impl(params: list, fused: bool = True, static_graph: bool = False, lib=tinyfn) -> Impl:
    """tinyfn as a user writes it (``lib``: the tinyfn package to run)."""
    model, tree = tinyfn_params(params, fused, lib)

    def make_step(x, y):
        return common.tinyfn_sgd_step(model, tree, x, y, LEARNING_RATE, static_graph, lib)

    def make_predict(x):
        return lambda: model.apply(tree, x)

    return Impl(make_step, make_predict)


# ----------------------------------------------------------------------------- hand-written numpy


def _numpy_forward(params, x) -> list[np.ndarray]:
    """The activations: the input, each hidden layer's ReLU output, then the logits."""
    acts = [x]
    for i, (w, b) in enumerate(params):
        h = acts[-1] @ w
        h += b
        if i < len(params) - 1:
            np.maximum(h, 0, out=h)
        acts.append(h)
    return acts


def _numpy_loss_and_grads(params, x, y):
    """Mean softmax cross-entropy and its gradients ``[(dw, db), ...]``, by hand."""
    acts = _numpy_forward(params, x)
    n, rows = len(y), np.arange(len(y))
    shifted = acts[-1] - acts[-1].max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    loss = np.log(total).mean() - shifted[rows, y].mean()
    g = exp
    g /= total
    g[rows, y] -= 1
    g *= np.float32(1 / n)
    grads = []
    for i in range(len(params) - 1, -1, -1):
        grads.append((acts[i].T @ g, g.sum(axis=0)))
        if i:
            g = g @ params[i][0].T
            g *= acts[i] > 0
    return loss, grads[::-1]


def _sgd_new_arrays(p, g, lr):
    g *= lr
    return p - g


def _sgd_in_place(p, g, lr):
    g *= lr
    p -= g
    return p


def numpy_impl(params: list, in_place: bool = False) -> Impl:
    """The hand-written floor; ``in_place`` updates the weights in place instead of making new arrays."""
    update = _sgd_in_place if in_place else _sgd_new_arrays
    lr = np.float32(LEARNING_RATE)

    def make_step(x, y):
        state = [(w.copy(), b.copy()) for w, b in params]

        def step():
            nonlocal state
            loss, grads = _numpy_loss_and_grads(state, x, y)
            state = [(update(w, gw, lr), update(b, gb, lr)) for (w, b), (gw, gb) in zip(state, grads)]
            return loss

        return step

    def make_predict(x):
        return lambda: _numpy_forward(params, x)[-1]

    return Impl(make_step, make_predict)


# ----------------------------------------------------------------------------- PyTorch


def torch_impl(params: list) -> Impl:
    """PyTorch eager with ``torch.optim.SGD`` (which updates the weights in place)."""
    import torch

    def build():
        modules = []
        for i, (w, b) in enumerate(params):
            linear = torch.nn.Linear(*w.shape)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(w.T))
                linear.bias.copy_(torch.from_numpy(b))
            modules += [linear, torch.nn.ReLU()] if i < len(params) - 1 else [linear]
        return torch.nn.Sequential(*modules)

    def make_step(x, y):
        return common.torch_sgd_step(build(), x, y, LEARNING_RATE)

    def make_predict(x):
        model, xt = build(), torch.from_numpy(x)

        def predict():
            with torch.inference_mode():
                return model(xt)

        return predict

    return Impl(make_step, make_predict)


# ----------------------------------------------------------------------------- JAX


def jax_impl(params: list) -> Impl:
    """JAX with ``jax.jit``; every call blocks until its result is ready."""
    import jax
    import jax.numpy as jnp

    def forward(params, x):
        for w, b in params[:-1]:
            x = jax.nn.relu(x @ w + b)
        w, b = params[-1]
        return x @ w + b

    def loss_fn(params, x, y):
        log_p = jax.nn.log_softmax(forward(params, x))
        return -jnp.mean(jnp.take_along_axis(log_p, y[:, None], axis=1))

    @jax.jit
    def train_step(params, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        return loss, jax.tree_util.tree_map(lambda p, g: p - LEARNING_RATE * g, params, grads)

    forward_jit = jax.jit(forward)
    initial = jax.device_put(params)

    def make_step(x, y):
        state = initial
        xj, yj = jax.device_put(x), jax.device_put(y.astype(np.int32))

        def step():
            nonlocal state
            loss, state = train_step(state, xj, yj)
            return jax.block_until_ready(loss)

        return step

    def make_predict(x):
        xj = jax.device_put(x)
        return lambda: jax.block_until_ready(forward_jit(initial, xj))

    return Impl(make_step, make_predict)


# ----------------------------------------------------------------------------- the registry


FRAMEWORKS: dict[str, tuple[str | None, Callable[[list], Impl]]] = {
    "tinyfn": (None, tinyfn_impl),
    "tinyfn-unfused": (None, lambda params: tinyfn_impl(params, fused=False)),
    "tinyfn-static": (None, lambda params: tinyfn_impl(params, static_graph=True)),
    "numpy": (None, numpy_impl),
    "numpy-inplace": (None, lambda params: numpy_impl(params, in_place=True)),
    "torch": ("torch", torch_impl),
    "jax": ("jax", jax_impl),
}
"""Framework name -> (optional module it needs, implementation factory)."""

IMPORTS = {
    "tinyfn": "import tinyfn, tinyfn.optim",
    "numpy": "import numpy",
    "torch": "import torch",
    "jax": "import jax, jax.numpy",
}
"""The imports timed for each framework in a fresh interpreter."""


def available() -> tuple[list[str], dict[str, str]]:
    """``(names of the frameworks that can run, {skipped name: reason})``."""
    names, skipped = [], {}
    for name, (module, _) in FRAMEWORKS.items():
        if module is None or importlib.util.find_spec(module) is not None:
            names.append(name)
        else:
            skipped[name] = f"{module} is not installed (pip install -e '.[bench]')"
    return names, skipped


def implementations(names: list[str], params: list) -> dict[str, Impl]:
    """The :class:`Impl` of each named framework, all starting from ``params``."""
    return {name: FRAMEWORKS[name][1](params) for name in names}


def agreement(impls: dict[str, Impl], batch: int = 32) -> dict:
    """Check that every framework computes the same maths: the loss of two consecutive
    steps from the same weights and batch (the second one shows the update was the same),
    and the logits of a prediction. Returns, per framework, its losses and its largest
    deviation from ``numpy``."""
    x, y = make_data(batch, seed=1)

    def run(impl):
        step = impl.make_step(x, y)
        return np.array([float(step()), float(step())]), np.asarray(impl.make_predict(x)())

    ref_losses, ref_logits = run(impls["numpy"])
    report = {}
    for name, impl in impls.items():
        losses, logits = run(impl)
        report[name] = {
            "losses": losses.tolist(),
            "max_loss_diff": float(np.max(np.abs(losses - ref_losses))),
            "max_logit_diff": float(np.max(np.abs(logits - ref_logits))),
        }
    return report


def first_step_seconds(name: str, batch: int = 256) -> float:
    """Seconds of the first training step of a framework in this (fresh) interpreter: the
    cost of tracing, compilation and first-call set-up."""
    step = FRAMEWORKS[name][1](init_params()).make_step(*make_data(batch))
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def startup_code(name: str) -> str:
    """Python source that, run in a fresh interpreter, times the framework's imports first
    and then its first training step, and prints ``{"import_s", "first_step_s"}`` as JSON."""
    return "\n".join(
        [
            "import time",
            "start = time.perf_counter()",
            IMPORTS[name],
            "import_s = time.perf_counter() - start",
            "import json, sys",
            f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})",
            "import mlp",
            f"print(json.dumps({{'import_s': import_s, 'first_step_s': mlp.first_step_seconds({name!r})}}))",
        ]
    )
