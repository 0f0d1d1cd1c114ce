"""Special functions numpy does not have: the error function ``erf`` (for the exact GELU).

:func:`erf` is a Numba ufunc over ``math.erf`` (compiled lazily, once per dtype, cached on
disk); :func:`erf_reference` is the same function one Python float at a time, the slow
plain path the tests compare the kernel with.
"""

from __future__ import annotations

import math

import numpy as np
from numba import vectorize

__all__ = ["erf", "erf_reference"]


@vectorize(["float32(float32)", "float64(float64)"], cache=True)
def _erf(x):
    return math.erf(x)


def erf(x) -> np.ndarray:
    """``erf(x) = 2/sqrt(pi) * integral_0^x exp(-t^2) dt``, elementwise; float32 stays float32,
    anything else is computed in float64. Same shape as ``x``."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        x = x.astype(np.float64)
    return _erf(x)


def erf_reference(x) -> np.ndarray:
    """:func:`erf` computed with ``math.erf`` on each element (slow; for the tests)."""
    x = np.asarray(x)
    dtype = np.float32 if x.dtype == np.float32 else np.float64
    return np.array([math.erf(v) for v in x.reshape(-1).tolist()], dtype=dtype).reshape(x.shape)
