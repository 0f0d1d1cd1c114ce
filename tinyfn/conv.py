"""Convolutional networks: differentiable conv, pooling and batch-norm primitives, and their layers.

Images are NCHW: ``(batch, channels, height, width)``. Each operation is a
:class:`~tinyfn.autodiff.Primitive` whose forward pass runs the Numba kernels in
:mod:`tinyfn.kernels` and whose hand-written VJP calls primitives again, so every operation
here can be differentiated to any order:

=====================  ===================================  ==========================================
function               shapes                               VJP
=====================  ===================================  ==========================================
``conv2d``             x (N,C,H,W), w (OC,C/G,KH,KW), b     conv_transpose2d of g; correlation of x
                                                            with g; sum of g
``conv_transpose2d``   x (N,C,H,W), w (C,OC/G,KH,KW), b     conv2d of g; correlation of g with x;
                                                            sum of g
``max_pool2d``         x (N,C,H,W)                          g scattered to each window's winner
``avg_pool2d``         x (N,C,H,W)                          g shared over each window
``global_avg_pool2d``  x (N,C,H,W) -> (N,C)                 g / (H*W) everywhere
``batch_norm``         x (N,C,...) or (N,C), gamma, beta    the batch-statistics formula, in ops
=====================  ===================================  ==========================================

``conv2d(..., activation="relu")`` (and ``Conv2D(..., activation="relu")``) fuses the bias
and a ReLU into the convolution's last pass.

Arguments that come in pairs (``kernel_size``, ``stride``, ``padding``, ``dilation``,
``window``) take an int (the same for rows and columns) or a ``(rows, cols)`` pair.

The layers at the end (:func:`Conv2D`, :func:`ConvTranspose2D`, :func:`MaxPool2D`,
:func:`AvgPool2D`, :func:`GlobalAvgPool2D`, :func:`BatchNorm`) follow :mod:`tinyfn.layers`:
``init(key, input_shape) -> (output_shape, params)`` (plus ``state`` for BatchNorm) with
``-1`` allowed for the batch size, and ``apply(params, x, *, key=None, train=False)``.
"""

from __future__ import annotations

import numpy as np

from . import initializers, kernels, ops, tree
from .autodiff import Primitive, is_traced, primal_value
from .layers.base import Layer, checked_axis, checked_input, checked_no_params, checked_params, checked_shape
from .random import _check_int, _check_real, _is_int

__all__ = [
    "conv_padding",
    "conv2d_output_shape",
    "conv_transpose2d_output_shape",
    "conv2d",
    "conv_transpose2d",
    "max_pool2d",
    "avg_pool2d",
    "global_avg_pool2d",
    "batch_norm",
    "batch_moments",
    "Conv2D",
    "ConvTranspose2D",
    "MaxPool2D",
    "AvgPool2D",
    "GlobalAvgPool2D",
    "BatchNorm",
]


