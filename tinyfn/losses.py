"""Losses, each a fused primitive with its own VJP rule, and metrics.

Every loss takes ``reduction``: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample
losses). All are numerically stable at extreme logits (no inf or nan at |logit| = 1e4).
"""

from __future__ import annotations

import math

import numpy as np

from . import ops
from .autodiff import Node, Primitive, concrete_value, primal_value

__all__ = ["softmax_cross_entropy", "binary_cross_entropy_with_logits", "mse", "accuracy"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, found {reduction!r}")


def _check_not_empty(loss: str, shape: tuple) -> None:
    if 0 in shape:
        raise ValueError(f"{loss}: expected a non-empty batch, found predictions of shape {shape}")


def _as_numbers(loss: str, name: str, x):
    """``x`` as an array (a traced value is kept as it is), after checking it holds real
    numbers (bool, int or float); a TypeError naming the loss and the argument otherwise."""
    x = x if type(x) is Node else np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{loss}: expected numeric {name}, found dtype {x.dtype}")
    return x


def _reduce(per_item: np.ndarray, reduction: str):
    if reduction == "none":
        return per_item
    total = per_item.sum()
    return total / per_item.size if reduction == "mean" else total


def _item_cotangent(g, count: int, reduction: str, per_class: bool = False):
    """The cotangent of each per-item loss, from the cotangent ``g`` of the reduced loss: a
    scalar that broadcasts over the items (``g / count`` for a mean, ``g`` for a sum), or
    ``g`` itself, one entry per item, when nothing was reduced (with a trailing axis of 1
    when ``per_class``, to broadcast over the classes)."""
    if reduction == "mean":
        return g / count
    if reduction == "none" and per_class:
        return ops.reshape(g, np.shape(g) + (1,))
    return g


# ----------------------------------------------------------------------------- softmax cross-entropy


def _picked(labels: np.ndarray) -> tuple:
    """Index of entry ``labels[i]`` in row i of a ``(..., C)`` array seen as ``(n, C)``."""
    return np.arange(labels.size), labels.reshape(-1)


def _check_class_indices(labels: np.ndarray, num_classes: int) -> None:
    # in the forward rather than in the wrapper: under a static graph only primitives see each call's labels
    if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
        raise ValueError(
            f"softmax_cross_entropy: labels must be class indices in [0, {num_classes}), "
            f"found values from {labels.min()} to {labels.max()}"
        )


def _sce_numpy(logits, labels, reduction):
    """``(loss, softmax(logits))`` on plain arrays, with one exp of the logits."""
    # log softmax = shifted - log(total), with the row maximum subtracted first so exp cannot overflow
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=-1, keepdims=True)
    log_total = np.log(total)
    if labels.dtype.kind in "iu":
        _check_class_indices(labels, logits.shape[-1])
        # only the label's entry of log softmax is needed: no full (N, C) log-probability array
        picked = shifted.reshape(-1, shifted.shape[-1])[_picked(labels)].reshape(labels.shape)
        per_item = log_total.reshape(labels.shape) - picked
    else:
        per_item = (labels * (log_total - shifted)).sum(axis=-1)
    exp /= total
    return _reduce(per_item, reduction), exp


def _sce_forward(logits, labels, *, reduction):
    count = math.prod(logits.shape[:-1])
    if type(logits) is np.ndarray and type(labels) is np.ndarray:  # nothing above traces: one numpy pass
        out, probs = _sce_numpy(logits, labels, reduction)
    else:
        out, probs = _softmax_cross_entropy(logits, labels, reduction=reduction), ops.softmax(logits)
    return out, (logits, probs, labels, count, reduction)


# VJP derived in docs/book/03-layers-and-losses.md#vjp-softmax_cross_entropy
def _sce_vjp(g, res, needs):
    # loss = -sum(labels * log_softmax(logits)), so d/dlogits = softmax(logits) * sum(labels) - labels,
    # which is p - onehot for class labels, and d/dlabels = -log_softmax(logits).
    logits, probs, labels, count, reduction = res
    g_items = _item_cotangent(g, count, reduction, per_class=True)
    g_logits = g_labels = None
    if needs[0]:
        if labels.dtype.kind in "iu":
            one_hot = np.eye(probs.shape[-1], dtype=probs.dtype)[labels]
            g_logits = (probs - one_hot) * g_items
        else:
            g_logits = (probs * ops.sum(labels, axis=-1, keepdims=True) - labels) * g_items
    if needs[1]:
        g_labels = -ops.log_softmax(logits) * g_items
    return g_logits, g_labels


