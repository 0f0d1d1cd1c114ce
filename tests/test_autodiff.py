"""Graph autodiff: the trace, the topological sort, accumulation, pytree arguments, errors."""

import weakref

import numpy as np
import pytest

import tinyfn
from tinyfn import ops, tree
from tinyfn.autodiff import PRIMITIVES, Node, Primitive, toposort
from tinyfn.testing import check_grads

from gradient_registry import covers


def test_chain_of_100000_ops_differentiates_without_recursion_error():
    def chain(x):
        for _ in range(100_000):
            x = x * 1.00001
        return x.sum()

    g = tinyfn.grad(chain)(np.array([1.0, 2.0]))
    np.testing.assert_allclose(g, [1.00001**100_000] * 2, rtol=1e-9)


def test_a_node_used_three_times_accumulates_every_contribution():
    # d/da (a*a + a) = 2a + 1
    g = tinyfn.grad(lambda a: (a * a + a).sum())(np.array([-1.5, 0.0, 2.0]))
    np.testing.assert_array_equal(g, [-2.0, 1.0, 5.0])


def test_repeated_calls_give_identical_fresh_gradients():
    w = np.array([[0.3, -0.2], [0.1, 0.4]])
    x = np.array([[1.0, 2.0], [3.0, -1.0]])
    f = tinyfn.grad(lambda w: ops.tanh(x @ w).sum())
    first, second = f(w), f(w)
    np.testing.assert_array_equal(first, second)
    assert first is not second


def test_gradient_of_a_pytree_argument_has_its_structure():
    params = {"layer": {"w": np.ones((2, 3)), "b": np.zeros(3)}, "scale": [np.array(2.0)]}
    x = np.array([[1.0, 2.0]])

    def loss(params, x):
        y = (x @ params["layer"]["w"] + params["layer"]["b"]) * params["scale"][0]
        return (y * y).sum()

    g = tinyfn.grad(loss)(params, x)
    assert tree.structure(g) == tree.structure(params)
    # y = 2 * (x @ w + b) = 2 * 3 = 6 for every column; dL/dy = 2y = 12
    np.testing.assert_allclose(g["layer"]["b"], [24.0, 24.0, 24.0])
    np.testing.assert_allclose(g["layer"]["w"], [[24.0] * 3, [48.0] * 3])
    np.testing.assert_allclose(g["scale"][0], 3 * 36.0 * 2 / 2)
    check_grads(loss, (params, x), argnums=0)


def test_argnums_tuple_and_has_aux():
    f = lambda a, b, c: ((a * b).sum() + c, {"product": a * b})
    (value, aux), (ga, gb) = tinyfn.value_and_grad(f, argnums=(0, 1), has_aux=True)(
        np.array([1.0, 2.0]), np.array([3.0, 4.0]), 10.0
    )
    assert value == 21.0
    np.testing.assert_array_equal(aux["product"], [3.0, 8.0])
    assert not isinstance(aux["product"], Node)
    np.testing.assert_array_equal(ga, [3.0, 4.0])
    np.testing.assert_array_equal(gb, [1.0, 2.0])


def test_grad_of_a_non_scalar_output_is_a_clear_error():
    with pytest.raises(TypeError, match=r"scalar.*shape \(3,\)"):
        tinyfn.grad(lambda x: x * 2)(np.ones(3))


def test_grad_with_respect_to_integers_is_a_clear_error():
    with pytest.raises(TypeError, match="floating-point.*int64"):
        tinyfn.grad(lambda x: x.sum())(np.arange(3))


def test_output_not_depending_on_the_input_gives_zero_gradient():
    g = tinyfn.grad(lambda x: np.float64(3.0))(np.ones((2, 2)))
    np.testing.assert_array_equal(g, np.zeros((2, 2)))


def test_vjp_of_a_vector_function():
    x = np.array([1.0, 2.0, 3.0])
    out, vjp_fn = tinyfn.vjp(lambda x: ops.exp(x) * 2, x)
    np.testing.assert_allclose(out, 2 * np.exp(x))
    (g,) = vjp_fn(np.array([1.0, 0.0, 2.0]))
    np.testing.assert_allclose(g, [2 * np.exp(1.0), 0.0, 4 * np.exp(3.0)])


def test_numpy_ufuncs_on_traced_values_use_the_differentiable_ops():
    x = np.array([0.5, 2.0])
    g = tinyfn.grad(lambda x: (np.exp(x) + np.ones(2) * x).sum())(x)
    np.testing.assert_allclose(g, np.exp(x) + 1)


