"""The convolution, pooling and batch-norm primitives and their layers: gradient checks to the second
order, semantics, errors for bad arguments and for params that do not fit, empty batches,
BatchNorm under a static graph, PyTorch references and the CNN examples."""

import gzip
import importlib.util
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from gradient_registry import covers
from hypothesis import assume, given
from hypothesis import strategies as st
from test_kernels import conv_configs, pool_configs

import tinyfn
from tinyfn import conv, initializers, kernels, layers, losses, random
from tinyfn.optim import sgd_step
from tinyfn.testing import check_grads


def normal(seed, shape, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def distinct(seed, shape):
    """Values at least 0.01 apart, so a max never changes winner within a finite-difference step."""
    return np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape) * 0.01


# ----------------------------------------------------------------------------- gradient checks
# check_grads(..., order=2) checks the VJP against finite differences of the function, then the
# derivatives of the VJP against finite differences of the VJP: every rule must be differentiable.


@covers("conv2d", order=2)
@given(conv_configs(), st.booleans(), st.sampled_from([None, "relu"]))
def test_conv2d_gradients(cfg, with_bias, activation):
    x, w = normal(0, cfg["x_shape"]), normal(1, cfg["w_shape"])
    b = normal(2, cfg["w_shape"][:1]) if with_bias else None
    settings = cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"], activation
    check_grads(lambda x, w, b: conv.conv2d(x, w, b, *settings), (x, w, b), order=2)


def test_conv2d_relu_activation_is_relu_of_conv2d():
    x, w, b = normal(0, (2, 3, 6, 6), np.float32), normal(1, (4, 3, 3, 3), np.float32), normal(2, (4,), np.float32)
    np.testing.assert_allclose(conv.conv2d(x, w, b, activation="relu"), np.maximum(conv.conv2d(x, w, b), 0), rtol=1e-6)
    np.testing.assert_allclose(conv.conv2d(x, w, activation="relu"), np.maximum(conv.conv2d(x, w), 0), rtol=1e-6)


@covers("conv_transpose2d", order=2)
@given(conv_configs(), st.integers(0, 2))
def test_conv_transpose2d_gradients(cfg, extra):
    stride, padding, dilation, groups = cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"]
    # the transposed op maps the convolution's output back to (about) the size of its input
    x = normal(0, conv.conv2d_output_shape(cfg["x_shape"], cfg["w_shape"], stride, padding, dilation, groups))
    output_padding = tuple(extra % max(s, d) for s, d in zip(stride, dilation))  # >= stride when the dilation allows
    sizes = [kernels.transposed_output_size(x.shape[2 + a], cfg["w_shape"][2 + a], stride[a], padding[a], dilation[a], output_padding[a]) for a in range(2)]
    assume(min(sizes) >= 1)
    weight, b = normal(1, cfg["w_shape"]), normal(2, cfg["x_shape"][1:2])
    check_grads(lambda x, weight, b: conv.conv_transpose2d(x, weight, b, stride, padding, output_padding, dilation, groups), (x, weight, b), order=2)


@covers("max_pool2d", order=2)
@given(pool_configs())
def test_max_pool2d_gradients(cfg):
    check_grads(lambda x: conv.max_pool2d(x, cfg["window"], cfg["stride"], cfg["padding"]), (distinct(0, cfg["x_shape"]),), order=2)


@covers("avg_pool2d", order=2)
@given(pool_configs())
def test_avg_pool2d_gradients(cfg):
    check_grads(lambda x: conv.avg_pool2d(x, cfg["window"], cfg["stride"], cfg["padding"]), (normal(0, cfg["x_shape"]),), order=2)


@covers("global_avg_pool2d", order=2)
@given(st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)))
def test_global_avg_pool2d_gradients(shape):
    check_grads(conv.global_avg_pool2d, (normal(0, shape),), order=2)


@covers("batch_norm", order=2)
@given(st.sampled_from([(5, 3), (4, 2, 3, 3), (3, 4, 2)]), st.sampled_from([1, -1]), st.integers(0, 2**16))
def test_batch_norm_gradients(shape, axis, seed):
    c = shape[axis]
    args = normal(seed, shape), normal(seed + 1, (c,)), normal(seed + 2, (c,))
    check_grads(lambda x, g, b: conv.batch_norm(x, g, b, axis), args, order=2)


