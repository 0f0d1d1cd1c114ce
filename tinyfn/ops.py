"""The primitive set: differentiable numpy operations, each with a hand-written VJP rule.

Every function here accepts numpy arrays (then it is plain numpy, no graph) or traced
:class:`~tinyfn.autodiff.Node` values (then it records a node). Binary operations broadcast
like numpy, and their VJP rules sum the cotangent back over the broadcast axes
(:func:`unbroadcast`). Each VJP rule receives ``(g, residuals, needs)`` and returns one
cotangent per positional argument, skipping the ones nobody needs.

Importing this module also gives Nodes their operators (``+ - * / ** @``, indexing, ...).
"""

from __future__ import annotations

import builtins

import numpy as np
from numpy.lib.array_utils import normalize_axis_tuple

from . import autodiff
from .autodiff import Node, Primitive
from .kernels.elementwise import relu_vjp

# ----------------------------------------------------------------------------- helpers


def unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``g`` over the axes that broadcasting added or stretched, so it has ``shape``."""
    if np.shape(g) == shape:
        return g
    lead = np.ndim(g) - len(shape)
    stretched = tuple(i + lead for i, n in enumerate(shape) if n == 1 and g.shape[i + lead] != 1)
    return np.sum(g, axis=tuple(range(lead)) + stretched).reshape(shape)


def _reduced_axes(ndim: int, axis) -> tuple:
    return tuple(range(ndim)) if axis is None else normalize_axis_tuple(axis, ndim)


def _expand_reduced(g: np.ndarray, ndim: int, axis, keepdims: bool) -> np.ndarray:
    """Put back the reduced axes of ``g`` (as size 1) so it broadcasts against the input."""
    return g if keepdims else np.expand_dims(g, _reduced_axes(ndim, axis))


def _shape_of(x) -> tuple:
    return np.shape(x)


# ----------------------------------------------------------------------------- binary, broadcasting


def _add_forward(x, y):
    return np.add(x, y), (_shape_of(x), _shape_of(y))


def _add_vjp(g, shapes, needs):
    return (unbroadcast(g, shapes[0]) if needs[0] else None, unbroadcast(g, shapes[1]) if needs[1] else None)


def _subtract_forward(x, y):
    return np.subtract(x, y), (_shape_of(x), _shape_of(y))


def _subtract_vjp(g, shapes, needs):
    return (unbroadcast(g, shapes[0]) if needs[0] else None, unbroadcast(-g, shapes[1]) if needs[1] else None)


def _multiply_forward(x, y):
    return np.multiply(x, y), (x, y)


def _multiply_vjp(g, xy, needs):
    x, y = xy
    return (
        unbroadcast(g * y, _shape_of(x)) if needs[0] else None,
        unbroadcast(g * x, _shape_of(y)) if needs[1] else None,
    )


def _divide_forward(x, y):
    out = np.divide(x, y)
    return out, (x, y, out)


def _divide_vjp(g, res, needs):
    x, y, out = res
    return (
        unbroadcast(g / y, _shape_of(x)) if needs[0] else None,
        unbroadcast(-g * out / y, _shape_of(y)) if needs[1] else None,
    )


def _power_forward(x, y):
    out = np.power(x, y)
    return out, (x, y, out)


def _power_vjp(g, res, needs):
    x, y, out = res
    gx = gy = None
    if needs[0]:
        gx = unbroadcast(g * y * np.power(x, np.subtract(y, 1)), _shape_of(x))
    if needs[1]:
        # d/dy x**y = x**y log x, defined for x > 0 (taken as 0 elsewhere)
        positive = np.asarray(x) > 0
        log_x = np.log(np.where(positive, x, 1))
        gy = unbroadcast(g * out * log_x, _shape_of(y))
    return gx, gy


def _extremum_vjp(g, res, needs):
    """VJP of maximum/minimum: the cotangent goes to the winner; ties split it evenly."""
    x, y, out = res
    x_wins = (np.asarray(x) == out).astype(g.dtype)
    y_wins = (np.asarray(y) == out).astype(g.dtype)
    share = g / (x_wins + y_wins)
    return (
        unbroadcast(share * x_wins, _shape_of(x)) if needs[0] else None,
        unbroadcast(share * y_wins, _shape_of(y)) if needs[1] else None,
    )


def _maximum_forward(x, y):
    out = np.maximum(x, y)
    return out, (x, y, out)


def _minimum_forward(x, y):
    out = np.minimum(x, y)
    return out, (x, y, out)


add = Primitive("add", _add_forward, _add_vjp, impl=np.add)
subtract = Primitive("subtract", _subtract_forward, _subtract_vjp, impl=np.subtract)
multiply = Primitive("multiply", _multiply_forward, _multiply_vjp, impl=np.multiply)
divide = Primitive("divide", _divide_forward, _divide_vjp, impl=np.divide)
power = Primitive("power", _power_forward, _power_vjp, impl=np.power)
maximum = Primitive("maximum", _maximum_forward, _extremum_vjp, impl=np.maximum)
minimum = Primitive("minimum", _minimum_forward, _extremum_vjp, impl=np.minimum)

# ----------------------------------------------------------------------------- unary, elementwise
# Each forward keeps the one array its derivative is written in terms of.


def _stable_sigmoid(x):
    """1 / (1 + exp(-x)) without overflow: exp is only ever taken of -|x|."""
    e = np.exp(-np.abs(x))
    return np.where(np.asarray(x) >= 0, 1 / (1 + e), e / (1 + e))


negative = Primitive("negative", lambda x: (np.negative(x), None), lambda g, _, needs: (-g,), impl=np.negative)
exp = Primitive("exp", lambda x: ((y := np.exp(x)), y), lambda g, y, needs: (g * y,), impl=np.exp)
log = Primitive("log", lambda x: (np.log(x), x), lambda g, x, needs: (g / x,), impl=np.log)
sqrt = Primitive("sqrt", lambda x: ((y := np.sqrt(x)), y), lambda g, y, needs: (g / (2 * y),), impl=np.sqrt)
abs = Primitive("abs", lambda x: (np.abs(x), x), lambda g, x, needs: (g * np.sign(x),), impl=np.abs)
tanh = Primitive("tanh", lambda x: ((y := np.tanh(x)), y), lambda g, y, needs: (g * (1 - y * y),), impl=np.tanh)
sigmoid = Primitive(
    "sigmoid",
    lambda x: ((y := _stable_sigmoid(x)), y),
    lambda g, y, needs: (g * y * (1 - y),),
    impl=_stable_sigmoid,
)
relu = Primitive(
    "relu",
    lambda x: ((y := np.maximum(x, 0)), y),
    lambda g, y, needs: (relu_vjp(g, y),),  # g * (y > 0), fused into one pass
    impl=lambda x: np.maximum(x, 0),
)
softplus = Primitive(
    "softplus",
    lambda x: (np.logaddexp(0, x), x),  # log(1 + e^x), stable for large |x|
    lambda g, x, needs: (g * _stable_sigmoid(x),),
    impl=lambda x: np.logaddexp(0, x),
)


def _leaky_relu_forward(x, *, slope):
    return np.where(np.asarray(x) > 0, x, slope * x), (x, slope)


def _leaky_relu_vjp(g, res, needs):
    x, slope = res
    return (np.where(np.asarray(x) > 0, g, slope * g),)


_leaky_relu = Primitive("leaky_relu", _leaky_relu_forward, _leaky_relu_vjp)


def leaky_relu(x, slope=0.01):
    """``x`` where positive, ``slope * x`` elsewhere. Same shape as ``x``."""
    return _leaky_relu(x, slope=slope)


def _clip_forward(x, *, lo, hi):
    return np.clip(x, lo, hi), (x, lo, hi)


def _clip_vjp(g, res, needs):
    x, lo, hi = res
    inside = np.ones(np.shape(x), dtype=bool)
    if lo is not None:
        inside &= np.asarray(x) >= lo
    if hi is not None:
        inside &= np.asarray(x) <= hi
    return (g * inside,)


_clip = Primitive("clip", _clip_forward, _clip_vjp)


def clip(x, lo=None, hi=None):
    """``x`` limited to ``[lo, hi]`` (either bound may be None); gradient 0 outside the range."""
    return _clip(x, lo=lo, hi=hi)


# ----------------------------------------------------------------------------- reductions


def _sum_forward(x, *, axis, keepdims):
    return np.sum(x, axis=axis, keepdims=keepdims), (np.shape(x), axis, keepdims)


def _sum_vjp(g, res, needs):
    shape, axis, keepdims = res
    return (np.broadcast_to(_expand_reduced(g, len(shape), axis, keepdims), shape),)


def _mean_forward(x, *, axis, keepdims):
    shape = np.shape(x)
    count = int(np.prod([shape[a] for a in _reduced_axes(len(shape), axis)]))
    return np.mean(x, axis=axis, keepdims=keepdims), (shape, axis, keepdims, count)


def _mean_vjp(g, res, needs):
    shape, axis, keepdims, count = res
    return (np.broadcast_to(_expand_reduced(g / count, len(shape), axis, keepdims), shape),)


def _max_forward(x, *, axis, keepdims):
    out = np.max(x, axis=axis, keepdims=keepdims)
    return out, (x, axis, keepdims, out)


def _max_vjp(g, res, needs):
    x, axis, keepdims, out = res
    ndim = np.ndim(x)
    winners = (x == _expand_reduced(out, ndim, axis, keepdims)).astype(g.dtype)
    winners /= np.sum(winners, axis=axis, keepdims=True)  # ties share the cotangent
    return (_expand_reduced(g, ndim, axis, keepdims) * winners,)


_sum = Primitive("sum", _sum_forward, _sum_vjp)
_mean = Primitive("mean", _mean_forward, _mean_vjp)
_max = Primitive("max", _max_forward, _max_vjp)


def sum(x, axis=None, keepdims=False):
    """Sum over ``axis`` (int, tuple or None for all), like ``np.sum``."""
    return _sum(x, axis=axis, keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    """Mean over ``axis`` (int, tuple or None for all), like ``np.mean``."""
    return _mean(x, axis=axis, keepdims=keepdims)


def max(x, axis=None, keepdims=False):
    """Maximum over ``axis``; the gradient goes to the maximal entries (split evenly on ties)."""
    return _max(x, axis=axis, keepdims=keepdims)


# ----------------------------------------------------------------------------- linear algebra


def _matmul_forward(a, b):
    return np.matmul(a, b), (a, b)


def _matmul_vjp(g, ab, needs):
    a, b = ab
    # Treat vectors as (1, k) rows / (k, 1) columns so one rule covers every case.
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    g2 = g
    if b.ndim == 1:
        g2 = np.expand_dims(g2, -1)
    if a.ndim == 1:
        g2 = np.expand_dims(g2, -2)
    ga = gb = None
    if needs[0]:
        ga = unbroadcast(g2 @ np.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
    if needs[1]:
        gb = unbroadcast(np.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(b.shape)
    return ga, gb


matmul = Primitive("matmul", _matmul_forward, _matmul_vjp, impl=np.matmul)

# ----------------------------------------------------------------------------- shapes


def _reshape_forward(x, *, shape):
    return np.reshape(x, shape), np.shape(x)


_reshape = Primitive("reshape", _reshape_forward, lambda g, shape, needs: (np.reshape(g, shape),))


def reshape(x, shape):
    """``x`` with a new shape (one entry may be -1), like ``np.reshape``."""
    return _reshape(x, shape=shape)


def _transpose_forward(x, *, axes):
    return np.transpose(x, axes), (np.ndim(x), axes)


def _transpose_vjp(g, res, needs):
    ndim, axes = res
    return (g.T if axes is None else np.transpose(g, np.argsort(normalize_axis_tuple(axes, ndim))),)


_transpose = Primitive("transpose", _transpose_forward, _transpose_vjp)


def transpose(x, axes=None):
    """Permute the axes of ``x`` (reverse them when ``axes`` is None), like ``np.transpose``."""
    return _transpose(x, axes=axes)


def _broadcast_to_forward(x, *, shape):
    return np.broadcast_to(x, shape), np.shape(x)


_broadcast_to = Primitive(
    "broadcast_to", _broadcast_to_forward, lambda g, shape, needs: (unbroadcast(g, shape),)
)


def broadcast_to(x, shape):
    """``x`` broadcast to ``shape`` (a read-only view outside a trace), like ``np.broadcast_to``."""
    return _broadcast_to(x, shape=shape)


def _is_basic_index(index) -> bool:
    """True for indices made of ints, slices, None and Ellipsis (no fancy indexing)."""
    parts = index if isinstance(index, tuple) else (index,)
    return builtins.all(isinstance(p, (int, np.integer, slice)) or p is None or p is Ellipsis for p in parts)


def _getitem_forward(x, *, index):
    return x[index], (np.shape(x), np.result_type(x), index)


def _getitem_vjp(g, res, needs):
    shape, dtype, index = res
    gx = np.zeros(shape, dtype=np.result_type(dtype, g))
    if _is_basic_index(index):
        gx[index] = g
    else:
        np.add.at(gx, index, g)  # repeated indices each receive their share
    return (gx,)


_getitem = Primitive("getitem", _getitem_forward, _getitem_vjp)


def getitem(x, index):
    """``x[index]`` for any numpy index (slices, integers, integer or boolean arrays)."""
    if type(index) is Node:
        raise TypeError("an index must be a plain array or slice, found a traced value")
    return _getitem(x, index=index)


def _concatenate_forward(*xs, axis):
    sizes = [np.shape(x)[axis] for x in xs]
    return np.concatenate(xs, axis=axis), (np.cumsum(sizes)[:-1], axis)


def _concatenate_vjp(g, res, needs):
    splits, axis = res
    return tuple(part if need else None for part, need in zip(np.split(g, splits, axis=axis), needs))


_concatenate = Primitive("concatenate", _concatenate_forward, _concatenate_vjp)


def concatenate(xs, axis=0):
    """Join a sequence of arrays along an existing axis, like ``np.concatenate``."""
    return _concatenate(*xs, axis=axis)


def _stack_forward(*xs, axis):
    return np.stack(xs, axis=axis), (len(xs), axis)


def _stack_vjp(g, res, needs):
    count, axis = res
    return tuple(np.take(g, i, axis=axis) if need else None for i, need in zip(range(count), needs))


_stack = Primitive("stack", _stack_forward, _stack_vjp)


def stack(xs, axis=0):
    """Join a sequence of same-shaped arrays along a new axis, like ``np.stack``."""
    return _stack(*xs, axis=axis)


def _where_forward(condition, x, y):
    return np.where(condition, x, y), (condition, _shape_of(x), _shape_of(y))


def _where_vjp(g, res, needs):
    condition, x_shape, y_shape = res
    return (
        None,  # the condition is not differentiable
        unbroadcast(np.where(condition, g, 0), x_shape) if needs[1] else None,
        unbroadcast(np.where(condition, 0, g), y_shape) if needs[2] else None,
    )


_where = Primitive("where", _where_forward, _where_vjp, impl=np.where)


def where(condition, x, y):
    """``x`` where ``condition`` holds, else ``y`` (broadcasting); ``condition`` gets no gradient."""
    return _where(condition, x, y)


# ----------------------------------------------------------------------------- softmax family


def _log_softmax_impl(x, axis=-1):
    shifted = x - np.max(x, axis=axis, keepdims=True)  # exp never overflows after the shift
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _log_softmax_forward(x, *, axis):
    out = _log_softmax_impl(x, axis)
    return out, (out, axis)


def _log_softmax_vjp(g, res, needs):
    out, axis = res
    return (g - np.exp(out) * np.sum(g, axis=axis, keepdims=True),)


def _softmax_forward(x, *, axis):
    out = np.exp(_log_softmax_impl(x, axis))
    return out, (out, axis)


def _softmax_vjp(g, res, needs):
    out, axis = res
    return (out * (g - np.sum(g * out, axis=axis, keepdims=True)),)


_log_softmax = Primitive("log_softmax", _log_softmax_forward, _log_softmax_vjp)
_softmax = Primitive("softmax", _softmax_forward, _softmax_vjp)


def log_softmax(x, axis=-1):
    """``log(softmax(x))`` computed stably (shifted by the max) along ``axis``."""
    return _log_softmax(x, axis=axis)


def softmax(x, axis=-1):
    """``exp(x) / sum(exp(x))`` along ``axis``, computed stably; entries sum to 1."""
    return _softmax(x, axis=axis)


# ----------------------------------------------------------------------------- operators on Nodes


def _compared(x):
    """The array a comparison reads: a Node's value (comparisons are not differentiable).

    Under a static graph the result would be frozen at the trace, so comparing there raises.
    """
    if type(x) is not Node:
        return x
    if autodiff._staging:
        raise TypeError(
            "static_graph: comparing traced values would freeze the result at the first call; "
            "use a primitive (tinyfn.ops.relu, maximum, ...) or value_and_grad without static_graph"
        )
    return x.value


def _install_operators():
    """Give traced values the arithmetic operators, so losses are written as plain Python."""

    def swapped(op):
        return lambda self, other: op(other, self)

    for name, op in {
        "add": add,
        "sub": subtract,
        "mul": multiply,
        "truediv": divide,
        "pow": power,
        "matmul": matmul,
    }.items():
        setattr(Node, f"__{name}__", lambda self, other, op=op: op(self, other))
        setattr(Node, f"__r{name}__", swapped(op))

    ufuncs = {
        np.add: add, np.subtract: subtract, np.multiply: multiply, np.true_divide: divide,
        np.power: power, np.maximum: maximum, np.minimum: minimum, np.matmul: matmul,
        np.negative: negative, np.exp: exp, np.log: log, np.sqrt: sqrt, np.absolute: abs, np.tanh: tanh,
    }

    def array_ufunc(self, ufunc, method, *inputs, **kwargs):
        # ``ndarray + node`` and ``np.exp(node)`` land here: run the differentiable version
        if method == "__call__" and not kwargs and ufunc in ufuncs:
            return ufuncs[ufunc](*inputs)
        raise TypeError(
            f"numpy's {ufunc.__name__} was called on a traced tinyfn value (a Node) and has no "
            "differentiable version; use the functions of tinyfn.ops, or read node.value if you "
            "do not need its gradient"
        )

    Node.__array_ufunc__ = array_ufunc
    Node.__neg__ = lambda self: negative(self)
    Node.__pos__ = lambda self: self
    Node.__abs__ = lambda self: abs(self)
    Node.__getitem__ = lambda self, index: getitem(self, index)
    for name in ("lt", "le", "gt", "ge", "eq", "ne"):
        compare = getattr(np, {"lt": "less", "le": "less_equal", "gt": "greater", "ge": "greater_equal",
                               "eq": "equal", "ne": "not_equal"}[name])
        setattr(Node, f"__{name}__", lambda self, other, c=compare: c(_compared(self), _compared(other)))
    def reduction_method(reduce):
        # np.sum(node) and friends call node.sum(axis=..., dtype=None, out=None, ...)
        def method(self, axis=None, dtype=None, out=None, keepdims=False, **unsupported):
            if dtype is not None or out is not None or unsupported:
                raise TypeError(f"{reduce.__name__} of a traced value takes only axis and keepdims")
            return reduce(self, axis, keepdims)

        return method

    Node.sum = reduction_method(sum)
    Node.mean = reduction_method(mean)
    Node.max = reduction_method(max)
    Node.reshape = lambda self, *shape: reshape(self, shape[0] if len(shape) == 1 else shape)
    Node.transpose = lambda self, *axes: transpose(self, axes or None)
    Node.T = property(lambda self: transpose(self))


_install_operators()
