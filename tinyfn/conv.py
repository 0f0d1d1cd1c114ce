"""Convolutional networks: differentiable conv, pooling and batch-norm primitives, and their layers.

Images are NCHW: ``(batch, channels, height, width)``. Each operation is a
:class:`~tinyfn.autodiff.Primitive` whose forward pass and hand-written VJP call the Numba
kernels in :mod:`tinyfn.kernels`:

=====================  ===================================  ==========================================
function               shapes                               VJP
=====================  ===================================  ==========================================
``conv2d``             x (N,C,H,W), w (OC,C/G,KH,KW), b     col2im(w.T @ g); g @ cols.T; sum of g
``conv_transpose2d``   x (N,C,H,W), w (C,OC/G,KH,KW), b     conv2d of g; the same products swapped
``max_pool2d``         x (N,C,H,W)                          g to each window's winner
``avg_pool2d``         x (N,C,H,W)                          g shared over each window
``global_avg_pool2d``  x (N,C,H,W) -> (N,C)                 g / (H*W) everywhere
``batch_norm``         x (N,C,...) or (N,C), gamma, beta    the fused batch-statistics formula
=====================  ===================================  ==========================================

``conv2d(..., activation="relu")`` (and ``Conv2D(..., activation="relu")``) fuses the bias
and a ReLU into the convolution's last pass, and their VJP into one pass over the cotangent.

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
from .autodiff import Node, Primitive
from .layers import Layer

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


def _value(x):
    return x.value if type(x) is Node else x


def _pair(value, name: str, minimum: int = 1) -> tuple[int, int]:
    """``value`` (an int or a pair of ints, each >= ``minimum``) as a ``(rows, cols)`` tuple."""
    if type(value) is tuple and len(value) == 2 and type(value[0]) is type(value[1]) is int and min(value) >= minimum:
        return value  # already a checked pair: what layers pass on every call
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value) if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= minimum for v in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, found {value!r}")
    return int(pair[0]), int(pair[1])


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
    if groups < 1 or oc % groups:
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


# ----------------------------------------------------------------------------- convolution


def _promote(*arrays):
    """The arrays (None passes through) converted to their common float dtype."""
    dtype = np.result_type(*[a for a in arrays if a is not None], np.float32)
    return [None if a is None else np.asarray(a, dtype=dtype) for a in arrays]


def _cast_like(cotangent, primal):
    """Cotangents have the dtype of their primal (numpy promotion may have widened them)."""
    return cotangent.astype(np.result_type(primal), copy=False)


def _conv2d_forward(x, w, b, *, stride, padding, dilation, groups, relu):
    xc, wc, bc = _promote(x, w, b)
    y, cols = kernels.conv2d(xc, wc, None if relu else bc, stride, padding, dilation, groups)
    if relu:
        kernels.bias_relu_(y, np.zeros(y.shape[1], y.dtype) if bc is None else bc)
    return y, (x, w, b, cols, y if relu else None, (stride, padding, dilation, groups))


def _conv2d_vjp(g, res, needs):
    x, w, b, cols, relu_out, (stride, padding, dilation, groups) = res
    g = g.astype(cols.dtype, copy=False)  # a float64 cotangent would compile a second kernel
    if relu_out is not None:
        g, db = kernels.bias_relu_vjp(g, relu_out)
    elif needs[2]:
        db = g.sum(axis=(0, 2, 3))
    dx = dw = None
    if needs[0]:
        wc = np.asarray(w, dtype=cols.dtype)
        dx = _cast_like(kernels.conv2d_input_vjp(g, wc, np.shape(x), stride, padding, dilation, groups), x)
    if needs[1]:
        dw = _cast_like(kernels.conv2d_weight_vjp(g, cols, np.shape(w), groups), w)
    return dx, dw, _cast_like(db, b) if needs[2] else None


_conv2d = Primitive("conv2d", _conv2d_forward, _conv2d_vjp)


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
        fused into one pass over the output (and one over its cotangent): the same numbers
        as ``ops.relu(conv2d(...))``, faster.

    Returns ``(N, OC, OH, OW)`` with ``OH = (H + 2*ph - dh*(KH - 1) - 1) // sh + 1`` (same for W).
    """
    if activation not in (None, "relu"):
        raise ValueError(f"conv2d: activation must be None or 'relu', found {activation!r}")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    w_shape = np.shape(_value(w))
    padding = conv_padding(padding, w_shape[2:4], dilation)
    conv2d_output_shape(np.shape(_value(x)), w_shape, stride, padding, dilation, groups)
    if b is not None and np.shape(_value(b)) != w_shape[:1]:
        raise ValueError(f"conv2d: expected a bias of shape {w_shape[:1]}, found {np.shape(_value(b))}")
    return _conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups, relu=activation == "relu")


