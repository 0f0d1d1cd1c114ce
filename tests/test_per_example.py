"""Per-example gradients: each example's gradient equals ``tinyfn.grad`` of that example's loss
alone (a Python loop over the batch, here only, as the independent reference), and their sum is
the full batch's gradient; what is not supported is refused naming what was expected and found."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinyfn
from tinyfn import conv, layers, losses, ops, random, tree
from tinyfn.per_example import PerExampleError, per_example_grads, per_example_value_and_grads

F64 = np.float64
CLASSES = 3


def _one_at_a_time(loss, params, *batch):
    """The reference: ``tinyfn.grad`` of each example's loss, computed on a batch of that
    example alone, stacked along a new leading axis."""
    grads = [
        tinyfn.grad(lambda p: ops.sum(loss(p, *(a[i : i + 1] for a in batch))))(params) for i in range(len(batch[0]))
    ]
    return tree.map(lambda *leaves: np.stack(leaves), *grads)


def _check_against_references(loss, params, *batch):
    found = per_example_grads(loss)(params, *batch)
    expected = _one_at_a_time(loss, params, *batch)
    full_batch = tinyfn.grad(lambda p: ops.sum(loss(p, *batch)))(params)

    def same(path, f, e, total):
        assert f.shape == e.shape == (len(batch[0]),) + total.shape, path
        assert f.dtype == total.dtype, path
        np.testing.assert_allclose(f, e, rtol=1e-9, atol=1e-12, err_msg=path)
        np.testing.assert_allclose(f.sum(axis=0), total, rtol=1e-9, atol=1e-12, err_msg=path)

    tree.map_with_path(same, found, expected, full_batch)


def _classifier_loss(model):
    return lambda params, x, y: losses.softmax_cross_entropy(model.apply(params, x), y, reduction="none")


def _labelled_batch(draw, example_shape):
    """A hypothesis-drawn batch: B in 1..5 examples of ``example_shape`` and their class labels."""
    b = draw(st.integers(1, 5))
    x = draw(hnp.arrays(F64, (b,) + example_shape, elements=st.floats(-3, 3, width=64)))
    y = draw(hnp.arrays(np.int64, (b,), elements=st.integers(0, CLASSES - 1)))
    return x, y


def _params(draw, model, input_shape):
    _, params = model.init(random.key(draw(st.integers(0, 2**32 - 1))), (-1,) + input_shape)
    return params


# ----------------------------------------------------------------------------- agreement with the loop


MLP = layers.serial(
    layers.Dense(6, activation="relu", dtype=F64), layers.Tanh(), layers.Dense(5, dtype=F64), layers.Relu(), layers.Dense(CLASSES, dtype=F64)
)


@given(st.data())
def test_mlp_per_example_grads_equal_the_loop_and_sum_to_the_batch_gradient(data):
    x, y = _labelled_batch(data.draw, (4,))
    _check_against_references(_classifier_loss(MLP), _params(data.draw, MLP, (4,)), x, y)


CNN = layers.serial(
    conv.Conv2D(4, 3, stride=2, padding=1, activation="relu", dtype=F64),  # (2, 7, 7) -> (4, 4, 4)
    conv.Conv2D(6, 3, padding="same", groups=2, use_bias=False, dtype=F64),
    layers.Relu(),
    conv.MaxPool2D(2),  # -> (6, 2, 2)
    layers.Flatten(),
    layers.Dense(CLASSES, dtype=F64),
)


@given(st.data())
def test_cnn_per_example_grads_equal_the_loop_and_sum_to_the_batch_gradient(data):
    x, y = _labelled_batch(data.draw, (2, 7, 7))
    _check_against_references(_classifier_loss(CNN), _params(data.draw, CNN, (2, 7, 7)), x, y)


RESIDUAL = layers.serial(
    layers.Dense(5, dtype=F64),  # on (B, 3, 4) inputs: the rules sum over the extra axis
    layers.residual(layers.serial(layers.Dense(5, activation="relu", dtype=F64), layers.Dense(5, dtype=F64))),
    layers.Tanh(),
    layers.Flatten(),
    layers.Dense(CLASSES, dtype=F64),
)


@given(st.data())
def test_residual_block_per_example_grads_equal_the_loop_and_sum_to_the_batch_gradient(data):
    x, y = _labelled_batch(data.draw, (3, 4))
    _check_against_references(_classifier_loss(RESIDUAL), _params(data.draw, RESIDUAL, (3, 4)), x, y)


def _hand_written_loss(params, x, targets):
    """x (B, 2, 4) through matmul, add, subtract and multiply of parameters, the parameter on
    either side; ``m``, ``b`` and ``shift`` are each used twice."""
    h = x @ params["w"] + params["b"]  # (B, 2, 4) @ (4, 3) + (3,)
    h = params["shift"] - params["scale"] * ops.tanh(h)  # () - (3,) * (B, 2, 3)
    h = ops.tanh(h @ params["m"]) @ params["m"] * params["gain"]  # (3, 3) twice, * (1, 3)
    h = params["b"] + h - params["shift"]
    return ops.sum((h - targets) ** 2, axis=(1, 2))


@given(st.data())
def test_hand_written_loss_of_matmul_add_subtract_multiply_equals_the_loop(data):
    b = data.draw(st.integers(1, 5))
    floats = st.floats(-2, 2, width=64)
    shapes = {"w": (4, 3), "b": (3,), "shift": (), "scale": (3,), "m": (3, 3), "gain": (1, 3)}
    params = {name: data.draw(hnp.arrays(F64, shape, elements=floats)) for name, shape in shapes.items()}
    x = data.draw(hnp.arrays(F64, (b, 2, 4), elements=floats))
    targets = data.draw(hnp.arrays(F64, (b, 2, 3), elements=floats))
    _check_against_references(_hand_written_loss, params, x, targets)


def test_value_and_grads_returns_the_losses_and_gradients_in_the_params_dtype():
    model = layers.serial(layers.Dense(4, activation="relu"), layers.Dense(CLASSES))  # float32
    _, params = model.init(random.key(0), (-1, 5))
    x, y = random.normal(random.key(1), (7, 5)), np.array([0, 1, 2, 0, 1, 2, 0])
    found_losses, grads = per_example_value_and_grads(_classifier_loss(model))(params, x, y)
    np.testing.assert_array_equal(found_losses, losses.softmax_cross_entropy(model.apply(params, x), y, reduction="none"))
    assert tree.map(lambda g: (g.shape, g.dtype), grads) == {
        "dense_0": {"w": ((7, 5, 4), np.float32), "b": ((7, 4), np.float32)},
        "dense_1": {"w": ((7, 4, CLASSES), np.float32), "b": ((7, CLASSES), np.float32)},
    }


def test_a_parameter_the_losses_do_not_depend_on_gets_zero_gradients():
    params = {"used": np.ones(3), "unused": np.ones((2, 2))}
    grads = per_example_grads(lambda p, x: ops.sum(x * p["used"], axis=1))(params, np.arange(12.0).reshape(4, 3))
    np.testing.assert_array_equal(grads["used"], np.arange(12.0).reshape(4, 3))
    np.testing.assert_array_equal(grads["unused"], np.zeros((4, 2, 2)))


# ----------------------------------------------------------------------------- refusals


def _refusal(loss, params, *batch) -> str:
    with pytest.raises(PerExampleError) as error:
        per_example_grads(loss)(params, *batch)
    return str(error.value)


X, Y = np.linspace(-1, 1, 12).reshape(4, 3), np.array([0, 1, 2, 1])
DENSE_PARAMS = {"w": np.full((3, CLASSES), 0.5), "b": np.zeros(CLASSES)}


def test_a_scalar_loss_is_refused_naming_the_expected_shape():
    message = _refusal(lambda p, x, y: losses.softmax_cross_entropy(x @ p["w"], y), DENSE_PARAMS, X, Y)
    assert "shape (B,)" in message and "reduction='none'" in message and "found shape ()" in message


def test_a_loss_per_class_is_refused_naming_the_shape_found():
    message = _refusal(lambda p, x, y: ops.tanh(x @ p["w"]), DENSE_PARAMS, X, Y)
    assert "shape (B,)" in message and "found shape (4, 3) and dtype float64" in message


def test_a_loss_returning_a_pair_is_refused_naming_what_it_returned():
    message = _refusal(lambda p, x, y: (ops.sum(x @ p["w"], axis=1), x), DENSE_PARAMS, X, Y)
    assert "an array of shape (B,)" in message and "found a tuple" in message


def test_a_batch_norm_model_is_refused_naming_the_layer_and_its_parameters():
    model = layers.serial(layers.Dense(4), conv.BatchNorm(), layers.Relu(), layers.Dense(CLASSES))
    _, params, state = layers.init_with_state(model, random.key(0), (-1, 3))

    def loss(p, x, y):
        logits, _ = layers.apply_with_state(model, p, x, state, train=True)
        return losses.softmax_cross_entropy(logits, y, reduction="none")

    message = _refusal(loss, params, X.astype(np.float32), Y)
    assert "batch_norm(a value (4, 4), parameter 'params/batch_norm_1/gamma' (4,), parameter 'params/batch_norm_1/beta' (4,))" in message
    assert "batch's statistics" in message


def test_a_transformed_parameter_is_refused_naming_the_operation_and_what_is_supported():
    params = {"w": np.full((CLASSES, 3), 0.5)}
    message = _refusal(lambda p, x, y: losses.softmax_cross_entropy(x @ p["w"].T, y, reduction="none"), params, X, Y)
    assert "transpose(parameter 'params/w' (3, 3))" in message and "no per-example rule" in message
    assert "Supported: the weights and biases of dense and conv2d" in message


def test_a_squared_parameter_is_refused():
    message = _refusal(lambda p, x, y: ops.sum(x @ p["w"] ** 2, axis=1), DENSE_PARAMS, X, Y)
    assert "power(parameter 'params/w' (3, 3), a value ())" in message


def test_an_operation_mixing_the_examples_is_refused_naming_the_shape_found():
    def loss(p, x, y):
        h = x @ p["w"]
        return losses.softmax_cross_entropy(h - ops.mean(h, axis=0), y, reduction="none")  # centred over the batch

    message = _refusal(loss, DENSE_PARAMS, X, Y)
    assert "mean(a value (4, 3))" in message and "output has shape (3,), without a leading axis of the B = 4 examples" in message


def test_a_parameter_spanning_the_batch_axis_is_refused():
    params = {"p": np.ones((4, 3))}
    message = _refusal(lambda p, x, y: ops.sum(x * p["p"], axis=1), params, X, Y)
    assert "expected the parameter 'params/p' to broadcast over the batch axis 0 of the output (4, 3)" in message


def test_a_matmul_by_a_parameter_vector_is_refused_naming_the_shapes():
    message = _refusal(lambda p, x, y: x @ p["v"], {"v": np.ones(3)}, X, Y)
    assert "expected x (B, ..., in) @ w (in, out) with a 2-D parameter w, found w of shape (3,)" in message


def test_a_transposed_convolution_is_refused():
    model = layers.serial(conv.ConvTranspose2D(2, 2, stride=2, dtype=F64), layers.Flatten())
    _, params = model.init(random.key(0), (-1, 1, 2, 2))
    message = _refusal(lambda p, x: ops.sum(model.apply(p, x), axis=1), params, np.ones((3, 1, 2, 2)))
    assert "conv_transpose2d(" in message and "'params/conv_transpose2d_0/w'" in message


def test_per_example_grads_inside_another_differentiation_are_refused():
    loss = lambda p, x: ops.sum(x @ p["w"], axis=1)
    with pytest.raises(PerExampleError, match="first-order .* found a value traced by an enclosing differentiation"):
        tinyfn.grad(lambda p: ops.sum(per_example_grads(loss)(p, X)["w"]))(DENSE_PARAMS)


# ----------------------------------------------------------------------------- the DP-SGD example


def _dp_sgd_example():
    path = Path(__file__).resolve().parent.parent / "examples" / "per_example_dp_sgd.py"
    spec = importlib.util.spec_from_file_location("per_example_dp_sgd", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dp_sgd_clips_each_example_then_averages_and_adds_noise_from_the_key():
    privatised_mean = _dp_sgd_example().privatised_mean
    grads = {"a": np.array([[3.0, 0.0], [0.3, 0.0]]), "b": np.array([[4.0], [0.4]])}  # norms 5 and 0.5
    mean, clipped = privatised_mean(grads, random.key(0), clip_norm=1.0, noise_multiplier=0.0)
    np.testing.assert_allclose(mean["a"], [(0.6 + 0.3) / 2, 0.0])  # the first scaled to norm 1, the second kept
    np.testing.assert_allclose(mean["b"], [(0.8 + 0.4) / 2])
    assert clipped == 0.5
    noisy, _ = privatised_mean(grads, random.key(0), clip_norm=1.0, noise_multiplier=2.0)
    again, _ = privatised_mean(grads, random.key(0), clip_norm=1.0, noise_multiplier=2.0)
    other, _ = privatised_mean(grads, random.key(1), clip_norm=1.0, noise_multiplier=2.0)
    tree.map(np.testing.assert_array_equal, noisy, again)
    assert not np.allclose(noisy["a"], other["a"]) and not np.allclose(noisy["a"], mean["a"])


def test_dp_sgd_example_learns_the_digits_in_one_epoch(capsys):
    assert _dp_sgd_example().main(epochs=1) > 0.6
    assert "test accuracy" in capsys.readouterr().out