_softmax_cross_entropy = Primitive(
    "softmax_cross_entropy",
    _sce_forward,
    _sce_vjp,
    impl=lambda logits, labels, *, reduction: _sce_numpy(logits, labels, reduction)[0],
)


def softmax_cross_entropy(logits, labels, reduction: str = "mean"):
    """Cross-entropy between ``softmax(logits)`` and the labels.

    Args:
      logits: ``(..., C)`` unnormalised scores, C >= 1, a non-empty batch.
      labels: integer class indices ``(...)`` in ``[0, C)``, or one-hot/soft label
        distributions ``(..., C)`` (float, rows summing to 1).
      reduction: ``"mean"`` over samples (default), ``"sum"`` or ``"none"`` (shape ``(...)``).

    Returns a scalar (or the per-sample losses for ``"none"``). Differentiable to any order
    in the logits and in soft labels.
    """
    _check_reduction(reduction)
    logits = _as_numbers("softmax_cross_entropy", "logits", logits)
    logit_shape = logits.shape
    if len(logit_shape) < 1 or logit_shape[-1] < 1:
        raise ValueError(f"softmax_cross_entropy: expected logits (..., C) with C >= 1 classes, found shape {logit_shape}")
    _check_not_empty("softmax_cross_entropy", logit_shape)
    if type(labels) is not Node:
        labels = np.asarray(labels)
    label_shape, label_kind = labels.shape, labels.dtype.kind
    if label_kind in "iu":
        if label_shape != logit_shape[:-1]:
            raise ValueError(f"softmax_cross_entropy: integer labels must have shape {logit_shape[:-1]}, found {label_shape}")
    elif label_kind != "f":
        raise TypeError(
            f"softmax_cross_entropy: expected integer class indices or float one-hot/soft labels, "
            f"found labels of dtype {labels.dtype}"
        )
    elif label_shape == logit_shape[:-1] and logit_shape[-1] != 1:
        raise ValueError(
            f"softmax_cross_entropy: float labels of shape {label_shape} look like class indices; "
            f"pass them as integers (labels.astype(int)), or as one-hot rows of shape {logit_shape}"
        )
    elif label_shape != logit_shape:
        raise ValueError(f"softmax_cross_entropy: one-hot/soft labels must have the logits' shape {logit_shape}, found {label_shape}")
    return _softmax_cross_entropy(logits, labels, reduction=reduction)


# ----------------------------------------------------------------------------- binary cross-entropy


def _check_targets(labels: np.ndarray) -> None:
    # in the primitive rather than in the wrapper: under a static graph only primitives see each call's labels
    if labels.size and not 0 <= labels.min() <= labels.max() <= 1:
        raise ValueError(
            f"binary_cross_entropy_with_logits: expected labels in [0, 1], found values from {labels.min()} to {labels.max()}"
        )


def _bce_impl(logits, labels, *, reduction):
    # -[y log s(z) + (1 - y) log(1 - s(z))] = max(z, 0) - z y + log(1 + exp(-|z|))
    _check_targets(labels)
    per_item = np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))
    return _reduce(per_item, reduction)


# VJP derived in docs/book/03-layers-and-losses.md#vjp-binary_cross_entropy_with_logits
def _bce_vjp(g, res, needs):
    # d/dz = sigmoid(z) - y and d/dy = -z, per item
    logits, labels, reduction = res
    g_items = _item_cotangent(g, np.size(primal_value(logits)), reduction)
    return (
        (ops.sigmoid(logits) - labels) * g_items if needs[0] else None,
        -logits * g_items if needs[1] else None,
    )


_binary_cross_entropy = Primitive(
    "binary_cross_entropy_with_logits",
    vjp=_bce_vjp,
    impl=_bce_impl,  # checks the labels on plain arrays
    keep=lambda out, logits, labels, *, reduction: (logits, labels, reduction),
)


