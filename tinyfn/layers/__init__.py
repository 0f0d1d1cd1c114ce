"""Layers as pure ``(init, apply)`` pairs, and combinators that compose them.

A layer is a :class:`Layer`, which unpacks as a pair:

>>> import numpy as np
>>> from tinyfn import layers, random
>>> init, apply = layers.Dense(10)
>>> out_shape, params = init(random.key(0), (-1, 4))   # -1: any batch size
>>> out_shape
(-1, 10)
>>> apply(params, np.ones((2, 4), np.float32)).shape   # x: (batch, 4) -> y: (batch, 10)
(2, 10)

``init(key, input_shape) -> (output_shape, params)`` and
``apply(params, x, *, key=None, train=False) -> y``. Params are dicts with string keys
and read-only array leaves; nothing is stored on the layer.

**Stateful layers** (``layer.stateful`` is True, for example BatchNorm and any combinator
containing one) carry non-trained state such as running averages, kept functional:
``init(key, input_shape) -> (output_shape, params, state)`` and
``apply(params, x, *, state, key=None, train=False) -> (y, new_state)``.
:func:`init_with_state` and :func:`apply_with_state` call any layer the stateful way
(stateless layers get and return ``state = {}``), which is what the combinators and the
training helpers use.

One topic a module: :mod:`~tinyfn.layers.base` (the contract and its checks),
:mod:`~tinyfn.layers.linear` (Dense), :mod:`~tinyfn.layers.activations`,
:mod:`~tinyfn.layers.combinators`, :mod:`~tinyfn.layers.norm` (LayerNorm, RMSNorm),
:mod:`~tinyfn.layers.embedding` (token and position embeddings),
:mod:`~tinyfn.layers.attention` (scaled dot-product attention, MultiHeadAttention,
TransformerBlock) and :mod:`~tinyfn.layers.recurrent` (scan, RNN, LSTM and GRU cells and
layers); each fused primitive sits beside its layer.
"""

from .activations import GELU, Dropout, Flatten, Identity, LeakyRelu, LogSoftmax, Relu, Sigmoid, Softmax, Softplus, Tanh
from .attention import MultiHeadAttention, TransformerBlock, scaled_dot_product_attention
from .base import Layer, ParamError, apply_with_state, checked_input, checked_params, init_with_state
from .combinators import fan_in_concat, fan_in_sum, fan_out, parallel, residual, serial, summary
from .embedding import Embedding, PositionalEmbedding, SinusoidalPositionalEncoding, embedding_lookup, sinusoidal_table
from .linear import Dense, dense
from .norm import LayerNorm, RMSNorm, layer_norm, rms_norm
from .recurrent import GRU, LSTM, RNN, Cell, GRUCell, LSTMCell, RNNCell, Scan, project, recurrence, scan

__all__ = [
    "Layer",
    "ParamError",
    "checked_params",
    "checked_input",
    "init_with_state",
    "apply_with_state",
    "dense",
    "Dense",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Softplus",
    "GELU",
    "Softmax",
    "LogSoftmax",
    "Flatten",
    "Identity",
    "Dropout",
    "serial",
    "parallel",
    "fan_out",
    "fan_in_sum",
    "fan_in_concat",
    "residual",
    "summary",
    "layer_norm",
    "LayerNorm",
    "rms_norm",
    "RMSNorm",
    "embedding_lookup",
    "Embedding",
    "PositionalEmbedding",
    "sinusoidal_table",
    "SinusoidalPositionalEncoding",
    "scaled_dot_product_attention",
    "MultiHeadAttention",
    "TransformerBlock",
    "scan",
    "Scan",
    "Cell",
    "project",
    "recurrence",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "RNN",
    "LSTM",
    "GRU",
]