def test_numpy_function_without_a_differentiable_version_is_a_clear_error():
    with pytest.raises(TypeError, match="tinyfn.ops"):
        tinyfn.grad(lambda x: np.sin(x).sum())(np.ones(2))
    np.testing.assert_allclose(tinyfn.grad(lambda x: np.mean(x))(np.ones(4)), np.full(4, 0.25))


def test_outside_a_trace_primitives_return_plain_arrays():
    y = ops.tanh(np.ones(3)) @ np.ones(3)
    assert type(y) is np.float64
    assert type(ops.relu(np.ones((2, 2)))) is np.ndarray


def test_toposort_puts_parents_before_children():
    a = Node(np.ones(2), name="a")
    b = ops.multiply(a, a)
    c = ops.add(b, a)
    d = ops.multiply(c, b)
    order = toposort([d])
    position = {id(n): i for i, n in enumerate(order)}
    assert len(order) == 4
    for node in order:
        for parent in node.args:
            if isinstance(parent, Node):
                assert position[id(parent)] < position[id(node)]


def _cube_forward(x):
    return x**3, x


def _cube_vjp(g, x, needs):
    return (g * 3 * x**2,)


cube = Primitive("test_cube", _cube_forward, _cube_vjp)


@covers("test_cube")
def test_user_defined_primitive_like_the_docstring_example():
    np.testing.assert_allclose(tinyfn.grad(lambda x: cube(x).sum())(np.array([1.0, 2.0])), [3.0, 12.0])
    check_grads(cube, (np.array([[0.5, -1.2], [2.0, 0.3]]),))


# The same primitive given by impl and keep: the output is np.power's, the residual is x.
cube_kept = Primitive("test_cube_kept", vjp=_cube_vjp, impl=lambda x: np.power(x, 3), keep=lambda out, x: x)


@covers("test_cube_kept", order=2)
def test_a_primitive_given_by_impl_and_keep_differentiates_to_any_order():
    x = np.array([1.0, -2.0])
    np.testing.assert_array_equal(tinyfn.grad(lambda x: cube_kept(x).sum())(x), [3.0, 12.0])  # 3x^2
    assert float(tinyfn.grad(tinyfn.grad(cube_kept))(2.0)) == 12.0  # 6x
    assert float(tinyfn.grad(tinyfn.grad(tinyfn.grad(cube_kept)))(2.0)) == 6.0
    out, residuals = cube_kept.forward(x)  # the forward built from impl and keep
    np.testing.assert_array_equal(out, [1.0, -8.0])
    assert residuals is x
    check_grads(cube_kept, (np.array([[0.5, -1.2], [2.0, 0.3]]),), order=2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vjp": _cube_vjp},  # neither a forward nor impl and keep
        {"vjp": _cube_vjp, "keep": lambda out, x: x},  # keep without impl
        {"forward": _cube_forward, "vjp": _cube_vjp, "impl": np.negative, "keep": lambda out, x: x},  # both
        {"forward": _cube_forward},  # no vjp
    ],
)
def test_a_primitive_needs_a_vjp_and_one_forward(kwargs):
    with pytest.raises(TypeError, match="give a vjp, and either a forward or both impl and keep"):
        Primitive("test_incomplete", **kwargs)
    assert "test_incomplete" not in PRIMITIVES


def test_primitive_names_are_unique():
    with pytest.raises(ValueError, match="already exists"):
        Primitive("exp", _cube_forward, _cube_vjp)
    assert PRIMITIVES["exp"] is ops.exp


def test_redefining_a_primitive_from_the_same_function_replaces_it():
    # what re-running a notebook cell does: the same forward, defined again
    again = Primitive("test_cube", _cube_forward, _cube_vjp)
    try:
        assert PRIMITIVES["test_cube"] is again
    finally:
        PRIMITIVES["test_cube"] = cube


def test_a_value_read_out_of_an_outer_trace_is_a_constant_to_the_inner_one():
    # x.value is a plain array: the inner gradient 2 * x.value does not depend on x
    outer = tinyfn.grad(lambda x: tinyfn.grad(lambda y: (y * y).sum())(x.value).sum() + x.sum())(np.ones(2))
    np.testing.assert_array_equal(outer, [1.0, 1.0])


def test_check_grads_catches_a_wrong_vjp_and_names_the_leaf():
    wrong = Primitive("test_wrong_square", lambda x: (x * x, x), lambda g, x, needs: (g * x,))  # should be 2x
    try:
        with pytest.raises(AssertionError, match="leaf 'w'"):
            check_grads(lambda p: wrong(p["w"]).sum(), ({"w": np.array([1.0, 2.0])},))
    finally:
        del PRIMITIVES["test_wrong_square"]


def _readonly(t):
    return tree.freeze(tree.map(np.array, t))


