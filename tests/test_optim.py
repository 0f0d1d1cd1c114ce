"""Optimizers and gradient transformations.

Each optimizer runs a few steps on a small tree (two leaves of different shapes) and is compared
with the textbook update equations, written below as plain per-leaf NumPy loops (independent of
tinyfn.optim), and with ``torch.optim`` when torch is installed. Then: purity (read-only inputs
are never written), dtypes, error messages, and optimizer states as plain, saveable pytrees.
"""

from typing import Callable, NamedTuple

import numpy as np
import pytest

from tinyfn import optim, tree

LR = 0.05
STEPS = 5


def decaying_lr(step):
    """A learning-rate schedule written here, so the equation tests do not rely on tinyfn's."""
    return LR / (1 + step)


SHAPES = {"w": (3, 2), "b": (2,)}


def random_tree(rng, dtype):
    return tree.freeze({name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()})


def make_params(dtype=np.float64):
    return random_tree(np.random.default_rng(0), dtype)


def make_grads(dtype=np.float64, steps=STEPS):
    rng = np.random.default_rng(1)
    return [random_tree(rng, dtype) for _ in range(steps)]


def run(optimizer, params, grad_seq, state=None):
    """Apply ``optimizer`` once per gradient tree, from ``state`` (default: a fresh one);
    returns ``(params, state)``."""
    state = optimizer.init(params) if state is None else state
    for grads in grad_seq:
        updates, state = optimizer.update(grads, state, params)
        params = optim.apply_updates(params, updates)
    return params, state


def assert_trees_close(actual, expected, rtol=1e-12, atol=1e-14):
    assert tree.structure(actual) == tree.structure(expected)
    for (path, a), e in zip(tree.leaves_with_path(actual), tree.leaves(expected)):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=path)


# --- textbook equations, one leaf at a time (p: parameter, gs: its gradients, lrs: rates) ---


def reference_sgd(p, gs, lrs, momentum=0.0, nesterov=False, weight_decay=0.0):
    """PyTorch's SGD pseudo-code (dampening 0): the momentum buffer starts as the first gradient."""
    buf = None
    for g, lr in zip(gs, lrs):
        g = g + weight_decay * p
        if momentum:
            buf = g if buf is None else momentum * buf + g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def reference_adam(p, gs, lrs, b1, b2, eps, decoupled_decay=0.0):
    """Adam with bias correction; AdamW when ``decoupled_decay`` > 0 (p shrinks by lr * wd * p first)."""
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, (g, lr) in enumerate(zip(gs, lrs), start=1):
        p = p - lr * decoupled_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def reference_rmsprop(p, gs, lrs, alpha, eps, momentum=0.0):
    """PyTorch's RMSprop (not centered): eps is added after the square root."""
    v, buf = np.zeros_like(p), np.zeros_like(p)
    for g, lr in zip(gs, lrs):
        v = alpha * v + (1 - alpha) * g**2
        step = g / (np.sqrt(v) + eps)
        if momentum:
            buf = momentum * buf + step
            step = buf
        p = p - lr * step
    return p


def reference_adagrad(p, gs, lrs, initial_accumulator_value, eps):
    """PyTorch's Adagrad with lr_decay 0."""
    s = np.full_like(p, initial_accumulator_value)
    for g, lr in zip(gs, lrs):
        s = s + g**2
        p = p - lr * g / (np.sqrt(s) + eps)
    return p


class Case(NamedTuple):
    make: Callable  # learning_rate -> GradientTransformation
    reference: Callable  # (leaf name, p, gs, lrs) -> final p
    torch: Callable  # (torch module, {name: tensor}, lr) -> torch optimizer


def _groups_decaying_w_only(tensors, weight_decay):
    return [{"params": [tensors["w"]], "weight_decay": weight_decay}, {"params": [tensors["b"]], "weight_decay": 0.0}]