def test_vjps_keep_the_dtype_of_float32_inputs():
    x, w, b = normal(0, (2, 3, 5, 5), np.float32), normal(1, (4, 3, 3, 3), np.float32), normal(2, (4,), np.float32)

    def loss(x, w, b):
        y = conv.conv2d(x, w, b, padding="same")
        y = conv.max_pool2d(y, 2) + conv.avg_pool2d(y, 2)
        return tinyfn.ops.sum(conv.batch_norm(y, b, b) * 2.0)

    grads = tinyfn.grad(loss, argnums=(0, 1, 2))(x, w, b)
    assert [g.dtype for g in grads] == [np.float32] * 3


# ----------------------------------------------------------------------------- conv2d semantics


def test_conv2d_is_cross_correlation():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    w = np.zeros((1, 1, 2, 2))
    w[0, 0, 0, 1] = 1.0  # picks the pixel to the right of each window's corner
    np.testing.assert_array_equal(conv.conv2d(x, w)[0, 0], [[1, 2], [4, 5]])


def test_conv_transpose2d_is_the_adjoint_of_conv2d():
    """<conv2d(x, w), y> == <x, conv_transpose2d(y, w)> with the same weight and settings."""
    x, w = normal(0, (2, 4, 9, 8)), normal(1, (6, 2, 3, 2))
    settings = dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)
    y = normal(2, conv.conv2d(x, w, **settings).shape)
    back = conv.conv_transpose2d(y, w, **settings)
    assert back.shape == x.shape
    np.testing.assert_allclose(np.vdot(conv.conv2d(x, w, **settings), y), np.vdot(x, back))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: conv.conv2d(normal(0, (1, 3, 5, 5)), normal(1, (2, 2, 3, 3))), r"expected NCHW input \(N, 2, H, W\), found shape \(1, 3, 5, 5\)"),
        (lambda: conv.conv2d(normal(0, (1, 4, 5, 5)), normal(1, (3, 2, 3, 3)), groups=2), "groups=2 must divide the 3 output channels"),
        (lambda: conv.conv2d(normal(0, (1, 1, 2, 2)), normal(1, (1, 1, 3, 3))), r"smaller than the \(dilated\) kernel \(3, 3\)"),
        (lambda: conv.conv2d(normal(0, (1, 1, 5, 5)), normal(1, (1, 1, 2, 2)), padding="same"), "odd"),
        (lambda: conv.conv2d(normal(0, (1, 1, 5, 5)), normal(1, (1, 1, 3, 3)), padding="full"), "'same' or 'valid'"),
        (lambda: conv.conv2d(normal(0, (1, 1, 5, 5)), normal(1, (2, 1, 3, 3)), normal(2, (3,))), r"bias of shape \(2,\), found \(3,\)"),
        (lambda: conv.conv2d(normal(0, (1, 1, 5, 5)), normal(1, (2, 1, 3, 3)), stride=0), "stride must be an int >= 1"),
        (lambda: conv.max_pool2d(normal(0, (1, 1, 5, 5)), 2, padding=2), r"padding \(2, 2\) must be at most half the window \(2, 2\)"),
        (lambda: conv.avg_pool2d(normal(0, (1, 5, 5)), 2), r"expected NCHW input \(N, C, H, W\), found shape \(1, 5, 5\)"),
        (lambda: conv.conv_transpose2d(normal(0, (1, 2, 3, 3)), normal(1, (2, 1, 3, 3)), stride=2, output_padding=2), "output_padding"),
        (lambda: conv.batch_norm(normal(0, (4, 3)), np.ones(2), np.zeros(3)), r"gamma of shape \(3,\)"),
        (lambda: conv.conv2d(normal(0, (1, 1, 5, 5)), normal(1, (1, 1, 3, 3)), activation="tanh"), "activation must be None or 'relu'"),
    ],
)
def test_bad_arguments_name_expected_and_found(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- layers


def test_conv2d_layer_shapes_and_default_init():
    init, apply = conv.Conv2D(64, (3, 5), stride=(1, 2), padding="same")
    out_shape, params = init(random.key(0), (-1, 32, 16, 16))
    assert out_shape == (-1, 64, 16, 8)
    assert params["w"].shape == (64, 32, 3, 5) and params["b"].shape == (64,)
    assert not params["w"].flags.writeable
    # He-normal: std sqrt(2 / fan_in), fan_in = 32 * 3 * 5
    assert params["w"].std() == pytest.approx(np.sqrt(2 / 480), rel=0.05)
    assert apply(params, normal(0, (2, 32, 16, 16), np.float32)).shape == (2, 64, 16, 8)


def test_conv2d_layer_options():
    init, apply = conv.Conv2D(6, 3, padding="valid", dilation=2, groups=3, use_bias=False, w_init=initializers.ones)
    out_shape, params = init(random.key(0), (-1, 3, 9, 9))
    assert out_shape == (-1, 6, 5, 5) and set(params) == {"w"} and params["w"].shape == (6, 1, 3, 3)
    x = normal(0, (1, 3, 9, 9), np.float32)
    np.testing.assert_allclose(apply(params, x)[0, 0, 0, 0], x[0, 0, 0:5:2, 0:5:2].sum(), rtol=1e-5)


@pytest.mark.parametrize(
    "layer, input_shape, message",
    [
        (conv.Conv2D(8, 5), (-1, 1, 3, 3), r"Conv2D\(8, kernel_size=\(5, 5\)\).*input \(N, 1, 3, 3\) padded by \(0, 0\) is smaller"),
        (conv.Conv2D(8, 3, groups=2), (-1, 3, 9, 9), r"groups=2 must divide the 3 input channels of \(N, 3, 9, 9\)"),
        (conv.Conv2D(8, 3), (-1, 64), r"expected NCHW input \(N, C, H, W\), found shape \(N, 64\)"),
        (conv.ConvTranspose2D(3, 2, groups=2), (-1, 4, 5, 5), "groups=2 must divide out_channels"),
        (conv.MaxPool2D(4), (-1, 2, 3, 3), "smaller than the window"),
        (conv.BatchNorm(axis=3), (-1, 4), "axis=3"),
    ],
)
def test_impossible_layer_configurations_fail_at_init(layer, input_shape, message):
    with pytest.raises(ValueError, match=message):
        layer.init(random.key(0), input_shape)


def test_conv2d_layer_rejects_wrong_input_at_apply():
    init, apply = conv.Conv2D(4, 3)
    _, params = init(random.key(0), (-1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expected NCHW input \(N, 3, H, W\), found shape \(2, 1, 8, 8\)"):
        apply(params, np.zeros((2, 1, 8, 8), np.float32))


@pytest.mark.parametrize("kernel, stride, padding, output_padding", [(2, 2, 0, 0), (4, 2, 1, 0), (3, 2, 1, 1)])
def test_conv_transpose2d_layer_upsamples(kernel, stride, padding, output_padding):
    init, apply = conv.ConvTranspose2D(5, kernel, stride, padding, output_padding)
    out_shape, params = init(random.key(0), (-1, 3, 7, 7))
    assert out_shape == (-1, 5, 14, 14)
    assert params["w"].shape == (3, 5, kernel, kernel)
    assert apply(params, normal(0, (2, 3, 7, 7), np.float32)).shape == (2, 5, 14, 14)


def test_pooling_layers():
    x = normal(0, (2, 3, 7, 7), np.float32)
    for layer, expected_shape in [
        (conv.MaxPool2D(2), (-1, 3, 3, 3)),
        (conv.MaxPool2D(3, stride=2, padding=1), (-1, 3, 4, 4)),
        (conv.AvgPool2D((2, 3), stride=1), (-1, 3, 6, 5)),
        (conv.GlobalAvgPool2D(), (-1, 3)),
    ]:
        out_shape, params = layer.init(random.key(0), (-1, 3, 7, 7))
        assert out_shape == expected_shape and params == {}
        assert layer.apply(params, x).shape == (2,) + expected_shape[1:]
    np.testing.assert_allclose(conv.GlobalAvgPool2D().apply({}, x), x.mean(axis=(2, 3)), rtol=1e-6)


@pytest.mark.parametrize("shape", [(32, 3), (16, 3, 4, 4)])
def test_batch_norm_layer_train_and_eval(shape):
    layer = conv.BatchNorm(momentum=0.8)
    assert layer.stateful
    out_shape, params, state = layer.init(random.key(0), (-1,) + shape[1:])
    assert out_shape == (-1,) + shape[1:]
    assert set(params) == {"gamma", "beta"} and set(state) == {"mean", "var"}
    axes = tuple(a for a in range(len(shape)) if a != 1)
    x = normal(0, shape, np.float32) * 3 + 2

    y, new_state = layer.apply(params, x, state=state, train=True)
    np.testing.assert_allclose(y.mean(axis=axes), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=axes), 1, rtol=1e-3)
    np.testing.assert_allclose(new_state["mean"], 0.2 * x.mean(axis=axes), rtol=1e-5)
    np.testing.assert_allclose(new_state["var"], 0.8 + 0.2 * x.var(axis=axes), rtol=1e-5)
    assert new_state["mean"].dtype == np.float32 and not new_state["mean"].flags.writeable

    y_eval, same_state = layer.apply(params, x, state=new_state, train=False)
    assert same_state is new_state
    expected = (x - new_state["mean"].reshape(-1, *[1] * (len(shape) - 2))) / np.sqrt(
        new_state["var"].reshape(-1, *[1] * (len(shape) - 2)) + 1e-5
    )
    np.testing.assert_allclose(y_eval, expected, rtol=1e-5, atol=1e-5)


def test_batch_norm_in_a_serial_model_trains_its_params_and_state():
    model = layers.serial(conv.Conv2D(4, 3, padding=1), conv.BatchNorm(), layers.Relu(), conv.GlobalAvgPool2D(), layers.Dense(3))
    assert model.stateful
    _, params, state = model.init(random.key(0), (-1, 2, 6, 6))
    x, y = normal(0, (8, 2, 6, 6)), np.arange(8) % 3

    def loss(params, x):
        out, _ = model.apply(params, x, state=state, train=True)
        return losses.softmax_cross_entropy(out, y)

    params64 = tinyfn.tree.map(lambda p: p.astype(np.float64), params)
    check_grads(lambda p: loss(p, x), (params64,))
    _, new_state = model.apply(params, x.astype(np.float32), state=state, train=True)
    assert not np.allclose(new_state["batch_norm_1"]["mean"], state["batch_norm_1"]["mean"])


def test_a_small_cnn_learns():
    model = layers.serial(
        conv.Conv2D(4, 3, padding=1), layers.Relu(), conv.MaxPool2D(2), layers.Flatten(), layers.Dense(2)
    )
    _, params = model.init(random.key(1), (-1, 1, 6, 6))
    # class 1 images are bright in the left half, class 0 in the right half
    labels = np.arange(32) % 2
    x = normal(0, (32, 1, 6, 6), np.float32) * 0.1
    x[labels == 1, :, :, :3] += 1
    x[labels == 0, :, :, 3:] += 1
    loss_and_grad = tinyfn.value_and_grad(lambda p: losses.softmax_cross_entropy(model.apply(p, x), labels))
    first, _ = loss_and_grad(params)
    for _ in range(30):
        loss, grads = loss_and_grad(params)
        params = sgd_step(params, grads, 0.1)
    assert loss < 0.3 * first
    assert losses.accuracy(model.apply(params, x), labels) == 1.0


# ----------------------------------------------------------------------------- params that do not fit, empty batches


@pytest.mark.parametrize(
    "layer, input_shape, change, path, message",
    [
        (conv.Conv2D(4, 3), (2, 2, 5, 5), lambda p: {"b": p["b"]}, "w", r"missing: Conv2D\(4, kernel_size=\(3, 3\)\) expected a parameter of shape \(4, \?, 3, 3\)"),
        (conv.Conv2D(4, 3), (2, 2, 5, 5), lambda p: {**p, "w": p["w"].transpose(2, 3, 1, 0)}, "w", r"expected shape \(4, \?, 3, 3\), found \(3, 3, 2, 4\)"),
        (conv.Conv2D(4, 3), (2, 2, 5, 5), lambda p: {**p, "scale": p["b"]}, "scale", "has no parameter 'scale'"),
        (conv.Conv2D(4, 3, use_bias=False), (2, 2, 5, 5), lambda p: {**p, "b": np.zeros(4)}, "b", "has no parameter 'b'"),
        (conv.ConvTranspose2D(5, 2, stride=2), (2, 3, 4, 4), lambda p: {**p, "w": p["w"].transpose(1, 0, 2, 3)}, "w", r"expected shape \(\?, 5, 2, 2\), found \(5, 3, 2, 2\)"),
        (conv.ConvTranspose2D(5, 2, stride=2), (2, 3, 4, 4), lambda p: {**p, "b": np.zeros(4)}, "b", r"expected shape \(5,\), found \(4,\)"),
        (conv.MaxPool2D(2), (2, 3, 4, 4), lambda p: {"w": np.zeros(3)}, "w", "has no parameter 'w'"),
        (conv.GlobalAvgPool2D(), (2, 3, 4, 4), lambda p: {"b": np.zeros(3)}, "b", "has no parameter 'b'"),
        (layers.serial(conv.Conv2D(4, 3), conv.AvgPool2D(2)), (2, 2, 6, 6), lambda p: {}, "conv2d_0/w", "missing"),
    ],
)
def test_params_that_do_not_fit_raise_param_errors_with_path_and_shapes(layer, input_shape, change, path, message):
    _, params = layer.init(random.key(0), (-1,) + input_shape[1:])
    with pytest.raises(layers.ParamError, match=message) as error:
        layer.apply(change(params), np.zeros(input_shape, np.float32))
    assert error.value.path == path


@pytest.mark.parametrize(
    "change_params, change_state, path, message",
    [
        (lambda p: {"gamma": p["gamma"]}, lambda s: s, "batch_norm_1/beta", r"^params/batch_norm_1/beta: missing: .* expected a parameter of shape \(3,\)"),
        (lambda p: {**p, "gamma": np.ones(4)}, lambda s: s, "batch_norm_1/gamma", r"^params/batch_norm_1/gamma: .*expected shape \(3,\), found \(4,\)"),
        (lambda p: p, lambda s: {"mean": s["mean"]}, "batch_norm_1/var", "^state/batch_norm_1/var: missing"),
        (lambda p: p, lambda s: {**s, "mean": np.zeros((3, 1))}, "batch_norm_1/mean", r"^state/batch_norm_1/mean: .*expected shape \(3,\), found \(3, 1\)"),
    ],
)
def test_batch_norm_params_and_state_that_do_not_fit_raise_param_errors(change_params, change_state, path, message):
    model = layers.serial(layers.Dense(3), conv.BatchNorm())
    _, params, state = model.init(random.key(0), (-1, 2))
    params = {**params, "batch_norm_1": change_params(params["batch_norm_1"])}
    state = {"batch_norm_1": change_state(state["batch_norm_1"])}
    for train in (False, True):
        with pytest.raises(layers.ParamError, match=message) as error:
            model.apply(params, np.ones((4, 2), np.float32), state=state, train=train)
        assert error.value.path == path


@pytest.mark.parametrize(
    "layer, input_shape",
    [
        (conv.Conv2D(4, 3, padding=1, activation="relu"), (2, 5, 5)),
        (conv.Conv2D(4, (2, 3), stride=2, groups=2), (2, 6, 7)),
        (conv.ConvTranspose2D(3, 2, stride=2), (2, 4, 4)),
        (conv.MaxPool2D(3, stride=2, padding=1), (2, 5, 5)),
        (conv.AvgPool2D(2), (2, 5, 5)),
        (conv.GlobalAvgPool2D(), (2, 5, 5)),
    ],
    ids=lambda p: getattr(p, "name", None),
)
def test_layers_map_an_empty_batch_to_an_empty_output_with_zero_gradients(layer, input_shape):
    out_shape, params = layer.init(random.key(0), (-1,) + input_shape)
    x = np.zeros((0,) + input_shape, np.float32)
    assert layer.apply(params, x).shape == (0,) + out_shape[1:]
    param_grads, x_grad = tinyfn.grad(lambda p, x: tinyfn.ops.sum(layer.apply(p, x)), argnums=(0, 1))(params, x)
    assert x_grad.shape == x.shape
    for g, p in zip(tinyfn.tree.leaves(param_grads), tinyfn.tree.leaves(params)):
        np.testing.assert_array_equal(g, np.zeros_like(p))


def test_batch_norm_on_an_empty_batch():
    layer = conv.BatchNorm()
    _, params, state = layer.init(random.key(0), (-1, 3, 4, 4))
    x = np.zeros((0, 3, 4, 4), np.float32)
    y, same_state = layer.apply(params, x, state=state)
    assert y.shape == x.shape and same_state is state
    with pytest.raises(ValueError, match=r"statistics of an empty batch are undefined \(input shape \(0, 3, 4, 4\)\)"):
        layer.apply(params, x, state=state, train=True)


def test_batch_norm_running_averages_under_a_static_graph_are_those_of_the_eager_path():
    """The running averages are traced like the output, so a replay updates them from each batch
    (a replay of averages computed outside primitives would add the first batch's forever)."""
    model = layers.serial(conv.Conv2D(4, 3, padding=1), conv.BatchNorm(), layers.Relu(), conv.GlobalAvgPool2D(), layers.Dense(3))
    _, params, initial_state = model.init(random.key(0), (-1, 2, 6, 6))
    batches = [(normal(seed, (8, 2, 6, 6), np.float32) * (seed + 1), np.arange(8) % 3) for seed in range(3)]

    def loss(params, state, x, labels):
        logits, new_state = model.apply(params, x, state=state, train=True)
        return losses.softmax_cross_entropy(logits, labels), new_state

    def states_after_each_batch(static_graph):
        loss_and_grad = tinyfn.value_and_grad(loss, has_aux=True, static_graph=static_graph)
        state, states = initial_state, []
        for x, labels in batches:
            (_, state), _ = loss_and_grad(params, state, x, labels)
            states.append(state)
        return states

    eager, static = states_after_each_batch(False), states_after_each_batch(True)
    for eager_state, static_state in zip(eager, static):
        for e, s in zip(tinyfn.tree.leaves(eager_state), tinyfn.tree.leaves(static_state)):
            np.testing.assert_array_equal(s, e)
    features = conv.conv2d(batches[2][0], params["conv2d_0"]["w"], params["conv2d_0"]["b"], padding=1)
    expected = 0.9 * eager[1]["batch_norm_1"]["mean"] + 0.1 * features.mean(axis=(0, 2, 3))
    np.testing.assert_allclose(static[2]["batch_norm_1"]["mean"], expected, rtol=1e-5)


# ----------------------------------------------------------------------------- against PyTorch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def assert_same_as_torch(torch, ours, theirs, args, **settings):
    """``ours`` and ``theirs`` (a torch.nn.functional op) agree on values and on every gradient."""
    tensors = [torch.tensor(a, requires_grad=True) for a in args]
    expected = theirs(*tensors, **settings)
    g = normal(9, tuple(expected.shape))
    expected.backward(torch.tensor(g))
    out, vjp = tinyfn.vjp(lambda *a: ours(*a, **settings), *args)
    np.testing.assert_allclose(out, expected.detach().numpy(), rtol=1e-10, atol=1e-12)
    for grad, t in zip(vjp(g), tensors):
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "settings",
    [dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2), dict(stride=1, padding=2, dilation=3, groups=1)],
)
def test_conv2d_matches_pytorch(torch, settings):
    args = normal(0, (2, 4, 9, 8)), normal(1, (6, 4 // settings["groups"], 3, 2)), normal(2, (6,))
    assert_same_as_torch(torch, conv.conv2d, torch.nn.functional.conv2d, args, **settings)


@pytest.mark.parametrize(
    "settings",
    [
        dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0), dilation=(1, 2), groups=2),
        # output_padding >= stride is allowed when smaller than the dilation
        dict(stride=(1, 2), padding=(2, 0), output_padding=(2, 1), dilation=(3, 1), groups=1),
    ],
)
def test_conv_transpose2d_matches_pytorch(torch, settings):
    args = normal(0, (2, 4, 5, 6)), normal(1, (4, 3, 3, 2)), normal(2, (3 * settings["groups"],))
    assert_same_as_torch(torch, conv.conv_transpose2d, torch.nn.functional.conv_transpose2d, args, **settings)


