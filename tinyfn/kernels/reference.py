"""Plain-numpy reference implementations of the kernels, written for clarity, not speed.

Each function computes the same thing as its fast counterpart in :mod:`tinyfn.kernels`
by the most direct route: loop over the kernel window positions (a handful), and let numpy
handle the whole batch at each position. The tests check the kernels against these for
float32 and float64 over many shapes, strides, paddings, dilations and groups.

:func:`gelu` is the formula evaluated one element at a time with Python's ``math`` in float64.

Conventions as in the kernels: NCHW arrays; ``stride``, ``padding``, ``dilation`` and
``window`` are ``(rows, cols)`` pairs of ints.
"""

from __future__ import annotations

import math

import numpy as np

from .conv import output_size

__all__ = [
    "conv2d",
    "conv2d_input_vjp",
    "conv2d_weight_vjp",
    "max_pool2d",
    "max_pool2d_vjp",
    "avg_pool2d",
    "avg_pool2d_vjp",
    "bias_relu",
    "bias_relu_vjp",
    "gelu",
]


def _window_slices(i, j, out_size, stride, dilation):
    """Index of the input pixels that window position ``(i, j)`` sees, for every output pixel."""
    rows = slice(i * dilation[0], i * dilation[0] + stride[0] * (out_size[0] - 1) + 1, stride[0])
    cols = slice(j * dilation[1], j * dilation[1] + stride[1] * (out_size[1] - 1) + 1, stride[1])
    return (slice(None), slice(None), rows, cols)


def _pad(x, padding, value=0.0):
    return np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2), constant_values=value)


def _crop(x_padded, padding):
    h, w = x_padded.shape[2:]
    return x_padded[:, :, padding[0] : h - padding[0], padding[1] : w - padding[1]]


def _out_size(shape, window, stride, padding, dilation=(1, 1)):
    return tuple(output_size(shape[2 + a], window[a], stride[a], padding[a], dilation[a]) for a in range(2))