# Hyperparameters differ from the defaults (and eps is large enough to matter) so that a swapped
# or ignored argument shows up.
CASES = {
    "sgd": Case(
        lambda lr: optim.sgd(lr),
        lambda name, p, gs, lrs: reference_sgd(p, gs, lrs),
        lambda torch, ts, lr: torch.optim.SGD(ts.values(), lr=lr),
    ),
    "sgd_momentum": Case(
        lambda lr: optim.sgd(lr, momentum=0.9),
        lambda name, p, gs, lrs: reference_sgd(p, gs, lrs, momentum=0.9),
        lambda torch, ts, lr: torch.optim.SGD(ts.values(), lr=lr, momentum=0.9),
    ),
    "sgd_nesterov": Case(
        lambda lr: optim.sgd(lr, momentum=0.8, nesterov=True),
        lambda name, p, gs, lrs: reference_sgd(p, gs, lrs, momentum=0.8, nesterov=True),
        lambda torch, ts, lr: torch.optim.SGD(ts.values(), lr=lr, momentum=0.8, nesterov=True),
    ),
    "sgd_l2": Case(
        lambda lr: optim.chain(optim.add_weight_decay(0.1), optim.sgd(lr, momentum=0.9)),
        lambda name, p, gs, lrs: reference_sgd(p, gs, lrs, momentum=0.9, weight_decay=0.1),
        lambda torch, ts, lr: torch.optim.SGD(ts.values(), lr=lr, momentum=0.9, weight_decay=0.1),
    ),
    "adam": Case(
        lambda lr: optim.adam(lr, b1=0.8, b2=0.95, eps=1e-3),
        lambda name, p, gs, lrs: reference_adam(p, gs, lrs, 0.8, 0.95, 1e-3),
        lambda torch, ts, lr: torch.optim.Adam(ts.values(), lr=lr, betas=(0.8, 0.95), eps=1e-3),
    ),
    "adamw": Case(
        lambda lr: optim.adamw(lr, b1=0.8, b2=0.95, eps=1e-3, weight_decay=0.5),
        lambda name, p, gs, lrs: reference_adam(p, gs, lrs, 0.8, 0.95, 1e-3, decoupled_decay=0.5),
        lambda torch, ts, lr: torch.optim.AdamW(ts.values(), lr=lr, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.5),
    ),
    "adamw_no_bias_decay": Case(
        lambda lr: optim.adamw(lr, 0.8, 0.95, 1e-3, weight_decay=0.5, mask=optim.decay_mask_no_bias),
        lambda name, p, gs, lrs: reference_adam(p, gs, lrs, 0.8, 0.95, 1e-3, 0.5 if name == "w" else 0.0),
        lambda torch, ts, lr: torch.optim.AdamW(_groups_decaying_w_only(ts, 0.5), lr=lr, betas=(0.8, 0.95), eps=1e-3),
    ),
    "rmsprop": Case(
        lambda lr: optim.rmsprop(lr, decay=0.8, eps=1e-3),
        lambda name, p, gs, lrs: reference_rmsprop(p, gs, lrs, 0.8, 1e-3),
        lambda torch, ts, lr: torch.optim.RMSprop(ts.values(), lr=lr, alpha=0.8, eps=1e-3),
    ),
    "rmsprop_momentum": Case(
        lambda lr: optim.rmsprop(lr, decay=0.8, eps=1e-3, momentum=0.7),
        lambda name, p, gs, lrs: reference_rmsprop(p, gs, lrs, 0.8, 1e-3, momentum=0.7),
        lambda torch, ts, lr: torch.optim.RMSprop(ts.values(), lr=lr, alpha=0.8, eps=1e-3, momentum=0.7),
    ),
    "adagrad": Case(
        lambda lr: optim.adagrad(lr, initial_accumulator_value=0.2, eps=1e-3),
        lambda name, p, gs, lrs: reference_adagrad(p, gs, lrs, 0.2, 1e-3),
        lambda torch, ts, lr: torch.optim.Adagrad(ts.values(), lr=lr, initial_accumulator_value=0.2, eps=1e-3),
    ),
}

case_names = pytest.mark.parametrize("name", list(CASES))
with_and_without_schedule = pytest.mark.parametrize("scheduled", [False, True], ids=["constant_lr", "scheduled_lr"])


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@case_names
@with_and_without_schedule
def test_optimizer_follows_textbook_equations(name, scheduled):
    case = CASES[name]
    params, grad_seq = make_params(), make_grads()
    lrs = [decaying_lr(t) if scheduled else LR for t in range(STEPS)]

    got, state = run(case.make(decaying_lr if scheduled else LR), params, grad_seq)

    expected = {leaf: case.reference(leaf, params[leaf], [g[leaf] for g in grad_seq], lrs) for leaf in params}
    assert_trees_close(got, expected)
    assert optim.current_learning_rate(state) == lrs[-1]


