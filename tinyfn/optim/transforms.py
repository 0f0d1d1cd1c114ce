"""Gradient transformations: the stages that optimizers are chained from.

Each function here returns a :class:`~tinyfn.optim.base.GradientTransformation`, an
``(init, update)`` pair of pure functions. ``update`` maps incoming updates (the gradients, or
the output of the previous stage of a :func:`~tinyfn.optim.base.chain`) to outgoing updates
of the same structure, and the old state to a new one::

    optimizer = chain(clip_by_global_norm(1.0), scale_by_adam(), scale_by_learning_rate(1e-3))

States are dicts of Python numbers and trees of numpy arrays shaped like the parameters
(stateless stages have state ``None``). Moment trees start as zeros in the parameters' dtype.
Hyperparameters are kept as Python floats, so float32 updates stay float32 (NumPy's scalar
promotion rules). No stage changes its inputs: new values are always new arrays.

Hyperparameters are checked when a stage is built (a ``ValueError`` or ``TypeError`` naming
the stage, the argument, the allowed range and the value found): rates, norms and decays are
finite numbers >= 0, momentum-like decays lie in [0, 1), every ``eps`` is > 0 (with 0, a zero
gradient gives 0/0 = NaN). A stage that combines its input with a tree of its own (a moment
in its state, or ``params``) refuses input leaves of another shape or dtype kind with
:class:`tinyfn.tree.TreeMismatchError` naming the path (see :mod:`tinyfn.optim.base`).
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np

from .. import tree
from ..random import _check_real
from .base import LEARNING_RATE_KEY, GradientTransformation
from .schedules import Schedule, _check_schedule, constant

__all__ = [
    "scale",
    "scale_by_schedule",
    "scale_by_learning_rate",
    "global_norm",
    "clip_by_global_norm",
    "add_weight_decay",
    "decay_mask_no_bias",
    "trace",
    "scale_by_adam",
    "scale_by_rms",
    "scale_by_rss",
]

ScalarOrSchedule = Union[float, Schedule]


def _map(f, *trees):
    """``tree.map`` that keeps leaves numpy arrays (numpy returns scalars for 0-d results)."""
    return tree.map(lambda *leaves: np.asarray(f(*leaves)), *trees)


def _map_checked(f, reference, updates, *rest):
    """:func:`_map` of ``f(reference_leaf, update_leaf, *rest_leaves)`` where the incoming
    updates first meet a tree of the stage's own: each update leaf must have its reference
    leaf's shape and dtype kind (see :func:`tinyfn.tree.map_matching`). Later maps of the
    same update need no check."""
    return tree.map_matching(lambda *leaves: np.asarray(f(*leaves)), reference, updates, *rest, same_kind=True)


def _times(updates, factor: float, params=None):
    """Every leaf multiplied by the Python float ``factor`` (array dtypes are kept); checked
    against ``params`` when they are given."""
    if params is None:
        return _map(lambda u: u * factor, updates)
    return _map_checked(lambda p, u: u * factor, params, updates)


def _no_state(params):
    """``init`` of the stateless transformations."""
    return None


# --- scaling -----------------------------------------------------------------------------


def scale(step_size: float) -> GradientTransformation:
    """Multiply every update by the constant ``step_size`` (a finite number, of either sign).
    Stateless (state ``None``)."""
    step_size = _check_real("scale: step_size", step_size)

    def update(updates, state, params=None):
        return _times(updates, step_size, params), state

    return GradientTransformation(_no_state, update)


def _scale_by_stepwise(value_at: Schedule, key: str, sign: float, low: float = -math.inf) -> GradientTransformation:
    """Multiply updates by ``sign * value_at(step)``; the state is ``{"count": step, key: value}``
    where ``value`` is the value the most recent update used (``value_at(0)`` after ``init``).
    Each value must be a finite number >= ``low``."""

    def value(step: int) -> float:
        return _check_real(f"{key} at step {step}", value_at(step), low)

    def init(params):
        return {"count": 0, key: value(0)}

    def update(updates, state, params=None):
        count = int(state["count"])
        factor = value(count)
        return _times(updates, sign * factor, params), {"count": count + 1, key: factor}

    return GradientTransformation(init, update)


def scale_by_schedule(schedule: Schedule) -> GradientTransformation:
    """Multiply the updates of step ``t`` (counted from 0) by ``schedule(t)``.

    State: ``{"count": number of updates so far, "scale": the factor last applied}``.
    """
    return _scale_by_stepwise(_check_schedule("scale_by_schedule: schedule", schedule), "scale", 1.0)


def scale_by_learning_rate(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    """Multiply updates by ``-learning_rate``: the last stage of every descent optimizer.

    ``learning_rate`` is a finite number >= 0 or a schedule (``step -> rate``, step counted
    from 0) whose rates are; a schedule's rate is checked at each step it is used.
    State: ``{"count": number of updates so far, "learning_rate": the rate last applied}``
    (see :func:`~tinyfn.optim.base.current_learning_rate`).
    """
    if callable(learning_rate):
        schedule = learning_rate
    else:
        schedule = constant(_check_real("learning_rate", learning_rate, 0.0))
    return _scale_by_stepwise(schedule, LEARNING_RATE_KEY, -1.0, low=0.0)


# --- clipping and weight decay -------------------------------------------------------------


def global_norm(updates) -> float:
    """The L2 norm of all leaves together, ``sqrt(sum of squares of every element)``. The leaves
    must be real numbers or arrays of them (``TypeError`` naming the path otherwise)."""
    for path, u in tree.leaves_with_path(updates):
        if np.asarray(u).dtype.kind not in "biuf":
            raise TypeError(f"global_norm: expected real numbers at '{path}', found {np.asarray(u).dtype} values")
    return math.sqrt(sum(float(np.vdot(u, u)) for u in tree.leaves(updates)))


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Scale all updates by ``max_norm / global_norm`` when the global norm exceeds ``max_norm``
    (optax's ``clip_by_global_norm``; PyTorch's ``clip_grad_norm_`` divides by ``norm + 1e-6``
    instead). ``max_norm`` is a finite number >= 0. Stateless (state ``None``)."""
    max_norm = _check_real("clip_by_global_norm: max_norm", max_norm, 0.0)

    def update(updates, state, params=None):
        norm = global_norm(updates)
        if norm <= max_norm:
            return updates, state
        return _times(updates, max_norm / norm, params), state

    return GradientTransformation(_no_state, update)


