"""The primitive set: differentiable numpy operations, each with a hand-written VJP rule.

Every function here accepts numpy arrays (then it is plain numpy, no graph) or traced
:class:`~tinyfn.autodiff.Node` values (then it records a node). Binary operations broadcast
like numpy, and their VJP rules sum the cotangent back over the broadcast axes
(:func:`unbroadcast`). Each VJP rule receives ``(g, residuals, needs)`` and returns one
cotangent per positional argument, skipping the ones nobody needs.

Each primitive here is its numpy (or Numba) ``impl`` plus a ``keep`` function naming what its
VJP needs (see :class:`~tinyfn.autodiff.Primitive`): on the plain arrays of a first-order
gradient the traced call runs ``impl`` directly; on the Nodes of an outer trace the primitive
records the output there. The VJP rules are written with these same primitives, so every rule
can be differentiated again: the VJP of ``exp`` is a ``multiply``, whose VJP is a
``multiply``, and so on to any order. Masks that a rule reads from values (which entry won a
``max``, where ``relu``'s input was positive) are piecewise constant, so they are constants
to every level.

Importing this module also gives Nodes their operators (``+ - * / ** @``, indexing, ...).

Bad arguments (shapes that do not broadcast, an axis out of range, a reshape to another size,
an index out of bounds, a string where a number belongs) are not checked here before the work:
these functions run thousands of times per training step, and numpy checks them anyway. When
numpy raises inside a primitive, :class:`~tinyfn.autodiff.Primitive` raises the same built-in
type (ValueError, TypeError or IndexError) from tinyfn instead, with the primitive's name,
numpy's message and the shapes and dtypes it was given::

    add: operands could not be broadcast together with shapes (2,3) (4,); called with a float64
    array of shape (2, 3), a float64 array of shape (4,)

That costs nothing measurable until something is raised (a ``try`` is free from Python 3.11
on), and it covers every primitive, here and in the layers, convolutions and losses, traced or
not. The wrappers that take an ``axis`` or a ``shape`` pass them on unchecked for the same reason.
"""

from __future__ import annotations

import builtins
import math

import numpy as np
from numpy.lib.array_utils import normalize_axis_tuple

from .autodiff import Node, Primitive, concrete_value, primal_value
from .kernels.elementwise import relu_vjp
from .kernels.special import erf as _erf_kernel

# ----------------------------------------------------------------------------- helpers


def _shape_of(x) -> tuple:
    """``np.shape(x)``, read straight from an array: ``np.shape`` is a Python function behind a
    dispatcher, and the forwards and VJP rules ask for shapes several times per traced op."""
    if type(x) is np.ndarray:
        return x.shape
    return () if type(x) is float or type(x) is int else np.shape(x)


def unbroadcast(g, shape: tuple):
    """Sum ``g`` over the axes that broadcasting added or stretched, so it has ``shape``."""
    g_shape = g.shape if type(g) is np.ndarray else _shape_of(g)  # read inline: this runs for most binary ops
    if g_shape == shape:
        return g
    lead = len(g_shape) - len(shape)
    stretched = tuple(i + lead for i, n in enumerate(shape) if n == 1 and g_shape[i + lead] != 1)
    return reshape(sum(g, axis=tuple(range(lead)) + stretched), shape)


# The rules below use operators (``g * y``, ``a @ b``) where they can: on plain arrays those
# are numpy's own, with no dispatch at all, and on traced values they are the primitives.


def _reduced_axes(ndim: int, axis) -> tuple:
    return tuple(range(ndim)) if axis is None else normalize_axis_tuple(axis, ndim)


def _kept_shape(shape: tuple, axis) -> tuple:
    """``shape`` with the reduced axes kept as size 1 (the shape of a keepdims reduction)."""
    reduced = _reduced_axes(len(shape), axis)
    return tuple(1 if i in reduced else n for i, n in enumerate(shape))


# ----------------------------------------------------------------------------- binary, broadcasting


