"""Second derivatives through the convolution, pooling and batch-norm VJPs.

``check_grads(f, args, order=2)`` checks the derivatives of ``f``'s VJP, the map
``(args, u) -> J(args)^T u``, against finite differences of that VJP in float64, which holds
only if every VJP rule is written in differentiable primitives. The public primitives are
checked that way in ``test_conv_layers.py``; here are the primitives that only VJP rules call
(the weight correlation, the pooling backward passes), the layers, a Hessian-vector product
of a small CNN against finite differences of its gradient and, where PyTorch is installed,
double backward against PyTorch's.
"""

import numpy as np
import pytest
from gradient_registry import covers
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_kernels import conv_configs, pool_configs

import tinyfn
from tinyfn import conv, kernels, layers, losses, ops, random, tree
from tinyfn.testing import check_grads


def normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape)


def distinct(seed, shape):
    """Values at least 0.01 apart, so a max never changes winner within a finite-difference step."""
    return np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape) * 0.01


def geometry(cfg) -> dict:
    return {name: cfg[name] for name in ("stride", "padding", "dilation", "groups")}


def conv_output_shape(cfg) -> tuple:
    return conv.conv2d_output_shape(cfg["x_shape"], cfg["w_shape"], **geometry(cfg))


# ----------------------------------------------------------------------------- primitives that only VJPs call


@covers("conv2d_weight_grad", order=2)
@given(conv_configs())
def test_conv2d_weight_grad_derivatives(cfg):
    """The correlation ``corr(x, g)``, the cotangent of a convolution's weight, is bilinear:
    its VJPs are a transposed convolution (for x) and a convolution (for g)."""
    x, g = normal(0, cfg["x_shape"]), normal(1, conv_output_shape(cfg))
    weight_grad = lambda x, g: conv._conv2d_weight_grad(x, g, w_shape=cfg["w_shape"], **geometry(cfg))
    check_grads(weight_grad, (x, g), order=2)
    # and it is the weight's cotangent of conv2d: <corr(x, g), v> = <g, conv2d(x, v)>
    v = normal(2, cfg["w_shape"])
    np.testing.assert_allclose(np.vdot(weight_grad(x, g), v), np.vdot(g, conv.conv2d(x, v, **geometry(cfg))), rtol=1e-10)


@covers("max_pool2d_backward", order=2)
@given(pool_configs())
def test_max_pool2d_backward_derivatives(cfg):
    """The max-pooling VJP scatters g to the winners (linear in g); its VJP gathers from there."""
    x = distinct(0, cfg["x_shape"])
    y, argmax = kernels.max_pool2d(x, cfg["window"], cfg["stride"], cfg["padding"])
    backward = lambda g: conv._max_pool2d_backward(g, argmax, x_shape=x.shape, padding=cfg["padding"])
    check_grads(backward, (normal(1, y.shape),), order=2)


@covers("avg_pool2d_backward", order=2)
@given(pool_configs())
def test_avg_pool2d_backward_is_the_transpose_of_avg_pool2d(cfg):
    settings = dict(window=cfg["window"], stride=cfg["stride"], padding=cfg["padding"])
    x = normal(0, cfg["x_shape"])
    g = normal(1, conv.avg_pool2d(x, **settings).shape)
    backward = lambda g: conv._avg_pool2d_backward(g, x_shape=x.shape, **settings)
    check_grads(backward, (g,), order=2)
    # <avg_pool2d(x), g> = <x, backward(g)>: padding counts in every window's size on both sides
    np.testing.assert_allclose(np.vdot(conv.avg_pool2d(x, **settings), g), np.vdot(x, backward(g)), rtol=1e-10)


def test_batch_moments_are_differentiable():
    x = normal(0, (4, 3, 2, 2))
    check_grads(lambda x: conv.batch_moments(x), (x,), order=2)
    mean, var = conv.batch_moments(x)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(var, x.var(axis=(0, 2, 3)), rtol=1e-12)


# ----------------------------------------------------------------------------- layers


def float64(params):
    return tree.map(lambda p: np.asarray(p, np.float64), params)


@pytest.mark.parametrize(
    "layer, input_shape",
    [
        (conv.Conv2D(3, 3, padding=1, activation="relu"), (2, 2, 5, 5)),
        (conv.Conv2D(4, (2, 3), stride=2, groups=2, use_bias=False), (2, 2, 6, 7)),
        (conv.ConvTranspose2D(3, 3, stride=2, padding=1, output_padding=1), (2, 2, 3, 3)),
        (conv.MaxPool2D(3, stride=2, padding=1), (2, 2, 5, 5)),
        (conv.AvgPool2D(3, stride=2, padding=1), (2, 2, 5, 5)),
        (conv.GlobalAvgPool2D(), (2, 3, 3, 4)),
    ],
    ids=lambda p: getattr(p, "name", None),
)
def test_layer_second_derivatives(layer, input_shape):
    _, params = layer.init(random.key(0), (-1,) + input_shape[1:])
    check_grads(layer.apply, (float64(params), distinct(1, input_shape) - 0.5), order=2)


def test_batch_norm_layer_second_derivatives():
    """The output and, in training mode, the new running averages, w.r.t. params, input and state."""
    layer = conv.BatchNorm(momentum=0.8)
    params = {"gamma": normal(1, 3), "beta": normal(2, 3)}
    state = {"mean": normal(3, 3), "var": 1 + normal(4, 3) ** 2}

    def train(params, x, state):
        return layer.apply(params, x, state=state, train=True)

    def evaluate(params, x, state):
        return layer.apply(params, x, state=state)[0]

    check_grads(train, (params, normal(5, (4, 3, 2, 2)), state), order=2)
    check_grads(evaluate, (params, normal(6, (2, 3, 2, 2)), state), order=2)


