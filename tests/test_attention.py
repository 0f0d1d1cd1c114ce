"""Attention: the fused primitive against a reference written out here, against PyTorch, its
first and second derivatives, causality, masks that leave a query with no key, and bad inputs;
MultiHeadAttention and TransformerBlock against PyTorch's modules with copied weights."""

import math

import numpy as np
import pytest
from gradient_registry import covers
from hypothesis import given
from hypothesis import strategies as st

import tinyfn
from tinyfn import random, tree
from tinyfn.kernels import attention as attention_kernels
from tinyfn.kernels import threads
from tinyfn.layers import ParamError
from tinyfn.layers.attention import MultiHeadAttention, TransformerBlock, scaled_dot_product_attention
from tinyfn.testing import check_grads


def normal(seed, shape, dtype=np.float64):
    return random.normal(random.key(seed), shape, dtype)


def reference_attention(q, k, v, mask=None, causal=False):
    """The attention written out one batch entry, head and query at a time (float64).

    A boolean mask keeps the keys where it is True; a float mask is added to the scores, and
    ``-inf`` drops the key; a query with no key left gets 0.
    """
    (batch, heads, rows, depth), cols = q.shape, k.shape[2]
    mask = np.zeros((batch, heads, rows, cols)) if mask is None else np.broadcast_to(mask, (batch, heads, rows, cols))
    out = np.zeros((batch, heads, rows, v.shape[3]))
    for b in range(batch):
        for h in range(heads):
            for t in range(rows):
                scores = {}
                for s in range(cols):
                    m = mask[b, h, t, s]
                    bias = (0.0 if m else -math.inf) if mask.dtype == bool else float(m)
                    if bias > -math.inf and not (causal and s > t):
                        scores[s] = float(np.dot(q[b, h, t], k[b, h, s])) / math.sqrt(depth) + bias
                if not scores:
                    continue
                top = max(scores.values())
                weights = {s: math.exp(x - top) for s, x in scores.items()}
                total = sum(weights.values())
                for s, w in weights.items():
                    out[b, h, t] += w / total * v[b, h, s]
    return out


@st.composite
def attention_cases(draw, max_side=3):
    """``(q, k, v, mask, causal)``: small float64 arrays, a mask of none, boolean or float
    kind (with some ``-inf``) in a shape that broadcasts to (B, H, T, S), and a causal flag."""
    batch, heads, rows, cols = (draw(st.integers(1, n)) for n in (2, 2, max_side, max_side))
    depth, value_depth = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    q, k, v = (normal(seed + i, shape) for i, shape in enumerate([(batch, heads, rows, depth), (batch, heads, cols, depth), (batch, heads, cols, value_depth)]))
    full = (batch, heads, rows, cols)
    kept = draw(st.lists(st.booleans(), min_size=4, max_size=4))
    shape = tuple(n if keep else 1 for n, keep in zip(full, kept))[draw(st.integers(0, 2)):]
    kind = draw(st.sampled_from(["none", "bool", "float"]))
    mask = None
    if kind == "bool":
        mask = random.bernoulli(random.key(seed + 3), 0.7, shape)
    elif kind == "float":
        mask = np.where(random.bernoulli(random.key(seed + 3), 0.8, shape), normal(seed + 4, shape), -np.inf)
    return q, k, v, mask, draw(st.booleans())


def traced_twice(f, *args):
    """``f(*args)`` computed under two nested traces, so that the primitive takes the path of
    tinyfn ops that a second derivative records."""
    return tinyfn.vjp(lambda *outer: tinyfn.vjp(f, *outer)[0], *args)[0]


# ----------------------------------------------------------------------------- the primitive


@given(attention_cases(max_side=4))
def test_attention_matches_the_reference_on_both_paths(case):
    q, k, v, mask, causal = case
    expected = reference_attention(q, k, v, mask, causal)
    f = lambda q, k, v: scaled_dot_product_attention(q, k, v, mask, causal)
    np.testing.assert_allclose(f(q, k, v), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(traced_twice(f, q, k, v), expected, rtol=1e-12, atol=1e-12)


@given(attention_cases())
def test_float32_kernel_matches_the_reference(case):
    q, k, v, mask, causal = case
    as32 = [a.astype(np.float32) for a in (q, k, v)]
    out = scaled_dot_product_attention(*as32, mask, causal)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference_attention(*as32, mask, causal), rtol=1e-5, atol=1e-5)


