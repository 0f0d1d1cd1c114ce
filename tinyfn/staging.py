"""Static graphs: trace a function once per input signature, then replay what it recorded.

``tinyfn.value_and_grad(f, static_graph=True)`` computes what ``value_and_grad(f)`` does, with
less Python per call. A trace runs all of ``f``'s Python (the layers' argument checks, the
loss's shape checks, one Node per op) to find out which primitives to call on which arrays.
When the graph is the same on every call, as in a training loop over equal-sized batches,
that work gives the same answer every time. A static graph does it once per *signature*:
the structure of the arguments, the shape and dtype of each array in them, and the value of
every other leaf and keyword argument. The first call with a signature traces ``f`` and turns
the tape into a :class:`Program`: a list of steps whose arguments are slot numbers instead of
Nodes. Every call, the first included, then runs the program: each step calls its
primitive's forward on the arrays in its slots, and the backward pass calls the VJP rules in
reverse order. ``f``'s Python is not run again, so its side effects (a print, a counter)
happen once per signature.

What a static graph asks of ``f`` (the same as ``jax.jit`` asks):

* **Every array argument is traced**, not only the differentiated ones, so ``f`` may use the
  data batch and the labels only through tinyfn primitives. A numpy function called on them
  raises, as on any traced value.
* **Python control flow may depend on shapes, dtypes and non-array arguments, not on array
  values**: the branches taken during the trace are the ones replayed. So comparing traced
  values (``x > 0``) raises here, and ``node.value`` read inside ``f`` is frozen at the trace,
  as are arrays that ``f`` reads from its closure instead of taking them as arguments.
* **The outputs are computed by primitives.** A plain array in the output (or in ``aux``)
  raises, since a replay would return the traced call's array. Models whose training-mode
  apply works outside primitives, such as Dropout (masks drawn from a key), cannot use a
  static graph; use ``value_and_grad`` without it. (BatchNorm can: its running averages are
  computed with primitives; pass its state as an argument and return the new one in ``aux``.)
* **First order only.** A function that differentiates inside (a gradient penalty), or a
  static graph called inside another differentiation, is refused: a replay would freeze
  what the inner level reads from values.

Each new signature traces once more and keeps its program (a last, smaller batch adds one).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import tree
from .autodiff import (
    Node,
    Primitive,
    _arg_name,
    _argnum_positions,
    _as_gradient,
    _close_trace,
    _open_trace,
    _positional_names,
    _record,
    _scalar,
    _split_aux,
    _wrap,
)

__all__ = ["Program", "staged_value_and_grad"]


class _Slot:
    """A reference, in a recorded step's arguments or outputs, to the value in slot ``index``.

    (A plain class, not a tuple, so that pytree functions see it as a leaf.)
    """

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index


class _Step(NamedTuple):
    """One recorded primitive call: ``values[out] = primitive(*args, **params)``."""

    primitive: Primitive
    args: tuple  # a _Slot for each traced argument; anything else is a constant of the trace
    params: dict
    out: int
    grad_slots: tuple  # for each argument, the slot its cotangent goes to, or None if none is needed
    needs: tuple  # for each argument, whether its cotangent is needed (the VJP's ``needs``)
    differentiable: bool  # some argument needs a gradient: keep residuals, run the VJP


class Program:
    """The primitives one trace of ``f`` called, with every Node replaced by a slot number.

    The first slots hold the leaves of the arguments (flattened as one tuple); each step
    writes its output to a new slot after them. ``outputs`` is the result's tree with a
    :class:`_Slot` for each traced value, ``root`` the slot of the value to differentiate,
    and ``wrt`` lists the slots to differentiate with respect to.
    """

    def __init__(self, steps: list, outputs, root: int, wrt: list):
        self.steps = steps
        self.outputs = outputs
        self.root = root
        self.wrt = wrt

    @classmethod
    def from_trace(cls, inputs: list, tape: list, out, root, wrt: list) -> "Program":
        """Build a program from a trace.

        ``inputs``: the argument leaves as traced (Nodes for arrays, anything else as is);
        ``tape``: the recorded Nodes in order; ``out``: ``f``'s result; ``root``: the Node of
        the value to differentiate; ``wrt``: the input slots to differentiate with respect to.
        """
        slots = {id(x): i for i, x in enumerate(inputs) if type(x) is Node}
        needs_grad = set(wrt)
        steps = []
        for node in tape:
            args, grad_slots = [], []
            for position, a in enumerate(node.args):
                slot = slots.get(id(a)) if type(a) is Node else None
                if type(a) is Node and slot is None:
                    raise ValueError("static_graph: f used a traced value from another call (a Node kept from an earlier trace)")
                args.append(a if slot is None else _Slot(slot))
                differentiable = slot in needs_grad and position not in node.primitive.nondiff
                grad_slots.append(slot if differentiable else None)
            out_slot = slots[id(node)] = len(inputs) + len(steps)
            needs = tuple(s is not None for s in grad_slots)
            if any(needs):
                needs_grad.add(out_slot)
            steps.append(_Step(node.primitive, tuple(args), node.params, out_slot, tuple(grad_slots), needs, any(needs)))
        if type(root) is not Node or id(root) not in slots:
            raise TypeError("static_graph: f's value was not computed by tinyfn primitives from its arguments")
        return cls(steps, _output_slots(out, slots), slots[id(root)], list(wrt))

    def run(self, inputs: list) -> tuple:
        """Run the forward steps, then the VJPs in reverse from ``values[root]`` (seed 1).

        ``inputs``: the argument leaves, in slot order. Returns ``(outputs, gradients)``: the
        result's tree with the computed values, and one gradient per ``wrt`` slot.
        """
        values = list(inputs) + [None] * len(self.steps)
        residuals = [None] * len(self.steps)
        for k, step in enumerate(self.steps):
            args = [values[a.index] if type(a) is _Slot else a for a in step.args]
            if step.differentiable:
                values[step.out], residuals[k] = step.primitive.forward(*args, **step.params)
            else:
                values[step.out] = step.primitive.impl(*args, **step.params)
        root = values[self.root]
        cotangents = [None] * len(values)
        cotangents[self.root] = np.ones((), dtype=np.result_type(root))
        for k in range(len(self.steps) - 1, -1, -1):
            step = self.steps[k]
            g = cotangents[step.out]
            if g is None or not step.differentiable:
                continue
            cotangents[step.out] = None  # used up: free it, as the traced backward pass does
            step_cotangents = step.primitive.vjp(g, residuals[k], step.needs)
            args = [values[a.index] if type(a) is _Slot else a for a in step.args]
            step.primitive.check_cotangents(step_cotangents, args, step.needs)
            for slot, ct in zip(step.grad_slots, step_cotangents):
                if slot is not None:
                    earlier = cotangents[slot]
                    cotangents[slot] = ct if earlier is None else earlier + ct  # a value used twice
        if type(self.outputs) is _Slot:  # the usual case: f returns the value alone
            outputs = values[self.outputs.index]
        else:
            outputs = tree.map(lambda x: values[x.index] if type(x) is _Slot else x, self.outputs)
        return outputs, [_as_gradient(cotangents[s], np.asarray(values[s])) for s in self.wrt]


def _output_slots(out, slots: dict):
    """``out`` with each traced value replaced by its slot; a TypeError names a plain array."""

    def slot_of(path, leaf):
        if type(leaf) is Node:
            return _Slot(slots[id(leaf)])
        if isinstance(leaf, (np.ndarray, np.generic)):
            raise TypeError(
                f"static_graph: f's output at '{path}' is a plain array, not a value computed by tinyfn "
                "primitives, so a replay would return this call's array again; compute it with tinyfn ops, "
                "or use value_and_grad without static_graph"
            )
        return leaf

    return tree.map_with_path(slot_of, out)


def _leaf_slots(structure: tree.TreeDef, positions: list) -> list:
    """The slots (indices among the leaves of the arguments, whose tuple has ``structure``) of
    the leaves of argument ``p`` for each ``p`` in ``positions``, in that order."""
    sizes = [child.num_leaves for child in structure.children]
    return [sum(sizes[:p]) + i for p in positions for i in range(sizes[p])]


def _signature(leaves: list) -> tuple:
    """What a program depends on in the argument leaves: each array's shape and dtype, and the
    type and value of every other leaf (it is a constant of the trace)."""
    return tuple([(x.shape, x.dtype) if isinstance(x, np.ndarray) else (type(x), x) for x in leaves])


def _traced_leaf(trace):
    return lambda leaf: Node(leaf, trace=trace) if isinstance(leaf, np.ndarray) else leaf


class _Entry(NamedTuple):
    """A program and the calls it serves: arguments of this structure and leaf signature,
    with these keyword arguments."""

    structure: tree.TreeDef
    signature: tuple
    kwargs: tuple  # the keyword arguments' sorted items
    positions: list  # the differentiated arguments
    program: Program


def staged_value_and_grad(f, argnums=0, has_aux=False):
    """``value_and_grad(f, argnums, has_aux)`` with a static graph (see the module docstring).

    Returns a function with the same arguments and results as ``value_and_grad``'s. Raises
    ``TypeError`` on the first call with a signature if ``f`` cannot be replayed (it calls
    numpy on a traced argument, compares traced values, or returns a plain array), and if a
    non-array argument leaf or keyword value is not hashable.
    """
    multiple = isinstance(argnums, (tuple, list))
    arg_names = _positional_names(f)
    entries: dict = {}  # (structure, signature, kwargs) -> _Entry
    last: list = [None]  # the entry of the previous call, tried first

    def trace(args: tuple, kwargs: dict, structure: tree.TreeDef, signature: tuple, static_kwargs: tuple) -> _Entry:
        positions = _argnum_positions(argnums, len(args))
        trace = _open_trace(staging=True)
        try:
            primals = _wrap(tuple(args[p] for p in positions), [_arg_name(arg_names, p) for p in positions], trace)
            traced = [tree.map(_traced_leaf(trace), a) for a in args]
            for p, wrapped in zip(positions, primals):
                traced[p] = wrapped
        except BaseException:
            _close_trace(trace)
            raise
        out, tape = _record(lambda *a: f(*a, **kwargs), tuple(traced), trace)
        value, _ = _split_aux(out, has_aux)
        program = Program.from_trace(tree.leaves(tuple(traced)), tape, out, value, _leaf_slots(structure, positions))
        return _Entry(structure, signature, static_kwargs, positions, program)

    def entry_for(args: tuple, kwargs: dict) -> tuple:
        """The entry serving this call (tracing a new one if needed) and the argument leaves."""
        static_kwargs = tuple(sorted(kwargs.items()))
        try:
            hash(static_kwargs)
        except TypeError:
            raise TypeError(f"static_graph: keyword arguments must be hashable (they are constants of the trace), found {kwargs!r}") from None
        entry = last[0]
        if entry is not None and static_kwargs == entry.kwargs:
            try:
                leaves = entry.structure.flatten_up_to(args)
            except tree.TreeMismatchError:
                leaves = None
            if leaves is not None and _signature(leaves) == entry.signature:
                return entry, leaves
        leaves, structure = tree.flatten(args)
        signature = _signature(leaves)
        key = (structure, signature, static_kwargs)
        try:
            entry = entries.get(key)
        except TypeError:
            raise TypeError(
                "static_graph: every argument leaf that is not a numpy array must be hashable "
                "(it is a constant of the trace)"
            ) from None
        if entry is None:
            entry = entries[key] = trace(args, kwargs, structure, signature, static_kwargs)
        last[0] = entry
        return entry, leaves

    def value_and_grad_f(*args, **kwargs):
        entry, leaves = entry_for(args, kwargs)
        out, flat_grads = entry.program.run(leaves)
        out, aux = _split_aux(out, has_aux)
        grads, start = [], 0
        for p in entry.positions:
            child = entry.structure.children[p]
            grads.append(tree.unflatten(child, flat_grads[start : start + child.num_leaves]))
            start += child.num_leaves
        grads = tuple(grads) if multiple else grads[0]
        value = _scalar(out)
        return ((value, aux), grads) if has_aux else (value, grads)

    return value_and_grad_f
