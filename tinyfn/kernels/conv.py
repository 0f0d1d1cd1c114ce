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
dtype and cached on disk); the products are numpy's. Each function splits its batch over the
cores (:func:`~tinyfn.kernels.threads.over_batch`), and each thread runs all the steps of the
function on its slice: im2col, the products and the bias for the forward pass, the products
and col2im for the input's VJP. Arguments ``stride``, ``padding`` and
``dilation`` are ``(rows, cols)`` pairs of ints; ``padding`` is the number of zeros added on
each side.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .threads import over_batch

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


@njit(cache=True, nogil=True)
def _im2col(x, cols, geometry):
    kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w = geometry
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    step = np.uint64(sw)
    for n in range(x.shape[0]):
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


@njit(cache=True, nogil=True)
def _col2im(cols, x, geometry):
    kh, kw, sh, sw, ph, pw, dh, dw, out_h, out_w = geometry
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    step = np.uint64(sw)
    for n in range(x.shape[0]):
        x[n] = 0  # zeroed here, just before the adds, while it is in cache
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
    x, cols, geometry = _unfolding(x, kernel, stride, padding, dilation, out_size)
    over_batch(len(x), lambda start, stop: _im2col(x[start:stop], cols[start:stop], geometry))
    return cols


def _unfolding(x, kernel, stride, padding, dilation, out_size) -> tuple:
    """What :func:`_im2col` needs for ``x``: ``x`` made contiguous, an empty ``cols`` of shape
    ``(N, C*KH*KW, OH*OW)`` and the geometry tuple."""
    x = contiguous(x)
    cols = np.empty((x.shape[0], x.shape[1] * kernel[0] * kernel[1], out_size[0] * out_size[1]), dtype=x.dtype)
    return x, cols, _geometry(kernel, stride, padding, dilation, out_size)


def col2im(cols, input_shape, kernel, stride, padding, dilation, out_size) -> np.ndarray:
    """The adjoint of :func:`im2col`: add every column back onto its receptive field.

    ``cols`` is ``(N, C*KH*KW, OH*OW)``; returns a C-contiguous array of ``input_shape =
    (N, C, H, W)`` where each input pixel holds the sum of the entries of ``cols`` that
    :func:`im2col` would have copied from it (entries that fall in the padding are dropped).
    """
    cols = contiguous(cols)
    x = np.empty(input_shape, dtype=cols.dtype)
    geometry = _geometry(kernel, stride, padding, dilation, out_size)
    over_batch(x.shape[0], lambda start, stop: _col2im(cols[start:stop], x[start:stop], geometry))
    return x


def _grouped(w, groups: int) -> np.ndarray:
    """The weight ``(OC, C // groups, KH, KW)`` as ``(1, G, OC/G, K)`` matrices, ``K = C/G * KH * KW``:
    one per group, with a leading axis of length 1 to broadcast over a batch."""
    return w.reshape(1, groups, w.shape[0] // groups, -1)


def _by_group(a, groups: int) -> np.ndarray:
    """``(N, R, P)`` as ``(N, G, R/G, P)``: each sample's rows split into the groups' blocks."""
    return a.reshape(a.shape[0], groups, a.shape[1] // groups, a.shape[2])


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
    x, cols, geometry = _unfolding(x, kernel, stride, padding, dilation, out_size)
    y = np.empty((len(x), w.shape[0], *out_size), dtype=np.result_type(x, w))

    def convolve(start, stop):
        _im2col(x[start:stop], cols[start:stop], geometry)
        _products_plus_bias(cols[start:stop], w, b, groups, y[start:stop])

    over_batch(len(x), convolve)
    return y, cols


def _products_plus_bias(cols, w, b, groups, y) -> None:
    """``y[n] = w @ cols[n] + b`` per group, written into ``y`` ``(N, OC, OH, OW)``."""
    # (1, G, OC/G, K) @ (N, G, K, P) -> (N, G, OC/G, P): one BLAS product per sample and group.
    np.matmul(_grouped(w, groups), _by_group(cols, groups), out=_by_group(y.reshape(y.shape[0], y.shape[1], y.shape[2] * y.shape[3]), groups))
    if b is not None:
        y += b.reshape(-1, 1, 1)


def conv2d_from_cols(cols, w, b, groups, out_size) -> np.ndarray:
    """The matrix-product half of :func:`conv2d`: ``cols`` ``(N, C*KH*KW, OH*OW)`` from
    :func:`im2col` and ``w`` ``(OC, C // groups, KH, KW)`` give ``y`` ``(N, OC, OH, OW)``."""
    y = np.empty((cols.shape[0], w.shape[0], *out_size), dtype=np.result_type(cols, w))
    over_batch(cols.shape[0], lambda start, stop: _products_plus_bias(cols[start:stop], w, b, groups, y[start:stop]))
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
    g = _by_group(g.reshape(n, oc, oh * ow), groups)
    # (1, G, K, OC/G) @ (N, G, OC/G, P) -> (N, G, K, P), the rows of cols in group order.
    w_t = _grouped(w, groups).transpose(0, 1, 3, 2)
    dcols = np.empty((n, cg * kh * kw * groups, oh * ow), dtype=np.result_type(g, w))
    dx = np.empty(input_shape, dtype=dcols.dtype)
    geometry = _geometry((kh, kw), stride, padding, dilation, (oh, ow))

    def spread_back(start, stop):
        np.matmul(w_t, g[start:stop], out=_by_group(dcols[start:stop], groups))
        _col2im(dcols[start:stop], dx[start:stop], geometry)

    over_batch(n, spread_back)
    return dx


def conv2d_weight_vjp(g, cols, w_shape, groups) -> np.ndarray:
    """Cotangent of a convolution's weight.

    Args:
      g: cotangent of the output ``(N, OC, OH, OW)``.
      cols: the forward pass's im2col matrix ``(N, C*KH*KW, OH*OW)``.
      w_shape: ``(OC, C // groups, KH, KW)``.

    Returns ``dw`` of shape ``w_shape``: ``sum_n g[n] @ cols[n].T`` per group.
    """
    n, oc = g.shape[:2]
    g = _by_group(g.reshape(n, oc, g.shape[2] * g.shape[3]), groups)
    cols_t = _by_group(cols, groups).transpose(0, 1, 3, 2)
    per_sample = np.empty((n, groups, oc // groups, cols_t.shape[3]), dtype=np.result_type(g, cols))
    over_batch(n, lambda start, stop: np.matmul(g[start:stop], cols_t[start:stop], out=per_sample[start:stop]))
    return per_sample.sum(axis=0).reshape(w_shape)
