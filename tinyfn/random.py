"""Explicit pseudo-random number keys, in the style of JAX.

There is no global random state in tinyfn. A *key* is a small uint64 array; every function
that draws random numbers takes one, and the same key always gives the same numbers (on
every run and machine with the same numpy). To draw several independent streams, ``split``
a key into new keys; never reuse a key for two different purposes.

Keys drive numpy's counter-based Philox generator: a key is the Philox key (two 64-bit
words), so each key is an independent stream and no state is carried between calls.

Arguments are checked before numpy sees them: seeds, counts and shape entries are ints (not
floats, not bools), shapes are tuples of ints >= 0, probabilities lie in [0, 1]. A bad
argument raises ``TypeError`` (wrong kind of value) or ``ValueError`` (out of range) naming
what was expected and what was found. The checks at the end of this module are shared by
:mod:`tinyfn.datasets`, :mod:`tinyfn.initializers` and :mod:`tinyfn.optim`.
"""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np

__all__ = ["key", "split", "fold_in", "normal", "uniform", "bernoulli", "permutation", "choice", "randint"]


def _generator(k) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(key=_check_key(k)))


def key(seed: int) -> np.ndarray:
    """A new key from an integer seed, ``0 <= seed < 2**64`` (floats, bools and negative
    seeds are refused). Returns a read-only uint64 array of shape (2,)."""
    seed = _check_int("random.key: seed", seed, 0, 2**64)
    k = np.array([seed, 0], dtype=np.uint64)
    k.flags.writeable = False
    return k


def split(k, num: int = 2) -> np.ndarray:
    """Derive ``num`` (>= 0) new independent keys from ``k``. Returns a uint64 array of shape (num, 2).

    Unpack it like a tuple: ``k1, k2 = split(k)``.
    """
    num = _check_int("random.split: num", num)
    keys = _generator(k).integers(0, 2**64, size=(num, 2), dtype=np.uint64, endpoint=False)
    keys.flags.writeable = False
    return keys


def fold_in(k, data: int) -> np.ndarray:
    """A new key derived from ``k`` and an integer ``0 <= data < 2**64`` (say an epoch number).

    It is drawn from a block of the key's Philox stream indexed by ``data`` in the highest
    counter words, which ``split`` and the samplers never reach.
    """
    data = _check_int("random.fold_in: data", data, 0, 2**64)
    counter = np.array([0, 0, data, 1], dtype=np.uint64)
    stream = np.random.Generator(np.random.Philox(key=_check_key(k), counter=counter))
    new = stream.integers(0, 2**64, size=2, dtype=np.uint64, endpoint=False)
    new.flags.writeable = False
    return new


def normal(k, shape=(), dtype=np.float32) -> np.ndarray:
    """Standard normal samples of ``shape`` and ``dtype`` (float32 or float64)."""
    shape = _check_shape("random.normal: shape", shape)
    return _generator(k).standard_normal(shape, dtype=_check_float_dtype("random.normal: dtype", dtype))


def uniform(k, shape=(), dtype=np.float32, minval=0.0, maxval=1.0) -> np.ndarray:
    """Uniform samples in ``[minval, maxval)`` of ``shape`` and ``dtype`` (float32 or float64).

    ``minval <= maxval`` must be finite numbers.
    """
    shape = _check_shape("random.uniform: shape", shape)
    dtype = _check_float_dtype("random.uniform: dtype", dtype)
    # checked, not converted: the arithmetic below keeps the bounds as given (float32 stays float32)
    _check_real("random.uniform: maxval", maxval, low=_check_real("random.uniform: minval", minval))
    u = _generator(k).random(shape, dtype=dtype)
    return (u * (maxval - minval) + minval).astype(dtype, copy=False)


def bernoulli(k, p: float, shape=()) -> np.ndarray:
    """Boolean samples of ``shape`` that are True with probability ``p`` (a number in [0, 1])."""
    p = _check_real("random.bernoulli: p", p, 0.0, 1.0)
    return _generator(k).random(_check_shape("random.bernoulli: shape", shape)) < p


def permutation(k, n: int) -> np.ndarray:
    """A random permutation of ``range(n)`` (``n`` an int >= 0) as an int64 array of shape (n,)."""
    return _generator(k).permutation(_check_int("random.permutation: n", n))


def randint(k, shape, low: int, high: int) -> np.ndarray:
    """Integers drawn uniformly from ``[low, high)``, int64 array of ``shape``; needs
    ``-2**63 <= low < high < 2**63``."""
    shape = _check_shape("random.randint: shape", shape)
    low = _check_int("random.randint: low", low, -(2**63), 2**63)
    high = _check_int("random.randint: high", high, -(2**63), 2**63)
    if low >= high:
        raise ValueError(f"random.randint: expected low < high, found low={low}, high={high}")
    return _generator(k).integers(low, high, size=shape, dtype=np.int64)


