"""Reverse-mode automatic differentiation over a recorded graph.

The model in four sentences:

1. A :class:`Primitive` is a forward function plus a hand-written VJP rule.
   ``forward(*args, **params) -> (out, residuals)`` computes the output and keeps what the
   backward pass will need; ``vjp(g, residuals, needs) -> cotangents`` maps the cotangent ``g``
   of the output to one cotangent per positional input (``None`` where ``needs[i]`` is False,
   so no work is spent on inputs that do not need a gradient, such as the data batch).
2. While a function is differentiated, its inputs are wrapped in :class:`Node` objects. A
   primitive called with at least one Node records a new Node: its value, its op, and its
   arguments (the parents). Called with plain arrays, it just runs (no graph, no overhead).
3. The nodes are recorded on a tape in the order they are made, which is a topological order
   (an op runs after its arguments exist). The backward pass walks the tape in reverse (a loop,
   so a chain of 100,000 ops is fine), applying each node's VJP rule and summing the
   cotangents of nodes used more than once. (:func:`toposort` computes a topological order
   from the graph alone, by depth-first search; graph drawings use it.)
4. :func:`vjp`, :func:`grad` and :func:`value_and_grad` wrap that for functions of pytrees.

Defining your own primitive::

    import numpy as np
    from tinyfn.autodiff import Primitive

    def _cube_forward(x):
        return x ** 3, x                      # output, residuals for the backward pass

    def _cube_vjp(g, x, needs):
        return (g * 3 * x ** 2,)              # one cotangent per positional input

    cube = Primitive("cube", _cube_forward, _cube_vjp)
    tinyfn.grad(lambda x: cube(x).sum())(np.array([1.0, 2.0]))   # -> [3., 12.]

Nested differentiation (grad of grad) is not supported: VJP rules are written in numpy.
"""

from __future__ import annotations

import inspect

import numpy as np

from . import tree

__all__ = ["Primitive", "PRIMITIVES", "Node", "vjp", "grad", "value_and_grad", "toposort", "is_traced"]

PRIMITIVES: dict[str, "Primitive"] = {}
"""Every primitive ever constructed, by name (the tests check each one has a gradient test)."""

_tape: list | None = None  # the nodes recorded by the running differentiation, in order
_staging = False  # True while value_and_grad(..., static_graph=True) traces (see tinyfn.staging)


class Primitive:
    """An operation with a forward function and an explicit VJP rule.

    Args:
      name: unique name, shown in graph drawings and error messages.
      forward: ``forward(*args, **params) -> (out, residuals)``. Positional args are arrays
        (or scalars); keyword params are static (axes, shapes, flags) and never differentiated.
      vjp: ``vjp(g, residuals, needs) -> tuple`` with one entry per positional argument:
        the cotangent for that argument (same shape as it) or ``None`` when ``needs[i]`` is
        False or the argument is not differentiable (labels, indices, masks).
      impl: optional ``impl(*args, **params) -> out`` used outside a trace, when the forward's
        residuals would be wasted work. Defaults to ``forward(...)[0]``.
    """

    __slots__ = ("name", "forward", "vjp", "impl")

    def __init__(self, name: str, forward, vjp, impl=None):
        if name in PRIMITIVES:
            raise ValueError(f"a primitive named {name!r} already exists; choose another name")
        self.name = name
        self.forward = forward
        self.vjp = vjp
        self.impl = impl if impl is not None else (lambda *args, **params: forward(*args, **params)[0])
        PRIMITIVES[name] = self

    def __call__(self, *args, **params):
        for a in args:
            if type(a) is Node:
                break
        else:  # no traced argument: just compute, recording nothing
            return self.impl(*args, **params)
        out, residuals = self.forward(*[a.value if type(a) is Node else a for a in args], **params)
        node = Node(out, self, args, residuals, params)
        if _tape is not None:
            _tape.append(node)
        return node

    def __repr__(self):
        return f"Primitive({self.name!r})"


