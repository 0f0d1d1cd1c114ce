"""Layers as pure ``(init, apply)`` pairs, and combinators that compose them.

A layer is a :class:`Layer`, which unpacks as a pair:

>>> import numpy as np
>>> from tinyfn import layers, random
>>> init, apply = layers.Dense(10)
>>> out_shape, params = init(random.key(0), (-1, 4))   # -1: any batch size
>>> out_shape
(-1, 10)
>>> apply(params, np.ones((2, 4), np.float32)).shape   # x: (batch, 4) -> y: (batch, 10)
(2, 10)

``init(key, input_shape) -> (output_shape, params)`` and
``apply(params, x, *, key=None, train=False) -> y``. Params are dicts with string keys
and read-only array leaves; nothing is stored on the layer.

**Stateful layers** (``layer.stateful`` is True, for example BatchNorm and any combinator
containing one) carry non-trained state such as running averages, kept functional:
``init(key, input_shape) -> (output_shape, params, state)`` and
``apply(params, x, *, state, key=None, train=False) -> (y, new_state)``.
:func:`init_with_state` and :func:`apply_with_state` call any layer the stateful way
(stateless layers get and return ``state = {}``), which is what the combinators and the
training helpers use.

A combinator names each child's params ``"<child name>_<position>"`` (``"dense_0"``,
``"dense_2"``); children without params are left out, so every leaf has a readable path
such as ``"dense_2/w"``.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from . import initializers, ops, random, tree
from .autodiff import Primitive, primal_value

__all__ = [
    "Layer",
    "ParamError",
    "checked_params",
    "checked_input",
    "init_with_state",
    "apply_with_state",
    "Dense",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Softplus",
    "Softmax",
    "LogSoftmax",
    "Flatten",
    "Identity",
    "Dropout",
    "serial",
    "parallel",
    "fan_out",
    "fan_in_sum",
    "fan_in_concat",
    "residual",
    "summary",
]


class _Pair(NamedTuple):
    init: Callable
    apply: Callable


class Layer(_Pair):
    """A pair ``(init, apply)`` with a ``name``, a ``stateful`` flag and its ``children``.

    ``children`` lists ``(param_name, layer)`` for combinators (empty for plain layers).
    """

    def __new__(cls, init, apply, *, name: str, stateful: bool = False, children=()):
        layer = super().__new__(cls, init, apply)
        layer.name = name
        layer.stateful = stateful
        layer.children = tuple(children)
        return layer

    def __repr__(self):
        return f"Layer({self.name!r}{', stateful' if self.stateful else ''})"


def init_with_state(layer: Layer, key, input_shape) -> tuple:
    """``(output_shape, params, state)`` for any layer (``state`` is ``{}`` when stateless)."""
    if layer.stateful:
        return layer.init(key, input_shape)
    out_shape, params = layer.init(key, input_shape)
    return out_shape, params, {}


def apply_with_state(layer: Layer, params, x, state, *, key=None, train=False) -> tuple:
    """``(y, new_state)`` for any layer (stateless layers return ``state`` unchanged)."""
    if layer.stateful:
        return layer.apply(params, x, state=state, key=key, train=train)
    return layer.apply(params, x, key=key, train=train), state


def _shape_str(shape) -> str:
    sides = ["N" if d == -1 else "?" if d is None else str(d) for d in shape]
    return "(" + ", ".join(sides) + ("," if len(shape) == 1 else "") + ")"


def _fits(shape: tuple, expected: tuple) -> bool:
    """True if ``shape`` matches ``expected``, where a None side matches any size."""
    if len(shape) != len(expected):
        return False
    for n, e in zip(shape, expected):
        if e is not None and e != n:
            return False
    return True


class ParamError(ValueError):
    """A params tree does not fit its layer: a missing or unexpected entry, or a wrong shape.

    ``path`` is the entry's path in the params tree (``"dense_2/w"``); combinators prefix
    their child's name as the error passes through them.
    """

    def __init__(self, path: str, problem: str):
        super().__init__(f"params/{path}: {problem}")
        self.path = path
        self.problem = problem

    def within(self, child: str) -> "ParamError":
        """The same error, seen from the combinator holding this layer as ``child``."""
        return ParamError(f"{child}/{self.path}", self.problem)


def checked_params(layer: str, params, expected: dict) -> list:
    """The entries of ``params`` named in ``expected``, after checking they fit.

    ``expected`` maps each entry's name to its shape (a None side matches any size), or to
    None for an optional entry that is absent. Raises :class:`ParamError` naming the entry and what was expected and found
    when ``params`` is not a dict, lacks an entry, has one more, or has one of another shape.
    """
    if type(params) is dict and len(params) == len(expected):  # the usual case, checked quickly
        found = []
        for name, shape in expected.items():
            value = params.get(name)
            if value is None or shape is None or not _fits(np.shape(value), shape):
                break
            found.append(value)
        else:
            return found
    if not isinstance(params, dict):
        raise ParamError("", f"{layer} expected a dict of parameters {sorted(expected)}, found {type(params).__name__}")
    for name in params:
        if name not in expected or expected[name] is None:
            raise ParamError(str(name), f"{layer} has no parameter {name!r} (its parameters: {sorted(k for k, v in expected.items() if v is not None)})")
    found = []
    for name, shape in expected.items():
        if shape is None:
            found.append(None)
            continue
        if name not in params:
            raise ParamError(name, f"missing: {layer} expected a parameter of shape {_shape_str(shape)}")
        value = params[name]
        if not _fits(np.shape(value), shape):
            raise ParamError(name, f"{layer} expected shape {_shape_str(shape)}, found {_shape_str(np.shape(value))}")
        found.append(value)
    return found


def checked_input(layer: str, x, min_ndim: int = 1):
    """``x`` unchanged if it is an array (or traced value) with at least ``min_ndim`` axes;
    a TypeError or ValueError naming the layer and what was found otherwise."""
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise TypeError(f"{layer}: expected an array input, found {type(x).__name__}; convert it with np.asarray")
    if len(x.shape) < min_ndim:
        raise ValueError(f"{layer}: expected an input with at least {min_ndim} axes, found shape {x.shape}")
    return x


# ----------------------------------------------------------------------------- Dense


def _dense_impl(x, w, b, *, relu=False):
    y = x @ w
    y += b
    if relu:
        np.maximum(y, 0, out=y)  # y is a fresh array: the ReLU can overwrite it
    return y


def _dense_forward(x, w, b, *, relu=False):
    y = dense(x, w, b, relu=relu)
    return y, (x, w, y if relu else None)


def _dense_vjp(g, res, needs):
    # y = x @ w + b, so dx = g @ w.T, dw = x.T @ g and db = g summed over the batch.
    x, w, y = res
    if y is not None:
        g = ops.relu_backward(g, y)  # back through the ReLU first: g where the output is positive
    # Inputs may have leading dimensions beyond the batch: fold them into one for the weight gradient.
    x2 = x if x.ndim == 2 else ops.reshape(x, (-1, x.shape[-1]))
    g2 = g if g.ndim == 2 else ops.reshape(g, (-1, g.shape[-1]))
    return (
        ops.matmul(g, ops.transpose(w)) if needs[0] else None,
        ops.matmul(ops.transpose(x2), g2) if needs[1] else None,
        ops.sum(g2, axis=0) if needs[2] else None,
    )


dense = Primitive("dense", _dense_forward, _dense_vjp, impl=_dense_impl)
"""``dense(x, w, b) = x @ w + b``, or ``relu(x @ w + b)`` with ``relu=True``: x (..., in),
w (in, out), b (out,) -> (..., out); one fused VJP, written in primitives (so differentiable
again). The output dtype is numpy's promotion of the inputs' dtypes."""

_ACTIVATIONS = (None, "relu")


def Dense(
    out_features: int,
    w_init=initializers.glorot_uniform,
    b_init=initializers.zeros,
    dtype=np.float32,
    activation: str | None = None,
) -> Layer:
    """A fully connected layer ``y = x @ w + b``; with ``activation="relu"``, ``relu(x @ w + b)``.

    Params ``{"w": (in, out), "b": (out,)}``. Default initialisation: Glorot-uniform weights
    (``initializers.glorot_uniform``; pass ``initializers.he_normal`` for deep ReLU stacks)
    and zero biases. Input ``(..., in)``, output ``(..., out_features)``.

    ``Dense(n, activation="relu")`` computes the same numbers as ``serial(Dense(n), Relu())``
    with one graph node instead of two, and its ReLU works in place on the fresh output: the
    fast way to write an MLP.

    The output dtype follows numpy's promotion: float32 params on a float64 input give a
    float64 output (cast the input to the params' dtype to compute in float32).
    """
    if not (isinstance(out_features, (int, np.integer)) and out_features > 0):
        raise ValueError(f"Dense: out_features must be a positive int, found {out_features!r}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"Dense: activation must be one of {_ACTIVATIONS}, found {activation!r}")
    relu = activation == "relu"
    name = f"Dense({out_features})"
    expected = {"w": (None, out_features), "b": (out_features,)}

    def init(key, input_shape):
        if len(input_shape) < 1 or input_shape[-1] is None or input_shape[-1] < 1:
            raise ValueError(f"Dense({out_features}): expected an input shape (batch, features), found {input_shape}")
        w_key, b_key = random.split(key)
        in_features = input_shape[-1]
        params = {
            "w": w_init(w_key, (in_features, out_features), dtype),
            "b": b_init(b_key, (out_features,), dtype),
        }
        return tuple(input_shape[:-1]) + (out_features,), tree.freeze(params)

    def apply(params, x, *, key=None, train=False):
        w, b = checked_params(name, params, expected)
        if checked_input(name, x).shape[-1] != w.shape[0]:
            raise ValueError(f"{name}: expected input with {w.shape[0]} features (last axis), found shape {x.shape}")
        return dense(x, w, b, relu=relu)

    return Layer(init, apply, name="dense")


# ----------------------------------------------------------------------------- activations and reshaping


def _elementwise(name: str, fn) -> Layer:
    """A parameter-free layer applying ``fn`` to its input; output shape = input shape."""

    def init(key, input_shape):
        return tuple(input_shape), {}

    def apply(params, x, *, key=None, train=False):
        if params:
            checked_params(name, params, {})  # raises: this layer has no parameters
        return fn(x)

    return Layer(init, apply, name=name)


def Relu() -> Layer:
    """max(x, 0) elementwise."""
    return _elementwise("relu", ops.relu)


def LeakyRelu(slope: float = 0.01) -> Layer:
    """x where positive, slope * x elsewhere."""
    return _elementwise("leaky_relu", lambda x: ops.leaky_relu(x, slope))


def Sigmoid() -> Layer:
    """1 / (1 + exp(-x)) elementwise, stable for large |x|."""
    return _elementwise("sigmoid", ops.sigmoid)


def Tanh() -> Layer:
    """tanh(x) elementwise."""
    return _elementwise("tanh", ops.tanh)


def Softplus() -> Layer:
    """log(1 + exp(x)) elementwise, stable for large |x|."""
    return _elementwise("softplus", ops.softplus)


def Softmax(axis: int = -1) -> Layer:
    """Softmax along ``axis`` (entries sum to 1)."""
    return _elementwise("softmax", lambda x: ops.softmax(x, axis))


def LogSoftmax(axis: int = -1) -> Layer:
    """Log-softmax along ``axis``."""
    return _elementwise("log_softmax", lambda x: ops.log_softmax(x, axis))


def Identity() -> Layer:
    """Returns its input unchanged."""
    return _elementwise("identity", lambda x: x)


def Flatten() -> Layer:
    """Reshape ``(batch, d1, d2, ...)`` to ``(batch, d1 * d2 * ...)``."""

    def init(key, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"Flatten: expected an input with a batch axis, found shape {input_shape}")
        return (input_shape[0], math.prod(input_shape[1:])), {}

    def apply(params, x, *, key=None, train=False):
        return ops.reshape(x, (x.shape[0], -1))

    return Layer(init, apply, name="flatten")


def Dropout(rate: float) -> Layer:
    """Randomly zero a fraction ``rate`` of the inputs during training.

    ``rate`` is the probability of *dropping* a unit (as in PyTorch and Keras). When
    ``train=True`` it needs a ``key``; kept units are scaled by ``1 / (1 - rate)`` so the
    expected output equals the input. When ``train=False`` it is the identity. Works on
    any input shape (dense features or conv feature maps).
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"Dropout: rate must be in [0, 1), found {rate}")

    def init(key, input_shape):
        return tuple(input_shape), {}

    def apply(params, x, *, key=None, train=False):
        if not train or rate == 0.0:
            return x
        if key is None:
            raise ValueError("Dropout: apply(..., train=True) needs a PRNG key (key=...) to draw the mask")
        keep = random.bernoulli(key, 1.0 - rate, x.shape)
        return x * (keep * np.asarray(1.0 / (1.0 - rate), dtype=x.dtype))

    return Layer(init, apply, name="dropout")


