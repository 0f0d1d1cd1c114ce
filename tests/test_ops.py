"""Gradient checks of every primitive in tinyfn.ops against finite differences (float64),
with hypothesis generating shapes and values."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyfn import ops
from tinyfn.testing import arrays, broadcastable_shapes, check_grads, shapes

from gradient_registry import covers

BINARY = {
    "add": ops.add,
    "subtract": ops.subtract,
    "multiply": ops.multiply,
    "maximum": ops.maximum,
    "minimum": ops.minimum,
}


@covers(*BINARY)
@pytest.mark.parametrize("name", sorted(BINARY))
@given(data=st.data(), pair=broadcastable_shapes())
def test_binary_ops_broadcast_gradients(name, data, pair):
    x = data.draw(arrays(pair[0]))
    # shift y off x's grid so maximum/minimum never tie within a finite-difference step
    y = data.draw(arrays(pair[1])) + 0.005
    check_grads(BINARY[name], (x, y))


@covers("divide")
@given(data=st.data(), pair=broadcastable_shapes())
def test_divide_gradient(data, pair):
    x = data.draw(arrays(pair[0]))
    y = data.draw(arrays(pair[1], low=0.5, high=3.0))
    check_grads(ops.divide, (x, y))


@covers("power")
@given(data=st.data(), pair=broadcastable_shapes())
def test_power_gradient_in_base_and_exponent(data, pair):
    x = data.draw(arrays(pair[0], low=0.2, high=2.0))
    y = data.draw(arrays(pair[1], low=-2.0, high=2.0))
    check_grads(ops.power, (x, y))


UNARY = {
    "negative": (ops.negative, -3, 3),
    "exp": (ops.exp, -3, 3),
    "log": (ops.log, 0.1, 5),
    "sqrt": (ops.sqrt, 0.1, 5),
    "abs": (ops.abs, -3, 3),
    "tanh": (ops.tanh, -3, 3),
    "sigmoid": (ops.sigmoid, -6, 6),
    "relu": (ops.relu, -3, 3),
    "softplus": (ops.softplus, -6, 6),
    "leaky_relu": (lambda x: ops.leaky_relu(x, 0.1), -3, 3),
    "clip": (lambda x: ops.clip(x, -1.0, 1.5), -3, 3),
}


@covers(*UNARY)
@pytest.mark.parametrize("name", sorted(UNARY))
@given(data=st.data(), shape=shapes())
def test_unary_op_gradients(name, data, shape):
    fn, low, high = UNARY[name]
    x = data.draw(arrays(shape, low=low, high=high))
    if name == "clip":  # keep away from the clip bounds, where the derivative jumps
        x = np.where(np.abs(x - 1.5) < 1e-3, 1.6, np.where(np.abs(x + 1) < 1e-3, -1.1, x))
    check_grads(fn, (x,))


def test_sigmoid_and_softplus_are_stable_at_extremes():
    x = np.array([-1e4, -50.0, 0.0, 50.0, 1e4])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        s = ops.sigmoid(x)
        sp = ops.softplus(x)
    np.testing.assert_allclose(s, [0.0, 1 / (1 + np.exp(50.0)), 0.5, 1 / (1 + np.exp(-50.0)), 1.0])
    np.testing.assert_allclose(sp, [0.0, np.log1p(np.exp(-50.0)), np.log(2.0), 50.0, 1e4])


def _axes(ndim):
    return st.one_of(st.none(), st.integers(-ndim, ndim - 1)) if ndim else st.none()


@covers("sum", "mean", "max")
@pytest.mark.parametrize("reduce", [ops.sum, ops.mean, ops.max])
@given(data=st.data(), shape=shapes(min_dims=1))
def test_reduction_gradients(reduce, data, shape):
    x = data.draw(arrays(shape, unique=True))
    axis = data.draw(_axes(len(shape)))
    keepdims = data.draw(st.booleans())
    check_grads(lambda x: reduce(x, axis, keepdims), (x,))


def test_max_splits_the_gradient_between_ties():
    from tinyfn import grad

    g = grad(lambda x: ops.max(x))(np.array([1.0, 3.0, 3.0, 2.0]))
    np.testing.assert_array_equal(g, [0.0, 0.5, 0.5, 0.0])


@covers("matmul")
@given(
    data=st.data(),
    case=st.sampled_from([((3, 4), (4, 2)), ((4,), (4, 2)), ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (3, 4, 2))]),
)
def test_matmul_gradient_for_vectors_matrices_and_batches(data, case):
    a = data.draw(arrays(case[0]))
    b = data.draw(arrays(case[1]))
    check_grads(ops.matmul, (a, b))


@covers("reshape", "transpose", "broadcast_to")
@given(data=st.data(), shape=shapes(min_dims=1))
def test_shape_op_gradients(data, shape):
    x = data.draw(arrays(shape))
    check_grads(lambda x: ops.reshape(x, (-1,)), (x,))
    perm = data.draw(st.permutations(range(len(shape))))
    check_grads(lambda x: ops.transpose(x, tuple(perm)), (x,))
    check_grads(lambda x: ops.transpose(x), (x,))
    check_grads(lambda x: ops.broadcast_to(x, (2,) + shape), (x,))


@covers("getitem")
@given(data=st.data(), shape=shapes(min_dims=1, min_side=2))
def test_indexing_gradients(data, shape):
    x = data.draw(arrays(shape))
    check_grads(lambda x: x[1:], (x,))
    check_grads(lambda x: x[..., ::-1], (x,))
    repeated = np.array([0, 1, 0, 0])  # repeated entries must accumulate
    check_grads(lambda x: ops.getitem(x, repeated), (x,))
    check_grads(lambda x: ops.getitem(x, x > 0), (x,))


@covers("concatenate", "stack")
@given(data=st.data(), shape=shapes(min_dims=1, max_dims=2), count=st.integers(1, 3))
def test_concatenate_and_stack_gradients(data, shape, count):
    xs = tuple(data.draw(arrays(shape)) for _ in range(count))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    check_grads(lambda *xs: ops.concatenate(xs, axis=axis), xs)
    check_grads(lambda *xs: ops.stack(xs, axis=0), xs)


@covers("where")
@given(data=st.data(), pair=broadcastable_shapes())
def test_where_gradient(data, pair):
    x = data.draw(arrays(pair[0]))
    y = data.draw(arrays(pair[1]))
    condition = np.broadcast_to(x, np.broadcast_shapes(x.shape, y.shape)) > 0
    check_grads(lambda x, y: ops.where(condition, x, y), (x, y))


@covers("log_softmax", "softmax")
@given(data=st.data(), shape=shapes(min_dims=1))
def test_softmax_family_gradients(data, shape):
    x = data.draw(arrays(shape))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    check_grads(lambda x: ops.log_softmax(x, axis), (x,))
    check_grads(lambda x: ops.softmax(x, axis), (x,))


def test_softmax_is_stable_and_normalised_at_extreme_logits():
    x = np.array([[1e4, 0.0, -1e4], [5.0, 5.0, 5.0]])
    p = ops.softmax(x)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0)
    np.testing.assert_allclose(p[0], [1.0, 0.0, 0.0])
    assert np.all(np.isfinite(ops.log_softmax(x)))


def test_operators_on_traced_values_match_numpy():
    from tinyfn import grad

    x = np.array([0.5, 1.5, 2.0])
    w = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])

    def loss(x):
        y = (2 * x - 1) / (x + 1) ** 2 @ w
        return (-y).sum() + abs(x - 1).mean() + x[0] * x.T[1]

    def numeric(x, i, eps=1e-6):
        def value(x):
            y = (2 * x - 1) / (x + 1) ** 2 @ w
            return (-y).sum() + np.abs(x - 1).mean() + x[0] * x[1]

        e = np.zeros_like(x)
        e[i] = eps
        return (value(x + e) - value(x - e)) / (2 * eps)

    g = grad(loss)(x)
    np.testing.assert_allclose(g, [numeric(x, i) for i in range(3)], rtol=1e-6)
    from tinyfn.autodiff import Node

    node = Node(x)
    assert (node > 1).dtype == bool and list(node > 1) == [False, True, True]
