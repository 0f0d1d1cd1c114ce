"""Tests of tinyfn.export.onnx and the ``tinyfn export`` command: models exported to ONNX give
tinyfn's outputs when onnxruntime runs them.

The reference is always tinyfn's own forward pass on the same input (what the exporter must
reproduce); onnxruntime computes the other side from the file alone. Every model is traced
at one batch size and run at others, and every exported model passes
``onnx.checker.check_model(..., full_check=True)`` (which runs ONNX's shape inference).
"""

import argparse

import numpy as np
import pytest

from tinyfn import checkpoint, conv, datasets, layers, ops, random, tasks
from tinyfn.cli import main
from tinyfn.export import ExportError, command, load_safetensors, to_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOLERANCE = 1e-5


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _check_export(apply, params, traced_on, run_on, *, model_state=None, tolerance=TOLERANCE, **options):
    """Export ``apply`` traced on ``traced_on`` (``options`` go to to_onnx); assert
    onnxruntime's outputs on each input of ``run_on`` match tinyfn's. Returns the model."""
    model = to_onnx(apply, params, traced_on, model_state=model_state, **options)
    onnx.checker.check_model(model, full_check=True)
    session = _session(model)
    for x in run_on:
        expected = apply(params, x) if model_state is None else apply(params, x, state=model_state)[0]
        (found,) = session.run(None, {"input": x})
        assert found.shape == expected.shape and found.dtype == expected.dtype
        np.testing.assert_allclose(found, expected, rtol=0, atol=tolerance)
    return model


def _normal(seed, shape):
    return np.asarray(random.normal(random.key(seed), shape), np.float32)


def _ops(model) -> list:
    return [node.op_type for node in model.graph.node]


def _reshape_targets(model) -> list:
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return [initializers[node.input[1]].tolist() for node in model.graph.node if node.op_type == "Reshape"]


# ----------------------------------------------------------------------------- the acceptance models


@pytest.fixture(scope="module")
def digits():
    x, _ = datasets.digits()
    return datasets.standardize(x[:64], x[64:80])[1]  # 16 standardised rows (64,), float32


def test_digits_mlp_matches_at_other_batch_sizes(digits):
    model = tasks.get_task("digits").model()
    _, params = model.init(random.key(0), (-1, 64))
    exported = _check_export(model.apply, params, digits[:3], [digits[:1], digits[3:10], digits])
    assert _ops(exported) == ["Gemm", "Relu", "Gemm", "Relu", "Gemm"]  # Dense(relu) is Gemm + Relu
    assert {i.name for i in exported.graph.initializer} == {f"dense_{i}/{p}" for i in range(3) for p in "wb"}
    batch = exported.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"


def _digits_cnn():
    return layers.serial(
        conv.Conv2D(8, 3, padding=1),
        conv.BatchNorm(),
        layers.Relu(),
        conv.MaxPool2D(2),  # -> (N, 8, 4, 4)
        conv.Conv2D(16, 3, padding="same", activation="relu"),
        conv.AvgPool2D(2),  # -> (N, 16, 2, 2)
        layers.Flatten(),
        layers.Dense(10),
        layers.LogSoftmax(),
    )


def test_digits_cnn_with_batchnorm_state_matches_at_other_batch_sizes(digits):
    model = _digits_cnn()
    _, params, state = model.init(random.key(0), (-1, 1, 8, 8))
    # running statistics unlike the initial zeros and ones, so that inference mode shows
    state = {"batch_norm_1": {"mean": _normal(1, (8,)), "var": np.exp(_normal(2, (8,)))}}
    images = digits.reshape(-1, 1, 8, 8)
    exported = _check_export(model.apply, params, images[:2], [images[:1], images[2:7], images], model_state=state)
    assert "Conv" in _ops(exported) and "MaxPool" in _ops(exported) and "AveragePool" in _ops(exported)
    assert all(target[0] in (0, -1) for target in _reshape_targets(exported))  # no batch size baked in


def _ids(seed, shape, vocab=65):
    return np.asarray(random.randint(random.key(seed), shape, 0, vocab), np.int64)


@pytest.mark.parametrize("opset", [17, 13])
def test_char_gpt_matches_at_other_batch_sizes(opset):
    model = tasks.gpt(65, context=16, width=32, depth=2, heads=4)
    _, params = model.init(random.key(0), (-1, 16))
    exported = _check_export(model.apply, params, _ids(1, (2, 16)), [_ids(2, (1, 16)), _ids(3, (5, 16))], opset=opset)
    assert ("LayerNormalization" in _ops(exported)) == (opset >= 17)  # written out below opset 17
    assert all(-1 in target or target[0] == 0 for target in _reshape_targets(exported))


