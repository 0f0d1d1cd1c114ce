"""Attention: scaled dot-product attention as one fused primitive, multi-head self-attention,
and a pre-norm transformer block.

For one batch entry and one head, with queries ``q`` (T, dk), keys ``k`` (S, dk), values
``v`` (S, dv) and ``scale = 1 / sqrt(dk)``::

    A = q k^T * scale + mask      the scores (T, S); the mask adds 0 where a query may attend
    P = softmax(A)                along the keys: row t says how much query t takes from each key
    out = P v                     (T, dv)

``attention`` is one primitive for all of that, with one hand-written VJP. Given the
cotangent ``g`` of ``out`` (T, dv), and the weights ``P`` kept by the forward pass:

* ``out = P v`` gives ``dP = g v^T`` and ``dv = P^T g``.
* ``P = softmax(A)`` row by row has the Jacobian ``dP_j / dA_i = P_j (delta_ij - P_i)``, so
  ``dA_i = sum_j dP_j P_j (delta_ij - P_i) = P_i (dP_i - sum_j dP_j P_j)``:
  ``dA = P * (dP - rowsum(dP * P))``.
* ``A = q k^T * scale + mask`` gives ``dq = dA k * scale``, ``dk = dA^T q * scale`` and
  ``dmask = dA`` (summed over the axes the mask was broadcast along).

On plain float32/float64 arrays both run in :mod:`tinyfn.kernels.attention` (BLAS products
per head on contiguous operands, split over the cores, and a fused softmax). When an
argument is a traced value of an outer differentiation (``grad(grad(f))``), the same
formulas run as :mod:`tinyfn.ops` primitives, which the outer level records: ``P`` is then
a traced value too, and the VJP differentiates again, to any order.

**Masks.** A boolean mask is True where a query may attend to a key (as in PyTorch's
``F.scaled_dot_product_attention``; ``nn.MultiheadAttention``'s boolean masks mean the
opposite, True = masked out). A float mask is added to the scores: 0 to attend, ``-inf`` to
mask, anything else a bias, which gets a gradient when it is differentiated (a learned
relative-position bias). ``causal=True`` lets query ``t`` attend to keys ``0..t`` only (the
top-left triangle when ``S != T``, as in PyTorch); it is a loop bound, not an array. A
query left with no key at all (every key masked) gets an output of 0 and passes no
gradient, where a plain softmax would give NaN: the same as PyTorch's
``F.scaled_dot_product_attention``.

>>> import numpy as np
>>> from tinyfn import random
>>> from tinyfn.layers.attention import TransformerBlock
>>> init, apply = TransformerBlock(num_heads=4)              # causal, MLP 4 x wider
>>> _, params = init(random.key(0), (-1, 10, 32))             # sequences of 10 vectors of 32
>>> sorted(params)
['attn', 'ln_1', 'ln_2', 'mlp']
>>> apply(params, np.ones((2, 10, 32), np.float32)).shape
(2, 10, 32)
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .. import initializers, ops, random, tree
from ..autodiff import Primitive, primal_value
from ..kernels import attention as kernels
from ..random import _check_int, _check_real
from .activations import GELU, Dropout
from .base import Layer, ParamError, _shape_str, checked_input, checked_params
from .combinators import serial
from .linear import Dense, dense
from .norm import LayerNorm

__all__ = ["scaled_dot_product_attention", "MultiHeadAttention", "TransformerBlock"]

# ----------------------------------------------------------------------------- the primitive


def _kernel_ready(*arrays) -> bool:
    """True when the kernels can run on ``arrays`` (None entries aside): plain numpy arrays,
    all of one dtype, float32 or float64 (no traced value)."""
    arrays = [a for a in arrays if a is not None]
    dtype = arrays[0].dtype if type(arrays[0]) is np.ndarray else None
    return dtype in (np.float32, np.float64) and all(type(a) is np.ndarray and a.dtype == dtype for a in arrays)


def _swap_last(x):
    """``x`` (B, H, n, m) as (B, H, m, n)."""
    return ops.transpose(x, (0, 1, 3, 2))


def _allowed(shape: tuple, bias, causal: bool):
    """Where a query may attend to a key, as a boolean array that broadcasts to ``shape``
    (B, H, T, S): on and below the diagonal if ``causal``, and where ``bias`` is not ``-inf``. None
    when every key is allowed."""
    allowed = np.tri(shape[2], shape[3], dtype=bool) if causal else None
    if bias is not None:
        finite = primal_value(bias) > -np.inf
        allowed = finite if allowed is None else allowed & finite
    return allowed


def _attention_in_ops(q, k, v, bias, causal: bool) -> tuple:
    """``(out, p)`` computed with tinyfn primitives (for traced values: see the module docstring)."""
    scores = ops.matmul(q, _swap_last(k)) * (1 / math.sqrt(q.shape[-1]))  # a Python float keeps q's dtype
    if bias is not None:
        scores = scores + bias
    allowed = _allowed(scores.shape, bias, causal)
    if allowed is None:
        p = ops.softmax(scores, axis=-1)
    else:
        # Masked scores become -inf, except in rows with no key left, which are made 0 (any
        # finite value) so that the softmax stays finite, then zeroed by the outer where.
        some_key = np.broadcast_to(allowed, scores.shape).any(axis=-1, keepdims=True)
        fill = np.where(some_key, -np.inf, 0).astype(scores.dtype)
        p = ops.where(allowed, ops.softmax(ops.where(allowed, scores, fill), axis=-1), 0)
    return ops.matmul(p, v), p


def _attention_vjp_in_ops(g, q, k, v, p, needs) -> tuple:
    """``(dq, dk, dv, da)`` written with tinyfn primitives (formulas: the module docstring)."""
    scale = 1 / math.sqrt(q.shape[-1])
    dq = dk = dv = da = None
    if needs[2]:
        dv = ops.matmul(_swap_last(p), g)
    if needs[0] or needs[1] or needs[3]:
        dp = ops.matmul(g, _swap_last(v))
        da = p * (dp - ops.sum(dp * p, axis=-1, keepdims=True))
    if needs[0]:
        dq = ops.matmul(da, k) * scale
    if needs[1]:
        dk = ops.matmul(_swap_last(da), q) * scale
    return dq, dk, dv, da


def _attention_forward(q, k, v, bias, *, causal):
    if _kernel_ready(q, k, v, bias):
        out, p = kernels.attention(q, k, v, bias, causal)
    else:
        out, p = _attention_in_ops(q, k, v, bias, causal)
    return out, (q, k, v, p, None if bias is None else np.shape(bias))


# VJP derived in docs/book/07-sequences.md#vjp-attention
def _attention_vjp(g, res, needs):
    q, k, v, p, bias_shape = res
    if _kernel_ready(g, q, k, v, p):
        dq, dk, dv, da = kernels.attention_vjp(g, q, k, v, p, needs)
    else:
        dq, dk, dv, da = _attention_vjp_in_ops(g, q, k, v, p, needs)
    return dq, dk, dv, ops.unbroadcast(da, bias_shape) if needs[3] else None


_attention = Primitive("attention", _attention_forward, _attention_vjp)
"""``attention(q, k, v, bias, causal=)``: softmax(q k^T / sqrt(dk) + bias) v per batch entry
and head, ``bias`` None or a float array broadcasting to (B, H, T, S) (``-inf`` masks); see
:func:`scaled_dot_product_attention`."""


# ----------------------------------------------------------------------------- checks


def _check_qkv(q, k, v) -> tuple:
    """The attention's shape ``(B, H, T, S)`` after checking ``q`` (B, H, T, dk), ``k``
    (B, H, S, dk) and ``v`` (B, H, S, dv) are float arrays that fit together."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):
            raise TypeError(f"scaled_dot_product_attention: expected an array {name}, found {type(x).__name__}")
        if len(x.shape) != 4:
            raise ValueError(f"scaled_dot_product_attention: expected {name} of shape (batch, heads, length, depth), found shape {_shape_str(x.shape)}")
        if np.dtype(x.dtype).kind != "f":
            raise TypeError(f"scaled_dot_product_attention: expected a floating-point {name}, found dtype {x.dtype}")
    (batch, heads, rows, depth), (cols, value_length) = q.shape, (k.shape[2], v.shape[2])
    if k.shape[:2] != (batch, heads) or k.shape[3] != depth:
        expected = f"({batch}, {heads}, S, {depth}) for q of shape {_shape_str(q.shape)}"
        raise ValueError(f"scaled_dot_product_attention: expected k of shape {expected}, found shape {_shape_str(k.shape)}")
    if v.shape[:2] != (batch, heads) or value_length != cols:
        expected = f"({batch}, {heads}, {cols}, dv) for k of shape {_shape_str(k.shape)}"
        raise ValueError(f"scaled_dot_product_attention: expected v of shape {expected}, found shape {_shape_str(v.shape)}")
    return batch, heads, rows, cols


