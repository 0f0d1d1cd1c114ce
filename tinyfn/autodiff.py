"""Reverse-mode automatic differentiation over a recorded graph, to any order.

The model in five sentences:

1. A :class:`Primitive` is a forward function plus a hand-written VJP rule.
   ``forward(*args, **params) -> (out, residuals)`` computes the output and keeps what the
   backward pass will need (a primitive whose output is just its numpy ``impl``'s gives
   ``keep(out, *args, **params) -> residuals`` instead, and the forward is built from the
   two); ``vjp(g, residuals, needs) -> cotangents`` maps the cotangent ``g``
   of the output to one cotangent per positional input (``None`` where ``needs[i]`` is False,
   so no work is spent on inputs that do not need a gradient, such as the data batch).
2. Each call of :func:`vjp`, :func:`grad` or :func:`value_and_grad` opens a *trace*, a level
   of differentiation with its own tape, and wraps its inputs in :class:`Node` objects of that
   trace. A primitive called with Nodes records a new Node on the tape of the innermost trace
   among its arguments: its value, its op and its arguments (the parents). Nodes of outer
   traces are constants to it, which flow through unchanged (this is what keeps
   ``d/dx [x * d/dy (x + y)]`` equal to 1). Called with plain arrays, a primitive just runs.
3. The backward pass of a trace walks its tape in reverse (a loop, so a chain of 100,000 ops
   is fine), applying each node's VJP rule and summing the cotangents of nodes used twice.
4. The forward functions and VJP rules are written with tinyfn's primitives, so when a trace
   is opened inside another one (``grad(grad(f))``), whatever the inner level computes from
   outer values, its backward pass included, is recorded by the outer level: gradients of
   gradients. On plain arrays the same primitives run their numpy and Numba code directly.
5. :func:`vjp`, :func:`grad` and :func:`value_and_grad` wrap that for functions of pytrees;
   :mod:`tinyfn.transforms` builds ``jvp``, ``hvp``, ``jacobian`` and ``hessian`` on them.

Defining your own primitive:

>>> import numpy as np
>>> import tinyfn
>>> from tinyfn.autodiff import Primitive
>>> def cube_forward(x):
...     return x ** 3, x                      # output, residuals for the backward pass
>>> def cube_vjp(g, x, needs):
...     return (g * 3 * x ** 2,)              # one cotangent per positional input
>>> cube = Primitive("cube", cube_forward, cube_vjp)
>>> tinyfn.grad(lambda x: cube(x).sum())(np.array([1.0, 2.0]))
array([ 3., 12.])
>>> float(tinyfn.grad(tinyfn.grad(cube))(2.0))   # d2/dx2 x^3 = 6x
12.0

Written with operators (or :mod:`tinyfn.ops`) as here, both functions also work on the Nodes
of an outer trace, so ``cube`` can be differentiated twice. Every cotangent a VJP returns is
checked: one per argument, not ``None`` where a gradient is needed, shaped like its argument
and of a floating dtype; a mistake raises :class:`VJPError` naming the primitive.
"""

from __future__ import annotations

import inspect
import itertools

import numpy as np

from . import tree

__all__ = [
    "Primitive",
    "PRIMITIVES",
    "Node",
    "VJPError",
    "vjp",
    "grad",
    "value_and_grad",
    "toposort",
    "is_traced",
    "primal_value",
    "concrete_value",
]

PRIMITIVES: dict[str, "Primitive"] = {}
"""Every primitive ever constructed, by name (the tests check each one has a gradient test)."""


class VJPError(TypeError):
    """A VJP rule returned the wrong number of cotangents, ``None`` for an argument that
    needs a gradient, or a cotangent of the wrong shape or dtype."""