# VJP derived in docs/book/02-primitives.md#vjp-add
def _add_vjp(g, shapes, needs):
    return (unbroadcast(g, shapes[0]) if needs[0] else None, unbroadcast(g, shapes[1]) if needs[1] else None)


# VJP derived in docs/book/02-primitives.md#vjp-subtract
def _subtract_vjp(g, shapes, needs):
    return (unbroadcast(g, shapes[0]) if needs[0] else None, unbroadcast(-g, shapes[1]) if needs[1] else None)


# VJP derived in docs/book/02-primitives.md#vjp-multiply
def _multiply_vjp(g, xy, needs):
    x, y = xy
    return (
        unbroadcast(g * y, _shape_of(x)) if needs[0] else None,
        unbroadcast(g * x, _shape_of(y)) if needs[1] else None,
    )


# VJP derived in docs/book/02-primitives.md#vjp-divide
def _divide_vjp(g, res, needs):
    x, y, out = res
    return (
        unbroadcast(g / y, _shape_of(x)) if needs[0] else None,
        unbroadcast(-g * out / y, _shape_of(y)) if needs[1] else None,
    )


# VJP derived in docs/book/02-primitives.md#vjp-power
def _power_vjp(g, res, needs):
    x, y, out = res
    gx = gy = None
    if needs[0]:
        # d/dx x**y = y * x**(y - 1). Where y == 0 that is 0 * x**-1, which is nan at x = 0:
        # the exponent is replaced by 1 there, so the product is exactly 0 (x**0 is constant).
        exponent = where(primal_value(y) == 0, 1, y - 1)
        gx = unbroadcast(g * y * power(x, exponent), _shape_of(x))
    if needs[1]:
        # d/dy x**y = x**y log x, defined for x > 0 (taken as 0 elsewhere, the limit at x = 0)
        positive = primal_value(x) > 0
        gy = unbroadcast(g * out * log(where(positive, x, 1)), _shape_of(y))
    return gx, gy


# VJPs derived in docs/book/02-primitives.md#vjp-maximum and #vjp-minimum
def _extremum_vjp(g, res, needs):
    """VJP of maximum/minimum: the cotangent goes to the winner; ties split it evenly."""
    x, y, out = res
    x_wins = primal_value(x) == primal_value(out)
    y_wins = primal_value(y) == primal_value(out)
    dtype = np.result_type(primal_value(g))
    x_share = (x_wins / (x_wins.astype(dtype) + y_wins)).astype(dtype, copy=False)
    y_share = (y_wins / (x_wins.astype(dtype) + y_wins)).astype(dtype, copy=False)
    return (
        unbroadcast(g * x_share, _shape_of(x)) if needs[0] else None,
        unbroadcast(g * y_share, _shape_of(y)) if needs[1] else None,
    )


def _keep_shapes(out, x, y):
    return _shape_of(x), _shape_of(y)


def _keep_inputs(out, x, y):
    return x, y


def _keep_all(out, x, y):
    return x, y, out


add = Primitive("add", vjp=_add_vjp, impl=np.add, keep=_keep_shapes)
subtract = Primitive("subtract", vjp=_subtract_vjp, impl=np.subtract, keep=_keep_shapes)
multiply = Primitive("multiply", vjp=_multiply_vjp, impl=np.multiply, keep=_keep_inputs)
divide = Primitive("divide", vjp=_divide_vjp, impl=np.divide, keep=_keep_all)
power = Primitive("power", vjp=_power_vjp, impl=np.power, keep=_keep_all)
maximum = Primitive("maximum", vjp=_extremum_vjp, impl=np.maximum, keep=_keep_all)
minimum = Primitive("minimum", vjp=_extremum_vjp, impl=np.minimum, keep=_keep_all)

# ----------------------------------------------------------------------------- unary, elementwise
# Each keeps the one value its derivative is written in terms of: its input or its output.


def _stable_sigmoid(x):
    """1 / (1 + exp(-x)) without overflow: exp is only ever taken of -|x|."""
    e = np.exp(-np.abs(x))
    return np.where(np.asarray(x) >= 0, 1 / (1 + e), e / (1 + e))