@covers("attention", order=2)
@given(attention_cases())
def test_attention_first_and_second_derivatives(case):
    q, k, v, mask, causal = case
    check_grads(lambda q, k, v: scaled_dot_product_attention(q, k, v, mask, causal), (q, k, v), order=2)
    if mask is not None and mask.dtype != bool:  # a float mask is a bias with a gradient of its own
        check_grads(lambda q, bias: scaled_dot_product_attention(q, k, v, bias, causal), (q, mask), order=2)


def test_a_query_with_no_key_gets_zero_output_and_passes_no_gradient():
    q, k, v = normal(0, (1, 2, 3, 4)), normal(1, (1, 2, 3, 4)), normal(2, (1, 2, 3, 4))
    mask = np.ones((3, 3), bool)
    mask[1] = False  # query 1 may attend to nothing
    f = lambda q, k, v: scaled_dot_product_attention(q, k, v, mask)
    out, vjp = tinyfn.vjp(f, q, k, v)
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out[:, :, 1], 0)
    dq, dk, dv = vjp(normal(3, out.shape))
    np.testing.assert_array_equal(dq[:, :, 1], 0)
    second = tinyfn.grad(lambda q: tinyfn.grad(lambda q: (f(q, k, v) ** 2).sum())(q).sum())(q)
    assert not np.isnan(second).any()
    np.testing.assert_array_equal(second[:, :, 1], 0)


@given(st.integers(2, 5), st.integers(0, 3), st.booleans())
def test_causal_output_at_t_does_not_depend_on_later_inputs(length, t, key_longer):
    t = min(t, length - 2)  # some query comes after t
    cols = length + 2 if key_longer else length
    q, k, v = normal(0, (2, 2, length, 3)), normal(1, (2, 2, cols, 3)), normal(2, (2, 2, cols, 3))
    later = lambda a: np.concatenate([a[:, :, : t + 1], a[:, :, t + 1 :] + 1.0], axis=2)
    before = scaled_dot_product_attention(q, k, v, causal=True)
    after = scaled_dot_product_attention(later(q), later(k), later(v), causal=True)
    np.testing.assert_array_equal(after[:, :, : t + 1], before[:, :, : t + 1])
    assert not np.array_equal(after[:, :, t + 1 :], before[:, :, t + 1 :])


def test_splitting_the_batch_over_threads_changes_no_bit(monkeypatch):
    q, k, v = (normal(i, (4, 2, 5, 3), np.float32) for i in range(3))
    g = normal(3, (4, 2, 5, 3), np.float32)
    mask = np.where(random.bernoulli(random.key(4), 0.7, (4, 1, 5, 5)), 0, -np.inf).astype(np.float32)

    def run():
        out, p = attention_kernels.attention(q, k, v, mask, True)
        return (out, p) + attention_kernels.attention_vjp(g, q, k, v, p, (True, True, True, True))

    saved = threads.num_threads()
    threads.set_num_threads(3)  # slices of 1, 1 and 2 batch entries, on any machine
    try:
        split = run()
    finally:
        threads.set_num_threads(saved)
    monkeypatch.setattr(attention_kernels, "SPLIT_UP_TO", 0)
    for a, b in zip(split, run()):
        np.testing.assert_array_equal(a, b)


def test_mask_dtypes_and_output_dtype():
    q, k, v = (normal(i, (1, 1, 2, 2), np.float32) for i in range(3))
    out = scaled_dot_product_attention(q, k, v, mask=np.zeros((2, 2)))  # a float64 mask on float32 inputs
    assert out.dtype == np.float32
    same = scaled_dot_product_attention(q, k, v, mask=[[True, True], [True, True]])  # a list is an array
    np.testing.assert_array_equal(same, scaled_dot_product_attention(q, k, v))


