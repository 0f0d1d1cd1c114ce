"""tinyfn: a small functional deep-learning framework (numpy + numba + msgpack).

The public API in one place; every submodule can also be imported on its own:
``tree`` (pytrees), ``random`` (explicit keys), ``ops`` (primitives), ``layers``,
``conv`` (convolutional layers), ``losses``, ``optim``, ``train``, ``datasets``,
``checkpoint``, ``viz``, ``testing``, ``kernels`` (the Numba kernels), ``staging`` (static
graphs, used through ``value_and_grad(..., static_graph=True)``), ``transforms`` (``jvp``,
``hvp``, ``jacobian``, ``hessian``, built on ``vjp`` and ``grad``), ``per_example``
(one gradient per example, for models of the shipped layers), ``text`` (a character
tokenizer and sampling from a language model).

Importing tinyfn imports :mod:`tinyfn.kernels`, which asks glibc's malloc to keep freed
memory for reuse (see :mod:`tinyfn.kernels.memory`; ``TINYFN_KEEP_FREED_MEMORY=0`` opts out).
"""

from . import checkpoint, conv, datasets, initializers, kernels, layers, losses, ops, optim, per_example, random, text, train, transforms, tree
from .autodiff import Node, Primitive, grad, value_and_grad, vjp
from .graph import Graph, graph
from .per_example import per_example_grads, per_example_value_and_grads
from .transforms import hessian, hvp, jacobian, jvp, linearize

__version__ = "0.1.0"

__all__ = [
    "Node",
    "Primitive",
    "grad",
    "value_and_grad",
    "vjp",
    "jvp",
    "linearize",
    "hvp",
    "jacobian",
    "hessian",
    "per_example_grads",
    "per_example_value_and_grads",
    "graph",
    "Graph",
    "checkpoint",
    "conv",
    "datasets",
    "initializers",
    "kernels",
    "layers",
    "losses",
    "ops",
    "optim",
    "per_example",
    "random",
    "text",
    "train",
    "transforms",
    "tree",
]
