"""Embeddings: token ids to vectors, and the position of each vector in a sequence.

A token embedding is a lookup: row ``ids[n]`` of a table ``w`` (vocab, dim) for each id. Its
VJP adds each output cotangent back into the row it came from (a scatter-add: an id used
twice gets both), and the VJP of that scatter is the lookup again, so the pair
differentiates to any order:

* ``embedding_lookup(w, ids)``: w (vocab, dim), ids (...) -> (..., dim); VJP: the scatter of g.
* ``embedding_scatter(g, ids, vocab=)``: g (..., dim), ids (...) -> (vocab, dim); VJP: the
  lookup of g.

The ids are a positional argument (never differentiated), not a constant of the call, so a
static graph (``value_and_grad(..., static_graph=True)``) replays the lookup with each new
batch's ids. Positions are added by :func:`PositionalEmbedding` (a learned table) or
:func:`SinusoidalPositionalEncoding` (the fixed table of Vaswani et al., 2017):

>>> import numpy as np
>>> from tinyfn import random
>>> from tinyfn.layers import serial
>>> from tinyfn.layers.embedding import Embedding, PositionalEmbedding
>>> init, apply = serial(Embedding(65, 8), PositionalEmbedding(16, 8))
>>> out_shape, params = init(random.key(0), (-1, 16))   # ids (batch, T)
>>> out_shape
(-1, 16, 8)
>>> apply(params, np.zeros((2, 10), np.int64)).shape     # any T up to 16
(2, 10, 8)
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .. import initializers, ops, tree
from ..autodiff import Primitive
from ..random import _check_int
from .base import Layer, _shape_str, checked_input, checked_no_params, checked_params, checked_shape

__all__ = ["embedding_lookup", "sinusoidal_table", "Embedding", "PositionalEmbedding", "SinusoidalPositionalEncoding"]

# ----------------------------------------------------------------------------- the lookup and its VJP


@njit(cache=True, nogil=True)
def _scatter_rows(g, ids, out):
    # In order, one row at a time: an id used several times gets every one of its rows, and
    # the sums come out the same on every run. (np.add.at does the same about 60 times
    # slower, for 1024 ids into a (65, 128) table.)
    for n in range(ids.shape[0]):
        row = ids[n]
        for j in range(g.shape[1]):
            out[row, j] += g[n, j]


def _check_ids_in_range(ids: np.ndarray, vocab: int) -> None:
    """A ValueError naming the first id outside ``[0, vocab)``, if there is one."""
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        where = tuple(np.argwhere((ids < 0) | (ids >= vocab))[0].tolist())
        raise ValueError(f"embedding_lookup: expected ids in [0, {vocab}) (the rows of w), found {ids[where]} at index {where}")


def _lookup_impl(w, ids):
    _check_ids_in_range(ids, np.shape(w)[0])
    return np.take(w, ids, axis=0)


def _scatter_impl(g, ids, *, vocab):
    dim = g.shape[-1]
    out = np.zeros((vocab, dim), g.dtype)
    rows = np.ascontiguousarray(g).reshape(ids.size, dim)
    flat_ids = np.ascontiguousarray(ids, dtype=np.intp).reshape(-1)
    if g.dtype in (np.float32, np.float64):
        _scatter_rows(rows, flat_ids, out)
    else:  # a dtype the kernel is not compiled for (float16, ...)
        np.add.at(out, flat_ids, rows)
    return out


# VJP derived in docs/book/07-sequences.md#vjp-embedding_lookup
_embedding_lookup = Primitive(
    "embedding_lookup",
    lambda w, ids: (_embedding_lookup(w, ids), (np.shape(w)[0], ids)),
    lambda g, res, needs: (_embedding_scatter(g, res[1], vocab=res[0]), None),
    impl=_lookup_impl,
    nondiff=(1,),
)
# VJP derived in docs/book/07-sequences.md#vjp-embedding_scatter
_embedding_scatter = Primitive(
    "embedding_scatter",
    lambda g, ids, *, vocab: (_embedding_scatter(g, ids, vocab=vocab), ids),
    lambda ct, ids, needs: (_embedding_lookup(ct, ids), None),  # the transpose of a scatter is a gather
    impl=_scatter_impl,
    nondiff=(1,),
)


def _integer_ids(where: str, ids):
    """``ids`` as an array (a traced value is kept as it is), after checking its dtype is an
    integer one; a TypeError naming ``where`` otherwise."""
    ids = ids if hasattr(ids, "dtype") and hasattr(ids, "shape") else np.asarray(ids)
    if np.dtype(ids.dtype).kind not in "iu":
        raise TypeError(f"{where}: expected integer ids, found dtype {ids.dtype}")
    return ids


def embedding_lookup(w, ids):
    """The rows of ``w`` picked by ``ids``: ``w[ids]``.

    ``w`` (vocab, dim); ``ids`` integers of any shape (...) in ``[0, vocab)``. Returns
    (..., dim) in ``w``'s dtype. Float or boolean ids raise TypeError, ids out of range
    ValueError. The gradient with respect to ``w`` adds each cotangent row into the row of
    its id (a one-pass scatter-add), and is differentiable again.
    """
    if len(np.shape(w)) != 2:
        raise ValueError(f"embedding_lookup: expected a table w of shape (vocab, dim), found shape {_shape_str(np.shape(w))}")
    return _embedding_lookup(w, _integer_ids("embedding_lookup", ids))


# ----------------------------------------------------------------------------- layers


def Embedding(vocab_size: int, dim: int, w_init=initializers.normal(1.0), dtype=np.float32) -> Layer:
    """A token embedding: integer ids (...) -> vectors (..., dim), row ``ids`` of a table.

    Params ``{"w": (vocab_size, dim)}`` (PyTorch's ``weight``), drawn from N(0, 1) by default
    as in PyTorch's ``nn.Embedding`` (GPT-2 uses ``w_init=initializers.normal(0.02)``).
    ``init(key, ids_shape)`` takes the shape of the ids, such as ``(-1, T)``, and returns
    ``ids_shape + (dim,)``. ``apply(params, ids)`` refuses non-integer ids (TypeError) and
    ids outside ``[0, vocab_size)`` (ValueError), naming what it expected and found.
    """
    vocab_size = _check_int("Embedding: vocab_size", vocab_size, 1)
    dim = _check_int("Embedding: dim", dim, 1)
    label = f"Embedding({vocab_size}, {dim})"

    def init(key, input_shape):
        return checked_shape(label, input_shape) + (dim,), tree.freeze({"w": w_init(key, (vocab_size, dim), dtype)})

    def apply(params, ids, *, key=None, train=False):
        (w,) = checked_params(label, params, {"w": (vocab_size, dim)})
        return _embedding_lookup(w, _integer_ids(label, ids))

    return Layer(init, apply, name="embedding")


def _sequence_length(label: str, shape, max_len: int, dim: int) -> int:
    """The length ``T`` of a sequence input shaped ``(..., T, dim)`` (``-1`` or None when
    unknown), after checking it fits ``max_len``; a ValueError naming ``label`` otherwise."""
    shape = tuple(shape)
    if len(shape) < 2 or shape[-1] != dim:
        raise ValueError(f"{label}: expected an input (batch, T, {dim}), found shape {_shape_str(shape)}")
    length = shape[-2]
    if length is not None and length > max_len:
        raise ValueError(f"{label}: expected a sequence of at most {max_len} positions (axis -2), found {length} in shape {_shape_str(shape)}")
    return length


def PositionalEmbedding(max_len: int, dim: int, w_init=initializers.normal(1.0), dtype=np.float32) -> Layer:
    """A learned position embedding: adds row ``t`` of a table to the vector at position ``t``.

    Params ``{"w": (max_len, dim)}``, drawn from N(0, 1) by default (as :func:`Embedding`).
    Input ``(batch, T, dim)`` (any leading axes) with ``T <= max_len``; output
    ``x + w[:T]``, the same shape. A longer sequence raises ValueError.
    """
    max_len = _check_int("PositionalEmbedding: max_len", max_len, 1)
    dim = _check_int("PositionalEmbedding: dim", dim, 1)
    label = f"PositionalEmbedding({max_len}, {dim})"

    def init(key, input_shape):
        shape = checked_shape(label, input_shape)
        _sequence_length(label, shape, max_len, dim)
        return shape, tree.freeze({"w": w_init(key, (max_len, dim), dtype)})

    def apply(params, x, *, key=None, train=False):
        (w,) = checked_params(label, params, {"w": (max_len, dim)})
        length = _sequence_length(label, checked_input(label, x, 2).shape, max_len, dim)
        return ops.add(x, ops.getitem(w, slice(0, length)))

    return Layer(init, apply, name="positional_embedding")


def sinusoidal_table(max_len: int, dim: int) -> np.ndarray:
    """The position encodings of Vaswani et al. (2017): a float64 array (max_len, dim) with
    ``table[t, 2i] = sin(t / 10000^(2i/dim))`` and ``table[t, 2i+1] = cos(t / 10000^(2i/dim))``."""
    max_len, dim = _check_int("sinusoidal_table: max_len", max_len), _check_int("sinusoidal_table: dim", dim, 1)
    angles = np.arange(max_len)[:, None] / 10000.0 ** (np.arange(0, dim, 2) / dim)
    table = np.empty((max_len, dim))
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, : dim // 2])
    return table


def SinusoidalPositionalEncoding(max_len: int, dim: int) -> Layer:
    """Fixed position encodings: adds :func:`sinusoidal_table` row ``t`` to the vector at position ``t``.

    No params. Input ``(batch, T, dim)`` (any leading axes) with ``T <= max_len``; output
    ``x + table[:T]`` in ``x``'s dtype, the same shape. A longer sequence raises ValueError.
    """
    max_len = _check_int("SinusoidalPositionalEncoding: max_len", max_len, 1)
    dim = _check_int("SinusoidalPositionalEncoding: dim", dim, 1)
    label = f"SinusoidalPositionalEncoding({max_len}, {dim})"
    table = sinusoidal_table(max_len, dim)

    def init(key, input_shape):
        shape = checked_shape(label, input_shape)
        _sequence_length(label, shape, max_len, dim)
        return shape, {}

    def apply(params, x, *, key=None, train=False):
        checked_no_params(label, params)
        length = _sequence_length(label, checked_input(label, x, 2).shape, max_len, dim)
        return ops.add(x, table[:length].astype(x.dtype, copy=False))

    return Layer(init, apply, name="sinusoidal_positional_encoding")