@pytest.mark.parametrize("opset", [17, 13])
def test_char_gpt_with_a_dynamic_sequence_axis_matches_at_every_length_up_to_the_traced_one(opset):
    model = tasks.gpt(65, context=16, width=32, depth=2, heads=4)
    _, params = model.init(random.key(0), (-1, 16))
    inputs = [_ids(2, (3, 5)), _ids(3, (1, 16)), _ids(4, (2, 1)), _ids(5, (4, 11))]
    exported = _check_export(model.apply, params, _ids(1, (2, 16)), inputs, dynamic_axes={0: "batch", 1: "sequence"},
                             opset=opset)
    assert "Shape" in _ops(exported)  # (B * T, d) -> (B, T, d): two sizes computed at run time
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*exported.graph.input, *exported.graph.output)]
    assert dims == [["batch", "sequence"], ["batch", "sequence", 65]]


# ----------------------------------------------------------------------------- the layers and primitives


@pytest.mark.parametrize(
    "layer",
    [
        conv.Conv2D(4, 3),
        conv.Conv2D(4, 3, stride=2, padding=1),
        conv.Conv2D(6, (3, 2), stride=(1, 2), padding=(2, 1), dilation=(2, 1)),
        conv.Conv2D(6, 3, padding="same", groups=3, activation="relu"),
        conv.Conv2D(4, 1, use_bias=False),
        conv.ConvTranspose2D(4, 3),
        conv.ConvTranspose2D(4, 4, stride=2, padding=1),
        conv.ConvTranspose2D(6, 3, stride=2, padding=1, output_padding=1, groups=3),
        conv.ConvTranspose2D(2, 3, stride=2, dilation=2, output_padding=1, use_bias=False),
        conv.MaxPool2D(2),
        conv.MaxPool2D(3, stride=2, padding=1),
        conv.AvgPool2D(2),
        conv.AvgPool2D(3, stride=2, padding=1),  # padding counts in every window's size
        conv.AvgPool2D((3, 2), stride=1, padding=(1, 0)),
        conv.GlobalAvgPool2D(),
    ],
    ids=lambda layer: layer.name,
)
def test_convolution_and_pooling_layers(layer):
    _, params = layer.init(random.key(0), (-1, 3, 9, 8))
    x = _normal(1, (2, 3, 9, 8))
    _check_export(layer.apply, params, x, [_normal(2, (3, 3, 9, 8)), x[:1]])


@pytest.mark.parametrize(
    "layer",
    [
        layers.Relu(), layers.LeakyRelu(0.2), layers.Sigmoid(), layers.Tanh(), layers.Softplus(),
        layers.GELU(), layers.GELU(approximate=True), layers.Softmax(), layers.LogSoftmax(), layers.Softmax(axis=1),
        layers.Dense(5), layers.Dense(5, activation="relu"), layers.LayerNorm(), layers.LayerNorm(axis=1),
        layers.RMSNorm(), layers.Flatten(), layers.Identity(),
    ],
    ids=lambda layer: layer.name,
)
def test_elementwise_dense_and_norm_layers(layer):
    _, params = layer.init(random.key(0), (-1, 4, 6))
    x = 4 * _normal(1, (2, 4, 6))  # large enough for softplus and the softmaxes to be far from linear
    for opset in (13, 17):
        _check_export(layer.apply, params, x, [4 * _normal(2, (3, 4, 6))], opset=opset)


def test_dense_on_a_sequence_is_matmul_and_add():
    layer = layers.Dense(5)
    _, params = layer.init(random.key(0), (-1, 4, 6))
    exported = _check_export(layer.apply, params, _normal(1, (2, 4, 6)), [_normal(2, (3, 4, 6))])
    assert _ops(exported) == ["MatMul", "Add"]


def _many_primitives(params, x):
    """x (N, 3, 4) -> (N, 2): most elementwise, reduction, indexing and joining primitives."""
    y = ops.clip(x, -1.5, 2.0) + ops.abs(x) ** 2 / (1 + ops.exp(-x)) - ops.sqrt(ops.abs(x) + 1)
    y = ops.maximum(y, params["floor"]) + ops.minimum(x, 0.5) * ops.log(ops.abs(x) + 2)
    y = ops.where(params["mask"], y, -y) + ops.gelu(x) - ops.gelu(x, approximate=True)  # erf, tanh and arithmetic
    parts = ops.concatenate([y[:, 1:], y[:, :1] * 2], axis=1)
    means = ops.mean(parts, axis=1, keepdims=True)[:, 0] + y[:, 0, 1:].sum()
    stacked = ops.stack([ops.sum(parts, axis=1), means], axis=2)  # (N, 4, 2)
    peaks = ops.broadcast_to(ops.reshape(ops.max(x, axis=(1, 2)), (-1, 1, 1)), (x.shape[0], 2, 4))
    z = ops.transpose(stacked, (0, 2, 1)) + peaks
    z = ops.max(z, axis=2) + ops.max(x) + y[:, ::-1, 1] @ params["w"] + x[:, None, 2, 1:3:2].mean()
    return ops.reshape(ops.tanh(z) * ops.sigmoid(-z), (-1, 2))


