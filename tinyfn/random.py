"""Explicit pseudo-random number keys, in the style of JAX.

There is no global random state in tinyfn. A *key* is a small uint64 array; every function
that draws random numbers takes one, and the same key always gives the same numbers (on
every run and machine with the same numpy). To draw several independent streams, ``split``
a key into new keys; never reuse a key for two different purposes.

Keys drive numpy's counter-based Philox generator: a key is the Philox key (two 64-bit
words), so each key is an independent stream and no state is carried between calls.
"""

from __future__ import annotations

import numpy as np

__all__ = ["key", "split", "fold_in", "normal", "uniform", "bernoulli", "permutation", "choice", "randint"]


def _check_key(k) -> np.ndarray:
    k = np.asarray(k)
    if k.shape != (2,) or k.dtype != np.uint64:
        raise TypeError(f"expected a PRNG key (uint64 array of shape (2,)), found {k.dtype} array of shape {k.shape}")
    return k


def _generator(k) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(key=_check_key(k)))


def key(seed: int) -> np.ndarray:
    """A new key from an integer seed (0 <= seed < 2**64). Returns a uint64 array of shape (2,)."""
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), found {seed}")
    k = np.array([seed, 0], dtype=np.uint64)
    k.flags.writeable = False
    return k


def split(k, num: int = 2) -> np.ndarray:
    """Derive ``num`` new independent keys from ``k``. Returns a uint64 array of shape (num, 2).

    Unpack it like a tuple: ``k1, k2 = split(k)``.
    """
    keys = _generator(k).integers(0, 2**64, size=(num, 2), dtype=np.uint64, endpoint=False)
    keys.flags.writeable = False
    return keys


def fold_in(k, data: int) -> np.ndarray:
    """A new key derived from ``k`` and an integer ``0 <= data < 2**64`` (say an epoch number).

    It is drawn from a block of the key's Philox stream indexed by ``data`` in the highest
    counter words, which ``split`` and the samplers never reach.
    """
    counter = np.array([0, 0, int(data), 1], dtype=np.uint64)
    stream = np.random.Generator(np.random.Philox(key=_check_key(k), counter=counter))
    new = stream.integers(0, 2**64, size=2, dtype=np.uint64, endpoint=False)
    new.flags.writeable = False
    return new


def normal(k, shape=(), dtype=np.float32) -> np.ndarray:
    """Standard normal samples of ``shape`` and ``dtype`` (float32 or float64)."""
    return _generator(k).standard_normal(shape, dtype=dtype)


def uniform(k, shape=(), dtype=np.float32, minval=0.0, maxval=1.0) -> np.ndarray:
    """Uniform samples in ``[minval, maxval)`` of ``shape`` and ``dtype``."""
    u = _generator(k).random(shape, dtype=dtype)
    return (u * (maxval - minval) + minval).astype(dtype, copy=False)


def bernoulli(k, p: float, shape=()) -> np.ndarray:
    """Boolean samples of ``shape`` that are True with probability ``p``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], found {p}")
    return _generator(k).random(shape) < p


def permutation(k, n: int) -> np.ndarray:
    """A random permutation of ``range(n)`` as an int64 array of shape (n,)."""
    return _generator(k).permutation(n)


def randint(k, shape, low: int, high: int) -> np.ndarray:
    """Integers drawn uniformly from ``[low, high)``, int64 array of ``shape``."""
    return _generator(k).integers(low, high, size=shape, dtype=np.int64)


def choice(k, n: int, size: int, replace: bool = True, p=None) -> np.ndarray:
    """``size`` indices drawn from ``range(n)`` (with probabilities ``p`` if given). Shape (size,)."""
    return _generator(k).choice(n, size=size, replace=replace, p=p)