class Primitive:
    """An operation with a forward function and an explicit VJP rule.

    Args:
      name: unique name, shown in graph drawings and error messages.
      forward: ``forward(*args, **params) -> (out, residuals)``. Positional args are arrays
        (or scalars), or Nodes of outer traces when the call is differentiated more than once;
        keyword params are static (axes, shapes, flags) and never differentiated.
      vjp: ``vjp(g, residuals, needs) -> tuple`` with one entry per positional argument:
        the cotangent for that argument (same shape as it) or ``None`` when ``needs[i]`` is
        False.
      impl: optional ``impl(*args, **params) -> out`` used outside a trace, when the forward's
        residuals would be wasted work. Defaults to ``forward(...)[0]``.
      nondiff: positions of arguments that never get a gradient: integer or boolean inputs
        (labels, indices, masks) and inputs the output depends on only piecewise-constantly.
        Their ``needs`` entry is always False.
      keep: for a primitive whose output is just ``impl``'s, instead of ``forward``:
        ``keep(out, *args, **params) -> residuals``, what the VJP needs, from the output and
        the arguments. The forward is then ``out = impl(*args, **params)`` on plain values (or
        the primitive itself, recording on the outer trace, when an argument is a Node of
        one), followed by ``keep``: a traced op of a first-order gradient runs ``impl``
        directly, with no second dispatch.

    Defining a primitive with the name of an existing one replaces it when both forwards (or
    both ``keep`` functions) are the same function of the same module (re-running a notebook
    cell), and is an error otherwise.

    A ValueError, TypeError or IndexError raised by numpy inside ``impl``, ``forward`` or
    ``keep`` is raised again from here, as the same built-in type naming the primitive and
    what it was given (see :func:`_explained`).
    """

    __slots__ = ("name", "forward", "vjp", "impl", "nondiff", "keep")

    def __init__(self, name: str, forward=None, vjp=None, impl=None, nondiff=(), keep=None):
        if vjp is None or (forward is None) == (keep is None) or (keep is not None and impl is None):
            raise TypeError(f"primitive {name!r}: give a vjp, and either a forward or both impl and keep")
        earlier = PRIMITIVES.get(name)
        if earlier is not None and _definition(earlier.keep or earlier.forward) != _definition(keep or forward):
            raise ValueError(f"a primitive named {name!r} already exists; choose another name")
        self.name = name
        self.forward = forward if forward is not None else self._forward_with_keep
        self.vjp = vjp
        self.impl = impl if impl is not None else (lambda *args, **params: forward(*args, **params)[0])
        self.nondiff = frozenset(nondiff)
        self.keep = keep
        PRIMITIVES[name] = self

    def _forward_with_keep(self, *args, **params):
        """The forward of a primitive given by ``impl`` and ``keep``."""
        out = self(*args, **params)
        return out, self.keep(out, *args, **params)

    def __call__(self, *args, **params):
        try:
            for a in args:
                if type(a) is Node:
                    break
            else:  # no traced argument: just compute, recording nothing
                return self.impl(*args, **params)
            trace = a.trace  # the trace that records the call, unless values of another one are here too
            inner = [b.value if type(b) is Node and b.trace is trace else b for b in args]
            for b in inner:
                if type(b) is Node:  # values of several traces: this call is differentiated more than once
                    out, residuals, trace = self._nested_forward(args, params)
                    break
            else:  # plain values under one trace (a first-order gradient): numpy or Numba directly
                keep = self.keep
                if keep is None:
                    out, residuals = self.forward(*inner, **params)
                else:
                    out = self.impl(*inner, **params)
                    residuals = keep(out, *inner, **params)
        except _EXPLAINABLE as error:  # a try costs nothing until something is raised
            explained = _explained(self.name, error, args, params)
            if explained is error:
                raise
            raise explained from error
        node = Node(out, self, args, residuals, params, None, trace)
        tape = trace.tape
        if tape is not None:
            tape.append(node)
        return node

    def _nested_forward(self, args: tuple, params: dict) -> tuple:
        """``(out, residuals, trace)`` of a call whose arguments hold values of several traces.

        The innermost trace among the arguments records the call. Only its Nodes are unwrapped:
        Nodes of outer traces go into the forward, which records what it computes from them on
        their own tapes (for a primitive given by ``keep``, the primitive itself records there).
        """
        trace = next(a.trace for a in args if type(a) is Node)
        for a in args:
            if type(a) is Node and a.trace.level > trace.level:
                trace = a.trace
        out, residuals = self.forward(*[a.value if type(a) is Node and a.trace is trace else a for a in args], **params)
        return out, residuals, trace

    def needs(self, args, trace) -> tuple:
        """For each argument, whether the backward pass of ``trace`` needs its cotangent."""
        needs = [type(a) is Node and a.trace is trace for a in args]
        for i in self.nondiff:
            if i < len(needs):
                needs[i] = False
        return tuple(needs)

    def check_cotangents(self, cotangents, args, needs) -> None:
        """Raise :class:`VJPError` unless the VJP returned one usable cotangent per needed argument.

        ``args`` are the primitive's positional arguments (arrays, scalars or Nodes): a needed
        cotangent must have the shape of its argument and a floating dtype.
        """
        if type(cotangents) is not tuple or len(cotangents) != len(needs):
            found = f"{len(cotangents)} cotangents" if isinstance(cotangents, (tuple, list)) else f"a {type(cotangents).__name__}"
            raise VJPError(f"the VJP of primitive {self.name!r} must return a tuple of {len(needs)} cotangents (one per argument), found {found}")
        for i, (ct, arg, need) in enumerate(zip(cotangents, args, needs)):
            if not need or _usual_cotangent(ct, arg.value if type(arg) is Node else arg):
                continue
            if ct is None:
                raise VJPError(f"the VJP of primitive {self.name!r} returned None for argument {i}, which needs a gradient (shape {np.shape(arg)})")
            if np.shape(ct) != np.shape(arg):
                raise VJPError(
                    f"the VJP of primitive {self.name!r} returned a cotangent of shape {np.shape(ct)} for argument {i}, "
                    f"expected its shape {np.shape(arg)} (a broadcast argument needs its cotangent summed back: ops.unbroadcast)"
                )
            if np.result_type(primal_value(ct)).kind not in "fc":
                raise VJPError(
                    f"the VJP of primitive {self.name!r} returned a cotangent of dtype {np.result_type(primal_value(ct))} "
                    f"for argument {i}, expected a floating-point dtype"
                )

    def __repr__(self):
        return f"Primitive({self.name!r})"


