"""Weight initializers: ``init(key, shape, dtype) -> array``.

Fans follow the usual convention: a dense weight of shape ``(in, out)`` has
``fan_in = in`` and ``fan_out = out``; a convolution weight of shape
``(out_channels, in_channels_per_group, kh, kw)`` has ``fan_in = in_channels_per_group * kh * kw``
and ``fan_out = out_channels * kh * kw``.

Shapes are tuples of ints >= 0; the random initializers draw floating-point weights. A bad
argument raises ``TypeError`` or ``ValueError`` naming the initializer, what was expected and
what was found.
"""

from __future__ import annotations

import math

import numpy as np

from . import random
from .random import _as_dtype, _check_float_dtype, _check_real, _check_shape

__all__ = [
    "zeros",
    "ones",
    "constant",
    "normal",
    "uniform",
    "glorot_uniform",
    "glorot_normal",
    "he_uniform",
    "he_normal",
    "lecun_normal",
    "fans",
]


def fans(shape: tuple) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight shape (dense ``(in, out)`` or conv ``(out, in, kh, kw)``)."""
    return _fans("fans", shape)


def _fans(name: str, shape) -> tuple[int, int]:
    shape = _check_shape(f"{name}: shape", shape)
    if len(shape) < 2:
        raise ValueError(f"{name}: expected a weight shape of at least 2 dimensions, found {shape}")
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _root_over_fan(name: str, shape, numerator: float, fan_out_too: bool) -> float:
    """``sqrt(numerator / fan)`` for a weight of ``shape``: ``fan`` is its fan_in, or
    fan_in + fan_out when ``fan_out_too``. A weight with a zero fan has no such scale."""
    fan_in, fan_out = _fans(name, shape)
    fan = fan_in + fan_out if fan_out_too else fan_in
    if fan == 0:
        raise ValueError(f"{name}: expected a weight shape with a nonzero fan, found {tuple(shape)}")
    return math.sqrt(numerator / fan)


def _filled(name: str, value, shape, dtype) -> np.ndarray:
    return np.full(_check_shape(f"{name}: shape", shape), value, _as_dtype(f"{name}: dtype", dtype))


def _normal(name: str, stddev: float, key, shape, dtype) -> np.ndarray:
    shape = _check_shape(f"{name}: shape", shape)
    dtype = _check_float_dtype(f"{name}: dtype", dtype, choices=())  # drawn in float64, then cast
    return (stddev * random.normal(key, shape, np.float64)).astype(dtype)


def _uniform(name: str, limit: float, key, shape, dtype) -> np.ndarray:
    shape = _check_shape(f"{name}: shape", shape)
    dtype = _check_float_dtype(f"{name}: dtype", dtype, choices=())  # drawn in float64, then cast
    return random.uniform(key, shape, np.float64, -limit, limit).astype(dtype)


def zeros(key, shape, dtype=np.float32):
    """All zeros."""
    return _filled("zeros", 0, shape, dtype)


def ones(key, shape, dtype=np.float32):
    """All ones."""
    return _filled("ones", 1, shape, dtype)


def constant(value):
    """An initializer filling with ``value`` (a finite number)."""
    _check_real("constant: value", value)  # not converted: np.full keeps an int value exact
    return lambda key, shape, dtype=np.float32: _filled("constant", value, shape, dtype)


def normal(stddev=0.01):
    """An initializer drawing from N(0, stddev^2) (``stddev`` a finite number >= 0)."""
    stddev = _check_real("normal: stddev", stddev, 0.0)
    return lambda key, shape, dtype=np.float32: _normal("normal", stddev, key, shape, dtype)


def uniform(limit=0.05):
    """An initializer drawing from U(-limit, limit) (``limit`` a finite number >= 0)."""
    limit = _check_real("uniform: limit", limit, 0.0)
    return lambda key, shape, dtype=np.float32: _uniform("uniform", limit, key, shape, dtype)


def glorot_uniform(key, shape, dtype=np.float32):
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010): keeps variance for tanh/sigmoid."""
    return _uniform("glorot_uniform", _root_over_fan("glorot_uniform", shape, 6.0, True), key, shape, dtype)


def glorot_normal(key, shape, dtype=np.float32):
    """N(0, 2 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    return _normal("glorot_normal", _root_over_fan("glorot_normal", shape, 2.0, True), key, shape, dtype)


def he_uniform(key, shape, dtype=np.float32):
    """U(-a, a) with a = sqrt(6 / fan_in) (He et al. 2015): keeps variance through ReLUs."""
    return _uniform("he_uniform", _root_over_fan("he_uniform", shape, 6.0, False), key, shape, dtype)


def he_normal(key, shape, dtype=np.float32):
    """N(0, 2 / fan_in) (He et al. 2015), for ReLU networks."""
    return _normal("he_normal", _root_over_fan("he_normal", shape, 2.0, False), key, shape, dtype)


def lecun_normal(key, shape, dtype=np.float32):
    """N(0, 1 / fan_in) (LeCun 1998)."""
    return _normal("lecun_normal", _root_over_fan("lecun_normal", shape, 1.0, False), key, shape, dtype)
