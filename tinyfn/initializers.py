"""Weight initializers: ``init(key, shape, dtype) -> array``.

Fans follow the usual convention: a dense weight of shape ``(in, out)`` has
``fan_in = in`` and ``fan_out = out``; a convolution weight of shape
``(out_channels, in_channels_per_group, kh, kw)`` has ``fan_in = in_channels_per_group * kh * kw``
and ``fan_out = out_channels * kh * kw``.
"""

from __future__ import annotations

import math

import numpy as np

from . import random

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
    if len(shape) < 2:
        raise ValueError(f"fans need a weight of at least 2 dimensions, found shape {shape}")
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def zeros(key, shape, dtype=np.float32):
    """All zeros."""
    return np.zeros(shape, dtype)


def ones(key, shape, dtype=np.float32):
    """All ones."""
    return np.ones(shape, dtype)


def constant(value):
    """An initializer filling with ``value``."""
    return lambda key, shape, dtype=np.float32: np.full(shape, value, dtype)


def normal(stddev=0.01):
    """An initializer drawing from N(0, stddev^2)."""
    return lambda key, shape, dtype=np.float32: (stddev * random.normal(key, shape, np.float64)).astype(dtype)


def uniform(limit=0.05):
    """An initializer drawing from U(-limit, limit)."""
    return lambda key, shape, dtype=np.float32: random.uniform(key, shape, np.float64, -limit, limit).astype(dtype)


def glorot_uniform(key, shape, dtype=np.float32):
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010): keeps variance for tanh/sigmoid."""
    fan_in, fan_out = fans(shape)
    return uniform(math.sqrt(6.0 / (fan_in + fan_out)))(key, shape, dtype)


def glorot_normal(key, shape, dtype=np.float32):
    """N(0, 2 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    fan_in, fan_out = fans(shape)
    return normal(math.sqrt(2.0 / (fan_in + fan_out)))(key, shape, dtype)


def he_uniform(key, shape, dtype=np.float32):
    """U(-a, a) with a = sqrt(6 / fan_in) (He et al. 2015): keeps variance through ReLUs."""
    fan_in, _ = fans(shape)
    return uniform(math.sqrt(6.0 / fan_in))(key, shape, dtype)


def he_normal(key, shape, dtype=np.float32):
    """N(0, 2 / fan_in) (He et al. 2015), for ReLU networks."""
    fan_in, _ = fans(shape)
    return normal(math.sqrt(2.0 / fan_in))(key, shape, dtype)


def lecun_normal(key, shape, dtype=np.float32):
    """N(0, 1 / fan_in) (LeCun 1998)."""
    fan_in, _ = fans(shape)
    return normal(math.sqrt(1.0 / fan_in))(key, shape, dtype)
