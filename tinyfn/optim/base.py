"""The optimizer protocol: gradient transformations, chaining them, and applying updates.

An optimizer is a :class:`GradientTransformation`, a pair of pure functions (the design of
optax)::

    state = optimizer.init(params)
    updates, state = optimizer.update(grads, state, params)
    params = apply_updates(params, updates)

``updates`` has the structure of ``params`` and is *added* to them, so a descent step's
updates are ``-learning_rate * direction``. Nothing is mutated: every call returns new trees.

Optimizer states are plain pytrees: dicts, tuples, ``None``, numpy arrays and Python numbers,
so they are saved with :mod:`tinyfn.checkpoint` like any other tree. Any state that comes from
a learning rate records the rate under the key ``"learning_rate"``; read it with
:func:`current_learning_rate`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import numpy as np

from .. import tree
from ..kernels.elementwise import sgd_update

__all__ = [
    "LEARNING_RATE_KEY",
    "GradientTransformation",
    "chain",
    "apply_updates",
    "sgd_step",
    "current_learning_rate",
]

LEARNING_RATE_KEY = "learning_rate"


class GradientTransformation(NamedTuple):
    """A pure optimizer (or one stage of one) as an ``(init, update)`` pair.

    * ``init(params) -> state``: the initial state for a parameter tree.
    * ``update(grads, state, params=None) -> (updates, new_state)``: turn a gradient tree (or
      the updates of the previous stage of a :func:`chain`) into updates with the same
      structure. ``params`` is needed only by transformations that look at the parameters,
      such as weight decay.
    """

    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any]]


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Compose transformations left to right: each one's updates feed the next.

    ``chain(clip_by_global_norm(1.0), adam(1e-3))`` clips the gradients, then applies Adam.
    The state is a tuple with one entry per transformation, in order.
    """

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(updates, state, params=None):
        if len(state) != len(transforms):
            raise ValueError(
                f"chain of {len(transforms)} transformations expects a state of {len(transforms)} "
                f"entries, found {len(state)}"
            )
        new_state = []
        for transform, inner_state in zip(transforms, state):
            updates, inner_state = transform.update(updates, inner_state, params)
            new_state.append(inner_state)
        return updates, tuple(new_state)

    return GradientTransformation(init, update)


class _ShapeMismatch(Exception):
    pass


def _leafwise(combine, params, others, what: str):
    """``combine(param, other)`` for each pair of leaves, as a new tree of read-only arrays.

    Refuses to broadcast: each ``other`` leaf must have exactly its parameter's shape. The
    error names the path; it is worked out only when a mismatch is found, so the common case
    costs one plain tree traversal.
    """

    def one(param, other):
        if getattr(param, "shape", ()) != getattr(other, "shape", ()):  # np.shape, without its dispatch cost
            raise _ShapeMismatch
        new = combine(param, other)
        new.flags.writeable = False
        return new

    try:
        return tree.map(one, params, others)
    except _ShapeMismatch:
        for (path, param), (_, other) in zip(tree.leaves_with_path(params), tree.leaves_with_path(others)):
            if np.shape(param) != np.shape(other):
                raise tree.TreeMismatchError(
                    f"{what} at '{path}' has shape {np.shape(other)}, expected the parameter's shape {np.shape(param)}"
                ) from None
        raise


def apply_updates(params, updates):
    """``params + updates`` leaf by leaf, as a new tree of read-only arrays.

    Each new leaf keeps its parameter's dtype (float64 updates on float32 parameters give
    float32 parameters). Raises :class:`tinyfn.tree.TreeMismatchError` naming the path if the
    trees or a leaf's shape differ.
    """
    # asarray: for 0-d parameters numpy returns a scalar, which cannot be made read-only
    return _leafwise(lambda p, u: np.asarray(np.add(p, u, dtype=p.dtype)), params, updates, "update")


def sgd_step(params, grads, lr: float):
    """One plain gradient-descent step: ``params - lr * grads``, as a new tree.

    ``params`` and ``grads`` are trees of the same structure with numpy array leaves of equal
    shapes; ``lr`` is a number. The new leaves keep the parameters' dtypes and are read-only;
    the inputs are untouched. Raises :class:`tinyfn.tree.TreeMismatchError` naming the path
    if the trees or a leaf's shape differ.

    The lean hot path of training loops: one tree traversal and one fused pass over each
    leaf (:func:`tinyfn.kernels.elementwise.sgd_update`). The optimizer ``sgd(lr)`` computes
    the same numbers with a state and a transformation chain.
    """
    lr = float(lr)
    return _leafwise(functools.partial(sgd_update, lr=lr), params, grads, "gradient")


def current_learning_rate(state) -> float:
    """The learning rate recorded in an optimizer state.

    Every optimizer built from a learning rate (``sgd``, ``adam``, ...) records, under the key
    ``"learning_rate"``, the rate its most recent update applied (before any update, the rate
    the first update will apply). With a schedule, that is ``schedule(step)`` for the last step.
    Works on nested chains. Raises ``ValueError`` if the state holds no learning rate or more
    than one.
    """
    found = [
        (path, value)
        for path, value in tree.leaves_with_path(state)
        if path.rsplit("/", 1)[-1] == LEARNING_RATE_KEY
    ]
    if len(found) != 1:
        paths = [path for path, _ in found]
        raise ValueError(
            f"expected exactly one '{LEARNING_RATE_KEY}' entry in the optimizer state, "
            f"found {len(found)}: {paths}"
        )
    return float(found[0][1])