@case_names
@with_and_without_schedule
def test_optimizer_matches_torch(name, scheduled, torch):
    case = CASES[name]
    params, grad_seq = make_params(), make_grads()
    tensors = {leaf: torch.tensor(np.array(p), requires_grad=True) for leaf, p in params.items()}
    torch_optimizer = case.torch(torch, tensors, LR)
    # LambdaLR multiplies the base rate by the factor: LR * 1 / (1 + step) == decaying_lr(step)
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch_optimizer, lambda step: 1 / (1 + step)) if scheduled else None
    for grads in grad_seq:
        for leaf, tensor in tensors.items():
            tensor.grad = torch.tensor(np.array(grads[leaf]))
        torch_optimizer.step()
        if scheduler is not None:
            scheduler.step()

    got, _ = run(case.make(decaying_lr if scheduled else LR), params, grad_seq)

    assert_trees_close(got, {leaf: t.detach().numpy() for leaf, t in tensors.items()}, rtol=1e-10)


def test_adam_first_step_moves_each_coordinate_by_lr_times_sign_of_gradient():
    # after bias correction m_hat = g and v_hat = g**2, so the step is lr * g / (|g| + eps)
    params = {"w": np.zeros(3)}
    grads = {"w": np.array([-2.0, 0.5, 1e3])}
    new, _ = run(optim.adam(0.1), params, [grads])
    np.testing.assert_allclose(new["w"], [0.1, -0.1, -0.1], rtol=1e-7)


# --- sgd_step ------------------------------------------------------------------------------


def test_sgd_step_is_params_minus_lr_times_grads_in_the_params_dtype():
    params = make_params(np.float32)
    grads = make_grads(np.float64, steps=1)[0]  # float64 grads must not promote float32 params
    new = optim.sgd_step(params, grads, 0.1)
    for leaf in params:
        assert new[leaf].dtype == np.float32
        assert not new[leaf].flags.writeable
        np.testing.assert_allclose(new[leaf], params[leaf] - 0.1 * grads[leaf], rtol=1e-6)


def test_sgd_step_leaves_inputs_untouched():
    params, grads = make_params(), make_grads(steps=1)[0]
    before = tree.map(np.copy, (params, grads))
    optim.sgd_step(params, grads, np.float64(0.1))
    assert_trees_close((params, grads), before, rtol=0, atol=0)


def test_sgd_step_equals_the_sgd_optimizer_bit_for_bit():
    params, grad_seq = make_params(np.float32), make_grads(np.float32)
    stepped = params
    for grads in grad_seq:
        stepped = optim.sgd_step(stepped, grads, LR)
    optimized, _ = run(optim.sgd(LR), params, grad_seq)
    assert_trees_close(stepped, optimized, rtol=0, atol=0)


# Bad gradients, updates and hyperparameters are refused: see tests/test_bad_inputs_core.py.


# --- purity, dtypes, 0-d parameters ---------------------------------------------------------


@case_names
def test_optimizer_never_writes_to_its_inputs(name):
    # every input is read-only, so any in-place write would raise
    optimizer = CASES[name].make(decaying_lr)
    params, grad_seq = make_params(), make_grads(steps=2)
    state = tree.freeze(optimizer.init(params))
    for grads in grad_seq:
        before = tree.map(np.copy, (params, grads, state))
        updates, new_state = optimizer.update(grads, state, params)
        assert_trees_close((params, grads, state), before, rtol=0, atol=0)
        params, state = optim.apply_updates(params, updates), tree.freeze(new_state)
    assert all(not p.flags.writeable for p in tree.leaves(params))


def assert_float32_arrays_or_python_numbers(*trees):
    for path, leaf in tree.leaves_with_path(trees):
        assert type(leaf) in (int, float) or (type(leaf) is np.ndarray and leaf.dtype == np.float32), (path, leaf)


@case_names
def test_float32_stays_float32(name):
    # a learning rate given as a numpy float64 scalar must not promote float32 either
    optimizer = CASES[name].make(np.float64(LR))
    params, grad_seq = make_params(np.float32), make_grads(np.float32)
    state = optimizer.init(params)
    for grads in grad_seq:
        updates, state = optimizer.update(grads, state, params)
        params = optim.apply_updates(params, updates)
        assert_float32_arrays_or_python_numbers(updates, params, state)


def test_numpy_float64_hyperparameters_do_not_promote_float32():
    f64 = np.float64
    optimizer = optim.adamw(f64(0.1), b1=f64(0.9), b2=f64(0.99), eps=f64(1e-8), weight_decay=f64(0.1))
    assert_float32_arrays_or_python_numbers(run(optimizer, make_params(np.float32), make_grads(np.float32)))


