"""Parameter-free layers: activations, reshaping, dropout."""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import ops, random
from ..random import _check_real
from .base import Layer, _shape_str, checked_axis, checked_input, checked_no_params, checked_shape

__all__ = ["Relu", "LeakyRelu", "Sigmoid", "Tanh", "Softplus", "GELU", "Softmax", "LogSoftmax", "Identity", "Flatten", "Dropout"]


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


def GELU(approximate: bool = False) -> Layer:
    """The Gaussian error linear unit ``x * Phi(x)`` (exact with erf, or the tanh form with
    ``approximate=True``; see :func:`tinyfn.ops.gelu`)."""
    return _elementwise("gelu", lambda x: ops.gelu(x, approximate))


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
