"""ONNX export: trace an inference function once, then write each primitive it called as ONNX nodes.

    model = tinyfn.export.to_onnx(apply, params, x_example, "model.onnx")   # needs the onnx package

How it works, in three steps:

1. **Trace.** ``apply(params, x)`` runs once on the example input under the static-graph
   tracer of :mod:`tinyfn.staging`: the input is a traced value, the params are plain arrays.
   So every primitive the model calls on (something computed from) the input is recorded, in
   order, and everything computed from the params alone (BatchNorm's ``gamma / sqrt(var + eps)``,
   the first ``T`` rows of a position table) is done by numpy during the trace and recorded
   as a constant. Under that tracer, reading an array's values raises, so a model whose
   graph depends on its input's values is refused rather than frozen at one input.
2. **Find what follows the dynamic sizes.** Each axis of the input named in ``dynamic_axes``
   (by default axis 0, ``"batch"``) is traced once more at another size: one row more for
   axis 0, one entry less for any other (a sequence's length, say). The traces must call the
   same primitives, and their sizes tell, for every value, which of its sizes are a multiple
   of which dynamic sizes: those become symbolic dimensions of the input and output, and a
   reshape writes them as ``0`` (copy the input's size on that axis), ``-1`` (infer it) or,
   when several are dynamic, a size computed from the input's ``Shape`` at run time, never as
   the traced size. A constant that is shorter where the input is shorter and is there the
   start of the traced one (the first ``T`` rows of a position table) is sliced at run time,
   so the model takes any length up to the traced one along such an axis. Any other
   constant, or a param, that depends on a dynamic size raises :class:`ExportError`.
3. **Map.** Each recorded primitive becomes one or more ONNX nodes (the table below), built
   with ``onnx.helper``; every constant becomes an initializer, named by its path in
   ``params`` (``dense_0/w``) or ``model_state`` (``state/batch_norm_1/mean``) when it is one
   of their arrays. A primitive with no mapping raises :class:`ExportError` naming it.

===========================================  =====================================================
tinyfn primitive                             ONNX
===========================================  =====================================================
add subtract multiply divide power           Add Sub Mul Div Pow Max Min (numpy's promotion
maximum minimum                              of dtypes reproduced with Cast)
negative exp log sqrt abs tanh sigmoid       Neg Exp Log Sqrt Abs Tanh Sigmoid Relu Softplus Erf
relu softplus erf leaky_relu clip            LeakyRelu Clip
gelu (both forms)                            Mul, Add and Erf (exact) or Tanh (the tanh form)
sum mean max                                 ReduceSum ReduceMean ReduceMax
matmul, dense (``relu=True`` adds a Relu)    MatMul; Gemm for a 2-D input, else MatMul + Add
reshape transpose broadcast_to               Reshape Transpose Expand
getitem (ints, slices, None, Ellipsis)       Gather Slice Unsqueeze
concatenate stack where                      Concat (Unsqueeze) Where
softmax log_softmax                          Softmax LogSoftmax
conv2d conv_transpose2d                      Conv ConvTranspose (stride, padding, dilation, groups)
max_pool2d avg_pool2d global_avg_pool2d      MaxPool AveragePool (count_include_pad=1, as tinyfn
                                             counts padding) GlobalAveragePool + Flatten
layer_norm                                   LayerNormalization (opset 17); below 17 written out
rms_norm                                     written out (ReduceMean, Sqrt, Div, Mul)
attention (scaled dot-product)               MatMul, Mul, an additive causal mask, Softmax, MatMul
embedding_lookup                             Gather
===========================================  =====================================================

BatchNorm in inference mode (``train=False``) is written in the elementwise primitives, so it
exports as Sub, Mul and Add with constants. Opsets 13 to 17 are supported (17 by default):
LayerNormalization needs 17; at 13 to 16 LayerNorm is written out in the same nodes as RMSNorm
plus the centring.

**What is fixed at the traced size.** Every axis not in ``dynamic_axes``; a dynamic axis
other than the first takes sizes up to the traced one. So a GPT exported with
``dynamic_axes={0: "batch", 1: "sequence"}`` on ids ``(1, context)`` takes prompts of any
length up to its context. A size that is not a multiple of a dynamic size cannot follow it
(a convolution without padding makes ``H - 2`` rows of ``H``): exporting such a model with
that axis dynamic raises :class:`ExportError`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numpy.lib.array_utils import normalize_axis_index, normalize_axis_tuple

from .. import __version__, tree
from ..autodiff import Node, _open_trace, _record
from ..layers.base import Layer
from ..staging import Program, _Slot

__all__ = ["ExportError", "to_onnx", "MIN_OPSET", "MAX_OPSET"]

MIN_OPSET = 13
MAX_OPSET = 17

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class ExportError(ValueError):
    """A function cannot be exported: a primitive with no ONNX mapping, a graph that depends on
    a dynamic size in a way ONNX cannot be told, or an argument out of range."""


def to_onnx(apply, params, example_input, path=None, *, model_state=None, opset: int = MAX_OPSET,
            dynamic_axes=None, input_name: str = "input", output_name: str = "output"):
    """Export ``apply(params, x)`` (inference) to an ONNX model; returns the ``onnx.ModelProto``.

    Args:
      apply: a layer's ``apply`` (or the :class:`~tinyfn.layers.Layer` itself), or any function
        ``apply(params, x) -> y`` written with tinyfn primitives. It is called with ``train``
        left at its default (False).
      params: its parameter tree (plain arrays: they become the model's initializers).
      example_input: an array ``(batch, ...)`` of the dtype the model takes (float32 images,
        int64 ids, ...); the model is traced on it.
      path: where to write the ``.onnx`` file (atomically, see
        :func:`tinyfn.checkpoint.atomic_write`), or None to only return the model.
      model_state: for a stateful model (BatchNorm): its state, called as
        ``apply(params, x, state=model_state)``, whose output ``y`` is exported.
      opset: the ONNX opset, from :data:`MIN_OPSET` (13) to :data:`MAX_OPSET` (17).
      dynamic_axes: ``{axis: name}``, the input's axes whose size the model leaves open, each
        a symbolic dimension of the ONNX input: ``{0: "batch"}`` when None (the default),
        ``{0: "batch", 1: "sequence"}`` for sequences of any length up to the traced one,
        ``{}`` to keep every traced size. Axis 0 takes any size >= 1 (traced on one more
        row); another axis any size from 1 to the traced one (traced on one less), so its
        example size must be at least 2.
      input_name, output_name: the names of the graph's input and output.

    Returns the model (``onnx.ModelProto``), which ``onnx.checker.check_model`` accepts. Raises
    :class:`ExportError` for a primitive with no mapping (naming it) or a graph that depends on
    a dynamic size in a way that cannot be exported, ``TypeError`` when the output is not one
    array computed by tinyfn primitives from the input, and ``ImportError`` without ``onnx``.
    """
    from onnx import helper  # an optional dependency: pip install tinyfn[onnx]

    if type(opset) is not int or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"to_onnx: expected an opset from {MIN_OPSET} to {MAX_OPSET}, found {opset!r}")
    apply = apply.apply if isinstance(apply, Layer) else apply
    fn = (lambda x: apply(params, x)) if model_state is None else (lambda x: apply(params, x, state=model_state)[0])
    x = _example(example_input)
    symbols = _symbols({0: "batch"} if dynamic_axes is None else dynamic_axes, x.shape)
    traced = _trace(fn, x)
    variations = {symbol: _trace(fn, _varied(x, axis)) for symbol, axis in symbols.items()}
    names = {id(leaf): path for path, leaf in tree.leaves_with_path(params) if isinstance(leaf, np.ndarray)}
    if model_state is not None:
        names.update({id(leaf): f"state/{path}" for path, leaf in tree.leaves_with_path(model_state)
                      if isinstance(leaf, np.ndarray)})
    builder = _Builder(helper, opset, names, symbols, input_name)
    graph = builder.graph(traced, variations, output_name)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="tinyfn", producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opsets))
    if path is not None:
        from ..checkpoint import atomic_write

        data = model.SerializeToString()
        atomic_write(path, lambda f: f.write(data))
    return model


def _example(x) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "biuf":
        raise TypeError(f"to_onnx: expected an example input that is a numpy array of numbers, found "
                        f"{type(x).__name__}{' of dtype ' + str(x.dtype) if isinstance(x, np.ndarray) else ''}")
    return x


def _symbols(dynamic_axes, shape: tuple) -> dict:
    """``{name: axis}`` from ``dynamic_axes`` ``{axis: name}``, after checking each axis exists
    and has a size the variation trace can change (see :func:`to_onnx`)."""
    if not isinstance(dynamic_axes, dict):
        raise TypeError(f"to_onnx: expected dynamic_axes as a dict {{axis: name}}, found {dynamic_axes!r}")
    symbols = {}
    for axis, name in dynamic_axes.items():
        if not (type(axis) is int and 0 <= axis < len(shape) and isinstance(name, str) and name and name not in symbols):
            raise ExportError(f"to_onnx: expected dynamic_axes mapping axes of the input {shape} to distinct names, "
                              f"found {axis!r}: {name!r}")
        if shape[axis] < (1 if axis == 0 else 2):
            raise ExportError(f"to_onnx: a dynamic axis {axis} needs an example of size >= {1 if axis == 0 else 2} "
                              f"there, found shape {shape}")
        symbols[name] = axis
    return symbols


def _varied(x: np.ndarray, axis: int) -> np.ndarray:
    """The example with one more row (axis 0) or one entry less along ``axis``."""
    if axis == 0:
        return np.concatenate([x, x[:1]])
    return x[(slice(None),) * axis + (slice(0, -1),)]


# ----------------------------------------------------------------------------- tracing


class _Traced(NamedTuple):
    """One trace: the program (its steps read slots) and the value of every slot."""

    program: Program
    values: list


def _trace(fn, x: np.ndarray) -> _Traced:
    trace = _open_trace(staging=True)  # values cannot be read: the graph may not depend on them
    node = Node(x, name="input", trace=trace)
    out, tape = _record(fn, (node,), trace)
    if type(out) is not Node or out.trace is not trace:
        raise TypeError(f"to_onnx: expected the function to return one array computed by tinyfn primitives from "
                        f"its input, found {type(out).__name__}")
    return _Traced(Program.from_trace([node], tape, out, out, []), [x] + [n.value for n in tape])


def _same(a, b) -> bool:
    """Whether two constants or params of two traces are equal (arrays by shape and values)."""
    if a is b:  # the params: the same arrays in every trace
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.shape(a) == np.shape(b) and np.result_type(a) == np.result_type(b) and np.array_equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


class _Dim(NamedTuple):
    """A size that depends on the dynamic sizes: ``factor`` times the product of ``symbols``."""

    factor: int
    symbols: tuple  # sorted names

    def __str__(self):
        return "*".join(([str(self.factor)] if self.factor != 1 else []) + list(self.symbols))


def _dims(base: tuple, varied: dict, inputs: dict, where: str) -> tuple:
    """The sizes of a value of shape ``base``: an int where no variation changed it, else a
    :class:`_Dim`. ``varied`` maps each symbol to the value's shape in its trace, ``inputs``
    each symbol to its ``(traced, varied)`` size. A size must be proportional to each symbol
    that changes it (a reshape folding it into another axis is; a convolution's output length
    is not), otherwise ExportError naming ``where``."""
    dims = []
    for i, n in enumerate(base):
        depends = sorted(s for s, shape in varied.items() if shape[i] != n)
        if not depends:
            dims.append(n)
            continue
        scale = math.prod(inputs[s][0] for s in depends)
        if n % scale or any(varied[s][i] * inputs[s][0] != n * inputs[s][1] for s in depends):
            raise ExportError(f"to_onnx: {where} has a size {n} (axis {i}) that is not a multiple of "
                              f"{' * '.join(depends)}, so it cannot follow them")
        dims.append(_Dim(n // scale, tuple(depends)))
    return tuple(dims)


# ----------------------------------------------------------------------------- the graph


class _Arg(NamedTuple):
    """A step's argument: ``name`` of its ONNX value (None for a constant of the trace), its
    traced ``value`` and its sizes (ints, or :class:`_Dim` where they follow a dynamic size)."""

    name: str | None
    value: object
    dims: tuple


class _Call(NamedTuple):
    """What a mapping rule is given: the step's arguments, params and traced output, the
    output's sizes, and the params whose value depends on a dynamic size (``{name: value in
    a variation trace}``)."""

    primitive: str
    args: list
    params: dict
    out: np.ndarray
    out_dims: tuple
    changed: dict


class _Builder:
    """Collects the nodes and initializers of one graph."""

    def __init__(self, helper, opset: int, names: dict, symbols: dict, input_name: str):
        self.helper = helper
        self.opset = opset
        self.names = names  # id of a params (or state) array -> its path
        self.symbols = symbols  # dynamic size name -> the input's axis
        self.input_name = input_name
        self.nodes: list = []
        self.initializers: list = []
        self._constants: dict = {}  # (id of a constant of the trace, dtype) -> initializer name
        self.inputs: dict = {}  # dynamic size name -> (its traced size, its size in its variation trace)
        self._shape: str | None = None  # the input's Shape, once a size needs it
        self._sizes: dict = {}  # _Dim -> name of a 1-element int64 tensor holding it
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def add(self, op: str, inputs: list, **attributes) -> str:
        """Append a node ``op`` (one output) and return its output's name."""
        out = self.fresh(op)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attributes))
        return out

    def constant(self, value, dtype=None) -> str:
        """The name of a new initializer holding ``value`` (cast to ``dtype`` if given), named
        by its path when it is an array of the params or the state in its own dtype."""
        from onnx import numpy_helper

        array = np.asarray(value)
        dtype = array.dtype if dtype is None else np.dtype(dtype)
        name = self.names.get(id(value)) if isinstance(value, np.ndarray) and array.dtype == dtype else None
        name = self.fresh("const") if name is None else name
        self.initializers.append(numpy_helper.from_array(np.asarray(array, dtype=dtype, order="C"), name))
        return name

    def ints(self, values) -> str:
        """An int64 initializer (shapes, axes, slice bounds)."""
        return self.constant(np.asarray(values, dtype=np.int64))

    def input(self, arg: _Arg, dtype=None) -> str:
        """The name of ``arg``'s value in ``dtype`` (a Cast, or a cast constant, when it differs)."""
        if arg.name is None:
            # one initializer per constant and dtype (the tape keeps each constant alive, so ids are not reused)
            key = (id(arg.value), None if dtype is None else np.dtype(dtype))
            if key not in self._constants:
                self._constants[key] = self.constant(arg.value, dtype)
            return self._constants[key]
        if dtype is None or np.result_type(arg.value) == np.dtype(dtype):
            return arg.name
        return self.add("Cast", [arg.name], to=self.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

    def reduce(self, op: str, x: str, axes, keepdims: bool) -> str:
        """``op`` (ReduceSum, ReduceMean, ReduceMax) over ``axes``: ReduceSum takes its axes as
        an input from opset 13, the others as an attribute until opset 18."""
        if op == "ReduceSum":
            return self.add(op, [x, self.ints(axes)], keepdims=int(keepdims))
        return self.add(op, [x], axes=list(axes), keepdims=int(keepdims))

    def size(self, dim: "_Dim") -> str:
        """A 1-element int64 tensor holding the size ``dim``, computed from the input's shape."""
        if dim not in self._sizes:
            if self._shape is None:
                self._shape = self.add("Shape", [self.input_name])
            parts = [self.add("Gather", [self._shape, self.ints([self.symbols[s]])], axis=0) for s in dim.symbols]
            if dim.factor != 1:
                parts.append(self.ints([dim.factor]))
            size = parts[0]
            for part in parts[1:]:
                size = self.add("Mul", [size, part])
            self._sizes[dim] = size
        return self._sizes[dim]

    def shape(self, entries: list) -> str:
        """An int64 shape tensor from ``entries``: ints, and :class:`_Dim` sizes computed at run time."""
        if not any(isinstance(e, _Dim) for e in entries):
            return self.ints(entries)
        return self.add("Concat", [self.size(e) if isinstance(e, _Dim) else self.ints([e]) for e in entries], axis=0)

    def graph(self, traced: _Traced, variations: dict, output_name: str):
        """The ONNX graph of ``traced``; ``variations`` maps each dynamic size's name to the
        trace at another value of it."""
        program, values = traced
        for other in variations.values():
            if len(other.program.steps) != len(program.steps) or any(
                a.primitive is not b.primitive for a, b in zip(program.steps, other.program.steps)
            ):
                raise ExportError("to_onnx: the function calls other primitives at another size of a dynamic axis (its "
                                  "graph depends on that size), so it cannot be exported with that axis dynamic")
        self.inputs = {s: (values[0].shape[axis], variations[s].values[0].shape[axis]) for s, axis in self.symbols.items()}
        dims = []
        for k, value in enumerate(values):
            varied = {s: np.shape(other.values[k]) for s, other in variations.items()}
            if any(len(shape) != np.ndim(value) for shape in varied.values()):
                raise ExportError(f"to_onnx: {_maker(program, k)} has another number of axes at another size of a "
                                  "dynamic axis")
            dims.append(_dims(np.shape(value), varied, self.inputs, _maker(program, k)))
        slots = {0: self.input_name}
        for k, step in enumerate(program.steps):
            twins = [other.program.steps[k] for other in variations.values()]
            slots[step.out] = self._step(step, twins, values, slots, dims)
        out_slot = program.outputs.index
        if out_slot == 0:  # the function returns its input
            self.nodes.append(self.helper.make_node("Identity", [self.input_name], [output_name]))
        else:
            _rename(self.nodes, slots[out_slot], output_name)
        h = self.helper
        return h.make_graph(
            self.nodes, "tinyfn", [_value_info(h, self.input_name, values[0], dims[0])],
            [_value_info(h, output_name, values[out_slot], dims[out_slot])], initializer=self.initializers,
        )

    def _step(self, step, twins: list, values: list, slots: dict, dims: list) -> str:
        name = step.primitive.name
        rule = _RULES.get(name)
        if rule is None:
            raise ExportError(f"to_onnx: primitive {name!r} has no ONNX mapping (mapped: {', '.join(sorted(_RULES))})")
        args = []
        for position, a in enumerate(step.args):
            if type(a) is _Slot:
                args.append(_Arg(slots[a.index], values[a.index], dims[a.index]))
            else:
                args.append(self._constant_arg(name, a, {s: twin.args[position] for s, twin in zip(self.symbols, twins)}))
        changed = {}
        for twin in twins:
            changed.update({p: twin.params[p] for p in step.params if not _same(step.params[p], twin.params[p])})
        return rule(self, _Call(name, args, step.params, values[step.out], dims[step.out], changed))

    def _constant_arg(self, primitive: str, a, twins: dict) -> "_Arg":
        """A constant argument ``a`` of the trace, given the same argument in each variation.

        Equal everywhere, it is a constant. A constant that is shorter where a dynamic axis is
        shorter, and there the start of ``a`` (the first ``T`` rows of a position table), is
        ``a`` sliced to the run-time size. Anything else depends on a dynamic size in a way that
        cannot be exported."""
        differ = {s: b for s, b in twins.items() if not _same(a, b)}
        if not differ:
            return _Arg(None, a, np.shape(a))
        if not all(_is_start(a, b) for b in differ.values()):
            raise ExportError(
                f"to_onnx: a constant argument of {primitive!r} (shape {np.shape(a)}) depends on the size of the dynamic "
                f"ax{'e' if len(differ) > 1 else 'i'}s {', '.join(map(repr, differ))}: compute it from the input with "
                "tinyfn ops, or leave that size fixed"
            )
        varied = {s: np.shape(b) for s, b in differ.items()}
        dims = _dims(np.shape(a), varied, self.inputs, f"a constant argument of {primitive!r}")
        return _Arg(self.sliced(self.constant(a), dims), a, dims)

    def sliced(self, name: str, dims: tuple) -> str:
        """The value ``name`` cut to the run-time sizes ``dims`` along the axes where they are dynamic."""
        axes = [i for i, d in enumerate(dims) if isinstance(d, _Dim)]
        return self.add("Slice", [name, self.ints([0] * len(axes)), self.shape([dims[i] for i in axes]), self.ints(axes)])


def _value_info(helper, name: str, value, dims: tuple):
    """The graph's description of an input or output: its dtype, and its sizes (named where dynamic)."""
    sizes = [str(d) if isinstance(d, _Dim) else d for d in dims]
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.result_type(value)), sizes)


