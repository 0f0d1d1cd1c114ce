"""tinyfn: a small functional deep-learning framework (numpy + numba + msgpack).

The public API in one place; every submodule can also be imported on its own:
``tree`` (pytrees), ``random`` (explicit keys), ``ops`` (primitives), ``layers``,
``losses``, ``optim``, ``train``, ``datasets``, ``checkpoint``, ``viz``, ``testing``.
"""

from . import datasets, initializers, layers, losses, ops, optim, random, train, tree
from .autodiff import Node, Primitive, grad, value_and_grad, vjp
from .graph import Graph, graph

__version__ = "0.1.0"

__all__ = [
    "Node",
    "Primitive",
    "grad",
    "value_and_grad",
    "vjp",
    "graph",
    "Graph",
    "datasets",
    "initializers",
    "layers",
    "losses",
    "ops",
    "optim",
    "random",
    "train",
    "tree",
]
