"""Losses: values against direct formulas, gradients against finite differences, stability."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyfn import grad, losses
from tinyfn.testing import arrays, check_grads

from gradient_registry import covers

REDUCTIONS = ["mean", "sum", "none"]


@covers("softmax_cross_entropy", order=2)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(data=st.data(), n=st.integers(1, 5), c=st.integers(2, 5))
def test_softmax_cross_entropy_with_integer_and_soft_labels(reduction, data, n, c):
    logits = data.draw(arrays((n, c)))
    labels = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), dtype=np.int64)
    check_grads(lambda z: losses.softmax_cross_entropy(z, labels, reduction), (logits,), order=2)
    soft = data.draw(arrays((n, c), low=0.1, high=1.0))
    soft = soft / soft.sum(axis=1, keepdims=True)
    check_grads(lambda z, t: losses.softmax_cross_entropy(z, t, reduction), (logits, soft), order=2)
    # value against the textbook formula
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    per_sample = -log_p[np.arange(n), labels]
    expected = {"mean": per_sample.mean(), "sum": per_sample.sum(), "none": per_sample}[reduction]
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels, reduction), expected, rtol=1e-12)


@covers("binary_cross_entropy_with_logits", order=2)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(data=st.data(), n=st.integers(1, 6))
def test_binary_cross_entropy_with_logits(reduction, data, n):
    z = data.draw(arrays((n,), low=-5, high=5))
    y = data.draw(arrays((n,), low=0.0, high=1.0))
    check_grads(lambda z, y: losses.binary_cross_entropy_with_logits(z, y, reduction), (z, y), order=2)
    s = 1 / (1 + np.exp(-z))
    per_item = -(y * np.log(s) + (1 - y) * np.log(1 - s))
    expected = {"mean": per_item.mean(), "sum": per_item.sum(), "none": per_item}[reduction]
    np.testing.assert_allclose(losses.binary_cross_entropy_with_logits(z, y, reduction), expected, rtol=1e-9)


@covers("mse", order=2)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(data=st.data(), n=st.integers(1, 6))
def test_mse(reduction, data, n):
    p = data.draw(arrays((n, 2)))
    t = data.draw(arrays((n, 2)))
    check_grads(lambda p, t: losses.mse(p, t, reduction), (p, t), order=2)
    per_item = (p - t) ** 2
    expected = {"mean": per_item.mean(), "sum": per_item.sum(), "none": per_item}[reduction]
    np.testing.assert_allclose(losses.mse(p, t, reduction), expected)


def test_losses_are_finite_at_extreme_logits_in_float32():
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], np.float32)
    labels = np.array([1, 0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        value = losses.softmax_cross_entropy(z, labels)
        g = grad(lambda z: losses.softmax_cross_entropy(z, labels))(z)
        b = losses.binary_cross_entropy_with_logits(z.ravel(), np.array([1, 0, 1, 1, 0, 0]))
        gb = grad(lambda z: losses.binary_cross_entropy_with_logits(z, np.array([1.0, 0, 1, 1, 0, 0], np.float32)))(z.ravel())
    assert np.isfinite(value) and np.isclose(value, (2e4 + 2e4 + np.log(2)) / 2, rtol=1e-6)
    assert np.isfinite(b) and np.isclose(b, (3e4 + np.log(2)) / 6, rtol=1e-6)
    assert np.all(np.isfinite(g)) and np.all(np.isfinite(gb)) and g.dtype == np.float32


def test_softmax_cross_entropy_accepts_int64_labels_for_any_batch_size():
    logits = np.zeros((1000, 10), np.float32)
    labels = np.arange(1000, dtype=np.int64) % 10
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels), np.log(10), rtol=1e-6)


def test_label_errors_name_what_was_expected():
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\), found values from 0 to 3"):
        losses.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"integer labels must have shape \(2,\), found \(3,\)"):
        losses.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        losses.mse(np.zeros(2), np.zeros(2), reduction="avg")


def test_accuracy_for_multiclass_binary_and_one_hot():
    assert losses.accuracy(np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), np.array([1, 0, 0])) == pytest.approx(2 / 3)
    assert losses.accuracy(np.array([[2.0], [-1.0]]), np.array([1, 1])) == 0.5
    assert losses.accuracy(np.array([[0.1, 0.9]]), np.array([[0.0, 1.0]])) == 1.0


BAD_LOSS_INPUTS = [
    (lambda: losses.softmax_cross_entropy(np.zeros((0, 3)), np.zeros(0, int)), ValueError, r"non-empty batch, found predictions of shape \(0, 3\)"),
    (lambda: losses.softmax_cross_entropy(np.zeros((2, 0)), np.zeros(2, int)), ValueError, r"C >= 1 classes, found shape \(2, 0\)"),
    (lambda: losses.softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 2.0])), ValueError, r"float labels of shape \(2,\) look like class indices"),
    (lambda: losses.softmax_cross_entropy(np.zeros((2, 3)), np.array(["a", "b"])), TypeError, r"found labels of dtype <U1"),
    (lambda: losses.binary_cross_entropy_with_logits(np.zeros(0), np.zeros(0)), ValueError, r"non-empty batch"),
    (lambda: losses.binary_cross_entropy_with_logits(np.zeros(2), np.array(["a", "b"])), TypeError, r"numeric labels in \[0, 1\], found dtype <U1"),
    (lambda: losses.mse(np.zeros((0, 2)), np.zeros((0, 2))), ValueError, r"non-empty batch"),
    (lambda: losses.accuracy(np.zeros((0, 3)), np.zeros(0, int)), ValueError, r"non-empty batch of logits, found shape \(0, 3\)"),
    (lambda: losses.accuracy(np.zeros((2, 3)), np.array([0, 5])), ValueError, r"class labels in \[0, 3\), found \[0 5\]"),
    (lambda: losses.accuracy(np.zeros((2, 1)), np.array([0, 2])), ValueError, r"class labels in \[0, 2\)"),
    (lambda: losses.accuracy(np.zeros((2, 3)), np.array([0, 1, 2])), ValueError, r"labels of shape \(2,\) for logits of shape \(2, 3\), found \(3,\)"),
]


@pytest.mark.parametrize("call, error, message", BAD_LOSS_INPUTS)
def test_bad_loss_inputs_name_what_was_expected_and_found(call, error, message):
    with pytest.raises(error, match=message):
        call()