def _maker(program: Program, slot: int) -> str:
    """What made the value in ``slot``, for messages: the input, or the primitive's name."""
    return "the input" if slot == 0 else f"the output of {program.steps[slot - 1].primitive.name!r}"


def _is_start(a, b) -> bool:
    """Whether ``b`` is the start of ``a`` (``a[:m, :n, ...]``, shorter along some axis)."""
    shape, start = np.shape(a), np.shape(b)
    return (len(start) == len(shape) and start != shape and all(m <= n for m, n in zip(start, shape))
            and _same(np.asarray(a)[tuple(slice(0, m) for m in start)], b))


def _rename(nodes: list, old: str, new: str) -> None:
    """Call the value ``old`` ``new`` in every node that makes or reads it."""
    for node in nodes:
        for names in (node.input, node.output):
            for i, n in enumerate(names):
                if n == old:
                    names[i] = new


def _fixed(call: _Call, name: str) -> None:
    """An ExportError unless the param ``name`` is the same whatever the dynamic sizes."""
    if name in call.changed:
        raise ExportError(f"to_onnx: {call.primitive}'s {name} depends on the size of a dynamic axis "
                          f"({call.params[name]!r} in one trace, {call.changed[name]!r} in another), which this "
                          "exporter cannot write; leave that axis fixed")