def test_grad_and_tree_updates_never_change_read_only_inputs():
    params = _readonly({"w": np.array([[0.5, -1.0], [2.0, 0.25]]), "b": np.array([0.1, -0.1])})
    x = _readonly(np.array([[1.0, -2.0]]))
    before = tree.map(np.copy, params)

    def loss(p):
        return ops.softmax(ops.tanh(x @ p["w"] + p["b"])).max()

    grads = tinyfn.grad(loss)(params)
    new = tree.map(lambda p, g: p - 0.1 * g, params, grads)
    for (path, value), (_, original) in zip(tree.leaves_with_path(params), tree.leaves_with_path(before)):
        np.testing.assert_array_equal(value, original, err_msg=path)
    assert not np.array_equal(new["w"], params["w"])


def test_every_primitive_leaves_read_only_inputs_unchanged():
    x = _readonly(np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]]))
    y = _readonly(np.array([[1.5, 2.0, 0.5], [1.0, 0.75, 1.25]]))
    calls = {
        "dense": lambda a, b: tinyfn.layers.dense(a, b.T, b[0, :2]),
        "getitem": lambda a, b: a[np.array([0, 0, 1])],
        "concatenate": lambda a, b: ops.concatenate([a, b]),
        "stack": lambda a, b: ops.stack([a, b]),
        "where": lambda a, b: ops.where(a > 0, a, b),
        "reshape": lambda a, b: ops.reshape(a, (-1,)),
        "broadcast_to": lambda a, b: ops.broadcast_to(a, (2, 2, 3)),
        "softmax_cross_entropy": lambda a, b: tinyfn.losses.softmax_cross_entropy(a, np.array([0, 2])),
        "leaky_relu": lambda a, b: ops.leaky_relu(a),
        "clip": lambda a, b: ops.clip(a, 0.0, 1.0),
    }
    for name in ["add", "subtract", "multiply", "divide", "power", "maximum", "minimum", "matmul"]:
        calls[name] = lambda a, b, p=PRIMITIVES[name]: p(abs(a) if p is ops.power else a, b.T if p is ops.matmul else b)
    for name in ["negative", "exp", "log", "sqrt", "abs", "tanh", "sigmoid", "relu", "softplus", "sum", "mean", "max",
                 "transpose", "log_softmax", "softmax"]:
        fn = getattr(ops, name)
        calls[name] = lambda a, b, fn=fn: fn(abs(a) if fn in (ops.log, ops.sqrt) else a)
    calls["binary_cross_entropy_with_logits"] = lambda a, b: tinyfn.losses.binary_cross_entropy_with_logits(a, b / 2)
    calls["mse"] = lambda a, b: tinyfn.losses.mse(a, b)
    x_before, y_before = x.copy(), y.copy()
    for name, call in calls.items():
        grads = tinyfn.grad(lambda a, b: ops.sum(call(a, b)), argnums=(0, 1))(x, y)
        assert all(np.all(np.isfinite(g)) for g in grads), name
        np.testing.assert_array_equal(x, x_before, err_msg=name)
        np.testing.assert_array_equal(y, y_before, err_msg=name)


def test_gradients_have_the_shape_dtype_and_layout_of_their_inputs():
    params = {"scalar": np.array(2.0, np.float32), "vector": np.ones(3, np.float32)}
    g = tinyfn.grad(lambda p: (p["scalar"] * p["vector"]).sum())(params)
    assert g["scalar"].shape == () and g["scalar"].dtype == np.float32 and g["scalar"] == 3.0
    assert g["vector"].dtype == np.float32 and g["vector"].flags.c_contiguous and g["vector"].flags.writeable


def test_a_training_step_frees_its_arrays_without_the_cycle_collector(no_cycle_collector):
    # Reference cycles would keep every step's gradients in memory until Python's cycle
    # collector ran, so that new arrays could not reuse their memory.
    model = tinyfn.layers.serial(tinyfn.layers.Dense(4, activation="relu"), tinyfn.layers.Dense(2))
    _, params = model.init(tinyfn.random.key(0), (-1, 3))
    loss_and_grads = tinyfn.value_and_grad(
        lambda p, x, y: tinyfn.losses.softmax_cross_entropy(model.apply(p, x), y)
    )
    _, grads = loss_and_grads(params, np.ones((2, 3), np.float32), np.array([0, 1]))
    new_params = tinyfn.optim.sgd_step(params, grads, 0.1)
    refs = [weakref.ref(leaf) for leaf in tree.leaves(grads) + tree.leaves(new_params)]
    del grads, new_params
    still_alive = [r() for r in refs if r() is not None]
    assert still_alive == []
