"""numpy's BLAS matrix product, called from Numba code.

A loop over time makes one small product a step (an LSTM's ``h @ weight_hh.T``, (32, 128) by
(128, 512)). Called from Python, each step also pays for the interpreter around the
product: the call, the slicing, the kernel calls, a few microseconds each, and on two
threads the two loops take turns holding Python's lock. Numba's own ``np.dot`` would need
SciPy. So this module finds the ``gemm`` that numpy itself uses, in the OpenBLAS that numpy's
wheels bundle, and calls it through a function pointer: a loop over time can then run
entirely in a Numba kernel, without the interpreter and without holding the lock.

:func:`gemm_address` returns the address of ``cblas_sgemm`` or ``cblas_dgemm`` (the 64-bit
integer interface, under the names ``scipy_cblas_?gemm64_`` of numpy's bundled
``scipy-openblas64``), or None when numpy was built against another BLAS; callers then keep
their Python loop. :func:`matmul_into` is the Numba function that calls it.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["gemm_address", "matmul_into"]

_NAMES = {np.dtype(np.float32): ("scipy_cblas_sgemm64_", "cblas_sgemm64_"), np.dtype(np.float64): ("scipy_cblas_dgemm64_", "cblas_dgemm64_")}
_ROW_MAJOR, _NO_TRANSPOSE = 101, 111  # CBLAS enums


@functools.lru_cache(maxsize=None)
def gemm_address(dtype) -> int | None:
    """The address of numpy's BLAS ``cblas_?gemm`` for ``dtype`` (float32 or float64) with
    64-bit integer arguments, or None if numpy's BLAS has none under the names known here."""
    from numpy._core import _multiarray_umath  # the extension linked to numpy's BLAS

    names = _NAMES.get(np.dtype(dtype), ())
    try:
        library = ctypes.CDLL(_multiarray_umath.__file__)  # already loaded: its symbols and its libraries'
    except OSError:
        return None
    for name in names:
        function = getattr(library, name, None)
        if function is not None:
            return ctypes.cast(function, ctypes.c_void_p).value
    return None


@intrinsic
def _gemm(typingctx, address, m, n, k, a, lda, b, ldb, c, ldc, beta):
    """``cblas_?gemm(RowMajor, NoTrans, NoTrans, m, n, k, 1, a, lda, b, ldb, beta, c, ldc)``
    through the function at ``address``; ``a``, ``b``, ``c`` are addresses, the rest int64,
    ``beta`` float32 (sgemm) or float64 (dgemm)."""
    scalar = ir.FloatType() if beta == types.float32 else ir.DoubleType()
    i32, i64 = ir.IntType(32), ir.IntType(64)
    pointer = scalar.as_pointer()
    signature = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, scalar, pointer, i64, pointer, i64, scalar, pointer, i64])

    def codegen(context, builder, sig, args):
        address, m, n, k, a, lda, b, ldb, c, ldc, beta = args
        function = builder.inttoptr(address, signature.as_pointer())
        row_major, no_transpose = ir.Constant(i32, _ROW_MAJOR), ir.Constant(i32, _NO_TRANSPOSE)
        builder.call(
            function,
            [row_major, no_transpose, no_transpose, m, n, k, ir.Constant(scalar, 1.0),
             builder.inttoptr(a, pointer), lda, builder.inttoptr(b, pointer), ldb, beta, builder.inttoptr(c, pointer), ldc],
        )
        return context.get_dummy_value()

    int64 = types.int64
    return types.void(types.uintp, int64, int64, int64, types.uintp, int64, types.uintp, int64, types.uintp, int64, beta), codegen


@njit(nogil=True)
def _leading(x):
    """The distance between the rows of ``x`` in entries (BLAS's leading dimension). numpy
    gives an axis of length 1 any stride (a (1, n) array may say 1), which BLAS refuses."""
    return np.int64(x.strides[0] // x.itemsize) if x.shape[0] > 1 else np.int64(max(1, x.shape[1]))


@njit(nogil=True)
def matmul_into(address, a, b, c, beta):
    """``c <- a @ b + beta * c`` by the BLAS function at ``address`` (:func:`gemm_address`).

    ``a`` (m, k), ``b`` (k, n), ``c`` (m, n): 2-D arrays of one float dtype whose rows may be
    strided but whose entries within a row are contiguous (such as ``states[:, t, :H]``);
    ``beta`` of that dtype. Call it from Numba code.
    """
    _gemm(
        address, np.int64(a.shape[0]), np.int64(c.shape[1]), np.int64(a.shape[1]),
        a.ctypes.data, _leading(a), b.ctypes.data, _leading(b), c.ctypes.data, _leading(c), beta,
    )