# VJP derived in docs/book/02-primitives.md#vjp-relu_backward
def _relu_backward_vjp(g, y, needs):
    return (relu_backward(g, y), None)  # linear in g: the same mask again


relu_backward = Primitive(
    "relu_backward", vjp=_relu_backward_vjp, impl=lambda g, y: relu_vjp(g, y), nondiff=(1,), keep=lambda out, g, y: y
)
"""``relu_backward(g, y) = g * (y > 0)``: the VJP of ``relu`` with output ``y`` (one fused pass)."""

def _keep_output(y, x):
    return y


def _keep_input(y, x):
    return x


# VJP derived in docs/book/02-primitives.md#vjp-negative
negative = Primitive("negative", vjp=lambda g, _, needs: (-g,), impl=np.negative, keep=lambda y, x: None)
# VJP derived in docs/book/02-primitives.md#vjp-exp
exp = Primitive("exp", vjp=lambda g, y, needs: (g * y,), impl=np.exp, keep=_keep_output)
# VJP derived in docs/book/02-primitives.md#vjp-log
log = Primitive("log", vjp=lambda g, x, needs: (g / x,), impl=np.log, keep=_keep_input)
# VJP derived in docs/book/02-primitives.md#vjp-sqrt
sqrt = Primitive("sqrt", vjp=lambda g, y, needs: (g / (2 * y),), impl=np.sqrt, keep=_keep_output)
# VJP derived in docs/book/02-primitives.md#vjp-abs
abs = Primitive("abs", vjp=lambda g, x, needs: (g * np.sign(primal_value(x)),), impl=np.abs, keep=_keep_input)
# VJP derived in docs/book/02-primitives.md#vjp-tanh
tanh = Primitive("tanh", vjp=lambda g, y, needs: (g * (1 - y * y),), impl=np.tanh, keep=_keep_output)
# VJP derived in docs/book/02-primitives.md#vjp-sigmoid
sigmoid = Primitive("sigmoid", vjp=lambda g, y, needs: (g * y * (1 - y),), impl=_stable_sigmoid, keep=_keep_output)
# VJP derived in docs/book/02-primitives.md#vjp-relu
relu = Primitive(
    "relu", vjp=lambda g, y, needs: (relu_backward(g, y),), impl=lambda x: np.maximum(x, 0), keep=_keep_output
)
# VJP derived in docs/book/02-primitives.md#vjp-softplus
softplus = Primitive(
    "softplus",
    vjp=lambda g, x, needs: (g * sigmoid(x),),
    impl=lambda x: np.logaddexp(0, x),  # log(1 + e^x), stable for large |x|
    keep=_keep_input,
)


# VJP derived in docs/book/07-sequences.md#vjp-erf
erf = Primitive(
    "erf",
    vjp=lambda g, x, needs: (g * (2 / math.sqrt(math.pi)) * exp(-x * x),),  # d/dx erf(x) = 2/sqrt(pi) e^(-x^2)
    impl=_erf_kernel,
    keep=_keep_input,
)
"""The error function, elementwise (a Numba kernel; exact GELU is ``x * (1 + erf(x / sqrt 2)) / 2``)."""


def gelu(x, approximate: bool = False):
    """The Gaussian error linear unit ``x * Phi(x)``, elementwise (Phi: the standard normal CDF).

    Exact: ``x * (1 + erf(x / sqrt(2))) / 2``. With ``approximate=True``, the tanh form of
    Hendrycks and Gimpel: ``x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) / 2`` (PyTorch's
    ``approximate="tanh"``). Written with primitives, so differentiable to any order; the
    constants are Python floats, so float32 stays float32.
    """
    if approximate:
        return 0.5 * x * (1 + tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)))
    return 0.5 * x * (1 + erf(x * (1 / math.sqrt(2))))


# VJP derived in docs/book/02-primitives.md#vjp-leaky_relu
def _leaky_relu_vjp(g, res, needs):
    x, slope = res
    return (g * np.where(primal_value(x) > 0, 1, slope).astype(np.result_type(primal_value(g)), copy=False),)


