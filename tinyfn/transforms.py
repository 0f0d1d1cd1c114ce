"""Forward mode and the usual derivative helpers, built on reverse mode.

Everything here is a few lines over :func:`~tinyfn.autodiff.vjp` and
:func:`~tinyfn.autodiff.grad`, which compose because each call opens its own trace level:

* :func:`linearize` and :func:`jvp`: Jacobian-vector products (forward mode), from the
  transpose of the VJP;
* :func:`hvp`: Hessian-vector products, reverse mode over reverse mode;
* :func:`jacobian` (row by row or column by column) and :func:`hessian`: whole matrices, for
  functions of a few hundred numbers at most.

Inputs and outputs are pytrees throughout. Tangents and directions must have the structure
of the arguments they perturb and the same shape leaf for leaf; a mismatch raises
:class:`tinyfn.tree.TreeMismatchError` naming the path (``0/w``: argument 0, leaf ``w``) and
what was expected and found. Every function here may itself be called inside a
differentiation: ``grad`` of a ``jvp``, a ``hessian`` inside a loss, and so on.
"""

from __future__ import annotations

import numpy as np

from . import ops, tree
from .autodiff import _argnum_positions, grad, primal_value, vjp

__all__ = ["linearize", "jvp", "hvp", "jacobian", "hessian"]


# ----------------------------------------------------------------------------- forward mode


def linearize(f, *primals):
    """Evaluate ``f(*primals)`` and return ``(out, jvp_fn)``.

    ``primals`` are pytrees of float arrays; ``out`` is ``f``'s output (a pytree).
    ``jvp_fn(*tangents)`` takes one tangent per primal, each with that primal's structure and
    shapes, and returns ``J t``: the derivative of ``f`` at ``primals`` in the direction of the
    tangents, a pytree with the structure and shapes of ``out``. Call it as often as you
    like: ``f`` is traced once.

    The method is the transpose of the VJP (the "double VJP" trick). ``vjp_fn: u -> J^T u``
    is linear in ``u``, and the VJP of a linear map is its transpose, ``(J^T)^T = J``. So
    ``u -> vjp_fn(u)`` is differentiated once more, at ``u = 0`` (any ``u`` gives the same
    linear map), and the VJP of that, applied to the tangents, is ``J t``. This works because
    every VJP rule in tinyfn is written in tinyfn primitives: forward mode comes for free, and
    there is no second set of rules (JVP rules) to keep in step with the VJP rules. The price
    is speed. On the loss of an MLP 784-512-256-10 at batch 32, ``linearize`` (tracing ``f``
    and recording its backward pass) costs about 1.1 times one ``value_and_grad``, and each
    ``jvp_fn`` call (one backward pass through the recorded backward pass) about 0.6-0.9
    times, where a forward mode with its own JVP rules would cost about one forward pass.
    """
    out, vjp_fn = vjp(f, *primals)
    zero_cotangent = tree.map(lambda o: np.zeros(np.shape(o), np.result_type(primal_value(o))), out)
    _, transpose_fn = vjp(vjp_fn, zero_cotangent)

    def jvp_fn(*tangents):
        _check_like("jvp: tangents", primals, tangents)
        (tangent_out,) = transpose_fn(tuple(tangents))
        return tangent_out

    return out, jvp_fn


def jvp(f, primals, tangents):
    """The Jacobian-vector product of ``f`` at ``primals`` along ``tangents``.

    Args:
      f: function of ``len(primals)`` positional arguments returning a pytree of arrays.
      primals: tuple of arguments, pytrees of float arrays.
      tangents: tuple of the same length: one direction per argument, with its structure
        and shapes.

    Returns ``(out, tangent_out)``: ``out = f(*primals)`` and
    ``tangent_out = d/de f(primals + e * tangents)`` at ``e = 0``, with ``out``'s structure
    and shapes.

    Computed from the transpose of the VJP (see :func:`linearize` for the method and why).
    On the loss of an MLP 784-512-256-10 at batch 32, one ``jvp`` costs about 2 times one
    ``value_and_grad`` (1.8-2.0 in float32 and float64).
    """
    for name, value in (("primals", primals), ("tangents", tangents)):
        if not isinstance(value, (tuple, list)):
            raise TypeError(
                f"jvp: {name} must be a tuple with one entry per argument of f, found {type(value).__name__} "
                f"(write jvp(f, (x,), (v,)) for a function of one argument)"
            )
    out, jvp_fn = linearize(f, *primals)
    return out, jvp_fn(*tangents)


