"""2-D convolution (NCHW) as im2col + matrix product, and its two VJPs.

A convolution is a matrix product in disguise. :func:`im2col` copies every receptive field
of the input into a column of a matrix ``cols`` of shape ``(N, C*KH*KW, OH*OW)``; then
``y[n] = w.reshape(OC, C*KH*KW) @ cols[n]`` (BLAS does the arithmetic). Groups split the
channels: group ``g`` multiplies its slice of the weight with its slice of the rows of ``cols``.

The VJPs are matrix products too:

* weight: ``dw = sum_n g[n] @ cols[n].T``, reusing the ``cols`` saved by the forward pass;
* input:  ``dcols[n] = w.T @ g[n]``, then :func:`col2im` adds every column back onto the
  receptive field it came from. That map, cotangent of the output to cotangent of the input,
  *is* the transposed convolution, so :func:`conv2d_input_vjp` doubles as its forward pass.

Only :func:`im2col` and :func:`col2im` are Numba kernels (compiled on first use for each
dtype and cached on disk); the rest is numpy. Arguments ``stride``, ``padding`` and
``dilation`` are ``(rows, cols)`` pairs of ints; ``padding`` is the number of zeros added on
each side.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = [
    "output_size",
    "transposed_output_size",
    "im2col",
    "col2im",
    "conv2d",
    "conv2d_from_cols",
    "conv2d_input_vjp",
    "conv2d_weight_vjp",
]


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """Output length of a convolution or pooling window sliding along an axis of length ``size``."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def transposed_output_size(size, kernel, stride, padding, dilation=1, output_padding=0) -> int:
    """Output length of a transposed convolution: the input length of the matching convolution."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def contiguous(x: np.ndarray) -> np.ndarray:
    """``x`` as a C-contiguous, writable array (copied only if needed).

    The Numba kernels are compiled once per dtype for this one array type; a read-only or
    strided array would trigger another compilation.
    """
    if x.flags.c_contiguous and x.flags.writeable:
        return x
    return np.array(x, order="C")


def _geometry(*pairs) -> tuple:
    """``(rows, cols)`` pairs flattened into one tuple of Python ints, the kernels' geometry
    argument (plain ints, so that Numba compiles one version per dtype, not per int type)."""
    return tuple([int(v) for pair in pairs for v in pair])


# The kernels read and write the unpadded image: a window position that falls in the padding
# reads as zero (im2col) or is dropped (col2im). For each kernel offset, :func:`_inside` gives
# the range of output positions whose input lies inside the image, so the inner loops run over
# in-bounds indices only. Those indices are passed on unsigned: Numba then knows that no index
# is negative and skips the wrap-around test it makes for negative indices, which lets LLVM
# vectorise the copies (2 to 3 times faster).


@njit(cache=True)
def _inside(offset, stride, size, count):
    """``(lo, hi)``: the outputs ``o`` in ``[0, count)`` whose input ``o * stride + offset``
    lies in ``[0, size)`` are exactly ``lo <= o < hi``."""
    lo = 0 if offset >= 0 else (stride - 1 - offset) // stride
    last = size - 1 - offset  # the input index must satisfy o * stride <= last
    hi = 0 if last < 0 else min(count, last // stride + 1)
    lo = min(lo, count)
    return lo, max(lo, hi)


@njit(parallel=True, cache=True)
def _im2col(x, cols, geometry):
    kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w = geometry
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    step = np.uint64(sw)
    for n in prange(x.shape[0]):
        n = np.uint64(n)
        for c in range(np.uint64(channels)):
            for i in range(kh):
                oh_lo, oh_hi = _inside(i * dh - ph, sh, height, out_h)
                for j in range(kw):
                    ow_lo, ow_hi = _inside(j * dw - pw, sw, width, out_w)
                    row = np.uint64((c * kh + i) * kw + j)
                    for k in range(np.uint64(oh_lo * out_w)):  # rows of windows above the image
                        cols[n, row, k] = 0
                    for k in range(np.uint64(oh_hi * out_w), np.uint64(out_h * out_w)):  # and below it
                        cols[n, row, k] = 0
                    for oh in range(oh_lo, oh_hi):
                        start = np.uint64(oh * out_w)
                        for ow in range(np.uint64(ow_lo)):  # windows left of the image
                            cols[n, row, start + ow] = 0
                        for ow in range(np.uint64(ow_hi), np.uint64(out_w)):  # and right of it
                            cols[n, row, start + ow] = 0
                        ih = np.uint64(oh * sh + i * dh - ph)
                        first = np.uint64(ow_lo * sw + j * dw - pw)
                        inside = start + np.uint64(ow_lo)
                        for t in range(np.uint64(ow_hi - ow_lo)):
                            cols[n, row, inside + t] = x[n, c, ih, first + t * step]


@njit(parallel=True, cache=True)
def _col2im(cols, x, geometry):
    kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w = geometry
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    step = np.uint64(sw)
    for n in prange(x.shape[0]):
        x[n] = 0  # zeroed here, by the thread that then adds into it, while it is in cache
        n = np.uint64(n)
        for c in range(np.uint64(channels)):
            for i in range(kh):
                oh_lo, oh_hi = _inside(i * dh - ph, sh, height, out_h)
                for j in range(kw):
                    ow_lo, ow_hi = _inside(j * dw - pw, sw, width, out_w)
                    row = np.uint64((c * kh + i) * kw + j)
                    for oh in range(oh_lo, oh_hi):
                        ih = np.uint64(oh * sh + i * dh - ph)
                        first = np.uint64(ow_lo * sw + j * dw - pw)
                        inside = np.uint64(oh * out_w + ow_lo)
                        for t in range(np.uint64(ow_hi - ow_lo)):
                            x[n, c, ih, first + t * step] += cols[n, row, inside + t]


def im2col(x, kernel, stride, padding, dilation, out_size) -> np.ndarray:
    """Receptive fields of ``x`` as columns.

    Args:
      x: input ``(N, C, H, W)``.
      kernel, stride, padding, dilation: ``(rows, cols)`` pairs.
      out_size: ``(OH, OW)``, from :func:`output_size`.

    Returns ``cols`` of shape ``(N, C*KH*KW, OH*OW)`` with
    ``cols[n, (c*KH + i)*KW + j, oh*OW + ow] = x[n, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]``,
    zero where that index falls in the padding.
    """
    x = contiguous(x)
    n, c = x.shape[:2]
    cols = np.empty((n, c * kernel[0] * kernel[1], out_size[0] * out_size[1]), dtype=x.dtype)
    _im2col(x, cols, _geometry(kernel, stride, padding, dilation, out_size))
    return cols


def col2im(cols, input_shape, kernel, stride, padding, dilation, out_size) -> np.ndarray:
    """The adjoint of :func:`im2col`: add every column back onto its receptive field.

    ``cols`` is ``(N, C*KH*KW, OH*OW)``; returns a C-contiguous array of ``input_shape =
    (N, C, H, W)`` where each input pixel holds the sum of the entries of ``cols`` that
    :func:`im2col` would have copied from it (entries that fall in the padding are dropped).
    """
    x = np.empty(input_shape, dtype=cols.dtype)
    _col2im(contiguous(cols), x, _geometry(kernel, stride, padding, dilation, out_size))
    return x


def conv2d(x, w, b, stride, padding, dilation, groups):
    """Convolution (cross-correlation, as in every deep-learning framework) of NCHW images.

    Args:
      x: input ``(N, C, H, W)``.
      w: weight ``(OC, C // groups, KH, KW)``.
      b: bias ``(OC,)`` or None.
      stride, padding, dilation: ``(rows, cols)`` pairs of ints; groups: int dividing C and OC.

    Returns ``(y, cols)``: ``y`` of shape ``(N, OC, OH, OW)`` and the im2col matrix
    ``(N, C*KH*KW, OH*OW)``, which :func:`conv2d_weight_vjp` needs.
    """
    kernel = w.shape[2:]
    out_size = tuple(output_size(x.shape[2 + a], kernel[a], stride[a], padding[a], dilation[a]) for a in range(2))
    cols = im2col(x, kernel, stride, padding, dilation, out_size)
    return conv2d_from_cols(cols, w, b, groups, out_size), cols


def conv2d_from_cols(cols, w, b, groups, out_size) -> np.ndarray:
    """The matrix-product half of :func:`conv2d`: ``cols`` ``(N, C*KH*KW, OH*OW)`` from
    :func:`im2col` and ``w`` ``(OC, C // groups, KH, KW)`` give ``y`` ``(N, OC, OH, OW)``."""
    n = cols.shape[0]
    oc = w.shape[0]
    # (G, OC/G, K) @ (N, G, K, P) -> (N, G, OC/G, P): one BLAS product per sample and group.
    y = np.matmul(
        w.reshape(groups, oc // groups, -1),
        cols.reshape(n, groups, cols.shape[1] // groups, -1),
    ).reshape(n, oc, *out_size)
    if b is not None:
        y += b.reshape(oc, 1, 1)
    return y


def conv2d_input_vjp(g, w, input_shape, stride, padding, dilation, groups) -> np.ndarray:
    """Cotangent of a convolution's input, which is also the transposed convolution.

    Args:
      g: cotangent of the output ``(N, OC, OH, OW)``.
      w: weight ``(OC, C // groups, KH, KW)``.
      input_shape: ``(N, C, H, W)`` of the convolution's input.

    Returns the cotangent of the input, shape ``input_shape``.
    """
    n, oc, oh, ow = g.shape
    _, cg, kh, kw = w.shape
    # (G, K, OC/G) @ (N, G, OC/G, P) -> (N, G, K, P), the rows of cols in group order.
    w_t = w.reshape(groups, oc // groups, cg * kh * kw).transpose(0, 2, 1)
    dcols = np.matmul(w_t, g.reshape(n, groups, oc // groups, oh * ow))
    return col2im(dcols.reshape(n, -1, oh * ow), input_shape, (kh, kw), stride, padding, dilation, (oh, ow))


def conv2d_weight_vjp(g, cols, w_shape, groups) -> np.ndarray:
    """Cotangent of a convolution's weight.

    Args:
      g: cotangent of the output ``(N, OC, OH, OW)``.
      cols: the forward pass's im2col matrix ``(N, C*KH*KW, OH*OW)``.
      w_shape: ``(OC, C // groups, KH, KW)``.

    Returns ``dw`` of shape ``w_shape``: ``sum_n g[n] @ cols[n].T`` per group.
    """
    n, oc = g.shape[:2]
    k = cols.shape[1] // groups
    per_sample = np.matmul(
        g.reshape(n, groups, oc // groups, -1),
        cols.reshape(n, groups, k, -1).transpose(0, 1, 3, 2),
    )
    return per_sample.sum(axis=0).reshape(w_shape)
