"""Per-example gradients: the gradient of each example's loss, for a whole batch at once.

``per_example_grads(loss)(params, x, y)`` returns a tree shaped like ``params`` whose leaves
have an extra leading axis of the batch size B: entry ``[i]`` of each leaf is the gradient of
example ``i``'s loss alone. DP-SGD clips these one by one before averaging; gradient-noise
studies look at their spread. A Python loop of :func:`~tinyfn.autodiff.grad` over the
examples computes the same numbers B times slower; this module needs one traced pass.

How (the design of Goodfellow's 2015 note and of Opacus): trace ``loss`` once and run the
backward pass seeded with ``ones(B)``, one cotangent per example's loss. The examples of a
batch do not interact, so every cotangent flowing between the model's activations is already
per example: row ``i`` holds what example ``i``'s loss alone sends back. Only where an
operation meets a parameter does the ordinary VJP rule sum over the batch. There this module
applies a *per-example rule* instead, which keeps the batch axis:

=====================================  ============================================================
operation using a parameter directly   per-example cotangent
=====================================  ============================================================
``dense(x, w, b)`` (``Dense``)          w: ``x[i].T @ g[i]`` (B, in, out); b: ``g[i]`` summed (B, out)
``conv2d(x, w, b)`` (``Conv2D``)        w: the convolution's weight gradient with the batch folded
                                        into the groups (B, OC, C/G, KH, KW); b: ``g`` summed over
                                        the image (B, OC)
``x @ w``, w a 2-D parameter            as dense's w
``x + p``, ``x - p``, ``x * p``         the ordinary rule, summed over the broadcast axes but 0
=====================================  ============================================================

(with ``g`` the cotangent of the operation's output, masked by the fused ReLU of ``Dense``
and ``Conv2D`` with ``activation="relu"``). The products are those of the ordinary gradient,
kept apart instead of summed; what grows is the result, B gradients instead of one. For the
64-128-64-10 digits MLP that is 4.4 million numbers at B = 256, written in about 6 times the
time of an ordinary gradient (2.5 times at B = 32); convolutions, whose products dominate,
take about 1.5 times.

Limits, each refused with a :class:`PerExampleError` naming the operation and the parameter:

* ``loss`` must return one loss per example, shape ``(B,)`` (for example
  ``losses.softmax_cross_entropy(logits, y, reduction="none")``), not their mean.
* A parameter must be used directly by one of the operations above. A parameter transformed
  on its own first (``w.T``, ``w ** 2``, a reshape, an L2 penalty) has no per-example rule;
  add a regularizer's gradient after clipping. Neither have ``conv_transpose2d`` and
  BatchNorm (also in evaluation mode, where it reshapes its parameters).
* Examples must stay apart along axis 0: every operation that depends on the parameters must
  give an output with a leading axis of B. ``batch_norm`` (batch statistics), a mean over the
  batch, or a concatenation of batches break that and are refused. The check reads shapes, so
  it cannot see an operation that mixes examples and keeps the leading length B (transposing
  a B x B array): such a model gets gradients that are not per example.
* First order only: the arguments must be plain arrays, not values traced by an enclosing
  ``grad`` (per-example gradients cannot be differentiated again).
"""

from __future__ import annotations

import numpy as np

from . import conv, ops, tree
from .autodiff import Node, _name_inputs, _trace, _unwrap

__all__ = ["PerExampleError", "per_example_grads", "per_example_value_and_grads"]


class PerExampleError(ValueError):
    """A loss or model outside what :func:`per_example_grads` supports (see the module notes)."""


_SUPPORTED = (
    "the weights and biases of dense and conv2d (Dense and Conv2D layers, with or without their "
    "fused ReLU), a 2-D parameter on the right of a matmul (x @ w), and a parameter that add, "
    "subtract or multiply broadcast over the batch axis 0"
)

_MIXES_EXAMPLES = {"batch_norm": "it normalises with the batch's statistics, so each example's output depends on the others"}


# ----------------------------------------------------------------------------- public API


