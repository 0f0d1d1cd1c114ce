"""2-D max and average pooling (NCHW) and their VJPs.

Max pooling has its own two Numba kernels: the forward pass records, for every output pixel,
the flat index of the input pixel that won (``argmax``), and the VJP sends each output
cotangent to that pixel. The forward kernel is compiled for each (window, stride) in use,
once per dtype, and cached on disk.

Which pixel wins is PyTorch's rule (``torch.nn.functional.max_pool2d`` with
``return_indices=True``, on CPU and CUDA alike): scanning the window in row-major order, a
pixel replaces the best so far if it is greater or if it is NaN. So:

* a window that holds a NaN outputs NaN, and its argmax is its *last* NaN;
* otherwise the first maximum wins ties;
* padding never wins. The scan starts at the window's first real pixel and the padding is
  ``-inf``, which is greater than nothing, so a window of real ``-inf`` values outputs
  ``-inf`` with its argmax at its first real pixel, and every output's cotangent lands on
  the real input. This needs a real pixel in every window: ``padding <= window // 2``.

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


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _total(a):
    """The sum of the entries of the C-contiguous array ``a``. Added in any order, so that
    LLVM vectorizes it; it is NaN if ``a`` holds a NaN (and may be NaN otherwise only when
    ``a`` holds infinities or sums overflow both ways)."""
    flat, total = a.reshape(a.size), a.dtype.type(0)
    for i in range(flat.size):  # (iterating over flat itself would not vectorize)
        total += flat[i]
    return total


@njit(cache=True, nogil=True)
def _window_winner(plane, top, left, window, padding):
    """``(value, flat index)`` of the winner of the window at ``(top, left)`` of a ``plane``
    padded by ``padding``, by the exact rule of the module docstring."""
    width = plane.shape[1]
    first_h, first_w = max(top, padding[0]), max(left, padding[1])  # the first real pixel
    best, best_index = plane[first_h, first_w], first_h * width + first_w
    for ih in range(top, top + window[0]):
        for iw in range(left, left + window[1]):
            if plane[ih, iw] > best or plane[ih, iw] != plane[ih, iw]:  # x != x: x is NaN
                best, best_index = plane[ih, iw], ih * width + iw
    return best, best_index


@njit(cache=True, nogil=True)
def _rescan(x, y, argmax, window, stride, padding, everywhere):
    """Redo by the exact rule the windows that the fast scan may have got wrong: all of them
    if ``everywhere``, else those whose maximum is ``-inf``."""
    for n in range(y.shape[0]):
        for c in range(y.shape[1]):
            for oh in range(y.shape[2]):
                for ow in range(y.shape[3]):
                    if everywhere or y[n, c, oh, ow] == -np.inf:
                        top, left = oh * stride[0], ow * stride[1]
                        y[n, c, oh, ow], argmax[n, c, oh, ow] = _window_winner(x[n, c], top, left, window, padding)


@functools.cache
def _max_pool2d_kernel(window: tuple, stride: tuple):
    """The max-pooling kernel for one window and stride.

    They are closure constants, so LLVM unrolls the window loops and turns the comparisons
    into branch-free code: about 7 times faster than with the window passed as an argument
    (a data-dependent branch per pixel). Numba caches closures like this one on disk, one
    entry per (window, stride, dtype). The kernel reads an input padded with ``-inf``, so
    every index it touches is in bounds.

    The scan is a plain ``>`` from the window's top-left pixel, which LLVM compiles to a
    ``maxss`` and a conditional move per pixel. That is the exact rule unless the window
    holds a NaN (``>`` skips it) or its maximum is ``-inf`` (the padding may win the tie).
    Both are rare and cheap to detect afterwards: a vectorized sum of the input is NaN if
    it holds a NaN, and a sum of the output is ``-inf`` or NaN if a maximum is ``-inf``;
    only then does :func:`_rescan` redo the windows concerned. (Testing each pixel for NaN
    in the scan would make it twice as slow; the two sums cost about a fifth of it.)
    """
    kh, kw = window
    sh, sw = stride

    @njit(cache=True, nogil=True)
    def max_pool2d_kernel(x, y, argmax, padding):
        n_batch, channels, _, width = x.shape
        out_h, out_w = y.shape[2:]
        input_total = _total(x)
        holds_nan = input_total != input_total  # then _rescan redoes every window: skip the scan
        for n in range(0 if holds_nan else n_batch):
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
        if holds_nan or not _total(y) > -np.inf:
            _rescan(x, y, argmax, window, stride, padding, holds_nan)

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
    ``h*W' + w`` of the winner in its *padded* input plane (of width ``W' = W + 2*pw``), which
    is always a real pixel. A window holding a NaN gives NaN and its last NaN; otherwise the
    first maximum in row-major order wins (PyTorch's rule, see the module docstring).
    ``padding`` must be at most half the ``window``.
    """
    if padding[0] > window[0] // 2 or padding[1] > window[1] // 2:
        raise ValueError(f"max_pool2d: padding {tuple(padding)} must be at most half the window {tuple(window)}")
    shape = pool_output_shape(x.shape, window, stride, padding)
    y = np.empty(shape, dtype=x.dtype)
    argmax = np.empty(shape, dtype=np.int32)
    kernel, x = _max_pool2d_kernel(tuple(window), tuple(stride)), pad(x, padding, -np.inf)
    padding = (int(padding[0]), int(padding[1]))
    over_batch(len(x), lambda start, stop: kernel(x[start:stop], y[start:stop], argmax[start:stop], padding))
    return y, argmax


def max_pool2d_vjp(g, argmax, input_shape, padding):
    """Cotangent of max pooling's input ``(N, C, H, W)``: each entry of ``g`` ``(N, C, OH, OW)``
    added at its ``argmax`` (from :func:`max_pool2d`)."""
    n, c, h, w = input_shape
    padded = (h + 2 * padding[0], w + 2 * padding[1])
    dx = np.empty((n, c, padded[0] * padded[1]), dtype=g.dtype)
    outputs = g.shape[2] * g.shape[3]  # not -1: numpy cannot infer a size from an empty batch
    g, argmax = contiguous(g).reshape(n, c, outputs), argmax.reshape(n, c, outputs)
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
    # g.shape[2] * g.shape[3], not -1: numpy cannot infer a size from an empty batch
    share = g.reshape(n * c, 1, g.shape[2] * g.shape[3]) / (window[0] * window[1])
    dcols = np.broadcast_to(share, (n * c, window[0] * window[1], share.shape[2]))
    return col2im(dcols, (n * c, 1, h, w), window, stride, padding, (1, 1), g.shape[2:]).reshape(input_shape)
