"""Recurrent layers: one step against the gate equations written out here in numpy (PyTorch's
gate order), whole sequences against torch.nn.RNN/LSTM/GRU with copied weights, the kernels
against the steps in tinyfn operations, first and second derivatives against finite
differences (float64), the generic fold ``scan``, bad inputs, and the character-LSTM example."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import tinyfn
from tinyfn import layers, losses, ops, random, transforms, tree
from tinyfn.kernels import threads
from tinyfn.layers import ParamError
from tinyfn.layers import recurrent as R
from tinyfn.testing import arrays, check_grads

from gradient_registry import covers

CELLS = {"lstm": R.LSTMCell, "gru": R.GRUCell, "rnn_tanh": R.RNNCell, "rnn_relu": lambda h, **kw: R.RNNCell(h, "relu", **kw)}
LAYERS = {"lstm": R.LSTM, "gru": R.GRU, "rnn_tanh": R.RNN, "rnn_relu": lambda h, **kw: R.RNN(h, "relu", **kw)}


def normal(seed, shape, dtype=np.float64):
    return random.normal(random.key(seed), shape, dtype)


def cell_params(kind, features, hidden, seed=0, dtype=np.float64):
    """A cell's params drawn from N(0, 1/2) (larger than the default, so gates leave the linear range)."""
    _, params = CELLS[kind](hidden, dtype=dtype).init(random.key(seed), (1, features))
    return {name: 0.7 * normal(seed + i + 1, p.shape, dtype) for i, (name, p) in enumerate(sorted(params.items()))}


def initial_carry(kind, batch, hidden, seed, dtype=np.float64):
    h = normal(seed, (batch, hidden), dtype)
    return (h, normal(seed + 1, (batch, hidden), dtype)) if kind == "lstm" else h


# ----------------------------------------------------------------------------- the equations, by hand


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def step_by_hand(kind, p, carry, x):
    """One step of each cell from its equations in PyTorch's documentation, gate by gate."""
    h = carry[0] if kind == "lstm" else carry
    hidden = h.shape[1]

    def block(k, weight, bias, inputs):  # rows k*H:(k+1)*H of a stacked weight
        rows = slice(k * hidden, (k + 1) * hidden)
        return inputs @ p[weight][rows].T + p[bias][rows]

    if kind == "lstm":
        c = carry[1]
        i, f, g, o = (block(k, "weight_ih", "bias_ih", x) + block(k, "weight_hh", "bias_hh", h) for k in range(4))
        i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        return (h_new, c_new), h_new
    if kind == "gru":
        r = sigmoid(block(0, "weight_ih", "bias_ih", x) + block(0, "weight_hh", "bias_hh", h))
        z = sigmoid(block(1, "weight_ih", "bias_ih", x) + block(1, "weight_hh", "bias_hh", h))
        n = np.tanh(block(2, "weight_ih", "bias_ih", x) + r * block(2, "weight_hh", "bias_hh", h))
        h_new = (1 - z) * n + z * h
        return h_new, h_new
    pre = block(0, "weight_ih", "bias_ih", x) + block(0, "weight_hh", "bias_hh", h)
    h_new = np.tanh(pre) if kind == "rnn_tanh" else np.maximum(pre, 0)
    return h_new, h_new


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_step_follows_the_gate_equations_in_pytorchs_order(kind, dtype):
    batch, features, hidden = 3, 4, 5
    p = cell_params(kind, features, hidden, dtype=dtype)
    carry, x = initial_carry(kind, batch, hidden, 10, dtype), normal(20, (batch, features), dtype)
    expected_carry, expected_y = step_by_hand(kind, tree.map(np.float64, p), tree.map(np.float64, carry), x.astype(np.float64))
    found_carry, found_y = CELLS[kind](hidden, dtype=dtype).apply(p, carry, x)
    tolerance = dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(found_y, expected_y, **tolerance)
    for found, expected in zip(tree.leaves(found_carry), tree.leaves(expected_carry)):
        assert found.dtype == dtype
        np.testing.assert_allclose(found, expected, **tolerance)