def _conv_transpose2d_forward(x, w, b, *, stride, padding, dilation, groups, output_shape):
    xc, wc, bc = _promote(x, w, b)
    y = kernels.conv2d_input_vjp(xc, wc, output_shape, stride, padding, dilation, groups)
    if bc is not None:
        y += bc.reshape(-1, 1, 1)
    return y, (x, w, b, (stride, padding, dilation, groups))


def _conv_transpose2d_vjp(g, res, needs):
    x, w, b, (stride, padding, dilation, groups) = res
    xc, wc, _ = _promote(x, w, b)
    g = g.astype(xc.dtype, copy=False)
    dx = dw = db = None
    # The VJPs of the transposed convolution are the convolution's forward pass and weight VJP
    # with the roles of input and output exchanged: both need im2col of g, over x's image size.
    cols = kernels.im2col(g, wc.shape[2:], stride, padding, dilation, xc.shape[2:]) if needs[0] or needs[1] else None
    if needs[0]:
        dx = _cast_like(kernels.conv2d_from_cols(cols, wc, None, groups, xc.shape[2:]), x)
    if needs[1]:
        dw = _cast_like(kernels.conv2d_weight_vjp(xc, cols, wc.shape, groups), w)
    if needs[2]:
        db = _cast_like(g.sum(axis=(0, 2, 3)), b)
    return dx, dw, db


_conv_transpose2d = Primitive("conv_transpose2d", _conv_transpose2d_forward, _conv_transpose2d_vjp)