# ----------------------------------------------------------------------------- Hessian-vector products


def hvp(f, argnums=0):
    """Return ``hvp_f(*args, v)``: the Hessian of scalar ``f`` w.r.t. ``args[argnums]``, times ``v``.

    The direction ``v`` comes last, after all of ``f``'s positional arguments:
    ``hvp(loss)(params, x, y, v)``. It has the structure and shapes of ``args[argnums]`` (a
    tuple of such directions when ``argnums`` is a tuple), and so does the result,
    ``H v`` with ``H[i, j] = d^2 f / d arg_i d arg_j``. Keyword arguments go to ``f``.

    Reverse mode over reverse mode: ``grad(lambda x: <grad(f)(x), v>)(x)``. The inner
    gradient, its backward pass included, is recorded by the outer trace, whose backward pass
    then runs once. On the loss of an MLP 784-512-256-10 at batch 32, one ``hvp`` costs
    about 3.5 times one ``value_and_grad`` (3.5-3.9 in float32 and float64): its matrix
    products alone are nearly three times a gradient's. ``f`` must return a scalar (a TypeError
    otherwise: for a vector-valued ``f`` use :func:`jacobian` or :func:`jvp`).
    """
    multiple = isinstance(argnums, (tuple, list))
    grad_f = grad(_scalar_valued("hvp", f), argnums)

    def hvp_f(*args_and_v, **kwargs):
        if len(args_and_v) < 2:
            raise TypeError("hvp: call hvp(f)(*args, v): the arguments of f, then the direction v")
        *args, v = args_and_v
        primals = tuple(args[n] for n in _argnum_positions(argnums, len(args)))
        directions = tuple(v) if multiple and isinstance(v, (tuple, list)) else (v,)
        _check_like("hvp: v", primals, directions)

        def slope_along_v(*args):
            g = grad_f(*args, **kwargs)
            return _vdot(g if multiple else (g,), directions)

        return grad(slope_along_v, argnums)(*args)

    return hvp_f


def _vdot(a, b):
    """The sum over all leaves of ``sum(a_leaf * b_leaf)``: the inner product of two pytrees."""
    return sum(ops.sum(x * y) for x, y in zip(tree.leaves(a), tree.leaves(b)))


# ----------------------------------------------------------------------------- whole matrices


def jacobian(f, argnums=0, mode="reverse"):
    """Return ``jac_f(*args)``: the Jacobian of ``f`` w.r.t. ``args[argnums]``.

    For an array argument and an array output, the result has shape ``out.shape + x.shape``:
    ``jac[i..., j...] = d out[i...] / d x[j...]``. For pytrees it has ``out``'s structure,
    each output leaf replaced by a tree with the argument's structure (a tuple of them when
    ``argnums`` is a tuple) whose leaves have shape ``out_leaf.shape + arg_leaf.shape``:
    JAX's layout.

    ``mode="reverse"`` computes it row by row, one VJP per output entry (f is traced once,
    then one backward pass per row): the cheaper mode when there are fewer outputs than
    inputs. ``mode="forward"`` computes it column by column, one JVP per input entry (see
    :func:`linearize`): cheaper when there are fewer inputs. Keyword arguments go to ``f``.
    """
    if mode not in ("reverse", "forward"):
        raise ValueError(f"jacobian: mode must be 'reverse' or 'forward', found {mode!r}")
    multiple = isinstance(argnums, (tuple, list))

    def jac_f(*args, **kwargs):
        positions = _argnum_positions(argnums, len(args))

        def f_of_primals(*primals):
            full = list(args)
            for n, p in zip(positions, primals):
                full[n] = p
            return f(*full, **kwargs)

        primals = tuple(args[n] for n in positions)
        out, matrix = _jacobian_matrix(f_of_primals, primals, mode)
        return _blocks(matrix, out, primals if multiple else primals[0])

    return jac_f