# ----------------------------------------------------------------------------- the mapping rules
# Each rule maps one call of a primitive to nodes and returns the name of the result.


def _elementwise(op: str):
    def rule(b: _Builder, call: _Call) -> str:
        dtype = call.out.dtype
        return b.add(op, [b.input(a, dtype) for a in call.args])

    return rule


def _gelu(b, call):
    """``x * Phi(x)`` as ``x / 2 * (1 + erf(x / sqrt 2))``, or the tanh form (Gelu is an ONNX
    op from opset 20 only)."""
    dtype = call.out.dtype
    x = b.input(call.args[0], dtype)
    if call.params["approximate"]:
        cubic = b.add("Add", [x, b.add("Mul", [b.add("Mul", [b.add("Mul", [x, x]), x]), b.constant(0.044715, dtype)])])
        phi = b.add("Tanh", [b.add("Mul", [cubic, b.constant(math.sqrt(2 / math.pi), dtype)])])
    else:
        phi = b.add("Erf", [b.add("Mul", [x, b.constant(1 / math.sqrt(2), dtype)])])
    return b.add("Mul", [b.add("Mul", [x, b.constant(0.5, dtype)]), b.add("Add", [phi, b.constant(1, dtype)])])


def _leaky_relu(b, call):
    return b.add("LeakyRelu", [b.input(call.args[0], call.out.dtype)], alpha=float(call.params["slope"]))


