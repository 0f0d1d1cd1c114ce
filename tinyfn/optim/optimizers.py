"""The usual optimizers, each a :func:`~tinyfn.optim.base.chain` of transformations ending in
``scale_by_learning_rate``.

Every optimizer takes ``learning_rate`` as a number or a schedule (``step -> rate``, see
:mod:`tinyfn.optim.schedules`) and returns a ``GradientTransformation``::

    optimizer = adam(1e-3)
    opt_state = optimizer.init(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = apply_updates(params, updates)

The update equations are PyTorch's (``torch.optim``), checked against it in the tests. For
L2 regularisation (PyTorch's ``weight_decay`` argument of ``SGD``, ``Adam``, ...), put
``add_weight_decay(wd)`` in front: ``chain(add_weight_decay(5e-4), sgd(0.1, momentum=0.9))``.

The hyperparameters are checked when the optimizer is built: learning rates and weight decays
are finite numbers >= 0, momentum and betas lie in [0, 1) (PyTorch also accepts a momentum
>= 1, whose trace grows without bound), and every ``eps`` is > 0.
"""

from __future__ import annotations

from ..random import _check_real
from .base import GradientTransformation, chain
from .transforms import (
    ScalarOrSchedule,
    add_weight_decay,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_rms,
    scale_by_rss,
    trace,
)

__all__ = ["sgd", "adam", "adamw", "rmsprop", "adagrad"]


def sgd(
    learning_rate: ScalarOrSchedule, momentum: float = 0.0, nesterov: bool = False
) -> GradientTransformation:
    """Stochastic gradient descent, optionally with (Nesterov) momentum (PyTorch's ``SGD``,
    ``dampening=0``).

    Without momentum: ``p = p - lr * g``. With momentum ``mu``: ``buf = mu * buf + g`` and
    ``p = p - lr * buf``, or with ``nesterov=True`` ``p = p - lr * (g + mu * buf)``;
    ``0 <= momentum < 1``. State: ``({"trace"}, {"count", "learning_rate"})`` with momentum,
    else ``({"count", "learning_rate"},)``.
    """
    momentum = _check_real("sgd: momentum", momentum, 0.0, 1.0, open_high=True)
    if nesterov and momentum == 0:
        raise ValueError("sgd: nesterov=True needs a momentum > 0, found momentum=0")
    stages = [trace(momentum, nesterov)] if momentum else []
    return chain(*stages, scale_by_learning_rate(learning_rate))


def adam(
    learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> GradientTransformation:
    """Adam with bias correction (PyTorch's ``Adam`` with ``betas=(b1, b2)``):
    ``p = p - lr * m_hat / (sqrt(v_hat) + eps)``; see
    :func:`~tinyfn.optim.transforms.scale_by_adam` for ``m_hat`` and ``v_hat``.
    State: ``({"count", "mu", "nu"}, {"count", "learning_rate"})``.
    """
    return chain(scale_by_adam(b1, b2, eps), scale_by_learning_rate(learning_rate))


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    mask=None,
) -> GradientTransformation:
    """Adam with decoupled weight decay (Loshchilov & Hutter; PyTorch's ``AdamW``)::

        p = p - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)

    The decay is scaled by the (scheduled) learning rate, as in PyTorch and optax, but not by
    Adam's normalisation. ``mask`` chooses the decayed leaves: ``None`` (all), a tree of
    bools, or a function of the params such as
    :func:`~tinyfn.optim.transforms.decay_mask_no_bias` (skip biases and norm parameters).
    State: ``({"count", "mu", "nu"}, None, {"count", "learning_rate"})``.
    """
    return chain(
        scale_by_adam(b1, b2, eps),
        add_weight_decay(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def rmsprop(
    learning_rate: ScalarOrSchedule, decay: float = 0.9, eps: float = 1e-8, momentum: float = 0.0
) -> GradientTransformation:
    """RMSprop as in PyTorch's ``RMSprop`` (``alpha=decay``, not centered, ``eps`` outside the
    square root)::

        v = decay * v + (1 - decay) * g**2
        p = p - lr * g / (sqrt(v) + eps)                      (momentum = 0)
        buf = momentum * buf + g / (sqrt(v) + eps); p = p - lr * buf   (momentum > 0)

    Note PyTorch's default ``alpha`` is 0.99; this default (0.9) is optax's. ``decay`` and
    ``momentum`` lie in [0, 1); ``eps`` > 0.
    State: ``({"nu"}, [{"trace"},] {"count", "learning_rate"})``.
    """
    momentum = _check_real("rmsprop: momentum", momentum, 0.0, 1.0, open_high=True)
    stages = [trace(momentum)] if momentum else []
    return chain(scale_by_rms(decay, eps), *stages, scale_by_learning_rate(learning_rate))


def adagrad(
    learning_rate: ScalarOrSchedule, initial_accumulator_value: float = 0.1, eps: float = 1e-7
) -> GradientTransformation:
    """Adagrad as in PyTorch's ``Adagrad`` (``lr_decay=0``)::

        s = s + g**2      (s starts at initial_accumulator_value)
        p = p - lr * g / (sqrt(s) + eps)

    The defaults are optax's; PyTorch's are ``initial_accumulator_value=0``, ``eps=1e-10``.
    State: ``({"sum_of_squares"}, {"count", "learning_rate"})``.
    """
    return chain(scale_by_rss(initial_accumulator_value, eps), scale_by_learning_rate(learning_rate))
