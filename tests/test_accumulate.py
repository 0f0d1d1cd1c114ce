"""optim.accumulate_gradients: one update every k calls, from the mean of the k gradients.

The expected numbers are written here with numpy: the sum of the gradients in call order
divided by k, fed to the inner optimizer (itself checked against the textbook equations in
test_optim.py). A float64 model trained on k equal micro-batches must match the same model
trained on the whole batch (the mean of the micro-batch gradients is the batch gradient).
"""

import functools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyfn import checkpoint, layers, losses, optim, random, train, tree

SHAPES = {"w": (3, 2), "b": (2,)}


def random_tree(rng, dtype):
    return tree.freeze({name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()})


def hand_mean(grads):
    """((g_0 + g_1) + ...) / k, leaf by leaf, in numpy."""
    return {name: functools.reduce(np.add, [g[name] for g in grads]) / len(grads) for name in SHAPES}


def assert_same_bits(actual, expected):
    assert tree.structure(actual) == tree.structure(expected)
    for (path, a), e in zip(tree.leaves_with_path(actual), tree.leaves(expected)):
        a, e = np.asarray(a), np.asarray(e)
        assert a.dtype == e.dtype and a.shape == e.shape, path
        assert a.tobytes() == e.tobytes(), f"{path}: {a} != {e}"


@given(
    every=st.integers(1, 4),
    rounds=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_one_update_every_k_calls_from_the_mean_in_call_order(every, rounds, seed, dtype):
    rng = np.random.default_rng(seed)
    params = random_tree(rng, dtype)
    inner = optim.sgd(optim.schedules.cosine_decay(0.1, 10), momentum=0.9)
    wrapped = optim.accumulate_gradients(inner, every=every)
    state, inner_state = wrapped.init(params), inner.init(params)
    expected_params = params
    for _ in range(rounds):
        grads = [random_tree(rng, dtype) for _ in range(every)]
        for g in grads[:-1]:
            updates, state = wrapped.update(g, state, params)
            for u in tree.leaves(updates):  # -0.0 everywhere: adding it changes no parameter
                assert u.dtype == dtype and np.all(u == 0) and np.all(np.signbit(u))
            params = optim.apply_updates(params, updates)
            assert_same_bits(params, expected_params)
        updates, state = wrapped.update(grads[-1], state, params)
        expected_updates, inner_state = inner.update(hand_mean(grads), inner_state, expected_params)
        assert_same_bits(updates, expected_updates)
        params = optim.apply_updates(params, updates)
        expected_params = optim.apply_updates(expected_params, expected_updates)
        assert state["micro_step"] == 0
        assert_same_bits(state["inner"], inner_state)
    assert optim.current_learning_rate(state) == optim.current_learning_rate(inner_state)


def test_negative_zero_parameters_are_left_as_they_are_between_updates():
    params = tree.freeze({"w": np.array([-0.0, 0.0, 1.5], np.float32)})
    wrapped = optim.accumulate_gradients(optim.sgd(0.1), every=3)
    state = wrapped.init(params)
    updates, state = wrapped.update({"w": np.array([1.0, -2.0, 3.0], np.float32)}, state, params)
    new = optim.apply_updates(params, updates)
    assert new["w"].tobytes() == params["w"].tobytes()


def test_the_sum_keeps_the_parameters_dtype():
    params = tree.freeze({"w": np.zeros(3, np.float32)})
    wrapped = optim.accumulate_gradients(optim.sgd(1.0), every=2)
    state = wrapped.init(params)
    g = {"w": np.array([1.0, 1e-9, 3.0], np.float64)}
    _, state = wrapped.update(g, state, params)
    assert state["gradients"]["w"].dtype == np.float32
    np.testing.assert_array_equal(state["gradients"]["w"], np.float32(g["w"]))
    updates, state = wrapped.update(g, state, params)
    np.testing.assert_array_equal(updates["w"], -(np.float32(g["w"]) + np.float32(g["w"])) / np.float32(2))
    np.testing.assert_array_equal(state["gradients"]["w"], np.zeros(3, np.float32))


def model_and_data():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((24, 5))
    y = rng.integers(0, 3, 24)
    net = layers.serial(layers.Dense(8, dtype=np.float64), layers.Tanh(), layers.Dense(3, dtype=np.float64))
    return net, x, y


@pytest.mark.parametrize("every", [2, 3, 4])
def test_k_equal_micro_batches_train_like_the_whole_batch(every):
    net, x, y = model_and_data()
    make_optimizer = lambda: optim.adam(1e-2)  # noqa: E731
    whole = train.init_train_state(net, make_optimizer(), random.key(0), (-1, 5))
    accumulating = optim.accumulate_gradients(make_optimizer(), every=every)
    micro = train.init_train_state(net, accumulating, random.key(0), (-1, 5))
    whole_step = train.supervised_step(net, make_optimizer(), losses.softmax_cross_entropy)
    micro_step = train.supervised_step(net, accumulating, losses.softmax_cross_entropy)
    for _ in range(3):
        whole, _ = whole_step(whole, (x, y))
        for part in range(every):
            size = len(x) // every
            micro, _ = micro_step(micro, (x[part * size : (part + 1) * size], y[part * size : (part + 1) * size]))
    for (path, a), b in zip(tree.leaves_with_path(micro["params"]), tree.leaves(whole["params"])):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=path)
    assert micro["opt_state"]["inner"][0]["count"] == whole["opt_state"][0]["count"] == 3


def test_a_run_resumed_between_two_updates_continues_exactly(tmp_path):
    rng = np.random.default_rng(3)
    params = random_tree(rng, np.float32)
    wrapped = optim.accumulate_gradients(optim.adam(1e-2), every=3)
    grads = [random_tree(rng, np.float32) for _ in range(6)]

    def run(params, state, grad_seq):
        for g in grad_seq:
            updates, state = wrapped.update(g, state, params)
            params = optim.apply_updates(params, updates)
        return params, state

    straight = run(params, wrapped.init(params), grads)
    halfway = run(params, wrapped.init(params), grads[:4])
    checkpoint.save(tmp_path / "state.msgpack", {"params": halfway[0], "opt_state": halfway[1]})
    saved = checkpoint.load(tmp_path / "state.msgpack")
    resumed = run(saved["params"], saved["opt_state"], grads[4:])
    assert_same_bits(resumed[0], straight[0])


@pytest.mark.parametrize(
    "every, error, message",
    [
        (0, ValueError, "accumulate_gradients: every must be an int >= 1, found 0"),
        (-2, ValueError, "accumulate_gradients: every must be an int >= 1, found -2"),
        (2.0, TypeError, "accumulate_gradients: every must be an int >= 1, found 2.0 of type float"),
        (True, TypeError, "accumulate_gradients: every must be an int >= 1, found True of type bool"),
    ],
)
def test_bad_every_is_refused(every, error, message):
    with pytest.raises(error, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        optim.accumulate_gradients(optim.sgd(0.1), every=every)


def test_gradients_that_do_not_fit_the_parameters_are_refused():
    params = random_tree(np.random.default_rng(0), np.float32)
    wrapped = optim.accumulate_gradients(optim.sgd(0.1), every=2)
    state = wrapped.init(params)
    bad = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(2, np.float32)}
    with pytest.raises(tree.TreeMismatchError, match="w"):
        wrapped.update(bad, state, params)
    _, state = wrapped.update(random_tree(np.random.default_rng(1), np.float32), state, params)
    with pytest.raises(tree.TreeMismatchError, match="w"):
        wrapped.update(bad, state, params)