def decay_mask_no_bias(params):
    """A weight-decay mask that is True for leaves with ``ndim > 1`` (weight matrices and
    convolution kernels) and False for biases and normalisation scales/offsets (``ndim <= 1``).

    Pass the function itself as ``mask``: ``adamw(1e-3, mask=decay_mask_no_bias)``.
    """
    return tree.map(lambda p: np.ndim(p) > 1, params)


def add_weight_decay(weight_decay: float, mask=None) -> GradientTransformation:
    """Add ``weight_decay * params`` to the updates (the gradient of ``weight_decay/2 * |params|^2``).

    Placed before the optimizer's scaling, this is L2 regularisation (PyTorch's ``weight_decay``
    argument of ``SGD`` and ``Adam``); placed after ``scale_by_adam`` it is AdamW's decoupled
    weight decay. ``mask`` is ``None`` (decay every leaf), a tree of bools shaped like the
    parameters (True: decay), or a function ``params -> tree of bools`` such as
    :func:`decay_mask_no_bias`. ``weight_decay`` is a finite number >= 0. Stateless (state
    ``None``); needs ``params`` in ``update``.
    """
    weight_decay = _check_real("add_weight_decay: weight_decay", weight_decay, 0.0)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("add_weight_decay needs the parameters: call update(grads, state, params)")
        if mask is None:
            return _map_checked(lambda p, u: u + weight_decay * p, params, updates), state
        decay = mask(params) if callable(mask) else mask
        return _map_checked(lambda p, u, d: u + weight_decay * p if d else u, params, updates, decay), state

    return GradientTransformation(_no_state, update)


# --- moment estimates ----------------------------------------------------------------------


