"""The GELU and its derivative in one pass over memory, vectorised for float32.

``gelu(x) = x * Phi(x)``, with ``Phi`` the standard normal CDF (exact), or ``Phi`` replaced by
``(1 + tanh(z)) / 2 = sigmoid(2z)``, ``z = sqrt(2/pi) (x + 0.044715 x^3)`` (the tanh form).
A training step needs both the output and the derivative ``gelu'(x)``; :func:`gelu` computes
them together, so the backward pass is one multiplication by the saved derivative.

**Why not ``math.erf`` in a loop.** A call of ``math.erf`` or ``math.exp`` is a scalar libm
call that LLVM cannot vectorise: the earlier erf kernel took 2.7 ms for the 524,288
activations of the transformer benchmark's MLP, and the VJP (a chain of primitives around
``exp``) about as much again. The float32 kernels here are written with additions,
multiplications, one division and comparisons only, so that LLVM runs 8 elements per
instruction: 0.6 to 1 ms for the output and the derivative of those activations on one core
(measured on a busy machine). They take

* ``exp(-x^2/2)`` by :func:`~tinyfn.kernels.transcendental.exp_minus_f32`, its argument
  computed in float64, where ``x^2 / 2`` is exact;
* ``erfc(a)`` for ``a >= 0``: ``erfc(a) = t exp(-a^2) R(t)`` with ``t = 2 / (2 + a)`` (the
  form of Numerical Recipes' ``erfcc``), where ``R`` is a polynomial of degree 10 fitted by
  least squares, for relative error, to ``erfc(a) exp(a^2) / t`` at 2,000 Chebyshev nodes of
  ``a`` in [0, 10] (computed in float64 with ``math.erfc``). Its relative error, with the
  coefficients rounded to float32, is below 5e-8 in exact arithmetic; the tests hold the
  kernels to float32 precision against ``math.erf`` over the whole range.

Then ``Phi(x) = erfc(-x / sqrt 2) / 2``: for ``x < 0`` directly (no cancellation: the
tail stays accurate relative to its size), for ``x >= 0`` as ``1 - erfc(x / sqrt 2) / 2``.
The same ``exp(-x^2 / 2)`` gives the normal density in the derivative
``Phi(x) + x exp(-x^2/2) / sqrt(2 pi)``. The tanh form needs one ``e = exp(-2|z|)``:
``sigmoid(2z) = 1 / (1 + e)`` for ``z >= 0`` and ``e / (1 + e)`` for ``z < 0``.

On 440,000 points over [-12, 12] (40,000 of them between 1e-8 and 16 in size) the float32
output is within 6 units in the last place of the exact value wherever it is above 1e-30,
and for ``|x| <= 5`` the derivative within 5 units of the last place of its larger term,
``Phi(x)`` or ``x phi(x)``. (``0.5 x (1 + erf(x / sqrt 2))`` evaluated in float32 as written
loses the tail's relative accuracy to the cancellation in ``1 + erf`` for large negative
``x``; this form does not.)

float64 arrays (gradient checks, mostly) take ``math.erf``, ``math.exp`` and ``math.tanh``,
exact to float64 rounding, in the same single pass. Both split the array over the cores
(:func:`~tinyfn.kernels.threads.over_batch`) when it is large. Compiled lazily, cached on
disk; :func:`tinyfn.kernels.reference.gelu` is the plain formula the tests compare with.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .threads import over_batch
from .transcendental import exp_minus_f32

__all__ = ["gelu"]

_f = np.float32
_SQRT_HALF, _INV_SQRT_2PI = _f(math.sqrt(0.5)), _f(1 / math.sqrt(2 * math.pi))
_SQRT_2_OVER_PI, _CUBIC = _f(math.sqrt(2 / math.pi)), _f(0.044715)
_HALF, _ONE, _TWO, _THREE = _f(0.5), _f(1), _f(2), _f(3)
# R(t) = c0 + c1 t + ... + c10 t^10 (see the module docstring for the fit)
_R0, _R1, _R2, _R3, _R4, _R5 = _f(0.28208836913108826), _f(0.2822558879852295), _f(0.2451476901769638), _f(0.18575657904148102), _f(0.054352954030036926), _f(0.036538559943437576)
_R6, _R7, _R8, _R9, _R10 = _f(-0.023611899465322495), _f(-0.2879781723022461), _f(0.38040515780448914), _f(-0.1906619369983673), _f(0.035706840455532074)

# Small arrays run on the calling thread: handing a slice to a helper costs a few microseconds.
_SPLIT_FROM = 1 << 15


# error_model="numpy": a float division by zero gives inf, as in numpy, instead of the check
# for Python's ZeroDivisionError, which keeps LLVM from vectorising the loop; "contract" lets
# LLVM fuse a multiplication and an addition into one FMA (one rounding instead of two).
@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _gelu_exact_f32(x, y, d):
    for i in range(x.shape[0]):
        v = x[i]
        a = abs(v) * _SQRT_HALF
        t = _TWO / (_TWO + a)
        w = np.float64(v)
        e = exp_minus_f32(0.5 * w * w)  # exp(-x^2/2), its argument exact in float64
        r = _R0 + t * (_R1 + t * (_R2 + t * (_R3 + t * (_R4 + t * (_R5 + t * (_R6 + t * (_R7 + t * (_R8 + t * (_R9 + t * _R10)))))))))
        tail = _HALF * t * e * r  # Phi(-|x|) = erfc(|x| / sqrt 2) / 2
        phi = _ONE - tail if v >= 0 else tail
        y[i] = v * phi
        d[i] = phi + v * e * _INV_SQRT_2PI


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _gelu_tanh_f32(x, y, d):
    for i in range(x.shape[0]):
        v = x[i]
        v2 = v * v
        w = np.float64(v)
        z = np.sqrt(2 / np.pi) * (w + 0.044715 * w * w * w)  # in float64: exp's argument is large
        e = exp_minus_f32(2.0 * abs(z))
        inv = _ONE / (_ONE + e)
        s = inv if z >= 0 else e * inv  # sigmoid(2z) = (1 + tanh z) / 2
        y[i] = v * s
        # d/dx x s(2z) = s + x s (1 - s) 2 dz/dx, and s (1 - s) = e / (1 + e)^2 for either sign
        d[i] = s + v * (e * inv * inv) * (_TWO * _SQRT_2_OVER_PI) * (_ONE + _THREE * _CUBIC * v2)


@njit(cache=True, nogil=True)
def _gelu_exact_f64(x, y, d):
    for i in range(x.shape[0]):
        v = x[i]
        phi = 0.5 * (1.0 + math.erf(v * math.sqrt(0.5)))
        y[i] = v * phi
        d[i] = phi + v * math.exp(-0.5 * v * v) / math.sqrt(2 * math.pi)


@njit(cache=True, nogil=True)
def _gelu_tanh_f64(x, y, d):
    c = math.sqrt(2 / math.pi)
    for i in range(x.shape[0]):
        v = x[i]
        th = math.tanh(c * (v + 0.044715 * v * v * v))
        y[i] = 0.5 * v * (1.0 + th)
        d[i] = 0.5 * (1.0 + th) + 0.5 * v * (1.0 - th * th) * c * (1.0 + 3 * 0.044715 * v * v)


_KERNELS = {
    (np.dtype(np.float32), False): _gelu_exact_f32,
    (np.dtype(np.float32), True): _gelu_tanh_f32,
    (np.dtype(np.float64), False): _gelu_exact_f64,
    (np.dtype(np.float64), True): _gelu_tanh_f64,
}


def gelu(x: np.ndarray, approximate: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(gelu(x), gelu'(x))`` for a float32 or float64 array ``x`` of any shape: two new
    arrays shaped like ``x``, of its dtype. ``approximate=True``: the tanh form."""
    kernel = _KERNELS[x.dtype, bool(approximate)]
    flat = np.ascontiguousarray(x).reshape(-1)
    y, d = np.empty(flat.shape, x.dtype), np.empty(flat.shape, x.dtype)

    def work(start, stop):
        kernel(flat[start:stop], y[start:stop], d[start:stop])

    if flat.size >= _SPLIT_FROM:
        over_batch(flat.size, work)
    else:
        work(0, flat.size)
    return y.reshape(x.shape), d.reshape(x.shape)