class Node:
    """A value recorded while a function is differentiated.

    ``value`` is the numpy array; ``primitive`` the op that made it (``None`` for an input);
    ``args`` the op's positional arguments (Nodes are the parents, anything else a constant);
    ``residuals`` what the op's forward saved for its VJP; ``params`` the op's keyword
    parameters; ``name`` the input's path for inputs (``"W"``, ``"params/dense_0/w"``), used
    in graph drawings.

    Nodes support the usual operators (``+ - * / ** @``, unary minus, indexing) through
    :mod:`tinyfn.ops`; comparisons return plain boolean arrays (not differentiable; under a
    static graph they raise, see :mod:`tinyfn.staging`).
    Calling a numpy function on a Node is an error: use the function from ``tinyfn.ops``.
    """

    __slots__ = ("value", "primitive", "args", "residuals", "params", "name")
    __hash__ = object.__hash__

    def __init__(self, value, primitive=None, args=(), residuals=None, params=None, name=None):
        self.value = value
        self.primitive = primitive
        self.args = args
        self.residuals = residuals
        self.params = params
        self.name = name

    @property
    def shape(self):
        try:
            return self.value.shape
        except AttributeError:  # a Python scalar
            return ()

    @property
    def dtype(self):
        return np.result_type(self.value)

    @property
    def ndim(self):
        return np.ndim(self.value)

    @property
    def size(self):
        return np.size(self.value)

    def __len__(self):
        return len(self.value)

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "a numpy function was called on a traced tinyfn value (a Node); use the "
            "differentiable version from tinyfn.ops instead (for example tinyfn.ops.exp), "
            "or read node.value if you do not need its gradient (under "
            "value_and_grad(..., static_graph=True), where every array argument is traced, "
            "only tinyfn primitives may use them)"
        )

    def __repr__(self):
        op = self.primitive.name if self.primitive is not None else f"input {self.name or ''}".rstrip()
        return f"Node({op}, shape={self.shape}, dtype={self.dtype})"


def is_traced(x) -> bool:
    """True if ``x`` is a Node recorded by an active differentiation."""
    return type(x) is Node


def toposort(outputs) -> list[Node]:
    """Nodes reachable from ``outputs`` (a list of Nodes), parents before children.

    An iterative depth-first search: each node is emitted after all of its parents, and
    the Python stack does not grow with the depth of the graph.
    """
    order: list[Node] = []
    visited: set[int] = set()
    stack = [(node, False) for node in reversed(outputs)]
    while stack:
        node, parents_done = stack.pop()
        if parents_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in node.args:
            if type(parent) is Node and id(parent) not in visited:
                stack.append((parent, False))
    return order


def _backward(tape: list[Node], roots: list[Node], seeds: list) -> dict[int, object]:
    """Run the VJP rules from the output back to the inputs.

    The tape lists the recorded nodes in the order they were made, which is already a
    topological order (an op runs after its arguments exist), so walking it backwards visits
    every node after all the nodes that use it, without recursion. Nodes nothing depends on
    are skipped. Returns ``{id(node): cotangent}`` for the nodes left over: the inputs.
    """
    pending: dict[int, object] = {}
    for node, g in zip(roots, seeds):
        pending[id(node)] = pending[id(node)] + g if id(node) in pending else g
    for node in reversed(tape):
        g = pending.pop(id(node), None)
        if g is None:
            continue
        args = node.args
        cotangents = node.primitive.vjp(g, node.residuals, tuple([type(a) is Node for a in args]))
        for a, ct in zip(args, cotangents):
            if ct is not None and type(a) is Node:
                earlier = pending.get(id(a))
                pending[id(a)] = ct if earlier is None else earlier + ct  # a value used twice
    return pending


class _NotDifferentiable(TypeError):
    pass


def _as_input(leaf) -> Node:
    value = np.asarray(leaf)
    if value.dtype.kind not in "fc":
        raise _NotDifferentiable(value.dtype)
    return Node(value)