_leaky_relu = Primitive(
    "leaky_relu",
    vjp=_leaky_relu_vjp,
    impl=lambda x, *, slope: np.where(np.asarray(x) > 0, x, slope * x),
    keep=lambda out, x, *, slope: (x, slope),
)


def leaky_relu(x, slope=0.01):
    """``x`` where positive, ``slope * x`` elsewhere. Same shape as ``x``."""
    return _leaky_relu(x, slope=slope)


# VJP derived in docs/book/02-primitives.md#vjp-clip
def _clip_vjp(g, res, needs):
    x, lo, hi = res
    x = primal_value(x)
    inside = np.ones(_shape_of(x), dtype=bool)
    if lo is not None:
        inside &= x >= lo
    if hi is not None:
        inside &= x <= hi
    return (where(inside, g, 0),)


_clip = Primitive(
    "clip", vjp=_clip_vjp, impl=lambda x, *, lo, hi: np.clip(x, lo, hi), keep=lambda out, x, *, lo, hi: (x, lo, hi)
)


def clip(x, lo=None, hi=None):
    """``x`` limited to ``[lo, hi]`` (either bound may be None); gradient 0 outside the range."""
    return _clip(x, lo=lo, hi=hi)


# ----------------------------------------------------------------------------- reductions


# VJP derived in docs/book/02-primitives.md#vjp-sum
def _sum_vjp(g, res, needs):
    shape, axis, keepdims = res
    return (broadcast_to(reshape(g, _kept_shape(shape, axis)), shape),)


# VJP derived in docs/book/02-primitives.md#vjp-mean
def _mean_vjp(g, res, needs):
    shape, axis, keepdims, count = res
    return (broadcast_to(reshape(g / count, _kept_shape(shape, axis)), shape),)


def _mean_keep(out, x, *, axis, keepdims):
    shape = _shape_of(x)
    return shape, axis, keepdims, int(np.prod([shape[a] for a in _reduced_axes(len(shape), axis)]))


# VJP derived in docs/book/02-primitives.md#vjp-max
def _max_vjp(g, res, needs):
    x, axis, keepdims, out = res
    shape = _shape_of(x)
    winners = primal_value(x) == np.reshape(primal_value(out), _kept_shape(shape, axis))
    weights = winners / np.sum(winners, axis=axis, keepdims=True)  # ties share the cotangent
    return (reshape(g, _kept_shape(shape, axis)) * weights.astype(np.result_type(primal_value(g)), copy=False),)


_sum = Primitive(
    "sum",
    vjp=_sum_vjp,
    impl=lambda x, *, axis, keepdims: np.add.reduce(x, axis=axis, keepdims=keepdims),
    keep=lambda out, x, *, axis, keepdims: (_shape_of(x), axis, keepdims),
)
_mean = Primitive(
    "mean", vjp=_mean_vjp, impl=lambda x, *, axis, keepdims: np.mean(x, axis=axis, keepdims=keepdims), keep=_mean_keep
)
_max = Primitive(
    "max",
    vjp=_max_vjp,
    impl=lambda x, *, axis, keepdims: np.max(x, axis=axis, keepdims=keepdims),
    keep=lambda out, x, *, axis, keepdims: (x, axis, keepdims, out),
)


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


def _swap_last(x):
    """``x`` with its last two axes exchanged (a transposed view outside a trace)."""
    axes = list(range(np.ndim(x)))
    axes[-2:] = axes[-1], axes[-2]
    return transpose(x, tuple(axes))


# VJP derived in docs/book/02-primitives.md#vjp-matmul
def _matmul_vjp(g, ab, needs):
    a, b = ab
    a_shape, b_shape = _shape_of(a), _shape_of(b)
    # Treat vectors as (1, k) rows / (k, 1) columns so one rule covers every case.
    a2 = reshape(a, (1,) + a_shape) if len(a_shape) == 1 else a
    b2 = reshape(b, b_shape + (1,)) if len(b_shape) == 1 else b
    g_shape = _shape_of(g)
    if len(b_shape) == 1:
        g_shape = g_shape + (1,)
    if len(a_shape) == 1:
        g_shape = g_shape[:-1] + (1,) + g_shape[-1:]
    g2 = reshape(g, g_shape)
    ga = gb = None
    if needs[0]:
        ga = reshape(unbroadcast(g2 @ _swap_last(b2), _shape_of(a2)), a_shape)
    if needs[1]:
        gb = reshape(unbroadcast(_swap_last(a2) @ g2, _shape_of(b2)), b_shape)
    return ga, gb


