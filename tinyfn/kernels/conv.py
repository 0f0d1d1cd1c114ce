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


def _unsigned(*values) -> tuple:
    """Ints as numpy uint64 scalars, to pass as the kernels' geometry (see below)."""
    return tuple(np.uint64(v) for v in values)


# The two kernels work on a padded input, so every index they touch is in bounds. Their
# geometry arrives unsigned: Numba then knows that no index is negative and skips the
# wrap-around test it makes for negative indices, which lets LLVM vectorise the copies
# (2 to 3 times faster).


@njit(parallel=True, cache=True)
def _im2col(x, cols, kernel, stride, dilation, out_size):
    kh, kw = kernel
    out_h, out_w = out_size
    channels = np.uint64(x.shape[1])
    for n in prange(x.shape[0]):
        for c in range(channels):
            for i in range(kh):
                for j in range(kw):
                    row = (c * kh + i) * kw + j
                    for oh in range(out_h):
                        ih = oh * stride[0] + i * dilation[0]
                        for ow in range(out_w):
                            cols[n, row, oh * out_w + ow] = x[n, c, ih, ow * stride[1] + j * dilation[1]]


@njit(parallel=True, cache=True)
def _col2im(cols, x, kernel, stride, dilation, out_size):
    kh, kw = kernel
    out_h, out_w = out_size
    channels = np.uint64(x.shape[1])
    for n in prange(x.shape[0]):
        for c in range(channels):
            for i in range(kh):
                for j in range(kw):
                    row = (c * kh + i) * kw + j
                    for oh in range(out_h):
                        ih = oh * stride[0] + i * dilation[0]
                        for ow in range(out_w):
                            x[n, c, ih, ow * stride[1] + j * dilation[1]] += cols[n, row, oh * out_w + ow]


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
    x = pad(x, padding)
    n, c = x.shape[:2]
    cols = np.empty((n, c * kernel[0] * kernel[1], out_size[0] * out_size[1]), dtype=x.dtype)
    _im2col(x, cols, _unsigned(*kernel), _unsigned(*stride), _unsigned(*dilation), _unsigned(*out_size))
    return cols


def col2im(cols, input_shape, kernel, stride, padding, dilation, out_size) -> np.ndarray:
    """The adjoint of :func:`im2col`: add every column back onto its receptive field.

    ``cols`` is ``(N, C*KH*KW, OH*OW)``; returns an array of ``input_shape = (N, C, H, W)``
    where each input pixel holds the sum of the entries of ``cols`` that :func:`im2col`
    would have copied from it (entries that fall in the padding are dropped).
    """
    n, c, h, w = input_shape
    x = np.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), dtype=cols.dtype)
    _col2im(contiguous(cols), x, _unsigned(*kernel), _unsigned(*stride), _unsigned(*dilation), _unsigned(*out_size))
    return crop(x, padding)


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
