"""Learning-rate schedules: pure functions from the step number to a value.

A schedule is any function ``schedule(step: int) -> float``. Steps count optimizer updates
from 0: the first update uses ``schedule(0)``. Pass a schedule wherever an optimizer takes a
``learning_rate``::

    lr = warmup_cosine_decay(peak_value=1e-3, warmup_steps=500, decay_steps=10_000)
    optimizer = adam(lr)

The formulas follow optax's schedules (``step_decay`` is PyTorch's ``StepLR``). Boundaries
are the first step of the new piece: ``piecewise_constant([100], [1.0, 0.1])`` gives 1.0 for
steps 0..99 and 0.1 from step 100 on.

The factories check their arguments (``ValueError``/``TypeError`` naming the schedule, the
argument, what was expected and what was found): values are finite numbers, step counts are
ints (``transition_steps`` and the like >= 1, boundaries >= 0), decay rates are > 0. A
learning rate must also be >= 0; the optimizer checks that for each step's value.
"""

from __future__ import annotations

import bisect
import math
from typing import Callable, Sequence

from ..random import _check_int, _check_real

__all__ = [
    "Schedule",
    "constant",
    "linear",
    "piecewise_constant",
    "step_decay",
    "exponential_decay",
    "cosine_decay",
    "warmup_cosine_decay",
    "join",
]

Schedule = Callable[[int], float]


def _check_schedule(name: str, schedule) -> Schedule:
    """``schedule``, after checking it is callable (a function ``step -> value``)."""
    if not callable(schedule):
        raise TypeError(f"{name} must be a schedule (a function step -> value), found {schedule!r}")
    return schedule


def constant(value: float) -> Schedule:
    """The schedule that is ``value`` (a finite number) at every step."""
    value = _check_real("constant: value", value)

    def schedule(step: int) -> float:
        return value

    return schedule


def linear(init_value: float, end_value: float, transition_steps: int) -> Schedule:
    """Go linearly from ``init_value`` at step 0 to ``end_value`` at ``transition_steps``,
    then stay at ``end_value``. (A linear warmup when ``init_value < end_value``.)
    ``transition_steps`` is an int >= 1."""
    transition_steps = _check_int("linear: transition_steps", transition_steps, 1)
    init_value = _check_real("linear: init_value", init_value)
    end_value = _check_real("linear: end_value", end_value)

    def schedule(step: int) -> float:
        fraction = min(step, transition_steps) / transition_steps
        return init_value + (end_value - init_value) * fraction

    return schedule


