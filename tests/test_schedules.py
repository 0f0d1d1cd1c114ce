"""Learning-rate schedules: hand-computed values at chosen steps and the defining properties."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyfn.optim import schedules


def values(schedule, steps):
    return [schedule(step) for step in steps]


def test_constant():
    assert values(schedules.constant(0.3), [0, 1, 10_000]) == [0.3, 0.3, 0.3]


def test_linear_goes_from_init_to_end_then_stays():
    schedule = schedules.linear(1.0, 3.0, 4)
    assert values(schedule, [0, 1, 2, 4, 5, 100]) == pytest.approx([1.0, 1.5, 2.0, 3.0, 3.0, 3.0])


def test_piecewise_constant_switches_at_each_boundary():
    schedule = schedules.piecewise_constant([10, 20], [1.0, 0.5, 0.1])
    steps = [0, 9, 10, 19, 20, 1000]
    assert values(schedule, steps) == [1.0, 1.0, 0.5, 0.5, 0.1, 0.1]


def test_step_decay_multiplies_by_gamma_every_step_size_steps():
    schedule = schedules.step_decay(2.0, step_size=10, gamma=0.5)
    assert values(schedule, [0, 9, 10, 19, 20, 35]) == pytest.approx([2.0, 2.0, 1.0, 1.0, 0.5, 0.25])


def test_exponential_decay_smooth_and_staircase():
    smooth = schedules.exponential_decay(2.0, decay_rate=0.5, transition_steps=10)
    stairs = schedules.exponential_decay(2.0, decay_rate=0.5, transition_steps=10, staircase=True)
    # 2 * 0.5 ** (5 / 10) = 2 / sqrt(2) = sqrt(2); 2 * 0.5 ** 1.5 = 1 / sqrt(2)
    assert values(smooth, [0, 5, 10, 15]) == pytest.approx([2.0, math.sqrt(2), 1.0, 1 / math.sqrt(2)])
    assert values(stairs, [0, 5, 9, 10, 15, 20]) == pytest.approx([2.0, 2.0, 2.0, 1.0, 1.0, 0.5])


def test_cosine_decay_values_and_end_at_alpha_times_init():
    schedule = schedules.cosine_decay(2.0, decay_steps=100, alpha=0.1)
    # 2 * (0.9 * 0.5 * (1 + cos(pi * t / 100)) + 0.1): cos(pi/2) = 0, cos(pi/4) = sqrt(2)/2
    expected_25 = 2.0 * (0.9 * 0.5 * (1 + math.sqrt(2) / 2) + 0.1)
    assert values(schedule, [0, 25, 50, 100, 150]) == pytest.approx([2.0, expected_25, 1.1, 0.2, 0.2])


def test_warmup_cosine_decay_reaches_peak_at_warmup_steps_and_end_value_at_decay_steps():
    schedule = schedules.warmup_cosine_decay(peak_value=1.0, warmup_steps=10, decay_steps=110, end_value=0.1)
    # warmup: linear 0 -> 1 over 10 steps; then cosine 1 -> 0.1 over 100 steps
    steps = [0, 5, 10, 60, 110, 500]
    assert values(schedule, steps) == pytest.approx([0.0, 0.5, 1.0, 0.55, 0.1, 0.1])


def test_warmup_cosine_decay_from_init_value_and_without_warmup():
    warm = schedules.warmup_cosine_decay(2.0, warmup_steps=4, decay_steps=8, init_value=1.0)
    assert values(warm, [0, 2, 4, 6, 8]) == pytest.approx([1.0, 1.5, 2.0, 1.0, 0.0])
    cold = schedules.warmup_cosine_decay(2.0, warmup_steps=0, decay_steps=4)
    assert values(cold, [0, 2, 4]) == pytest.approx([2.0, 1.0, 0.0])


def test_join_counts_steps_from_each_boundary():
    schedule = schedules.join([schedules.constant(5.0), float, lambda step: 100.0 + step], [3, 10])
    assert values(schedule, [0, 2, 3, 4, 9, 10, 12]) == [5.0, 5.0, 0.0, 1.0, 6.0, 100.0, 102.0]


@pytest.mark.parametrize(
    "schedule",
    [
        schedules.constant(1),
        schedules.linear(0, 1, 3),
        schedules.piecewise_constant([2], [1, 2]),
        schedules.step_decay(1, 2, 0.5),
        schedules.exponential_decay(1, 0.5, 2),
        schedules.cosine_decay(1, 5),
        schedules.warmup_cosine_decay(1, 2, 5),
        schedules.join([schedules.constant(1), schedules.constant(2)], [1]),
    ],
)
def test_schedules_return_python_floats(schedule):
    assert all(type(v) is float for v in values(schedule, range(8)))


@given(
    peak=st.floats(0.1, 10.0),
    warmup=st.integers(0, 50),
    decay=st.integers(1, 200),
    init_fraction=st.floats(0.0, 1.0),
    end_fraction=st.floats(0.0, 1.0),
)
def test_warmup_cosine_decay_rises_then_falls_within_bounds(peak, warmup, decay, init_fraction, end_fraction):
    init_value, end_value = init_fraction * peak, end_fraction * peak
    schedule = schedules.warmup_cosine_decay(peak, warmup, warmup + decay, init_value, end_value)
    curve = values(schedule, range(warmup + decay + 5))
    rising, falling = curve[: warmup + 1], curve[warmup:]
    tolerance = 1e-12 * peak
    assert all(b >= a - tolerance for a, b in zip(rising, rising[1:]))
    assert all(b <= a + tolerance for a, b in zip(falling, falling[1:]))
    assert curve[warmup] == pytest.approx(peak)
    assert curve[-1] == pytest.approx(end_value)
    assert min(curve) >= min(init_value, end_value) - tolerance


# Bad arguments to the factories are refused: see tests/test_bad_inputs_core.py.


@pytest.mark.parametrize(
    "with_numpy, with_python",
    [
        (schedules.constant(np.float32(0.5)), schedules.constant(0.5)),
        (schedules.linear(np.int64(1), np.float64(0.25), np.int32(4)), schedules.linear(1, 0.25, 4)),
        (schedules.cosine_decay(np.float32(0.5), np.int64(10)), schedules.cosine_decay(0.5, 10)),
        (schedules.warmup_cosine_decay(1.0, np.int64(2), np.int64(10)), schedules.warmup_cosine_decay(1.0, 2, 10)),
        (
            schedules.piecewise_constant([np.int64(3)], [1.0, np.float32(0.5)]),
            schedules.piecewise_constant([3], [1.0, 0.5]),
        ),
    ],
    ids=["constant", "linear", "cosine_decay", "warmup_cosine_decay", "piecewise_constant"],
)
def test_numpy_scalars_are_accepted_as_values_and_step_counts(with_numpy, with_python):
    assert values(with_numpy, range(12)) == values(with_python, range(12))


def test_match_torch_lr_schedulers():
    torch = pytest.importorskip("torch")
    lr_scheduler = torch.optim.lr_scheduler
    lr = 0.5

    def torch_rates(make_scheduler, steps):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
        scheduler = make_scheduler(optimizer)
        rates = []
        for _ in range(steps):
            rates.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return rates

    cases = [
        (schedules.step_decay(lr, 7, 0.3), lambda o: lr_scheduler.StepLR(o, step_size=7, gamma=0.3), 30),
        (schedules.exponential_decay(lr, 0.9, 1), lambda o: lr_scheduler.ExponentialLR(o, gamma=0.9), 30),
        (
            schedules.piecewise_constant([5, 12], [lr, lr * 0.1, lr * 0.01]),
            lambda o: lr_scheduler.MultiStepLR(o, milestones=[5, 12], gamma=0.1),
            30,
        ),
        # CosineAnnealingLR matches up to T_max; after it, torch cycles back up while optax stays
        (
            schedules.cosine_decay(lr, 20, alpha=0.1),
            lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=20, eta_min=0.05),
            21,
        ),
    ]
    for ours, make_scheduler, steps in cases:
        assert values(ours, range(steps)) == pytest.approx(torch_rates(make_scheduler, steps), rel=1e-9)
