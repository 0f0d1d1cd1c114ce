"""Static graphs: value_and_grad(f, static_graph=True) traces once per signature and replays.

The replay must give exactly the numbers of the traced version (the same primitives run in the
same order), retrace when the signature changes, and refuse functions it cannot replay.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinyfn
from tinyfn import layers as tl
from tinyfn import losses, ops, tree
from tinyfn.testing import arrays


def _mlp_loss(sizes, activation):
    hidden = [tl.Dense(n, activation=activation) for n in sizes[1:-1]]
    model = tl.serial(*hidden, tl.Dense(sizes[-1]))

    def loss(params, x, y):
        return tinyfn.losses.softmax_cross_entropy(model.apply(params, x), y)

    return model, loss


def _assert_trees_equal(a, b):
    assert tree.structure(a) == tree.structure(b)
    for u, v in zip(tree.leaves(a), tree.leaves(b)):
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_array_equal(u, v)


@given(
    sizes=st.lists(st.integers(1, 6), min_size=2, max_size=4),
    batch=st.integers(1, 5),
    activation=st.sampled_from([None, "relu"]),
    seed=st.integers(0, 2**16),
)
def test_replay_gives_the_traced_numbers_bit_for_bit_over_training_steps(sizes, batch, activation, seed):
    sizes = [3] + sizes
    model, loss = _mlp_loss(sizes, activation)
    _, params = model.init(tinyfn.random.key(seed), (-1, sizes[0]))
    rng = np.random.default_rng(seed)
    traced, staged = tinyfn.value_and_grad(loss), tinyfn.value_and_grad(loss, static_graph=True)
    p_traced = p_staged = params
    for _ in range(3):  # new parameter and data arrays each call: the replay must read them
        x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
        y = rng.integers(0, sizes[-1], batch)
        (l1, g1), (l2, g2) = traced(p_traced, x, y), staged(p_staged, x, y)
        assert l1 == l2
        _assert_trees_equal(g1, g2)
        p_traced, p_staged = tinyfn.optim.sgd_step(p_traced, g1, 0.1), tinyfn.optim.sgd_step(p_staged, g2, 0.1)


@given(x=arrays((3, 2)), w=arrays((2, 2)), seed=st.integers(0, 100))
def test_replayed_gradients_match_finite_differences(x, w, seed):
    def f(params, x, scale):
        h = ops.tanh(x @ params["w"]) * scale
        return (ops.exp(h) - h * h).sum()

    staged = tinyfn.value_and_grad(f, static_graph=True)
    params = {"w": w}
    staged(params, x, 2.0)  # the trace
    value, g = staged(params, x, 2.0)  # a replay
    direction = np.random.default_rng(seed).standard_normal(w.shape)
    eps = 1e-6
    numeric = (f({"w": w + eps * direction}, x, 2.0) - f({"w": w - eps * direction}, x, 2.0)) / (2 * eps)
    assert value == pytest.approx(f(params, x, 2.0), rel=1e-12)
    assert np.sum(g["w"] * direction) == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_f_runs_once_per_signature_and_a_new_shape_or_constant_traces_again():
    def loss(w, x, scale):
        return (ops.tanh(x @ w) * scale).sum()

    traces = []

    def logged_loss(w, x, scale):
        traces.append((x.shape, scale))
        return loss(w, x, scale)

    staged = tinyfn.value_and_grad(logged_loss, static_graph=True)
    w = np.ones((2, 3))
    for batch, scale in [(4, 1.0), (4, 1.0), (5, 1.0), (4, 1.0), (4, 2.0), (5, 1.0)]:
        x = np.full((batch, 2), 0.1 * batch)
        value, g = staged(w, x, scale)
        expected_value, expected_g = tinyfn.value_and_grad(loss)(w, x, scale)
        assert value == expected_value
        np.testing.assert_array_equal(g, expected_g)
    assert traces == [((4, 2), 1.0), ((5, 2), 1.0), ((4, 2), 2.0)]


def test_argnums_aux_and_keyword_arguments_match_the_traced_version():
    def f(a, b, x, *, power):
        y = a * x + b
        return (y**power).sum(), {"mean": y.mean(), "label": "fit"}

    x = np.linspace(-1.0, 1.0, 5)
    a, b = np.array(0.5), np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    for power in (2, 3, 2):
        expected = tinyfn.value_and_grad(f, argnums=(0, 1), has_aux=True)(a, b, x, power=power)
        found = tinyfn.value_and_grad(f, argnums=(0, 1), has_aux=True, static_graph=True)(a, b, x, power=power)
        (v1, aux1), (ga1, gb1) = expected
        (v2, aux2), (ga2, gb2) = found
        assert v1 == v2 and aux1 == aux2
        np.testing.assert_array_equal(ga1, ga2)
        np.testing.assert_array_equal(gb1, gb2)


def test_the_replay_still_checks_the_labels_of_every_call():
    model, loss = _mlp_loss([3, 4], None)
    _, params = model.init(tinyfn.random.key(0), (-1, 3))
    staged = tinyfn.value_and_grad(loss, static_graph=True)
    x = np.ones((2, 3), np.float32)
    staged(params, x, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"class indices in \[0, 4\), found values from 0 to 7"):
        staged(params, x, np.array([0, 7]))


def test_numpy_on_a_traced_argument_is_refused():
    # np.sort has no differentiable version: under a static graph even the data may not meet it
    staged = tinyfn.value_and_grad(lambda w, x: (w * np.sort(x)).sum(), static_graph=True)
    with pytest.raises(TypeError, match="static_graph=True"):
        staged(np.ones(3), np.ones(3))


def test_comparing_traced_values_is_refused():
    staged = tinyfn.value_and_grad(lambda w, x: ops.where(x > 0, w, -w).sum(), static_graph=True)
    with pytest.raises(TypeError, match=r"static_graph: comparing traced values \(x > 0, ==, ...\) reads the value of a traced array"):
        staged(np.ones(3), np.ones(3))


def test_a_metric_of_traced_values_is_refused_rather_than_frozen():
    # accuracy(...) in aux was computed once at the trace and replayed for every later batch
    def loss(w, x, y):
        logits = x * w
        return losses.softmax_cross_entropy(logits, y), losses.accuracy(logits, y)

    staged = tinyfn.value_and_grad(loss, has_aux=True, static_graph=True)
    with pytest.raises(TypeError, match="static_graph: accuracy reads the value of a traced array"):
        staged(np.ones(3), np.ones((2, 3)), np.array([0, 1]))


def test_a_grad_inside_a_static_graph_is_refused_clearly():
    inner = tinyfn.grad(lambda x: (x * x).sum())
    staged = tinyfn.value_and_grad(lambda w: (inner(w) * w).sum(), static_graph=True)
    with pytest.raises(TypeError, match="static_graph: a function differentiated with a static graph cannot itself differentiate"):
        staged(np.ones(3))
    # and a static graph cannot run inside another differentiation
    with pytest.raises(TypeError, match="static_graph"):
        tinyfn.grad(lambda w: tinyfn.value_and_grad(lambda v: (v * v).sum(), static_graph=True)(w)[0])(np.ones(3))


def test_a_plain_array_in_the_output_is_refused_with_its_path():
    def f(w, x):
        return (w * x).sum(), {"mask": np.ones(3)}

    staged = tinyfn.value_and_grad(f, has_aux=True, static_graph=True)
    with pytest.raises(TypeError, match="output at '1/mask' is a plain array"):
        staged(np.ones(3), np.ones(3))


def test_unhashable_constants_are_refused_clearly():
    staged = tinyfn.value_and_grad(lambda w, options: (w * options["scale"][0]).sum(), static_graph=True)
    with pytest.raises(TypeError, match="must be hashable"):
        staged(np.ones(3), {"scale": [{1.0}]})
    staged_kw = tinyfn.value_and_grad(lambda w, *, scale: (w * scale).sum(), static_graph=True)
    with pytest.raises(TypeError, match="keyword arguments must be hashable"):
        staged_kw(np.ones(3), scale=np.ones(3))
