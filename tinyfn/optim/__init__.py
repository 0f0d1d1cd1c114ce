"""Optimizers as pure ``(init, update)`` pairs, their building blocks, and schedules.

* :mod:`tinyfn.optim.base`: the protocol (``GradientTransformation``, ``chain``,
  ``apply_updates``), the lean ``sgd_step`` and ``current_learning_rate``;
* :mod:`tinyfn.optim.transforms`: the stages (scaling, clipping, weight decay, moments);
* :mod:`tinyfn.optim.optimizers`: ``sgd``, ``adam``, ``adamw``, ``rmsprop``, ``adagrad``;
* :mod:`tinyfn.optim.schedules`: learning-rate schedules (``step -> rate``);
* :mod:`tinyfn.optim.accumulate`: ``accumulate_gradients``, one update from several
  micro-batches (a larger batch in the memory of a smaller one).

A training step with an optimizer::

    optimizer = chain(clip_by_global_norm(1.0), adamw(1e-3, mask=decay_mask_no_bias))
    opt_state = optimizer.init(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = apply_updates(params, updates)
    current_learning_rate(opt_state)   # the rate the last update used
"""

from . import schedules
from .accumulate import accumulate_gradients
from .base import (
    LEARNING_RATE_KEY,
    GradientTransformation,
    apply_updates,
    chain,
    current_learning_rate,
    sgd_step,
)
from .optimizers import adagrad, adam, adamw, rmsprop, sgd
from .transforms import (
    add_weight_decay,
    clip_by_global_norm,
    decay_mask_no_bias,
    global_norm,
    scale,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_rms,
    scale_by_rss,
    scale_by_schedule,
    trace,
)

__all__ = [
    "schedules",
    "accumulate_gradients",
    "LEARNING_RATE_KEY",
    "GradientTransformation",
    "apply_updates",
    "chain",
    "current_learning_rate",
    "sgd_step",
    "sgd",
    "adam",
    "adamw",
    "rmsprop",
    "adagrad",
    "add_weight_decay",
    "clip_by_global_norm",
    "decay_mask_no_bias",
    "global_norm",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "trace",
]