def test_elementwise_reduction_indexing_and_joining_primitives():
    params = {"floor": _normal(3, (4,)), "mask": np.arange(12).reshape(3, 4) % 3 == 0, "w": _normal(4, (3, 2))}
    x = _normal(1, (2, 3, 4))
    exported = _check_export(_many_primitives, params, x, [_normal(2, (5, 3, 4)), x[:1]])
    expected = {"Clip", "Where", "Concat", "ReduceSum", "ReduceMean", "ReduceMax", "Slice", "Gather", "Expand", "Erf", "Tanh"}
    assert expected <= set(_ops(exported))


def test_attention_with_a_float_mask_that_masks_every_key_of_a_query():
    q = _normal(1, (2, 2, 3, 4))
    bias = np.zeros((3, 3), np.float32)
    bias[1] = -np.inf  # query 1 may attend to nothing: tinyfn gives it 0 (a plain softmax, NaN)
    bias[0, 0] = -np.inf  # nor may query 0, with the causal mask
    bias[2, 0] = 0.5

    def attend(params, q):
        keys, values = ops.tanh(q) * 2, q * params["scale"]
        return layers.scaled_dot_product_attention(q, keys, values, params["bias"], causal=True)

    params = {"scale": _normal(2, (4,)), "bias": bias}
    exported = _check_export(attend, params, q, [_normal(3, (3, 2, 3, 4))])
    (found,) = _session(exported).run(None, {"input": q})
    assert np.all(found[:, :, :2] == 0) and np.all(np.isfinite(found))


def test_float64_models_export_in_float64():
    layer = layers.serial(layers.Dense(3, dtype=np.float64), layers.Tanh())
    _, params = layer.init(random.key(0), (-1, 4))
    exported = _check_export(layer.apply, params, _normal(1, (2, 4)).astype(np.float64), [_normal(2, (3, 4)).astype(np.float64)],
                             tolerance=1e-12)
    assert exported.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE


# ----------------------------------------------------------------------------- options and errors


def test_a_fixed_batch_keeps_every_size_and_the_file_is_the_model(tmp_path):
    layer = layers.serial(layers.Dense(3), layers.Flatten())
    _, params = layer.init(random.key(0), (-1, 4))
    x = _normal(1, (2, 4))
    model = to_onnx(layer.apply, params, x, tmp_path / "m.onnx", dynamic_axes={}, opset=13)
    assert onnx.load(str(tmp_path / "m.onnx")) == model
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [2, 3]
    assert model.opset_import[0].version == 13
    np.testing.assert_allclose(_session(model).run(None, {"input": x})[0], layer.apply(params, x), atol=TOLERANCE)


def test_a_primitive_without_mapping_is_named():
    def train_mode_batch_norm(params, x):
        return conv.batch_norm(x, params["gamma"], params["beta"])

    params = {"gamma": np.ones(3, np.float32), "beta": np.zeros(3, np.float32)}
    with pytest.raises(ExportError, match="primitive 'batch_norm' has no ONNX mapping"):
        to_onnx(train_mode_batch_norm, params, _normal(1, (2, 3)))


def test_a_constant_shaped_by_the_batch_is_refused_unless_the_batch_is_fixed():
    def add_ones(params, x):
        return x + np.ones(x.shape, np.float32)

    with pytest.raises(ExportError, match="depends on the size of the dynamic axis 'batch'"):
        to_onnx(add_ones, {}, _normal(1, (2, 3)))
    assert to_onnx(add_ones, {}, _normal(1, (2, 3)), dynamic_axes={}).graph.node[0].op_type == "Add"


def test_a_size_that_is_not_a_multiple_of_a_dynamic_size_is_refused():
    layer = layers.serial(conv.Conv2D(2, 3), layers.Flatten())
    _, params = layer.init(random.key(0), (-1, 1, 6, 6))
    with pytest.raises(ExportError, match="size 4 .axis 2. that is not a multiple of height"):
        to_onnx(layer.apply, params, _normal(1, (2, 1, 6, 6)), dynamic_axes={0: "batch", 2: "height"})


