"""Layers and combinators: shapes, parameter names, gradients (float64 finite differences),
dropout semantics, shape errors, the summary table."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tinyfn import layers as L
from tinyfn import random, tree, vjp
from tinyfn.testing import arrays, check_grads, shapes

from gradient_registry import covers


def _init64(layer, input_shape, seed=0):
    out_shape, params = layer.init(random.key(seed), input_shape)
    return out_shape, tree.map(lambda p: p.astype(np.float64), params)


@covers("dense", order=2)
@given(data=st.data(), batch=st.integers(1, 4), n_in=st.integers(1, 5), n_out=st.integers(1, 4))
def test_dense_gradient_for_inputs_and_params(data, batch, n_in, n_out):
    layer = L.Dense(n_out)
    _, params = _init64(layer, (-1, n_in))
    params["b"] = data.draw(arrays((n_out,)))
    x = data.draw(arrays((batch, n_in)))
    check_grads(lambda p, x: layer.apply(p, x), (params, x), order=2)


@covers("dense", order=2)
@given(data=st.data(), batch=st.integers(1, 4), n_in=st.integers(1, 5), n_out=st.integers(1, 4))
def test_dense_with_fused_relu_gradient_for_inputs_and_params(data, batch, n_in, n_out):
    layer = L.Dense(n_out, activation="relu")
    _, params = _init64(layer, (-1, n_in))
    params["b"] = data.draw(arrays((n_out,)))
    x = data.draw(arrays((batch, n_in)))
    pre_activation = x @ params["w"] + params["b"]
    assume(np.abs(pre_activation).min() > 1e-3)  # finite differences need to stay off the kink at 0
    check_grads(lambda p, x: layer.apply(p, x), (params, x), order=2)


@given(data=st.data(), batch=st.integers(1, 4), n_in=st.integers(1, 5), n_out=st.integers(1, 4))
def test_dense_with_relu_equals_dense_then_relu_forward_and_backward(data, batch, n_in, n_out):
    fused, separate = L.Dense(n_out, activation="relu"), L.serial(L.Dense(n_out), L.Relu())
    _, params = _init64(fused, (-1, n_in))
    params["b"] = data.draw(arrays((n_out,)))
    x = data.draw(arrays((batch, n_in)))
    cotangent = data.draw(arrays((batch, n_out)))
    y_fused, vjp_fused = vjp(lambda p, x: fused.apply(p, x), params, x)
    y_separate, vjp_separate = vjp(lambda p, x: separate.apply({"dense_0": p}, x), params, x)
    np.testing.assert_array_equal(y_fused, y_separate)
    assert np.all(y_fused >= 0)
    for a, b in zip(tree.leaves(vjp_fused(cotangent)), tree.leaves(vjp_separate(cotangent))):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_dense_refuses_an_unknown_activation():
    with pytest.raises(ValueError, match=r"activation must be one of \(None, 'relu'\), found 'gelu'"):
        L.Dense(3, activation="gelu")


def test_dense_shapes_names_and_read_only_params():
    out_shape, params = L.Dense(7).init(random.key(0), (-1, 3))
    assert out_shape == (-1, 7)
    assert params["w"].shape == (3, 7) and params["b"].shape == (7,)
    assert params["w"].dtype == np.float32 and not params["w"].flags.writeable
    limit = np.sqrt(6 / (3 + 7))  # Glorot uniform
    assert np.abs(params["w"]).max() <= limit and np.all(params["b"] == 0)


@pytest.mark.parametrize("activation", [L.Relu(), L.LeakyRelu(0.2), L.Sigmoid(), L.Tanh(), L.Softplus(), L.Softmax(), L.LogSoftmax()])
@given(data=st.data())
def test_activation_layers_have_correct_gradients(activation, data):
    x = data.draw(arrays((3, 4)))
    out_shape, params = activation.init(random.key(0), (-1, 4))
    assert out_shape == (-1, 4) and params == {}
    check_grads(lambda x: activation.apply(params, x), (x,))


@given(data=st.data())
def test_a_composed_model_with_branches_has_correct_gradients(data):
    model = L.serial(
        L.Dense(4),
        L.Tanh(),
        L.residual(L.serial(L.Dense(4), L.Sigmoid())),
        L.fan_out(2),
        L.parallel(L.Dense(3), L.serial(L.Dense(2), L.Relu())),
        L.fan_in_concat(axis=-1),
        L.Flatten(),
    )
    out_shape, params = _init64(model, (-1, 3))
    assert out_shape == (-1, 5)
    x = data.draw(arrays((2, 3)))
    check_grads(lambda p, x: model.apply(p, x), (params, x))


def test_serial_names_child_params_by_layer_and_position():
    model = L.serial(L.Dense(4), L.Relu(), L.residual(L.Dense(4)), L.Dense(2))
    _, params = model.init(random.key(0), (-1, 4))
    assert [path for path, _ in tree.leaves_with_path(params)] == [
        "dense_0/b", "dense_0/w", "dense_3/b", "dense_3/w", "residual_2/dense_0/b", "residual_2/dense_0/w",
    ]


def test_fan_in_sum_adds_branches():
    model = L.serial(L.fan_out(3), L.fan_in_sum())
    x = np.arange(4.0).reshape(2, 2)
    _, params = model.init(random.key(0), (-1, 2))
    np.testing.assert_array_equal(model.apply(params, x), 3 * x)


def test_shape_errors_at_init_name_the_layer_and_shapes():
    with pytest.raises(ValueError, match=r"residual: the branch \(dense\) must keep its input shape \(N, 4\), found output shape \(N, 3\)"):
        L.residual(L.Dense(3)).init(random.key(0), (-1, 4))
    with pytest.raises(ValueError, match=r"serial: layer 2 \(fan_in_sum\).*same shape.*\(N, 3\).*\(N, 2\)"):
        L.serial(L.fan_out(2), L.parallel(L.Dense(3), L.Dense(2)), L.fan_in_sum()).init(random.key(0), (-1, 4))
    with pytest.raises(ValueError, match=r"expected input with 4 features.*found shape \(2, 5\)"):
        _, p = L.Dense(3).init(random.key(0), (-1, 4))
        L.Dense(3).apply(p, np.ones((2, 5), np.float32))


def test_dropout_drops_at_the_documented_rate_and_rescales():
    layer = L.Dropout(0.25)
    x = np.ones((200, 100), np.float32)
    y = layer.apply({}, x, key=random.key(1), train=True)
    dropped = np.mean(y == 0)
    assert abs(dropped - 0.25) < 0.02
    np.testing.assert_allclose(y[y != 0], 1 / 0.75)
    np.testing.assert_array_equal(layer.apply({}, x, train=False), x)
    np.testing.assert_array_equal(y, layer.apply({}, x, key=random.key(1), train=True))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        layer.apply({}, x, train=True)


def test_serial_gives_each_child_its_own_key():
    model = L.serial(L.Dropout(0.5), L.Dropout(0.5))
    x = np.ones((1, 1000), np.float32)
    y = model.apply({}, x, key=random.key(0), train=True)
    # two independent masks keep a quarter of the units (scaled by 4); equal keys would keep half
    assert abs(np.mean(y > 0) - 0.25) < 0.05


def test_summary_lists_layers_shapes_and_counts():
    text = L.summary(L.serial(L.Dense(8), L.Relu(), L.Dense(3)), (-1, 4))
    lines = text.splitlines()
    assert "dense_0" in lines[2] and "(N, 8)" in lines[2] and lines[2].rstrip().endswith("40")
    assert "relu_1" in lines[3] and lines[3].rstrip().endswith("0")
    assert lines[-1].split()[-1] == "67"


def _mlp_params():
    model = L.serial(L.Dense(8, activation="relu"), L.Dense(3))
    _, params = model.init(random.key(0), (-1, 4))
    return model, params


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: {"dense_0": p["dense_0"]}, r"params/dense_1/w: missing: Dense\(3\) expected a parameter of shape \(\?, 3\)"),
        (lambda p: {**p, "dense_9": {}}, r"params/dense_9: serial has no child 'dense_9'"),
        (lambda p: {**p, "dense_0": {**p["dense_0"], "w": p["dense_0"]["w"].T}}, r"params/dense_0/w: Dense\(8\) expected shape \(\?, 8\), found \(8, 4\)"),
        (lambda p: {**p, "dense_0": {**p["dense_0"], "scale": np.ones(8)}}, r"params/dense_0/scale: Dense\(8\) has no parameter 'scale'"),
        (lambda p: [p["dense_0"], p["dense_1"]], r"serial expected a dict of its children's parameters, found list"),
    ],
)
def test_params_that_do_not_fit_the_model_name_the_path_and_shapes(change, message):
    model, params = _mlp_params()
    with pytest.raises(L.ParamError, match=message):
        model.apply(change(params), np.ones((2, 4), np.float32))


def test_parameter_free_layers_refuse_parameters():
    with pytest.raises(L.ParamError, match=r"params/relu_1/w: relu has no parameter 'w'"):
        L.serial(L.Dense(8), L.Relu()).apply({"dense_0": _mlp_params()[1]["dense_0"], "relu_1": {"w": np.ones(2)}}, np.ones((1, 4)))


@pytest.mark.parametrize(
    "x, error, message",
    [
        ([[1.0, 2.0, 3.0, 4.0]], TypeError, r"Dense\(8\): expected an array input, found list"),
        (np.float32(1.0), ValueError, r"Dense\(8\): expected an input with at least 1 axes, found shape \(\)"),
        (np.ones((2, 5)), ValueError, r"Dense\(8\): expected input with 4 features \(last axis\), found shape \(2, 5\)"),
    ],
)
def test_dense_names_a_bad_input(x, error, message):
    model, params = _mlp_params()
    with pytest.raises(error, match=message):
        model.apply(params, x)


def test_dense_output_dtype_is_numpy_promotion_of_input_and_params():
    model, params = _mlp_params()
    assert model.apply(params, np.ones((2, 4), np.float32)).dtype == np.float32
    assert model.apply(params, np.ones((2, 4), np.float64)).dtype == np.float64


@given(arrays(shapes(min_dims=1, max_dims=2), low=-4, high=4))
def test_gelu_matches_the_normal_cdf_formula_and_its_derivatives(x):
    from math import erf, exp, pi, sqrt, tanh

    exact, approx = L.GELU(), L.GELU(approximate=True)
    phi = np.vectorize(lambda v: 0.5 * (1 + erf(v / sqrt(2))))
    np.testing.assert_allclose(exact.apply({}, x), x * phi(x), rtol=1e-12, atol=1e-15)
    tanh_form = np.vectorize(lambda v: 0.5 * v * (1 + tanh(sqrt(2 / pi) * (v + 0.044715 * v**3))))
    np.testing.assert_allclose(approx.apply({}, x), tanh_form(x), rtol=1e-12, atol=1e-15)
    # d/dx x Phi(x) = Phi(x) + x phi(x), with phi the normal density
    density = np.vectorize(lambda v: exp(-v * v / 2) / sqrt(2 * pi))
    np.testing.assert_allclose(vjp(lambda x: exact.apply({}, x), x)[1](np.ones_like(x))[0], phi(x) + x * density(x), rtol=1e-10, atol=1e-12)
    check_grads(lambda x: exact.apply({}, x), (x,), order=2)
    check_grads(lambda x: approx.apply({}, x), (x,), order=2)
    for layer in (exact, approx):  # the constants must not promote float32 to float64
        assert layer.apply({}, x.astype(np.float32)).dtype == np.float32