def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Run ``schedules[0]`` until ``boundaries[0]``, then ``schedules[1]`` until
    ``boundaries[1]``, and so on (optax's ``join_schedules``).

    Each later schedule sees the step counted from its own boundary: at step ``b = boundaries[i]``
    the result is ``schedules[i + 1](0)``. Needs ``len(schedules) == len(boundaries) + 1`` and
    non-decreasing int boundaries >= 0.
    """
    schedules = [_check_schedule(f"join: schedules[{i}]", s) for i, s in enumerate(schedules)]
    boundaries = [_check_int(f"join: boundaries[{i}]", b) for i, b in enumerate(boundaries)]
    if len(schedules) != len(boundaries) + 1:
        raise ValueError(
            f"join: expected len(schedules) == len(boundaries) + 1, found {len(schedules)} "
            f"schedules and {len(boundaries)} boundaries"
        )
    if boundaries != sorted(boundaries):
        raise ValueError(f"join: boundaries must be non-decreasing, found {boundaries}")

    def schedule(step: int) -> float:
        piece = bisect.bisect_right(boundaries, step)  # number of boundaries already reached
        start = boundaries[piece - 1] if piece else 0
        return float(schedules[piece](step - start))

    return schedule


def piecewise_constant(boundaries: Sequence[int], values: Sequence[float]) -> Schedule:
    """``values[0]`` before ``boundaries[0]``, ``values[i]`` from ``boundaries[i - 1]`` on.

    Needs ``len(values) == len(boundaries) + 1`` (finite numbers) and non-decreasing int
    boundaries >= 0. PyTorch's ``MultiStepLR(milestones, gamma)`` is
    ``piecewise_constant(milestones, [lr, lr*gamma, ...])``.
    """
    values = [_check_real(f"piecewise_constant: values[{i}]", v) for i, v in enumerate(values)]
    return join([constant(v) for v in values], boundaries)


def exponential_decay(
    init_value: float, decay_rate: float, transition_steps: int, staircase: bool = False
) -> Schedule:
    """``init_value * decay_rate ** (step / transition_steps)``.

    With ``staircase=True`` the exponent is rounded down, ``step // transition_steps``, so the
    value drops by ``decay_rate`` once every ``transition_steps`` steps. ``decay_rate`` is > 0
    (a negative one has no real fractional powers); ``transition_steps`` is an int >= 1.
    """
    transition_steps = _check_int("exponential_decay: transition_steps", transition_steps, 1)
    init_value = _check_real("exponential_decay: init_value", init_value)
    decay_rate = _check_real("exponential_decay: decay_rate", decay_rate, 0.0, open_low=True)

    def schedule(step: int) -> float:
        exponent = step // transition_steps if staircase else step / transition_steps
        return init_value * decay_rate**exponent

    return schedule


def step_decay(init_value: float, step_size: int, gamma: float) -> Schedule:
    """``init_value * gamma ** (step // step_size)``, PyTorch's ``StepLR``: multiply by ``gamma``
    (> 0) every ``step_size`` (an int >= 1) steps."""
    step_size = _check_int("step_decay: step_size", step_size, 1)
    gamma = _check_real("step_decay: gamma", gamma, 0.0, open_low=True)
    return exponential_decay(init_value, gamma, step_size, staircase=True)


def _cosine(start: float, end: float, steps: int) -> Schedule:
    """Half a cosine from ``start`` at step 0 to ``end`` at ``steps``, then ``end``."""
    start, end = float(start), float(end)

    def schedule(step: int) -> float:
        progress = min(step, steps) / steps
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return schedule


def cosine_decay(init_value: float, decay_steps: int, alpha: float = 0.0) -> Schedule:
    """Cosine annealing from ``init_value`` at step 0 to ``alpha * init_value`` at
    ``decay_steps``, constant afterwards (optax's ``cosine_decay_schedule``; PyTorch's
    ``CosineAnnealingLR`` with ``eta_min = alpha * init_value``, ``T_max = decay_steps``)::

        init_value * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps)) + alpha)

    ``init_value`` and ``alpha`` are finite numbers; ``decay_steps`` is an int >= 1.
    """
    decay_steps = _check_int("cosine_decay: decay_steps", decay_steps, 1)
    # checked, not converted: alpha * init_value keeps the arithmetic of the arguments given
    _check_real("cosine_decay: init_value", init_value)
    _check_real("cosine_decay: alpha", alpha)
    return _cosine(init_value, alpha * init_value, decay_steps)


def warmup_cosine_decay(
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    init_value: float = 0.0,
    end_value: float = 0.0,
) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then cosine
    decay to ``end_value``, reached at step ``decay_steps`` (optax's
    ``warmup_cosine_decay_schedule``: ``decay_steps`` counts the warmup too).

    The value is ``peak_value`` exactly at step ``warmup_steps`` and ``end_value`` from step
    ``decay_steps`` on. Needs ints ``0 <= warmup_steps < decay_steps`` and finite values.
    """
    warmup_steps = _check_int("warmup_cosine_decay: warmup_steps", warmup_steps)
    decay_steps = _check_int("warmup_cosine_decay: decay_steps", decay_steps, 1)
    peak_value = _check_real("warmup_cosine_decay: peak_value", peak_value)
    init_value = _check_real("warmup_cosine_decay: init_value", init_value)
    end_value = _check_real("warmup_cosine_decay: end_value", end_value)
    if not warmup_steps < decay_steps:
        raise ValueError(
            f"warmup_cosine_decay: expected 0 <= warmup_steps < decay_steps, found "
            f"warmup_steps={warmup_steps!r}, decay_steps={decay_steps!r}"
        )
    decay = _cosine(peak_value, end_value, decay_steps - warmup_steps)
    if warmup_steps == 0:
        return decay
    return join([linear(init_value, peak_value, warmup_steps), decay], [warmup_steps])
