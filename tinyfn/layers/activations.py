"""Parameter-free layers: activations, reshaping, dropout."""

from __future__ import annotations

import math

import numpy as np

from .. import ops, random
from .base import Layer, checked_params

__all__ = ["Relu", "LeakyRelu", "Sigmoid", "Tanh", "Softplus", "GELU", "Softmax", "LogSoftmax", "Identity", "Flatten", "Dropout"]


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