def per_example_value_and_grads(loss):
    """Return a function computing ``(losses, per-example gradients)`` of ``loss``.

    ``loss(params, *args, **kwargs)`` must return the vector of per-example losses, shape
    ``(B,)``, for a model built of the operations listed in this module's notes. The returned
    function takes the same arguments and returns ``losses`` (B,) and a tree shaped like
    ``params`` whose leaves have shape ``(B, *leaf.shape)`` and the leaf's dtype: entry ``[i]``
    is the gradient of ``losses[i]`` with respect to ``params``. A
    :class:`PerExampleError` names what is not supported.
    """

    def value_and_grads(params, *args, **kwargs):
        _check_untraced(params, args, kwargs)
        out, wrapped, tape, trace = _trace(lambda p: loss(p, *args, **kwargs), (params,), ["params"])
        _name_inputs(wrapped, ["params"])  # the paths the error messages name: "params/dense_0/w"
        losses = _per_example_losses(out, trace)
        by_id = _per_example_backward(tape, out, trace) if _recorded_by(out, trace) else {}
        batch = len(losses)
        grads = tree.map(lambda node: _as_per_example_gradient(by_id.get(id(node)), node.value, batch), wrapped[0])
        return losses, grads

    return value_and_grads


def per_example_grads(loss):
    """Return a function computing the per-example gradients of ``loss``.

    Same as :func:`per_example_value_and_grads` without the losses: ``per_example_grads(loss)
    (params, x, y)`` is a tree shaped like ``params`` with leaves ``(B, *leaf.shape)``, whose
    sum over axis 0 is the gradient of ``loss(params, x, y).sum()``.
    """
    value_and_grads = per_example_value_and_grads(loss)
    return lambda params, *args, **kwargs: value_and_grads(params, *args, **kwargs)[1]


# ----------------------------------------------------------------------------- checks


def _check_untraced(params, args, kwargs) -> None:
    for leaf in tree.leaves((params, args, kwargs)):
        if type(leaf) is Node:
            raise PerExampleError(
                "per_example_grads computes first-order gradients of plain arrays, found a value traced by an "
                "enclosing differentiation (per-example gradients cannot be differentiated again)"
            )


def _recorded_by(x, trace) -> bool:
    return type(x) is Node and x.trace is trace


def _is_parameter(x, trace) -> bool:
    """True for the input Nodes of ``trace``, which are the parameters' leaves."""
    return _recorded_by(x, trace) and x.primitive is None


def _per_example_losses(out, trace) -> np.ndarray:
    """The loss's output as a plain array, after checking it is one loss per example."""
    value = _unwrap(out, trace)
    is_array = isinstance(value, (np.ndarray, np.generic))
    if not (is_array and np.ndim(value) == 1 and np.size(value) > 0 and value.dtype.kind == "f"):
        found = f"shape {np.shape(value)} and dtype {value.dtype}" if is_array else f"a {type(value).__name__}"
        raise PerExampleError(
            "per_example_grads: expected loss to return one float loss per example, an array of shape (B,) "
            f"(for example softmax_cross_entropy(..., reduction='none')), found {found}"
        )
    if _is_parameter(out, trace):
        raise PerExampleError(f"per_example_grads: expected loss to compute the losses, found the parameter '{out.name}' itself")
    return value


def _describe(node: Node, trace) -> str:
    """``add(parameter 'params/b' (4,), a value (8, 4))``: the operation and its arguments."""
    args = [
        f"parameter '{a.name}' {np.shape(a.value)}" if _is_parameter(a, trace) else "None" if a is None else f"a value {np.shape(a)}"
        for a in node.args
    ]
    return f"{node.primitive.name}({', '.join(args)})"


