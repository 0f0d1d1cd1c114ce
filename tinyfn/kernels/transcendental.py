"""``exp``, ``tanh`` and the sigmoid for Numba loops, vectorised in float32.

A call of ``math.exp`` or ``math.tanh`` in a Numba loop is a scalar libm call, which LLVM
cannot vectorise (Numba has no vector math library without Intel's SVML): several
nanoseconds a call. Written with additions, multiplications, one division and comparisons only, the
same functions let LLVM run 8 float32 lanes per instruction. So for float32 arguments:

* :func:`exp_minus_f32` ``(s) = exp(-s)`` for ``s >= 0``: ``s = k ln 2 - r`` with ``k`` an integer
  and ``|r| <= ln(2) / 2``, so ``exp(-s) = 2^-k exp(r)``; ``exp(r)`` is its Taylor polynomial
  of degree 7 (relative error below 6e-9) and ``2^-k`` the float32 whose exponent field is
  ``127 - k`` and whose mantissa is 0 (exact; :func:`_float32_from_bits`); ``r`` is computed
  with ``ln 2`` split in two (Cody and Waite), so it is exact to about its last bit. The
  argument may be a float64, so that a caller can pass ``x * x / 2`` exactly (a float32
  ``x^2`` is rounded by up to 6e-8 of itself, which ``exp`` turns into an error of
  ``6e-8 s``: 1e-6 at ``s = 16``); a float32 argument keeps every operation in float32.
* :func:`tanh` ``(x) = sign(x) (1 - e) / (1 + e)`` with ``e = exp(-2|x|)``; :func:`sigmoid`
  ``(x) = 1 / (1 + e)`` for ``x >= 0`` and ``e / (1 + e)`` below, ``e = exp(-|x|)``: absolute
  errors below 9e-8 (measured over [-90, 90]; the float32 rounding of 1 is 6e-8); near 0,
  ``tanh`` is not accurate relative to its size (``(1 - e)`` cancels), which gates and
  activations do not need.

For float64 arguments :func:`tanh` and :func:`sigmoid` are ``math``'s (exact to rounding), so
one kernel written with them compiles to a fast float32 version and an exact float64 one
(for gradient checks). They are Numba overloads: call them from ``@njit`` code only.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

__all__ = ["exp_minus_f32", "tanh", "sigmoid"]

_f = np.float32
_ONE = _f(1)
_HALF, _LOG2E, _MAX_S = _f(0.5), _f(1 / math.log(2)), _f(87.0)  # exp(-87) ~ 1.6e-38, about the smallest normal float32
_LN2_HI, _LN2_LO = _f(0.693359375), _f(math.log(2) - 0.693359375)  # hi has 10 bits: k * hi is exact for k < 2^14
_E2, _E3, _E4, _E5, _E6, _E7 = (_f(1 / math.factorial(k)) for k in range(2, 8))  # 1/k!


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE 754 bits are those of the int32 ``bits`` (a bit cast, which
    Numba has no function for; one instruction, or none)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


def tanh(x):
    """``tanh(x)`` (see the module docstring)."""
    return math.tanh(x)


def sigmoid(x):
    """``1 / (1 + exp(-x))`` (see the module docstring)."""
    return 1 / (1 + math.exp(-x))


@njit(nogil=True, error_model="numpy", fastmath={"contract"}, inline="always")
def exp_minus_f32(s):
    """``exp(-s)`` as a float32, for a float32 or float64 ``s >= 0``; 0 beyond ``s = 87``,
    where float32 underflows (see the module docstring)."""
    big = s > _MAX_S
    s = _MAX_S if big else s  # keeps k in range (0 is returned for it); a NaN stays NaN
    k = np.int32(s * _LOG2E + _HALF)
    kf = np.float32(k)  # (an int32 times a float32 would be a float64 in Numba)
    r = np.float32((kf * _LN2_HI - s) + kf * _LN2_LO)  # ln 2 = hi + lo, k * hi exact: r to about 1 ulp
    p = _ONE + r * (_ONE + r * (_E2 + r * (_E3 + r * (_E4 + r * (_E5 + r * (_E6 + r * _E7))))))
    p = p * _float32_from_bits(np.int32((127 - k) << 23))  # 2^-k: exponent field 127 - k, mantissa 0
    return _f(0) if big else p


@overload(tanh)
def _tanh_overload(x):
    if x == types.float32:

        def tanh_f32(x):
            e = exp_minus_f32(_f(2) * abs(x))
            t = (_ONE - e) / (_ONE + e)
            return t if x >= 0 else -t

        return tanh_f32
    if x == types.float64:
        return lambda x: math.tanh(x)
    return None


@overload(sigmoid)
def _sigmoid_overload(x):
    if x == types.float32:

        def sigmoid_f32(x):
            e = exp_minus_f32(abs(x))
            inv = _ONE / (_ONE + e)
            return inv if x >= 0 else e * inv

        return sigmoid_f32
    if x == types.float64:
        return lambda x: 1.0 / (1.0 + math.exp(-x))
    return None