# ----------------------------------------------------------------------------- combinators


def _child_names(layers) -> list[str]:
    return [f"{layer.name}_{i}" for i, layer in enumerate(layers)]


def _split_keys(key, count):
    return [None] * count if key is None else list(random.split(key, count))


def _check_layers(combinator: str, layers) -> None:
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"{combinator}: argument {i} must be a Layer, found {type(layer).__name__}")


def _apply_child(layer: Layer, child: str, params, x, state, *, key, train) -> tuple:
    """``apply_with_state`` for a combinator's child named ``child``: a :class:`ParamError`
    from it gains the child's name in its path."""
    try:
        return apply_with_state(layer, params, x, state, key=key, train=train)
    except ParamError as e:
        raise e.within(child) from None


def _make_combinator(name, layers, init_children, apply_children) -> Layer:
    """Build a combinator from functions over all children.

    ``init_children(keys, input_shape) -> (output_shape, [(out_shape, params, state) per child])``
    and ``apply_children(params_list, x, states, keys, train) -> (y, new_states)``, where
    ``states`` is None when no child has state. This function handles naming, key splitting
    and the stateless/stateful signatures.
    """
    _check_layers(name, layers)
    names = _child_names(layers)
    known = set(names)
    stateful = any(layer.stateful for layer in layers)

    def check_children(params):
        if not isinstance(params, dict):
            raise ParamError("", f"{name} expected a dict of its children's parameters, found {type(params).__name__}")
        for child in params:
            if child not in known:
                raise ParamError(str(child), f"{name} has no child {child!r} (its children: {names})")

    def init(key, input_shape):
        out_shape, results = init_children(random.split(key, len(layers)), input_shape)
        params = {n: p for n, (_, p, _) in zip(names, results) if p}
        state = {n: s for n, (_, _, s) in zip(names, results) if s}
        return (out_shape, params, state) if stateful else (out_shape, params)

    def apply_stateful(params, x, *, state, key=None, train=False):
        check_children(params)
        child_params = [params.get(n, {}) for n in names]
        child_states = [state.get(n, {}) for n in names]
        y, new_states = apply_children(child_params, x, child_states, _split_keys(key, len(layers)), train)
        return y, {n: s for n, s in zip(names, new_states) if s}

    def apply(params, x, *, key=None, train=False):
        check_children(params)
        y, _ = apply_children([params.get(n, {}) for n in names], x, None, _split_keys(key, len(layers)), train)
        return y

    return Layer(init, apply_stateful if stateful else apply, name=name, stateful=stateful, children=zip(names, layers))