def _checked_rules(node: Node, parameters: list[int], trace, batch: int) -> list:
    """The per-example rules of ``node``'s parameter arguments (at ``parameters``), after
    checking the node keeps the examples apart; a :class:`PerExampleError` otherwise."""
    why = _MIXES_EXAMPLES.get(node.primitive.name)
    if why is not None:
        raise _mixing_error(node, trace, why)
    rules = []
    for i in parameters:
        rule = _RULES.get(node.primitive.name, {}).get(i)
        if rule is None:
            raise PerExampleError(
                f"per_example_grads: {_describe(node, trace)} uses the parameter '{node.args[i].name}' directly as "
                f"its argument {i}, which has no per-example rule. Supported: {_SUPPORTED}"
            )
        rules.append((i, rule))
    if np.shape(node.value)[:1] != (batch,):
        raise _mixing_error(node, trace, f"its output has shape {np.shape(node.value)}, without a leading axis of the B = {batch} examples")
    return rules


def _mixing_error(node: Node, trace, why: str) -> PerExampleError:
    return PerExampleError(
        f"per_example_grads: {_describe(node, trace)} mixes the examples of the batch: {why}. Every operation "
        "that depends on the parameters must keep example i in entry i of axis 0 (no batch statistics, no "
        "reduction or concatenation over the batch, no parameter transformed on its own)"
    )


# ----------------------------------------------------------------------------- the backward pass


def _per_example_backward(tape: list[Node], out: Node, trace) -> dict[int, np.ndarray]:
    """Run the backward pass from ``out`` (B,) seeded with ones(B), keeping the batch axis
    where a node uses a parameter. Returns ``{id(parameter node): (B, *shape) cotangent}``.

    The walk is :func:`tinyfn.autodiff._backward`'s, except that a parameter argument's
    cotangent comes from its per-example rule, and the ordinary VJP runs only for the others.
    """
    batch = np.shape(out.value)[0]
    pending = {id(out): np.ones(batch, dtype=np.result_type(out.value))}
    per_example: dict[int, np.ndarray] = {}
    for node in reversed(tape):
        g = pending.pop(id(node), None)
        if g is None:
            continue
        needs = node.primitive.needs(node.args, trace)
        parameters = [i for i, (a, need) in enumerate(zip(node.args, needs)) if need and _is_parameter(a, trace)]
        values = [_unwrap(a, trace) for a in node.args]
        for i, rule in _checked_rules(node, parameters, trace, batch):
            _accumulate(per_example, node.args[i], rule(node, i, values, g, trace))
        _run_vjp(node, g, tuple(need and i not in parameters for i, need in enumerate(needs)), pending)
    return per_example


def _run_vjp(node: Node, g, needs: tuple, pending: dict) -> None:
    """The ordinary VJP of ``node`` for the arguments in ``needs``, added to their pending cotangents."""
    if not any(needs):
        return
    cotangents = node.primitive.vjp(g, node.residuals, needs)
    node.primitive.check_cotangents(cotangents, node.args, needs)
    for a, ct, need in zip(node.args, cotangents, needs):
        if need:
            _accumulate(pending, a, ct)


def _accumulate(cotangents: dict, node: Node, ct) -> None:
    earlier = cotangents.get(id(node))
    cotangents[id(node)] = ct if earlier is None else earlier + ct  # a value used twice


def _as_per_example_gradient(ct, value, batch: int) -> np.ndarray:
    """The per-example gradient of a parameter leaf: ``ct`` (zeros when no loss depends on the
    leaf) as a C-contiguous array ``(batch, *value.shape)`` of the leaf's dtype."""
    if ct is None:
        return np.zeros((batch,) + np.shape(value), dtype=np.result_type(value))
    return np.ascontiguousarray(ct, dtype=np.result_type(value))


# ----------------------------------------------------------------------------- per-example rules
# A rule is ``rule(node, position, values, g, trace) -> (B, *parameter shape)``: the
# per-example cotangent of argument ``position`` of ``node``, from the node's arguments as
# arrays (``values``) and the cotangent ``g`` (B, ...) of its output.


def _through_relu(node: Node, g):
    """``g`` taken back through the fused ReLU of dense and conv2d (``relu=True``), if any."""
    return ops.relu_backward(g, node.value) if node.params.get("relu") else g