# ----------------------------------------------------------------------------- against PyTorch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("kind", ["none", "causal", "bool", "float"])
def test_attention_and_its_gradients_match_pytorch(torch, kind):
    q, k, v = normal(0, (2, 3, 4, 5)), normal(1, (2, 3, 6, 5)), normal(2, (2, 3, 6, 2))
    mask = {"bool": random.bernoulli(random.key(3), 0.7, (2, 1, 4, 6)), "float": normal(3, (4, 6))}.get(kind)
    causal = kind == "causal"
    tensors = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    expected = torch.nn.functional.scaled_dot_product_attention(
        *tensors, attn_mask=None if mask is None else torch.tensor(mask), is_causal=causal
    )
    g = normal(4, tuple(expected.shape))
    expected.backward(torch.tensor(g))
    out, vjp = tinyfn.vjp(lambda q, k, v: scaled_dot_product_attention(q, k, v, mask, causal), q, k, v)
    np.testing.assert_allclose(out, expected.detach().numpy(), rtol=1e-10, atol=1e-12)
    for grad, t in zip(vjp(g), tensors):
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-12)


def torch_mha(torch, params, use_bias):
    """PyTorch's nn.MultiheadAttention (float64) holding ``params``, by the documented layout."""
    d = params["q"]["w"].shape[0]
    heads = 2
    module = torch.nn.MultiheadAttention(d, heads, bias=use_bias, batch_first=True).double()
    with torch.no_grad():
        module.in_proj_weight.copy_(torch.tensor(np.concatenate([params[n]["w"].T for n in "qkv"])))
        module.out_proj.weight.copy_(torch.tensor(params["out"]["w"].T))
        if use_bias:
            module.in_proj_bias.copy_(torch.tensor(np.concatenate([params[n]["b"] for n in "qkv"])))
            module.out_proj.bias.copy_(torch.tensor(params["out"]["b"]))
    return module


def random_params(template, seed):
    """A float64 tree shaped like ``template``, every leaf drawn anew (biases too)."""
    leaves, treedef = tree.flatten(template)
    return tree.unflatten(treedef, [normal(seed + i, np.shape(leaf)) * 0.5 for i, leaf in enumerate(leaves)])


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("kind", ["none", "causal", "bool", "float"])
def test_multi_head_attention_matches_pytorch_with_copied_weights(torch, use_bias, kind):
    model = MultiHeadAttention(2, causal=kind == "causal", use_bias=use_bias)
    _, template = model.init(random.key(0), (-1, 5, 6))
    params = random_params(template, 1)
    x = normal(0, (3, 5, 6))
    mask = torch_mask = None  # PyTorch's boolean masks are True where a key is masked out: the opposite of ours
    if kind == "causal":
        torch_mask = np.triu(np.full((5, 5), -np.inf), 1)
    elif kind == "bool":
        mask = random.bernoulli(random.key(2), 0.8, (5, 5)) | np.eye(5, dtype=bool)
        torch_mask = ~mask
    elif kind == "float":
        mask = torch_mask = normal(2, (5, 5))
    module = torch_mha(torch, params, use_bias)
    xt = torch.tensor(x, requires_grad=True)
    expected, _ = module(xt, xt, xt, attn_mask=None if torch_mask is None else torch.tensor(torch_mask), need_weights=False)
    g = normal(3, (3, 5, 6))
    expected.backward(torch.tensor(g))
    out, vjp = tinyfn.vjp(lambda p, x: model.apply(p, x, mask=mask), params, x)
    np.testing.assert_allclose(out, expected.detach().numpy(), rtol=1e-10, atol=1e-12)
    grads, dx = vjp(g)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["k"]["w"], module.in_proj_weight.grad[6:12].numpy().T, rtol=1e-10, atol=1e-12)


