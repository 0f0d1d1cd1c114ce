"""Numba kernels for the hot loops, one topic a file.

* :mod:`~tinyfn.kernels.conv`: im2col/col2im kernels, convolution and its VJPs (BLAS products);
* :mod:`~tinyfn.kernels.pool`: max pooling kernels; average pooling through im2col/col2im;
* :mod:`~tinyfn.kernels.activation`: the fused bias + ReLU that ends a convolution, and its VJP;
* :mod:`~tinyfn.kernels.elementwise`: the fused SGD update and ReLU VJP of the dense path;
* :mod:`~tinyfn.kernels.special`: the error function ``erf`` (numpy has none);
* :mod:`~tinyfn.kernels.transcendental`: ``exp``, ``tanh`` and the sigmoid written so that
  LLVM vectorises them in float32 (``math``'s in float64), for the kernels below;
* :mod:`~tinyfn.kernels.gelu`: the GELU and its derivative in one pass;
* :mod:`~tinyfn.kernels.blas`: numpy's BLAS matrix product called from Numba code (the
  recurrent layers' loops over time);
* :mod:`~tinyfn.kernels.attention`: scaled dot-product attention and its VJP, per head on
  contiguous operands, with a fused softmax;
* :mod:`~tinyfn.kernels.threads`: splits a batch over the cores, one slice per thread;
* :mod:`~tinyfn.kernels.memory`: keeps freed memory for reuse (no page faults on the big
  temporaries of each step; see there, and set ``TINYFN_KEEP_FREED_MEMORY=0`` to opt out);
* :mod:`~tinyfn.kernels.reference`: plain-numpy versions of the convolution, pooling,
  activation and GELU kernels, for the tests (the attention's reference is written out in
  its tests; the recurrent layers' kernels are tested against their steps in tinyfn operations).

Kernels are compiled lazily (on first call, once per dtype; the max-pooling kernel also once
per window and stride) and cached on disk next to the source (set ``NUMBA_CACHE_DIR`` to put
the cache elsewhere): a cold start compiles the kernels of a small CNN in about 2 s, a
warm one loads them in about 0.3 s. The convolution and pooling kernels split the batch
over all cores (:func:`~tinyfn.kernels.threads.over_batch`); set ``TINYFN_NUM_THREADS``, or
call :func:`~tinyfn.kernels.threads.set_num_threads`, to use fewer.
These functions take and return plain numpy arrays; the differentiable primitives built on
them are in :mod:`tinyfn.conv`.
"""

from . import activation, attention, blas, conv, elementwise, gelu, memory, pool, reference, special, threads, transcendental
from .activation import bias_relu_, bias_relu_vjp
from .conv import (
    col2im,
    conv2d,
    conv2d_from_cols,
    conv2d_input_vjp,
    conv2d_weight_vjp,
    im2col,
    output_size,
    transposed_output_size,
)
from .pool import avg_pool2d, avg_pool2d_vjp, max_pool2d, max_pool2d_vjp, pool_output_shape

__all__ = [
    "activation",
    "attention",
    "blas",
    "conv",
    "elementwise",
    "gelu",
    "memory",
    "pool",
    "reference",
    "special",
    "threads",
    "transcendental",
    "im2col",
    "col2im",
    "output_size",
    "transposed_output_size",
    "conv2d",
    "conv2d_from_cols",
    "conv2d_input_vjp",
    "conv2d_weight_vjp",
    "pool_output_shape",
    "max_pool2d",
    "max_pool2d_vjp",
    "avg_pool2d",
    "avg_pool2d_vjp",
    "bias_relu_",
    "bias_relu_vjp",
]
