"""Fused elementwise kernels for the dense training step: one pass over memory each.

numpy evaluates ``param - lr * grad`` as two passes with a full-size temporary in between,
and ``g * (y > 0)`` as two passes with a boolean temporary. On the large weight matrices of
an MLP those passes are memory-bound, so doing the arithmetic in one loop saves real time.

The kernels take 1-D C-contiguous arrays (callers pass ``a.reshape(-1)`` views), so each
compiles once per dtype, lazily on first call, and is cached on disk. They run on one thread:
a parallel loop competes with BLAS's worker threads, which stay busy right after a matrix
product. :func:`sgd_update` and :func:`relu_vjp` wrap them with a plain-numpy fallback for
arrays the kernels do not take (small, other dtypes, non-contiguous, mixed dtypes); the tests
check kernel and fallback against each other.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["sgd_update", "relu_vjp"]


@njit(cache=True)
def _sgd_update_kernel(param, grad, lr):
    out = np.empty_like(param)
    for i in range(param.size):
        out[i] = param[i] - lr * grad[i]
    return out


@njit(cache=True)
def _relu_vjp_kernel(g, y):
    out = np.empty_like(g)
    for i in range(g.size):
        out[i] = g[i] if y[i] > 0 else 0
    return out


# Below this many elements numpy's two passes stay in cache and beat the cost of a kernel call.
_MIN_KERNEL_SIZE = 16384


def _kernel_ready(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` are large, C-contiguous, of one float dtype and one shape."""
    return (
        a.size >= _MIN_KERNEL_SIZE
        and a.dtype == b.dtype
        and a.dtype in (np.float32, np.float64)
        and a.shape == b.shape
        and a.flags.c_contiguous
        and b.flags.c_contiguous
    )


def sgd_update(param: np.ndarray, grad: np.ndarray, lr: float) -> np.ndarray:
    """``param - lr * grad`` as a new array of ``param``'s dtype and shape.

    ``lr`` is rounded to the parameter's dtype first, exactly as numpy does for a Python
    float, so the kernel and the numpy fallback give the same bits.
    """
    param, grad = np.asarray(param), np.asarray(grad)
    lr = param.dtype.type(lr)
    if _kernel_ready(param, grad):
        return _sgd_update_kernel(param.reshape(-1), grad.reshape(-1), lr).reshape(param.shape)
    return np.asarray(np.subtract(param, lr * grad, dtype=param.dtype))


def relu_vjp(g: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The cotangent of ``relu``'s input: ``g`` where the output ``y`` is positive, else 0."""
    if _kernel_ready(g, y):
        return _relu_vjp_kernel(g.reshape(-1), y.reshape(-1)).reshape(g.shape)
    return g * (y > 0)