def _pair(value, name: str, minimum: int = 1) -> tuple[int, int]:
    """``value`` (an int or a pair of ints, each >= ``minimum``) as a ``(rows, cols)`` tuple."""
    if type(value) is tuple and len(value) == 2 and type(value[0]) is type(value[1]) is int and min(value) >= minimum:
        return value  # already a checked pair: what layers pass on every call
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value) if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(_is_int(v) and v >= minimum for v in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, found {value!r}")
    return int(pair[0]), int(pair[1])


def _groups(where: str, groups) -> int:
    """``groups`` as an int >= 1; a TypeError or ValueError naming ``where`` otherwise."""
    return _check_int(f"{where}: groups", groups, 1)


def conv_padding(padding, kernel_size, dilation=1) -> tuple[int, int]:
    """Zeros added on each side, as a ``(rows, cols)`` pair, from a layer's ``padding`` argument.

    ``padding`` is an int, a pair, ``"valid"`` (no padding) or ``"same"``: half the dilated
    kernel on each side, so the output has ``ceil(size / stride)`` pixels along each axis
    (the input's size at stride 1). ``"same"`` needs an odd dilated kernel size, because the
    padding is symmetric; an even one raises ValueError.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0
        if padding != "same":
            raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', found {padding!r}")
        kernel, dil = _pair(kernel_size, "kernel_size"), _pair(dilation, "dilation")
        spans = [d * (k - 1) for k, d in zip(kernel, dil)]
        if any(s % 2 for s in spans):
            raise ValueError(
                f"padding='same' needs an odd (dilated) kernel size to pad both sides equally, "
                f"found kernel_size {kernel} with dilation {dil}; pass explicit padding instead"
            )
        return spans[0] // 2, spans[1] // 2
    return _pair(padding, "padding", minimum=0)


def _shape_str(shape) -> str:
    return "(" + ", ".join("N" if d == -1 else str(d) for d in shape) + ")"


def _check_images(where: str, shape, channels: int) -> None:
    if len(shape) != 4 or shape[1] != channels:
        raise ValueError(f"{where}: expected NCHW input (N, {channels}, H, W), found shape {_shape_str(shape)}")


def conv2d_output_shape(input_shape, w_shape, stride=1, padding=0, dilation=1, groups=1) -> tuple:
    """Output shape ``(N, OC, OH, OW)`` of :func:`conv2d`, or a ValueError naming the problem.

    ``input_shape`` is ``(N, C, H, W)`` (N may be -1), ``w_shape`` ``(OC, C // groups, KH, KW)``;
    the other arguments as in :func:`conv2d`.
    """
    if len(w_shape) != 4:
        raise ValueError(f"conv2d: expected a weight (OC, C/groups, KH, KW), found shape {tuple(w_shape)}")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    padding = conv_padding(padding, w_shape[2:], dilation)
    oc, cg, kh, kw = w_shape
    groups = _groups("conv2d", groups)
    if oc % groups:
        raise ValueError(f"conv2d: groups={groups} must divide the {oc} output channels")
    where = f"conv2d with weight {tuple(w_shape)} and groups={groups}"
    _check_images(where, input_shape, cg * groups)
    n, _, h, w = input_shape
    out = tuple(
        kernels.output_size(size, k, s, p, d) for size, k, s, p, d in zip((h, w), (kh, kw), stride, padding, dilation)
    )
    if min(out) < 1:
        span = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
        raise ValueError(
            f"{where}: input {_shape_str(input_shape)} padded by {padding} is smaller than the "
            f"(dilated) kernel {span}; the output would be {_shape_str((n, oc) + out)}"
        )
    return (n, oc) + out


def _promote(*arrays):
    """The arrays (None passes through) converted to their common float dtype; a TypeError
    if they are not arrays of real numbers (the primitive calling this adds its name)."""
    dtype = np.result_type(*[a for a in arrays if a is not None], np.float32)
    if dtype.kind != "f":
        raise TypeError(f"expected arrays of real numbers, found dtype {dtype}")
    return [None if a is None else np.asarray(a, dtype=dtype) for a in arrays]


# ----------------------------------------------------------------------------- convolution
# Three primitives, each linear in each of its arguments, whose VJPs are one another. With
# ``corr(x, g)`` the correlation of a convolution's input with its output's cotangent (the
# gradient with respect to the weight, ``_conv2d_weight_grad``):
#
#   y  = conv2d(x, w) + b            dx = conv_transpose2d(g, w)    dw = corr(x, g)   db = sum of g
#   y  = conv_transpose2d(x, w) + b  dx = conv2d(g, w)              dw = corr(g, x)   db = sum of g
#   dw = corr(x, g)                  dx = conv_transpose2d(g, ct)   dg = conv2d(x, ct)
#
# So every derivative of a convolution, of any order, is a convolution again. All three take
# the same geometry keywords: ``stride``, ``padding``, ``dilation`` (checked pairs) and ``groups``.
#
# The functions below run the kernels on plain arrays.


def _convolve(x, w, b, *, relu, stride, padding, dilation, groups):
    """``conv2d`` on plain arrays: ``(y, cols)``, with ``cols`` the im2col matrix of ``x``,
    which the weight's VJP can reuse."""
    x, w, b = _promote(x, w, b)
    y, cols = kernels.conv2d(x, w, None if relu else b, stride, padding, dilation, groups)
    if relu:
        kernels.bias_relu_(y, np.zeros(y.shape[1], y.dtype) if b is None else b)
    return y, cols


def _transposed_convolve(x, w, b, *, output_shape, stride, padding, dilation, groups):
    """``conv_transpose2d`` on plain arrays: the adjoint of the convolution by ``w``, plus ``b``."""
    x, w, b = _promote(x, w, b)
    y = kernels.conv2d_input_vjp(x, w, output_shape, stride, padding, dilation, groups)
    if b is not None:
        y += b.reshape(-1, 1, 1)
    return y


def _correlate(x, g, *, w_shape, stride, padding, dilation, groups, cols=None):
    """``corr(x, g)`` on plain arrays: the cotangent of the weight ``w_shape`` of a convolution
    of ``x`` whose output has cotangent ``g`` (summed over the batch). ``cols``: the im2col
    matrix of ``x``, when the convolution's forward pass kept it."""
    if cols is None:
        x, g = _promote(x, g)
        cols = kernels.im2col(x, w_shape[2:], stride, padding, dilation, g.shape[2:])
    return kernels.conv2d_weight_vjp(g, cols, w_shape, groups)


def _geometry(params: dict) -> dict:
    """The geometry keywords among a convolution primitive's params."""
    return {name: params[name] for name in ("stride", "padding", "dilation", "groups")}


def _conv2d_cropped(x, w, size, geometry):
    """``conv2d(x, w)`` (no bias) cut to its first ``size = (rows, cols)`` output pixels.

    A transposed convolution with ``output_padding >= stride`` (allowed when the dilation is
    larger) has rows at its end that no input pixel reaches: convolving its cotangent gives
    rows for them too, which belong to no input and are dropped.
    """
    y = _conv2d(x, w, None, relu=False, **geometry)
    if np.shape(y)[2:] != tuple(size):
        y = ops.getitem(y, (slice(None), slice(None), slice(0, size[0]), slice(0, size[1])))
    return y


def _conv2d_forward(x, w, b, *, relu, **geometry):
    if any(is_traced(a) for a in (x, w, b)):  # an outer level differentiates it too, and records it
        y, cols = _conv2d(x, w, b, relu=relu, **geometry), None
    else:
        y, cols = _convolve(x, w, b, relu=relu, **geometry)
    return y, (x, w, y if relu else None, cols, geometry)


# VJP derived in docs/book/05-convolutions.md#vjp-conv2d
def _conv2d_vjp(g, res, needs):
    # y = conv2d(x, w) + b, maybe followed by a ReLU, which g goes back through first. Then
    # dx = conv_transpose2d(g, w) (the adjoint of x -> conv2d(x, w)), dw = corr(x, g) and db = sum of g.
    x, w, relu_out, cols, geometry = res
    # Nothing traced above this VJP (a first-order gradient): the fused kernels may run.
    fused = cols is not None and not is_traced(g)
    db = None
    if relu_out is not None and fused:
        g, db = kernels.bias_relu_vjp(g, relu_out)  # the ReLU's VJP and the bias's sum in one pass
    elif relu_out is not None:
        g = ops.relu_backward(g, relu_out)
    if needs[2] and db is None:
        db = ops.sum(g, axis=(0, 2, 3))
    dw = None
    if needs[1] and fused:
        dw = _correlate(x, g, w_shape=np.shape(w), cols=cols, **geometry)  # reuses the forward's im2col of x
    elif needs[1]:
        dw = _conv2d_weight_grad(x, g, w_shape=np.shape(w), **geometry)
    dx = _conv_transpose2d(g, w, None, output_shape=np.shape(x), **geometry) if needs[0] else None
    return dx, dw, db if needs[2] else None


_conv2d = Primitive("conv2d", _conv2d_forward, _conv2d_vjp, impl=lambda *args, **params: _convolve(*args, **params)[0])


# VJP derived in docs/book/05-convolutions.md#vjp-conv_transpose2d
def _conv_transpose2d_vjp(g, res, needs):
    # y = conv_transpose2d(x, w) + b is the adjoint of u -> conv2d(u, w), so
    # <g, y> = <conv2d(g, w), x> + <sum of g, b>: the roles of input and cotangent exchanged.
    x, w, geometry = res
    if needs[0] and needs[1] and not any(is_traced(a) for a in (g, x, w)):
        dx, dw = _transposed_convolution_vjps(g, x, w, geometry)  # first order: the fused kernels
    else:
        dx = _conv2d_cropped(g, w, np.shape(x)[2:], geometry) if needs[0] else None
        dw = _conv2d_weight_grad(g, x, w_shape=np.shape(w), **geometry) if needs[1] else None
    return dx, dw, ops.sum(g, axis=(0, 2, 3)) if needs[2] else None


def _transposed_convolution_vjps(g, x, w, geometry):
    """``(conv2d(g, w), corr(g, x))`` on plain arrays, from one im2col of ``g`` (over x's size)."""
    g, x, w = _promote(g, x, w)
    cols = kernels.im2col(g, w.shape[2:], geometry["stride"], geometry["padding"], geometry["dilation"], x.shape[2:])
    dx = kernels.conv2d_from_cols(cols, w, None, geometry["groups"], x.shape[2:])
    return dx, _correlate(g, x, w_shape=w.shape, cols=cols, **geometry)


_conv_transpose2d = Primitive(
    "conv_transpose2d",
    vjp=_conv_transpose2d_vjp,
    impl=_transposed_convolve,
    keep=lambda out, x, w, b, **params: (x, w, _geometry(params)),
)


# VJP derived in docs/book/05-convolutions.md#vjp-conv2d_weight_grad
def _conv2d_weight_grad_vjp(ct, res, needs):
    # corr(x, g) is bilinear: <ct, corr(x, g)> = <conv2d(x, ct), g> = <x, conv_transpose2d(g, ct)>.
    x, g, geometry = res
    return (
        _conv_transpose2d(g, ct, None, output_shape=np.shape(x), **geometry) if needs[0] else None,
        _conv2d_cropped(x, ct, np.shape(g)[2:], geometry) if needs[1] else None,
    )


_conv2d_weight_grad = Primitive(
    "conv2d_weight_grad",
    vjp=_conv2d_weight_grad_vjp,
    impl=_correlate,
    keep=lambda out, x, g, **params: (x, g, _geometry(params)),
)
"""``_conv2d_weight_grad(x, g, w_shape=, stride=, padding=, dilation=, groups=)``: the
cotangent of the weight ``w_shape`` of ``conv2d(x, w)`` whose output has cotangent ``g``."""


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, activation=None):
    """2-D convolution (cross-correlation) of NCHW images, optionally followed by a ReLU.

    Args:
      x: input ``(N, C, H, W)``.
      w: weight ``(OC, C // groups, KH, KW)``.
      b: bias ``(OC,)`` or None.
      stride, dilation: int or ``(rows, cols)``, >= 1.
      padding: int, ``(rows, cols)``, ``"same"`` or ``"valid"`` (see :func:`conv_padding`).
      groups: split the channels into ``groups`` independent convolutions.
      activation: None, or ``"relu"`` for ``relu(conv2d(x, w, b))`` with the bias and the ReLU
        fused into one pass over the output: the same numbers as ``ops.relu(conv2d(...))``, faster.

    Returns ``(N, OC, OH, OW)`` with ``OH = (H + 2*ph - dh*(KH - 1) - 1) // sh + 1`` (same for W).
    """
    if activation not in (None, "relu"):
        raise ValueError(f"conv2d: activation must be None or 'relu', found {activation!r}")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    w_shape = np.shape(w)
    padding = conv_padding(padding, w_shape[2:4], dilation)
    conv2d_output_shape(np.shape(x), w_shape, stride, padding, dilation, groups)
    if b is not None and np.shape(b) != w_shape[:1]:
        raise ValueError(f"conv2d: expected a bias of shape {w_shape[:1]}, found {np.shape(b)}")
    return _conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups, relu=activation == "relu")