def binary_cross_entropy_with_logits(logits, labels, reduction: str = "mean"):
    """Binary cross-entropy between ``sigmoid(logits)`` and targets in [0, 1].

    ``logits`` and ``labels`` have the same, non-empty shape (int or bool labels count as 0.0
    and 1.0); the mean is over all elements. Differentiable to any order.
    """
    _check_reduction(reduction)
    logits = _as_numbers("binary_cross_entropy_with_logits", "logits", logits)
    logit_shape = logits.shape
    _check_not_empty("binary_cross_entropy_with_logits", logit_shape)
    labels = _as_numbers("binary_cross_entropy_with_logits", "labels in [0, 1]", labels)
    if type(labels) is not Node and labels.dtype.kind in "biu":
        labels = labels.astype(np.result_type(primal_value(logits)))
    if np.shape(labels) != logit_shape:
        raise ValueError(
            f"binary_cross_entropy_with_logits: labels must have the logits' shape {logit_shape}, found {np.shape(labels)}"
        )
    return _binary_cross_entropy(logits, labels, reduction=reduction)


# ----------------------------------------------------------------------------- mean squared error


# VJP derived in docs/book/03-layers-and-losses.md#vjp-mse
def _mse_vjp(g, res, needs):
    diff, reduction = res
    g_diff = 2 * diff * _item_cotangent(g, np.size(primal_value(diff)), reduction)
    return (g_diff if needs[0] else None, -g_diff if needs[1] else None)


_mse = Primitive(
    "mse",
    vjp=_mse_vjp,
    impl=lambda predictions, targets, *, reduction: _reduce(np.square(np.subtract(predictions, targets)), reduction),
    keep=lambda out, predictions, targets, *, reduction: (ops.subtract(predictions, targets), reduction),
)


def mse(predictions, targets, reduction: str = "mean"):
    """Mean squared error ``(predictions - targets)**2``, averaged over all elements by default.

    ``predictions`` and ``targets`` have the same, non-empty shape. Differentiable to any order.
    """
    _check_reduction(reduction)
    predictions, targets = _as_numbers("mse", "predictions", predictions), _as_numbers("mse", "targets", targets)
    if np.shape(predictions) != np.shape(targets):
        raise ValueError(f"mse: predictions have shape {np.shape(predictions)} but targets {np.shape(targets)}")
    _check_not_empty("mse", np.shape(predictions))
    return _mse(predictions, targets, reduction=reduction)


# ----------------------------------------------------------------------------- metrics


def accuracy(logits, labels) -> float:
    """Fraction of correct predictions (a float; not differentiable).

    Multi-class logits ``(N, C)`` with integer labels ``(N,)`` in ``[0, C)`` (or one-hot
    ``(N, C)``) compare the arg-max; binary logits ``(N,)`` or ``(N, 1)`` with labels 0 or 1
    predict class 1 where the logit is > 0. A ValueError names the problem for an empty
    batch, shapes that do not match, or labels outside the classes.
    """
    logits = np.asarray(concrete_value(logits, "accuracy"))
    labels = np.asarray(concrete_value(labels, "accuracy"))
    if logits.ndim == 0 or logits.size == 0:
        raise ValueError(f"accuracy: expected a non-empty batch of logits, found shape {logits.shape}")
    binary = logits.ndim == 1 or logits.shape[-1] == 1
    if not binary and labels.shape == logits.shape and labels.dtype.kind == "f":
        labels = labels.argmax(axis=-1)  # one-hot rows
    expected = logits.shape[:1] if binary else logits.shape[:-1]
    if labels.shape != expected:
        raise ValueError(f"accuracy: expected labels of shape {expected} for logits of shape {logits.shape}, found {labels.shape}")
    classes = 2 if binary else logits.shape[-1]
    if labels.dtype.kind not in "biuf" or not np.all((labels >= 0) & (labels < classes) & (labels == np.round(labels))):
        raise ValueError(f"accuracy: expected class labels in [0, {classes}), found {np.unique(labels)[:10]}")
    predicted = (logits.reshape(-1) > 0) if binary else logits.argmax(axis=-1)
    return float(np.mean(predicted == labels))