def _per_example_outer(node, x, g, trace) -> np.ndarray:
    """``x[i].T @ g[i]`` for each example i: x (B, ..., in), g (B, ..., out) -> (B, in, out)."""
    if np.ndim(x) < 2:
        raise PerExampleError(
            f"per_example_grads: {_describe(node, trace)}: expected an input x (B, ..., in) with a batch axis, "
            f"found shape {np.shape(x)}"
        )
    batch = len(x)
    return np.einsum("bmi,bmo->bio", np.reshape(x, (batch, -1, np.shape(x)[-1])), np.reshape(g, (batch, -1, np.shape(g)[-1])))


def _dense_weight(node, position, values, g, trace):
    return _per_example_outer(node, values[0], _through_relu(node, g), trace)


def _dense_bias(node, position, values, g, trace):
    g = _through_relu(node, g)
    return np.reshape(g, (len(g), -1, np.shape(g)[-1])).sum(axis=1)


def _matmul_weight(node, position, values, g, trace):
    if np.ndim(values[1]) != 2:
        raise PerExampleError(
            f"per_example_grads: {_describe(node, trace)}: expected x (B, ..., in) @ w (in, out) with a 2-D "
            f"parameter w, found w of shape {np.shape(values[1])}. Supported: {_SUPPORTED}"
        )
    return _per_example_outer(node, values[0], g, trace)


def _elementwise_rule(local):
    """The rule of a broadcasting elementwise operation, from ``local(g, values, position)``:
    the cotangent of the argument at ``position`` before it is summed back to its shape."""

    def rule(node, position, values, g, trace):
        shape = np.shape(values[position])
        aligned = (1,) * (np.ndim(g) - len(shape)) + shape  # the parameter's shape as broadcasting sees it
        if aligned[0] != 1:
            raise PerExampleError(
                f"per_example_grads: {_describe(node, trace)}: expected the parameter '{node.args[position].name}' "
                f"to broadcast over the batch axis 0 of the output {np.shape(g)}, found it spans that axis. "
                f"Supported: {_SUPPORTED}"
            )
        ct = local(g, values, position)
        stretched = tuple(a for a in range(1, np.ndim(ct)) if aligned[a] == 1 and np.shape(ct)[a] != 1)
        return np.sum(ct, axis=stretched).reshape((len(ct),) + shape)

    return rule


_add_rule = _elementwise_rule(lambda g, values, position: g)
_subtract_rule = _elementwise_rule(lambda g, values, position: g if position == 0 else -g)
_multiply_rule = _elementwise_rule(lambda g, values, position: g * values[1 - position])


def _conv2d_weight(node, position, values, g, trace):
    """Every example's weight gradient from one call of the convolution's weight gradient: the
    batch is folded into the channels (x as (1, B*C, H, W), g as (1, B*OC, OH, OW)) and the
    groups multiplied by B, so that no product sums over two examples."""
    x, w = values[0], values[1]
    batch = len(x)
    folded_x = np.reshape(x, (1, -1) + np.shape(x)[2:])
    folded_g = np.reshape(_through_relu(node, g), (1, -1) + np.shape(g)[2:])
    geometry = {name: node.params[name] for name in ("stride", "padding", "dilation")}
    folded_w = conv._conv2d_weight_grad(
        folded_x, folded_g, w_shape=(batch * np.shape(w)[0],) + np.shape(w)[1:], groups=batch * node.params["groups"], **geometry
    )
    return np.reshape(folded_w, (batch,) + np.shape(w))


def _conv2d_bias(node, position, values, g, trace):
    return np.sum(_through_relu(node, g), axis=(2, 3))


_RULES = {
    "dense": {1: _dense_weight, 2: _dense_bias},
    "conv2d": {1: _conv2d_weight, 2: _conv2d_bias},
    "matmul": {1: _matmul_weight},
    "add": {0: _add_rule, 1: _add_rule},
    "subtract": {0: _subtract_rule, 1: _subtract_rule},
    "multiply": {0: _multiply_rule, 1: _multiply_rule},
}
"""The per-example rules, by primitive name and position of the parameter argument."""
