"""Recurrent networks: a fold over time (:func:`scan`), the RNN, LSTM and GRU cells, and the
layers that run a cell over a sequence.

A recurrent layer reads a sequence ``x`` (batch, T, in) one step at a time. A *cell* maps the
carry of the previous step and the input of this step to a new carry and an output,
``(carry, x_t) -> (carry, y_t)``, and the layer stacks the outputs: (batch, T, hidden).

>>> import numpy as np
>>> from tinyfn import random
>>> from tinyfn.layers import LSTM
>>> init, apply = LSTM(16)
>>> out_shape, params = init(random.key(0), (-1, 10, 8))   # x: (batch, T=10, in=8)
>>> out_shape, params["weight_ih"].shape                  # PyTorch's layout: (4 * 16, 8)
((-1, 10, 16), (64, 8))
>>> apply(params, np.ones((4, 10, 8), np.float32)).shape
(4, 10, 16)

**The cells, in PyTorch's order.** With ``H`` hidden units, ``s`` the sigmoid and ``*`` the
elementwise product, each cell first computes ``xw = x_t @ weight_ih.T + bias_ih`` and
``hw = h @ weight_hh.T + bias_hh``, split into blocks of ``H`` columns in this order:

========  =============  ==================================================================
cell      blocks         step
========  =============  ==================================================================
RNN       (1 block)      ``h' = tanh(xw + hw)`` (or ``relu``)
LSTM      i, f, g, o     ``i, f, o = s(xw + hw)`` on their blocks, ``g = tanh(xw + hw)``;
                         ``c' = f * c + i * g``, ``h' = o * tanh(c')``; the carry is ``(h, c)``
GRU       r, z, n        ``r, z = s(xw + hw)`` on their blocks, ``n = tanh(xw_n + r * hw_n)``
                         (``bias_hn`` inside the product, as in PyTorch); ``h' = (1 - z) * n + z * h``
========  =============  ==================================================================

**Parameters have PyTorch's names and layout**, untransposed: ``weight_ih`` (G*H, in),
``weight_hh`` (G*H, H), ``bias_ih`` and ``bias_hh`` (G*H,), with G = 1, 4, 3 blocks. So the
weights of ``torch.nn.LSTMCell`` load as they are, and those of a one-layer ``torch.nn.LSTM``
after dropping the ``_l0`` suffix of their names::

    params = {name.removesuffix("_l0"): t.detach().numpy() for name, t in torch_lstm.state_dict().items()}

The products read the weights transposed; only ``weight_hh.T``, multiplied at every step, is
copied once per sequence into a contiguous array (OpenBLAS multiplies (32, 128) by a
contiguous (128, 512) about 1.5x faster than by a transposed view). Initialisation is
PyTorch's too: every entry uniform in ``(-1/sqrt(H), 1/sqrt(H))``.

**How a sequence is computed.** The input's part ``xw`` does not depend on the carry, so
:func:`project` computes it for every step at once: one matrix product (batch*T, in) @
(in, G*H) instead of T small ones. The steps that remain are one primitive for the whole
sequence, :func:`recurrence`: each step one small product ``h @ weight_hh.T`` and the gate
arithmetic. Its VJP walks the steps backwards, each step the gates' derivative and one small
product ``d_hw @ weight_hh``, and computes the gradient of ``weight_hh`` for all the steps in
one product at the end (each step's ``d_hw`` against the ``h`` that step started from).

On plain float32 or float64 arrays (inference, and every first-order gradient) the steps run
on buffers made once per sequence: BLAS for the products, Numba kernels for the gates. The
rows of a batch never meet, so they are split over the cores (:mod:`tinyfn.kernels.threads`),
each thread running every step for its rows, with BLAS held to one thread for the small
products (:data:`STEP_BLAS_THREADS`). For the LSTM and the GRU, each thread's whole loop over
time is one Numba kernel that calls numpy's BLAS itself (:mod:`tinyfn.kernels.blas`,
:data:`USE_NUMBA_LOOPS`): no Python between the steps, and the threads never wait for
Python's lock. (The RNN's step, a sum and a tanh, runs in tinyfn operations.) On the traced
values of an outer differentiation the same steps are written with :mod:`tinyfn.ops`, which record there:
differentiable to any order. Those are also what the kernels are tested against.

**A fold over time for any cell.** :func:`scan` folds a cell written in tinyfn operations over
a sequence, and :func:`Scan` makes a layer of a :class:`Cell`. The cells here also carry the
faster route above, which :func:`Scan` takes.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext
from typing import Callable, NamedTuple

import numpy as np
from numba import njit

from .. import initializers, ops, random, tree
from ..autodiff import Node, Primitive, is_traced, primal_value, vjp
from ..kernels import blas
from ..kernels.blas import matmul_into
from ..kernels.threads import over_batch
from ..kernels.transcendental import sigmoid, tanh
from ..random import _check_int
from .base import Layer, _fits, _shape_str, checked_input, checked_params, checked_shape
from .linear import dense

__all__ = [
    "scan",
    "project",
    "recurrence",
    "Cell",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "Scan",
    "RNN",
    "LSTM",
    "GRU",
]

# ----------------------------------------------------------------------------- scan: a fold over time


def _step_index(axis: int, ndim: int, t: int) -> tuple:
    return (slice(None),) * (axis % ndim) + (t,)


def _fold(cell_apply, params, carry, steps: list) -> tuple:
    """Run ``cell_apply`` over the inputs ``steps`` in order: ``(final carry, [y_t, ...])``.

    The carry must keep its structure and shapes from step to step.
    """
    expected = tree.map(np.shape, carry)
    ys = []
    for x in steps:
        carry, y = cell_apply(params, carry, x)
        found = tree.map(np.shape, carry)
        if found != expected:
            raise ValueError(f"scan: the cell must return a carry shaped like the one it was given, expected {expected}, found {found}")
        ys.append(y)
    return carry, ys


def _stacked(ys: list, axis: int):
    """The outputs of every step, each leaf stacked along ``axis``."""
    return tree.map(lambda *leaves: ops.stack(leaves, axis=axis), *ys)


class _Packing:
    """How :func:`scan`'s primitive packs its results into its one output array.

    A primitive has one output, and a fold has two: the final carry and the stacked outputs.
    The forward flattens every leaf of both into one vector (``pack``, which also notes their
    structure and shapes here); :func:`scan` and the VJP read them back as views (``unpack``).
    """

    def __init__(self, inputs: tree.TreeDef, axis: int):
        self.inputs = inputs  # the structure of (params, carry)
        self.axis = axis
        self.outputs: tree.TreeDef | None = None
        self.shapes: list[tuple] = []

    def pack(self, outputs):
        leaves, self.outputs = tree.flatten(outputs)
        self.shapes = [np.shape(leaf) for leaf in leaves]
        return ops.concatenate([ops.reshape(leaf, (-1,)) for leaf in leaves])

    def unpack(self, packed):
        leaves, start = [], 0
        for shape in self.shapes:
            size = int(np.prod(shape))
            leaves.append(ops.reshape(ops.getitem(packed, slice(start, start + size)), shape))
            start += size
        return tree.unflatten(self.outputs, leaves)


def _scan_forward(xs, *leaves, cell, packing):
    params, carry = tree.unflatten(packing.inputs, leaves)
    ndim = len(np.shape(xs))
    # Each step's input is an input of its own to the trace below: a slice of one traced
    # array would cost a cotangent of the whole array per step in the backward pass.
    steps = [ops.getitem(xs, _step_index(packing.axis, ndim, t)) for t in range(np.shape(xs)[packing.axis])]

    def fold(params, carry, steps=steps):
        carry, ys = _fold(cell, params, carry, steps)
        return carry, _stacked(ys, packing.axis)

    if np.result_type(primal_value(xs)).kind == "f":
        outputs, fold_vjp = vjp(fold, params, carry, steps)
    else:  # integer inputs (token ids, say) are constants of the fold
        outputs, fold_vjp = vjp(fold, params, carry)
    return packing.pack(outputs), (fold_vjp, packing)


# VJP derived in docs/book/07-sequences.md#vjp-scan
def _scan_vjp(g, res, needs):
    fold_vjp, packing = res
    d_params, d_carry, *d_steps = fold_vjp(packing.unpack(g))
    d_xs = ops.stack(d_steps[0], axis=packing.axis) if needs[0] else None
    d_leaves = tree.leaves((d_params, d_carry))
    return (d_xs, *[d if need else None for d, need in zip(d_leaves, needs[1:])])


_scan = Primitive("scan", _scan_forward, _scan_vjp)


def _is_within(packed: Node) -> bool:
    """True if the value under ``packed`` holds a Node of ``packed``'s own trace or of one
    nested in it: the mark of a cell that used a traced value it did not receive."""
    value = packed.value
    while type(value) is Node:
        if value.trace.level >= packed.trace.level:
            return True
        value = value.value
    return False


def scan(cell_apply: Callable, params, carry, xs, axis: int = 1) -> tuple:
    """Fold a cell over the steps of a sequence: ``(final carry, stacked outputs)``.

    For ``t = 0, 1, ..., T-1`` along ``axis`` of ``xs`` (default 1: ``xs`` is (batch, T, ...)),
    ``carry, y_t = cell_apply(params, carry, xs[:, t])``. Returns the last carry and the
    outputs ``y_t`` stacked along ``axis`` (each leaf of a pytree output stacked alike, so an
    output (batch, H) gives (batch, T, H)). ``params`` and ``carry`` are pytrees of arrays;
    the carry must keep its structure and shapes from step to step.

    Differentiable in ``params``, ``carry`` and ``xs`` (unless ``xs`` holds integers, such as
    token ids, which are constants), to any order, for any cell written in tinyfn operations. Under differentiation the fold is one primitive: its forward runs
    the steps under a trace of its own, which records every step (a loop, so T may be in
    the thousands), its VJP runs that trace backwards. So everything the cell differentiates
    must come in through ``params``, ``carry`` or ``xs``; a traced value it reads from its
    closure raises TypeError (pass it in ``params``). For the same reason scan cannot run
    under ``value_and_grad(..., static_graph=True)``. The cells of this module have a faster
    route over a sequence (:class:`Cell` ``sequence``), which :func:`Scan` takes.
    """
    shape = np.shape(xs)
    if not -len(shape) <= axis < len(shape) or shape[axis] < 1:
        raise ValueError(f"scan: expected xs with at least one step along axis {axis}, found shape {_shape_str(shape)}")
    leaves, inputs = tree.flatten((params, carry))
    if not (is_traced(xs) or any(is_traced(leaf) for leaf in leaves)):
        steps = [xs[_step_index(axis, len(shape), t)] for t in range(shape[axis])]
        carry, ys = _fold(cell_apply, params, carry, steps)
        return carry, _stacked(ys, axis)
    packing = _Packing(inputs, axis)
    packed = _scan(xs, *leaves, cell=cell_apply, packing=packing)
    if _is_within(packed):
        raise TypeError(
            "scan: the cell used a traced value that it did not receive through params, carry or xs "
            "(a closure over a value being differentiated); pass that value in params"
        )
    return packing.unpack(packed)


# ----------------------------------------------------------------------------- one step, in tinyfn operations
# Each cell's step as two functions of tinyfn operations, which run numpy on arrays and record
# on traced values (the route of higher derivatives, and the reference for the kernels below):
#
#   forward(xw, hw, state) -> (new state, saved)
#   vjp(d_new, saved, state, new_state, weight_hh) -> (d_xw, d_hw, d_state)
#
# ``xw`` and ``hw = h @ weight_hh.T + bias_hh`` are this step's (batch, G*H) projections,
# ``saved`` a tuple of (batch, H) arrays, and ``d_hw`` the cotangent of ``hw``. The state is
# ``h``, or for the LSTM ``h`` and ``c`` side by side (batch, 2H): one array a step, not two.


def _blocks(a, count: int) -> list:
    """The ``count`` blocks of columns of ``a`` (batch, count * H), left to right."""
    width = np.shape(a)[-1] // count
    return [a[..., j * width : (j + 1) * width] for j in range(count)]


@functools.lru_cache(maxsize=None)
def _lstm_scales(hidden: int, dtype: np.dtype) -> tuple:
    """``(k, offset)`` over the blocks i, f, g, o, each entry repeated ``hidden`` times:
    k = (1/2, 1/2, 1, 1/2), offset = (1/2, 1/2, 0, 1/2), read-only arrays of ``dtype``.

    As ``s(x) = 1/2 + 1/2 tanh(x/2)``, ``offset + k * tanh(k * pre)`` is the sigmoid on the
    blocks i, f, o and tanh on g: one tanh over all four blocks.
    """
    k = np.repeat(np.array([0.5, 0.5, 1.0, 0.5], dtype), hidden)
    offset = np.repeat(np.array([0.5, 0.5, 0.0, 0.5], dtype), hidden)
    return tree.freeze((k, offset))


def _lstm_forward(xw, hw, state):
    pre = xw + hw
    k, offset = _lstm_scales(np.shape(state)[1] // 2, np.result_type(primal_value(pre)))
    i, f, g, o = _blocks(offset + k * ops.tanh(pre * k), 4)
    c_new = f * _blocks(state, 2)[1] + i * g
    tanh_c = ops.tanh(c_new)
    return ops.concatenate([o * tanh_c, c_new], axis=1), (i, f, g, o, tanh_c)


def _lstm_vjp(d_new, saved, state, new_state, weight_hh):
    i, f, g, o, tanh_c = saved
    dh, dc = _blocks(d_new, 2)
    dc = dc + dh * o * (1 - tanh_c * tanh_c)  # c' reaches the loss directly and through h'
    # s' = s (1 - s) on i, f, o; tanh' = 1 - tanh^2 on g
    d_i, d_f = dc * g * i * (1 - i), dc * _blocks(state, 2)[1] * f * (1 - f)
    d_g, d_o = dc * i * (1 - g * g), dh * tanh_c * o * (1 - o)
    d_pre = ops.concatenate([d_i, d_f, d_g, d_o], axis=1)
    return d_pre, d_pre, ops.concatenate([ops.matmul(d_pre, weight_hh), dc * f], axis=1)


def _gru_forward(xw, hw, h):
    x_r, x_z, x_n = _blocks(xw, 3)
    h_r, h_z, hw_n = _blocks(hw, 3)
    r = 0.5 + 0.5 * ops.tanh(0.5 * (x_r + h_r))  # s(x) = 1/2 + 1/2 tanh(x/2), as for the LSTM
    z = 0.5 + 0.5 * ops.tanh(0.5 * (x_z + h_z))
    n = ops.tanh(x_n + r * hw_n)
    return n + z * (h - n), (r, z, n, hw_n)


def _gru_vjp(d_new, saved, h, new_h, weight_hh):
    r, z, n, hw_n = saved
    d_n = d_new * (1 - z) * (1 - n * n)
    d_r = d_n * hw_n * r * (1 - r)
    d_z = d_new * (h - n) * z * (1 - z)
    d_hw = ops.concatenate([d_r, d_z, d_n * r], axis=1)  # hw_n enters n through r * hw_n
    return ops.concatenate([d_r, d_z, d_n], axis=1), d_hw, d_new * z + ops.matmul(d_hw, weight_hh)


def _rnn_forward(nonlinearity):
    def forward(xw, hw, h):
        return nonlinearity(xw + hw), ()

    return forward


def _rnn_tanh_vjp(d_new, saved, h, new_h, weight_hh):
    d_pre = d_new * (1 - new_h * new_h)
    return d_pre, d_pre, ops.matmul(d_pre, weight_hh)


def _rnn_relu_vjp(d_new, saved, h, new_h, weight_hh):
    d_pre = ops.relu_backward(d_new, new_h)
    return d_pre, d_pre, ops.matmul(d_pre, weight_hh)


# ----------------------------------------------------------------------------- one step, in kernels
# The same steps on plain float32 or float64 arrays, into buffers made once per sequence:
# ``states`` (batch, T+1, width), the state before each step and after the last, and
# ``saved`` (batch, T, S), each step's saved blocks side by side. Numba kernels do the
# arithmetic that numpy would spread over a dozen passes, BLAS the products. The kernels take
# their sigmoids and tanh from :mod:`tinyfn.kernels.transcendental` (vectorised in float32;
# ``math.tanh`` in a loop is ~30x slower than numpy's SIMD tanh), so a step is one product
# and one kernel call, and the loop over the steps can itself be a kernel. Each kernel slices its
# rows into blocks and indexes them with the loop variable alone: with offsets such as
# ``hidden + j`` in the index, LLVM left the loops scalar, 4x slower.


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _lstm_step_kernel(xw, hw, bias, states, saved, t):
    """Step t of the LSTM, every row of the batch, from ``hw = h @ weight_hh.T``: the gates
    ``saved[:, t, :4H] <- i, f, g, o``, ``c' = f * c + i * g`` into ``states[:, t+1, H:]``,
    ``tanh(c')`` into ``saved[:, t, 4H:]`` and ``h' = o * tanh(c')`` into ``states[:, t+1, :H]``."""
    hidden = states.shape[2] // 2
    for n in range(hw.shape[0]):
        s, x, h = saved[n, t], xw[n, t], hw[n]
        for lo, hi in ((0, 2 * hidden), (3 * hidden, 4 * hidden)):  # i and f, then o: sigmoids
            gate, x_b, h_b, b_b = s[lo:hi], x[lo:hi], h[lo:hi], bias[lo:hi]
            for j in range(hi - lo):
                gate[j] = sigmoid(x_b[j] + h_b[j] + b_b[j])
        g, x_g, h_g, b_g = s[2 * hidden : 3 * hidden], x[2 * hidden : 3 * hidden], h[2 * hidden : 3 * hidden], bias[2 * hidden : 3 * hidden]
        for j in range(hidden):
            g[j] = tanh(x_g[j] + h_g[j] + b_g[j])
        i, f, o, tanh_c = s[:hidden], s[hidden : 2 * hidden], s[3 * hidden : 4 * hidden], s[4 * hidden :]
        c, c_new, h_new = states[n, t, hidden:], states[n, t + 1, hidden:], states[n, t + 1, :hidden]
        for j in range(hidden):
            c_j = f[j] * c[j] + i[j] * g[j]
            c_new[j] = c_j
            tanh_c[j] = tanh(c_j)
            h_new[j] = o[j] * tanh_c[j]


@njit(cache=True, nogil=True)
def _lstm_cell_vjp_kernel(d_in, g, saved, states, d_pre, d_out, t):
    """Step t backwards: ``d_in`` (batch, 2H) holds the cotangent of state t+1 from the later
    steps, ``g[:, t]`` its cotangent as an output. Writes ``d_pre[:, t]`` (the cotangent of
    the four blocks' pre-activations) and the c half of state t's cotangent, ``dc * f``, into
    ``d_out[:, H:]``."""
    hidden = d_in.shape[1] // 2
    one = saved.dtype.type(1)
    for n in range(d_in.shape[0]):
        s, p = saved[n, t], d_pre[n, t]
        i, f, gg, o, tc = s[:hidden], s[hidden : 2 * hidden], s[2 * hidden : 3 * hidden], s[3 * hidden : 4 * hidden], s[4 * hidden :]
        p_i, p_f, p_g, p_o = p[:hidden], p[hidden : 2 * hidden], p[2 * hidden : 3 * hidden], p[3 * hidden :]
        dh_in, dc_in, gh, gc = d_in[n, :hidden], d_in[n, hidden:], g[n, t, :hidden], g[n, t, hidden:]
        c, dc_out = states[n, t, hidden:], d_out[n, hidden:]
        for j in range(hidden):
            dh = dh_in[j] + gh[j]
            dc = dc_in[j] + gc[j] + dh * o[j] * (one - tc[j] * tc[j])
            p_i[j] = dc * gg[j] * i[j] * (one - i[j])
            p_f[j] = dc * c[j] * f[j] * (one - f[j])
            p_g[j] = dc * i[j] * (one - gg[j] * gg[j])
            p_o[j] = dh * tc[j] * o[j] * (one - o[j])
            dc_out[j] = dc * f[j]


def _lstm_step(xw, hw, bias, states, saved, t):
    """Step t of the LSTM into ``states[:, t+1]`` and ``saved[:, t]`` (i, f, g, o, tanh c'),
    from ``hw = h @ weight_hh.T``: one kernel call."""
    _lstm_step_kernel(xw, hw, bias, states, saved, t)


def _lstm_step_vjp(d_in, g, saved, states, weight_hh, d_xw, d_hw, d_out, t):
    """Step t backwards: from ``d_in``, the cotangent of state t+1 from the later steps, into
    ``d_hw[:, t]`` (which is ``d_xw[:, t]``) and ``d_out``, the cotangent of state t."""
    _lstm_cell_vjp_kernel(d_in, g, saved, states, d_hw, d_out, t)
    np.matmul(d_hw[:, t], weight_hh, out=d_out[:, : weight_hh.shape[1]])


@njit(cache=True, nogil=True)
def _lstm_loop(gemm, xw, w, bias, states, saved, hw):
    """Every step of the LSTM, as :func:`_lstm_step` after ``hw = h @ w``, with the products
    by the BLAS function at ``gemm`` (:mod:`tinyfn.kernels.blas`): no Python between steps."""
    hidden, zero = w.shape[0], hw.dtype.type(0)
    for t in range(xw.shape[1]):
        matmul_into(gemm, states[:, t, :hidden], w, hw, zero)
        _lstm_step_kernel(xw, hw, bias, states, saved, t)


@njit(cache=True, nogil=True)
def _lstm_loop_vjp(gemm, d_in, d_out, g, saved, states, weight_hh, d_xw, d_hw):
    """Every step backwards, as :func:`_lstm_step_vjp`, starting from ``d_in`` (``d_out`` a
    buffer of its shape); returns the buffer holding the cotangent of the first state.
    (``d_xw`` is ``d_hw``: the LSTM's two projections enter only as their sum.)"""
    hidden, zero = weight_hh.shape[1], d_hw.dtype.type(0)
    for t in range(saved.shape[1] - 1, -1, -1):
        _lstm_cell_vjp_kernel(d_in, g, saved, states, d_hw, d_out, t)
        matmul_into(gemm, d_hw[:, t], weight_hh, d_out[:, :hidden], zero)
        d_in, d_out = d_out, d_in
    return d_in


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _gru_step_kernel(xw, hw, bias, states, saved, t):
    """Step t of the GRU, every row of the batch, from ``hw = h @ weight_hh.T``: ``saved[:, t]
    <- r, z, n, hw_n`` (``hw_n`` with its bias, as the VJP needs it) and ``states[:, t+1] <-
    n + z * (h - n)``."""
    hidden = states.shape[2]
    for row in range(hw.shape[0]):
        s, x, h = saved[row, t], xw[row, t], hw[row]
        rz, x_rz, h_rz, b_rz = s[: 2 * hidden], x[: 2 * hidden], h[: 2 * hidden], bias[: 2 * hidden]
        for j in range(2 * hidden):
            rz[j] = sigmoid(x_rz[j] + h_rz[j] + b_rz[j])
        r, z, n, hw_n = s[:hidden], s[hidden : 2 * hidden], s[2 * hidden : 3 * hidden], s[3 * hidden :]
        x_n, h_n, b_n = x[2 * hidden :], h[2 * hidden :], bias[2 * hidden :]
        h_old, h_new = states[row, t], states[row, t + 1]
        for j in range(hidden):
            hw_n[j] = h_n[j] + b_n[j]
            n[j] = tanh(x_n[j] + r[j] * hw_n[j])
            h_new[j] = n[j] + z[j] * (h_old[j] - n[j])


@njit(cache=True, nogil=True)
def _gru_cell_vjp_kernel(d_in, g, saved, states, d_xw, d_hw, d_out, t):
    """Step t backwards: from ``d_in + g[:, t]``, the cotangent of state t+1, writes
    ``d_xw[:, t]``, ``d_hw[:, t]`` and ``d_out = d * z``, the part of state t's cotangent
    that does not pass through ``hw``."""
    hidden = d_in.shape[1]
    one = saved.dtype.type(1)
    for n in range(d_in.shape[0]):
        s, h, dx, dw = saved[n, t], states[n, t], d_xw[n, t], d_hw[n, t]
        r, z, cand, hw_n = s[:hidden], s[hidden : 2 * hidden], s[2 * hidden : 3 * hidden], s[3 * hidden :]
        x_r, x_z, x_n = dx[:hidden], dx[hidden : 2 * hidden], dx[2 * hidden :]
        w_r, w_z, w_n = dw[:hidden], dw[hidden : 2 * hidden], dw[2 * hidden :]
        d_new, g_t, out = d_in[n], g[n, t], d_out[n]
        for j in range(hidden):
            d = d_new[j] + g_t[j]
            d_n = d * (one - z[j]) * (one - cand[j] * cand[j])
            d_r = d_n * hw_n[j] * r[j] * (one - r[j])
            d_z = d * (h[j] - cand[j]) * z[j] * (one - z[j])
            x_r[j], x_z[j], x_n[j] = d_r, d_z, d_n
            w_r[j], w_z[j], w_n[j] = d_r, d_z, d_n * r[j]
            out[j] = d * z[j]


def _gru_step(xw, hw, bias, states, saved, t):
    """Step t of the GRU into ``states[:, t+1]`` and ``saved[:, t]`` (r, z, n, hw_n), from
    ``hw = h @ weight_hh.T``: one kernel call."""
    _gru_step_kernel(xw, hw, bias, states, saved, t)


def _gru_step_vjp(d_in, g, saved, states, weight_hh, d_xw, d_hw, d_out, t):
    """Step t backwards, from ``d_in`` (the cotangent of state t+1 from the later steps) into
    ``d_xw[:, t]``, ``d_hw[:, t]`` and ``d_out``, the cotangent of state t."""
    _gru_cell_vjp_kernel(d_in, g, saved, states, d_xw, d_hw, d_out, t)
    d_out += d_hw[:, t] @ weight_hh


@njit(cache=True, nogil=True)
def _gru_loop(gemm, xw, w, bias, states, saved, hw):
    """Every step of the GRU in Numba (as :func:`_lstm_loop`)."""
    zero = hw.dtype.type(0)
    for t in range(xw.shape[1]):
        matmul_into(gemm, states[:, t], w, hw, zero)
        _gru_step_kernel(xw, hw, bias, states, saved, t)


@njit(cache=True, nogil=True)
def _gru_loop_vjp(gemm, d_in, d_out, g, saved, states, weight_hh, d_xw, d_hw):
    """Every step of the GRU backwards in Numba (as :func:`_lstm_loop_vjp`)."""
    one = d_hw.dtype.type(1)
    for t in range(saved.shape[1] - 1, -1, -1):
        _gru_cell_vjp_kernel(d_in, g, saved, states, d_xw, d_hw, d_out, t)
        matmul_into(gemm, d_hw[:, t], weight_hh, d_out, one)  # d_out += d_hw[:, t] @ weight_hh
        d_in, d_out = d_out, d_in
    return d_in


class _Kind(NamedTuple):
    """One kind of cell: its blocks and the widths of its state and saved values (in units
    of H), its step in tinyfn operations, and, where kernels pay, its step on arrays."""

    blocks: int  # G: blocks of H columns in xw and hw
    state_width: int
    forward: Callable
    vjp: Callable
    sum_first: bool  # xw and hw enter only as xw + hw: their cotangents are one array
    saved_width: int = 0
    step: Callable | None = None  # step(xw, hw, bias, states, saved, t)
    step_vjp: Callable | None = None  # step_vjp(d_in, g, saved, states, weight_hh, d_xw, d_hw, d_out, t)
    loop: Callable | None = None  # every step in Numba: loop(gemm, xw, w, bias, states, saved, hw)
    loop_vjp: Callable | None = None  # loop_vjp(gemm, d_in, d_out, g, saved, states, weight_hh, d_xw, d_hw) -> d_in


# The RNN's step is a sum and a tanh (or relu), little for a kernel to fuse: it keeps the
# steps in tinyfn operations.
_KINDS = {
    "rnn_tanh": _Kind(1, 1, _rnn_forward(ops.tanh), _rnn_tanh_vjp, True),
    "rnn_relu": _Kind(1, 1, _rnn_forward(ops.relu), _rnn_relu_vjp, True),
    "lstm": _Kind(4, 2, _lstm_forward, _lstm_vjp, True, 5, _lstm_step, _lstm_step_vjp, _lstm_loop, _lstm_loop_vjp),
    "gru": _Kind(3, 1, _gru_forward, _gru_vjp, False, 4, _gru_step, _gru_step_vjp, _gru_loop, _gru_loop_vjp),
}

# ----------------------------------------------------------------------------- the recurrence primitive

STEP_BLAS_THREADS: int | None = 1
"""Threads numpy's BLAS may use inside the loops over the steps, or None to leave BLAS alone.

Each step makes a small product, (batch, H) @ (H, G*H), after the one before it; OpenBLAS
splits such a product over its threads at a loss, so the batch is split over tinyfn's own
threads instead (:mod:`tinyfn.kernels.threads`), each calling BLAS on one thread. Measured with
``benchmarks/recurrent.py`` on 2 busy cores (OpenBLAS on 2 threads): the step's product
(32, 128) @ (128, 512) took 85 us on one thread and 570 us on two, and a training step of the
benchmark used 63 ms of CPU time with the loops held to one thread against 171 ms without
(OpenBLAS's waiting threads spin). The big products before and after the loops keep every
thread. Applied with threadpoolctl when it is installed (``pip install threadpoolctl``);
without it BLAS keeps its threads (``OPENBLAS_NUM_THREADS=1``, set before numpy is imported,
holds it to one everywhere)."""


USE_NUMBA_LOOPS = True
"""Run the LSTM's and the GRU's loops over time inside one Numba kernel per thread, calling numpy's BLAS
(:mod:`tinyfn.kernels.blas`) for each step's product, when that BLAS function is found;
False runs every step from Python (the products by ``np.matmul``, the gates by one kernel
call). The two routes compute the same numbers; the tests compare them."""


@functools.lru_cache(maxsize=1)
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def _step_products():
    """A context for the loop over the steps: BLAS limited to :data:`STEP_BLAS_THREADS`."""
    controller = None if STEP_BLAS_THREADS is None else _blas_controller()
    return nullcontext() if controller is None else controller.limit(limits=STEP_BLAS_THREADS, user_api="blas")


def _kernel_ready(*arrays) -> bool:
    """True when the kernels can run on ``arrays``: plain numpy arrays, none traced, all of
    one dtype, float32 or float64."""
    dtype = arrays[0].dtype if type(arrays[0]) is np.ndarray else None
    return dtype in (np.float32, np.float64) and all(type(a) is np.ndarray and a.dtype == dtype for a in arrays)


def _forward_ops(kind: _Kind, xw, state, weight_hh, bias_hh) -> tuple:
    """``(states (batch, T+1, width), [saved of each step])`` in tinyfn operations."""
    hidden = np.shape(weight_hh)[1]
    # a contiguous copy of weight_hh.T for plain arrays: BLAS is ~1.5x slower on the transposed view
    w = np.ascontiguousarray(weight_hh.T) if type(weight_hh) is np.ndarray else ops.transpose(weight_hh)
    states, saved = [state], []
    with _step_products():
        for t in range(np.shape(xw)[1]):
            hw = ops.matmul(states[-1][:, :hidden], w) + bias_hh
            new_state, s = kind.forward(xw[:, t], hw, states[-1])
            states.append(new_state)
            saved.append(s)
    return ops.stack(states, axis=1), saved


def _gemm(kind: _Kind, dtype) -> int | None:
    """The address of numpy's BLAS product for ``kind.loop`` (None: no loop in Numba for this
    kind, or no BLAS function found; the steps then run from Python)."""
    return blas.gemm_address(dtype) if kind.loop is not None and USE_NUMBA_LOOPS else None


def _forward_kernels(kind: _Kind, xw, state, weight_hh, bias_hh) -> tuple:
    """``(states (batch, T+1, width), saved (batch, T, S))`` on arrays, by the kernels."""
    batch, steps, rows = xw.shape
    hidden = weight_hh.shape[1]
    xw, w = np.ascontiguousarray(xw), np.ascontiguousarray(weight_hh.T)
    states = np.empty((batch, steps + 1, state.shape[1]), xw.dtype)
    states[:, 0] = state
    saved = np.empty((batch, steps, kind.saved_width * hidden), xw.dtype)
    hw = np.empty((batch, rows), xw.dtype)
    gemm = _gemm(kind, xw.dtype)

    def rows_of_batch(lo: int, hi: int) -> None:  # every step, for rows lo:hi of the batch
        x, h, s, sv = xw[lo:hi], hw[lo:hi], states[lo:hi], saved[lo:hi]
        if gemm is not None:
            kind.loop(gemm, x, w, bias_hh, s, sv, h)
            return
        for t in range(steps):
            np.matmul(s[:, t, :hidden], w, out=h)
            kind.step(x, h, bias_hh, s, sv, t)

    with _step_products():
        over_batch(batch, rows_of_batch)
    return states, saved


def _backward_ops(kind: _Kind, g, states, saved, weight_hh) -> tuple:
    """``(d_xw, d_hw, d_state)`` in tinyfn operations, from the cotangent ``g`` of every
    step's state; ``saved`` is a list of each step's saved values or the kernels' buffer."""
    steps = np.shape(g)[1]
    d_xw, d_hw = [None] * steps, [None] * steps
    d_state = g[:, steps - 1]
    with _step_products():
        for t in range(steps - 1, -1, -1):
            saved_t = saved[t] if isinstance(saved, list) else tuple(_blocks(saved[:, t], kind.saved_width))
            d_xw[t], d_hw[t], d_state = kind.vjp(d_state, saved_t, states[:, t], states[:, t + 1], weight_hh)
            if t:
                d_state = d_state + g[:, t - 1]  # the state before step t is also an output
    d_hw = ops.stack(d_hw, axis=1)
    return (d_hw if kind.sum_first else ops.stack(d_xw, axis=1)), d_hw, d_state


def _backward_kernels(kind: _Kind, g, states, saved, weight_hh) -> tuple:
    """``(d_xw, d_hw, d_state)`` on arrays, by the kernels."""
    batch, steps = saved.shape[:2]
    g = np.ascontiguousarray(g)
    d_hw = np.empty((batch, steps, weight_hh.shape[0]), g.dtype)
    d_xw = d_hw if kind.sum_first else np.empty_like(d_hw)
    d_state = np.zeros((batch, states.shape[2]), g.dtype)
    gemm, weight_hh = _gemm(kind, g.dtype), np.ascontiguousarray(weight_hh)

    def rows_of_batch(lo: int, hi: int) -> None:  # every step backwards, for rows lo:hi of the batch
        d_in, d_out = d_state[lo:hi], np.empty_like(d_state[lo:hi])
        if gemm is not None:
            d_state[lo:hi] = kind.loop_vjp(gemm, d_in, d_out, g[lo:hi], saved[lo:hi], states[lo:hi], weight_hh, d_xw[lo:hi], d_hw[lo:hi])
            return
        for t in range(steps - 1, -1, -1):
            kind.step_vjp(d_in, g[lo:hi], saved[lo:hi], states[lo:hi], weight_hh, d_xw[lo:hi], d_hw[lo:hi], d_out, t)
            d_in, d_out = d_out, d_in
        d_state[lo:hi] = d_in

    with _step_products():
        over_batch(batch, rows_of_batch)
    return d_xw, d_hw, d_state


def _recurrence_forward(xw, state, weight_hh, bias_hh, *, cell):
    kind = _KINDS[cell]
    if kind.step is not None and _kernel_ready(xw, state, weight_hh, bias_hh):
        states, saved = _forward_kernels(kind, xw, state, weight_hh, bias_hh)
    else:
        states, saved = _forward_ops(kind, xw, state, weight_hh, bias_hh)
    return states[:, 1:], (kind, states, saved, weight_hh)


# VJP derived in docs/book/07-sequences.md#vjp-recurrence
def _recurrence_vjp(g, res, needs):
    kind, states, saved, weight_hh = res
    if type(saved) is np.ndarray and _kernel_ready(g, states, saved, weight_hh):
        d_xw, d_hw, d_state = _backward_kernels(kind, g, states, saved, weight_hh)
    else:
        d_xw, d_hw, d_state = _backward_ops(kind, g, states, saved, weight_hh)
    batch, steps, rows = np.shape(d_hw)
    hidden = np.shape(weight_hh)[1]
    d_rows = ops.reshape(d_hw, (batch * steps, rows))
    d_weight = d_bias = None
    if needs[2]:  # every step's part at once: d_hw against the h each step started from
        h_in = ops.reshape(states[:, :-1, :hidden], (batch * steps, hidden))
        d_weight = ops.matmul(ops.transpose(d_rows), h_in)
    if needs[3]:
        d_bias = ops.sum(d_rows, axis=0)
    return d_xw if needs[0] else None, d_state if needs[1] else None, d_weight, d_bias


_recurrence = Primitive("recurrence", _recurrence_forward, _recurrence_vjp)


def recurrence(xw, state, weight_hh, bias_hh, cell: str = "lstm"):
    """Run a cell's recurrence over every step of a sequence whose input part is computed.

    Args:
      xw: (batch, T, G*H), the input's part of each step's gates (:func:`project`), T >= 1.
      state: (batch, H), the state before the first step; for the LSTM (batch, 2H), ``h`` and
        ``c`` side by side.
      weight_hh: (G*H, H); bias_hh: (G*H,).
      cell: ``"lstm"``, ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"`` (G = 4, 3, 1, 1).

    Returns the state after every step, (batch, T, width of ``state``). One primitive: each
    step one small product ``h @ weight_hh.T`` and the gates; its VJP runs the steps
    backwards and the gradient of ``weight_hh`` for all steps in one product. Plain float32
    or float64 arrays of one dtype take the kernels; anything else (traced values of an outer
    differentiation included) the same steps in tinyfn operations, differentiable to any order.
    """
    if cell not in _KINDS:
        raise ValueError(f"recurrence: cell must be one of {sorted(_KINDS)}, found {cell!r}")
    kind, where = _KINDS[cell], f"recurrence({cell!r})"
    w_shape = np.shape(weight_hh)
    if len(w_shape) != 2 or w_shape[1] < 1 or w_shape[0] != kind.blocks * w_shape[1]:
        raise ValueError(f"{where}: expected weight_hh of shape ({kind.blocks}*H, H), found {_shape_str(w_shape)}")
    rows, hidden = w_shape
    batch = np.shape(state)[0] if np.ndim(state) else None
    expected = {"xw": (batch, None, rows), "state": (batch, kind.state_width * hidden), "bias_hh": (rows,)}
    for (name, shape), value in zip(expected.items(), (xw, state, bias_hh)):
        if not _fits(np.shape(value), shape):
            raise ValueError(f"{where}: expected {name} of shape {_shape_str(shape)}, found {_shape_str(np.shape(value))}")
    if np.shape(xw)[1] < 1:
        raise ValueError(f"{where}: expected xw with at least one step (axis 1), found shape {_shape_str(np.shape(xw))}")
    return _recurrence(xw, state, weight_hh, bias_hh, cell=cell)


def project(x, weight_ih, bias_ih):
    """The input's part of every step's gates, for all steps at once: ``x @ weight_ih.T + bias_ih``.

    ``x`` (batch, T, in), ``weight_ih`` (G*H, in), ``bias_ih`` (G*H,) -> (batch, T, G*H), by
    one matrix product (batch*T, in) @ (in, G*H) (the :func:`~tinyfn.layers.dense` primitive).
    """
    batch, steps, features = np.shape(x)
    flat = dense(ops.reshape(x, (batch * steps, features)), ops.transpose(weight_ih), bias_ih)
    return ops.reshape(flat, (batch, steps, np.shape(weight_ih)[0]))


# ----------------------------------------------------------------------------- cells


class Cell(NamedTuple):
    """A recurrent cell: what :func:`Scan` needs to run it over a sequence.

    * ``init(key, input_shape) -> (output_shape, params)``, where ``input_shape`` is one
      step's input (batch, in) and ``output_shape`` one step's output;
    * ``apply(params, carry, x_t) -> (carry, y_t)``: one step;
    * ``initial_carry(batch, dtype) -> carry``: the carry before the first step;
    * ``sequence(params, carry, xs) -> (carry, ys)``, optional: every step of ``xs``
      (batch, T, in) at once, with the results of ``scan(apply, params, carry, xs)``, faster;
    * ``name``: the layer's name in a model (``"lstm"`` names the params ``lstm_0`` in serial).
    """

    init: Callable
    apply: Callable
    initial_carry: Callable
    sequence: Callable | None = None
    name: str = "scan"


def _check_sequence(label: str, xs, features: int) -> None:
    shape = np.shape(checked_input(label, xs))
    if len(shape) != 3 or shape[1] < 1 or shape[2] != features:
        raise ValueError(f"{label}: expected an input (batch, T, {features}) with T >= 1, found shape {_shape_str(shape)}")


def _state_of(label: str, kind: str, carry, batch: int, hidden: int):
    """The recurrence's state from a cell's carry (``(h, c)`` side by side for the LSTM), after
    checking its shapes; a ValueError naming the expected and found shapes otherwise."""
    parts = tuple(carry) if kind == "lstm" and isinstance(carry, (tuple, list)) else (carry,)
    wanted = 2 if kind == "lstm" else 1
    if len(parts) != wanted or any(np.shape(p) != (batch, hidden) for p in parts):
        expected = f"(h, c), two arrays of shape ({batch}, {hidden})" if kind == "lstm" else f"h of shape ({batch}, {hidden})"
        found = [_shape_str(np.shape(p)) for p in parts] if kind == "lstm" and len(parts) > 1 else _shape_str(np.shape(carry))
        raise ValueError(f"{label}: expected the carry {expected}, found {found}")
    return ops.concatenate(parts, axis=1) if kind == "lstm" else carry


def _carry_of(kind: str, state, hidden: int):
    """A cell's carry from the recurrence's state: ``(h, c)`` for the LSTM, ``h`` otherwise."""
    return (state[:, :hidden], state[:, hidden:]) if kind == "lstm" else state


def _cell(kind: str, hidden: int, dtype, label: str, name: str) -> Cell:
    """The cell ``kind`` (a key of ``_KINDS``) with ``hidden`` units and PyTorch's parameters."""
    rows = _KINDS[kind].blocks * hidden
    expected = {"weight_ih": (rows, None), "weight_hh": (rows, hidden), "bias_ih": (rows,), "bias_hh": (rows,)}

    def init(key, input_shape):
        shape = checked_shape(label, input_shape)
        if len(shape) != 2 or shape[-1] is None or shape[-1] < 1:
            raise ValueError(f"{label}: expected one step's input shape (batch, features), found {_shape_str(shape)}")
        shapes = {**expected, "weight_ih": (rows, shape[-1])}
        draw = initializers.uniform(1 / np.sqrt(hidden))  # PyTorch's initialisation
        params = {p: draw(k, s, dtype) for (p, s), k in zip(shapes.items(), random.split(key, 4))}
        return (shape[0], hidden), tree.freeze(params)

    def initial_carry(batch: int, dtype=dtype):
        zeros = np.zeros((batch, hidden), dtype)
        return (zeros, zeros) if kind == "lstm" else zeros

    def sequence(params, carry, xs):
        weight_ih, weight_hh, bias_ih, bias_hh = checked_params(label, params, expected)
        _check_sequence(label, xs, np.shape(weight_ih)[1])
        state = _state_of(label, kind, carry, np.shape(xs)[0], hidden)
        states = _recurrence(project(xs, weight_ih, bias_ih), state, weight_hh, bias_hh, cell=kind)
        ys = states[:, :, :hidden] if kind == "lstm" else states
        return _carry_of(kind, states[:, -1], hidden), ys

    def apply(params, carry, x):
        shape = np.shape(checked_input(label, x))
        if len(shape) != 2:
            raise ValueError(f"{label}: expected one step's input (batch, features), found shape {_shape_str(shape)}")
        carry, ys = sequence(params, carry, ops.reshape(x, (shape[0], 1, shape[1])))
        return carry, ys[:, 0]

    return Cell(init, apply, initial_carry, sequence, name)


_NONLINEARITIES = ("tanh", "relu")


def RNNCell(hidden: int, nonlinearity: str = "tanh", dtype=np.float32) -> Cell:
    """The Elman cell of ``torch.nn.RNNCell``: ``h' = tanh(x @ weight_ih.T + bias_ih + h @
    weight_hh.T + bias_hh)`` (``relu`` with ``nonlinearity="relu"``).

    Params ``weight_ih`` (H, in), ``weight_hh`` (H, H), ``bias_ih``, ``bias_hh`` (H,); carry
    ``h`` (batch, H); each step's output is ``h'``.
    """
    hidden = _check_int("RNNCell: hidden", hidden, 1)
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(f"RNNCell: nonlinearity must be one of {_NONLINEARITIES}, found {nonlinearity!r}")
    return _cell(f"rnn_{nonlinearity}", hidden, dtype, f"RNNCell({hidden})", "rnn")


def LSTMCell(hidden: int, dtype=np.float32) -> Cell:
    """The LSTM cell of ``torch.nn.LSTMCell`` (gates i, f, g, o; see the module docstring).

    Params ``weight_ih`` (4H, in), ``weight_hh`` (4H, H), ``bias_ih``, ``bias_hh`` (4H,);
    carry ``(h, c)``, two arrays (batch, H); each step's output is ``h'``.
    """
    hidden = _check_int("LSTMCell: hidden", hidden, 1)
    return _cell("lstm", hidden, dtype, f"LSTMCell({hidden})", "lstm")


def GRUCell(hidden: int, dtype=np.float32) -> Cell:
    """The GRU cell of ``torch.nn.GRUCell`` (gates r, z, n; see the module docstring).

    Params ``weight_ih`` (3H, in), ``weight_hh`` (3H, H), ``bias_ih``, ``bias_hh`` (3H,);
    carry ``h`` (batch, H); each step's output is ``h'``.
    """
    hidden = _check_int("GRUCell: hidden", hidden, 1)
    return _cell("gru", hidden, dtype, f"GRUCell({hidden})", "gru")


# ----------------------------------------------------------------------------- layers over sequences


def Scan(cell: Cell, return_state: bool = False) -> Layer:
    """A layer running ``cell`` over the steps of a sequence: (batch, T, in) -> (batch, T, ...).

    ``apply(params, xs, *, carry=None)`` starts from ``carry`` (default
    ``cell.initial_carry(batch, xs.dtype)``, zeros for the cells here) and returns the stacked
    outputs, or ``(outputs, final carry)`` with ``return_state=True``. It takes the cell's
    ``sequence`` route when it has one, :func:`scan` over ``cell.apply`` otherwise. Params
    are the cell's.
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"Scan: expected a Cell (such as LSTMCell(128)), found {type(cell).__name__}")
    label = f"Scan({cell.name})"

    def init(key, input_shape):
        shape = checked_shape(label, input_shape)
        if len(shape) != 3:
            raise ValueError(f"{label}: expected an input shape (batch, T, features), found {_shape_str(shape)}")
        batch, steps, features = shape
        step_shape, params = cell.init(key, (batch, features))
        out_shape = (batch, steps) + tuple(step_shape[1:])
        if return_state:
            carry_shape = tree.map(lambda a: (batch,) + np.shape(a)[1:], cell.initial_carry(1, np.float32))
            return (out_shape, carry_shape), params
        return out_shape, params

    def apply(params, xs, *, carry=None, key=None, train=False):
        if carry is None:
            carry = cell.initial_carry(np.shape(checked_input(label, xs, 1))[0], np.result_type(primal_value(xs)))
        if cell.sequence is not None:
            carry, ys = cell.sequence(params, carry, xs)
        else:
            carry, ys = scan(cell.apply, params, carry, xs, axis=1)
        return (ys, carry) if return_state else ys

    return Layer(init, apply, name=cell.name)


def RNN(hidden: int, nonlinearity: str = "tanh", return_state: bool = False, dtype=np.float32) -> Layer:
    """An Elman RNN over a sequence, ``torch.nn.RNN(in, hidden, batch_first=True)``: (batch, T,
    in) -> (batch, T, hidden) (and the final ``h`` with ``return_state``). See :func:`RNNCell`."""
    return Scan(RNNCell(hidden, nonlinearity, dtype), return_state)


def LSTM(hidden: int, return_state: bool = False, dtype=np.float32) -> Layer:
    """An LSTM over a sequence, ``torch.nn.LSTM(in, hidden, batch_first=True)``: (batch, T, in)
    -> (batch, T, hidden) (and the final ``(h, c)`` with ``return_state``). See :func:`LSTMCell`."""
    return Scan(LSTMCell(hidden, dtype), return_state)


def GRU(hidden: int, return_state: bool = False, dtype=np.float32) -> Layer:
    """A GRU over a sequence, ``torch.nn.GRU(in, hidden, batch_first=True)``: (batch, T, in) ->
    (batch, T, hidden) (and the final ``h`` with ``return_state``). See :func:`GRUCell`."""
    return Scan(GRUCell(hidden, dtype), return_state)