matmul = Primitive("matmul", vjp=_matmul_vjp, impl=np.matmul, keep=_keep_inputs)

# ----------------------------------------------------------------------------- shapes


# VJP derived in docs/book/02-primitives.md#vjp-reshape
_reshape = Primitive(
    "reshape",
    vjp=lambda g, x_shape, needs: (reshape(g, x_shape),),
    impl=lambda x, *, shape: np.reshape(x, shape),
    keep=lambda out, x, *, shape: _shape_of(x),
)


def reshape(x, shape):
    """``x`` with a new shape (one entry may be -1), like ``np.reshape``."""
    return _reshape(x, shape=shape)


# VJP derived in docs/book/02-primitives.md#vjp-transpose
def _transpose_vjp(g, res, needs):
    ndim, axes = res
    return (transpose(g, None if axes is None else tuple(np.argsort(normalize_axis_tuple(axes, ndim)).tolist())),)


_transpose = Primitive(
    "transpose",
    vjp=_transpose_vjp,
    impl=lambda x, *, axes: np.asarray(x).transpose(axes),
    keep=lambda out, x, *, axes: (np.ndim(x), axes),
)


def transpose(x, axes=None):
    """Permute the axes of ``x`` (reverse them when ``axes`` is None), like ``np.transpose``."""
    return _transpose(x, axes=axes)


# VJP derived in docs/book/02-primitives.md#vjp-broadcast_to
_broadcast_to = Primitive(
    "broadcast_to",
    vjp=lambda g, x_shape, needs: (unbroadcast(g, x_shape),),
    impl=lambda x, *, shape: np.broadcast_to(x, shape),
    keep=lambda out, x, *, shape: _shape_of(x),
)


def broadcast_to(x, shape):
    """``x`` broadcast to ``shape`` (a read-only view outside a trace), like ``np.broadcast_to``."""
    return _broadcast_to(x, shape=tuple(shape))


def _is_basic_index(index) -> bool:
    """True for indices made of ints, slices, None and Ellipsis (no fancy indexing)."""
    parts = index if isinstance(index, tuple) else (index,)
    return builtins.all(isinstance(p, (int, np.integer, slice)) or p is None or p is Ellipsis for p in parts)


def _scatter_add_impl(g, *, shape, index):
    out = np.zeros(shape, dtype=np.result_type(g))
    if _is_basic_index(index):
        out[index] = g
    else:
        np.add.at(out, index, g)  # repeated indices each receive their share
    return out


# VJP derived in docs/book/02-primitives.md#vjp-scatter_add
_scatter_add = Primitive(
    "scatter_add",
    vjp=lambda ct, index, needs: (getitem(ct, index),),  # scattering's transpose is gathering
    impl=_scatter_add_impl,
    keep=lambda out, g, *, shape, index: index,
)
"""``scatter_add(g, shape=, index=)``: zeros of ``shape`` with ``g`` added at ``[index]``
(the VJP of ``getitem``)."""

# VJP derived in docs/book/02-primitives.md#vjp-getitem
_getitem = Primitive(
    "getitem",
    vjp=lambda g, res, needs: (_scatter_add(g, shape=res[0], index=res[1]),),
    impl=lambda x, *, index: x[index],
    keep=lambda out, x, *, index: (_shape_of(x), index),
)


def getitem(x, index):
    """``x[index]`` for any numpy index (slices, integers, integer or boolean arrays)."""
    if type(index) is Node:
        raise TypeError("an index must be a plain array or slice, found a traced value")
    return _getitem(x, index=index)


