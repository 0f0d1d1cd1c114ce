"""Normalisation over the features: LayerNorm and RMSNorm, each one fused primitive.

Both normalise every vector along the last axis of ``x`` (a row of ``d`` features), then
scale it by ``gamma`` (and LayerNorm shifts it by ``beta``)::

    layer_norm(x, gamma, beta) = gamma * (x - mean(x)) / sqrt(var(x) + eps) + beta
    rms_norm(x, gamma)         = gamma * x / sqrt(mean(x * x) + eps)

RMSNorm is LayerNorm without the centring (``var`` is the mean of the squares of ``x - mean``),
so the two share their code: a ``centered`` flag says whether the mean is subtracted.

Each primitive computes its output and its VJP in one of two ways. On plain arrays of one
dtype, float32 or float64 (inference, every first-order gradient, a static graph), Numba
kernels walk each row once per statistic, the rows split over the cores when there are
many. When an argument is a traced value of an outer differentiation (``grad(grad(f))``),
the same formulas written with :mod:`tinyfn.ops` run instead, so the outer level records
them: the saved ``x_hat`` and ``inv_std`` and the VJP itself are then differentiable again,
to any order. (Other dtypes, or a mix that numpy promotes, take the formulas too.)
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .. import ops, tree
from ..autodiff import Primitive
from ..kernels.threads import over_batch
from ..random import _check_real
from .base import Layer, _shape_str, checked_axis, checked_input, checked_params, checked_shape

__all__ = ["layer_norm", "rms_norm", "LayerNorm", "RMSNorm"]

# ----------------------------------------------------------------------------- kernels
# Rows of a 2-D C-contiguous array, one dtype throughout. The sums are reassociated so that
# they vectorise; NaNs still propagate.


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def _normalize_rows(x, gamma, beta, eps, centered, y, x_hat, inv_std):
    rows, d = x.shape
    one = x.dtype.type(1)
    scale = one / x.dtype.type(d)
    for r in range(rows):
        mean = x.dtype.type(0)
        if centered:
            for i in range(d):
                mean += x[r, i]
            mean *= scale
        squares = x.dtype.type(0)
        for i in range(d):
            c = x[r, i] - mean
            squares += c * c
        inv = one / np.sqrt(squares * scale + eps)
        inv_std[r] = inv
        for i in range(d):
            h = (x[r, i] - mean) * inv
            x_hat[r, i] = h
            y[r, i] = h * gamma[i] + beta[i]


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def _normalize_rows_vjp(g, x_hat, inv_std, gamma, centered, dx, dgamma, dbeta, block):
    """``dx`` for every row; ``dgamma[k]`` and ``dbeta[k]`` the sums over the ``k``-th block
    of ``block`` rows (the caller adds the blocks up)."""
    rows, d = g.shape
    scale = g.dtype.type(1) / g.dtype.type(d)
    for r in range(rows):
        mean_u = g.dtype.type(0)
        mean_u_x_hat = g.dtype.type(0)
        for i in range(d):
            u = g[r, i] * gamma[i]
            mean_u += u
            mean_u_x_hat += u * x_hat[r, i]
        mean_u = mean_u * scale if centered else g.dtype.type(0)
        mean_u_x_hat *= scale
        inv = inv_std[r]
        dg, db = dgamma[r // block], dbeta[r // block]
        for i in range(d):
            dx[r, i] = inv * (g[r, i] * gamma[i] - mean_u - x_hat[r, i] * mean_u_x_hat)
            dg[i] += g[r, i] * x_hat[r, i]
            db[i] += g[r, i]


# The kernels split the rows over the cores (:func:`~tinyfn.kernels.threads.over_batch`) when
# there are at least this many entries; below, handing a slice to a helper costs more than it
# saves. The sums over rows for dgamma and dbeta are taken per block of _BLOCK rows, whichever
# thread runs the block, and the blocks added in order: the same bits for any number of threads.
_SPLIT_FROM = 1 << 15
_BLOCK = 64


def _over_rows(rows: int, d: int, work) -> None:
    """``work(start, stop)`` over ``rows`` rows of ``d`` entries: slices of whole blocks, one
    per thread when the array is large, else one call."""
    blocks = -(-rows // _BLOCK)
    if rows * d < _SPLIT_FROM or blocks < 2:
        work(0, rows)
    else:
        over_batch(blocks, lambda lo, hi: work(lo * _BLOCK, min(hi * _BLOCK, rows)))


def _kernel_ready(*arrays) -> bool:
    """True when the kernels can run on ``arrays`` (None entries aside): plain numpy arrays,
    no traced value, all of one dtype, float32 or float64."""
    arrays = [a for a in arrays if a is not None]
    dtype = arrays[0].dtype if type(arrays[0]) is np.ndarray else None
    return dtype in (np.float32, np.float64) and all(type(a) is np.ndarray and a.dtype == dtype for a in arrays)


def _rows(a, d: int) -> np.ndarray:
    """``a`` as a C-contiguous array of rows of ``d`` entries (a view when it already is one)."""
    return np.ascontiguousarray(a).reshape(-1, d)


# ----------------------------------------------------------------------------- the computation


def _normalize(x, gamma, beta, eps: float, centered: bool) -> tuple:
    """``(y, x_hat, inv_std)`` over the last axis: ``x_hat`` is ``x`` normalised (centred first
    if ``centered``), ``inv_std`` is ``1 / sqrt(mean square + eps)`` shaped ``(..., 1)``, and
    ``y = x_hat * gamma + beta`` (no shift when ``beta`` is None)."""
    if _kernel_ready(x, gamma, beta):
        d = x.shape[-1]
        shift = np.zeros(d, x.dtype) if beta is None else beta
        y, x_hat = np.empty(x.shape, x.dtype), np.empty(x.shape, x.dtype)
        inv_std = np.empty(x.shape[:-1] + (1,), x.dtype)
        rows, y_rows, x_hat_rows, inv_rows, eps = _rows(x, d), y.reshape(-1, d), x_hat.reshape(-1, d), inv_std.reshape(-1), x.dtype.type(eps)

        def work(lo, hi):
            _normalize_rows(rows[lo:hi], gamma, shift, eps, centered, y_rows[lo:hi], x_hat_rows[lo:hi], inv_rows[lo:hi])

        _over_rows(len(rows), d, work)
        return y, x_hat, inv_std
    if centered:
        x = x - ops.mean(x, axis=-1, keepdims=True)
    inv_std = 1 / ops.sqrt(ops.mean(x * x, axis=-1, keepdims=True) + eps)
    x_hat = x * inv_std
    y = x_hat * gamma
    return (y if beta is None else y + beta), x_hat, inv_std


def _normalize_vjp(g, x_hat, inv_std, gamma, centered: bool) -> tuple:
    """``(dx, dgamma, dbeta)`` for the output cotangent ``g`` of :func:`_normalize`.

    With ``u = g * gamma``, the cotangent of ``x_hat``, and ``x_hat = (x - mean) * inv_std``,
    ``inv_std = (var + eps)^(-1/2)``, ``var = mean((x - mean)^2)``: the derivative of
    ``inv_std`` with respect to ``x_j`` is ``-inv_std^3 (x_j - mean) / d`` (the mean's own
    term drops out, as the centred values sum to 0), so
    ``d x_hat_i / d x_j = inv_std * (delta_ij - 1/d - x_hat_i x_hat_j / d)`` and::

        dx = inv_std * (u - mean(u) - x_hat * mean(u * x_hat))

    Without centring (RMSNorm) the ``1/d`` term is absent: ``dx = inv_std * (u - x_hat *
    mean(u * x_hat))``. ``dgamma`` and ``dbeta`` sum ``g * x_hat`` and ``g`` over every row.
    """
    if _kernel_ready(g, x_hat, inv_std, gamma):
        d = g.shape[-1]
        g_rows, x_hat_rows, inv_rows = _rows(g, d), _rows(x_hat, d), inv_std.reshape(-1)
        dx = np.empty(g.shape, g.dtype)
        dx_rows = dx.reshape(-1, d)
        blocks = -(-len(g_rows) // _BLOCK)
        dgamma, dbeta = np.zeros((blocks, d), g.dtype), np.zeros((blocks, d), g.dtype)

        def work(lo, hi):
            first = lo // _BLOCK
            _normalize_rows_vjp(g_rows[lo:hi], x_hat_rows[lo:hi], inv_rows[lo:hi], gamma, centered, dx_rows[lo:hi], dgamma[first:], dbeta[first:], _BLOCK)

        _over_rows(len(g_rows), d, work)
        return dx, dgamma.sum(axis=0), dbeta.sum(axis=0)
    u = g * gamma
    projected = u - x_hat * ops.mean(u * x_hat, axis=-1, keepdims=True)
    if centered:
        projected = projected - ops.mean(u, axis=-1, keepdims=True)
    rows = tuple(range(len(np.shape(g)) - 1))
    return inv_std * projected, ops.sum(g * x_hat, axis=rows), ops.sum(g, axis=rows)


def _layer_norm_forward(x, gamma, beta, *, eps):
    y, x_hat, inv_std = _normalize(x, gamma, beta, eps, centered=True)
    return y, (x_hat, inv_std, gamma)


# VJP derived in docs/book/07-sequences.md#vjp-layer_norm
def _layer_norm_vjp(g, res, needs):
    dx, dgamma, dbeta = _normalize_vjp(g, *res, centered=True)
    return dx if needs[0] else None, dgamma if needs[1] else None, dbeta if needs[2] else None


def _rms_norm_forward(x, gamma, *, eps):
    y, x_hat, inv_std = _normalize(x, gamma, None, eps, centered=False)
    return y, (x_hat, inv_std, gamma)


# VJP derived in docs/book/07-sequences.md#vjp-rms_norm
def _rms_norm_vjp(g, res, needs):
    dx, dgamma, _ = _normalize_vjp(g, *res, centered=False)
    return dx if needs[0] else None, dgamma if needs[1] else None


_layer_norm = Primitive("layer_norm", _layer_norm_forward, _layer_norm_vjp)
_rms_norm = Primitive("rms_norm", _rms_norm_forward, _rms_norm_vjp)


def _check_features(where: str, x, params: dict) -> None:
    """A ValueError unless ``x`` has a last axis of ``d >= 1`` features and every array in
    ``params`` (name -> array) has shape ``(d,)``."""
    shape = tuple(np.shape(x))
    if not shape or shape[-1] < 1:
        raise ValueError(f"{where}: expected an input (..., features) with at least one feature, found shape {_shape_str(shape)}")
    for name, p in params.items():
        if np.shape(p) != shape[-1:]:
            raise ValueError(f"{where}: expected {name} of shape ({shape[-1]},) for input {_shape_str(shape)}, found {_shape_str(np.shape(p))}")


def layer_norm(x, gamma, beta, eps: float = 1e-5):
    """Layer normalisation over the last axis: ``gamma * (x - mean) / sqrt(var + eps) + beta``.

    ``x`` (..., d); ``gamma``, ``beta`` (d,); ``mean`` and the biased ``var`` are taken over
    the last axis of each row. Returns an array shaped like ``x`` (numpy's promotion of the
    three dtypes). One primitive with a hand-written VJP, differentiable to any order.
    """
    _check_features("layer_norm", x, {"gamma": gamma, "beta": beta})
    return _layer_norm(x, gamma, beta, eps=eps)


def rms_norm(x, gamma, eps: float = 1e-6):
    """Root-mean-square normalisation over the last axis: ``gamma * x / sqrt(mean(x^2) + eps)``.

    ``x`` (..., d); ``gamma`` (d,). Returns an array shaped like ``x``. One primitive with a
    hand-written VJP, differentiable to any order.
    """
    _check_features("rms_norm", x, {"gamma": gamma})
    return _rms_norm(x, gamma, eps=eps)


# ----------------------------------------------------------------------------- layers


def _last_axis_permutation(ndim: int, axis: int) -> tuple | None:
    """The axes of an ``ndim``-array with ``axis`` moved last, or None if it already is last."""
    if axis == ndim - 1:
        return None
    return tuple(a for a in range(ndim) if a != axis) + (axis,)


def _norm_layer(label: str, name: str, axis: int, param_names: tuple, normalize, dtype) -> Layer:
    """A layer normalising along ``axis`` with ``normalize(x, *params)`` (which works on the
    last axis), params ``{"gamma": ones (d,)}`` and, if named, ``"beta": zeros (d,)``."""
    fills = {"gamma": 1, "beta": 0}

    def features(input_shape) -> int:
        """The size of the normalised axis of an input of ``input_shape``."""
        if not -len(input_shape) <= axis < len(input_shape) or input_shape[axis] is None or input_shape[axis] < 1:
            raise ValueError(f"{label}: expected an input with at least one feature along axis {axis}, found shape {_shape_str(input_shape)}")
        return input_shape[axis]

    def init(key, input_shape):
        shape = checked_shape(label, input_shape)
        d = features(shape)
        return shape, tree.freeze({p: np.full(d, fills[p], dtype) for p in param_names})

    def apply(params, x, *, key=None, train=False):
        d = features(checked_input(label, x).shape)
        found = checked_params(label, params, {p: (d,) for p in param_names})
        axes = _last_axis_permutation(len(x.shape), axis % len(x.shape))
        if axes is None:
            return normalize(x, *found)
        y = normalize(ops.transpose(x, axes), *found)
        return ops.transpose(y, tuple(np.argsort(axes).tolist()))

    return Layer(init, apply, name=name)


def LayerNorm(axis: int = -1, eps: float = 1e-5, dtype=np.float32) -> Layer:
    """Layer normalisation over one feature ``axis`` (the last by default), as in transformers.

    Each vector along ``axis`` is normalised to mean 0 and variance 1 (biased variance, plus
    ``eps``), then scaled and shifted: ``y = gamma * (x - mean) / sqrt(var + eps) + beta``
    (:func:`layer_norm`). Params ``{"gamma": ones (d,), "beta": zeros (d,)}``, PyTorch's
    ``weight`` and ``bias``, with ``d = x.shape[axis]``. Input any shape with that axis;
    output the same shape. The same with ``train`` True or False (no batch statistics).
    """
    axis, eps = checked_axis("LayerNorm", axis), _check_real("LayerNorm: eps", eps, 0.0)
    label = f"LayerNorm(axis={axis})"
    return _norm_layer(label, "layer_norm", axis, ("gamma", "beta"), lambda x, g, b: layer_norm(x, g, b, eps), dtype)


def RMSNorm(axis: int = -1, eps: float = 1e-6, dtype=np.float32) -> Layer:
    """Root-mean-square normalisation over one feature ``axis`` (the last by default).

    ``y = gamma * x / sqrt(mean(x^2) + eps)`` (:func:`rms_norm`), with no centring and no
    shift. Params ``{"gamma": ones (d,)}``, PyTorch's ``weight``. ``eps`` defaults to 1e-6
    (as in T5 and LLaMA); PyTorch's ``nn.RMSNorm`` defaults to the machine epsilon of the
    input's dtype (``np.finfo(np.float32).eps`` for float32): pass that to match it.
    Input any shape with that axis; output the same shape.
    """
    axis, eps = checked_axis("RMSNorm", axis), _check_real("RMSNorm: eps", eps, 0.0)
    label = f"RMSNorm(axis={axis})"
    return _norm_layer(label, "rms_norm", axis, ("gamma",), lambda x, g: rms_norm(x, g, eps), dtype)