def conv_transpose2d_output_shape(input_shape, w_shape, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """Output shape ``(N, OC, OH, OW)`` of :func:`conv_transpose2d`, or a ValueError naming the problem.

    ``input_shape`` is ``(N, C, H, W)`` (N may be -1), ``w_shape`` ``(C, OC // groups, KH, KW)``.
    """
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding", minimum=0)
    output_padding, dilation = _pair(output_padding, "output_padding", minimum=0), _pair(dilation, "dilation")
    if len(w_shape) != 4:
        raise ValueError(f"conv_transpose2d: expected a weight (C, OC/groups, KH, KW), found shape {tuple(w_shape)}")
    c, ocg, kh, kw = w_shape
    where = f"conv_transpose2d with weight {tuple(w_shape)} and groups={groups}"
    if groups < 1 or c % groups:
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
    w_shape = np.shape(_value(w))
    x_shape = np.shape(_value(x))
    out_shape = conv_transpose2d_output_shape(x_shape, w_shape, stride, padding, output_padding, dilation, groups)
    if b is not None and np.shape(_value(b)) != out_shape[1:2]:
        raise ValueError(f"conv_transpose2d: expected a bias of shape {out_shape[1:2]}, found {np.shape(_value(b))}")
    return _conv_transpose2d(
        x, w, b,
        stride=_pair(stride, "stride"), padding=_pair(padding, "padding", minimum=0),
        dilation=_pair(dilation, "dilation"), groups=groups, output_shape=out_shape,
    )


# ----------------------------------------------------------------------------- pooling


def _pool_config(name, input_shape, window, stride, padding):
    """Checked ``(window, stride, padding)`` pairs and the output shape of a pooling."""
    window = _pair(window, "window")
    stride = window if stride is None else _pair(stride, "stride")
    padding = _pair(padding, "padding", minimum=0)
    if padding[0] > window[0] // 2 or padding[1] > window[1] // 2:
        raise ValueError(f"{name}: padding {padding} must be at most half the window {window}")
    if len(input_shape) != 4:
        raise ValueError(f"{name}: expected NCHW input (N, C, H, W), found shape {_shape_str(input_shape)}")
    out = kernels.pool_output_shape(input_shape, window, stride, padding)
    if min(out[2:]) < 1:
        raise ValueError(f"{name}: input {_shape_str(input_shape)} padded by {padding} is smaller than the window {window}")
    return (window, stride, padding), out


def _max_pool2d_forward(x, *, window, stride, padding):
    (x,) = _promote(x)
    y, argmax = kernels.max_pool2d(x, window, stride, padding)
    return y, (argmax, np.shape(x), padding)


def _max_pool2d_vjp(g, res, needs):
    return (kernels.max_pool2d_vjp(g, *res),)


def _avg_pool2d_forward(x, *, window, stride, padding):
    (x,) = _promote(x)
    return kernels.avg_pool2d(x, window, stride, padding), (np.shape(x), window, stride, padding)


def _avg_pool2d_vjp(g, res, needs):
    return (kernels.avg_pool2d_vjp(g, *res),)


_max_pool2d = Primitive("max_pool2d", _max_pool2d_forward, _max_pool2d_vjp)
_avg_pool2d = Primitive("avg_pool2d", _avg_pool2d_forward, _avg_pool2d_vjp)


def max_pool2d(x, window, stride=None, padding=0):
    """Maximum over each ``window`` of NCHW images; padding (at most half the window) never wins.

    ``stride`` defaults to the window. Returns ``(N, C, OH, OW)`` with
    ``OH = (H + 2*ph - KH) // sh + 1``. The gradient goes to the first maximum of each window.
    """
    (window, stride, padding), _ = _pool_config("max_pool2d", np.shape(_value(x)), window, stride, padding)
    return _max_pool2d(x, window=window, stride=stride, padding=padding)


def avg_pool2d(x, window, stride=None, padding=0):
    """Mean over each ``window`` of NCHW images, padding counted as zeros.

    ``stride`` defaults to the window. Returns ``(N, C, OH, OW)`` as for :func:`max_pool2d`.
    """
    (window, stride, padding), _ = _pool_config("avg_pool2d", np.shape(_value(x)), window, stride, padding)
    return _avg_pool2d(x, window=window, stride=stride, padding=padding)


_global_avg_pool2d = Primitive(
    "global_avg_pool2d",
    lambda x: (np.mean(x, axis=(2, 3)), np.shape(x)),
    lambda g, shape, needs: (np.broadcast_to((g / (shape[2] * shape[3]))[:, :, None, None], shape),),
)


def global_avg_pool2d(x):
    """Mean over the whole image: ``(N, C, H, W) -> (N, C)``."""
    if np.ndim(_value(x)) != 4:
        raise ValueError(f"global_avg_pool2d: expected NCHW input (N, C, H, W), found shape {np.shape(_value(x))}")
    return _global_avg_pool2d(x)


# ----------------------------------------------------------------------------- batch normalisation


def _feature_shape(ndim: int, axis: int) -> list[int]:
    """Shape that broadcasts a per-feature vector along ``axis`` of an ``ndim``-array."""
    shape = [1] * ndim
    shape[axis] = -1
    return shape


def batch_moments(x, axis: int = 1):
    """Mean and (biased) variance of ``x`` over every axis but ``axis``: two arrays ``(C,)``.

    Plain numpy on array values (not differentiable); :func:`batch_norm` computes the same.
    """
    x = _value(x)
    axes = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    return x.mean(axis=axes), x.var(axis=axes)


def _batch_norm_forward(x, gamma, beta, *, axis, eps):
    axes = tuple(a for a in range(x.ndim) if a != axis)
    shape = _feature_shape(x.ndim, axis)
    centered = x - x.mean(axis=axes, keepdims=True)
    inv_std = 1.0 / np.sqrt(np.mean(centered * centered, axis=axes, keepdims=True) + eps)
    x_hat = centered * inv_std
    y = x_hat * gamma.reshape(shape) + beta.reshape(shape)
    return y, (x_hat, inv_std, gamma.reshape(shape), axes)


def _batch_norm_vjp(g, res, needs):
    x_hat, inv_std, gamma, axes = res
    g_beta = g.sum(axis=axes, keepdims=True)
    g_gamma = (g * x_hat).sum(axis=axes, keepdims=True)
    dx = None
    if needs[0]:
        # The mean and variance depend on every sample, hence the two batch-wide correction terms.
        count = x_hat.size // gamma.size
        dx = (gamma * inv_std) * (g - (g_beta + x_hat * g_gamma) / count)
    return dx, g_gamma.reshape(-1) if needs[1] else None, g_beta.reshape(-1) if needs[2] else None


_batch_norm = Primitive("batch_norm", _batch_norm_forward, _batch_norm_vjp)


def batch_norm(x, gamma, beta, axis: int = 1, eps: float = 1e-5):
    """Batch normalisation with the statistics of the batch (training mode).

    ``y = gamma * (x - mean) / sqrt(var + eps) + beta``, where ``mean`` and ``var`` (biased)
    are taken over every axis but ``axis``, and ``gamma``, ``beta`` have shape ``(C,)`` with
    ``C = x.shape[axis]``. Works for dense ``(N, C)`` and image ``(N, C, H, W)`` inputs.
    Returns an array shaped like ``x``. One primitive: a fused forward and a hand-written VJP.
    """
    x_shape = np.shape(_value(x))
    axis = axis % len(x_shape)
    c = x_shape[axis]
    for name, p in (("gamma", gamma), ("beta", beta)):
        if np.shape(_value(p)) != (c,):
            raise ValueError(f"batch_norm: expected {name} of shape ({c},) for input {x_shape} (axis {axis}), found {np.shape(_value(p))}")
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
    kernel) raises ValueError at ``init``.
    """
    if not (isinstance(out_channels, (int, np.integer)) and out_channels > 0):
        raise ValueError(f"Conv2D: out_channels must be a positive int, found {out_channels!r}")
    if activation not in (None, "relu"):
        raise ValueError(f"Conv2D: activation must be None or 'relu', found {activation!r}")
    kernel = _pair(kernel_size, "kernel_size")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    padding = conv_padding(padding, kernel, dilation)
    w_init = initializers.he_normal if w_init is None else w_init
    name = f"Conv2D({out_channels}, kernel_size={kernel})"

    def init(key, input_shape):
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
        return conv2d(x, params["w"], params.get("b"), stride, padding, dilation, groups, activation)

    return Layer(init, apply, name="conv2d")


def ConvTranspose2D(
    out_channels: int, kernel_size, stride=1, padding=0, output_padding=0, dilation=1, groups=1, use_bias=True, w_init=None, dtype=np.float32
) -> Layer:
    """A transposed 2-D convolution layer (upsampling by ``stride``) on NCHW images.

    Params ``{"w": (C, out_channels // groups, KH, KW), "b": (out_channels,)}``. The output
    is ``(N, out_channels, (H - 1)*s - 2*p + d*(K - 1) + output_padding + 1, ...)``; for
    example ``kernel_size=2, stride=2`` doubles the size and ``kernel_size=4, stride=2,
    padding=1`` too. ``w_init`` defaults to He-normal on the weight shape (as PyTorch
    computes fans for this layer); biases start at zero.
    """
    if not (isinstance(out_channels, (int, np.integer)) and out_channels > 0):
        raise ValueError(f"ConvTranspose2D: out_channels must be a positive int, found {out_channels!r}")
    kernel = _pair(kernel_size, "kernel_size")
    config = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups)
    w_init = initializers.he_normal if w_init is None else w_init
    name = f"ConvTranspose2D({out_channels}, kernel_size={kernel})"

    def init(key, input_shape):
        if out_channels % groups:
            raise ValueError(f"{name}: groups={groups} must divide out_channels")
        if len(input_shape) != 4:
            raise ValueError(f"{name}: expected NCHW input (N, C, H, W), found shape {_shape_str(input_shape)}")
        w_shape = (input_shape[1], out_channels // groups) + kernel
        try:
            out_shape = conv_transpose2d_output_shape(input_shape, w_shape, **config)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from e
        return out_shape, _conv_params(key, w_init, w_shape, out_channels if use_bias else 0, dtype)

    def apply(params, x, *, key=None, train=False):
        return conv_transpose2d(x, params["w"], params.get("b"), **config)

    return Layer(init, apply, name="conv_transpose2d")


def _pool_layer(name: str, pool, window, stride, padding) -> Layer:
    def init(key, input_shape):
        _, out_shape = _pool_config(name, input_shape, window, stride, padding)
        return out_shape, {}

    def apply(params, x, *, key=None, train=False):
        return pool(x, window, stride, padding)

    return Layer(init, apply, name=name)


def MaxPool2D(window, stride=None, padding=0) -> Layer:
    """Max pooling over ``window`` (stride defaults to the window; padding at most half of it)."""
    return _pool_layer("max_pool2d", max_pool2d, window, stride, padding)


def AvgPool2D(window, stride=None, padding=0) -> Layer:
    """Average pooling over ``window`` (stride defaults to the window; padding counts as zeros)."""
    return _pool_layer("avg_pool2d", avg_pool2d, window, stride, padding)


def GlobalAvgPool2D() -> Layer:
    """Mean over the whole image: ``(N, C, H, W) -> (N, C)``."""

    def init(key, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"GlobalAvgPool2D: expected NCHW input (N, C, H, W), found shape {_shape_str(input_shape)}")
        return tuple(input_shape[:2]), {}

    def apply(params, x, *, key=None, train=False):
        return global_avg_pool2d(x)

    return Layer(init, apply, name="global_avg_pool2d")


def BatchNorm(axis: int = 1, momentum: float = 0.9, eps: float = 1e-5, dtype=np.float32) -> Layer:
    """Batch normalisation over feature ``axis`` for dense ``(N, C)`` or image ``(N, C, H, W)`` inputs.

    A *stateful* layer (``layer.stateful`` is True):

    * ``init(key, input_shape) -> (output_shape, params, state)`` with params
      ``{"gamma": ones (C,), "beta": zeros (C,)}`` and state ``{"mean": zeros (C,), "var": ones (C,)}``;
    * ``apply(params, x, *, state, key=None, train=False) -> (y, new_state)``.

    With ``train=True`` it normalises with the batch's mean and (biased) variance
    (:func:`batch_norm`) and returns the running averages updated as
    ``new = momentum * old + (1 - momentum) * batch`` (Keras' convention; PyTorch's
    ``momentum=0.1`` is this ``momentum=0.9``). With ``train=False`` it normalises with the
    running averages and returns ``state`` unchanged.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"BatchNorm: momentum must be in [0, 1], found {momentum}")

    def init(key, input_shape):
        if len(input_shape) < 2 or not -len(input_shape) <= axis < len(input_shape):
            raise ValueError(f"BatchNorm(axis={axis}): expected an input (N, C, ...) with that axis, found shape {_shape_str(input_shape)}")
        c = input_shape[axis]
        params = {"gamma": np.ones(c, dtype), "beta": np.zeros(c, dtype)}
        state = {"mean": np.zeros(c, dtype), "var": np.ones(c, dtype)}
        return tuple(input_shape), tree.freeze(params), tree.freeze(state)

    def apply(params, x, *, state, key=None, train=False):
        if train:
            y = batch_norm(x, params["gamma"], params["beta"], axis, eps)
            mean, var = batch_moments(x, axis)
            new_state = {
                "mean": momentum * state["mean"] + (1 - momentum) * mean.astype(state["mean"].dtype),
                "var": momentum * state["var"] + (1 - momentum) * var.astype(state["var"].dtype),
            }
            return y, tree.freeze(new_state)
        shape = _feature_shape(np.ndim(_value(x)), axis % np.ndim(_value(x)))
        scale = ops.reshape(params["gamma"], shape) * np.reshape(1.0 / np.sqrt(state["var"] + eps), shape)
        return (x - np.reshape(state["mean"], shape)) * scale + ops.reshape(params["beta"], shape), state

    return Layer(init, apply, name="batch_norm", stateful=True)
