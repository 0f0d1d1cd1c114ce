"""The fused bias + ReLU that ends a convolution layer, and its VJP.

``relu(y + b)`` as separate numpy operations reads and writes the whole activation three
times and allocates twice; its VJP ``g * (y > 0)`` plus the bias gradient ``sum(g)`` reads it
three more times. Here each is one pass over the data.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .conv import contiguous
from .threads import over_batch

__all__ = ["bias_relu_", "bias_relu_vjp"]


@njit(cache=True, nogil=True)
def _bias_relu(y, b):
    n_batch, channels, size = y.shape
    for n in range(n_batch):
        for c in range(channels):
            for k in range(size):
                y[n, c, k] = max(y[n, c, k] + b[c], 0)


# fastmath lets the bias-gradient sum be reordered, and so vectorised.
@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def _bias_relu_vjp(g, y, dy, db_per_sample):
    n_batch, channels, size = g.shape
    for n in range(n_batch):
        for c in range(channels):
            total = g.dtype.type(0)
            for k in range(size):
                value = g[n, c, k] if y[n, c, k] > 0 else 0
                dy[n, c, k] = value
                total += value
            db_per_sample[n, c] = total


def bias_relu_(y, b) -> np.ndarray:
    """``y = max(y + b, 0)`` **in place** for ``y`` ``(N, C, ...)`` C-contiguous and ``b`` ``(C,)``; returns ``y``."""
    flat, b = y.reshape(y.shape[0], y.shape[1], int(np.prod(y.shape[2:]))), contiguous(b.astype(y.dtype, copy=False))
    over_batch(len(flat), lambda start, stop: _bias_relu(flat[start:stop], b))
    return y


def bias_relu_vjp(g, y):
    """Cotangents of ``y = max(x + b, 0)`` from the output ``y`` and its cotangent ``g`` (``(N, C, ...)``).

    Returns ``(dx, db)``: ``dx = g`` where ``y > 0`` and 0 elsewhere (shape of ``y``), and
    ``db = dx`` summed over every axis but 1 (shape ``(C,)``).
    """
    n, c, size = y.shape[0], y.shape[1], int(np.prod(y.shape[2:]))
    dx = np.empty(y.shape, dtype=y.dtype)
    db = np.empty((n, c), dtype=y.dtype)
    g, y_flat, dx_flat = contiguous(g.astype(y.dtype, copy=False)).reshape(n, c, size), y.reshape(n, c, size), dx.reshape(n, c, size)
    over_batch(n, lambda start, stop: _bias_relu_vjp(g[start:stop], y_flat[start:stop], dx_flat[start:stop], db[start:stop]))
    return dx, db.sum(axis=0)