def _clip(b, call):
    dtype = call.out.dtype
    bounds = ["" if call.params[p] is None else b.constant(call.params[p], dtype) for p in ("lo", "hi")]
    return b.add("Clip", [b.input(call.args[0], dtype), *bounds])


def _reduction(op: str):
    def rule(b, call):
        (x,) = call.args
        ndim = np.ndim(x.value)
        axis = call.params["axis"]
        axes = tuple(range(ndim)) if axis is None else normalize_axis_tuple(axis, ndim)
        return b.reduce(op, b.input(x, call.out.dtype), axes, call.params["keepdims"])

    return rule


def _reshape(b, call):
    (x,) = call.args
    target = []
    for i, d in enumerate(call.out_dims):
        same = isinstance(d, _Dim) and i < len(x.dims) and x.dims[i] == d
        target.append(0 if same else d)  # 0: ONNX's Reshape copies the input's size on that axis
    dynamic = [i for i, d in enumerate(target) if isinstance(d, _Dim)]
    if len(dynamic) == 1:
        target[dynamic[0]] = -1  # inferred from the other sizes, no Shape node needed
    return b.add("Reshape", [x.name, b.shape(target)])


def _transpose(b, call):
    (x,) = call.args
    axes = call.params["axes"]
    perm = list(range(np.ndim(x.value)))[::-1] if axes is None else list(normalize_axis_tuple(axes, np.ndim(x.value)))
    return b.add("Transpose", [x.name], perm=perm)