_EXPLAINABLE = (ValueError, TypeError, IndexError)


def _usual_cotangent(ct, value) -> bool:
    """True for the usual, valid cotangent: a float numpy array shaped like the numpy array
    ``value`` (the backward pass checks this inline, and the full check runs for anything else)."""
    return type(ct) is np.ndarray and type(value) is np.ndarray and ct.shape == value.shape and ct.dtype.kind in "fc"


def _explained(name: str, error: Exception, args: tuple, params: dict) -> Exception:
    """The error primitive ``name`` raises when its code raised ``error`` on ``args`` and ``params``.

    An error of numpy (or Python) becomes the same built-in type (ValueError, TypeError or
    IndexError) raised from tinyfn, its message prefixed by the primitive's name and followed by
    what the primitive was given: ``add: operands could not be broadcast together with shapes
    (2,3) (4,); called with a float64 array of shape (2, 3), a float64 array of shape (4,)``. Errors
    already explained pass unchanged: tinyfn's own exception classes, and the error of a
    primitive called inside this one (marked by its ``primitive`` attribute).
    """
    if getattr(error, "primitive", None) is not None or type(error).__module__.startswith("tinyfn."):
        return error
    kind = next(k for k in _EXPLAINABLE if isinstance(error, k))
    message = str(error).strip()
    if not message.startswith(f"{name}:"):  # tinyfn's own checks inside a primitive name it already
        message = f"{name}: {message}"
    given = [_describe(a) for a in args] + [f"{key}={_describe(value)}" for key, value in params.items()]
    explained = kind(f"{message}; called with {', '.join(given)}")
    explained.primitive = name
    return explained


def _describe(value) -> str:
    """``value`` in a few words, for an error message: an array by its dtype and shape."""
    value = primal_value(value)
    if isinstance(value, np.ndarray):
        article = "an" if value.dtype.name[0] in "aeio" else "a"
        return f"{article} {value.dtype} array of shape {value.shape}"
    if isinstance(value, np.generic):
        return f"{value.item()!r} ({value.dtype})"
    text = repr(value)
    return text if len(text) <= 40 else f"a {type(value).__name__}"