def serial(*layers: Layer) -> Layer:
    """Compose layers in sequence: ``serial(f, g)(x) = g(f(x))``.

    Params: ``{"<name>_<i>": child params}``. The key passed to ``init``/``apply`` is split
    into one key per child.
    """

    def init_children(keys, input_shape):
        results, shape = [], tuple(input_shape)
        for i, (layer, k) in enumerate(zip(layers, keys)):
            try:
                result = init_with_state(layer, k, shape)
            except ValueError as e:
                raise ValueError(f"serial: layer {i} ({layer.name}) with input shape {_shape_str(shape)}: {e}") from e
            results.append(result)
            shape = result[0]
        return shape, results

    names = _child_names(layers)

    def apply_children(params, x, states, keys, train):
        if states is None:  # no state anywhere: the plain loop (the inference hot path)
            for layer, child, p, k in zip(layers, names, params, keys):
                try:
                    x = layer.apply(p, x, key=k, train=train)
                except ParamError as e:
                    raise e.within(child) from None
            return x, None
        new_states = []
        for layer, child, p, s, k in zip(layers, names, params, states, keys):
            x, s = _apply_child(layer, child, p, x, s, key=k, train=train)
            new_states.append(s)
        return x, new_states

    return _make_combinator("serial", layers, init_children, apply_children)