def conv_transpose2d_output_shape(input_shape, w_shape, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """Output shape ``(N, OC, OH, OW)`` of :func:`conv_transpose2d`, or a ValueError naming the problem.

    ``input_shape`` is ``(N, C, H, W)`` (N may be -1), ``w_shape`` ``(C, OC // groups, KH, KW)``.
    """
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding", minimum=0)
    output_padding, dilation = _pair(output_padding, "output_padding", minimum=0), _pair(dilation, "dilation")
    if len(w_shape) != 4:
        raise ValueError(f"conv_transpose2d: expected a weight (C, OC/groups, KH, KW), found shape {tuple(w_shape)}")
    c, ocg, kh, kw = w_shape
    groups = _groups("conv_transpose2d", groups)
    where = f"conv_transpose2d with weight {tuple(w_shape)} and groups={groups}"
    if c % groups:
        raise ValueError(f"{where}: groups must divide the {c} input channels")
    _check_images(where, input_shape, c)
    if any(op >= max(s, d) for op, s, d in zip(output_padding, stride, dilation)):
        raise ValueError(
            f"{where}: output_padding {output_padding} must be smaller than the stride {stride} or the dilation {dilation}"
        )
    n, _, h, w = input_shape
    out = tuple(
        kernels.transposed_output_size(size, k, s, p, d, op)
        for size, k, s, p, d, op in zip((h, w), (kh, kw), stride, padding, dilation, output_padding)
    )
    if min(out) < 1:
        raise ValueError(f"{where}: padding {padding} is too large for input {_shape_str(input_shape)}; the output would be {out}")
    return (n, ocg * groups) + out


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """Transposed 2-D convolution (sometimes called deconvolution), the VJP of :func:`conv2d`'s input.

    Args:
      x: input ``(N, C, H, W)``.
      w: weight ``(C, OC // groups, KH, KW)`` (PyTorch's layout: the weight of the convolution
        from OC to C channels that this op is the transpose of).
      b: bias ``(OC,)`` or None.
      stride, padding, dilation, groups: those of that convolution (``padding`` int or pair).
      output_padding: extra rows/columns at the bottom/right (< stride), to pick among the
        input sizes that a strided convolution maps to the same output size.

    Returns ``(N, OC, OH, OW)`` with ``OH = (H - 1)*sh - 2*ph + dh*(KH - 1) + oph + 1``.
    """
    out_shape = conv_transpose2d_output_shape(np.shape(x), np.shape(w), stride, padding, output_padding, dilation, groups)
    if b is not None and np.shape(b) != out_shape[1:2]:
        raise ValueError(f"conv_transpose2d: expected a bias of shape {out_shape[1:2]}, found {np.shape(b)}")
    return _conv_transpose2d(
        x, w, b,
        stride=_pair(stride, "stride"), padding=_pair(padding, "padding", minimum=0),
        dilation=_pair(dilation, "dilation"), groups=groups, output_shape=out_shape,
    )


# ----------------------------------------------------------------------------- pooling
# Each pooling's VJP is a primitive linear in the cotangent, whose own VJP is its transpose:
# max pooling scatters g to each window's winner, and a scatter's transpose is a gather;
# average pooling is linear, so its VJP is its transpose, whose transpose is average pooling.


def _pool_geometry(name, window, stride, padding) -> tuple:
    """Checked ``(window, stride, padding)`` pairs of a pooling (the stride defaults to the window)."""
    window = _pair(window, "window")
    stride = window if stride is None else _pair(stride, "stride")
    padding = _pair(padding, "padding", minimum=0)
    if padding[0] > window[0] // 2 or padding[1] > window[1] // 2:
        raise ValueError(f"{name}: padding {padding} must be at most half the window {window}")
    return window, stride, padding


def _pool_config(name, input_shape, window, stride, padding):
    """Checked ``(window, stride, padding)`` pairs and the output shape of a pooling."""
    window, stride, padding = _pool_geometry(name, window, stride, padding)
    if len(input_shape) != 4:
        raise ValueError(f"{name}: expected NCHW input (N, C, H, W), found shape {_shape_str(input_shape)}")
    out = kernels.pool_output_shape(input_shape, window, stride, padding)
    if min(out[2:]) < 1:
        raise ValueError(f"{name}: input {_shape_str(input_shape)} padded by {padding} is smaller than the window {window}")
    return (window, stride, padding), out


def _max_pool(x, *, window, stride, padding):
    """Max pooling on plain arrays: ``(y, argmax)`` (see :func:`tinyfn.kernels.max_pool2d`)."""
    (x,) = _promote(x)
    return kernels.max_pool2d(x, window, stride, padding)


def _max_pool2d_forward(x, *, window, stride, padding):
    y, argmax = _max_pool(primal_value(x), window=window, stride=stride, padding=padding)
    if is_traced(x):  # an outer level differentiates it too, and records it (running the kernel again)
        y = _max_pool2d(x, window=window, stride=stride, padding=padding)
    return y, (argmax, np.shape(x), padding)  # the winners are constant where the gradient exists


# VJP derived in docs/book/05-convolutions.md#vjp-max_pool2d
_max_pool2d = Primitive(
    "max_pool2d",
    _max_pool2d_forward,
    lambda g, res, needs: (_max_pool2d_backward(g, res[0], x_shape=res[1], padding=res[2]),),
    impl=lambda x, **config: _max_pool(x, **config)[0],
)


def _winners(argmax, x_shape, padding) -> tuple:
    """The index that picks each window's winner out of an array shaped like the pooling's
    input ``(N, C, H, W)``; ``argmax`` holds flat positions in the padded plane (width W + 2*pw)."""
    n, c, _, w = x_shape
    rows, cols = np.divmod(argmax, w + 2 * padding[1])
    return np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows - padding[0], cols - padding[1]


# VJP derived in docs/book/05-convolutions.md#vjp-max_pool2d_backward
_max_pool2d_backward = Primitive(
    "max_pool2d_backward",
    vjp=lambda ct, res, needs: (ops.getitem(ct, _winners(*res)), None),
    impl=lambda g, argmax, *, x_shape, padding: kernels.max_pool2d_vjp(g, argmax, x_shape, padding),
    nondiff=(1,),
    keep=lambda out, g, argmax, *, x_shape, padding: (argmax, x_shape, padding),
)
"""``_max_pool2d_backward(g, argmax, x_shape=, padding=)``: zeros shaped ``x_shape`` with each
entry of ``g`` (the pooling's output cotangent) added at its window's winner."""

# VJP derived in docs/book/05-convolutions.md#vjp-avg_pool2d
_avg_pool2d = Primitive(
    "avg_pool2d",
    vjp=lambda g, res, needs: (_avg_pool2d_backward(g, x_shape=res[0], **res[1]),),
    impl=lambda x, *, window, stride, padding: kernels.avg_pool2d(*_promote(x), window, stride, padding),
    keep=lambda out, x, **config: (np.shape(x), config),
)
# VJP derived in docs/book/05-convolutions.md#vjp-avg_pool2d_backward
_avg_pool2d_backward = Primitive(
    "avg_pool2d_backward",
    vjp=lambda ct, config, needs: (_avg_pool2d(ct, **config),),
    impl=lambda g, *, x_shape, window, stride, padding: kernels.avg_pool2d_vjp(g, x_shape, window, stride, padding),
    keep=lambda out, g, *, x_shape, **config: config,
)
"""``_avg_pool2d_backward(g, x_shape=, window=, stride=, padding=)``: each entry of ``g`` shared
equally over its window, in zeros shaped ``x_shape``. Padding counts in every window's size,
so this is exactly the transpose of average pooling."""


def max_pool2d(x, window, stride=None, padding=0):
    """Maximum over each ``window`` of NCHW images; padding (at most half the window) never wins.

    ``stride`` defaults to the window. Returns ``(N, C, OH, OW)`` with
    ``OH = (H + 2*ph - KH) // sh + 1``. The gradient goes to the first maximum of each window.
    """
    (window, stride, padding), _ = _pool_config("max_pool2d", np.shape(x), window, stride, padding)
    return _max_pool2d(x, window=window, stride=stride, padding=padding)


def avg_pool2d(x, window, stride=None, padding=0):
    """Mean over each ``window`` of NCHW images, padding counted as zeros.

    ``stride`` defaults to the window. Returns ``(N, C, OH, OW)`` as for :func:`max_pool2d`.
    """
    (window, stride, padding), _ = _pool_config("avg_pool2d", np.shape(x), window, stride, padding)
    return _avg_pool2d(x, window=window, stride=stride, padding=padding)


# VJP derived in docs/book/05-convolutions.md#vjp-global_avg_pool2d
def _global_avg_pool2d_vjp(g, x_shape, needs):
    n, c, h, w = x_shape
    return (ops.broadcast_to(ops.reshape(g / (h * w), (n, c, 1, 1)), x_shape),)


_global_avg_pool2d = Primitive(
    "global_avg_pool2d",
    vjp=_global_avg_pool2d_vjp,
    impl=lambda x: np.mean(x, axis=(2, 3)),
    keep=lambda out, x: np.shape(x),
)


def _check_image_size(where: str, shape: tuple) -> None:
    """A ValueError naming ``where`` unless ``shape`` is NCHW with at least one pixel (the mean
    of an empty image is undefined)."""
    if len(shape) != 4 or shape[2] == 0 or shape[3] == 0:
        raise ValueError(f"{where}: expected NCHW input (N, C, H, W) with H, W >= 1, found shape {_shape_str(shape)}")


def global_avg_pool2d(x):
    """Mean over the whole image: ``(N, C, H, W) -> (N, C)``."""
    _check_image_size("global_avg_pool2d", np.shape(x))
    return _global_avg_pool2d(x)


# ----------------------------------------------------------------------------- batch normalisation
# Written in ops from end to end: on plain arrays that is numpy, on traced values every step is
# recorded, so the batch statistics (and the running averages of BatchNorm) are traced values too.


def _feature_shape(ndim: int, axis: int) -> list[int]:
    """Shape that broadcasts a per-feature vector along ``axis`` of an ``ndim``-array."""
    shape = [1] * ndim
    shape[axis] = -1
    return shape


def _feature_axis(where: str, x_shape: tuple, axis) -> int:
    """``axis`` of an input shaped ``x_shape`` as an index in ``[0, ndim)``; a TypeError or
    ValueError naming ``where`` if it is not an int or the input has no such axis."""
    axis = checked_axis(where, axis)
    if not -len(x_shape) <= axis < len(x_shape):
        raise ValueError(f"{where}: expected an input with a feature axis {axis}, found shape {tuple(x_shape)}")
    return axis % len(x_shape)


def _statistics_axes(where: str, x_shape: tuple, axis: int) -> tuple:
    """The axes the batch statistics reduce: all but ``axis`` (given in ``[0, ndim)``); a
    ValueError if they hold no element."""
    axes = tuple(a for a in range(len(x_shape)) if a != axis)
    if any(x_shape[a] == 0 for a in axes):
        raise ValueError(f"{where}: the statistics of an empty batch are undefined (input shape {tuple(x_shape)})")
    return axes


def _centered(x, axes):
    """``(mean, x - mean, biased variance)`` over ``axes``, the reduced axes kept with size 1."""
    mean = ops.mean(x, axis=axes, keepdims=True)
    centered = x - mean
    return mean, centered, ops.mean(centered * centered, axis=axes, keepdims=True)


def batch_moments(x, axis: int = 1):
    """Mean and (biased) variance of ``x`` over every axis but ``axis``: two arrays ``(C,)``.

    The statistics :func:`batch_norm` normalises with, computed with :mod:`tinyfn.ops`, so
    traced values give traced moments (BatchNorm's running averages work under a static graph).
    """
    axis = _feature_axis("batch_moments", np.shape(x), axis)
    c = np.shape(x)[axis]
    mean, _, var = _centered(x, _statistics_axes("batch_moments", np.shape(x), axis))
    return ops.reshape(mean, (c,)), ops.reshape(var, (c,))


def _batch_norm_forward(x, gamma, beta, *, axis, eps):
    axes = _statistics_axes("batch_norm", np.shape(x), axis)
    shape = _feature_shape(np.ndim(x), axis)
    _, centered, var = _centered(x, axes)
    inv_std = 1 / ops.sqrt(var + eps)
    x_hat = centered * inv_std
    gamma = ops.reshape(gamma, shape)
    return x_hat * gamma + ops.reshape(beta, shape), (x_hat, inv_std, gamma, axes)


# VJP derived in docs/book/05-convolutions.md#vjp-batch_norm
def _batch_norm_vjp(g, res, needs):
    # y = gamma * x_hat + beta with x_hat = (x - mean) * inv_std. The mean and the variance
    # depend on every sample, hence the two batch-wide correction terms in dx.
    x_hat, inv_std, gamma, axes = res
    g_beta = ops.sum(g, axis=axes, keepdims=True)
    g_gamma = ops.sum(g * x_hat, axis=axes, keepdims=True)
    c = np.size(gamma)
    dx = None
    if needs[0]:
        count = np.size(x_hat) // c
        dx = gamma * inv_std * (g - (g_beta + x_hat * g_gamma) / count)
    return dx, ops.reshape(g_gamma, (c,)) if needs[1] else None, ops.reshape(g_beta, (c,)) if needs[2] else None


_batch_norm = Primitive("batch_norm", _batch_norm_forward, _batch_norm_vjp)


def batch_norm(x, gamma, beta, axis: int = 1, eps: float = 1e-5):
    """Batch normalisation with the statistics of the batch (training mode).

    ``y = gamma * (x - mean) / sqrt(var + eps) + beta``, where ``mean`` and ``var`` (biased)
    are taken over every axis but ``axis``, and ``gamma``, ``beta`` have shape ``(C,)`` with
    ``C = x.shape[axis]``. Works for dense ``(N, C)`` and image ``(N, C, H, W)`` inputs.
    Returns an array shaped like ``x``; an empty batch raises ValueError (it has no statistics).
    """
    x_shape = np.shape(x)
    axis = _feature_axis("batch_norm", x_shape, axis)
    c = x_shape[axis]
    for name, p in (("gamma", gamma), ("beta", beta)):
        if np.shape(p) != (c,):
            raise ValueError(f"batch_norm: expected {name} of shape ({c},) for input {x_shape} (axis {axis}), found {np.shape(p)}")
    return _batch_norm(x, gamma, beta, axis=axis, eps=eps)


# ----------------------------------------------------------------------------- layers


def _conv_params(key, w_init, w_shape, bias_size: int, dtype) -> dict:
    """Read-only ``{"w": w_init(key, w_shape), "b": zeros(bias_size)}`` (no ``"b"`` when ``bias_size`` is 0)."""
    params = {"w": w_init(key, w_shape, dtype)}
    if bias_size:
        params["b"] = np.zeros(bias_size, dtype)
    return tree.freeze(params)


def Conv2D(
    out_channels: int, kernel_size, stride=1, padding=0, dilation=1, groups=1, use_bias=True, w_init=None, activation=None, dtype=np.float32
) -> Layer:
    """A 2-D convolution layer on NCHW images; ``activation="relu"`` fuses a ReLU into it.

    Params ``{"w": (out_channels, C // groups, KH, KW), "b": (out_channels,)}`` (no ``"b"``
    when ``use_bias`` is False). ``kernel_size``, ``stride``, ``dilation`` are ints or
    ``(rows, cols)`` pairs; ``padding`` also accepts ``"same"`` and ``"valid"`` (see
    :func:`conv_padding`). ``w_init(key, shape, dtype)`` defaults to He-normal
    (N(0, 2 / fan_in) with ``fan_in = C // groups * KH * KW``), suited to ReLU networks;
    biases start at zero. ``activation`` is None or ``"relu"`` (see :func:`conv2d`). An
    impossible configuration (channels not divisible by ``groups``, image smaller than the
    kernel) raises ValueError at ``init``; params that do not fit raise
    :class:`~tinyfn.layers.ParamError` at ``apply``.
    """
    out_channels, groups = _check_int("Conv2D: out_channels", out_channels, 1), _groups("Conv2D", groups)
    if activation not in (None, "relu"):
        raise ValueError(f"Conv2D: activation must be None or 'relu', found {activation!r}")
    kernel = _pair(kernel_size, "kernel_size")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    padding = conv_padding(padding, kernel, dilation)
    w_init = initializers.he_normal if w_init is None else w_init
    name = f"Conv2D({out_channels}, kernel_size={kernel})"
    expected = {"w": (out_channels, None) + kernel, "b": (out_channels,) if use_bias else None}

    def init(key, input_shape):
        input_shape = checked_shape(name, input_shape)
        if len(input_shape) != 4:
            raise ValueError(f"{name}: expected NCHW input (N, C, H, W), found shape {_shape_str(input_shape)}")
        if input_shape[1] % groups:
            raise ValueError(f"{name}: groups={groups} must divide the {input_shape[1]} input channels of {_shape_str(input_shape)}")
        w_shape = (out_channels, input_shape[1] // groups) + kernel
        try:
            out_shape = conv2d_output_shape(input_shape, w_shape, stride, padding, dilation, groups)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from e
        return out_shape, _conv_params(key, w_init, w_shape, out_channels if use_bias else 0, dtype)

    def apply(params, x, *, key=None, train=False):
        w, b = checked_params(name, params, expected)
        return conv2d(checked_input(name, x), w, b, stride, padding, dilation, groups, activation)

    return Layer(init, apply, name="conv2d")


def ConvTranspose2D(
    out_channels: int, kernel_size, stride=1, padding=0, output_padding=0, dilation=1, groups=1, use_bias=True, w_init=None, dtype=np.float32
) -> Layer:
    """A transposed 2-D convolution layer (upsampling by ``stride``) on NCHW images.

    Params ``{"w": (C, out_channels // groups, KH, KW), "b": (out_channels,)}``. The output
    is ``(N, out_channels, (H - 1)*s - 2*p + d*(K - 1) + output_padding + 1, ...)``; for
    example ``kernel_size=2, stride=2`` doubles the size and ``kernel_size=4, stride=2,
    padding=1`` too. ``w_init`` defaults to He-normal on the weight shape (as PyTorch
    computes fans for this layer); biases start at zero. Params that do not fit raise
    :class:`~tinyfn.layers.ParamError` at ``apply``.
    """
    out_channels, groups = _check_int("ConvTranspose2D: out_channels", out_channels, 1), _groups("ConvTranspose2D", groups)
    kernel = _pair(kernel_size, "kernel_size")
    config = dict(
        stride=_pair(stride, "stride"),
        padding=_pair(padding, "padding", minimum=0),
        output_padding=_pair(output_padding, "output_padding", minimum=0),
        dilation=_pair(dilation, "dilation"),
        groups=groups,
    )
    w_init = initializers.he_normal if w_init is None else w_init
    name = f"ConvTranspose2D({out_channels}, kernel_size={kernel})"
    expected = {"w": (None, out_channels // groups) + kernel, "b": (out_channels,) if use_bias else None}

    def init(key, input_shape):
        if out_channels % groups:
            raise ValueError(f"{name}: groups={groups} must divide out_channels")
        input_shape = checked_shape(name, input_shape)
        if len(input_shape) != 4:
            raise ValueError(f"{name}: expected NCHW input (N, C, H, W), found shape {_shape_str(input_shape)}")
        w_shape = (input_shape[1], out_channels // groups) + kernel
        try:
            out_shape = conv_transpose2d_output_shape(input_shape, w_shape, **config)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from e
        return out_shape, _conv_params(key, w_init, w_shape, out_channels if use_bias else 0, dtype)

    def apply(params, x, *, key=None, train=False):
        w, b = checked_params(name, params, expected)
        return conv_transpose2d(checked_input(name, x), w, b, **config)

    return Layer(init, apply, name="conv_transpose2d")


def _parameterless(name: str, label: str, init, fn) -> Layer:
    """A layer without params named ``name`` (``label`` in messages): ``apply`` checks that it
    got none and an array input, then returns ``fn(x)``."""

    def apply(params, x, *, key=None, train=False):
        checked_no_params(label, params)
        return fn(checked_input(label, x))

    return Layer(init, apply, name=name)


def _pool_layer(name: str, label: str, pool, window, stride, padding) -> Layer:
    window, stride, padding = _pool_geometry(label, window, stride, padding)

    def init(key, input_shape):
        _, out_shape = _pool_config(name, checked_shape(label, input_shape), window, stride, padding)
        return out_shape, {}

    return _parameterless(name, label, init, lambda x: pool(x, window, stride, padding))


def MaxPool2D(window, stride=None, padding=0) -> Layer:
    """Max pooling over ``window`` (stride defaults to the window; padding at most half of it)."""
    return _pool_layer("max_pool2d", f"MaxPool2D({window})", max_pool2d, window, stride, padding)


def AvgPool2D(window, stride=None, padding=0) -> Layer:
    """Average pooling over ``window`` (stride defaults to the window; padding counts as zeros)."""
    return _pool_layer("avg_pool2d", f"AvgPool2D({window})", avg_pool2d, window, stride, padding)


def GlobalAvgPool2D() -> Layer:
    """Mean over the whole image: ``(N, C, H, W) -> (N, C)``."""

    def init(key, input_shape):
        input_shape = checked_shape("GlobalAvgPool2D()", input_shape)
        _check_image_size("GlobalAvgPool2D()", input_shape)
        return input_shape[:2], {}

    return _parameterless("global_avg_pool2d", "GlobalAvgPool2D()", init, global_avg_pool2d)


def BatchNorm(axis: int = 1, momentum: float = 0.9, eps: float = 1e-5, dtype=np.float32) -> Layer:
    """Batch normalisation over feature ``axis`` for dense ``(N, C)`` or image ``(N, C, H, W)`` inputs.

    A *stateful* layer (``layer.stateful`` is True):

    * ``init(key, input_shape) -> (output_shape, params, state)`` with params
      ``{"gamma": ones (C,), "beta": zeros (C,)}`` and state ``{"mean": zeros (C,), "var": ones (C,)}``;
    * ``apply(params, x, *, state, key=None, train=False) -> (y, new_state)``.

    With ``train=True`` it normalises with the batch's mean and (biased) variance
    (:func:`batch_norm`) and returns the running averages updated as
    ``new = momentum * old + (1 - momentum) * batch`` (Keras' convention; PyTorch's
    ``momentum=0.1`` is this ``momentum=0.9``), in the dtype numpy's promotion gives (the
    state's, for inputs of its dtype). With ``train=False`` it normalises with the running
    averages and returns ``state`` unchanged. Both are computed with :mod:`tinyfn.ops`, so the
    layer works under ``value_and_grad(..., static_graph=True)``: pass the state as an argument
    and return the new one in ``aux``. Params or state that do not fit the input raise
    :class:`~tinyfn.layers.ParamError`.
    """
    axis, momentum = checked_axis("BatchNorm", axis), _check_real("BatchNorm: momentum", momentum, 0.0, 1.0)
    eps = _check_real("BatchNorm: eps", eps, 0.0)
    name = f"BatchNorm(axis={axis})"

    def features(input_shape) -> int:
        """The number of features C of an input of ``input_shape``."""
        if len(input_shape) < 2 or not -len(input_shape) <= axis < len(input_shape):
            raise ValueError(f"{name}: expected an input (N, C, ...) with that axis, found shape {_shape_str(input_shape)}")
        return input_shape[axis]

    def init(key, input_shape):
        input_shape = checked_shape(name, input_shape)
        c = features(input_shape)
        params = {"gamma": np.ones(c, dtype), "beta": np.zeros(c, dtype)}
        state = {"mean": np.zeros(c, dtype), "var": np.ones(c, dtype)}
        return input_shape, tree.freeze(params), tree.freeze(state)

    def apply(params, x, *, state, key=None, train=False):
        c = features(checked_input(name, x).shape)
        where = f"{name} on input {_shape_str(x.shape)}"
        gamma, beta = checked_params(where, params, {"gamma": (c,), "beta": (c,)})
        mean, var = checked_params(where, state, {"mean": (c,), "var": (c,)}, tree="state")
        if train:
            batch_mean, batch_var = batch_moments(x, axis)
            new_state = {"mean": momentum * mean + (1 - momentum) * batch_mean, "var": momentum * var + (1 - momentum) * batch_var}
            return batch_norm(x, gamma, beta, axis, eps), tree.freeze(new_state)
        shape = _feature_shape(len(x.shape), axis % len(x.shape))
        scale = ops.reshape(gamma / ops.sqrt(var + eps), shape)
        return (x - ops.reshape(mean, shape)) * scale + ops.reshape(beta, shape), state

    return Layer(init, apply, name="batch_norm", stateful=True)
