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


@covers(*BINARY, order=2)
@pytest.mark.parametrize("name", sorted(BINARY))
@given(data=st.data(), pair=broadcastable_shapes())
def test_binary_ops_broadcast_gradients(name, data, pair):
    x = data.draw(arrays(pair[0]))
    # shift y off x's grid so maximum/minimum never tie within a finite-difference step
    y = data.draw(arrays(pair[1])) + 0.005
    check_grads(BINARY[name], (x, y), order=2)


@covers("divide", order=2)
@given(data=st.data(), pair=broadcastable_shapes())
def test_divide_gradient(data, pair):
    x = data.draw(arrays(pair[0]))
    y = data.draw(arrays(pair[1], low=0.5, high=3.0))
    check_grads(ops.divide, (x, y), order=2)


@covers("power", order=2)
@given(data=st.data(), pair=broadcastable_shapes())
def test_power_gradient_in_base_and_exponent(data, pair):
    x = data.draw(arrays(pair[0], low=0.2, high=2.0))
    y = data.draw(arrays(pair[1], low=-2.0, high=2.0))
    check_grads(ops.power, (x, y), order=2)


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
    "erf": (ops.erf, -3, 3),
    "leaky_relu": (lambda x: ops.leaky_relu(x, 0.1), -3, 3),
    "clip": (lambda x: ops.clip(x, -1.0, 1.5), -3, 3),
}


@covers(*UNARY, order=2)
@pytest.mark.parametrize("name", sorted(UNARY))
@given(data=st.data(), shape=shapes())
def test_unary_op_gradients(name, data, shape):
    fn, low, high = UNARY[name]
    x = data.draw(arrays(shape, low=low, high=high))
    if name == "clip":  # keep away from the clip bounds, where the derivative jumps
        x = np.where(np.abs(x - 1.5) < 1e-3, 1.6, np.where(np.abs(x + 1) < 1e-3, -1.1, x))
    check_grads(fn, (x,), order=2)


def test_sigmoid_and_softplus_are_stable_at_extremes():
    x = np.array([-1e4, -50.0, 0.0, 50.0, 1e4])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        s = ops.sigmoid(x)
        sp = ops.softplus(x)
    np.testing.assert_allclose(s, [0.0, 1 / (1 + np.exp(50.0)), 0.5, 1 / (1 + np.exp(-50.0)), 1.0])
    np.testing.assert_allclose(sp, [0.0, np.log1p(np.exp(-50.0)), np.log(2.0), 50.0, 1e4])


def _axes(ndim):
    return st.one_of(st.none(), st.integers(-ndim, ndim - 1)) if ndim else st.none()


@covers("sum", "mean", "max", order=2)
@pytest.mark.parametrize("reduce", [ops.sum, ops.mean, ops.max])
@given(data=st.data(), shape=shapes(min_dims=1))
def test_reduction_gradients(reduce, data, shape):
    x = data.draw(arrays(shape, unique=True))
    axis = data.draw(_axes(len(shape)))
    keepdims = data.draw(st.booleans())
    check_grads(lambda x: reduce(x, axis, keepdims), (x,), order=2)


def test_max_splits_the_gradient_between_ties():
    from tinyfn import grad

    g = grad(lambda x: ops.max(x))(np.array([1.0, 3.0, 3.0, 2.0]))
    np.testing.assert_array_equal(g, [0.0, 0.5, 0.5, 0.0])


@covers("matmul", order=2)
@given(
    data=st.data(),
    case=st.sampled_from([((3, 4), (4, 2)), ((4,), (4, 2)), ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (3, 4, 2))]),
)
def test_matmul_gradient_for_vectors_matrices_and_batches(data, case):
    a = data.draw(arrays(case[0]))
    b = data.draw(arrays(case[1]))
    check_grads(ops.matmul, (a, b), order=2)


@covers("reshape", "transpose", "broadcast_to", order=2)
@given(data=st.data(), shape=shapes(min_dims=1))
def test_shape_op_gradients(data, shape):
    x = data.draw(arrays(shape))
    check_grads(lambda x: ops.reshape(x, (-1,)), (x,), order=2)
    perm = data.draw(st.permutations(range(len(shape))))
    check_grads(lambda x: ops.transpose(x, tuple(perm)), (x,), order=2)
    check_grads(lambda x: ops.transpose(x), (x,), order=2)
    check_grads(lambda x: ops.broadcast_to(x, (2,) + shape), (x,), order=2)


