"""Tests of tinyfn.export.torch_weights: PyTorch state dicts loaded into the matching tinyfn
models give PyTorch's outputs (PyTorch computes the expected values), and layers that do not
pair up are refused with messages naming both sides.
"""

import numpy as np
import pytest

from tinyfn import conv, layers, random
from tinyfn.export import params_from_torch

TOLERANCE = 1e-5


def _inputs(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_arrays_are_placed_and_linear_weights_transposed_without_torch():
    model = layers.serial(layers.Dense(3, activation="relu"), layers.LayerNorm(), layers.Dense(2))
    _, template = model.init(random.key(0), (-1, 4))
    weight0 = np.arange(12, dtype=np.float64).reshape(3, 4)  # PyTorch's (out, in)
    state_dict = {
        "0.weight": weight0, "0.bias": np.array([1.0, 2.0, 3.0]),
        "norm.weight": np.full(3, 2.0), "norm.bias": np.full(3, -1.0),
        "head.weight": np.ones((2, 3)), "head.bias": np.zeros(2),
    }  # fmt: skip
    params = params_from_torch(model, state_dict, template)
    assert np.array_equal(params["dense_0"]["w"], weight0.T) and params["dense_0"]["w"].dtype == np.float32
    assert np.array_equal(params["dense_0"]["b"], [1, 2, 3])
    assert np.array_equal(params["layer_norm_1"]["gamma"], [2, 2, 2]) and np.array_equal(params["layer_norm_1"]["beta"], [-1, -1, -1])
    assert params["dense_2"]["w"].shape == (3, 2) and not params["dense_2"]["w"].flags.writeable


def test_a_pytorch_mlp_gives_the_same_logits():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10))
    model = layers.serial(layers.Dense(32, activation="relu"), layers.Dense(16), layers.Tanh(), layers.Dense(10))
    _, template = model.init(random.key(0), (-1, 64))
    params = params_from_torch(model, net.state_dict(), template)
    x = _inputs((7, 64))
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.apply(params, x), expected, rtol=0, atol=TOLERANCE)


def test_a_pytorch_cnn_gives_the_same_logits():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2), nn.ReLU(),
        nn.ConvTranspose2d(16, 4, 2, stride=2), nn.Flatten(), nn.Linear(4 * 4 * 4, 10),
    )  # fmt: skip
    model = layers.serial(
        conv.Conv2D(8, 3, padding=1, activation="relu"), conv.MaxPool2D(2),
        conv.Conv2D(16, 3, stride=2, padding=1, groups=2), layers.Relu(),
        conv.ConvTranspose2D(4, 2, stride=2), layers.Flatten(), layers.Dense(10),
    )  # fmt: skip
    _, template = model.init(random.key(0), (-1, 1, 8, 8))
    params = params_from_torch(model, net.state_dict(), template)
    x = _inputs((5, 1, 8, 8))
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.apply(params, x), expected, rtol=0, atol=TOLERANCE)


def test_pytorch_embeddings_and_layer_norm_give_the_same_outputs():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(20, 8), nn.Embedding(6, 8)
            self.ln, self.head = nn.LayerNorm(8), nn.Linear(8, 5)
            nn.init.normal_(self.ln.weight)
            nn.init.normal_(self.ln.bias)

        def forward(self, ids):
            return self.head(self.ln(self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))))

    net = Net()
    model = layers.serial(layers.Embedding(20, 8), layers.PositionalEmbedding(6, 8), layers.LayerNorm(), layers.Dense(5))
    _, template = model.init(random.key(0), (-1, 6))
    params = params_from_torch(model, net.state_dict(), template)
    ids = np.random.default_rng(0).integers(0, 20, (3, 5))
    with torch.no_grad():
        expected = net(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(model.apply(params, ids), expected, rtol=0, atol=TOLERANCE)


def test_layers_that_do_not_pair_up_are_refused():
    model = layers.serial(layers.Dense(3), layers.Dense(2))
    _, template = model.init(random.key(0), (-1, 4))
    one = {"fc.weight": np.ones((3, 4)), "fc.bias": np.ones(3)}
    with pytest.raises(ValueError, match=r"2 layers with params \(dense_0, dense_1\), the state_dict 1 modules with a weight \(fc\)"):
        params_from_torch(model, one, template)
    transposed = {**one, "out.weight": np.ones((3, 2)), "out.bias": np.ones(2)}
    with pytest.raises(ValueError, match=r"dense_1 \(dense\) and out: expected w of shape \(3, 2\) from out.weight \(as weight.T\), found \(2, 3\)"):
        params_from_torch(model, transposed, template)
    no_bias = {**one, "out.weight": np.ones((2, 3))}
    with pytest.raises(ValueError, match=r"expected the PyTorch fields \['bias', 'weight'\], found \['weight'\]"):
        params_from_torch(model, no_bias, template)
    stateful = layers.serial(conv.Conv2D(2, 1), conv.BatchNorm())
    _, template, _ = stateful.init(random.key(0), (-1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"batch_norm_1 \(batch_norm\) has no PyTorch mapping"):
        params_from_torch(stateful, {}, template)