@case_names
def test_zero_dimensional_parameters_stay_read_only_arrays(name):
    params = {"scale": np.array(2.0, dtype=np.float32)}
    grad_seq = [{"scale": np.array(0.5, dtype=np.float32)}] * 2
    new, state = run(CASES[name].make(LR), params, grad_seq)
    assert isinstance(new["scale"], np.ndarray) and new["scale"].shape == () and not new["scale"].flags.writeable
    assert_float32_arrays_or_python_numbers(state)


# --- optimizer states --------------------------------------------------------------------------


def assert_plain_pytree(node, path="<root>"):
    """Only containers msgpack understands, numpy arrays and Python numbers: no custom classes."""
    if isinstance(node, dict):
        for key, child in node.items():
            assert isinstance(key, str), f"{path}: key {key!r}"
            assert_plain_pytree(child, f"{path}/{key}")
    elif isinstance(node, (tuple, list)):
        assert type(node) in (tuple, list), f"{path}: {type(node).__name__} (a NamedTuple?)"
        for i, child in enumerate(node):
            assert_plain_pytree(child, f"{path}/{i}")
    else:
        assert node is None or type(node) in (np.ndarray, int, float), f"{path}: {type(node).__name__}"


def all_optimizers():
    """Every optimizer case, plus a longer chain; as pytest params with readable ids."""
    composed = optim.chain(
        optim.clip_by_global_norm(1.0),
        optim.scale_by_schedule(decaying_lr),
        optim.adamw(LR, mask=optim.decay_mask_no_bias),
    )
    cases = [pytest.param(case.make(decaying_lr), id=name) for name, case in CASES.items()]
    return cases + [pytest.param(composed, id="clip_schedule_adamw")]


@pytest.mark.parametrize("optimizer", all_optimizers())
def test_state_is_a_plain_pytree(optimizer):
    params, grad_seq = make_params(np.float32), make_grads(np.float32, steps=2)
    assert_plain_pytree(optimizer.init(params))
    assert_plain_pytree(run(optimizer, params, grad_seq)[1])


@pytest.mark.parametrize("optimizer", all_optimizers())
def test_state_round_trips_through_a_checkpoint_and_training_resumes_bit_for_bit(optimizer):
    checkpoint = pytest.importorskip("tinyfn.checkpoint")
    params, grad_seq = make_params(np.float32), make_grads(np.float32, steps=4)
    uninterrupted, _ = run(optimizer, params, grad_seq)

    halfway, state = run(optimizer, params, grad_seq[:2])
    restored = checkpoint.from_bytes(checkpoint.to_bytes({"params": halfway, "opt_state": state}))
    assert_plain_pytree(restored["opt_state"])
    resumed, _ = run(optimizer, restored["params"], grad_seq[2:], restored["opt_state"])
    assert_trees_close(resumed, uninterrupted, rtol=0, atol=0)


def test_chain_rejects_a_state_of_the_wrong_length():
    optimizer = optim.chain(optim.scale(2.0), optim.sgd(LR))
    with pytest.raises(ValueError, match="expects a state of 2 entries, found 1"):
        optimizer.update({"w": np.ones(2)}, (None,))


# --- the learning rate in the state ----------------------------------------------------------


def test_current_learning_rate_follows_the_schedule():
    optimizer = optim.chain(optim.clip_by_global_norm(1.0), optim.sgd(decaying_lr, momentum=0.9))
    params, grads = make_params(), make_grads(steps=1)[0]
    state = optimizer.init(params)
    assert optim.current_learning_rate(state) == decaying_lr(0)  # what the first update will use
    for step in range(3):
        _, state = optimizer.update(grads, state, params)
        assert optim.current_learning_rate(state) == decaying_lr(step)  # what the last update used
    assert state[1][-1] == {"count": 3, "learning_rate": decaying_lr(2)}


def test_current_learning_rate_needs_exactly_one_rate_in_the_state():
    params = make_params()
    with pytest.raises(ValueError, match="exactly one 'learning_rate' entry .* found 0"):
        optim.current_learning_rate(optim.scale(2.0).init(params))
    with pytest.raises(ValueError, match=r"found 2: \['0/1/learning_rate', '1/1/learning_rate'\]"):
        optim.current_learning_rate(optim.chain(optim.adam(0.1), optim.adam(0.2)).init(params))


# --- the transformations on hand-computed examples ---------------------------------------------


