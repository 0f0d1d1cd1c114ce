"""Combinators: layers made of layers (in sequence, in parallel, with a skip connection),
and a summary table of a model.

A combinator names each child's params ``"<child name>_<position>"`` (``"dense_0"``,
``"dense_2"``); children without params are left out, so every leaf has a readable path
such as ``"dense_2/w"``. A :class:`~tinyfn.layers.ParamError` raised by a child gains the
child's name in its path on the way out.
"""

from __future__ import annotations

import numpy as np

from .. import ops, random, tree
from ..autodiff import _describe
from ..random import _check_int
from .base import Layer, ParamError, _shape_str, apply_with_state, checked_axis, checked_no_params, checked_shape, init_with_state

__all__ = ["serial", "parallel", "fan_out", "fan_in_sum", "fan_in_concat", "residual", "summary"]


def _child_names(layers) -> list[str]:
    return [f"{layer.name}_{i}" for i, layer in enumerate(layers)]


def _split_keys(key, count):
    return [None] * count if key is None else list(random.split(key, count))


def _check_layers(combinator: str, layers) -> None:
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            found = type(layer).__name__
            if callable(layer) and hasattr(layer, "__name__"):  # Relu rather than Relu()
                found += f" {layer.__name__}; call it to make the layer: {layer.__name__}()"
            raise TypeError(f"{combinator}: argument {i} must be a Layer, found {found}")


def _checked_shapes(combinator: str, input_shapes, count: int | None = None) -> list[tuple]:
    """The input shapes of a combinator of several inputs, after checking they are a tuple (or
    list) of ``count`` shapes (at least one when ``count`` is None)."""
    if not (isinstance(input_shapes, (tuple, list)) and input_shapes and all(isinstance(s, (tuple, list)) for s in input_shapes)):
        raise TypeError(f"{combinator}: expected a tuple of input shapes (one per input), found {input_shapes!r}")
    if count is not None and len(input_shapes) != count:
        raise ValueError(f"{combinator}: expected a tuple of {count} input shapes, found {len(input_shapes)}: {input_shapes}")
    return [checked_shape(combinator, s) for s in input_shapes]


def _checked_inputs(combinator: str, xs, count: int | None = None):
    """``xs`` unchanged if it is a tuple (or list) of ``count`` inputs (at least one when
    ``count`` is None); a TypeError or ValueError naming the combinator otherwise."""
    if not isinstance(xs, (tuple, list)):
        raise TypeError(f"{combinator}: expected a tuple of inputs (one per branch), found {_describe(xs)}")
    if (count is None and not xs) or (count is not None and len(xs) != count):
        expected = "at least one input" if count is None else f"{count} inputs"
        raise ValueError(f"{combinator}: expected {expected}, found {len(xs)}")
    return xs


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
    _check_layers("serial", layers)  # before the children's names are read

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
        input_shapes = _checked_shapes("parallel", input_shapes, len(layers))
        results = [init_with_state(layer, k, s) for layer, k, s in zip(layers, keys, input_shapes)]
        return tuple(r[0] for r in results), results

    def apply_children(params, xs, states, keys, train):
        _checked_inputs("parallel", xs, len(layers))
        states = states or [{}] * len(layers)
        outs = [
            _apply_child(layer, child, p, x, s, key=k, train=train)
            for layer, child, p, x, s, k in zip(layers, _child_names(layers), params, xs, states, keys)
        ]
        return tuple(y for y, _ in outs), [s for _, s in outs]

    return _make_combinator("parallel", layers, init_children, apply_children)


def fan_out(n: int) -> Layer:
    """Copy the input into a tuple of ``n`` references (to feed ``parallel`` branches)."""
    n = _check_int("fan_out: n", n, 1)

    def init(key, input_shape):
        return (checked_shape("fan_out", input_shape),) * n, {}

    def apply(params, x, *, key=None, train=False):
        checked_no_params("fan_out", params)
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
        return _same_shapes("fan_in_sum", _checked_shapes("fan_in_sum", input_shapes)), {}

    def apply(params, xs, *, key=None, train=False):
        checked_no_params("fan_in_sum", params)
        total = _checked_inputs("fan_in_sum", xs)[0]
        for x in xs[1:]:
            total = ops.add(total, x)
        return total

    return Layer(init, apply, name="fan_in_sum")


def _other_axes(shape: tuple, axis: int) -> tuple | None:
    """``shape`` without ``axis``, or None if it has no such axis."""
    if not -len(shape) <= axis < len(shape):
        return None
    return tuple(n for i, n in enumerate(shape) if i != axis % len(shape))


def fan_in_concat(axis: int = -1) -> Layer:
    """Concatenate a tuple of inputs along ``axis`` (other axes must match)."""
    axis = checked_axis("fan_in_concat", axis)
    label = f"fan_in_concat(axis={axis})"

    def init(key, input_shapes):
        shapes = _checked_shapes(label, input_shapes)
        others = {_other_axes(s, axis) for s in shapes}
        if None in others or len(others) > 1:
            raise ValueError(f"{label}: expected inputs that have axis {axis} and match on every other axis, found {[_shape_str(s) for s in shapes]}")
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return tuple(out), {}

    def apply(params, xs, *, key=None, train=False):
        checked_no_params(label, params)
        return ops.concatenate(_checked_inputs(label, xs), axis=axis)

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