def test_output_not_computed_from_the_input_is_refused():
    with pytest.raises(TypeError, match="computed by tinyfn primitives from its input"):
        to_onnx(lambda params, x: params["w"], {"w": np.ones(2, np.float32)}, _normal(1, (2, 3)))


@pytest.mark.parametrize("opset", [12, 18, "17"])
def test_opsets_outside_13_to_17_are_refused(opset):
    with pytest.raises(ExportError, match="expected an opset from 13 to 17"):
        to_onnx(layers.Relu().apply, {}, _normal(1, (2, 3)), opset=opset)


def test_an_empty_example_batch_is_refused():
    with pytest.raises(ExportError, match="needs an example of size >= 1 there, found shape"):
        to_onnx(layers.Relu().apply, {}, np.zeros((0, 3), np.float32))


# ----------------------------------------------------------------------------- the command


def _export(*argv) -> int:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args([str(a) for a in argv]))


def test_export_command_on_a_digits_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "digits", "--epochs", "1", "--out", str(run), "--no-progress"]) == 0
    assert _export(run / "checkpoint.msgpack", "--onnx", tmp_path / "m.onnx", "--safetensors", tmp_path / "w.safetensors") == 0
    saved = checkpoint.load(run / "checkpoint.msgpack")["state"]
    data = tasks.get_task("digits").load(0, None)
    model = tasks.get_task("digits").model()
    (found,) = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": data.x_test})
    np.testing.assert_allclose(found, model.apply(saved["params"], data.x_test), atol=TOLERANCE)
    weights = load_safetensors(tmp_path / "w.safetensors")
    assert all(np.array_equal(weights[layer][p], saved["params"][layer][p]) for layer in saved["params"] for p in "wb")
    assert "wrote" in capsys.readouterr().out


def test_export_command_on_a_text_run(tmp_path):
    vocabulary = "\n !',.?abcdefghijklmnopqrstuvwxyz"
    settings = {"context": 8, "width": 16, "depth": 1, "heads": 2}
    model = tasks.gpt(len(vocabulary), **settings)
    _, params = model.init(random.key(0), (-1, 8))
    config = {"task": "shakespeare-char", "seed": 0, "model": settings, "vocabulary": vocabulary, "validation_windows": 4}
    checkpoint.save(tmp_path / "best.msgpack", {"state": {"params": params, "model_state": {}}, "history": {"step": [1]}},
                    metadata={"config": config})
    assert _export(tmp_path / "best.msgpack", "--onnx", tmp_path / "gpt.onnx", "--opset", "13") == 0
    session = ort.InferenceSession(str(tmp_path / "gpt.onnx"), providers=["CPUExecutionProvider"])
    for shape in [(3, 8), (2, 5)]:  # any batch, any length up to the context
        ids = _ids(1, shape, len(vocabulary))
        np.testing.assert_allclose(session.run(None, {"input": ids})[0], model.apply(params, ids), atol=TOLERANCE)


def test_export_command_mistakes_are_one_line_value_errors(tmp_path):
    with pytest.raises(ValueError, match="expected --onnx FILE, --safetensors FILE or both"):
        _export(tmp_path / "none.msgpack")
    with pytest.raises(ValueError, match="found nothing at"):
        _export(tmp_path / "none.msgpack", "--onnx", tmp_path / "m.onnx")
    checkpoint.save(tmp_path / "other.msgpack", {"w": np.ones(2)}, metadata={"config": {"task": "chess"}})
    with pytest.raises(ValueError, match="known task in its metadata, found the task 'chess'"):
        _export(tmp_path / "other.msgpack", "--onnx", tmp_path / "m.onnx")
    config = {"task": "shakespeare-char", "model": {"context": 8, "colour": 3}, "vocabulary": "ab"}
    checkpoint.save(tmp_path / "text.msgpack", {"w": np.ones(2)}, metadata={"config": config})
    with pytest.raises(ValueError, match="settings .* do not make a shakespeare-char model .TypeError"):
        _export(tmp_path / "text.msgpack", "--onnx", tmp_path / "m.onnx")
    checkpoint.save(tmp_path / "iris.msgpack", {"state": {"params": {"dense_0": {"w": np.ones((4, 3), np.float32)}}}},
                    metadata={"config": {"task": "iris", "seed": 0}})
    with pytest.raises(ValueError, match="the params do not fit the task's model: expected dense_0/b"):
        _export(tmp_path / "iris.msgpack", "--onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
