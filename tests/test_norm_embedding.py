"""LayerNorm, RMSNorm and the embeddings: forward passes against numpy formulas written out
here, first and second derivatives against finite differences (float64), the fast kernels
against the traced formulas, PyTorch where it is installed, and bad inputs."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import tinyfn
from tinyfn import ops, random, tree
from tinyfn.layers import ParamError, serial
from tinyfn.layers.embedding import (
    Embedding,
    PositionalEmbedding,
    SinusoidalPositionalEncoding,
    embedding_lookup,
    sinusoidal_table,
)
from tinyfn.layers.norm import LayerNorm, RMSNorm, layer_norm, rms_norm
from tinyfn.testing import arrays, check_grads, shapes

from gradient_registry import covers


def normal(seed, shape, dtype=np.float64):
    return random.normal(random.key(seed), shape, dtype)


def as_float64(params):
    return tree.map(lambda p: p.astype(np.float64), params)


# ----------------------------------------------------------------------------- references


def layer_norm_reference(x, gamma, beta, eps, axis=-1):
    d = x.shape[axis]
    mean = x.sum(axis, keepdims=True) / d
    var = ((x - mean) ** 2).sum(axis, keepdims=True) / d
    shape = [1] * x.ndim
    shape[axis] = d
    return (x - mean) / np.sqrt(var + eps) * gamma.reshape(shape) + beta.reshape(shape)


def rms_norm_reference(x, gamma, eps):
    return x / np.sqrt((x**2).sum(-1, keepdims=True) / x.shape[-1] + eps) * gamma


def one_hot(ids, vocab):
    return (np.asarray(ids)[..., None] == np.arange(vocab)).astype(np.float64)


def scatter_reference(ids, g, vocab):
    """Row ``v`` of the result sums the rows of ``g`` whose id is ``v``."""
    return one_hot(ids, vocab).reshape(-1, vocab).T @ g.reshape(-1, g.shape[-1])


def sinusoid_reference(max_len, dim):
    """Vaswani et al. (2017), section 3.5, one entry at a time."""
    table = np.zeros((max_len, dim))
    for pos in range(max_len):
        for j in range(dim):
            angle = pos / 10000 ** (2 * (j // 2) / dim)
            table[pos, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return table


# ----------------------------------------------------------------------------- normalisation


@st.composite
def rows_and_params(draw):
    """``(x, gamma, beta, eps)``: x (..., d) whose rows are spread out (finite differences of
    a normalisation are poor when a row is nearly constant), random gamma and beta (d,)."""
    lead = draw(shapes(min_dims=0, max_dims=2, max_side=3))
    d = draw(st.integers(1, 6))
    x = draw(arrays(lead + (d,))) + np.linspace(-1.0, 1.0, d)
    return x, draw(arrays((d,))), draw(arrays((d,))), draw(st.sampled_from([1e-5, 0.5]))


def spread(x, centered):
    """The smallest root-mean-square of a row of ``x`` (centred first if ``centered``)."""
    if centered:
        x = x - x.mean(-1, keepdims=True)
    return np.sqrt((x**2).mean(-1)).min(initial=np.inf)


@given(rows_and_params())
def test_layer_norm_and_rms_norm_match_their_formulas_in_float64_and_float32(args):
    x, gamma, beta, eps = args
    expected = layer_norm_reference(x, gamma, beta, eps), rms_norm_reference(x, gamma, eps)
    cases = [(np.float64, 1e-12, 1e-12)]
    if min(spread(x, centered=True), spread(x, centered=False)) > 0.2:  # rounding to float32 is amplified by 1/spread
        cases.append((np.float32, 2e-5, 2e-5))
    for dtype, rtol, atol in cases:
        x_, gamma_, beta_ = (a.astype(dtype) for a in (x, gamma, beta))
        for got, want in zip((layer_norm(x_, gamma_, beta_, eps), rms_norm(x_, gamma_, eps)), expected):
            assert got.dtype == dtype and got.shape == x.shape
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * (1 + np.abs(want).max(initial=0)))


@covers("layer_norm", order=2)
@settings(max_examples=20)
@given(rows_and_params())
def test_layer_norm_first_and_second_derivatives(args):
    x, gamma, beta, eps = args
    assume(x.shape[-1] == 1 or spread(x, centered=True) > 0.2)  # one feature: x_hat is exactly 0
    check_grads(lambda x, g, b: layer_norm(x, g, b, eps), (x, gamma, beta), order=2)


@covers("rms_norm", order=2)
@settings(max_examples=20)
@given(rows_and_params())
def test_rms_norm_first_and_second_derivatives(args):
    x, gamma, _, eps = args
    assume(spread(x, centered=False) > 0.2)
    check_grads(lambda x, g: rms_norm(x, g, eps), (x, gamma), order=2)


def test_third_derivatives_of_the_norms():
    x, gamma, beta = normal(0, (2, 5)), normal(1, (5,)), normal(2, (5,))
    check_grads(lambda x, g, b: layer_norm(x, g, b), (x, gamma, beta), order=3)
    check_grads(lambda x, g: rms_norm(x, g), (x, gamma), order=3)


@pytest.mark.parametrize("shape", [(3, 4, 7), (5, 130, 64)])  # the second: rows split over the threads
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm"])
def test_kernels_agree_with_the_traced_formulas(norm, dtype, shape):
    """On plain arrays the values and VJPs come from the kernels; differentiated once more
    (the arguments traced by an outer level) from the formulas in ops. Both give one answer."""
    d = shape[-1]
    x, gamma, beta, u = normal(0, shape, dtype), normal(1, (d,), dtype), normal(2, (d,), dtype), normal(3, shape, dtype)
    f, args = {"layer_norm": (layer_norm, (x, gamma, beta)), "rms_norm": (rms_norm, (x, gamma))}[norm]
    value, pullback = tinyfn.vjp(f, *args)
    from_kernels = (value, *pullback(u))
    from_formulas, _ = tinyfn.vjp(lambda *args: (f(*args), *tinyfn.vjp(f, *args)[1](u)), *args)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    for kernel, traced in zip(from_kernels, from_formulas, strict=True):
        assert kernel.dtype == dtype
        np.testing.assert_allclose(kernel, traced, rtol=tolerance, atol=tolerance * (1 + np.abs(traced).max()))


@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm"])
def test_kernels_give_the_same_bits_on_any_number_of_threads(norm):
    from tinyfn.kernels import threads

    x, gamma, beta, u = normal(0, (700, 64), np.float32), normal(1, (64,), np.float32), normal(2, (64,), np.float32), normal(3, (700, 64), np.float32)
    f, args = {"layer_norm": (layer_norm, (x, gamma, beta)), "rms_norm": (rms_norm, (x, gamma))}[norm]
    saved = threads.num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            threads.set_num_threads(count)
            value, pullback = tinyfn.vjp(f, *args)
            results.append((value, *pullback(u)))
    finally:
        threads.set_num_threads(saved)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


def test_norms_of_mixed_dtypes_and_of_empty_batches():
    x, gamma, beta = normal(0, (2, 3), np.float32), normal(1, (3,)), normal(2, (3,))
    assert layer_norm(x, gamma, beta).dtype == np.float64  # numpy's promotion (x normalised in float32)
    np.testing.assert_allclose(layer_norm(x, gamma, beta), layer_norm_reference(x, gamma, beta, 1e-5), rtol=1e-6, atol=1e-6)
    empty = np.zeros((0, 3))
    grads = tinyfn.grad(lambda x, g, b: ops.sum(layer_norm(x, g, b)), argnums=(0, 1, 2))(empty, gamma, beta)
    assert [g.shape for g in grads] == [(0, 3), (3,), (3,)]
    np.testing.assert_array_equal(grads[1], 0)


def test_layer_norm_layer_params_shapes_and_axis():
    out_shape, params = LayerNorm().init(random.key(0), (-1, 8, 16))
    assert out_shape == (-1, 8, 16)
    assert sorted(params) == ["beta", "gamma"]
    np.testing.assert_array_equal(params["gamma"], np.ones(16, np.float32))
    np.testing.assert_array_equal(params["beta"], np.zeros(16, np.float32))
    assert not params["gamma"].flags.writeable
    layer = LayerNorm(axis=1, eps=1e-3)
    _, params = layer.init(random.key(0), (-1, 4, 5))
    params = {"gamma": normal(1, (4,)), "beta": normal(2, (4,))}
    x = normal(3, (2, 4, 5))
    np.testing.assert_allclose(layer.apply(params, x), layer_norm_reference(x, params["gamma"], params["beta"], 1e-3, axis=1), rtol=1e-12)
    check_grads(lambda p, x: layer.apply(p, x), (params, x), order=2)


def test_rms_norm_layer_has_only_gamma_and_normalises():
    layer = RMSNorm()
    out_shape, params = layer.init(random.key(0), (-1, 6))
    assert out_shape == (-1, 6) and list(params) == ["gamma"] and params["gamma"].dtype == np.float32
    x = normal(1, (3, 6), np.float32)
    np.testing.assert_allclose(layer.apply(params, x), rms_norm_reference(x.astype(np.float64), np.ones(6), 1e-6), rtol=2e-6, atol=2e-6)


# ----------------------------------------------------------------------------- embeddings


@st.composite
def table_and_ids(draw):
    vocab, dim = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    ids_shape = draw(shapes(min_dims=0, max_dims=2, min_side=0, max_side=4))
    ids = draw(st.lists(st.integers(0, vocab - 1), min_size=math.prod(ids_shape), max_size=math.prod(ids_shape)))
    return draw(arrays((vocab, dim))), np.array(ids, dtype=np.int64).reshape(ids_shape)


@covers("embedding_lookup", order=2)
@given(table_and_ids())
def test_embedding_lookup_values_and_derivatives(args):
    w, ids = args
    np.testing.assert_array_equal(embedding_lookup(w, ids), one_hot(ids, len(w)) @ w)
    check_grads(lambda w: embedding_lookup(w, ids), (w,), order=2)


@covers("embedding_scatter", order=2)
@given(table_and_ids(), st.data())
def test_embedding_gradient_adds_every_row_into_its_id(args, data):
    w, ids = args
    g = data.draw(arrays(ids.shape + (w.shape[1],)))
    (grad,) = tinyfn.vjp(lambda w: embedding_lookup(w, ids), w)[1](g)
    np.testing.assert_allclose(grad, scatter_reference(ids, g, len(w)), rtol=1e-12, atol=1e-12)
    check_grads(lambda u: tinyfn.vjp(lambda w: embedding_lookup(w, ids), w)[1](u)[0], (g,), order=2)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_embedding_gradient_in_other_dtypes(dtype):
    ids = np.array([[0, 2, 2], [1, 2, 0]])
    w, g = normal(0, (3, 4)).astype(dtype), normal(1, (2, 3, 4)).astype(dtype)
    (grad,) = tinyfn.vjp(lambda w: embedding_lookup(w, ids), w)[1](g)
    assert grad.dtype == dtype
    expected = scatter_reference(ids, g.astype(np.float64), 3)
    np.testing.assert_allclose(grad, expected, rtol=1e-2 if dtype == np.float16 else 1e-6)


def test_embedding_layer_shapes_and_initialisation():
    layer = Embedding(200, 50)
    out_shape, params = layer.init(random.key(0), (-1, 7))
    assert out_shape == (-1, 7, 50)
    w = params["w"]
    assert w.shape == (200, 50) and w.dtype == np.float32 and not w.flags.writeable
    assert abs(w.mean()) < 0.05 and 0.97 < w.std() < 1.03  # N(0, 1), as PyTorch's nn.Embedding
    np.testing.assert_array_equal(w, layer.init(random.key(0), (-1, 7))[1]["w"])
    assert not np.array_equal(w, layer.init(random.key(1), (-1, 7))[1]["w"])
    assert layer.apply(params, np.array(3)).shape == (50,)
    assert layer.apply(params, np.zeros((2, 3, 4), np.int32)).shape == (2, 3, 4, 50)
    assert layer.apply(params, [1, 2]).shape == (2, 50)


def test_learned_positional_embedding_adds_the_first_rows():
    layer = PositionalEmbedding(6, 3)
    out_shape, params = layer.init(random.key(0), (-1, 4, 3))
    assert out_shape == (-1, 4, 3) and params["w"].shape == (6, 3)
    params, x = as_float64(params), normal(1, (2, 4, 3))
    expected = np.stack([np.stack([x[b, t] + params["w"][t] for t in range(4)]) for b in range(2)])
    np.testing.assert_allclose(layer.apply(params, x), expected, rtol=1e-15)
    check_grads(lambda p, x: layer.apply(p, x), (params, x), order=2)


@pytest.mark.parametrize("dim", [1, 6, 7])
def test_sinusoidal_encoding_is_the_table_of_vaswani_et_al(dim):
    np.testing.assert_allclose(sinusoidal_table(50, dim), sinusoid_reference(50, dim), rtol=1e-12, atol=1e-12)
    layer = SinusoidalPositionalEncoding(50, dim)
    assert layer.init(random.key(0), (-1, 9, dim)) == ((-1, 9, dim), {})
    x = normal(0, (2, 9, dim), np.float32)
    y = layer.apply({}, x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x + sinusoid_reference(9, dim), rtol=1e-6, atol=1e-6)
    check_grads(lambda x: layer.apply({}, x), (x.astype(np.float64),), order=2)


def test_a_character_model_under_a_static_graph_replays_each_batch_of_ids():
    model = serial(Embedding(11, 8), PositionalEmbedding(5, 8), LayerNorm(), RMSNorm())
    _, params = model.init(random.key(0), (-1, 5))
    params = as_float64(params)

    def loss(params, ids):
        y = model.apply(params, ids)
        return ops.mean(y * y * y)

    eager, staged = tinyfn.value_and_grad(loss), tinyfn.value_and_grad(loss, static_graph=True)
    for seed in range(3):
        ids = random.randint(random.key(seed), (2, 5), 0, 11)
        (value, grads), (staged_value, staged_grads) = eager(params, ids), staged(params, ids)
        np.testing.assert_allclose(staged_value, value, rtol=1e-12)
        for a, b in zip(tree.leaves(staged_grads), tree.leaves(grads)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match=r"expected ids in \[0, 11\) \(the rows of w\), found 11 at index \(1, 4\)"):
        staged(params, np.array([[0, 1, 2, 3, 4], [5, 6, 7, 8, 11]]))


# ----------------------------------------------------------------------------- against PyTorch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def assert_same_as_torch(torch, ours, theirs, args, *, second_order=True):
    """``ours`` and ``theirs`` agree on values, on VJPs and (with ``second_order``) on the
    gradient of ``<VJP(u), v>``, every second derivative along random ``u`` and ``v``."""
    tensors = [torch.tensor(a, requires_grad=True) for a in args]
    expected = theirs(*tensors)
    u = normal(10, tuple(expected.shape))
    vs = [normal(11 + i, np.shape(a)) for i, a in enumerate(args)]
    value, pullback = tinyfn.vjp(ours, *args)
    np.testing.assert_allclose(value, expected.detach().numpy(), rtol=1e-10, atol=1e-12)
    their_grads = torch.autograd.grad(expected, tensors, torch.tensor(u), create_graph=second_order)
    for got, want in zip(pullback(u), their_grads):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-10, atol=1e-12)
    if not second_order:
        return
    directional = sum((g * torch.tensor(v)).sum() for g, v in zip(their_grads, vs))
    their_second = [
        np.zeros(t.shape) if s is None else s.numpy() for t, s in zip(tensors, torch.autograd.grad(directional, tensors, allow_unused=True))
    ]  # None: a second derivative that is 0 (the output is linear in that argument)

    def our_directional(*args):
        return sum(ops.sum(g * v) for g, v in zip(tinyfn.vjp(ours, *args)[1](u), vs))

    for got, want in zip(tinyfn.grad(our_directional, argnums=tuple(range(len(args))))(*args), their_second):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)


def test_layer_norm_matches_pytorch(torch):
    args = normal(0, (3, 4, 6)), normal(1, (6,)), normal(2, (6,))
    F = torch.nn.functional
    assert_same_as_torch(torch, lambda x, g, b: layer_norm(x, g, b, 1e-5), lambda x, g, b: F.layer_norm(x, (6,), g, b, 1e-5), args)


def test_rms_norm_matches_pytorch(torch):
    args = normal(0, (3, 4, 6)), normal(1, (6,))
    F = torch.nn.functional
    assert_same_as_torch(torch, lambda x, g: rms_norm(x, g, 1e-6), lambda x, g: F.rms_norm(x, (6,), g, 1e-6), args)


def test_embedding_matches_pytorch(torch):
    ids = np.array([[3, 1, 3, 0], [4, 4, 4, 2]])
    F = torch.nn.functional
    assert_same_as_torch(
        torch, lambda w: embedding_lookup(w, ids), lambda w: F.embedding(torch.tensor(ids), w), (normal(0, (5, 3)),), second_order=False
    )


# ----------------------------------------------------------------------------- bad inputs


def test_embedding_refuses_ids_that_are_not_integers_or_out_of_range():
    layer = Embedding(5, 2)
    _, params = layer.init(random.key(0), (-1, 3))
    with pytest.raises(TypeError, match=r"Embedding\(5, 2\): expected integer ids, found dtype float32"):
        layer.apply(params, np.array([0.0, 1.0], np.float32))
    with pytest.raises(TypeError, match="expected integer ids, found dtype bool"):
        layer.apply(params, np.array([True, False]))
    with pytest.raises(ValueError, match=r"expected ids in \[0, 5\) \(the rows of w\), found 5 at index \(1,\)"):
        layer.apply(params, np.array([4, 5, 6]))
    with pytest.raises(ValueError, match=r"found -1 at index \(0, 2\)"):
        layer.apply(params, np.array([[0, 1, -1]]))
    with pytest.raises(ValueError, match=r"expected a table w of shape \(vocab, dim\), found shape \(5,\)"):
        embedding_lookup(np.zeros(5), np.array([1]))
    with pytest.raises(ValueError, match="Embedding: vocab_size must be an int >= 1, found 0"):
        Embedding(0, 2)


@pytest.mark.parametrize("make", [PositionalEmbedding, SinusoidalPositionalEncoding])
def test_positional_layers_refuse_sequences_longer_than_max_len(make):
    layer = make(4, 3)
    name = f"{make.__name__}\\(4, 3\\)"
    with pytest.raises(ValueError, match=rf"{name}: expected a sequence of at most 4 positions \(axis -2\), found 5 in shape \(N, 5, 3\)"):
        layer.init(random.key(0), (-1, 5, 3))
    _, params = layer.init(random.key(0), (-1, 4, 3))
    with pytest.raises(ValueError, match=rf"{name}: expected a sequence of at most 4 positions \(axis -2\), found 6 in shape \(2, 6, 3\)"):
        layer.apply(params, np.zeros((2, 6, 3), np.float32))
    with pytest.raises(ValueError, match=rf"{name}: expected an input \(batch, T, 3\), found shape \(2, 4, 5\)"):
        layer.apply(params, np.zeros((2, 4, 5), np.float32))


def test_wrong_params_raise_param_errors_naming_path_expected_and_found():
    x = np.zeros((2, 4), np.float32)
    _, params = LayerNorm().init(random.key(0), (-1, 4))
    with pytest.raises(ParamError, match=r"params/beta: missing: LayerNorm\(axis=-1\) expected a parameter of shape \(4,\)"):
        LayerNorm().apply({"gamma": params["gamma"]}, x)
    with pytest.raises(ParamError, match=r"params/gamma: LayerNorm\(axis=-1\) expected shape \(4,\), found \(3,\)"):
        LayerNorm().apply({**params, "gamma": np.ones(3, np.float32)}, x)
    with pytest.raises(ParamError, match=r"params/beta: RMSNorm\(axis=-1\) has no parameter 'beta' \(its parameters: \['gamma'\]\)"):
        RMSNorm().apply(params, x)
    with pytest.raises(ParamError, match=r"params/w: Embedding\(5, 2\) expected shape \(5, 2\), found \(2, 5\)"):
        Embedding(5, 2).apply({"w": np.zeros((2, 5), np.float32)}, np.array([1]))
    with pytest.raises(ParamError, match=r"params/w: PositionalEmbedding\(4, 2\) expected shape \(4, 2\), found \(3, 2\)"):
        PositionalEmbedding(4, 2).apply({"w": np.zeros((3, 2), np.float32)}, np.zeros((1, 3, 2), np.float32))
    with pytest.raises(ParamError, match=r"params/w: SinusoidalPositionalEncoding\(4, 2\) has no parameter 'w'"):
        SinusoidalPositionalEncoding(4, 2).apply({"w": np.zeros((4, 2))}, np.zeros((1, 3, 2), np.float32))
    model = serial(Embedding(5, 4), LayerNorm())
    _, model_params = model.init(random.key(0), (-1, 3))
    del model_params["layer_norm_1"]["beta"]
    with pytest.raises(ParamError, match=r"params/layer_norm_1/beta: missing"):
        model.apply(model_params, np.array([[1, 2, 3]]))


def test_norms_refuse_inputs_that_do_not_fit():
    with pytest.raises(ValueError, match=r"layer_norm: expected gamma of shape \(4,\) for input \(2, 4\), found \(3,\)"):
        layer_norm(np.zeros((2, 4)), np.ones(3), np.zeros(4))
    with pytest.raises(ValueError, match=r"rms_norm: expected an input \(..., features\) with at least one feature, found shape \(2, 0\)"):
        rms_norm(np.zeros((2, 0)), np.ones(0))
    with pytest.raises(ValueError, match=r"LayerNorm\(axis=2\): expected an input with at least one feature along axis 2, found shape \(N, 4\)"):
        LayerNorm(axis=2).init(random.key(0), (-1, 4))
    with pytest.raises(ValueError, match=r"LayerNorm: eps must be a finite number in \[0, inf\), found -1.0"):
        LayerNorm(eps=-1.0)