def trace(decay: float, nesterov: bool = False) -> GradientTransformation:
    """Momentum: ``trace = g + decay * trace``; outputs ``trace``, or with ``nesterov=True``
    ``g + decay * trace`` (using the new trace).

    These are PyTorch's SGD momentum equations with ``dampening=0`` (its buffer starts as the
    first gradient, which equals ``g + decay * 0``). ``decay`` must lie in [0, 1): PyTorch
    accepts any momentum >= 0, but from 1 on the trace never forgets a gradient and grows
    without bound. State: ``{"trace": tree of arrays}``.
    """
    decay = _check_real("trace: decay", decay, 0.0, 1.0, open_high=True)

    def init(params):
        return {"trace": tree.zeros_like(params)}

    def plus_decayed(t, g):
        return g + decay * t

    def update(updates, state, params=None):
        new_trace = _map_checked(plus_decayed, state["trace"], updates)
        updates = _map(plus_decayed, new_trace, updates) if nesterov else new_trace
        return updates, {"trace": new_trace}

    return GradientTransformation(init, update)


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> GradientTransformation:
    """Adam's direction (Kingma & Ba, 2015; the equations of PyTorch's ``Adam`` and optax).

    At step ``t = 1, 2, ...``::

        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        out = (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)

    ``b1`` and ``b2`` lie in [0, 1); ``eps`` > 0.
    State: ``{"count": t, "mu": tree of m, "nu": tree of v}``.
    """
    b1 = _check_real("scale_by_adam: b1", b1, 0.0, 1.0, open_high=True)
    b2 = _check_real("scale_by_adam: b2", b2, 0.0, 1.0, open_high=True)
    eps = _check_real("scale_by_adam: eps", eps, 0.0, open_low=True)

    def init(params):
        return {"count": 0, "mu": tree.zeros_like(params), "nu": tree.zeros_like(params)}

    def update(updates, state, params=None):
        count = int(state["count"]) + 1
        mu = _map_checked(lambda m, g: b1 * m + (1 - b1) * g, state["mu"], updates)
        nu = _map(lambda v, g: b2 * v + (1 - b2) * (g * g), state["nu"], updates)
        correction1, correction2 = 1 - b1**count, 1 - b2**count
        updates = _map(lambda m, v: (m / correction1) / (np.sqrt(v / correction2) + eps), mu, nu)
        return updates, {"count": count, "mu": mu, "nu": nu}

    return GradientTransformation(init, update)


def scale_by_rms(decay: float = 0.9, eps: float = 1e-8) -> GradientTransformation:
    """RMSprop's direction, with PyTorch's ``eps`` placement (outside the square root)::

        v = decay * v + (1 - decay) * g**2
        out = g / (sqrt(v) + eps)

    ``v`` starts at zero (as in PyTorch). ``decay`` lies in [0, 1); ``eps`` > 0.
    State: ``{"nu": tree of v}``.
    """
    decay = _check_real("scale_by_rms: decay", decay, 0.0, 1.0, open_high=True)
    eps = _check_real("scale_by_rms: eps", eps, 0.0, open_low=True)

    def init(params):
        return {"nu": tree.zeros_like(params)}

    def update(updates, state, params=None):
        nu = _map_checked(lambda v, g: decay * v + (1 - decay) * (g * g), state["nu"], updates)
        updates = _map(lambda v, g: g / (np.sqrt(v) + eps), nu, updates)
        return updates, {"nu": nu}

    return GradientTransformation(init, update)


def scale_by_rss(initial_accumulator_value: float = 0.1, eps: float = 1e-7) -> GradientTransformation:
    """Adagrad's direction, divided by the root of the sum of squared gradients (PyTorch's
    ``Adagrad`` equations, ``eps`` outside the square root)::

        s = s + g**2          (s starts at initial_accumulator_value)
        out = g / (sqrt(s) + eps)

    ``initial_accumulator_value`` >= 0; ``eps`` > 0. State: ``{"sum_of_squares": tree of s}``.
    """
    initial = _check_real("scale_by_rss: initial_accumulator_value", initial_accumulator_value, 0.0)
    eps = _check_real("scale_by_rss: eps", eps, 0.0, open_low=True)

    def init(params):
        return {"sum_of_squares": tree.map(lambda p: np.full_like(p, initial), params)}

    def update(updates, state, params=None):
        sums = _map_checked(lambda s, g: s + g * g, state["sum_of_squares"], updates)
        updates = _map(lambda s, g: g / (np.sqrt(s) + eps), sums, updates)
        return updates, {"sum_of_squares": sums}

    return GradientTransformation(init, update)