def conv2d(x, w, b, stride, padding, dilation, groups):
    """``y[n, o, p, q] = b[o] + sum_{c, i, j} w[o, c, i, j] * x_padded[n, g(o)*C/G + c, p*sh + i*dh, q*sw + j*dw]``.

    x ``(N, C, H, W)``, w ``(OC, C/G, KH, KW)``, b ``(OC,)`` or None -> ``(N, OC, OH, OW)``.
    """
    n, c, h, width = x.shape
    oc, cg, kh, kw = w.shape
    out = _out_size(x.shape, (kh, kw), stride, padding, dilation)
    xg = _pad(x, padding).reshape(n, groups, cg, h + 2 * padding[0], width + 2 * padding[1])
    wg = w.reshape(groups, oc // groups, cg, kh, kw)
    y = np.zeros((n, groups, oc // groups) + out, dtype=np.result_type(x, w))
    for i in range(kh):
        for j in range(kw):
            patch = xg[(slice(None),) + _window_slices(i, j, out, stride, dilation)]
            y += np.einsum("ngcpq,goc->ngopq", patch, wg[:, :, :, i, j])
    y = y.reshape(n, oc, *out)
    return y if b is None else y + b.reshape(oc, 1, 1)


def conv2d_input_vjp(g, w, input_shape, stride, padding, dilation, groups):
    """Cotangent of conv2d's input: every output cotangent spread back over its window.

    g ``(N, OC, OH, OW)``, w ``(OC, C/G, KH, KW)`` -> array of ``input_shape``.
    """
    n, c, h, width = input_shape
    oc, cg, kh, kw = w.shape
    out = g.shape[2:]
    gg = g.reshape(n, groups, oc // groups, *out)
    wg = w.reshape(groups, oc // groups, cg, kh, kw)
    dx = np.zeros((n, groups, cg, h + 2 * padding[0], width + 2 * padding[1]), dtype=np.result_type(g, w))
    for i in range(kh):
        for j in range(kw):
            dx[(slice(None),) + _window_slices(i, j, out, stride, dilation)] += np.einsum(
                "ngopq,goc->ngcpq", gg, wg[:, :, :, i, j]
            )
    return _crop(dx.reshape(n, c, *dx.shape[3:]), padding)


def conv2d_weight_vjp(g, x, w_shape, stride, padding, dilation, groups):
    """Cotangent of conv2d's weight: output cotangent times the input each weight saw.

    g ``(N, OC, OH, OW)``, x ``(N, C, H, W)`` -> array of ``w_shape = (OC, C/G, KH, KW)``.
    """
    n, c, h, width = x.shape
    oc, cg, kh, kw = w_shape
    out = g.shape[2:]
    xg = _pad(x, padding).reshape(n, groups, cg, h + 2 * padding[0], width + 2 * padding[1])
    gg = g.reshape(n, groups, oc // groups, *out)
    dw = np.zeros((groups, oc // groups, cg, kh, kw), dtype=np.result_type(g, x))
    for i in range(kh):
        for j in range(kw):
            patch = xg[(slice(None),) + _window_slices(i, j, out, stride, dilation)]
            dw[:, :, :, i, j] = np.einsum("ngopq,ngcpq->goc", gg, patch)
    return dw.reshape(w_shape)


def _windows(x_padded, window, stride, out):
    """Stack of the window positions: shape ``(KH*KW, N, C, OH, OW)``."""
    return np.stack(
        [x_padded[_window_slices(i, j, out, stride, (1, 1))] for i in range(window[0]) for j in range(window[1])]
    )


def max_pool2d(x, window, stride, padding):
    """Maximum over each window, NaN if the window holds one. Returns ``(y, argmax)``.

    x ``(N, C, H, W)`` -> y ``(N, C, OH, OW)``; ``argmax`` holds, for each output pixel, the
    flat index ``h*W' + w`` of the winning pixel in the padded plane of width ``W' = W + 2*pw``:
    the window's last NaN if it holds one, else its first real maximum in row-major order
    (PyTorch's choice). Padding never wins, not even against real ``-inf`` values.
    """
    out = _out_size(x.shape, window, stride, padding)
    windows = _windows(_pad(x, padding, -np.inf), window, stride, out)
    real = _windows(_pad(np.ones(x.shape, dtype=bool), padding, False), window, stride, out)
    y = np.max(windows, axis=0)
    first_max = np.argmax(real & (windows == y), axis=0)  # "real &": padding ties with real -inf
    last_nan = len(windows) - 1 - np.argmax(np.isnan(windows[::-1]), axis=0)
    i, j = np.divmod(np.where(np.isnan(y), last_nan, first_max), window[1])
    rows = np.arange(out[0]).reshape(-1, 1) * stride[0] + i
    cols = np.arange(out[1]) * stride[1] + j
    return y, rows * (x.shape[3] + 2 * padding[1]) + cols


def max_pool2d_vjp(g, argmax, input_shape, padding):
    """Cotangent of max-pooling's input: each output cotangent goes to its window's winner."""
    n, c, h, width = input_shape
    dx = np.zeros((n * c, (h + 2 * padding[0]) * (width + 2 * padding[1])), dtype=g.dtype)
    rows = np.repeat(np.arange(n * c), g.shape[2] * g.shape[3])
    np.add.at(dx, (rows, argmax.reshape(-1)), g.reshape(-1))
    return _crop(dx.reshape(n, c, h + 2 * padding[0], width + 2 * padding[1]), padding)


def avg_pool2d(x, window, stride, padding):
    """Mean over each window, padding counted as zeros (PyTorch's ``count_include_pad=True``)."""
    out = _out_size(x.shape, window, stride, padding)
    return np.mean(_windows(_pad(x, padding), window, stride, out), axis=0)


def avg_pool2d_vjp(g, input_shape, window, stride, padding):
    """Cotangent of average pooling's input: each output cotangent shared over its window."""
    n, c, h, width = input_shape
    dx = np.zeros((n, c, h + 2 * padding[0], width + 2 * padding[1]), dtype=g.dtype)
    share = g / (window[0] * window[1])
    for i in range(window[0]):
        for j in range(window[1]):
            dx[_window_slices(i, j, g.shape[2:], stride, (1, 1))] += share
    return _crop(dx, padding)


def bias_relu(y, b):
    """``max(y + b, 0)`` with ``b`` ``(C,)`` added along axis 1 of ``y`` ``(N, C, ...)``."""
    return np.maximum(y + b.reshape((-1,) + (1,) * (y.ndim - 2)), 0)


def bias_relu_vjp(g, y):
    """``(dx, db)``: ``g`` where the output ``y`` is positive (0 elsewhere), and its sum per channel."""
    dx = np.where(y > 0, g, 0).astype(g.dtype)
    return dx, dx.sum(axis=tuple(a for a in range(y.ndim) if a != 1))


def gelu(x, approximate=False):
    """``(gelu(x), gelu'(x))`` in float64, one element at a time with ``math``: ``x Phi(x)``
    with ``Phi(x) = erfc(-x / sqrt 2) / 2`` (or ``sigmoid(2z)``, ``z = sqrt(2/pi) (x + 0.044715
    x^3)``, for the tanh form) and the derivative ``Phi(x) + x Phi'(x)``."""
    def one(v):
        if approximate:
            c = math.sqrt(2 / math.pi)
            z = c * (v + 0.044715 * v**3)
            s = 1 / (1 + math.exp(-2 * z)) if z >= 0 else math.exp(2 * z) / (1 + math.exp(2 * z))
            return v * s, s + v * s * (1 - s) * 2 * c * (1 + 3 * 0.044715 * v * v)
        cdf = 0.5 * math.erfc(-v / math.sqrt(2))
        return v * cdf, cdf + v * math.exp(-v * v / 2) / math.sqrt(2 * math.pi)

    values = [one(v) for v in np.asarray(x, np.float64).reshape(-1).tolist()]
    shape = np.shape(x)
    return tuple(np.array([pair[i] for pair in values], np.float64).reshape(shape) for i in range(2))