def choice(k, n: int, size: int, replace: bool = True, p=None) -> np.ndarray:
    """``size`` indices drawn from ``range(n)`` (with probabilities ``p`` if given). Shape (size,).

    Without replacement ``size`` may not exceed ``n`` (or the number of nonzero entries of
    ``p``). ``p`` is a 1-D array of ``n`` finite, non-negative numbers summing to 1.
    """
    n = _check_int("random.choice: n", n)
    size = _check_int("random.choice: size", size)
    available = n if p is None else np.count_nonzero(_check_probabilities("random.choice: p", p, n))
    if n == 0 and size > 0:
        raise ValueError(f"random.choice: expected n >= 1 to draw {size} samples, found n=0")
    if not replace and size > available:
        raise ValueError(
            f"random.choice: without replacement, expected size <= {available} (the number of "
            f"indices that can be drawn), found size={size}"
        )
    return _generator(k).choice(n, size=size, replace=replace, p=p)


# ----------------------------------------------------------------------------- argument checks
# Shared by tinyfn's modules; each takes the ``name`` to print, such as "random.key: seed".


def _check_key(k) -> np.ndarray:
    """``k`` as an array, after checking it is a PRNG key (uint64, shape (2,))."""
    k = np.asarray(k)
    if k.shape != (2,) or k.dtype != np.uint64:
        raise TypeError(f"expected a PRNG key (uint64 array of shape (2,)), found {k.dtype} array of shape {k.shape}")
    return k


def _bound(n) -> str:
    """``n`` for a message: large powers of two as ``2**k`` (or ``-2**k``)."""
    size = abs(n)
    if size > 2**32 and size & (size - 1) == 0:
        return f"{'-' if n < 0 else ''}2**{size.bit_length() - 1}"
    return str(n)


def _is_int(value) -> bool:
    """True for Python and numpy integers (and 0-d integer arrays), False for bools and floats."""
    if isinstance(value, (bool, np.bool_)):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _check_int(name: str, value, low: int = 0, high: int | None = None) -> int:
    """``value`` as a Python int, after checking it is an integer with ``low <= value`` (and
    ``value < high`` when ``high`` is given)."""
    expected = f"an int >= {low}" if high is None else f"an int in [{_bound(low)}, {_bound(high)})"
    if not _is_int(value):
        raise TypeError(f"{name} must be {expected}, found {value!r} of type {type(value).__name__}")
    value = operator.index(value)
    if value < low or (high is not None and value >= high):
        raise ValueError(f"{name} must be {expected}, found {value}")
    return value


def _check_real(name: str, value, low=-math.inf, high=math.inf, *, open_low=False, open_high=False) -> float:
    """``value`` as a Python float, after checking it is a finite real number (a Python or numpy
    scalar or a 0-d array; not a bool) in the interval from ``low`` to ``high``, whose ends are
    included unless ``open_low``/``open_high``."""
    left = "(" if open_low or low == -math.inf else "["
    right = ")" if open_high or high == math.inf else "]"
    interval = f"{left}{low:g}, {high:g}{right}"
    is_0d_array = isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "iuf"
    if not (isinstance(value, numbers.Real) or is_0d_array) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number in {interval}, found {value!r} of type {type(value).__name__}")
    value = float(value)
    inside = (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if not (math.isfinite(value) and inside):
        raise ValueError(f"{name} must be a finite number in {interval}, found {value}")
    return value


def _check_shape(name: str, shape) -> tuple:
    """``shape`` as a tuple of Python ints, after checking it is a tuple (or list) of ints >= 0,
    or a single int >= 0 (numpy's shorthand for a 1-D shape)."""
    dims = (shape,) if _is_int(shape) else shape
    if not (isinstance(dims, (tuple, list)) and all(_is_int(d) for d in dims)):
        raise TypeError(f"{name} must be a tuple of ints >= 0, found {shape!r}")
    dims = tuple(operator.index(d) for d in dims)
    if any(d < 0 for d in dims):
        raise ValueError(f"{name} must be a tuple of ints >= 0, found {dims}")
    return dims


def _as_dtype(name: str, dtype) -> np.dtype:
    """``dtype`` as a numpy dtype, after checking numpy knows it."""
    try:
        return np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be a numpy dtype, found {dtype!r}") from None


def _check_float_dtype(name: str, dtype, choices=(np.float32, np.float64)) -> np.dtype:
    """``dtype`` as a numpy dtype, after checking it is floating-point and one of ``choices``
    (by default the two that numpy's generators draw; ``()`` for any floating-point dtype)."""
    found = _as_dtype(name, dtype)
    if found.kind != "f" or (choices and found not in choices):
        expected = " or ".join(np.dtype(c).name for c in choices) if choices else "a floating-point dtype"
        raise TypeError(f"{name} must be {expected}, found {found}")
    return found


def _check_probabilities(name: str, p, n: int) -> np.ndarray:
    """``p`` as a float64 array, after checking it holds ``n`` finite, non-negative numbers
    summing to 1 (within numpy's tolerance: sqrt of the float64 epsilon, or of ``p``'s own
    float dtype when that is coarser)."""
    array = np.asarray(p)
    if array.shape != (n,) or array.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a 1-D array of {n} numbers, found {array.dtype} array of shape {array.shape}")
    tolerance = math.sqrt(np.finfo(np.float64).eps)
    if array.dtype.kind == "f":
        tolerance = max(tolerance, math.sqrt(np.finfo(array.dtype).eps))
    array = array.astype(np.float64)
    total = float(array.sum())
    if not (np.all(np.isfinite(array)) and np.all(array >= 0) and abs(total - 1.0) <= tolerance):
        raise ValueError(f"{name} must hold finite probabilities >= 0 summing to 1, found {p!r} (sum {total})")
    return array
