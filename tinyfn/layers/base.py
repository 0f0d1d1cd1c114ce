"""The layer contract: :class:`Layer` (an ``(init, apply)`` pair), calling any layer the
stateful way, and the checks every layer makes of its params and its input."""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from ..random import _is_int

__all__ = [
    "Layer",
    "init_with_state",
    "apply_with_state",
    "ParamError",
    "checked_params",
    "checked_no_params",
    "checked_input",
    "checked_shape",
    "checked_axis",
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
    """A params (or state) tree does not fit its layer: a missing or unexpected entry, or a
    wrong shape.

    ``path`` is the entry's path in the tree (``"dense_2/w"``); combinators prefix their
    child's name as the error passes through them. ``tree`` names the tree (``"params"`` or
    ``"state"``) at the start of the message.
    """

    def __init__(self, path: str, problem: str, tree: str = "params"):
        super().__init__(f"{tree}/{path}: {problem}")
        self.path = path
        self.problem = problem
        self.tree = tree

    def within(self, child: str) -> "ParamError":
        """The same error, seen from the combinator holding this layer as ``child``."""
        return ParamError(f"{child}/{self.path}", self.problem, self.tree)


def checked_params(layer: str, params, expected: dict, tree: str = "params") -> list:
    """The entries of ``params`` named in ``expected``, after checking they fit.

    ``expected`` maps each entry's name to its shape (a None side matches any size), or to
    None for an optional entry that is absent. Raises :class:`ParamError` naming the entry
    and what was expected and found when ``params`` is not a dict, lacks an entry, has one more, or has one of another shape
    (``tree`` names the tree in the message: ``"params"``, or ``"state"`` for a layer's state).
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
        raise ParamError("", f"{layer} expected a dict of parameters {sorted(expected)}, found {type(params).__name__}", tree)
    for name in params:
        if name not in expected or expected[name] is None:
            raise ParamError(str(name), f"{layer} has no parameter {name!r} (its parameters: {sorted(k for k, v in expected.items() if v is not None)})", tree)
    found = []
    for name, shape in expected.items():
        if shape is None:
            found.append(None)
            continue
        if name not in params:
            raise ParamError(name, f"missing: {layer} expected a parameter of shape {_shape_str(shape)}", tree)
        value = params[name]
        if not _fits(np.shape(value), shape):
            raise ParamError(name, f"{layer} expected shape {_shape_str(shape)}, found {_shape_str(np.shape(value))}", tree)
        found.append(value)
    return found


def checked_no_params(layer: str, params) -> None:
    """Nothing if ``params`` is empty (``{}``, or None); the :class:`ParamError` of
    :func:`checked_params` naming the layer, which has no parameters, otherwise."""
    if params:
        checked_params(layer, params, {})


def checked_input(layer: str, x, min_ndim: int = 1):
    """``x`` unchanged if it is a numeric array (or traced value) with at least ``min_ndim``
    axes; a TypeError or ValueError naming the layer and what was found otherwise."""
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise TypeError(f"{layer}: expected an array input, found {type(x).__name__}; convert it with np.asarray")
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{layer}: expected an array of numbers, found dtype {x.dtype}")
    if len(x.shape) < min_ndim:
        raise ValueError(f"{layer}: expected an input with at least {min_ndim} axes, found shape {x.shape}")
    return x


def checked_shape(layer: str, input_shape, min_ndim: int = 0) -> tuple:
    """``input_shape`` (what ``init`` gets) as a tuple, after checking it is a tuple or list of
    at least ``min_ndim`` sizes: ints >= 0, or -1 or None for a size not known yet (the batch).
    A TypeError or ValueError naming the layer and what was found otherwise."""
    if not (isinstance(input_shape, (tuple, list)) and all(d is None or _is_int(d) for d in input_shape)):
        raise TypeError(f"{layer}: expected an input shape, a tuple of ints (-1 for any batch size), found {input_shape!r}")
    shape = tuple(input_shape)
    if any(d is not None and d < -1 for d in shape):
        raise ValueError(f"{layer}: expected an input shape of sizes >= 0 (-1 for any batch size), found {shape}")
    if len(shape) < min_ndim:
        raise ValueError(f"{layer}: expected an input shape with at least {min_ndim} axes, found {_shape_str(shape)}")
    return shape


def checked_axis(layer: str, axis) -> int:
    """``axis`` as an int (negative counting from the end), or a TypeError naming the layer."""
    if not _is_int(axis):
        raise TypeError(f"{layer}: axis must be an int, found {axis!r}")
    return int(axis)