def parallel(*layers: Layer) -> Layer:
    """Apply layer i to input i: a tuple of n inputs gives a tuple of n outputs."""

    def init_children(keys, input_shapes):
        if not isinstance(input_shapes, (tuple, list)) or len(input_shapes) != len(layers) or not all(
            isinstance(s, (tuple, list)) for s in input_shapes
        ):
            raise ValueError(f"parallel: expected a tuple of {len(layers)} input shapes, found {input_shapes}")
        results = [init_with_state(layer, k, s) for layer, k, s in zip(layers, keys, input_shapes)]
        return tuple(r[0] for r in results), results

    def apply_children(params, xs, states, keys, train):
        if len(xs) != len(layers):
            raise ValueError(f"parallel: expected {len(layers)} inputs, found {len(xs)}")
        states = states or [{}] * len(layers)
        outs = [
            _apply_child(layer, child, p, x, s, key=k, train=train)
            for layer, child, p, x, s, k in zip(layers, _child_names(layers), params, xs, states, keys)
        ]
        return tuple(y for y, _ in outs), [s for _, s in outs]

    return _make_combinator("parallel", layers, init_children, apply_children)


def fan_out(n: int) -> Layer:
    """Copy the input into a tuple of ``n`` references (to feed ``parallel`` branches)."""

    def init(key, input_shape):
        return tuple(tuple(input_shape) for _ in range(n)), {}

    def apply(params, x, *, key=None, train=False):
        return (x,) * n

    return Layer(init, apply, name="fan_out")