def _along(axis: int, ndim: int, part) -> tuple:
    """The index selecting ``part`` (an int or a slice) along ``axis`` of an ``ndim``-array."""
    return (slice(None),) * (axis % ndim) + (part,)


# VJP derived in docs/book/02-primitives.md#vjp-concatenate
def _concatenate_vjp(g, res, needs):
    bounds, axis = res
    ndim = np.ndim(g)
    return tuple(
        getitem(g, _along(axis, ndim, slice(lo, hi))) if need else None
        for lo, hi, need in zip(bounds[:-1], bounds[1:], needs)
    )


_concatenate = Primitive(
    "concatenate",
    vjp=_concatenate_vjp,
    impl=lambda *xs, axis: np.concatenate(xs, axis=axis),
    keep=lambda out, *xs, axis: ([0, *np.cumsum([_shape_of(x)[axis] for x in xs]).tolist()], axis),
)


def concatenate(xs, axis=0):
    """Join a sequence of arrays along an existing axis, like ``np.concatenate``."""
    return _concatenate(*xs, axis=axis)


# VJP derived in docs/book/02-primitives.md#vjp-stack
def _stack_vjp(g, res, needs):
    count, axis = res
    ndim = np.ndim(g)
    return tuple(getitem(g, _along(axis, ndim, i)) if need else None for i, need in zip(range(count), needs))


_stack = Primitive(
    "stack", vjp=_stack_vjp, impl=lambda *xs, axis: np.stack(xs, axis=axis), keep=lambda out, *xs, axis: (len(xs), axis)
)


def stack(xs, axis=0):
    """Join a sequence of same-shaped arrays along a new axis, like ``np.stack``."""
    return _stack(*xs, axis=axis)


# VJP derived in docs/book/02-primitives.md#vjp-where
def _where_vjp(g, res, needs):
    condition, x_shape, y_shape = res
    return (
        None,  # the condition is not differentiable
        unbroadcast(where(condition, g, 0), x_shape) if needs[1] else None,
        unbroadcast(where(condition, 0, g), y_shape) if needs[2] else None,
    )


_where = Primitive(
    "where",
    vjp=_where_vjp,
    impl=np.where,
    nondiff=(0,),
    keep=lambda out, condition, x, y: (primal_value(condition), _shape_of(x), _shape_of(y)),
)


def where(condition, x, y):
    """``x`` where ``condition`` holds, else ``y`` (broadcasting); ``condition`` gets no gradient."""
    return _where(condition, x, y)


# ----------------------------------------------------------------------------- softmax family


def _log_softmax_impl(x, *, axis):
    shifted = x - np.max(x, axis=axis, keepdims=True)  # exp never overflows after the shift
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _keep_output_and_axis(out, x, *, axis):
    return out, axis


# VJP derived in docs/book/02-primitives.md#vjp-log_softmax
_log_softmax = Primitive(
    "log_softmax",
    vjp=lambda g, res, needs: (g - exp(res[0]) * sum(g, axis=res[1], keepdims=True),),
    impl=_log_softmax_impl,
    keep=_keep_output_and_axis,
)
# VJP derived in docs/book/02-primitives.md#vjp-softmax
_softmax = Primitive(
    "softmax",
    vjp=lambda g, res, needs: (res[0] * (g - sum(g * res[0], axis=res[1], keepdims=True)),),
    impl=lambda x, *, axis: np.exp(_log_softmax_impl(x, axis=axis)),
    keep=_keep_output_and_axis,
)


def log_softmax(x, axis=-1):
    """``log(softmax(x))`` computed stably (shifted by the max) along ``axis``."""
    return _log_softmax(x, axis=axis)


def softmax(x, axis=-1):
    """``exp(x) / sum(exp(x))`` along ``axis``, computed stably; entries sum to 1."""
    return _softmax(x, axis=axis)


# ----------------------------------------------------------------------------- operators on Nodes


def _compared(x):
    """The array a comparison reads: a Node's value (comparisons are not differentiable;
    under a static graph the result would be frozen at the trace, so comparing there raises)."""
    return concrete_value(x, "comparing traced values (x > 0, ==, ...)")


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