def _definition(f) -> tuple:
    """Where a function was defined: its module and qualified name."""
    return getattr(f, "__module__", None), getattr(f, "__qualname__", repr(f))


class _Trace:
    """One level of differentiation: its depth among the open traces and its tape.

    ``level`` grows with nesting (an inner trace has a higher level than the traces open
    around it); ``tape`` lists the Nodes recorded in order, and is None once the trace is
    closed; ``staging`` is True for the trace of a static graph (see :mod:`tinyfn.staging`).
    """

    __slots__ = ("level", "tape", "staging")

    def __init__(self, level: int, staging: bool):
        self.level = level
        self.tape: list | None = []
        self.staging = staging


_levels = itertools.count()  # unique, increasing: a trace opened later is nested deeper
_open_traces: list[_Trace] = []  # the traces being recorded, outermost first
_UNRECORDED = _Trace(-1, False)  # the trace of Nodes made by hand, outside any differentiation
_UNRECORDED.tape = None


class Node:
    """A value recorded while a function is differentiated.

    ``value`` is the value this trace sees (a numpy array, or a Node of an outer trace when
    differentiating more than once); ``primitive`` the op that made it (``None`` for an input);
    ``args`` the op's positional arguments (Nodes of the same trace are the parents, anything
    else a constant); ``residuals`` what the op's forward saved for its VJP; ``params`` the
    op's keyword parameters; ``name`` the input's path for inputs (``"W"``,
    ``"params/dense_0/w"``), used in graph drawings; ``trace`` the level that recorded it.

    Nodes support the usual operators (``+ - * / ** @``, unary minus, indexing) through
    :mod:`tinyfn.ops`; comparisons return plain boolean arrays (not differentiable; under a
    static graph they raise, see :mod:`tinyfn.staging`).
    Calling a numpy function on a Node is an error: use the function from ``tinyfn.ops``.
    """

    __slots__ = ("value", "primitive", "args", "residuals", "params", "name", "trace")
    __hash__ = object.__hash__

    def __init__(self, value, primitive=None, args=(), residuals=None, params=None, name=None, trace=None):
        self.value = value
        self.primitive = primitive
        self.args = args
        self.residuals = residuals
        self.params = params
        self.name = name
        self.trace = _UNRECORDED if trace is None else trace

    @property
    def shape(self):
        value = self.value
        return value.shape if type(value) is np.ndarray else np.shape(primal_value(value))

    @property
    def dtype(self):
        value = self.value
        return value.dtype if type(value) is np.ndarray else np.result_type(primal_value(value))

    @property
    def ndim(self):
        return np.ndim(primal_value(self))

    @property
    def size(self):
        return np.size(primal_value(self))

    def __len__(self):
        return len(primal_value(self))

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "a numpy function was called on a traced tinyfn value (a Node); use the "
            "differentiable version from tinyfn.ops instead (for example tinyfn.ops.exp), "
            "or tinyfn.autodiff.primal_value(node) if you do not need its gradient (under "
            "value_and_grad(..., static_graph=True), where every array argument is traced, "
            "only tinyfn primitives may use them)"
        )

    def __repr__(self):
        op = self.primitive.name if self.primitive is not None else f"input {self.name or ''}".rstrip()
        return f"Node({op}, shape={self.shape}, dtype={self.dtype})"


def is_traced(x) -> bool:
    """True if ``x`` is a Node recorded by a differentiation."""
    return type(x) is Node


def primal_value(x):
    """The plain array under ``x``: ``x`` itself unless it is a Node (of any trace depth).

    Reading it gives a constant to every trace: use it for shapes, masks and metrics, never
    for values that must be differentiated.
    """
    while type(x) is Node:
        x = x.value
    return x


def concrete_value(x, reader: str):
    """The plain array under ``x``, for code that reads values (a metric, a comparison).

    Under a static graph (see :mod:`tinyfn.staging`) the value read at the trace would be
    replayed on every later call, so a traced ``x`` there raises a TypeError naming ``reader``.
    """
    if type(x) is Node and x.trace.staging:
        raise TypeError(
            f"static_graph: {reader} reads the value of a traced array, which a replay would freeze at "
            "the first call; compute it outside the differentiated function, or use value_and_grad "
            "without static_graph"
        )
    return primal_value(x)


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
            if type(parent) is Node and parent.trace is node.trace and id(parent) not in visited:
                stack.append((parent, False))
    return order