@pytest.mark.parametrize("kind", CELLS)
def test_a_layer_over_a_sequence_is_the_cell_step_after_step(kind):
    batch, steps, features, hidden = 2, 6, 3, 4
    p = cell_params(kind, features, hidden)
    carry, xs = initial_carry(kind, batch, hidden, 10), normal(20, (batch, steps, features))
    ys, final = LAYERS[kind](hidden, return_state=True, dtype=np.float64).apply(p, xs, carry=carry)
    for t in range(steps):
        carry, y = step_by_hand(kind, p, carry, xs[:, t])
        np.testing.assert_allclose(ys[:, t], y, rtol=1e-12, atol=1e-14)
    for found, expected in zip(tree.leaves(final), tree.leaves(carry)):
        np.testing.assert_allclose(found, expected, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- against PyTorch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def torch_module(torch, kind, features, hidden, cell=False):
    nn = torch.nn
    if kind == "lstm":
        return (nn.LSTMCell if cell else nn.LSTM)(features, hidden, **({} if cell else {"batch_first": True}))
    if kind == "gru":
        return (nn.GRUCell if cell else nn.GRU)(features, hidden, **({} if cell else {"batch_first": True}))
    nonlinearity = kind.removeprefix("rnn_")
    return (nn.RNNCell if cell else nn.RNN)(features, hidden, nonlinearity=nonlinearity, **({} if cell else {"batch_first": True}))


def torch_params(module) -> dict:
    """A torch module's weights as tinyfn params: the same names without the layer suffix."""
    return {name.removesuffix("_l0"): value.detach().numpy().copy() for name, value in module.state_dict().items()}


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_sequence_and_its_gradients_equal_pytorchs(torch, kind, dtype):
    batch, steps, features, hidden = 3, 7, 4, 5
    torch.manual_seed(0)
    module = torch_module(torch, kind, features, hidden).to(getattr(torch, np.dtype(dtype).name))
    params = torch_params(module)
    xs, carry = normal(1, (batch, steps, features), dtype), initial_carry(kind, batch, hidden, 2, dtype)
    g_ys, g_carry = normal(4, (batch, steps, hidden), dtype), initial_carry(kind, batch, hidden, 5, dtype)

    x_t = torch.tensor(xs, requires_grad=True)
    carry_t = tree.map(lambda a: torch.tensor(a[None], requires_grad=True), carry)  # torch: (layers, batch, H)
    ys_t, final_t = module(x_t, carry_t)
    torch.autograd.backward([ys_t, *tree.leaves(final_t)], [torch.tensor(g_ys), *[torch.tensor(a[None]) for a in tree.leaves(g_carry)]])

    layer = LAYERS[kind](hidden, return_state=True, dtype=dtype)
    (ys, final), backward = tinyfn.vjp(lambda p, x, c: layer.apply(p, x, carry=c), params, xs, carry)
    d_params, d_xs, d_carry = backward((g_ys, g_carry))

    tolerance = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(ys, ys_t.detach().numpy(), **tolerance)
    for ours, theirs in zip(tree.leaves(final), tree.leaves(final_t)):
        np.testing.assert_allclose(ours, theirs.detach().numpy()[0], **tolerance)
    np.testing.assert_allclose(d_xs, x_t.grad.numpy(), **tolerance)
    for ours, theirs in zip(tree.leaves(d_carry), tree.leaves(carry_t)):
        np.testing.assert_allclose(ours, theirs.grad.numpy()[0], **tolerance)
    for name, value in module.named_parameters():
        np.testing.assert_allclose(d_params[name.removesuffix("_l0")], value.grad.numpy(), **tolerance)


@pytest.mark.parametrize("kind", CELLS)
def test_a_cell_step_equals_pytorchs_cell(torch, kind):
    batch, features, hidden = 3, 4, 5
    torch.manual_seed(1)
    module = torch_module(torch, kind, features, hidden, cell=True).double()
    x, carry = normal(1, (batch, features)), initial_carry(kind, batch, hidden, 2)
    expected = module(torch.tensor(x), tree.map(torch.tensor, carry))
    found, y = CELLS[kind](hidden).apply(torch_params(module), carry, x)
    for ours, theirs in zip(tree.leaves(found), tree.leaves(expected)):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_the_default_initialisation_is_pytorchs_uniform_range():
    _, params = R.LSTM(64).init(random.key(0), (-1, 10, 3))
    shapes = {name: p.shape for name, p in params.items()}
    assert shapes == {"weight_ih": (256, 3), "weight_hh": (256, 64), "bias_ih": (256,), "bias_hh": (256,)}
    bound = 1 / np.sqrt(64)
    for p in params.values():
        assert p.dtype == np.float32 and not p.flags.writeable
        assert np.all(np.abs(p) <= bound) and np.abs(p).max() > 0.9 * bound


# ----------------------------------------------------------------------------- the kernels against the tinyfn-operation steps


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@settings(max_examples=10)
@given(batch=st.integers(1, 4), steps=st.integers(1, 5), hidden=st.integers(1, 6), seed=st.integers(0, 100))
def test_the_kernels_compute_what_the_steps_in_tinyfn_operations_compute(kind, dtype, batch, steps, hidden, seed):
    cell = R._KINDS[kind]
    xw, state = normal(seed, (batch, steps, cell.blocks * hidden), dtype), normal(seed + 1, (batch, cell.state_width * hidden), dtype)
    weight_hh, bias_hh = normal(seed + 2, (cell.blocks * hidden, hidden), dtype), normal(seed + 3, (cell.blocks * hidden,), dtype)
    g = normal(seed + 4, (batch, steps, cell.state_width * hidden), dtype)
    tolerance = dict(rtol=1e-12, atol=1e-13) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)

    kernel_states, kernel_saved = R._forward_kernels(cell, xw, state, weight_hh, bias_hh)
    op_states, op_saved = R._forward_ops(cell, xw, state, weight_hh, bias_hh)
    np.testing.assert_allclose(kernel_states, op_states, **tolerance)
    # the kernels keep each step's saved blocks side by side: (batch, T, S)
    np.testing.assert_allclose(kernel_saved, np.stack([np.concatenate(s, axis=1) for s in op_saved], axis=1), **tolerance)

    by_kernels = R._backward_kernels(cell, g, kernel_states, kernel_saved, weight_hh)
    by_ops = R._backward_ops(cell, g, op_states, op_saved, weight_hh)
    for found, expected in zip(by_kernels, by_ops):  # d_xw, d_hw, d_state
        np.testing.assert_allclose(found, expected, **tolerance)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=10)
