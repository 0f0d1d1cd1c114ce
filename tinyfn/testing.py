"""Gradient checks and hypothesis strategies for testing differentiable code.

Use these in your own tests:

>>> from hypothesis import given
>>> from tinyfn import ops
>>> from tinyfn.testing import arrays, check_grads, shapes
>>> @given(arrays(shapes()))
... def test_my_loss_gradient(x):
...     check_grads(lambda x: ops.sum(ops.tanh(x) ** 2), (x,), order=2)
>>> test_my_loss_gradient()

:func:`check_grads` compares the VJP that tinyfn computes with central finite differences of
the function itself, so it never trusts the implementation's own gradient numbers.
"""

from __future__ import annotations

import numpy as np

from . import random, tree
from .autodiff import VJPError, vjp

__all__ = ["check_grads", "shapes", "arrays", "broadcastable_shapes", "param_trees"]

# (eps, rtol, atol) per dtype: central differences have error O(eps^2) + rounding/eps.
_TOLERANCES = {
    np.dtype(np.float64): (1e-6, 1e-5, 1e-8),
    np.dtype(np.float32): (1e-3, 3e-2, 1e-3),
}


def _perturbed(f_of, primals, which, direction, step):
    """Evaluate ``f_of(*primals)`` with leaf ``which = (arg, leaf index)`` moved by ``step * direction``."""
    arg, index = which
    moved = list(primals)
    leaves, treedef = tree.flatten(primals[arg])
    leaves = list(leaves)
    leaves[index] = np.asarray(leaves[index]) + step * direction
    moved[arg] = tree.unflatten(treedef, leaves)
    return [np.asarray(o) for o in tree.leaves(f_of(*moved))]


def _dot(a_list, b_list) -> float:
    return float(sum(np.vdot(a, b).real for a, b in zip(a_list, b_list)))


def check_grads(f, args, *, order=1, argnums=None, eps=None, rtol=None, atol=None, directions=2, max_jacobian_size=64, seed=0):
    """Check the gradients tinyfn computes for ``f`` against central finite differences.

    Args:
      f: function of ``args`` returning an array or pytree of arrays (any shape).
      args: tuple of arguments; the differentiated ones are pytrees of float arrays
        (use float64 for tight tolerances).
      order: 1 checks the VJP of ``f``; 2 also checks the derivatives of that VJP (the
        function ``(args, u) -> J(args)^T u`` for a fixed random cotangent ``u``) against
        finite differences of the VJP itself, which is what a second derivative is; and so on.
      argnums: which arguments to check (int or tuple); default all.
      eps, rtol, atol: finite-difference step and tolerances; default by dtype
        (float64: 1e-6, 1e-5, 1e-8; float32: 1e-3, 3e-2, 1e-3).
      directions: random directions per input leaf. For each, a random output cotangent
        ``u`` and input direction ``v`` are drawn and ``<v, J^T u>`` (from the VJP) is
        compared with ``<u, (f(x + eps v) - f(x - eps v)) / 2 eps>``.
      max_jacobian_size: when every checked leaf and the output have at most this many
        elements, the full Jacobian is also compared entry by entry.
      seed: seed of the random directions (the check is deterministic).

    Raises AssertionError naming the argument, the leaf path and the size of the error (and
    the order of the derivative above 1); a VJP rule that returns cotangents of the wrong
    number or shape fails the check the same way.
    """
    args = tuple(args)
    if argnums is None:
        nums = tuple(range(len(args)))
    else:
        nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    primals = [args[n] for n in nums]

    def f_of(*ps):
        full = list(args)
        for n, p in zip(nums, ps):
            full[n] = p
        return f(*full)

    tolerances = dict(eps=eps, rtol=rtol, atol=atol, directions=directions, max_jacobian_size=max_jacobian_size, seed=seed)
    try:
        _check_first_order(f_of, primals, nums, **tolerances)
        if order > 1:
            _check_vjp_derivatives(f_of, primals, order, tolerances)
    except VJPError as e:
        raise AssertionError(f"check_grads: {e}") from e


def _check_vjp_derivatives(f_of, primals, order: int, tolerances: dict) -> None:
    """Check derivatives of orders 2..``order``: those of ``(primals, u) -> vjp(u)``."""
    out = f_of(*primals)
    keys = random.split(random.key(tolerances["seed"] + order), len(tree.leaves(out)))
    leaves, treedef = tree.flatten(out)
    u = tree.unflatten(treedef, [random.normal(k, np.shape(o), np.float64).astype(np.result_type(o)) for k, o in zip(keys, leaves)])

    def vjp_of(*primals_and_u):
        *ps, cotangent = primals_and_u
        return vjp(f_of, *ps)[1](cotangent)

    try:
        check_grads(vjp_of, (*primals, u), order=order - 1, **tolerances)
    except AssertionError as e:
        raise AssertionError(f"order {order}: {e}") from None