def _broadcast_to(b, call):
    (x,) = call.args
    lead = len(call.out_dims) - len(x.dims)
    target = []
    for i, d in enumerate(call.out_dims):
        kept = isinstance(d, _Dim) and i >= lead and x.dims[i - lead] == d
        target.append(1 if kept else d)  # Expand keeps an axis the input has at full size
    return b.add("Expand", [b.input(x, call.out.dtype), b.shape(target)])


def _getitem(b, call):
    (x,) = call.args
    index = call.params["index"]
    _fixed(call, "index")
    parts = index if isinstance(index, tuple) else (index,)
    if not all(isinstance(p, (int, np.integer, slice)) or p is None or p is Ellipsis for p in parts):
        raise ExportError(f"to_onnx: getitem with index {index!r} has no ONNX mapping (ints, slices, None and "
                          "Ellipsis have)")
    ndim = np.ndim(x.value)
    if Ellipsis in parts:
        at = parts.index(Ellipsis)
        taken = sum(p is not None for p in parts) - 1
        parts = parts[:at] + (slice(None),) * (ndim - taken) + parts[at + 1:]
    out, axis = b.input(x), 0
    for p in parts:
        if p is None:
            out = b.add("Unsqueeze", [out, b.ints([axis])])
            axis += 1
        elif isinstance(p, slice):
            if p != slice(None):
                step = 1 if p.step is None else p.step
                start = p.start if p.start is not None else 0 if step > 0 else _INT64_MAX
                stop = p.stop if p.stop is not None else _INT64_MAX if step > 0 else _INT64_MIN
                out = b.add("Slice", [out, b.ints([start]), b.ints([stop]), b.ints([axis]), b.ints([step])])
            axis += 1
        else:  # an int picks one entry and drops the axis
            out = b.add("Gather", [out, b.ints(int(p))], axis=axis)
    return out