def _mask_as_bias(where: str, mask, shape: tuple, dtype):
    """The mask as an additive bias in ``dtype`` (None for no mask): a boolean mask becomes 0
    where True and ``-inf`` where False. Raises naming ``where`` unless the mask is boolean or
    float and broadcasts to ``shape`` (B, H, T, S) without growing it."""
    if mask is None:
        return None
    if not (hasattr(mask, "shape") and hasattr(mask, "dtype")):
        mask = np.asarray(mask)
    kind = np.dtype(mask.dtype).kind
    if kind not in "bf":
        raise TypeError(f"{where}: expected a boolean or float mask, found dtype {mask.dtype}")
    try:
        fits = len(mask.shape) <= 4 and np.broadcast_shapes(tuple(mask.shape), shape) == shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{where}: expected a mask that broadcasts to (batch, heads, T, S) = {_shape_str(shape)}, found shape {_shape_str(mask.shape)}")
    if kind == "b":
        return ops.where(mask, np.zeros((), dtype), np.full((), -np.inf, dtype))
    return mask.astype(dtype) if type(mask) is np.ndarray and mask.dtype != dtype else mask


def scaled_dot_product_attention(q, k, v, mask=None, causal: bool = False):
    """``softmax(q k^T / sqrt(dk) + mask) v`` for each batch entry and head.

    ``q`` (B, H, T, dk), ``k`` (B, H, S, dk), ``v`` (B, H, S, dv) -> (B, H, T, dv).
    ``mask``: None, boolean (True where query ``t`` may attend to key ``s``) or float (added to
    the scores; ``-inf`` masks), of any shape that broadcasts to (B, H, T, S), such as (T, S)
    or (B, 1, 1, S) for padded keys. A float array mask is cast to ``q``'s dtype. ``causal``: query
    ``t`` attends to keys ``0..t`` only. A query with no key to attend to gets 0 (see the
    module docstring). One primitive with a hand-written VJP, differentiable to any order.
    """
    shape = _check_qkv(q, k, v)
    bias = _mask_as_bias("scaled_dot_product_attention", mask, shape, np.dtype(q.dtype))
    return _attention(q, k, v, bias, causal=bool(causal))