def test_pooling_and_batch_norm_match_pytorch(torch):
    F = torch.nn.functional
    x = distinct(0, (2, 3, 7, 8))
    max_pools = partial(conv.max_pool2d, window=3), partial(F.max_pool2d, kernel_size=3)
    assert_same_as_torch(torch, *max_pools, (x,), stride=2, padding=1)
    avg_pools = partial(conv.avg_pool2d, window=(3, 2)), partial(F.avg_pool2d, kernel_size=(3, 2))
    assert_same_as_torch(torch, *avg_pools, (x,), stride=(2, 1), padding=(1, 1))
    assert_same_as_torch(
        torch,
        lambda x, g, b: conv.batch_norm(x, g, b),
        lambda x, g, b: F.batch_norm(x, None, None, g, b, training=True, eps=1e-5),
        (normal(0, (4, 3, 5, 5)), normal(1, (3,)), normal(2, (3,))),
    )


# ----------------------------------------------------------------------------- examples


def load_example(name):
    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_cnn_example_reaches_98_percent(capsys):
    assert load_example("digits_cnn").main(seed=0) >= 0.98
    assert "seed 0: test accuracy" in capsys.readouterr().out


def write_idx(path, array):
    """An IDX file of uint8 ``array`` (the MNIST format), gzip-compressed."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_mnist_cnn_example_trains_on_idx_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 48), ("t10k", 16)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 50, (count, 28, 28))
        for digit in range(10):  # a bright column per class: learnable in a few steps
            images[labels == digit, :, 2 * digit + 4] = 255
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    accuracy = load_example("mnist_cnn").main(tmp_path, epochs=1, batch_size=16)
    assert 0.0 <= accuracy <= 1.0
    assert "test accuracy" in capsys.readouterr().out