def _concatenate(b, call):
    dtype = call.out.dtype
    axis = normalize_axis_index(call.params["axis"], call.out.ndim)
    return b.add("Concat", [b.input(a, dtype) for a in call.args], axis=axis)


def _stack(b, call):
    dtype = call.out.dtype
    axis = normalize_axis_index(call.params["axis"], call.out.ndim)
    parts = [b.add("Unsqueeze", [b.input(a, dtype), b.ints([axis])]) for a in call.args]
    return b.add("Concat", parts, axis=axis)


def _where(b, call):
    condition, x, y = call.args
    dtype = call.out.dtype
    return b.add("Where", [b.input(condition, np.bool_), b.input(x, dtype), b.input(y, dtype)])


def _softmax(op: str):
    def rule(b, call):
        (x,) = call.args
        return b.add(op, [b.input(x, call.out.dtype)], axis=normalize_axis_index(call.params["axis"], call.out.ndim))

    return rule


def _dense(b, call):
    dtype = call.out.dtype
    xs, ws, bs = (b.input(a, dtype) for a in call.args)
    if np.ndim(call.args[0].value) == 2:
        y = b.add("Gemm", [xs, ws, bs])
    else:
        y = b.add("Add", [b.add("MatMul", [xs, ws]), bs])
    return b.add("Relu", [y]) if call.params.get("relu") else y


