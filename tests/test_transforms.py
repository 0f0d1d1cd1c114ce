"""jvp, hvp, jacobian and hessian (tinyfn.transforms) and nested differentiation, checked in
float64 against central finite differences and against closed forms."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinyfn
from tinyfn import ops, random, tree
from tinyfn.testing import arrays, shapes
from tinyfn.transforms import hessian, hvp, jacobian, jvp, linearize

EPS = 1e-6
TOLERANCE = dict(rtol=1e-5, atol=1e-6)

# ----------------------------------------------------------------------------- references


def along(f, primals: tuple, tangents: tuple):
    """``(f(p + EPS t) - f(p - EPS t)) / 2 EPS``, leaf by leaf: a derivative of ``f`` by central differences."""

    def at(sign):
        return f(*tree.map(lambda p, t: p + sign * EPS * t, primals, tangents))

    return tree.map(lambda a, b: (np.asarray(a) - np.asarray(b)) / (2 * EPS), at(1), at(-1))


def units(x: np.ndarray):
    """Arrays shaped like ``x``, each with a single entry 1: every entry in turn."""
    for k in range(x.size):
        unit = np.zeros(x.size)
        unit[k] = 1
        yield unit.reshape(x.shape)


def numeric_jacobian(f, x: np.ndarray) -> np.ndarray:
    """``d f(x)[i...] / d x[j...]`` by central differences, shape ``f(x).shape + x.shape``."""
    columns = [along(f, (x,), (unit,)) for unit in units(x)]
    return np.stack(columns, axis=-1).reshape(np.shape(f(x)) + x.shape)


def numeric_gradient(f, params):
    """The gradient of scalar ``f`` w.r.t. the pytree ``params`` by central differences."""
    leaves, treedef = tree.flatten(params)

    def of_leaf(i):
        return lambda x: f(tree.unflatten(treedef, leaves[:i] + [x] + leaves[i + 1 :]))

    return tree.unflatten(treedef, [numeric_jacobian(of_leaf(i), leaf) for i, leaf in enumerate(leaves)])


def direction(seed: int, like):
    """A random pytree shaped like ``like`` (float64 normal entries) from an explicit key."""
    leaves, treedef = tree.flatten(like)
    keys = random.split(random.key(seed), len(leaves))
    return tree.unflatten(treedef, [random.normal(k, np.shape(x), np.float64) for k, x in zip(keys, leaves)])


def assert_trees_close(actual, expected, **tolerance):
    assert tree.structure(actual) == tree.structure(expected)
    for (path, a), e in zip(tree.leaves_with_path(actual), tree.leaves(expected)):
        np.testing.assert_allclose(a, e, err_msg=path, **(tolerance or TOLERANCE))


# ----------------------------------------------------------------------------- functions to differentiate


def mixing(x):
    """A smooth map from an array to an array of its shape, with a dense Jacobian."""
    return ops.tanh(x * ops.mean(x)) + x**3 / 3 + ops.log(1 + x * x)


def scalar(x):
    """A smooth scalar function of an array, with a dense Hessian."""
    return ops.sum(mixing(x) ** 2) / 2


def layer(params, x):
    """A pytree in, a pytree out: ``{"w": (3, 2), "b": (2,)}`` and ``x (n, 3)`` give
    ``{"y": (n, 2), "norm": ()}``."""
    return {"y": ops.tanh(x @ params["w"] + params["b"]), "norm": ops.sum(params["w"] ** 2)}


def mlp_loss(params, x, y):
    """Cross-entropy of a one-hidden-layer tanh network, written with ops (differentiable to any order)."""
    logits = ops.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
    return -ops.mean(ops.log_softmax(logits)[np.arange(len(y)), y])


def mlp_params(seed: int, sizes=(3, 5, 4)) -> dict:
    k1, k2, k3, k4 = random.split(random.key(seed), 4)
    return {
        "w1": random.normal(k1, (sizes[0], sizes[1]), np.float64),
        "b1": random.normal(k2, (sizes[1],), np.float64) * 0.1,
        "w2": random.normal(k3, (sizes[1], sizes[2]), np.float64),
        "b2": random.normal(k4, (sizes[2],), np.float64) * 0.1,
    }


small = arrays(shapes(max_dims=2, max_side=4))
seeds = st.integers(0, 2**16)
params_of_layer = st.fixed_dictionaries({"w": arrays((3, 2)), "b": arrays((2,))})

# ----------------------------------------------------------------------------- jvp


@given(small, seeds)
def test_jvp_matches_finite_differences(x, seed):
    t = direction(seed, x)
    out, tangent_out = jvp(mixing, (x,), (t,))
    np.testing.assert_array_equal(out, mixing(x))
    np.testing.assert_allclose(tangent_out, along(mixing, (x,), (t,)), **TOLERANCE)


@given(params_of_layer, arrays((4, 3)), seeds)
def test_jvp_of_a_pytree_function_of_two_arguments(params, x, seed):
    tangents = direction(seed, (params, x))
    out, tangent_out = jvp(layer, (params, x), tangents)
    assert_trees_close(out, layer(params, x))
    assert_trees_close(tangent_out, along(layer, (params, x), tangents))


@given(small, seeds)
def test_linearize_gives_a_linear_map_reused_for_many_tangents(x, seed):
    t1, t2 = direction(seed, x), direction(seed + 1, x)
    _, jvp_fn = linearize(mixing, x)
    np.testing.assert_allclose(jvp_fn(2 * t1 - t2), 2 * jvp_fn(t1) - jvp_fn(t2), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jvp_fn(t2), along(mixing, (x,), (t2,)), **TOLERANCE)


@given(small, seeds)
def test_jvp_inside_grad_is_differentiable(x, seed):
    v, w = direction(seed, x), direction(seed + 1, x)

    def slope(x):  # <w, J(x) v>
        return ops.sum(w * jvp(mixing, (x,), (v,))[1])

    def pulled_back(x):  # J(x)^T w, whose derivative along v is that of <w, J(x) v>
        return tinyfn.grad(lambda x: ops.sum(mixing(x) * w))(x)

    np.testing.assert_allclose(tinyfn.grad(slope)(x), along(pulled_back, (x,), (v,)), **TOLERANCE)
    # forward over reverse and reverse over reverse give the same Hessian-vector product
    np.testing.assert_allclose(jvp(tinyfn.grad(scalar), (x,), (v,))[1], hvp(scalar)(x, v), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- hvp and hessian


@given(small, seeds)
def test_hvp_matches_finite_differences_of_grad_and_the_hessian_times_v(x, seed):
    v = direction(seed, x)
    hv = hvp(scalar)(x, v)
    np.testing.assert_allclose(hv, along(tinyfn.grad(scalar), (x,), (v,)), **TOLERANCE)
    h = hessian(scalar)(x).reshape(x.size, x.size)
    np.testing.assert_allclose(hv.ravel(), h @ v.ravel(), rtol=1e-10, atol=1e-10)


@given(params_of_layer, arrays((4, 3)), seeds)
def test_hvp_on_a_parameter_tree(params, x, seed):
    def f(params, x):
        out = layer(params, x)
        return ops.sum(out["y"] ** 3) + out["norm"]

    v = direction(seed, params)
    hv = hvp(f)(params, x, v)
    assert_trees_close(hv, along(lambda p: tinyfn.grad(f)(p, x), (params,), (v,)))


@given(st.integers(1, 5).flatmap(lambda n: st.tuples(arrays((n, n)), arrays((n,)))))
def test_hessian_of_a_quadratic_is_the_symmetric_part_of_its_matrix_exactly(a_and_x):
    a, x = a_and_x
    np.testing.assert_array_equal(hessian(lambda x: 0.5 * (x @ (a @ x)))(x), (a + a.T) / 2)


def test_hessian_of_a_parameter_tree_has_jax_layout_and_agrees_with_hvp():
    params = {"w": np.arange(6.0).reshape(3, 2) / 7, "b": np.array([0.3, -0.2])}
    x = np.linspace(-1, 1, 12).reshape(4, 3)

    def f(params):
        return ops.sum(ops.tanh(x @ params["w"] + params["b"]) ** 2)

    h = hessian(f)(params)
    assert h["w"]["w"].shape == (3, 2, 3, 2) and h["w"]["b"].shape == (3, 2, 2) and h["b"]["w"].shape == (2, 3, 2)
    np.testing.assert_allclose(h["w"]["b"], np.moveaxis(h["b"]["w"], 0, -1), rtol=1e-12)
    np.testing.assert_allclose(h["w"]["w"].reshape(6, 6), h["w"]["w"].reshape(6, 6).T, rtol=1e-12)

    def gradient_of_b(w):
        return tinyfn.grad(f)({**params, "w": w})["b"]

    np.testing.assert_allclose(h["b"]["w"], numeric_jacobian(gradient_of_b, params["w"]), **TOLERANCE)
    v = direction(3, params)
    by_blocks = {
        row: sum(np.tensordot(h[row][col], v[col], axes=v[col].ndim) for col in ("b", "w")) for row in ("b", "w")
    }
    assert_trees_close(hvp(f)(params, v), by_blocks, rtol=1e-10, atol=1e-12)


def test_mixed_argnums_select_blocks_of_the_hessian_and_the_jacobian():
    a, b, c = np.array([0.5, -1.0, 2.0]), np.array(0.7), np.array([1.5, 0.2, -0.4])

    def f(a, b, c):
        return ops.sum(a * b**2 * ops.tanh(c)) + ops.sum(a**2 * c**3) + ops.sum(a) * ops.sum(c)

    (h_aa, h_ac), (h_ca, h_cc) = hessian(f, argnums=(0, 2))(a, b, c)
    np.testing.assert_allclose(h_ac, numeric_jacobian(lambda c: tinyfn.grad(f, 0)(a, b, c), c), **TOLERANCE)
    np.testing.assert_allclose(h_cc, numeric_jacobian(lambda c: tinyfn.grad(f, 2)(a, b, c), c), **TOLERANCE)
    np.testing.assert_allclose(h_ca, h_ac.T, rtol=1e-12)
    va, vc = np.array([1.0, 2.0, -1.0]), np.array([0.5, 0.0, 3.0])
    hv_a, hv_c = hvp(f, argnums=(0, 2))(a, b, c, (va, vc))
    np.testing.assert_allclose(hv_a, h_aa @ va + h_ac @ vc, rtol=1e-10)
    np.testing.assert_allclose(hv_c, h_ca @ va + h_cc @ vc, rtol=1e-10)
    reverse = jacobian(f, argnums=(2, 0))(a, b, c)
    forward = jacobian(f, argnums=(2, 0), mode="forward")(a, b, c)
    assert_trees_close(reverse, forward, rtol=1e-12, atol=1e-12)
    assert_trees_close(reverse, (tinyfn.grad(f, 2)(a, b, c), tinyfn.grad(f, 0)(a, b, c)), rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- jacobian


@given(small)
def test_jacobian_forward_equals_reverse_equals_finite_differences(x):
    reverse = jacobian(mixing)(x)
    forward = jacobian(mixing, mode="forward")(x)
    assert reverse.shape == forward.shape == x.shape + x.shape
    np.testing.assert_allclose(forward, reverse, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(reverse, numeric_jacobian(mixing, x), **TOLERANCE)


@given(params_of_layer, arrays((2, 3)))
def test_jacobian_of_pytrees_in_both_modes(params, x):
    reverse = jacobian(layer)(params, x)
    forward = jacobian(layer, mode="forward")(params, x)
    assert_trees_close(forward, reverse, rtol=1e-12, atol=1e-12)
    assert reverse["y"]["w"].shape == (2, 2, 3, 2) and reverse["norm"]["b"].shape == (2,)
    for name in ("b", "w"):

        def of_leaf(leaf):
            return layer({**params, name: leaf}, x)["y"]

        np.testing.assert_allclose(reverse["y"][name], numeric_jacobian(of_leaf, params[name]), **TOLERANCE)
    np.testing.assert_allclose(reverse["norm"]["w"], 2 * params["w"], rtol=1e-12)


# ----------------------------------------------------------------------------- nesting


@pytest.mark.parametrize("x", [-2.0, 0.5, 3.0])
def test_no_perturbation_confusion(x):
    # d/dx [x * d/dy (x + y)] = d/dx [x * 1] = 1; confusing the two perturbations gives 2
    def with_grad(x):
        return x * tinyfn.grad(lambda y: x + y)(np.array(1.0))

    def with_jvp(x):
        return x * jvp(lambda y: x + y, (np.array(1.0),), (np.array(1.0),))[1]

    assert tinyfn.grad(with_grad)(np.array(x)) == 1.0
    assert tinyfn.grad(with_jvp)(np.array(x)) == 1.0
    assert jvp(with_grad, (np.array(x),), (np.array(1.0),))[1] == 1.0


def test_third_and_fourth_derivatives_of_a_polynomial_are_exact():
    def p(x):
        return 3 * x**4 - 2 * x**3 + x**2 - 5 * x + 7

    def derivative(f):
        return tinyfn.grad(lambda x: ops.sum(f(x)))  # elementwise f: the sum's gradient is f'

    x = np.array([-2.0, -1.0, 0.0, 1.0, 2.5])
    np.testing.assert_array_equal(derivative(derivative(p))(x), 36 * x**2 - 12 * x + 2)
    np.testing.assert_array_equal(derivative(derivative(derivative(p)))(x), 72 * x - 12)
    np.testing.assert_array_equal(derivative(derivative(derivative(derivative(p))))(x), np.full(5, 72.0))


def test_a_chain_of_10000_ops_differentiates_twice_without_recursion_error():
    c, n = 1.0001, 10_000

    def f(x):
        for _ in range(n):
            x = x * c
        return x * x  # (c^n x)^2, whose second derivative is 2 c^(2n)

    second = tinyfn.grad(tinyfn.grad(f))(np.array(0.3))
    np.testing.assert_allclose(second, 2 * c ** (2 * n), rtol=1e-10)


@given(arrays((4, 3)), seeds)
def test_a_gradient_penalty_inside_a_loss_differentiates_like_finite_differences(x, seed):
    params, lam = mlp_params(seed, sizes=(3, 4, 1)), 0.3
    y = np.array([0.5, -1.0, 0.0, 2.0])

    def f(params, x):
        return ops.sum(ops.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"])

    def loss(params):
        predictions = ops.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
        return ops.mean((predictions[:, 0] - y) ** 2)

    def penalized(params):
        return loss(params) + lam * ops.sum(tinyfn.grad(f, argnums=1)(params, x) ** 2)

    value, grads = tinyfn.value_and_grad(penalized)(params)
    np.testing.assert_allclose(value, penalized(params), rtol=1e-14)
    assert_trees_close(grads, numeric_gradient(penalized, params))


def test_hvp_of_an_mlp_loss_matches_pytorch_double_backward():
    torch = pytest.importorskip("torch")
    params, v = mlp_params(0, sizes=(6, 8, 3)), direction(1, mlp_params(0, sizes=(6, 8, 3)))
    x = random.normal(random.key(2), (5, 6), np.float64)
    y = np.array([0, 2, 1, 1, 0])
    ours = hvp(mlp_loss)(params, x, y, v)

    names = sorted(params)
    p = {k: torch.tensor(params[k], requires_grad=True) for k in names}
    logits = torch.tanh(torch.tensor(x) @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
    grads = torch.autograd.grad(loss, [p[k] for k in names], create_graph=True)
    slope = sum((g * torch.tensor(v[k])).sum() for g, k in zip(grads, names))
    theirs = torch.autograd.grad(slope, [p[k] for k in names])
    assert_trees_close(ours, {k: t.numpy() for k, t in zip(names, theirs)}, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- errors


def test_hvp_and_hessian_of_a_non_scalar_function_name_the_shape_found():
    x = np.ones(3)
    with pytest.raises(TypeError, match=r"hvp requires f to return a scalar.*found shape \(3,\)"):
        hvp(mixing)(x, x)
    with pytest.raises(TypeError, match=r"hessian requires f to return a scalar.*found shape \(3,\)"):
        hessian(mixing)(x)
    with pytest.raises(TypeError, match="found a dict"):
        hessian(lambda x: {"loss": ops.sum(x)})(x)


def test_tangents_of_the_wrong_shape_or_structure_name_what_was_expected_and_found():
    params, x = {"w": np.ones((3, 2)), "b": np.zeros(2)}, np.ones((4, 3))
    wrong_shape = r"jvp: tangents at '0/w': expected a float array of shape \(3, 2\).*found float64 of shape \(2, 3\)"
    with pytest.raises(tree.TreeMismatchError, match=wrong_shape):
        jvp(layer, (params, x), ({"w": np.ones((2, 3)), "b": np.zeros(2)}, x))
    wrong_structure = r"structure of the arguments: expected \(\{'b': \*, 'w': \*\}, \*\), found \(\{'w': \*\}, \*\)"
    with pytest.raises(tree.TreeMismatchError, match=wrong_structure):
        jvp(layer, (params, x), ({"w": np.ones((3, 2))}, x))
    with pytest.raises(tree.TreeMismatchError, match=r"at '0': expected a float array.*found int64"):
        jvp(mixing, (np.ones(3),), (np.ones(3, dtype=np.int64),))
    with pytest.raises(tree.TreeMismatchError, match=r"hvp: v at '0': expected a float array of shape \(3,\).*shape \(4,\)"):
        hvp(scalar)(np.ones(3), np.ones(4))
    with pytest.raises(TypeError, match=r"tuple with one entry per argument.*jvp\(f, \(x,\), \(v,\)\)"):
        jvp(mixing, np.ones(3), np.ones(3))


def test_jacobian_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="mode must be 'reverse' or 'forward', found 'sideways'"):
        jacobian(mixing, mode="sideways")
