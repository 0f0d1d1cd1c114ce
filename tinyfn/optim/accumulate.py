"""Gradient accumulation: one optimizer update from the gradients of several micro-batches.

``accumulate_gradients(optimizer, every=k)`` wraps an optimizer so that it updates the
parameters once every ``k`` calls, with the mean of the ``k`` gradients it was given (optax's
``MultiSteps``). A batch of ``k * b`` samples then trains in ``k`` passes of ``b`` samples:
memory for ``b``, the update of the mean gradient of the ``k`` micro-batches. The other
``k - 1`` calls return updates of ``-0.0``, which leave every parameter as it was
(``x + (-0.0)`` is ``x`` for every float, ``-0.0`` included; ``+0.0`` would turn a ``-0.0``
into ``+0.0``).

The mean is computed in a fixed order, the same as :mod:`tinyfn.distributed`'s sum over
ranks: ``(((g_0 + g_1) + g_2) + ... + g_{k-1}) / k``, the first term taken as it is. So ``N``
ranks each computing one micro-batch's gradient train bit for bit like one process that
accumulates the same ``N`` micro-batches in rank order with ``every=N``.

The mean weighs each micro-batch equally, whatever its size: it is the mean gradient of the
whole batch only when the micro-batches are of equal size (and then up to rounding).
"""

from __future__ import annotations

import numpy as np

from .. import tree
from ..random import _check_int
from .base import GradientTransformation

__all__ = ["accumulate_gradients"]


def accumulate_gradients(optimizer: GradientTransformation, every: int) -> GradientTransformation:
    """``optimizer`` applied once every ``every`` updates, to the mean of their gradients.

    ``every`` is an int >= 1 (1 gives ``optimizer``'s own updates). The state is
    ``{"micro_step": calls since the last update (0 .. every - 1), "gradients": the sum of
    their gradients in the parameters' dtypes (zeros after an update), "inner": optimizer's
    state}``, a plain tree that a checkpoint saves, so a run resumed between two updates
    continues exactly.
    ``update(grads, state, params)`` returns ``(updates, state)``: the optimizer's updates
    at the ``every``-th call, updates of ``-0.0`` (shaped like ``grads``) at the others.
    Gradients must match the parameters leaf for leaf (:class:`tinyfn.tree.TreeMismatchError`
    naming the path otherwise).
    """
    every = _check_int("accumulate_gradients: every", every, 1)

    def init(params):
        return {"micro_step": 0, "gradients": tree.zeros_like(params), "inner": optimizer.init(params)}

    def update(grads, state, params=None):
        micro_step = int(state["micro_step"])
        # the sum starts from the first gradient itself (not 0 + g), as the sum over ranks does
        total = tree.map_matching(
            lambda s, g: np.array(g, dtype=s.dtype) if micro_step == 0 else np.add(s, g, dtype=s.dtype),
            state["gradients"],
            grads,
            same_kind=True,
        )
        if micro_step + 1 < every:
            waiting = tree.map(lambda g: np.full_like(g, -0.0), total)
            return waiting, {"micro_step": micro_step + 1, "gradients": total, "inner": state["inner"]}
        mean = tree.map(lambda s: np.asarray(s / every), total)
        updates, inner = optimizer.update(mean, state["inner"], params)
        return updates, {"micro_step": 0, "gradients": tree.zeros_like(total), "inner": inner}

    return GradientTransformation(init, update)