# ----------------------------------------------------------------------------- multi-head attention


def _split_heads(x, batch: int, heads: int):
    """(B * T, H * dh) -> (B, H, T, dh): head ``h`` takes features ``h*dh`` to ``(h+1)*dh``."""
    tokens, width = x.shape
    return ops.transpose(ops.reshape(x, (batch, tokens // batch, heads, width // heads)), (0, 2, 1, 3))


def _merge_heads(x):
    """(B, H, T, dh) -> (B * T, H * dh), the inverse of :func:`_split_heads`."""
    batch, heads, length, depth = x.shape
    return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (batch * length, heads * depth))


def _project(x, params):
    """``x @ w + b`` (or ``x @ w`` without a bias) for ``params`` ``{"w", ["b"]}``."""
    return dense(x, params["w"], params["b"]) if "b" in params else ops.matmul(x, params["w"])


_PROJECTIONS = ("q", "k", "v", "out")


def _check_children(label: str, params, names: tuple) -> None:
    """A :class:`ParamError` unless ``params`` is a dict with exactly the entries ``names``."""
    if not isinstance(params, dict):
        raise ParamError("", f"{label} expected a dict of {list(names)}, found {type(params).__name__}")
    for name in names:
        if name not in params:
            raise ParamError(name, f"missing: {label} expected parameters {list(names)}")
    for name in params:
        if name not in names:
            raise ParamError(str(name), f"{label} has no parameter {name!r} (its parameters: {list(names)})")


def MultiHeadAttention(num_heads: int, causal: bool = False, use_bias: bool = True, w_init=initializers.glorot_uniform, dtype=np.float32) -> Layer:
    """Multi-head self-attention: x (B, T, d) -> (B, T, d), with ``d`` divisible by ``num_heads``.

    ``q = x Wq + bq``, ``k = x Wk + bk``, ``v = x Wv + bv``, each split into ``num_heads``
    heads of ``d / num_heads`` features (head ``h`` takes features ``h*dh .. (h+1)*dh``);
    :func:`scaled_dot_product_attention` per head; the heads concatenated back to ``d``
    features and projected: ``out = heads Wo + bo``.

    Params ``{"q": {"w": (d, d), "b": (d,)}, "k": {...}, "v": {...}, "out": {...}}`` (no ``"b"``
    entries when ``use_bias`` is False); weights drawn by ``w_init`` (Glorot-uniform), biases 0.
    The layout against PyTorch's ``nn.MultiheadAttention(d, num_heads, batch_first=True)``,
    whose ``in_proj_weight`` (3d, d) stacks the three input projections as rows and applies
    ``x @ W.T``::

        params["q"]["w"] = in_proj_weight[:d].T       params["q"]["b"] = in_proj_bias[:d]
        params["k"]["w"] = in_proj_weight[d:2*d].T    params["k"]["b"] = in_proj_bias[d:2*d]
        params["v"]["w"] = in_proj_weight[2*d:].T     params["v"]["b"] = in_proj_bias[2*d:]
        params["out"]["w"] = out_proj.weight.T        params["out"]["b"] = out_proj.bias

    ``apply(params, x, *, mask=None, key=None, train=False)``: ``mask`` as in
    :func:`scaled_dot_product_attention`, broadcasting to (B, num_heads, T, T), such as (T, T)
    or (B, 1, 1, T) for padded positions: boolean True where a query may attend (PyTorch's
    ``attn_mask`` and ``key_padding_mask`` booleans are the opposite: pass ``~attn_mask``), or
    float and added to the scores (as PyTorch's float ``attn_mask``). ``causal=True`` adds
    the causal mask. A query left with no key gets 0 before the output projection, where
    PyTorch's module gives NaN.
    """
    num_heads = _check_int("MultiHeadAttention: num_heads", num_heads, 1)
    label = f"MultiHeadAttention({num_heads})"

    def width(shape) -> int:
        """The model width ``d`` of an input of ``shape`` (B, T, d), checked."""
        if len(shape) != 3:
            raise ValueError(f"{label}: expected an input (batch, T, d), found shape {_shape_str(shape)}")
        d = shape[-1]
        if d is None or d < 1 or d % num_heads:
            raise ValueError(f"{label}: expected a width d (last axis) divisible by num_heads={num_heads}, found shape {_shape_str(shape)}")
        return d

    def init(key, input_shape):
        d = width(tuple(input_shape))
        params = {}
        for name, k in zip(_PROJECTIONS, random.split(key, len(_PROJECTIONS))):
            params[name] = {"w": w_init(k, (d, d), dtype)}
            if use_bias:
                params[name]["b"] = np.zeros(d, dtype)
        return tuple(input_shape), tree.freeze(params)

    def checked(params, d: int) -> dict:
        """``params`` after checking it holds the four projections of width ``d``."""
        _check_children(label, params, _PROJECTIONS)
        expected = {"w": (d, d), "b": (d,) if use_bias else None}
        for name in _PROJECTIONS:
            try:
                checked_params(label, params[name], expected)
            except ParamError as e:
                raise e.within(name) from None
        return params

    def apply(params, x, *, mask=None, key=None, train=False):
        d = width(tuple(checked_input(label, x).shape))
        params = checked(params, d)
        batch, length = x.shape[:2]
        # The projections multiply (B * T, d) matrices: one BLAS product each, where numpy
        # would make B smaller ones of a (B, T, d) stack.
        tokens = ops.reshape(x, (batch * length, d))
        q, k, v = (_split_heads(_project(tokens, params[name]), batch, num_heads) for name in ("q", "k", "v"))
        heads = scaled_dot_product_attention(q, k, v, mask, causal)
        return ops.reshape(_project(_merge_heads(heads), params["out"]), (batch, length, d))

    return Layer(init, apply, name="multi_head_attention")


# ----------------------------------------------------------------------------- transformer block


def TransformerBlock(num_heads: int, mlp_ratio: float = 4, causal: bool = True, dropout: float = 0.0, dtype=np.float32) -> Layer:
    """A pre-norm transformer block (as in GPT-2): x (B, T, d) -> (B, T, d).

    ::

        x = x + dropout(attn(ln_1(x)))                 multi-head self-attention
        x = x + dropout(mlp(ln_2(x)))                  mlp = Dense(mlp_ratio * d), GELU, Dense(d)

    Params ``{"ln_1": LayerNorm, "attn": MultiHeadAttention, "ln_2": LayerNorm, "mlp":
    {"dense_0": Dense, "dense_2": Dense}}`` (see each layer for its own). GELU is the exact
    one (erf), as PyTorch's ``nn.GELU()``. ``dropout`` is the rate applied to each branch
    before it is added back (``apply(..., train=True, key=...)``); the attention weights
    themselves are not dropped. ``apply(params, x, *, mask=None, key=None, train=False)``
    passes ``mask`` to the attention (see :func:`MultiHeadAttention`).
    """
    _check_real("TransformerBlock: mlp_ratio", mlp_ratio, 0.0, open_low=True)
    label = f"TransformerBlock({num_heads})"
    children = {"ln_1": LayerNorm(dtype=dtype), "attn": MultiHeadAttention(num_heads, causal=causal, dtype=dtype), "ln_2": LayerNorm(dtype=dtype)}
    drop = Dropout(dropout)

    @functools.lru_cache(maxsize=None)
    def mlp(d: int) -> Layer:
        hidden = max(1, round(mlp_ratio * d))
        return serial(Dense(hidden, dtype=dtype), GELU(), Dense(d, dtype=dtype))

    def layers(d: int) -> dict:
        return {**children, "mlp": mlp(d)}

    def init(key, input_shape):
        if len(input_shape) != 3 or not input_shape[-1] or input_shape[-1] < 1:
            raise ValueError(f"{label}: expected an input (batch, T, d), found shape {_shape_str(tuple(input_shape))}")
        params = {}
        for (name, layer), k in zip(layers(input_shape[-1]).items(), random.split(key, 4)):
            params[name] = layer.init(k, input_shape)[1]
        return tuple(input_shape), params

    def apply(params, x, *, mask=None, key=None, train=False):
        sublayers = layers(checked_input(label, x, 3).shape[-1])
        _check_children(label, params, tuple(sublayers))

        def run(name, h, **kw):
            try:
                return sublayers[name].apply(params[name], h, **kw)
            except ParamError as e:
                raise e.within(name) from None

        keys = [None, None] if key is None else random.split(key)
        attended = run("attn", run("ln_1", x), mask=mask)
        x = ops.add(x, drop.apply({}, attended, key=keys[0], train=train))
        tokens = ops.reshape(run("ln_2", x), (-1, x.shape[-1]))  # (B * T, d): one product per dense layer
        transformed = ops.reshape(run("mlp", tokens), x.shape)
        return ops.add(x, drop.apply({}, transformed, key=keys[1], train=train))

    return Layer(init, apply, name="transformer_block")