def _wrap(primals: tuple, names: list[str]) -> tuple:
    """Replace every leaf of the primals by an input Node (a TypeError names a non-float leaf)."""
    try:
        return tuple(tree.map(_as_input, primal) for primal in primals)
    except _NotDifferentiable:
        for primal, name in zip(primals, names):
            for path, leaf in tree.leaves_with_path(primal):
                if np.result_type(leaf).kind not in "fc":
                    where = name if path == "<root>" else f"{name}/{path}"
                    raise TypeError(
                        f"cannot differentiate with respect to '{where}': expected a floating-point "
                        f"array, found dtype {np.result_type(leaf)}"
                    ) from None
        raise


def _name_inputs(wrapped: tuple, names: list[str]) -> list[Node]:
    """Name each input node after its argument and pytree path (for drawings); returns them."""
    inputs = []
    for primal, name in zip(wrapped, names):
        for path, node in tree.leaves_with_path(primal):
            node.name = name if path == "<root>" else f"{name}/{path}"
            inputs.append(node)
    return inputs


def _positional_names(f) -> list[str]:
    """Names of f's positional parameters (used to name input nodes in graph drawings)."""
    try:
        return [
            p.name
            for p in inspect.signature(f).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return []


def _arg_name(names: list[str], i: int) -> str:
    return names[i] if i < len(names) else f"arg{i}"


def _record(f, args: tuple, staging: bool = False):
    """Call ``f(*args)`` (args holding input Nodes) with a fresh tape; returns ``(out, tape)``."""
    global _tape, _staging
    if _tape is not None:
        raise NotImplementedError("nested differentiation (grad of grad) is not supported by tinyfn")
    tape = []
    _tape, _staging = tape, staging
    try:
        out = f(*args)
    finally:
        _tape, _staging = None, False
    return out, tape


def _trace(f, primals: tuple, names: list[str]):
    """Call ``f(*wrapped primals)`` with every primal leaf wrapped in an input Node.

    Returns ``(out, wrapped primals, tape)``; the tape lists the nodes recorded, in order.
    """
    wrapped = _wrap(primals, names)
    out, tape = _record(f, wrapped)
    return out, wrapped, tape


def _value(x):
    return x.value if type(x) is Node else x


def vjp(f, *primals):
    """Evaluate ``f(*primals)`` and return ``(out, vjp_fn)``.

    ``primals`` are pytrees of float arrays; ``out`` is ``f``'s output (a pytree of arrays).
    ``vjp_fn(cotangent)`` takes a cotangent with the structure and shapes of ``out`` and
    returns a tuple with one gradient pytree per primal, shaped like that primal.
    """
    names = _positional_names(f)
    out, wrapped, tape = _trace(f, primals, [_arg_name(names, i) for i in range(len(primals))])
    out_leaves, out_def = tree.flatten(out)
    out_values = [_value(x) for x in out_leaves]

    def vjp_fn(cotangent):
        ct_leaves, ct_def = tree.flatten(cotangent)
        if ct_def != out_def:
            raise tree.TreeMismatchError(f"vjp: cotangent structure {ct_def!r} does not match output {out_def!r}")
        roots, seeds = [], []
        for o, ct in zip(out_leaves, ct_leaves):
            if np.shape(ct) != np.shape(_value(o)):
                raise ValueError(f"vjp: cotangent shape {np.shape(ct)} does not match output shape {np.shape(_value(o))}")
            if type(o) is Node:
                roots.append(o)
                seeds.append(np.asarray(ct, dtype=o.dtype))
        return _input_grads(wrapped, tape, roots, seeds)

    return tree.unflatten(out_def, out_values), vjp_fn


def _input_grads(wrapped, tape, roots, seeds) -> tuple:
    """One gradient tree per wrapped primal: each input Node replaced by its cotangent
    (zeros if the output does not depend on it), in the input's dtype, contiguous."""
    by_id = _backward(tape, roots, seeds) if roots else {}
    return tuple(tree.map(lambda node: _as_gradient(by_id.get(id(node)), node.value), w) for w in wrapped)


def _as_gradient(g, value: np.ndarray) -> np.ndarray:
    """The gradient for input ``value`` from its summed cotangent ``g`` (``None`` if the output
    does not depend on it): an array of ``value``'s shape and dtype, C-contiguous."""
    if g is None:
        return np.zeros_like(value)
    g = np.asarray(g, dtype=value.dtype)
    return g if g.flags.c_contiguous else g.copy()  # sum/mean VJPs hand out broadcast views


def _scalar(value):
    """The loss value as a numpy or Python scalar; a TypeError if it is not shaped ()."""
    if isinstance(value, np.ndarray) and value.shape == ():
        return value[()]  # a numpy scalar, which formats and compares like a number
    if not isinstance(value, (np.generic, float, int)) and np.shape(value) != ():
        raise TypeError(
            f"grad requires f to return a scalar (shape ()), found shape {np.shape(value)}; "
            "reduce it (for example with .sum() or .mean()) or use tinyfn.vjp"
        )
    return value


def _split_aux(out, has_aux: bool) -> tuple:
    """``(out, aux)`` of a function's result: ``aux`` is None unless ``has_aux``."""
    if not has_aux:
        return out, None
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError("has_aux=True requires f to return a pair (scalar, aux)")
    return out


def _argnum_positions(argnums, num_args: int) -> list[int]:
    """The positions selected by ``argnums`` (an int or a sequence of ints, negative counting
    from the end) among ``num_args`` positional arguments; a ValueError if one is out of range."""
    nums = argnums if isinstance(argnums, (tuple, list)) else (argnums,)
    for n in nums:
        if not -num_args <= n < num_args:
            raise ValueError(f"argnums={argnums} but the function was called with {num_args} positional arguments")
    return [n % num_args for n in nums]


def value_and_grad(f, argnums=0, has_aux=False, static_graph=False):
    """Return a function computing ``(f(*args), gradient of f w.r.t. args[argnums])``.

    ``f`` must return a scalar (shape ``()``), or ``(scalar, aux)`` when ``has_aux`` is True,
    in which case the result is ``((value, aux), grad)``. ``argnums`` is an int or a tuple of
    ints; each selected argument may be a pytree and its gradient has the same structure
    (a tuple of gradients when ``argnums`` is a tuple). Other arguments are passed unchanged.

    ``static_graph=True`` traces ``f`` once per signature of the arguments (their structure,
    array shapes and dtypes, other values) and replays the recorded primitives on later
    calls, without running ``f``'s Python again: the same results with much less overhead
    per call, for functions whose graph does not depend on array values. See
    :mod:`tinyfn.staging` for what ``f`` must then satisfy.
    """
    if static_graph:
        from .staging import staged_value_and_grad  # imported here: tinyfn.staging builds on this module

        return staged_value_and_grad(f, argnums, has_aux)
    multiple = isinstance(argnums, (tuple, list))
    arg_names = _positional_names(f)

    def value_and_grad_f(*args, **kwargs):
        nums_pos = _argnum_positions(argnums, len(args))
        primals = [args[n] for n in nums_pos]

        def f_of_primals(*wrapped):
            full = list(args)
            for n, w in zip(nums_pos, wrapped):
                full[n] = w
            return f(*full, **kwargs)

        out, wrapped, tape = _trace(f_of_primals, primals, [_arg_name(arg_names, n) for n in nums_pos])
        out, aux = _split_aux(out, has_aux)
        value = _scalar(_value(out))
        roots = [out] if type(out) is Node else []
        seeds = [np.ones((), dtype=np.result_type(value))]
        grads = _input_grads(wrapped, tape, roots, seeds)
        grads = grads if multiple else grads[0]
        if has_aux:
            aux = tree.map(_value, aux)
            return (value, aux), grads
        return value, grads

    return value_and_grad_f


def grad(f, argnums=0, has_aux=False, static_graph=False):
    """Return a function computing the gradient of scalar-valued ``f`` w.r.t. ``args[argnums]``.

    Same arguments as :func:`value_and_grad`; returns only the gradient (and ``aux`` as
    ``(grad, aux)`` when ``has_aux`` is True, as in JAX).
    """
    vg = value_and_grad(f, argnums, has_aux, static_graph)

    def grad_f(*args, **kwargs):
        out, g = vg(*args, **kwargs)
        return (g, out[1]) if has_aux else g

    return grad_f