def _backward(tape: list[Node], roots: list[Node], seeds: list) -> dict[int, object]:
    """Run the VJP rules from the output back to the inputs.

    The tape lists the recorded nodes in the order they were made, which is already a
    topological order (an op runs after its arguments exist), so walking it backwards visits
    every node after all the nodes that use it, without recursion. Nodes nothing depends on
    are skipped. Returns ``{id(node): cotangent}`` for the nodes left over: the inputs. The
    cotangents are plain arrays, or Nodes of an outer trace when this backward pass is itself
    being differentiated.
    """
    pending: dict[int, object] = {}
    for node, g in zip(roots, seeds):
        pending[id(node)] = pending[id(node)] + g if id(node) in pending else g
    for node in reversed(tape):
        g = pending.pop(id(node), None)
        if g is None:
            continue
        args, primitive, trace = node.args, node.primitive, node.trace
        if primitive.nondiff:
            needs = primitive.needs(args, trace)
        else:
            needs = tuple([type(a) is Node and a.trace is trace for a in args])
        cotangents = primitive.vjp(g, node.residuals, needs)
        if type(cotangents) is not tuple or len(cotangents) != len(args):
            primitive.check_cotangents(cotangents, args, needs)  # raises, naming the primitive
        checked = False
        for a, ct, need in zip(args, cotangents, needs):
            if need:
                # The usual case (_usual_cotangent, written out: this is tinyfn's hottest loop)
                # costs a few attribute reads; anything else gets the full check, once per node,
                # which names a mistake (or passes a Node of an outer trace).
                value = a.value
                if not (
                    checked
                    or type(ct) is np.ndarray
                    and type(value) is np.ndarray
                    and ct.shape == value.shape
                    and ct.dtype.kind in "fc"
                ):
                    primitive.check_cotangents(cotangents, args, needs)
                    checked = True
                key = id(a)
                earlier = pending.get(key)
                pending[key] = ct if earlier is None else earlier + ct  # a value used twice
    return pending


class _NotDifferentiable(TypeError):
    pass


def _as_input(trace: _Trace):
    def wrap(leaf) -> Node:
        value = leaf if type(leaf) is Node else np.asarray(leaf)
        if value.dtype.kind not in "fc":
            raise _NotDifferentiable
        return Node(value, trace=trace)

    return wrap


