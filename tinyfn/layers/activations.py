"""Parameter-free layers: activations, reshaping, dropout; the GELU as one fused primitive."""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import ops, random
from ..autodiff import Primitive
from ..kernels import gelu as gelu_kernels
from ..random import _check_real
from .base import Layer, _shape_str, checked_axis, checked_input, checked_no_params, checked_shape

__all__ = ["gelu", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Softplus", "GELU", "Softmax", "LogSoftmax", "Identity", "Flatten", "Dropout"]


def _elementwise(name: str, fn, axis: int | None = None) -> Layer:
    """A parameter-free layer applying ``fn`` to its input; output shape = input shape. With
    an ``axis``, ``init`` checks that the input has it."""

    def init(key, input_shape):
        shape = checked_shape(name, input_shape)
        if axis is not None and not -len(shape) <= axis < len(shape):
            raise ValueError(f"{name}: expected an input with an axis {axis}, found shape {_shape_str(shape)}")
        return shape, {}

    def apply(params, x, *, key=None, train=False):
        checked_no_params(name, params)
        return fn(checked_input(name, x, min_ndim=0))

    return Layer(init, apply, name=name)


def Relu() -> Layer:
    """max(x, 0) elementwise."""
    return _elementwise("relu", ops.relu)


def LeakyRelu(slope: float = 0.01) -> Layer:
    """x where positive, slope * x elsewhere."""
    slope = _check_real("LeakyRelu: slope", slope)
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
    axis = checked_axis("Softmax", axis)
    return _elementwise("softmax", lambda x: ops.softmax(x, axis), axis)


def LogSoftmax(axis: int = -1) -> Layer:
    """Log-softmax along ``axis``."""
    axis = checked_axis("LogSoftmax", axis)
    return _elementwise("log_softmax", lambda x: ops.log_softmax(x, axis), axis)


# ----------------------------------------------------------------------------- the GELU primitive
# ``gelu(x) = x Phi(x)`` as one primitive whose forward also returns the derivative
# ``gelu'(x)``, so that its VJP is one multiplication, ``g * gelu'(x)``. On plain float32 and
# float64 arrays one kernel pass computes both (:mod:`tinyfn.kernels.gelu`); on traced values
# of an outer differentiation (and other dtypes) the same formulas run in tinyfn operations,
# which the outer level records, so the derivative is differentiable again, to any order.


def _gelu_in_ops(x, approximate: bool) -> tuple:
    """``(gelu(x), gelu'(x))`` in tinyfn operations (Python-float constants keep float32)."""
    if approximate:
        c = math.sqrt(2 / math.pi)
        th = ops.tanh(c * (x + 0.044715 * x * x * x))
        cdf = 0.5 * (1 + th)  # the tanh form's Phi
        return x * cdf, cdf + 0.5 * x * (1 - th * th) * (c * (1 + 3 * 0.044715 * x * x))
    cdf = 0.5 * (1 + ops.erf(x * (1 / math.sqrt(2))))
    return x * cdf, cdf + x * ops.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))


def _on_kernels(x) -> bool:
    return type(x) is np.ndarray and x.dtype in (np.float32, np.float64)


def _gelu_forward(x, *, approximate):  # the output, and the derivative as the residual
    return gelu_kernels.gelu(x, approximate) if _on_kernels(x) else _gelu_in_ops(x, approximate)


def _gelu_impl(x, *, approximate):
    return gelu_kernels.gelu(x, approximate)[0] if _on_kernels(x) else _gelu_in_ops(x, approximate)[0]


# VJP derived in docs/book/07-sequences.md#vjp-gelu
_gelu = Primitive("gelu", _gelu_forward, lambda g, derivative, needs: (g * derivative,), impl=_gelu_impl)


def gelu(x, approximate: bool = False):
    """The Gaussian error linear unit ``x * Phi(x)``, elementwise: an array shaped like ``x``.

    Exact (``Phi`` the standard normal CDF, ``(1 + erf(x / sqrt 2)) / 2``) or, with
    ``approximate=True``, the tanh form ``(1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2``
    (PyTorch's ``approximate="tanh"``). The same function as :func:`tinyfn.ops.gelu`, as one
    primitive: a kernel computes the output and the derivative in one pass (float32 to within
    a few units in the last place of the formula, float64 with ``math.erf``), and the VJP
    multiplies by the saved derivative. Differentiable to any order.
    """
    return _gelu(x, approximate=bool(approximate))


def GELU(approximate: bool = False) -> Layer:
    """The Gaussian error linear unit ``x * Phi(x)`` (exact with erf, or the tanh form with
    ``approximate=True``; see :func:`gelu`)."""
    return _elementwise("gelu", lambda x: gelu(x, approximate))


def Identity() -> Layer:
    """Returns its input unchanged."""
    return _elementwise("identity", lambda x: x)


def Flatten() -> Layer:
    """Reshape ``(batch, d1, d2, ...)`` to ``(batch, d1 * d2 * ...)``."""

    def init(key, input_shape):
        shape = checked_shape("Flatten", input_shape, min_ndim=1)
        return (shape[0], math.prod(shape[1:])), {}

    def apply(params, x, *, key=None, train=False):
        checked_no_params("Flatten", params)
        shape = checked_input("Flatten", x).shape
        return ops.reshape(x, (shape[0], math.prod(shape[1:])))  # not -1: an empty batch has no size to infer

    return Layer(init, apply, name="flatten")


def Dropout(rate: float) -> Layer:
    """Randomly zero a fraction ``rate`` of the inputs during training.

    ``rate`` is the probability of *dropping* a unit (as in PyTorch and Keras). When
    ``train=True`` it needs a ``key``; kept units are scaled by ``1 / (1 - rate)`` so the
    expected output equals the input. When ``train=False`` it is the identity. Works on
    any input shape (dense features or conv feature maps).
    """
    if not isinstance(rate, numbers.Real) or isinstance(rate, bool):
        raise TypeError(f"Dropout: rate must be a number in [0, 1), found {rate!r}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"Dropout: rate must be in [0, 1), found {rate}")

    def init(key, input_shape):
        return checked_shape("Dropout", input_shape), {}

    def apply(params, x, *, key=None, train=False):
        checked_no_params("Dropout", params)
        checked_input("Dropout", x, min_ndim=0)
        if not train or rate == 0.0:
            return x
        if key is None:
            raise ValueError("Dropout: apply(..., train=True) needs a PRNG key (key=...) to draw the mask, found key=None")
        keep = random.bernoulli(key, 1.0 - rate, x.shape)
        return x * (keep * np.asarray(1.0 / (1.0 - rate), dtype=x.dtype))

    return Layer(init, apply, name="dropout")
