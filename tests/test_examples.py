"""The example scripts run and do what their docstrings say."""

import importlib.util
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sigmoid_neuron_example_writes_the_graph_and_correct_gradients(tmp_path, capsys):
    example = _load("sigmoid_neuron_graph")
    example.main(tmp_path)
    assert "sigmoid" in (tmp_path / "neuron.dot").read_text()
    printed = capsys.readouterr().out
    s = 1 / (1 + np.exp(-(0.2 * 1.5 + 0.4 * 0.5 + 0.1)))
    assert f"df/db = {s * (1 - s):.4f}" in printed


def test_iris_binary_by_hand_classifies_the_test_split_perfectly(capsys):
    assert _load("iris_binary_by_hand").main(seed=3) == 1.0


def test_residual_model_with_custom_loss_learns(capsys):
    assert _load("residual_custom_loss").main(epochs=3) > 0.9


def test_checkpoint_example_round_trips(tmp_path, capsys):
    _load("checkpoint_roundtrip").main(tmp_path)
    assert any(p.suffix == ".msgpack" for p in tmp_path.iterdir())