@covers("getitem", order=2)
@given(data=st.data(), shape=shapes(min_dims=1, min_side=2))
def test_indexing_gradients(data, shape):
    x = data.draw(arrays(shape))
    check_grads(lambda x: x[1:], (x,), order=2)
    check_grads(lambda x: x[..., ::-1], (x,), order=2)
    repeated = np.array([0, 1, 0, 0])  # repeated entries must accumulate
    check_grads(lambda x: ops.getitem(x, repeated), (x,), order=2)
    check_grads(lambda x: ops.getitem(x, x > 0), (x,), order=2)


@covers("concatenate", "stack", order=2)
@given(data=st.data(), shape=shapes(min_dims=1, max_dims=2), count=st.integers(1, 3))
def test_concatenate_and_stack_gradients(data, shape, count):
    xs = tuple(data.draw(arrays(shape)) for _ in range(count))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    check_grads(lambda *xs: ops.concatenate(xs, axis=axis), xs, order=2)
    check_grads(lambda *xs: ops.stack(xs, axis=0), xs, order=2)


@covers("where", order=2)
@given(data=st.data(), pair=broadcastable_shapes())
def test_where_gradient(data, pair):
    x = data.draw(arrays(pair[0]))
    y = data.draw(arrays(pair[1]))
    condition = np.broadcast_to(x, np.broadcast_shapes(x.shape, y.shape)) > 0
    check_grads(lambda x, y: ops.where(condition, x, y), (x, y), order=2)


@covers("log_softmax", "softmax", order=2)
@given(data=st.data(), shape=shapes(min_dims=1))
def test_softmax_family_gradients(data, shape):
    x = data.draw(arrays(shape))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    check_grads(lambda x: ops.log_softmax(x, axis), (x,), order=2)
    check_grads(lambda x: ops.softmax(x, axis), (x,), order=2)


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


@covers("scatter_add", order=2)
@given(data=st.data(), shape=shapes(min_dims=1, min_side=2))
def test_scatter_add_gradients(data, shape):
    g = data.draw(arrays((4,) + shape[1:]))
    index = np.array([0, 1, 0, 0])  # repeated entries must accumulate
    check_grads(lambda g: ops._scatter_add(g, shape=shape, index=index), (g,), order=2)


@covers("relu_backward", order=2)
@given(data=st.data(), shape=shapes())
def test_relu_backward_gradients(data, shape):
    g, y = data.draw(arrays(shape)), data.draw(arrays(shape))
    check_grads(lambda g: ops.relu_backward(g, y), (g,), order=2)
    np.testing.assert_array_equal(ops.relu_backward(g, y), np.where(y > 0, g, 0.0))


def test_power_with_exponent_zero_has_gradient_zero_at_zero():
    from tinyfn import grad

    assert grad(lambda x: x**0)(0.0) == 0.0
    # one term's nan used to poison the whole polynomial's gradient: d/dx (1 + 2x + 3x^2) = 2 + 6x
    polynomial = lambda x: sum(c * x**k for k, c in enumerate([1.0, 2.0, 3.0]))  # noqa: E731
    assert grad(polynomial)(0.0) == 2.0
    assert grad(grad(polynomial))(0.0) == 6.0
    assert grad(grad(grad(lambda x: x**3)))(0.0) == 6.0


@pytest.mark.parametrize(
    "f, x, expected",
    [
        (lambda x: x**2, 0.0, 0.0),  # y * x**(y - 1) at x = 0, y = 2
        (lambda x: x**1, 0.0, 1.0),
        (lambda x: ops.power(2.0, x), 0.0, np.log(2.0)),
        (lambda x: ops.power(x, x), 1.0, 1.0),  # d/dx x^x = x^x (log x + 1)
        (lambda x: ops.sqrt(x * x + 1.0), 0.0, 0.0),
        (lambda x: ops.log(ops.exp(x)), 0.0, 1.0),
        (lambda x: 1.0 / (x + 2.0), 0.0, -0.25),
    ],
)
def test_power_division_and_log_edges_have_finite_exact_gradients(f, x, expected):
    from tinyfn import grad

    g = grad(f)(x)
    assert np.isfinite(g) and g == pytest.approx(expected, abs=1e-15)


@given(arrays(shapes(max_dims=2, max_side=6), low=-6, high=6))
def test_erf_kernel_matches_math_erf_in_both_dtypes(x):
    from tinyfn.kernels.special import erf_reference

    np.testing.assert_array_equal(ops.erf(x), erf_reference(x))
    np.testing.assert_allclose(ops.erf(x.astype(np.float32)), erf_reference(x.astype(np.float32)), rtol=1e-6, atol=1e-7)
    assert ops.erf(x.astype(np.float32)).dtype == np.float32