def _conv_attributes(params: dict, kernel: tuple) -> dict:
    (ph, pw), stride, dilation = params["padding"], params["stride"], params["dilation"]
    return dict(kernel_shape=list(kernel), pads=[ph, pw, ph, pw], strides=list(stride), dilations=list(dilation),
                group=params["groups"])


def _conv2d(b, call):
    dtype = call.out.dtype
    inputs = [b.input(a, dtype) for a in call.args if not (a.name is None and a.value is None)]
    y = b.add("Conv", inputs, **_conv_attributes(call.params, np.shape(call.args[1].value)[2:]))
    return b.add("Relu", [y]) if call.params["relu"] else y


def _conv_transpose2d(b, call):
    x, w, _ = call.args
    dtype = call.out.dtype
    attributes = _conv_attributes(call.params, np.shape(w.value)[2:])
    # tinyfn is given the output size; ONNX the rows and columns added after the usual size
    extra = [
        out - ((size - 1) * s - 2 * p + d * (k - 1) + 1)
        for size, out, k, s, p, d in zip(np.shape(x.value)[2:], call.out.shape[2:], attributes["kernel_shape"],
                                         call.params["stride"], call.params["padding"], call.params["dilation"])
    ]
    inputs = [b.input(a, dtype) for a in call.args if not (a.name is None and a.value is None)]
    return b.add("ConvTranspose", inputs, output_padding=extra, **attributes)


def _pool(op: str, **extra):
    def rule(b, call):
        (x,) = call.args
        (ph, pw) = call.params["padding"]
        return b.add(op, [b.input(x, call.out.dtype)], kernel_shape=list(call.params["window"]),
                     strides=list(call.params["stride"]), pads=[ph, pw, ph, pw], **extra)

    return rule


def _global_avg_pool2d(b, call):
    (x,) = call.args
    return b.add("Flatten", [b.add("GlobalAveragePool", [b.input(x, call.out.dtype)])], axis=1)