def _check_first_order(f_of, primals, nums, *, eps, rtol, atol, directions, max_jacobian_size, seed) -> None:
    """The first-order check of :func:`check_grads` on ``f_of(*primals)``; ``nums`` are the
    primals' positions among the caller's arguments (for messages)."""
    out, vjp_fn = vjp(f_of, *primals)
    out_leaves, out_def = tree.flatten(out)
    out_leaves = [np.asarray(o) for o in out_leaves]
    inputs = [
        (i, j, path, np.asarray(leaf))
        for i, p in enumerate(primals)
        for j, (path, leaf) in enumerate(tree.leaves_with_path(p))
    ]
    dtype = np.result_type(*[leaf for *_, leaf in inputs], *out_leaves) if inputs else np.float64
    default = _TOLERANCES.get(np.dtype(dtype), _TOLERANCES[np.dtype(np.float32)])
    eps = default[0] if eps is None else eps
    rtol = default[1] if rtol is None else rtol
    atol = default[2] if atol is None else atol

    def where(i, path):
        name = f"argument {nums[i]}"
        return name if path == "<root>" else f"{name}, leaf '{path}'"

    def fail(i, path, what, analytic, numeric):
        raise AssertionError(
            f"check_grads: {what} for {where(i, path)} disagrees with finite differences: "
            f"VJP gives {analytic!r}, finite differences give {numeric!r} "
            f"(|difference| = {np.max(np.abs(np.subtract(analytic, numeric))):.3g}, eps={eps}, rtol={rtol}, atol={atol})"
        )

    key = random.key(seed)
    for direction_key in random.split(key, directions):
        u_key, v_key = random.split(direction_key)
        us = [random.normal(k, o.shape, np.float64).astype(o.dtype) for k, o in zip(random.split(u_key, len(out_leaves)), out_leaves)]
        grads = vjp_fn(tree.unflatten(out_def, us))
        grad_leaves = [g for gp in grads for g in tree.leaves(gp)]
        for (i, j, path, leaf), g, k in zip(inputs, grad_leaves, random.split(v_key, len(inputs))):
            v = random.normal(k, leaf.shape, np.float64).astype(leaf.dtype)
            plus = _perturbed(f_of, primals, (i, j), v, eps)
            minus = _perturbed(f_of, primals, (i, j), v, -eps)
            numeric = (_dot(us, plus) - _dot(us, minus)) / (2 * eps)
            analytic = float(np.vdot(v, g).real)
            if not np.isclose(analytic, numeric, rtol=rtol, atol=atol * max(1.0, np.sqrt(leaf.size))):
                fail(i, path, "a random directional derivative", analytic, numeric)

    out_size = sum(o.size for o in out_leaves)
    if out_size > max_jacobian_size or any(leaf.size > max_jacobian_size for *_, leaf in inputs):
        return
    # Full Jacobian: row r from the VJP with cotangent e_r, column c from finite differences.
    rows = []
    for r in range(out_size):
        flat = np.zeros(out_size)
        flat[r] = 1.0
        pieces = np.split(flat, np.cumsum([o.size for o in out_leaves])[:-1])
        us = [p.reshape(o.shape).astype(o.dtype) for p, o in zip(pieces, out_leaves)]
        grads = vjp_fn(tree.unflatten(out_def, us))
        rows.append([np.ravel(g) for gp in grads for g in tree.leaves(gp)])
    for position, (i, j, path, leaf) in enumerate(inputs):
        analytic = np.array([row[position] for row in rows]).reshape(out_size, leaf.size)
        numeric = np.empty_like(analytic)
        for c in range(leaf.size):
            e = np.zeros(leaf.size, dtype=leaf.dtype)
            e[c] = 1
            e = e.reshape(leaf.shape)
            plus = np.concatenate([p.ravel() for p in _perturbed(f_of, primals, (i, j), e, eps)])
            minus = np.concatenate([m.ravel() for m in _perturbed(f_of, primals, (i, j), e, -eps)])
            numeric[:, c] = (plus - minus) / (2 * eps)
        if not np.allclose(analytic, numeric, rtol=rtol, atol=atol):
            fail(i, path, "the Jacobian", analytic, numeric)


# ----------------------------------------------------------------------------- hypothesis strategies


def shapes(min_dims=0, max_dims=3, min_side=1, max_side=5):
    """Strategy for array shapes (tuples of ints), small by default."""
    from hypothesis.extra import numpy as hnp

    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcastable_shapes(max_dims=3, max_side=4):
    """Strategy for pairs of shapes that broadcast against each other (sides of 1 included)."""
    from hypothesis.extra import numpy as hnp

    return hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=max_dims, max_side=max_side).map(
        lambda s: s.input_shapes
    )


def arrays(shape, *, dtype=np.float64, low=-3.0, high=3.0, unique=False):
    """Strategy for finite, well-scaled float arrays of ``shape`` (a tuple or a shapes strategy).

    Values lie on a grid of step 0.01 in ``[low, high]``, shifted by 0.003 so that they never
    sit on the kinks of common functions (0 for relu/abs, integers). With ``unique=True``
    all entries differ by at least 0.01, so maxima have no ties within a finite-difference step.
    """
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    grid = st.integers(int(np.ceil(low * 100)), int(np.floor(high * 100)) - 1).map(lambda i: i / 100 + 0.003)
    return hnp.arrays(dtype=dtype, shape=shape, elements=grid, unique=unique)


def param_trees(max_leaves=4, dtype=np.float64):
    """Strategy for parameter pytrees: dicts (string keys) of small float arrays, nested once."""
    from hypothesis import strategies as st

    leaf = arrays(shapes(max_dims=2, max_side=3), dtype=dtype)
    names = st.text("abcdefgh_", min_size=1, max_size=6)
    inner = st.dictionaries(names, leaf, min_size=1, max_size=2)
    return st.dictionaries(names, st.one_of(leaf, inner), min_size=1, max_size=max_leaves)
