"""2-D max and average pooling (NCHW) and their VJPs.

Max pooling has its own two Numba kernels: the forward pass records, for every output pixel,
the flat index of the input pixel that won (``argmax``), and the VJP sends each output
cotangent to that pixel. Padding is ``-inf``, so it never wins (the callers keep
``padding <= window // 2``, so every window holds at least one real pixel). The forward
kernel is compiled for each (window, stride) in use, once per dtype, and cached on disk.

Average pooling needs no kernel of its own: it is the mean of the rows of :func:`im2col` (one
channel at a time), and its VJP is :func:`col2im` of the cotangent shared over each window.
Padding counts as zeros in the mean (PyTorch's default ``count_include_pad=True``).

``window``, ``stride`` and ``padding`` are ``(rows, cols)`` pairs of ints.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from .conv import col2im, contiguous, im2col, output_size
from .threads import over_batch

__all__ = ["pool_output_shape", "max_pool2d", "max_pool2d_vjp", "avg_pool2d", "avg_pool2d_vjp"]


def pad(x, padding, value=0.0) -> np.ndarray:
    """``x`` ``(N, C, H, W)`` with ``padding = (rows, cols)`` entries of ``value`` added on each
    side of the image axes, as a new contiguous array (``x`` itself, made contiguous, when
    there is no padding)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return contiguous(x)
    n, c, h, w = x.shape
    padded = np.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype)
    padded[:, :, ph : ph + h, pw : pw + w] = x
    return padded


def crop(padded, padding) -> np.ndarray:
    """The inverse of :func:`pad`: the view of ``padded`` without its border."""
    ph, pw = padding
    h, w = padded.shape[2:]
    return padded[:, :, ph : h - ph, pw : w - pw]


def pool_output_shape(input_shape, window, stride, padding) -> tuple:
    """``(N, C, OH, OW)`` of a pooling of an ``(N, C, H, W)`` input."""
    n, c, h, w = input_shape
    return (n, c, output_size(h, window[0], stride[0], padding[0]), output_size(w, window[1], stride[1], padding[1]))


@functools.cache
def _max_pool2d_kernel(window: tuple, stride: tuple):
    """The max-pooling kernel for one window and stride.

    They are closure constants, so LLVM unrolls the window loops and turns the comparisons
    into branch-free vector code: about 7 times faster than with the window passed as an
    argument (a data-dependent branch per pixel). Numba caches closures like this one on
    disk, one entry per (window, stride, dtype). The kernel reads a padded input, so every
    index it touches is in bounds.
    """
    kh, kw = window
    sh, sw = stride

    @njit(cache=True, nogil=True)
    def max_pool2d_kernel(x, y, argmax):
        n_batch, channels, _, width = x.shape
        out_h, out_w = y.shape[2:]
        for n in range(n_batch):
            for c in range(channels):
                for oh in range(out_h):
                    for ow in range(out_w):
                        top, left = oh * sh, ow * sw
                        best, best_index = x[n, c, top, left], top * width + left
                        for ih in range(top, top + kh):
                            for iw in range(left, left + kw):
                                if x[n, c, ih, iw] > best:
                                    best, best_index = x[n, c, ih, iw], ih * width + iw
                        y[n, c, oh, ow] = best
                        argmax[n, c, oh, ow] = best_index

    return max_pool2d_kernel


@njit(cache=True, nogil=True)
def _max_pool2d_vjp(g, argmax, dx):
    n_batch, channels, size = g.shape
    for n in range(n_batch):
        dx[n] = 0  # zeroed here, just before the adds, while it is in cache
        for c in range(channels):
            for k in range(size):
                dx[n, c, argmax[n, c, k]] += g[n, c, k]


def max_pool2d(x, window, stride, padding):
    """Maximum over each window of ``x`` ``(N, C, H, W)``.

    Returns ``(y, argmax)``, both ``(N, C, OH, OW)``: the maxima and, for each, the flat index
    ``h*W' + w`` of the winner in its *padded* input plane (of width ``W' = W + 2*pw``); on
    ties the first one in row-major order wins.
    """
    shape = pool_output_shape(x.shape, window, stride, padding)
    y = np.empty(shape, dtype=x.dtype)
    argmax = np.empty(shape, dtype=np.int32)
    kernel, x = _max_pool2d_kernel(tuple(window), tuple(stride)), pad(x, padding, -np.inf)
    over_batch(len(x), lambda start, stop: kernel(x[start:stop], y[start:stop], argmax[start:stop]))
    return y, argmax


def max_pool2d_vjp(g, argmax, input_shape, padding):
    """Cotangent of max pooling's input ``(N, C, H, W)``: each entry of ``g`` added at its ``argmax``."""
    n, c, h, w = input_shape
    padded = (h + 2 * padding[0], w + 2 * padding[1])
    dx = np.empty((n, c, padded[0] * padded[1]), dtype=g.dtype)
    g, argmax = contiguous(g).reshape(n, c, -1), argmax.reshape(n, c, -1)
    over_batch(n, lambda start, stop: _max_pool2d_vjp(g[start:stop], argmax[start:stop], dx[start:stop]))
    return crop(dx.reshape(n, c, *padded), padding)


def avg_pool2d(x, window, stride, padding):
    """Mean over each window of ``x`` ``(N, C, H, W)`` (padding counts as zeros) -> ``(N, C, OH, OW)``."""
    n, c, h, w = x.shape
    shape = pool_output_shape(x.shape, window, stride, padding)
    cols = im2col(x.reshape(n * c, 1, h, w), window, stride, padding, (1, 1), shape[2:])
    return cols.mean(axis=1).reshape(shape)


def avg_pool2d_vjp(g, input_shape, window, stride, padding):
    """Cotangent of average pooling's input: each entry of ``g`` shared equally over its window."""
    n, c, h, w = input_shape
    share = g.reshape(n * c, 1, -1) / (window[0] * window[1])
    dcols = np.broadcast_to(share, (n * c, window[0] * window[1], share.shape[2]))
    return col2im(dcols, (n * c, 1, h, w), window, stride, padding, (1, 1), g.shape[2:]).reshape(input_shape)