def test_clip_by_global_norm():
    grads = {"a": np.array([3.0, 0.0], dtype=np.float32), "b": np.array([[4.0]], dtype=np.float32)}
    assert optim.global_norm(grads) == 5.0
    clip = optim.clip_by_global_norm(1.0)
    clipped, state = clip.update(grads, clip.init(grads))
    assert state is None
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(clipped["b"], [[0.8]], rtol=1e-6)
    assert clipped["a"].dtype == np.float32
    loose = optim.clip_by_global_norm(10.0)
    unchanged, _ = loose.update(grads, loose.init(grads))
    assert_trees_close(unchanged, grads, rtol=0, atol=0)


def test_add_weight_decay_with_and_without_mask():
    params = {"w": np.full((2, 2), 2.0), "b": np.array([10.0, 20.0])}
    grads = {"w": np.ones((2, 2)), "b": np.ones(2)}
    decay_all = optim.add_weight_decay(0.5)
    decay_weights = optim.add_weight_decay(0.5, mask=optim.decay_mask_no_bias)
    decay_by_tree = optim.add_weight_decay(0.5, mask={"w": False, "b": True})

    decayed_w, decayed_b = np.full((2, 2), 2.0), np.array([6.0, 11.0])
    assert_trees_close(decay_all.update(grads, None, params)[0], {"w": decayed_w, "b": decayed_b})
    assert_trees_close(decay_weights.update(grads, None, params)[0], {"w": decayed_w, "b": grads["b"]})
    assert_trees_close(decay_by_tree.update(grads, None, params)[0], {"w": grads["w"], "b": decayed_b})
    with pytest.raises(ValueError, match="add_weight_decay needs the parameters"):
        decay_all.update(grads, None)


def test_decay_mask_no_bias_skips_vectors_and_scalars():
    params = {
        "conv": {"w": np.zeros((4, 3, 3, 3)), "b": np.zeros(4)},
        "norm": {"scale": np.ones(4), "offset": np.zeros(4)},
        "dense": {"w": np.zeros((4, 2))},
    }
    assert optim.decay_mask_no_bias(params) == {
        "conv": {"w": True, "b": False},
        "norm": {"scale": False, "offset": False},
        "dense": {"w": True},
    }


def test_scale_and_scale_by_schedule():
    grads = {"w": np.array([1.0, -2.0])}
    scaled, state = optim.scale(-3.0).update(grads, None)
    assert_trees_close(scaled, {"w": np.array([-3.0, 6.0])})
    assert state is None

    by_step = optim.scale_by_schedule(lambda step: 10.0**step)
    state = by_step.init(grads)
    assert state == {"count": 0, "scale": 1.0}
    for step in range(3):
        scaled, state = by_step.update(grads, state)
        assert_trees_close(scaled, {"w": np.array([1.0, -2.0]) * 10.0**step})
    assert state == {"count": 3, "scale": 100.0}


def test_chain_applies_transformations_in_order():
    grads = {"w": np.array([3.0, 4.0])}  # norm 5

    def norm_after(*transforms):
        chained = optim.chain(*transforms)
        return optim.global_norm(chained.update(grads, chained.init(grads))[0])

    assert norm_after(optim.clip_by_global_norm(1.0), optim.scale(2.0)) == pytest.approx(2.0)
    assert norm_after(optim.scale(2.0), optim.clip_by_global_norm(1.0)) == pytest.approx(1.0)


@case_names
def test_float64_gradients_update_float32_parameters(name):
    # the check on gradients compares dtype kinds, not dtypes: float64 for float32 passes
    params, grad_seq = make_params(np.float32), make_grads(np.float64)
    got, _ = run(CASES[name].make(LR), params, grad_seq)
    f64_params = tree.map(lambda p: p.astype(np.float64), params)
    reference = CASES[name].reference
    expected = {leaf: reference(leaf, f64_params[leaf], [g[leaf] for g in grad_seq], [LR] * STEPS) for leaf in params}
    assert all(leaf.dtype == np.float32 for leaf in tree.leaves(got))
    assert_trees_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("learning_rate", [np.float32(LR), np.array(LR), 1], ids=["numpy float32", "0-d array", "int"])
def test_learning_rates_may_be_numpy_scalars_0d_arrays_or_ints(learning_rate):
    params, grads = make_params(), make_grads(steps=1)[0]
    stepped = optim.sgd_step(params, grads, learning_rate)
    optimized, state = run(optim.sgd(learning_rate), params, [grads])
    expected = {leaf: params[leaf] - float(learning_rate) * grads[leaf] for leaf in params}
    assert_trees_close(stepped, expected, rtol=0, atol=0)
    assert_trees_close(optimized, expected, rtol=0, atol=0)
    assert optim.current_learning_rate(state) == float(learning_rate)