def _same_shapes(name: str, shapes) -> tuple:
    first = tuple(shapes[0])
    for s in shapes[1:]:
        if tuple(s) != first:
            raise ValueError(f"{name}: expected inputs of the same shape, found {[_shape_str(x) for x in shapes]}")
    return first


def fan_in_sum() -> Layer:
    """Sum a tuple of same-shaped inputs."""

    def init(key, input_shapes):
        return _same_shapes("fan_in_sum", input_shapes), {}

    def apply(params, xs, *, key=None, train=False):
        total = xs[0]
        for x in xs[1:]:
            total = ops.add(total, x)
        return total

    return Layer(init, apply, name="fan_in_sum")


def fan_in_concat(axis: int = -1) -> Layer:
    """Concatenate a tuple of inputs along ``axis`` (other axes must match)."""

    def init(key, input_shapes):
        ndim = len(input_shapes[0])
        ax = axis % ndim
        rest = [tuple(d for i, d in enumerate(s) if i != ax) for s in input_shapes]
        _same_shapes(f"fan_in_concat(axis={axis}) (all axes but {axis})", rest)
        out = list(input_shapes[0])
        out[ax] = sum(s[ax] for s in input_shapes)
        return tuple(out), {}

    def apply(params, xs, *, key=None, train=False):
        return ops.concatenate(xs, axis=axis)

    return Layer(init, apply, name="fan_in_concat")


def residual(layer: Layer) -> Layer:
    """``x + layer(x)``; the layer must keep the shape of its input."""

    def init_children(keys, input_shape):
        result = init_with_state(layer, keys[0], input_shape)
        if tuple(result[0]) != tuple(input_shape):
            raise ValueError(
                f"residual: the branch ({layer.name}) must keep its input shape {_shape_str(input_shape)}, "
                f"found output shape {_shape_str(result[0])}"
            )
        return tuple(input_shape), [result]

    def apply_children(params, x, states, keys, train):
        y, s = _apply_child(layer, _child_names([layer])[0], params[0], x, states[0] if states else {}, key=keys[0], train=train)
        return ops.add(x, y), [s]

    return _make_combinator("residual", [layer], init_children, apply_children)


# ----------------------------------------------------------------------------- summary


def summary(layer: Layer, input_shape, key=None) -> str:
    """A table of the model: one row per layer (serial stacks are expanded), its output
    shape and its parameter count, then the total. ``N`` stands for the batch size.
    """
    key = random.key(0) if key is None else key
    rows: list[tuple[str, str, int]] = []

    def visit(lyr: Layer, path: str, shape, k):
        out_shape, params, _ = init_with_state(lyr, k, shape)
        if lyr.name == "serial" and lyr.children:
            keys = random.split(k, len(lyr.children))
            for (child_name, child), ck in zip(lyr.children, keys):
                shape = visit(child, f"{path}/{child_name}" if path else child_name, shape, ck)
        else:
            rows.append((path or lyr.name, _shape_str(out_shape) if isinstance(out_shape[0], (int, np.integer)) else str(out_shape), tree.size(params)))
        return out_shape

    visit(layer, "", tuple(input_shape), key)
    width = max([len("layer")] + [len(r[0]) for r in rows]) + 2
    shape_width = max([len("output shape")] + [len(r[1]) for r in rows]) + 2
    lines = [f"{'layer':<{width}}{'output shape':<{shape_width}}{'params':>10}", "-" * (width + shape_width + 10)]
    lines += [f"{name:<{width}}{shape:<{shape_width}}{count:>10,}" for name, shape, count in rows]
    lines += ["-" * (width + shape_width + 10), f"{'total':<{width + shape_width}}{sum(r[2] for r in rows):>10,}"]
    return "\n".join(lines)
