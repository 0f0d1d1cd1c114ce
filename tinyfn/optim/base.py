"""The optimizer protocol: gradient transformations, chaining them, and applying updates.

An optimizer is a :class:`GradientTransformation`, a pair of pure functions (the design of
optax)::

    state = optimizer.init(params)
    updates, state = optimizer.update(grads, state, params)
    params = apply_updates(params, updates)

``updates`` has the structure of ``params`` and is *added* to them, so a descent step's
updates are ``-learning_rate * direction``. Nothing is mutated: every call returns new trees.

Gradients and updates must match the parameters leaf for leaf: the same tree structure, the
same shapes (nothing is broadcast) and the same dtype kind (float gradients for float
parameters; float64 for float32 is fine). ``apply_updates``, ``sgd_step`` and every stage that
combines its input with a tree of its own (its state, or ``params``) refuse anything else
with :class:`tinyfn.tree.TreeMismatchError` naming the path and both leaves. Only shapes and
dtypes are compared, never values, so the check costs little in a training step.

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
from ..random import _check_real

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

    for position, transform in enumerate(transforms):
        if not (callable(getattr(transform, "init", None)) and callable(getattr(transform, "update", None))):
            raise TypeError(
                f"chain: expected GradientTransformations (init, update pairs), found {transform!r} at "
                f"position {position} (an optimizer factory such as optim.adam must be called: optim.adam(1e-3))"
            )

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


def _leafwise(combine, params, others):
    """``combine(param, other)`` for each pair of leaves, as a new tree of read-only arrays;
    each ``other`` leaf must have its parameter's shape and dtype kind."""

    def one(param, other):
        new = combine(param, other)
        new.flags.writeable = False
        return new

    return tree.map_matching(one, params, others, same_kind=True)


def apply_updates(params, updates):
    """``params + updates`` leaf by leaf, as a new tree of read-only arrays.

    Each new leaf keeps its parameter's dtype (float64 updates on float32 parameters give
    float32 parameters). Raises :class:`tinyfn.tree.TreeMismatchError` naming the path if the
    trees, a leaf's shape or its dtype kind differ.
    """
    # asarray: for 0-d parameters numpy returns a scalar, which cannot be made read-only
    return _leafwise(lambda p, u: np.asarray(np.add(p, u, dtype=p.dtype)), params, updates)


def sgd_step(params, grads, lr: float):
    """One plain gradient-descent step: ``params - lr * grads``, as a new tree.

    ``params`` and ``grads`` are trees of the same structure with numpy array leaves of equal
    shapes and dtype kinds; ``lr`` is a finite number >= 0. The new leaves keep the parameters'
    dtypes and are read-only; the inputs are untouched. Raises
    :class:`tinyfn.tree.TreeMismatchError` naming the path if the trees, a leaf's shape or its
    dtype kind differ, and ``ValueError``/``TypeError`` for a bad ``lr``.

    The lean hot path of training loops: one tree traversal and one fused pass over each
    leaf (:func:`tinyfn.kernels.elementwise.sgd_update`). The optimizer ``sgd(lr)`` computes
    the same numbers with a state and a transformation chain.
    """
    lr = _check_real("sgd_step: lr", lr, 0.0)
    return _leafwise(functools.partial(sgd_update, lr=lr), params, grads)


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