def _normalized(b, x: str, gamma: str, beta: str | None, eps: float, dtype, centered: bool) -> str:
    """``gamma * (x - mean) / sqrt(var + eps) + beta`` over the last axis, in basic nodes
    (no centring, no ``beta``: RMSNorm)."""
    if centered:
        x = b.add("Sub", [x, b.reduce("ReduceMean", x, [-1], True)])
    variance = b.reduce("ReduceMean", b.add("Mul", [x, x]), [-1], True)
    root = b.add("Sqrt", [b.add("Add", [variance, b.constant(eps, dtype)])])
    y = b.add("Mul", [b.add("Div", [x, root]), gamma])
    return y if beta is None else b.add("Add", [y, beta])


def _layer_norm(b, call):
    dtype = call.out.dtype
    x, gamma, beta = (b.input(a, dtype) for a in call.args)
    eps = float(call.params["eps"])
    if b.opset >= 17:
        return b.add("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=eps)
    return _normalized(b, x, gamma, beta, eps, dtype, centered=True)


def _rms_norm(b, call):
    dtype = call.out.dtype
    x, gamma = (b.input(a, dtype) for a in call.args)
    return _normalized(b, x, gamma, None, float(call.params["eps"]), dtype, centered=False)


def _attention(b, call):
    q, k, v, bias = call.args
    dtype = call.out.dtype
    rows, cols = q.dims[2], k.dims[2]
    keys = b.add("Transpose", [b.input(k, dtype)], perm=[0, 1, 3, 2])
    scale = b.constant(1 / math.sqrt(np.shape(q.value)[-1]), dtype)
    scores = b.add("Mul", [b.add("MatMul", [b.input(q, dtype), keys]), scale])
    if bias.value is not None:
        scores = b.add("Add", [scores, b.input(bias, dtype)])
    if call.params["causal"]:
        # -inf above the diagonal (key 0 is always allowed); cut to the sequences' lengths when
        # they are dynamic, since the top-left corner of the causal mask is the causal mask
        traced = np.shape(q.value)[2], np.shape(k.value)[2]
        mask = b.constant(np.where(np.tri(*traced, dtype=bool), 0, -np.inf).astype(dtype))
        if isinstance(rows, _Dim) or isinstance(cols, _Dim):
            mask = b.sliced(mask, (rows, cols))
        scores = b.add("Add", [scores, mask])
    weights = b.add("Softmax", [scores], axis=3)
    if bias.value is not None:
        # A query that the bias (with the causal mask) leaves no key gets weights 0 in tinyfn,
        # not a softmax's NaN: keep the weights where the scores are not -inf.
        allowed = b.add("Not", [b.add("IsInf", [scores], detect_positive=0)])
        weights = b.add("Where", [allowed, weights, b.constant(0, dtype)])
    return b.add("MatMul", [weights, b.input(v, dtype)])


def _embedding_lookup(b, call):
    w, ids = call.args
    return b.add("Gather", [b.input(w), b.input(ids)], axis=0)


_RULES = {
    **{name: _elementwise(op) for name, op in {
        "add": "Add", "subtract": "Sub", "multiply": "Mul", "divide": "Div", "power": "Pow", "maximum": "Max",
        "minimum": "Min", "negative": "Neg", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "abs": "Abs", "tanh": "Tanh",
        "sigmoid": "Sigmoid", "relu": "Relu", "softplus": "Softplus", "erf": "Erf", "matmul": "MatMul",
    }.items()},
    "gelu": _gelu,
    "leaky_relu": _leaky_relu,
    "clip": _clip,
    "sum": _reduction("ReduceSum"),
    "mean": _reduction("ReduceMean"),
    "max": _reduction("ReduceMax"),
    "reshape": _reshape,
    "transpose": _transpose,
    "broadcast_to": _broadcast_to,
    "getitem": _getitem,
    "concatenate": _concatenate,
    "stack": _stack,
    "where": _where,
    "softmax": _softmax("Softmax"),
    "log_softmax": _softmax("LogSoftmax"),
    "dense": _dense,
    "conv2d": _conv2d,
    "conv_transpose2d": _conv_transpose2d,
    "max_pool2d": _pool("MaxPool"),
    "avg_pool2d": _pool("AveragePool", count_include_pad=1),
    "global_avg_pool2d": _global_avg_pool2d,
    "layer_norm": _layer_norm,
    "rms_norm": _rms_norm,
    "attention": _attention,
    "embedding_lookup": _embedding_lookup,
}