@given(batch=st.integers(1, 4), steps=st.integers(1, 5), hidden=st.integers(1, 6), seed=st.integers(0, 100))
def test_the_loops_in_numba_compute_what_the_python_loops_compute(kind, dtype, batch, steps, hidden, seed):
    """The loops over time run in Numba, calling numpy's BLAS themselves, or from Python;
    the same products and the same kernels, so the same numbers."""
    from tinyfn.kernels import blas

    assert blas.gemm_address(dtype) is not None  # numpy's bundled OpenBLAS: otherwise only the Python loop is tested
    cell = R._KINDS[kind]
    rows, width = cell.blocks * hidden, cell.state_width * hidden
    xw, state = normal(seed, (batch, steps, rows), dtype), normal(seed + 1, (batch, width), dtype)
    weight_hh, bias_hh = normal(seed + 2, (rows, hidden), dtype), normal(seed + 3, (rows,), dtype)
    g = normal(seed + 4, (batch, steps, width), dtype)
    results = []
    for numba_loops in (True, False):
        R.USE_NUMBA_LOOPS = numba_loops
        try:
            states, saved = R._forward_kernels(cell, xw, state, weight_hh, bias_hh)
            results.append((states, saved, *R._backward_kernels(cell, g, states, saved, weight_hh)))
        finally:
            R.USE_NUMBA_LOOPS = True
    tolerance = dict(rtol=1e-13, atol=1e-14) if dtype == np.float64 else dict(rtol=1e-6, atol=1e-6)
    for found, expected in zip(*results, strict=True):
        np.testing.assert_allclose(found, expected, **tolerance)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_results_do_not_depend_on_the_threads_or_the_blas_policy(kind, monkeypatch):
    batch, steps, features, hidden = 7, 9, 3, 8
    layer, p = LAYERS[kind](hidden, dtype=np.float32), cell_params(kind, features, hidden, dtype=np.float32)
    xs = normal(3, (batch, steps, features), np.float32)

    def value_and_grad():
        return tinyfn.value_and_grad(lambda p: ops.sum(layer.apply(p, xs) ** 2))(p)

    monkeypatch.setattr(threads, "_threads", 1)
    expected = value_and_grad()
    for count, policy in ((3, 1), (2, None)):
        monkeypatch.setattr(threads, "_threads", count)
        monkeypatch.setattr(R, "STEP_BLAS_THREADS", policy)
        for found, want in zip(tree.leaves(value_and_grad()), tree.leaves(expected)):
            np.testing.assert_allclose(found, want, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- derivatives


@st.composite
def sequences(draw, kinds=tuple(CELLS)):
    """``(kind, params, carry, xs)``: a small float64 problem, gates away from relu's kink."""
    kind = draw(st.sampled_from(kinds))
    batch, steps, features, hidden = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    p = cell_params(kind, features, hidden, seed=draw(st.integers(0, 50)))
    xs = draw(arrays((batch, steps, features)))
    carry = tree.map(lambda a: 0.5 * a, initial_carry(kind, batch, hidden, draw(st.integers(0, 50))))
    return kind, p, carry, xs


def away_from_relu_kink(kind, p, carry, xs) -> bool:
    """True unless a relu RNN's pre-activation comes within a finite-difference step of 0."""
    if kind != "rnn_relu":
        return True
    h = carry
    for t in range(xs.shape[1]):
        pre = xs[:, t] @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T + p["bias_hh"]
        if np.abs(pre).min() < 1e-3:
            return False
        h = np.maximum(pre, 0)
    return True


@covers("recurrence", order=2)
@settings(max_examples=12)
@given(problem=sequences())
def test_layer_gradients_of_first_and_second_order_agree_with_finite_differences(problem):
    kind, p, carry, xs = problem
    assume(away_from_relu_kink(kind, p, carry, xs))
    layer = LAYERS[kind](p["weight_hh"].shape[1], return_state=True, dtype=np.float64)
    check_grads(lambda p, c, x: layer.apply(p, x, carry=c), (p, carry, xs), order=2)


@given(problem=sequences(kinds=("lstm", "gru")))
@settings(max_examples=6)
def test_forward_mode_through_the_kernels_agrees_with_finite_differences(problem):
    # jvp transposes the VJP: the forward runs the kernels, the VJP then meets a traced cotangent
    kind, p, carry, xs = problem
    layer = LAYERS[kind](p["weight_hh"].shape[1], dtype=np.float64)
    tangent = tree.map(lambda a: normal(7, a.shape), p)
    _, found = transforms.jvp(lambda p: layer.apply(p, xs, carry=carry), (p,), (tangent,))
    eps = 1e-6
    shifted = [layer.apply(tree.map(lambda a, t: a + s * eps * t, p, tangent), xs, carry=carry) for s in (1, -1)]
    np.testing.assert_allclose(found, (shifted[0] - shifted[1]) / (2 * eps), rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------- scan: a fold over time, for any cell


def leaky_cell(p, carry, x):
    """A small cell written in tinyfn operations: a pytree carry and a pytree output."""
    h, total = carry
    h_new = ops.tanh(x @ p["w"] + h @ p["u"]) * p["a"] + 0.5 * h
    return (h_new, total + ops.sum(h_new, axis=1)), {"h": h_new, "square": h_new * h_new}


def leaky_by_hand(p, carry, xs):
    h, total = carry
    hs = []
    for t in range(xs.shape[1]):
        h = np.tanh(xs[:, t] @ p["w"] + h @ p["u"]) * p["a"] + 0.5 * h
        total = total + h.sum(axis=1)
        hs.append(h)
    return (h, total), np.stack(hs, axis=1)


def leaky_problem(batch=2, steps=3, features=2, hidden=2, seed=0):
    p = {"w": normal(seed, (features, hidden)), "u": normal(seed + 1, (hidden, hidden)), "a": normal(seed + 2, (hidden,))}
    carry = (normal(seed + 3, (batch, hidden)), normal(seed + 4, (batch,)))
    return p, carry, normal(seed + 5, (batch, steps, features))


def test_scan_folds_the_cell_over_the_steps_traced_or_not():
    p, carry, xs = leaky_problem(steps=5)
    (h, total), hs = leaky_by_hand(p, carry, xs)
    plain = R.scan(leaky_cell, p, carry, xs)
    traced, _ = tinyfn.vjp(lambda p: R.scan(leaky_cell, p, carry, xs), p)
    for (found_h, found_total), ys in (plain, traced):
        np.testing.assert_allclose(found_h, h, rtol=1e-12)
        np.testing.assert_allclose(found_total, total, rtol=1e-12)
        np.testing.assert_allclose(ys["h"], hs, rtol=1e-12)
        np.testing.assert_allclose(ys["square"], hs**2, rtol=1e-12)


def test_scan_runs_along_any_axis():
    p, carry, xs = leaky_problem(steps=4)
    time_major = np.ascontiguousarray(xs.transpose(1, 0, 2))
    (h, _), ys = R.scan(leaky_cell, p, carry, time_major, axis=0)
    (expected_h, _), hs = leaky_by_hand(p, carry, xs)
    np.testing.assert_allclose(h, expected_h, rtol=1e-12)
    np.testing.assert_allclose(ys["h"], hs.transpose(1, 0, 2), rtol=1e-12)


@covers("scan", order=2)
@settings(max_examples=8)
@given(batch=st.integers(1, 2), steps=st.integers(1, 3), features=st.integers(1, 2), hidden=st.integers(1, 2), seed=st.integers(0, 50))
def test_scan_gradients_of_first_and_second_order_agree_with_finite_differences(batch, steps, features, hidden, seed):
    p, carry, xs = leaky_problem(batch, steps, features, hidden, seed)
    check_grads(lambda p, c, x: R.scan(leaky_cell, p, c, x), (p, carry, xs), order=2)


def test_scan_reads_integer_inputs_as_constants():
    from tinyfn.layers.embedding import embedding_lookup

    def cell(p, h, ids):
        h_new = ops.tanh(embedding_lookup(p["table"], ids) + h @ p["u"])
        return h_new, h_new

    p = {"table": normal(0, (5, 3)), "u": normal(1, (3, 3))}
    ids, h0 = random.randint(random.key(2), (2, 4), 0, 5), normal(3, (2, 3))
    h, hs = h0, []
    for t in range(4):
        h = np.tanh(p["table"][ids[:, t]] + h @ p["u"])
        hs.append(h)
    np.testing.assert_allclose(tinyfn.vjp(lambda p: R.scan(cell, p, h0, ids)[1], p)[0], np.stack(hs, axis=1), rtol=1e-12)
    check_grads(lambda p, h0: R.scan(cell, p, h0, ids)[1], (p, h0), order=2)


def test_a_long_scan_of_the_lstm_cell_equals_the_lstm_layer_with_its_gradients():
    batch, steps, features, hidden = 2, 300, 3, 4  # the tape holds thousands of nodes: no recursion
    cell, p = R.LSTMCell(hidden, dtype=np.float64), cell_params("lstm", features, hidden)
    xs, carry = 0.5 * normal(1, (batch, steps, features)), initial_carry("lstm", batch, hidden, 2)

    def loss_by_scan(p, xs):
        (h, c), ys = R.scan(cell.apply, p, carry, xs)
        return ops.sum(ys * ys) + ops.sum(c)

    def loss_by_layer(p, xs):
        ys, (h, c) = R.LSTM(hidden, return_state=True).apply(p, xs, carry=carry)
        return ops.sum(ys * ys) + ops.sum(c)

    value, grads = tinyfn.value_and_grad(loss_by_scan, argnums=(0, 1))(p, xs)
    expected_value, expected_grads = tinyfn.value_and_grad(loss_by_layer, argnums=(0, 1))(p, xs)
    np.testing.assert_allclose(value, expected_value, rtol=1e-12)
    for found, expected in zip(tree.leaves(grads), tree.leaves(expected_grads)):
        np.testing.assert_allclose(found, expected, rtol=1e-9, atol=1e-12)


def test_scan_layer_runs_a_cell_of_ones_own():
    hidden = 3

    def init(key, input_shape):
        keys = random.split(key, 3)
        params = {"w": random.normal(keys[0], (input_shape[-1], hidden), np.float64), "u": random.normal(keys[1], (hidden, hidden), np.float64),
                  "a": random.normal(keys[2], (hidden,), np.float64)}
        return (input_shape[0], hidden), params

    def apply(p, carry, x):
        (h, total), ys = leaky_cell(p, (carry, np.zeros(x.shape[0])), x)
        return h, ys["h"]

    cell = R.Cell(init, apply, lambda batch, dtype: np.zeros((batch, hidden), dtype), name="leaky")
    model = layers.serial(R.Scan(cell), layers.Dense(2))
    out_shape, params = model.init(random.key(0), (-1, 5, 4))
    assert out_shape == (-1, 5, 2) and sorted(params) == ["dense_1", "leaky_0"]
    xs = normal(3, (2, 5, 4))
    _, hs = leaky_by_hand(params["leaky_0"], (np.zeros((2, hidden)), np.zeros(2)), xs)
    np.testing.assert_allclose(model.apply(params, xs), hs @ params["dense_1"]["w"] + params["dense_1"]["b"], rtol=1e-12)


def test_layers_name_their_params_and_report_shapes_in_a_model():
    model = layers.serial(R.GRU(8), R.LSTM(6, return_state=True))
    out_shape, params = model.init(random.key(0), (-1, 10, 3))
    assert out_shape == ((-1, 10, 6), ((-1, 6), (-1, 6)))
    assert sorted(params) == ["gru_0", "lstm_1"] and params["lstm_1"]["weight_ih"].shape == (24, 8)
    ys, (h, c) = model.apply(params, normal(0, (4, 10, 3), np.float32))
    assert ys.shape == (4, 10, 6) and ys.dtype == np.float32
    np.testing.assert_array_equal(h, ys[:, -1])


def test_an_lstm_model_trains_the_same_with_a_static_graph():
    model = layers.serial(R.LSTM(5), layers.Dense(3))
    _, params = model.init(random.key(1), (-1, 4, 3))

    def loss(p, x, y):
        return losses.softmax_cross_entropy(model.apply(p, x), y)

    eager, static = tinyfn.value_and_grad(loss), tinyfn.value_and_grad(loss, static_graph=True)
    for seed in (0, 1):
        x, y = normal(seed, (2, 4, 3), np.float32), random.randint(random.key(seed), (2, 4), 0, 3)
        (value, grads), (expected_value, expected_grads) = static(params, x, y), eager(params, x, y)
        np.testing.assert_allclose(value, expected_value, rtol=1e-6)
        for found, expected in zip(tree.leaves(grads), tree.leaves(expected_grads)):
            np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- bad inputs


def lstm_params(features=3, hidden=5):
    return R.LSTM(hidden).init(random.key(0), (-1, 4, features))[1]


def bad_apply(layer, params, xs, **kw):
    return lambda: layer.apply(params, xs, **kw)


x_ok = np.zeros((2, 4, 3), np.float32)
h_ok = np.zeros((2, 5), np.float32)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (bad_apply(R.LSTM(5), lstm_params(), np.zeros((2, 4, 4), np.float32)), ValueError, r"LSTMCell\(5\): expected an input \(batch, T, 3\) with T >= 1, found shape \(2, 4, 4\)"),
        (bad_apply(R.LSTM(5), lstm_params(), np.zeros((2, 3), np.float32)), ValueError, r"expected an input \(batch, T, 3\) with T >= 1, found shape \(2, 3\)"),
        (bad_apply(R.LSTM(5), lstm_params(), np.zeros((2, 0, 3), np.float32)), ValueError, r"with T >= 1, found shape \(2, 0, 3\)"),
        (bad_apply(R.LSTM(5), lstm_params(), [[[0.0] * 3]]), TypeError, r"expected an array input, found list"),
        (bad_apply(R.LSTM(5), lstm_params(), x_ok, carry=h_ok), ValueError, r"expected the carry \(h, c\), two arrays of shape \(2, 5\), found \(2, 5\)"),
        (bad_apply(R.LSTM(5), lstm_params(), x_ok, carry=(h_ok, np.zeros((2, 6)))), ValueError, r"two arrays of shape \(2, 5\), found \['\(2, 5\)', '\(2, 6\)'\]"),
        (bad_apply(R.GRU(5), R.GRU(5).init(random.key(0), (-1, 4, 3))[1], x_ok, carry=np.zeros((3, 5))), ValueError, r"GRUCell\(5\): expected the carry h of shape \(2, 5\), found \(3, 5\)"),
        (bad_apply(R.LSTM(5), {**lstm_params(), "weight_hh": np.zeros((20, 4))}, x_ok), ParamError, r"params/weight_hh: LSTMCell\(5\) expected shape \(20, 5\), found \(20, 4\)"),
        (bad_apply(R.LSTM(5), {k: v for k, v in lstm_params().items() if k != "bias_ih"}, x_ok), ParamError, r"params/bias_ih: missing"),
        (bad_apply(R.LSTM(5), {**lstm_params(), "w": np.zeros(3)}, x_ok), ParamError, r"params/w: LSTMCell\(5\) has no parameter 'w'"),
        (bad_apply(R.LSTM(5), R.GRU(5).init(random.key(0), (-1, 4, 3))[1], x_ok), ParamError, r"params/weight_ih: LSTMCell\(5\) expected shape \(20, \?\), found \(15, 3\)"),
        (lambda: R.LSTMCell(5).apply(lstm_params(), (h_ok, h_ok), x_ok), ValueError, r"LSTMCell\(5\): expected one step's input \(batch, features\), found shape \(2, 4, 3\)"),
        (lambda: R.LSTM(5).init(random.key(0), (-1, 3)), ValueError, r"Scan\(lstm\): expected an input shape \(batch, T, features\), found \(N, 3\)"),
        (lambda: R.RNN(5, nonlinearity="sigmoid"), ValueError, r"nonlinearity must be one of \('tanh', 'relu'\), found 'sigmoid'"),
        (lambda: R.GRU(0), ValueError, r"GRUCell: hidden"),
        (lambda: R.Scan(layers.Dense(3)), TypeError, r"Scan: expected a Cell \(such as LSTMCell\(128\)\), found Layer"),
        (lambda: R.recurrence(np.zeros((2, 3, 8)), np.zeros((2, 4)), np.zeros((8, 2)), np.zeros(8), cell="lstm2"), ValueError, r"cell must be one of \['gru', 'lstm', 'rnn_relu', 'rnn_tanh'\], found 'lstm2'"),
        (lambda: R.recurrence(np.zeros((2, 3, 8)), np.zeros((2, 4)), np.zeros((8, 3)), np.zeros(8)), ValueError, r"expected weight_hh of shape \(4\*H, H\), found \(8, 3\)"),
        (lambda: R.recurrence(np.zeros((3, 3, 8)), np.zeros((2, 4)), np.zeros((8, 2)), np.zeros(8)), ValueError, r"expected xw of shape \(2, \?, 8\), found \(3, 3, 8\)"),
        (lambda: R.recurrence(np.zeros((2, 3, 8)), np.zeros((2, 4)), np.zeros((8, 2)), np.zeros(4)), ValueError, r"expected bias_hh of shape \(8,\), found \(4,\)"),
        (lambda: R.scan(leaky_cell, *leaky_problem()[:2], np.zeros((2, 0, 2))), ValueError, r"scan: expected xs with at least one step along axis 1, found shape \(2, 0, 2\)"),
    ],
)
def test_bad_inputs_name_what_was_expected_and_found(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_scan_refuses_a_carry_that_changes_shape():
    p, carry, xs = leaky_problem()

    def growing(p, carry, x):
        (h, total), y = leaky_cell(p, carry, x)
        return (ops.concatenate([h, h], axis=1), total), y

    with pytest.raises(ValueError, match=r"scan: the cell must return a carry shaped like the one it was given, expected \(\(2, 2\), \(2,\)\), found \(\(2, 4\), \(2,\)\)"):
        R.scan(growing, p, carry, xs)


def test_a_traced_value_in_the_cells_closure_is_refused_unless_scan_gets_nothing_traced():
    p, carry, xs = leaky_problem()

    def loss(p, scale):
        def scaled(p, carry, x):
            (h, total), y = leaky_cell(p, carry, x)
            return (h * scale, total), y

        return ops.sum(R.scan(scaled, p, carry, xs)[1]["h"])

    # nothing scan receives is traced: it runs as a plain loop, recorded step by step
    scale, eps = np.float64(0.8), 1e-6
    numeric = (loss(p, scale + eps) - loss(p, scale - eps)) / (2 * eps)
    np.testing.assert_allclose(tinyfn.grad(loss, argnums=1)(p, scale), numeric, rtol=1e-6)
    with pytest.raises(TypeError, match="did not receive through params, carry or xs .* pass that value in params"):
        tinyfn.grad(loss, argnums=(0, 1))(p, scale)


# ----------------------------------------------------------------------------- the example


def load_example():
    path = Path(__file__).resolve().parent.parent / "examples" / "lstm_shakespeare.py"
    spec = importlib.util.spec_from_file_location("lstm_shakespeare", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_validation_loss_reads_the_text_in_pieces_as_if_whole():
    example = load_example()
    model = example.CharModel("abcdef", embedding=3, hidden=4)
    params = model.init(random.key(0))
    ids = model.encode("abcabcfedcbaabfedcafbd" * 3)
    whole = example.validation_loss(model, params, ids, streams=2, chunk=1000)
    np.testing.assert_allclose(example.validation_loss(model, params, ids, streams=2, chunk=5), whole, rtol=1e-6)
    logits, _ = model(params, ids[None, :-1])  # one stream: every prediction from all the text before it
    expected = float(losses.softmax_cross_entropy(logits, ids[None, 1:]))
    np.testing.assert_allclose(example.validation_loss(model, params, ids, streams=1, chunk=7), expected, rtol=1e-6)


def test_the_character_lstm_example_learns_samples_and_draws(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    result = load_example().main(tmp_path, steps=30, hidden=32, evaluate_every=15)
    printed = capsys.readouterr().out
    assert [step for step, _, _ in result["history"]] == [15, 30]
    assert result["validation_loss"] < np.log(62) - 0.5  # well below a uniform guess over the 62 characters
    assert f"validation loss {result['validation_loss']:.3f} nats/char" in printed
    assert result["sample"].startswith("HAMLET:\n") and len(result["sample"]) == len("HAMLET:\n") + 400
    assert (tmp_path / "lstm-shakespeare.png").read_bytes().startswith(b"\x89PNG")
