"""Scaled dot-product attention on plain arrays: BLAS products per head, a fused softmax.

For one batch entry and one head, with ``scale = 1 / sqrt(dk)``::

    forward    A = q k^T * scale + bias           the scores, (T, S)
               P = softmax(A) along the keys       masked entries 0; a row with no key all 0
               out = P v                           (T, dv)
    backward   dv = P^T g
               dP = g v^T
               dA = P * (dP - rowsum(dP * P))      the softmax VJP (the scores' cotangent)
               dq = dA k * scale,  dk = dA^T q * scale,  dbias = dA

Each head's products are small: in the block of ``benchmarks/transformer.py`` (batch 16,
4 heads, 64 tokens, 32 features a head) ``q k^T`` is 64 products of 64 x 32 x 64
multiply-adds. What makes them fast on numpy's OpenBLAS (times: one thread's CPU time for
that batch, measured with the machine shared):

* **Transposed operands are copied first.** OpenBLAS multiplies ``q @ k^T`` with ``k^T`` a
  transposed view in 254 us, and with ``k^T`` stored contiguously in 134 us; the copy costs
  about 60 us. So each thread transposes its slice of ``k`` (and of ``v`` in the backward
  pass) into a contiguous (..., dk, S) array first.
* **The batch is split over the threads** (:func:`~tinyfn.kernels.threads.over_batch`).
  OpenBLAS runs a product of at most ``2**18`` multiply-adds on one thread, and numpy's
  batched ``matmul`` is a loop of such products, so one core would do all the work, and the
  softmax kernels would run on one core too. Larger products are left to OpenBLAS's own
  threads (:data:`SPLIT_UP_TO`): split over our threads as well, each of our threads would
  start OpenBLAS's, more threads than there are cores.
* **Results are laid out in memory like the inputs** (``np.empty_like``): heads that
  :func:`~tinyfn.layers.attention.MultiHeadAttention` split from a (B, T, H, dh) array as a
  transposed view come back in that order, so merging them again is a free reshape, not a
  copy (BLAS writes the strided rows directly).
* **The softmax is two Numba kernels around numpy's exp**, in place on the scores of the
  thread's slice, which stay in its cache: scale, bias, causal mask and shift by the row
  maximum in one; ``np.exp`` (SIMD; Numba has no vectorised exp without Intel's SVML); the
  row sums and the division in the other. The backward pass computes ``dA`` in one kernel.

Masking never makes a NaN: the causal mask is a loop bound, a masked score is ``-inf``
before the exponential and 0 after it, and a row whose every key is masked (its maximum is
``-inf``) becomes all 0, so its output and every gradient through it are 0, as in PyTorch's
``F.scaled_dot_product_attention``.

The kernels compile lazily (once per dtype and array layout) and are cached on disk; the
plain-numpy reference the tests hold them to is written out in ``tests/test_attention.py``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .threads import over_batch

__all__ = ["SPLIT_UP_TO", "attention", "attention_vjp"]

SPLIT_UP_TO = 1 << 18
"""Split the batch over tinyfn's threads when one head's products have at most this many
multiply-adds (the most that OpenBLAS multiplies on one thread: ``SMP_THRESHOLD_MIN *
GEMM_MULTITHREAD_THRESHOLD`` in its build); above it, OpenBLAS's threads split each product
and the batch runs in one call."""


@njit(cache=True, nogil=True)
def _row_max(row, end):
    """The largest of ``row[:end]`` (``end >= 1``). Numba does not vectorise a loop of
    ``max``, so four running maxima let the CPU overlap four comparisons instead of waiting
    for each before the next (twice as fast as one)."""
    a0 = a1 = a2 = a3 = row[0]
    j = 0
    while j + 4 <= end:
        a0, a1, a2, a3 = max(a0, row[j]), max(a1, row[j + 1]), max(a2, row[j + 2]), max(a3, row[j + 3])
        j += 4
    for i in range(j, end):
        a0 = max(a0, row[i])
    return max(max(a0, a1), max(a2, a3))


@njit(cache=True, nogil=True)
def _shifted_scores(s, bias, scale, causal):
    """In place on the scores ``s`` (B, H, T, S): ``s * scale + bias`` minus its row maximum,
    ``-inf`` where masked (past ``t`` when ``causal``, or a ``-inf`` bias); a row with no key
    left is all ``-inf``. ``bias`` is None or (B, H, T, S), broadcast (zero strides) where it
    repeats."""
    batch, heads, rows, cols = s.shape
    minus_inf = s.dtype.type(-np.inf)
    for b in range(batch):
        for h in range(heads):
            for t in range(rows):
                row = s[b, h, t]
                end = min(t + 1, cols) if causal else cols
                if bias is None:
                    for j in range(end):
                        row[j] *= scale
                else:
                    row_bias = bias[b, h, t]
                    for j in range(end):
                        row[j] = row[j] * scale + row_bias[j]
                top = _row_max(row, end) if end > 0 else minus_inf
                if top == minus_inf:
                    end = 0  # no key to attend to: the row's weights will all be 0
                for j in range(end):
                    row[j] -= top
                for j in range(end, cols):
                    row[j] = minus_inf


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def _normalize_rows(e):
    """In place on ``e`` (B, H, T, S), the exponentials: each row divided by its sum (a row of
    zeros stays zero)."""
    batch, heads, rows, cols = e.shape
    for b in range(batch):
        for h in range(heads):
            for t in range(rows):
                total = e.dtype.type(0)
                for j in range(cols):
                    total += e[b, h, t, j]
                if total > 0:
                    inv = e.dtype.type(1) / total
                    for j in range(cols):
                        e[b, h, t, j] *= inv


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def _softmax_vjp_rows(dp, p):
    """In place on ``dp`` (B, H, T, S): ``p * (dp - rowsum(dp * p))``, the scores' cotangent."""
    batch, heads, rows, cols = dp.shape
    for b in range(batch):
        for h in range(heads):
            for t in range(rows):
                total = dp.dtype.type(0)
                for j in range(cols):
                    total += dp[b, h, t, j] * p[b, h, t, j]
                for j in range(cols):
                    dp[b, h, t, j] = p[b, h, t, j] * (dp[b, h, t, j] - total)