# ----------------------------------------------------------------------------- Hessian-vector product of a CNN


def small_cnn():
    return layers.serial(
        conv.Conv2D(3, 3, padding=1), layers.Relu(), conv.MaxPool2D(2), conv.BatchNorm(), layers.Flatten(), layers.Dense(3)
    )


def vdot(a, b):
    """Sum over matching leaves of ``sum(a * b)``, in primitives (so it can be differentiated)."""
    return sum(ops.sum(x * y) for x, y in zip(tree.leaves(a), tree.leaves(b)))


@settings(max_examples=5)
@given(st.integers(0, 2**16))
def test_cnn_hessian_vector_product_matches_finite_differences_of_the_gradient(seed):
    model = small_cnn()
    _, params, state = model.init(random.key(seed), (-1, 2, 6, 6))
    params = float64(params)
    x, labels = normal(seed, (4, 2, 6, 6)), np.arange(4) % 3
    pre_activations = conv.conv2d(x, params["conv2d_0"]["w"], params["conv2d_0"]["b"], padding=1)
    assume(np.abs(pre_activations).min() > 1e-3)  # no ReLU kink within a finite-difference step

    def loss(params):
        logits, _ = model.apply(params, x, state=state, train=True)
        return losses.softmax_cross_entropy(logits, labels)

    keys = random.split(random.key(seed + 1), len(tree.leaves(params)))
    v = tree.unflatten(tree.structure(params), [random.normal(k, np.shape(p), np.float64) for k, p in zip(keys, tree.leaves(params))])
    hvp = tinyfn.grad(lambda p: vdot(tinyfn.grad(loss)(p), v))(params)

    eps = 1e-6
    plus = tinyfn.grad(loss)(tree.map(lambda p, d: p + eps * d, params, v))
    minus = tinyfn.grad(loss)(tree.map(lambda p, d: p - eps * d, params, v))
    for (path, h), p, m in zip(tree.leaves_with_path(hvp), tree.leaves(plus), tree.leaves(minus)):
        np.testing.assert_allclose(h, (p - m) / (2 * eps), rtol=1e-5, atol=1e-7, err_msg=path)


# ----------------------------------------------------------------------------- against PyTorch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def double_backward_of_tinyfn(f, args, u, v):
    """d/d(args, u) of <vjp of f at args applied to u, v>: every second derivative of f along v."""

    def directional(*args_and_u):
        *primals, cotangent = args_and_u
        grads = tinyfn.vjp(f, *primals)[1](cotangent)
        return vdot(grads, v)

    return tinyfn.grad(directional, argnums=tuple(range(len(args) + 1)))(*args, u)


def double_backward_of_torch(torch, f, args, u, v):
    """The same with PyTorch's double backward (``create_graph=True``)."""
    tensors = [torch.tensor(a, requires_grad=True) for a in (*args, u)]
    *primals, cotangent = tensors
    grads = torch.autograd.grad(f(*primals), primals, grad_outputs=cotangent, create_graph=True)
    directional = sum((g * torch.tensor(d)).sum() for g, d in zip(grads, v))
    second = torch.autograd.grad(directional, tensors, allow_unused=True)
    return [np.zeros(t.shape) if s is None else s.detach().numpy() for t, s in zip(tensors, second)]


@pytest.mark.parametrize(
    "name",
    ["conv2d", "conv2d_relu", "conv_transpose2d", "max_pool2d", "avg_pool2d", "batch_norm"],
)
def test_double_backward_matches_pytorch(torch, name):
    F = torch.nn.functional
    x = distinct(0, (2, 4, 7, 6)) - 1
    cases = {
        "conv2d": (
            lambda x, w, b: conv.conv2d(x, w, b, stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2),
            lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2),
            (x, normal(1, (6, 2, 3, 2)), normal(2, 6)),
        ),
        "conv2d_relu": (
            lambda x, w, b: conv.conv2d(x, w, b, padding=1, activation="relu"),
            lambda x, w, b: F.relu(F.conv2d(x, w, b, padding=1)),
            (x, normal(1, (3, 4, 3, 3)), normal(2, 3)),
        ),
        "conv_transpose2d": (
            lambda x, w, b: conv.conv_transpose2d(x, w, b, stride=(1, 2), padding=(2, 0), output_padding=(2, 1), dilation=(3, 1)),
            lambda x, w, b: F.conv_transpose2d(x, w, b, stride=(1, 2), padding=(2, 0), output_padding=(2, 1), dilation=(3, 1)),
            (x, normal(1, (4, 3, 3, 2)), normal(2, 3)),
        ),
        "max_pool2d": (lambda x: conv.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1), (x,)),
        "avg_pool2d": (lambda x: conv.avg_pool2d(x, (3, 2), (2, 1), (1, 1)), lambda x: F.avg_pool2d(x, (3, 2), (2, 1), (1, 1)), (x,)),
        "batch_norm": (
            lambda x, g, b: conv.batch_norm(x, g, b),
            lambda x, g, b: F.batch_norm(x, None, None, g, b, training=True, eps=1e-5),
            (x, normal(1, 4), normal(2, 4)),
        ),
    }
    ours, theirs, args = cases[name]
    u = normal(3, np.shape(ours(*args)))
    v = [normal(4 + i, np.shape(a)) for i, a in enumerate(args)]
    expected = double_backward_of_torch(torch, theirs, args, u, v)
    for got, want in zip(double_backward_of_tinyfn(ours, args, u, v), expected):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)
