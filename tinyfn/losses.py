"""Losses, each a fused primitive with its own VJP rule, and metrics.

Every loss takes ``reduction``: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample
losses). All are numerically stable at extreme logits (no inf or nan at |logit| = 1e4).
"""

from __future__ import annotations

import numpy as np

from .autodiff import Node, Primitive

__all__ = ["softmax_cross_entropy", "binary_cross_entropy_with_logits", "mse", "accuracy"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, found {reduction!r}")


def _reduce(per_item: np.ndarray, reduction: str):
    if reduction == "none":
        return per_item
    total = per_item.sum()
    return total / per_item.size if reduction == "mean" and per_item.size else total


def _item_cotangent(g, count: int, reduction: str):
    """The cotangent of each per-item loss, from the cotangent ``g`` of the reduced loss: a
    scalar that broadcasts over the items (``g / count`` for a mean, ``g`` for a sum), or
    ``g`` itself, one entry per item, when nothing was reduced."""
    return g / count if reduction == "mean" else g


def _value(x):
    return x.value if type(x) is Node else x


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


def _sce_forward(logits, labels, *, reduction):
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
    return _reduce(per_item, reduction), (shifted, exp, total, log_total, labels, per_item.size, reduction)


def _sce_vjp(g, res, needs):
    shifted, exp, total, log_total, labels, count, reduction = res
    g_items = _item_cotangent(g, count, reduction)
    if reduction == "none":
        g_items = g_items[..., None]  # one cotangent per item, broadcast over the classes
    g_logits = g_labels = None
    if needs[0]:
        # d/dlogits = softmax(logits) * sum(labels) - labels, which is p - onehot for class labels
        grad = exp / total
        if labels.dtype.kind in "iu":
            grad.reshape(-1, grad.shape[-1])[_picked(labels)] -= 1  # one entry per row: no repeats
        else:
            grad = grad * labels.sum(axis=-1, keepdims=True) - labels
        grad *= g_items
        g_logits = grad
    if needs[1] and labels.dtype.kind not in "iu":
        g_labels = (log_total - shifted) * g_items  # -log softmax
    return g_logits, g_labels


_softmax_cross_entropy = Primitive("softmax_cross_entropy", _sce_forward, _sce_vjp)


def softmax_cross_entropy(logits, labels, reduction: str = "mean"):
    """Cross-entropy between ``softmax(logits)`` and the labels.

    Args:
      logits: ``(..., C)`` unnormalised scores.
      labels: integer class indices ``(...)`` in ``[0, C)``, or one-hot/soft label
        distributions ``(..., C)`` (float, rows summing to 1).
      reduction: ``"mean"`` over samples (default), ``"sum"`` or ``"none"`` (shape ``(...)``).
    """
    _check_reduction(reduction)
    logit_shape = _value(logits).shape
    if type(labels) is not Node:
        labels = np.asarray(labels)
    label_values = _value(labels)
    if label_values.dtype.kind in "iu":
        if label_values.shape != logit_shape[:-1]:
            raise ValueError(f"softmax_cross_entropy: integer labels must have shape {logit_shape[:-1]}, found {label_values.shape}")
    elif label_values.shape != logit_shape:
        raise ValueError(f"softmax_cross_entropy: one-hot/soft labels must have the logits' shape {logit_shape}, found {label_values.shape}")
    return _softmax_cross_entropy(logits, labels, reduction=reduction)


# ----------------------------------------------------------------------------- binary cross-entropy


def _bce_forward(logits, labels, *, reduction):
    if labels.dtype.kind != "f":  # int or bool targets count as 0.0 and 1.0
        labels = labels.astype(logits.dtype)
    # -[y log s(z) + (1 - y) log(1 - s(z))] = max(z, 0) - z y + log(1 + exp(-|z|))
    per_item = np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))
    return _reduce(per_item, reduction), (logits, labels, reduction)


def _bce_vjp(g, res, needs):
    logits, labels, reduction = res
    g_items = _item_cotangent(g, np.size(logits), reduction)
    e = np.exp(-np.abs(logits))
    sigmoid = np.where(logits >= 0, 1 / (1 + e), e / (1 + e))
    return (
        ((sigmoid - labels) * g_items).astype(logits.dtype, copy=False) if needs[0] else None,
        -logits * g_items if needs[1] else None,
    )


_binary_cross_entropy = Primitive("binary_cross_entropy_with_logits", _bce_forward, _bce_vjp)


def binary_cross_entropy_with_logits(logits, labels, reduction: str = "mean"):
    """Binary cross-entropy between ``sigmoid(logits)`` and targets in [0, 1].

    ``logits`` and ``labels`` have the same shape (labels may be int or float); the mean is
    over all elements.
    """
    _check_reduction(reduction)
    if type(labels) is not Node:
        labels = np.asarray(labels)
    label_values = _value(labels)
    if label_values.shape != _value(logits).shape:
        raise ValueError(
            f"binary_cross_entropy_with_logits: labels must have the logits' shape {_value(logits).shape}, found {label_values.shape}"
        )
    return _binary_cross_entropy(logits, labels, reduction=reduction)


# ----------------------------------------------------------------------------- mean squared error


def _mse_forward(predictions, targets, *, reduction):
    diff = predictions - targets
    return _reduce(diff * diff, reduction), (diff, reduction)


def _mse_vjp(g, res, needs):
    diff, reduction = res
    g_diff = 2 * diff * _item_cotangent(g, diff.size, reduction)
    return (g_diff if needs[0] else None, -g_diff if needs[1] else None)


_mse = Primitive("mse", _mse_forward, _mse_vjp)


def mse(predictions, targets, reduction: str = "mean"):
    """Mean squared error ``(predictions - targets)**2``, averaged over all elements by default."""
    _check_reduction(reduction)
    if np.shape(_value(predictions)) != np.shape(_value(targets)):
        raise ValueError(f"mse: predictions have shape {np.shape(_value(predictions))} but targets {np.shape(_value(targets))}")
    return _mse(predictions, targets, reduction=reduction)


# ----------------------------------------------------------------------------- metrics


def accuracy(logits, labels) -> float:
    """Fraction of correct predictions (a float; not differentiable).

    Multi-class logits ``(N, C)`` with integer labels ``(N,)`` (or one-hot ``(N, C)``) compare
    the arg-max; binary logits ``(N,)`` or ``(N, 1)`` predict class 1 where the logit is > 0.
    """
    logits = np.asarray(_value(logits))
    labels = np.asarray(_value(labels))
    if logits.ndim == labels.ndim and logits.shape[-1] > 1 and labels.dtype.kind == "f":
        labels = labels.argmax(axis=-1)
    if logits.ndim == 1 or logits.shape[-1] == 1:
        predicted = (logits.reshape(labels.shape) > 0).astype(labels.dtype)
    else:
        predicted = logits.argmax(axis=-1)
    return float(np.mean(predicted == labels))