def test_transformer_block_matches_pytorch_with_copied_weights(torch):
    nn = torch.nn
    model = TransformerBlock(2, mlp_ratio=2)
    _, template = model.init(random.key(0), (-1, 4, 6))
    params = random_params(template, 1)
    ln_1, ln_2 = nn.LayerNorm(6).double(), nn.LayerNorm(6).double()
    fc, proj = nn.Linear(6, 12).double(), nn.Linear(12, 6).double()
    with torch.no_grad():
        for module, p in ((ln_1, params["ln_1"]), (ln_2, params["ln_2"])):
            module.weight.copy_(torch.tensor(p["gamma"]))
            module.bias.copy_(torch.tensor(p["beta"]))
        for module, p in ((fc, params["mlp"]["dense_0"]), (proj, params["mlp"]["dense_2"])):
            module.weight.copy_(torch.tensor(p["w"].T))
            module.bias.copy_(torch.tensor(p["b"]))
    attn = torch_mha(torch, params["attn"], True)
    x = normal(0, (3, 4, 6))
    xt = torch.tensor(x)
    h = ln_1(xt)
    xt = xt + attn(h, h, h, attn_mask=torch.tensor(np.triu(np.full((4, 4), -np.inf), 1)), need_weights=False)[0]
    expected = xt + proj(nn.functional.gelu(fc(ln_2(xt))))
    np.testing.assert_allclose(model.apply(params, x), expected.detach().numpy(), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- the layers


def test_layers_are_causal_and_differentiable_twice():
    x = normal(0, (2, 4, 6))
    for model in (MultiHeadAttention(3, causal=True), TransformerBlock(2)):
        _, params = model.init(random.key(1), x.shape)
        params = random_params(params, 2)
        y = model.apply(params, x)
        moved = x.copy()
        moved[:, 2:] += 1.0
        np.testing.assert_array_equal(model.apply(params, moved)[:, :2], y[:, :2])
        check_grads(lambda p, x: model.apply(p, x), (params, x), order=2, directions=1)


def test_param_names_shapes_and_dtypes():
    _, params = TransformerBlock(4, mlp_ratio=2).init(random.key(0), (-1, 7, 8))
    shapes = {path: np.shape(leaf) for path, leaf in tree.leaves_with_path(params)}
    assert shapes == {
        "attn/k/b": (8,), "attn/k/w": (8, 8), "attn/out/b": (8,), "attn/out/w": (8, 8),
        "attn/q/b": (8,), "attn/q/w": (8, 8), "attn/v/b": (8,), "attn/v/w": (8, 8),
        "ln_1/beta": (8,), "ln_1/gamma": (8,), "ln_2/beta": (8,), "ln_2/gamma": (8,),
        "mlp/dense_0/b": (16,), "mlp/dense_0/w": (8, 16), "mlp/dense_2/b": (8,), "mlp/dense_2/w": (16, 8),
    }
    assert all(leaf.dtype == np.float32 for leaf in tree.leaves(params))
    _, params = MultiHeadAttention(2, use_bias=False).init(random.key(0), (-1, 3, 4))
    assert sorted(path for path, _ in tree.leaves_with_path(params)) == ["k/w", "out/w", "q/w", "v/w"]


def test_multi_head_attention_keeps_float32():
    model = MultiHeadAttention(2, causal=True)
    x = normal(0, (2, 3, 4), np.float32)
    _, params = model.init(random.key(0), x.shape)
    y, vjp = tinyfn.vjp(lambda p: model.apply(p, x), params)
    assert y.dtype == np.float32
    assert all(g.dtype == np.float32 for g in tree.leaves(vjp(np.ones_like(y))))


def test_transformer_block_keeps_float32():
    model = TransformerBlock(2)
    x = normal(0, (2, 3, 4), np.float32)
    _, params = model.init(random.key(0), x.shape)
    y, vjp = tinyfn.vjp(lambda p: model.apply(p, x), params)
    assert y.dtype == np.float32
    assert all(g.dtype == np.float32 for g in tree.leaves(vjp(np.ones_like(y))))


def test_block_dropout_needs_a_key_when_training_and_is_off_otherwise():
    model = TransformerBlock(2, dropout=0.5)
    x = normal(0, (2, 3, 4), np.float32)
    _, params = model.init(random.key(0), x.shape)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        model.apply(params, x, train=True)
    evaluated = model.apply(params, x)
    np.testing.assert_array_equal(TransformerBlock(2).apply(params, x), evaluated)
    assert not np.array_equal(model.apply(params, x, train=True, key=random.key(1)), evaluated)


def test_a_static_graph_with_a_boolean_mask_argument_gives_the_same_gradients():
    model = MultiHeadAttention(2)
    x = normal(0, (2, 3, 4))
    _, params = model.init(random.key(0), x.shape)
    params = random_params(params, 1)
    mask = random.bernoulli(random.key(2), 0.7, (2, 1, 1, 3)) | np.array([True, False, False])

    def loss(p, x, mask):
        return (model.apply(p, x, mask=mask) ** 2).sum()

    for a, b in zip(tree.leaves(tinyfn.grad(loss)(params, x, mask)), tree.leaves(tinyfn.grad(loss, static_graph=True)(params, x, mask))):
        np.testing.assert_allclose(b, a, rtol=1e-12)


# ----------------------------------------------------------------------------- bad inputs

q4, k4, v4 = np.zeros((2, 3, 4, 5)), np.zeros((2, 3, 6, 5)), np.zeros((2, 3, 6, 7))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: scaled_dot_product_attention(q4[0], k4, v4), ValueError, r"expected q of shape \(batch, heads, length, depth\), found shape \(3, 4, 5\)"),
        (lambda: scaled_dot_product_attention(q4, k4[..., :4], v4), ValueError, r"expected k of shape \(2, 3, S, 5\) .* found shape \(2, 3, 6, 4\)"),
        (lambda: scaled_dot_product_attention(q4, k4, v4[:, :, :5]), ValueError, r"expected v of shape \(2, 3, 6, dv\) .* found shape \(2, 3, 5, 7\)"),
        (
            lambda: scaled_dot_product_attention(q4, k4, v4, mask=np.zeros((4, 5))),
            ValueError,
            r"broadcasts to \(batch, heads, T, S\) = \(2, 3, 4, 6\), found shape \(4, 5\)",
        ),
        (lambda: scaled_dot_product_attention(q4, k4, v4, mask=np.zeros((1, 2, 3, 4, 6))), ValueError, r"found shape \(1, 2, 3, 4, 6\)"),
        (lambda: scaled_dot_product_attention(q4, k4, v4, mask=np.zeros((4, 6), int)), TypeError, "expected a boolean or float mask, found dtype int64"),
        (lambda: scaled_dot_product_attention(q4.astype(int), k4, v4), TypeError, "expected a floating-point q, found dtype int64"),
        (
            lambda: MultiHeadAttention(3).init(random.key(0), (2, 5, 8)),
            ValueError,
            r"MultiHeadAttention\(3\): expected a width d \(last axis\) divisible by num_heads=3, found shape \(2, 5, 8\)",
        ),
        (lambda: MultiHeadAttention(2).init(random.key(0), (5, 8)), ValueError, r"expected an input \(batch, T, d\), found shape \(5, 8\)"),
        (lambda: MultiHeadAttention(0), ValueError, "num_heads"),
        (lambda: TransformerBlock(2, mlp_ratio=0), ValueError, "mlp_ratio"),
        (lambda: TransformerBlock(2, dropout=1.0), ValueError, r"rate must be in \[0, 1\)"),
    ],
)
def test_bad_inputs_name_what_was_expected_and_found(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_params_or_inputs_that_do_not_fit_name_the_path():
    model = TransformerBlock(2)
    _, params = model.init(random.key(0), (-1, 3, 4))
    x = np.zeros((2, 3, 4), np.float32)
    wrong = {**params, "attn": {**params["attn"], "v": {"w": np.zeros((4, 5), np.float32), "b": np.zeros(4, np.float32)}}}
    with pytest.raises(ParamError, match=r"params/attn/v/w: MultiHeadAttention\(2\) expected shape \(4, 4\), found \(4, 5\)"):
        model.apply(wrong, x)
    with pytest.raises(ParamError, match=r"params/attn/v: missing: MultiHeadAttention\(2\) expected parameters \['q', 'k', 'v', 'out'\]"):
        model.apply({**params, "attn": {n: p for n, p in params["attn"].items() if n != "v"}}, x)
    with pytest.raises(ParamError, match=r"params/ln_2: missing: TransformerBlock\(2\) expected parameters \['ln_1', 'attn', 'ln_2', 'mlp'\]"):
        model.apply({n: p for n, p in params.items() if n != "ln_2"}, x)
    with pytest.raises(ParamError, match=r"params/mlp/dense_1: serial has no child 'dense_1'"):
        model.apply({**params, "mlp": {"dense_1": {}}}, x)
    with pytest.raises(ValueError, match=r"expected a width d \(last axis\) divisible by num_heads=2, found shape \(2, 3, 5\)"):
        MultiHeadAttention(2).apply(params["attn"], np.zeros((2, 3, 5), np.float32))
    with pytest.raises(ValueError, match=r"broadcasts to \(batch, heads, T, S\) = \(2, 2, 3, 3\), found shape \(4, 4\)"):
        model.apply(params, x, mask=np.ones((4, 4), bool))