def _transposed(x: np.ndarray) -> np.ndarray:
    """``x`` (..., n, d) as a C-contiguous (..., d, n) array (see the module docstring)."""
    return np.ascontiguousarray(np.swapaxes(x, -1, -2))


def _over_batch(batch: int, macs_per_product: int, work) -> None:
    """``work(start, stop)`` over the batch: split over the threads when the products are
    small (:data:`SPLIT_UP_TO`), in one call otherwise."""
    if macs_per_product <= SPLIT_UP_TO:
        over_batch(batch, work)
    else:
        work(0, batch)


def attention(q, k, v, bias, causal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Attention of queries ``q`` (B, H, T, dk) over keys ``k`` (B, H, S, dk) and values ``v``
    (B, H, S, dv), all of one float dtype; ``bias`` is None or an array of that dtype that
    broadcasts to (B, H, T, S), added to the scaled scores (``-inf`` masks).

    Returns ``(out, p)``: ``out`` (B, H, T, dv) and the attention weights ``p`` (B, H, T, S).
    """
    (batch, heads, rows, depth), cols, value_depth = q.shape, k.shape[2], v.shape[3]
    scale = q.dtype.type(1 / np.sqrt(depth))
    if bias is not None:
        bias = np.broadcast_to(bias, (batch, heads, rows, cols))
    p = np.empty((batch, heads, rows, cols), q.dtype)
    out = np.empty_like(q, shape=(batch, heads, rows, value_depth))

    def work(start, stop):
        here = slice(start, stop)
        np.matmul(q[here], _transposed(k[here]), out=p[here])
        _shifted_scores(p[here], None if bias is None else bias[here], scale, causal)
        np.exp(p[here], out=p[here])
        _normalize_rows(p[here])
        np.matmul(p[here], v[here], out=out[here])

    _over_batch(batch, rows * cols * max(depth, value_depth), work)
    return out, p


def attention_vjp(g, q, k, v, p, needs) -> tuple:
    """The cotangents of :func:`attention`'s inputs from the output's cotangent ``g``
    (B, H, T, dv) and the weights ``p`` it returned.

    ``needs`` holds four flags: q, k, v and the bias. Returns ``(dq, dk, dv, da)`` with None
    for what is not needed; ``da`` (B, H, T, S) is the cotangent of the scores ``A``, which
    the caller sums down to the bias's shape.
    """
    (batch, heads, rows, depth), cols, value_depth = q.shape, k.shape[2], v.shape[3]
    scale = q.dtype.type(1 / np.sqrt(depth))
    need_q, need_k, need_v, need_bias = needs
    need_scores = need_q or need_k or need_bias
    dq = np.empty_like(q) if need_q else None
    dk = np.empty_like(k) if need_k else None
    dv = np.empty_like(v) if need_v else None
    da = np.empty(p.shape, q.dtype) if need_scores else None

    def work(start, stop):
        here = slice(start, stop)
        if need_v:
            np.matmul(np.swapaxes(p[here], -1, -2), g[here], out=dv[here])
        if need_scores:
            np.matmul(g[here], _transposed(v[here]), out=da[here])
            _softmax_vjp_rows(da[here], p[here])
        if need_q:
            np.matmul(da[here], k[here], out=dq[here])
            dq[here] *= scale
        if need_k:
            np.matmul(np.swapaxes(da[here], -1, -2), q[here], out=dk[here])
            dk[here] *= scale

    _over_batch(batch, rows * cols * max(depth, value_depth), work)
    return dq, dk, dv, da if need_bias else None
