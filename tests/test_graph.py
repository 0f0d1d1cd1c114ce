"""The recorded graph of one sigmoid neuron, drawn as DOT (and SVG when Graphviz is installed)."""

import shutil

import numpy as np
import pytest

import tinyfn
from tinyfn import ops

X = np.array([1.5, -0.5])


def neuron(W, b):
    """f(W, b) = sigmoid(sum_i w_i x_i + b) with n = 2."""
    return ops.sigmoid(ops.sum(W * X) + b)


def test_sigmoid_neuron_graph_has_the_expected_nodes_in_topological_order():
    g = tinyfn.graph(neuron, np.array([0.2, -0.4]), np.array(0.1))
    assert [n.name for n in g.inputs] == ["W", "b"]
    assert g.ops() == ["multiply", "sum", "add", "sigmoid"]
    assert g.nodes[-1] is g.output
    np.testing.assert_allclose(g.output.value, 1 / (1 + np.exp(-(0.2 * 1.5 + 0.4 * 0.5 + 0.1))))


def test_dot_text_names_inputs_ops_shapes_and_edges():
    dot = tinyfn.graph(neuron, np.array([0.2, -0.4]), np.array(0.1)).to_dot()
    assert dot.startswith("digraph tinyfn {") and dot.rstrip().endswith("}")
    for text in ["W\\n(2,) float64", "b\\n() float64", "multiply\\n(2,)", "sum\\n()", "sigmoid\\n()", "const\\n(2,)"]:
        assert text in dot
    assert dot.count("->") == 6  # W, x -> multiply -> sum -> add <- b, add -> sigmoid


def test_render_writes_dot_and_svg_or_explains_what_is_missing(tmp_path):
    g = tinyfn.graph(neuron, np.array([0.2, -0.4]), np.array(0.1))
    assert g.render(tmp_path / "neuron.dot").read_text() == g.to_dot()
    if shutil.which("dot"):
        assert "<svg" in g.render(tmp_path / "neuron.svg").read_text()
    else:
        with pytest.raises(RuntimeError, match="Graphviz"):
            g.render(tmp_path / "neuron.svg")
    with pytest.raises(ValueError, match=r"\.dot, \.svg"):
        g.render(tmp_path / "neuron.txt")


def test_parameter_paths_name_the_inputs_of_a_model_graph():
    model = tinyfn.layers.serial(tinyfn.layers.Dense(3), tinyfn.layers.Relu())
    _, params = model.init(tinyfn.random.key(0), (-1, 2))
    g = tinyfn.graph(lambda params: model.apply(params, np.ones((1, 2), np.float32)).sum(), params)
    assert sorted(n.name for n in g.inputs) == ["params/dense_0/b", "params/dense_0/w"]
    assert g.ops() == ["dense", "relu", "sum"]