def hessian(f, argnums=0):
    """Return ``hess_f(*args)``: the matrix of second derivatives of scalar ``f`` w.r.t.
    ``args[argnums]``.

    ``jacobian(grad(f, argnums), argnums)``, reverse over reverse: for an array argument
    ``x`` the result has shape ``x.shape + x.shape`` and is symmetric; for pytrees the
    layout is :func:`jacobian`'s. ``f`` must return a scalar (a TypeError otherwise).
    """
    return jacobian(grad(_scalar_valued("hessian", f), argnums), argnums)


def _jacobian_matrix(f, primals: tuple, mode: str):
    """``(out, J)``, ``J`` of shape (entries of out, entries of the primals): every leaf
    flattened and laid end to end in leaf order, rows for outputs, columns for inputs."""
    if mode == "reverse":
        out, vjp_fn = vjp(f, *primals)
        return out, ops.stack([_flat(vjp_fn(cotangent)) for cotangent in _basis(out)], axis=0)
    out, jvp_fn = linearize(f, *primals)
    return out, ops.stack([_flat(jvp_fn(*tangents)) for tangents in _basis(primals)], axis=1)


def _flat(pytree):
    """All entries of a pytree's leaves in one vector (a traced value inside a differentiation)."""
    return ops.concatenate([ops.reshape(leaf, (-1,)) for leaf in tree.leaves(pytree)])


def _bounds(leaves) -> list[tuple[int, int]]:
    """``(start, stop)`` of each leaf's entries in the flattened vector of all of them."""
    ends = np.cumsum([np.size(leaf) for leaf in leaves]).tolist()
    return list(zip([0] + ends[:-1], ends))


def _basis(like):
    """Trees with the structure, shapes and dtypes of ``like``, each with a single entry 1 and
    the rest 0, for every entry in turn (the order of :func:`_flat`)."""
    leaves, treedef = tree.flatten(like)
    for i, leaf in enumerate(leaves):
        for k in range(np.size(leaf)):
            unit = [np.zeros(np.shape(x), np.result_type(primal_value(x))) for x in leaves]
            unit[i].flat[k] = 1
            yield tree.unflatten(treedef, unit)


def _blocks(matrix, out, arg):
    """The Jacobian ``matrix`` of :func:`_jacobian_matrix` cut into one block per (output
    leaf, argument leaf), each shaped ``out_leaf.shape + arg_leaf.shape``, arranged as
    :func:`jacobian` documents."""
    out_leaves, out_def = tree.flatten(out)
    arg_leaves, arg_def = tree.flatten(arg)
    columns = _bounds(arg_leaves)
    per_output = []
    for o, (r0, r1) in zip(out_leaves, _bounds(out_leaves)):
        blocks = [ops.reshape(matrix[r0:r1, c0:c1], np.shape(o) + np.shape(a)) for a, (c0, c1) in zip(arg_leaves, columns)]
        per_output.append(tree.unflatten(arg_def, blocks))
    return tree.unflatten(out_def, per_output)


# ----------------------------------------------------------------------------- checks


def _check_like(what: str, primals: tuple, tangents) -> None:
    """Raise :class:`tinyfn.tree.TreeMismatchError` unless ``tangents`` has the structure of
    ``primals`` and, leaf for leaf, the same shape and a floating-point dtype."""
    expected, found = tree.structure(primals), tree.structure(tuple(tangents))
    if expected != found:
        raise tree.TreeMismatchError(f"{what} must have the structure of the arguments: expected {expected!r}, found {found!r}")
    for (path, p), t in zip(tree.leaves_with_path(primals), tree.leaves(tangents)):
        kind = np.result_type(primal_value(t)).kind
        if np.shape(t) != np.shape(p) or kind not in "fc":
            raise tree.TreeMismatchError(
                f"{what} at '{path}': expected a float array of shape {np.shape(p)} (the argument's), "
                f"found {np.result_type(primal_value(t))} of shape {np.shape(t)}"
            )


def _scalar_valued(name: str, f):
    """``f`` behind a check that it returns a scalar (shape ``()``), naming ``name`` and what was found."""

    def checked(*args, **kwargs):
        out = f(*args, **kwargs)
        container = isinstance(out, (dict, list, tuple))
        if container or np.shape(out) != ():
            found = f"a {type(out).__name__}" if container else f"shape {np.shape(out)}"
            raise TypeError(
                f"{name} requires f to return a scalar (shape ()), found {found}; "
                "for a vector-valued f use jacobian or jvp"
            )
        return out

    return checked