def _wrap(primals: tuple, names: list[str], trace: _Trace) -> tuple:
    """Replace every leaf of the primals by an input Node of ``trace`` (a TypeError names a
    non-float leaf)."""
    try:
        return tuple(tree.map(_as_input(trace), primal) for primal in primals)
    except _NotDifferentiable:
        for primal, name in zip(primals, names):
            for path, leaf in tree.leaves_with_path(primal):
                dtype = np.asarray(primal_value(leaf)).dtype
                if dtype.kind not in "fc":
                    where = name if path == "<root>" else f"{name}/{path}"
                    raise TypeError(
                        f"cannot differentiate with respect to '{where}': expected a floating-point "
                        f"array, found dtype {dtype}"
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


def _open_trace(staging: bool = False) -> _Trace:
    """A new trace, nested inside the open ones. A static graph cannot contain another
    differentiation, nor run inside one (its replay would freeze what the inner level reads)."""
    if _open_traces and (staging or _open_traces[-1].staging):
        raise TypeError(
            "static_graph: a function differentiated with a static graph cannot itself differentiate "
            "(grad inside the loss), nor be differentiated again; use value_and_grad without static_graph"
        )
    trace = _Trace(next(_levels), staging)
    _open_traces.append(trace)
    return trace


def _close_trace(trace: _Trace) -> list:
    """Stop recording on ``trace``; returns its tape."""
    _open_traces.remove(trace)
    tape, trace.tape = trace.tape, None
    return tape


def _record(f, args: tuple, trace: _Trace):
    """Call ``f(*args)`` (args holding input Nodes of the open ``trace``) and close the trace;
    returns ``(out, tape)``."""
    try:
        out = f(*args)
    finally:
        tape = _close_trace(trace)
    return out, tape


def _trace(f, primals: tuple, names: list[str]):
    """Call ``f(*wrapped primals)`` with every primal leaf wrapped in an input Node of a new trace.

    Returns ``(out, wrapped primals, tape, trace)``; the tape lists the nodes recorded, in order.
    """
    trace = _open_trace()
    try:
        wrapped = _wrap(primals, names, trace)
    except BaseException:
        _close_trace(trace)
        raise
    out, tape = _record(f, wrapped, trace)
    return out, wrapped, tape, trace


def _unwrap(x, trace: _Trace):
    """``x`` seen from outside ``trace``: a Node of that trace is replaced by its value."""
    return x.value if type(x) is Node and x.trace is trace else x


def vjp(f, *primals):
    """Evaluate ``f(*primals)`` and return ``(out, vjp_fn)``.

    ``primals`` are pytrees of float arrays; ``out`` is ``f``'s output (a pytree of arrays).
    ``vjp_fn(cotangent)`` takes a cotangent with the structure and shapes of ``out`` and
    returns a tuple with one gradient pytree per primal, shaped like that primal.
    """
    _check_function("vjp", f)
    names = _positional_names(f)
    out, wrapped, tape, trace = _trace(f, primals, [_arg_name(names, i) for i in range(len(primals))])
    out_leaves, out_def = tree.flatten(out)
    out_values = [_unwrap(x, trace) for x in out_leaves]

    def vjp_fn(cotangent):
        ct_leaves, ct_def = tree.flatten(cotangent)
        if ct_def != out_def:
            raise tree.TreeMismatchError(f"vjp: cotangent structure {ct_def!r} does not match output {out_def!r}")
        roots, seeds = [], []
        for o, ct in zip(out_leaves, ct_leaves):
            if np.shape(ct) != np.shape(o):
                raise ValueError(f"vjp: cotangent shape {np.shape(ct)} does not match output shape {np.shape(o)}")
            ct_dtype = np.asarray(primal_value(ct)).dtype
            if ct_dtype.kind not in "iuf":
                raise TypeError(f"vjp: expected a real-valued cotangent (ints or floats), found dtype {ct_dtype}")
            if type(o) is Node and o.trace is trace:
                roots.append(o)
                seeds.append(ct if type(ct) is Node else np.asarray(ct, dtype=o.dtype))
        return _input_grads(wrapped, tape, roots, seeds)

    return tree.unflatten(out_def, out_values), vjp_fn


def _input_grads(wrapped, tape, roots, seeds) -> tuple:
    """One gradient tree per wrapped primal: each input Node replaced by its cotangent
    (zeros if the output does not depend on it), in the input's dtype, contiguous."""
    by_id = _backward(tape, roots, seeds) if roots else {}
    return tuple(tree.map(lambda node: _as_gradient(by_id.get(id(node)), node.value), w) for w in wrapped)


def _as_gradient(g, value):
    """The gradient for input ``value`` from its summed cotangent ``g`` (``None`` if the output
    does not depend on it): an array of ``value``'s shape and dtype, C-contiguous; or a Node
    of an outer trace when the gradient is itself being differentiated."""
    if type(g) is Node:
        return g
    primal = primal_value(value)
    if g is None:
        return np.zeros_like(primal)
    g = np.asarray(g, dtype=primal.dtype)
    return g if g.flags.c_contiguous else g.copy()  # sum/mean VJPs hand out broadcast views


def _scalar(value):
    """The loss value as a numpy or Python scalar (or a Node of an outer trace); a TypeError
    if it is not a number shaped ()."""
    if type(value) is Node:
        if value.shape != ():
            raise TypeError(f"grad requires f to return a scalar (shape ()), found shape {value.shape}")
        return value
    if isinstance(value, (float, int)) or (isinstance(value, np.generic) and value.dtype.kind in "biuf"):
        return value
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "biuf":
        return value[()]  # a numpy scalar, which formats and compares like a number
    found = f"shape {value.shape}" if isinstance(value, np.ndarray) else _describe(value)
    raise TypeError(
        f"grad requires f to return a scalar (shape ()), found {found}; "
        "reduce it (for example with .sum() or .mean()) or use tinyfn.vjp"
    )


def _split_aux(out, has_aux: bool) -> tuple:
    """``(out, aux)`` of a function's result: ``aux`` is None unless ``has_aux``."""
    if not has_aux:
        return out, None
    if not (isinstance(out, tuple) and len(out) == 2):
        found = f"a tuple of {len(out)}" if isinstance(out, tuple) else _describe(out)
        raise TypeError(f"has_aux=True requires f to return a pair (scalar, aux), found {found}")
    return out


def _argnum_positions(argnums, num_args: int) -> list[int]:
    """The positions selected by ``argnums`` (an int or a sequence of distinct ints, negative
    counting from the end) among ``num_args`` positional arguments; a TypeError if one is not
    an int, a ValueError if one is out of range or repeated."""
    nums = argnums if isinstance(argnums, (tuple, list)) else (argnums,)
    positions = []
    for n in nums:
        if type(n) is not int and (isinstance(n, bool) or not isinstance(n, np.integer)):
            raise TypeError(f"argnums must be an int or a tuple of ints, found {argnums!r}")
        if not -num_args <= n < num_args:
            raise ValueError(f"argnums={argnums} but the function was called with {num_args} positional arguments")
        positions.append(int(n) % num_args)
    if len(positions) > 1 and len(set(positions)) != len(positions):
        raise ValueError(f"argnums must name each argument once, found {argnums!r} for {num_args} positional arguments")
    return positions


def _check_function(transform: str, f) -> None:
    """A TypeError naming ``transform`` unless ``f`` can be called."""
    if not callable(f):
        raise TypeError(f"{transform}: expected a function to differentiate, found {_describe(f)}")


def value_and_grad(f, argnums=0, has_aux=False, static_graph=False):
    """Return a function computing ``(f(*args), gradient of f w.r.t. args[argnums])``.

    ``f`` must return a scalar (shape ``()``), or ``(scalar, aux)`` when ``has_aux`` is True,
    in which case the result is ``((value, aux), grad)``. ``argnums`` is an int or a tuple of
    ints; each selected argument may be a pytree and its gradient has the same structure
    (a tuple of gradients when ``argnums`` is a tuple). Other arguments are passed unchanged.

    The returned function can itself be differentiated (``grad(grad(f))``, a gradient
    penalty inside a loss): called inside another differentiation, its value and gradient
    are traced values of that outer level.

    ``static_graph=True`` traces ``f`` once per signature of the arguments (their structure,
    array shapes and dtypes, other values) and replays the recorded primitives on later
    calls, without running ``f``'s Python again: the same results with much less overhead
    per call, for functions whose graph does not depend on array values. See
    :mod:`tinyfn.staging` for what ``f`` must then satisfy (first order only).
    """
    _check_function("value_and_grad", f)
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

        out, wrapped, tape, trace = _trace(f_of_primals, primals, [_arg_name(arg_names, n) for n in nums_pos])
        out, aux = _split_aux(out, has_aux)
        value = _scalar(_unwrap(out, trace))
        roots = [out] if type(out) is Node and out.trace is trace else []
        seeds = [np.ones((), dtype=np.result_type(primal_value(value)))]
        grads = _input_grads(wrapped, tape, roots, seeds)
        grads = grads if multiple else grads[0]
        if has_aux:
            aux = tree.map(lambda x: _unwrap(x, trace), aux)
            return (value, aux), grads
        return value, grads

    return value_and_grad_f


def grad(f, argnums=0, has_aux=False, static_graph=False):
    """Return a function computing the gradient of scalar-valued ``f`` w.r.t. ``args[argnums]``.

    Same arguments as :func:`value_and_grad`; returns only the gradient (and ``aux`` as
    ``(grad, aux)`` when ``has_aux`` is True, as in JAX). ``grad(grad(f))`` is the second
    derivative, and so on to any order.
    """
    _check_function("grad", f)
    vg = value_and_grad(f, argnums, has_aux, static_graph)

    def grad_f(*args, **kwargs):
        out, g = vg(*args, **kwargs)
        return (g, out[1]) if has_aux else g

    return grad_f
