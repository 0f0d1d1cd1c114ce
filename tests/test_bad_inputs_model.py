"""Bad inputs to the model families (ops and the differentiation API, layers, conv, losses).

The same contract as tests/test_bad_inputs_core.py: each case is a call that must fail, the error
type it must raise (exactly that type: a tinyfn error or a documented built-in one), a fragment of
the message saying what was expected and one saying what was found. Every error must be raised by
tinyfn itself: the traceback's last frame is in the tinyfn package, not inside numpy or Python's
own modules, and no case may return a result.

Errors numpy raises inside a primitive (shapes that do not broadcast, an axis out of range, ...)
come back from tinyfn as the same built-in type, naming the primitive and what it was called
with (see tinyfn.ops); the OPS table checks that for every kind of primitive, traced or not.
"""

from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest

import tinyfn
from tinyfn import conv, layers, losses, ops, random, tree
from tinyfn.layers import ParamError

TINYFN_DIR = Path(tinyfn.__file__).resolve().parent
KEY = random.key(0)
X = np.arange(6.0).reshape(2, 3)  # a float64 (2, 3) array
IMAGES = np.ones((2, 3, 8, 8), np.float32)


class Bad(NamedTuple):
    call: Callable[[], object]
    error: type
    expected: str  # in the message: what was expected
    found: str  # in the message: what was found


def traced(f):
    """``f`` called on X inside a differentiation, so every primitive in it records a node."""
    return lambda: tinyfn.grad(lambda a: ops.sum(f(a)))(X)


OPS = {
    "add of (2, 3) and (4,)": Bad(
        lambda: ops.add(X, np.ones(4)), ValueError,
        "add: operands could not be broadcast together with shapes (2,3) (4,)",
        "called with a float64 array of shape (2, 3), a float64 array of shape (4,)",
    ),
    "multiply of (2, 3) and (4,), traced": Bad(
        traced(lambda a: a * np.ones(4)), ValueError, "multiply: operands could not be broadcast", "shapes (2,3) (4,)",
    ),
    "where of (2, 3) and (4,)": Bad(
        lambda: ops.where(X > 0, X, np.ones(4)), ValueError,
        "where: operands could not be broadcast", "a bool array of shape (2, 3), a float64 array of shape (2, 3)",
    ),
    "broadcast_to a smaller shape": Bad(
        lambda: ops.broadcast_to(X, (4, 3)), ValueError,
        "broadcast_to: operands could not be broadcast", "called with a float64 array of shape (2, 3), shape=(4, 3)",
    ),
    "reshape (2, 3) to (7,)": Bad(
        lambda: ops.reshape(X, (7,)), ValueError,
        "reshape: cannot reshape array of size 6 into shape (7,)",
        "called with a float64 array of shape (2, 3), shape=(7,)",
    ),
    "reshape (2, 3) to (7,), traced": Bad(
        traced(lambda a: ops.reshape(a, (7,))), ValueError,
        "reshape: cannot reshape array of size 6 into shape (7,)", "a float64 array of shape (2, 3)",
    ),
    "matmul of (2, 3) and (2, 3)": Bad(
        lambda: ops.matmul(X, X), ValueError,
        "matmul: Input operand 1 has a mismatch in its core dimension 0",
        "(size 2 is different from 3); called with a float64 array of shape (2, 3), a float64 array of shape (2, 3)",
    ),
    "a @ a of (2, 3), traced": Bad(
        traced(lambda a: a @ a), ValueError, "matmul: Input operand 1 has a mismatch", "size 2 is different from 3",
    ),
    "matmul by a scalar": Bad(
        lambda: ops.matmul(X, 2.0), ValueError,
        "matmul: Input operand 1 does not have enough dimensions", "called with a float64 array of shape (2, 3), 2.0",
    ),
    "concatenate of (2, 3) and (2, 4) along 0": Bad(
        lambda: ops.concatenate([X, np.ones((2, 4))]), ValueError,
        "concatenate: all the input array dimensions except for the concatenation axis must match",
        "the array at index 1 has size 4",
    ),
    "concatenate along axis 5": Bad(
        lambda: ops.concatenate([X, X], axis=5), ValueError,
        "concatenate: axis 5 is out of bounds for array of dimension 2", "axis=5",
    ),
    "stack of (2, 3) and (3, 2)": Bad(
        lambda: ops.stack([X, X.T]), ValueError,
        "stack: all input arrays must have the same shape",
        "a float64 array of shape (2, 3), a float64 array of shape (3, 2)",
    ),
    "stack of nothing": Bad(lambda: ops.stack([]), ValueError, "stack: need at least one array", "called with axis=0"),
    "sum over axis 5": Bad(
        lambda: ops.sum(X, axis=5), ValueError,
        "sum: axis 5 is out of bounds for array of dimension 2", "called with a float64 array of shape (2, 3), axis=5",
    ),
    "mean over axis 5": Bad(lambda: ops.mean(X, axis=5), ValueError, "mean: axis 5 is out of bounds", "axis=5"),
    "max over axis 5, traced": Bad(
        traced(lambda a: ops.max(a, axis=5)), ValueError, "max: axis 5 is out of bounds", "axis=5",
    ),
    "sum over axis '0'": Bad(
        lambda: ops.sum(X, axis="0"), TypeError, "sum: 'str' object cannot be interpreted as an integer", "axis='0'",
    ),
    "max of an empty axis": Bad(
        lambda: ops.max(np.ones((0, 3)), axis=0), ValueError,
        "max: zero-size array to reduction operation maximum which has no identity", "a float64 array of shape (0, 3)",
    ),
    "softmax over axis 5": Bad(
        lambda: ops.softmax(X, axis=5), ValueError, "softmax: axis 5 is out of bounds", "axis=5",
    ),
    "log_softmax over axis 5, traced": Bad(
        traced(lambda a: ops.log_softmax(a, axis=5)), ValueError, "log_softmax: axis 5 is out of bounds", "axis=5",
    ),
    "transpose (2, 3) by (0,)": Bad(
        lambda: ops.transpose(X, (0,)), ValueError,
        "transpose: axes don't match array", "a float64 array of shape (2, 3), axes=(0,)",
    ),
    "transpose by a repeated axis, traced": Bad(
        traced(lambda a: ops.transpose(a, (0, 0))), ValueError, "transpose: repeated axis", "axes=(0, 0)",
    ),
    "getitem out of range": Bad(
        lambda: ops.getitem(X, 5), IndexError,
        "getitem: index 5 is out of bounds for axis 0 with size 2", "a float64 array of shape (2, 3), index=5",
    ),
    "a[5], traced": Bad(traced(lambda a: a[5]), IndexError, "getitem: index 5 is out of bounds", "index=5"),
    "getitem with too many indices": Bad(
        lambda: ops.getitem(X, (0, 0, 0)), IndexError, "getitem: too many indices for array", "index=(0, 0, 0)",
    ),
    "getitem with a traced index": Bad(
        traced(lambda a: ops.getitem(X, a)), TypeError,
        "an index must be a plain array or slice", "found a traced value",
    ),
    "add of a string": Bad(
        lambda: ops.add(X, "a"), TypeError,
        "add: ufunc 'add' did not contain a loop", "called with a float64 array of shape (2, 3), 'a'",
    ),
    "exp of None": Bad(
        lambda: ops.exp(None), TypeError, "exp: loop of ufunc does not support argument 0", "called with None",
    ),
    "clip to a string": Bad(
        lambda: ops.clip(X, "a"), TypeError, "clip: ufunc 'maximum' did not contain a loop", "lo='a'",
    ),
}

AUTODIFF = {
    "grad with argnums out of range": Bad(
        lambda: tinyfn.grad(ops.sum, argnums=2)(X), ValueError, "argnums=2", "called with 1 positional arguments",
    ),
    "value_and_grad with argnums (0, 3)": Bad(
        lambda: tinyfn.value_and_grad(lambda a, b: ops.sum(a * b), argnums=(0, 3))(X, X), ValueError,
        "argnums=(0, 3)", "called with 2 positional arguments",
    ),
    "grad with argnums -3": Bad(
        lambda: tinyfn.grad(lambda a, b: ops.sum(a * b), argnums=-3)(X, X), ValueError, "argnums=-3", "called with 2",
    ),
    "grad with a static graph and argnums out of range": Bad(
        lambda: tinyfn.grad(ops.sum, argnums=1, static_graph=True)(X), ValueError, "argnums=1", "called with 1",
    ),
    "grad with argnums '0'": Bad(
        lambda: tinyfn.grad(ops.sum, argnums="0")(X), TypeError,
        "argnums must be an int or a tuple of ints", "found '0'",
    ),
    "grad with argnums 0.0": Bad(
        lambda: tinyfn.grad(ops.sum, argnums=0.0)(X), TypeError,
        "argnums must be an int or a tuple of ints", "found 0.0",
    ),
    "grad with argnums True": Bad(
        lambda: tinyfn.grad(lambda a, b: ops.sum(a * b), argnums=True)(X, X), TypeError,
        "an int or a tuple of ints", "found True",
    ),
    "grad with a repeated argnum": Bad(
        lambda: tinyfn.grad(lambda a, b: ops.sum(a * b), argnums=(0, -2))(X, X), ValueError,
        "argnums must name each argument once", "found (0, -2)",
    ),
    "grad of a non-scalar output": Bad(
        lambda: tinyfn.grad(lambda a: a * 2)(X), TypeError,
        "grad requires f to return a scalar (shape ())", "found shape (2, 3)",
    ),
    "grad of a function returning None": Bad(
        lambda: tinyfn.grad(lambda a: None)(X), TypeError, "requires f to return a scalar", "found None",
    ),
    "grad of a function returning a list": Bad(
        lambda: tinyfn.grad(lambda a: [ops.sum(a)])(X), TypeError, "requires f to return a scalar", "found [Node(sum",
    ),
    "grad of a function returning a string": Bad(
        lambda: tinyfn.grad(lambda a: "loss")(X), TypeError, "requires f to return a scalar", "found 'loss'",
    ),
    "grad of integers": Bad(
        lambda: tinyfn.grad(ops.sum)(np.arange(3)), TypeError,
        "cannot differentiate with respect to 'x': expected a floating-point array", "found dtype int64",
    ),
    "grad of a tree with an integer leaf": Bad(
        lambda: tinyfn.grad(lambda p: ops.sum(p["w"]))({"w": np.arange(3)}), TypeError,
        "with respect to 'p/w'", "found dtype int64",
    ),
    "vjp of a string": Bad(
        lambda: tinyfn.vjp(lambda a: a, "abc"), TypeError, "expected a floating-point array", "found dtype <U3",
    ),
    "has_aux without a pair": Bad(
        lambda: tinyfn.grad(ops.sum, has_aux=True)(X), TypeError,
        "has_aux=True requires f to return a pair (scalar, aux)", "found 15.0 (float64)",
    ),
    "has_aux with a triple": Bad(
        lambda: tinyfn.grad(lambda a: (ops.sum(a), 1, 2), has_aux=True)(X), TypeError,
        "a pair (scalar, aux)", "found a tuple of 3",
    ),
    "grad of a number": Bad(lambda: tinyfn.grad(3), TypeError, "grad: expected a function to differentiate", "found 3"),
    "vjp of a number": Bad(lambda: tinyfn.vjp(3, X), TypeError, "vjp: expected a function to differentiate", "found 3"),
    "vjp_fn of a cotangent of the wrong shape": Bad(
        lambda: tinyfn.vjp(lambda a: a * 2, X)[1](np.ones(3)), ValueError,
        "does not match output shape (2, 3)", "cotangent shape (3,)",
    ),
    "vjp_fn of a cotangent of the wrong structure": Bad(
        lambda: tinyfn.vjp(lambda a: a * 2, X)[1]((np.ones((2, 3)),)), tree.TreeMismatchError,
        "does not match output", "cotangent structure (*,)",
    ),
    "vjp_fn of a complex cotangent": Bad(
        lambda: tinyfn.vjp(lambda a: a * 2, X)[1](np.ones((2, 3), complex)), TypeError,
        "vjp: expected a real-valued cotangent", "found dtype complex128",
    ),
}


def init_apply(layer, input_shape, x, change=None, **kwargs):
    """Init ``layer`` for ``input_shape``, change its params with ``change``, apply it to ``x``."""
    _, params = layer.init(KEY, input_shape)
    return layer.apply(change(params) if change else params, x, **kwargs)


def with_entry(**entries):
    """A change of params: ``entries`` set (added or replaced)."""
    return lambda params: {**params, **entries}


def without(name):
    """A change of params: the entry ``name`` removed."""
    return lambda params: {k: v for k, v in params.items() if k != name}


F32 = np.ones((2, 3), np.float32)
STRINGS = np.full((2, 3), "a")
TWO_BRANCHES = layers.parallel(layers.Dense(3), layers.Dense(2))


def apply_two_branches(xs):
    _, params = TWO_BRANCHES.init(KEY, ((-1, 3), (-1, 3)))
    return TWO_BRANCHES.apply(params, xs)


LAYERS = {
    # Dense
    "Dense(0)": Bad(lambda: layers.Dense(0), ValueError, "Dense: out_features must be an int >= 1", "found 0"),
    "Dense(2.5)": Bad(lambda: layers.Dense(2.5), TypeError, "out_features must be an int >= 1", "found 2.5"),
    "Dense(True)": Bad(lambda: layers.Dense(True), TypeError, "out_features must be an int >= 1", "found True"),
    "Dense with activation tanh": Bad(
        lambda: layers.Dense(3, activation="tanh"), ValueError,
        "activation must be one of (None, 'relu')", "found 'tanh'",
    ),
    "Dense init for ()": Bad(
        lambda: layers.Dense(3).init(KEY, ()), ValueError,
        "Dense(3): expected an input shape (batch, features)", "found ()",
    ),
    "Dense init for 3": Bad(
        lambda: layers.Dense(3).init(KEY, 3), TypeError,
        "Dense(3): expected an input shape, a tuple of ints", "found 3",
    ),
    "Dense init for a string": Bad(lambda: layers.Dense(3).init(KEY, "ab"), TypeError, "a tuple of ints", "found 'ab'"),
    "Dense init for (-1, 2.5)": Bad(
        lambda: layers.Dense(3).init(KEY, (-1, 2.5)), TypeError, "a tuple of ints", "found (-1, 2.5)",
    ),
    "Dense init for (-2, 3)": Bad(
        lambda: layers.Dense(3).init(KEY, (-2, 3)), ValueError,
        "an input shape of sizes >= 0 (-1 for any batch size)", "found (-2, 3)",
    ),
    "Dense on 5 features for 3": Bad(
        lambda: init_apply(layers.Dense(4), (-1, 3), np.ones((2, 5))), ValueError,
        "Dense(4): expected input with 3 features (last axis)", "found shape (2, 5)",
    ),
    "Dense on a list": Bad(
        lambda: init_apply(layers.Dense(4), (-1, 3), [[1.0, 2.0, 3.0]]), TypeError,
        "Dense(4): expected an array input", "found list",
    ),
    "Dense on a scalar": Bad(
        lambda: init_apply(layers.Dense(4), (-1, 3), np.array(1.0)), ValueError,
        "expected an input with at least 1 axes", "found shape ()",
    ),
    "Dense on strings": Bad(
        lambda: init_apply(layers.Dense(4), (-1, 3), STRINGS), TypeError,
        "Dense(4): expected an array of numbers", "found dtype <U1",
    ),
    "Dense without b": Bad(
        lambda: init_apply(layers.Dense(4), (-1, 3), F32, without("b")), ParamError,
        "Dense(4) expected a parameter of shape (4,)", "params/b: missing",
    ),
    "Dense with w of the wrong shape": Bad(
        lambda: init_apply(layers.Dense(4), (-1, 3), F32, with_entry(w=np.ones((3, 5)))), ParamError,
        "params/w: Dense(4) expected shape (?, 4)", "found (3, 5)",
    ),
    "Dense with params in a list": Bad(
        lambda: init_apply(layers.Dense(4), (-1, 3), F32, lambda p: [p["w"], p["b"]]), ParamError,
        "expected a dict of parameters ['b', 'w']", "found list",
    ),
    "dense of mismatched x and w": Bad(
        lambda: layers.dense(F32, np.ones((4, 2)), np.ones(2)), ValueError,
        "dense: matmul: Input operand 1 has a mismatch",
        "called with a float32 array of shape (2, 3), a float64 array of shape (4, 2)",
    ),
    # activations
    "Relu on None": Bad(
        lambda: init_apply(layers.Relu(), (-1, 3), None), TypeError, "relu: expected an array input", "found NoneType",
    ),
    "Tanh on a list": Bad(
        lambda: init_apply(layers.Tanh(), (-1, 3), [1.0]), TypeError, "tanh: expected an array input", "found list",
    ),
    "GELU on strings": Bad(
        lambda: init_apply(layers.GELU(), (-1, 3), STRINGS), TypeError,
        "gelu: expected an array of numbers", "found dtype <U1",
    ),
    "Sigmoid with params": Bad(
        lambda: init_apply(layers.Sigmoid(), (-1, 3), F32, with_entry(w=1)), ParamError,
        "sigmoid has no parameter 'w'", "params/w",
    ),
    "Relu init for 3": Bad(lambda: layers.Relu().init(KEY, 3), TypeError, "relu: expected an input shape", "found 3"),
    "LeakyRelu with slope 'a'": Bad(
        lambda: layers.LeakyRelu("a"), TypeError, "LeakyRelu: slope must be a real number", "found 'a'",
    ),
    "Softmax over axis 'a'": Bad(
        lambda: layers.Softmax(axis="a"), TypeError, "Softmax: axis must be an int", "found 'a'",
    ),
    "Softmax init over axis 5": Bad(
        lambda: layers.Softmax(axis=5).init(KEY, (-1, 3)), ValueError,
        "softmax: expected an input with an axis 5", "found shape (N, 3)",
    ),
    "LogSoftmax over axis 2 of (2, 3)": Bad(
        lambda: layers.LogSoftmax(axis=2).apply({}, F32), ValueError,
        "log_softmax: axis 2 is out of bounds for array of dimension 2", "a float32 array of shape (2, 3), axis=2",
    ),
    # Flatten
    "Flatten init for ()": Bad(
        lambda: layers.Flatten().init(KEY, ()), ValueError,
        "Flatten: expected an input shape with at least 1 axes", "found ()",
    ),
    "Flatten of a scalar": Bad(
        lambda: layers.Flatten().apply({}, np.array(1.0)), ValueError,
        "Flatten: expected an input with at least 1 axes", "found shape ()",
    ),
    "Flatten of a list": Bad(
        lambda: layers.Flatten().apply({}, [1.0]), TypeError, "Flatten: expected an array input", "found list",
    ),
    "Flatten with params": Bad(
        lambda: layers.Flatten().apply({"w": 1}, F32), ParamError, "Flatten has no parameter 'w'", "params/w",
    ),
    # Dropout
    "Dropout(1.0)": Bad(lambda: layers.Dropout(1.0), ValueError, "Dropout: rate must be in [0, 1)", "found 1.0"),
    "Dropout(-0.1)": Bad(lambda: layers.Dropout(-0.1), ValueError, "rate must be in [0, 1)", "found -0.1"),
    "Dropout(NaN)": Bad(lambda: layers.Dropout(float("nan")), ValueError, "rate must be in [0, 1)", "found nan"),
    "Dropout('0.5')": Bad(
        lambda: layers.Dropout("0.5"), TypeError, "Dropout: rate must be a number in [0, 1)", "found '0.5'",
    ),
    "Dropout training without a key": Bad(
        lambda: layers.Dropout(0.5).apply({}, F32, train=True), ValueError,
        "needs a PRNG key (key=...)", "found key=None",
    ),
    "Dropout training with a bad key": Bad(
        lambda: layers.Dropout(0.5).apply({}, F32, key=3, train=True), TypeError,
        "expected a PRNG key (uint64 array of shape (2,))", "found int64 array of shape ()",
    ),
    "Dropout of a list": Bad(
        lambda: layers.Dropout(0.5).apply({}, [1.0], key=KEY, train=True), TypeError,
        "Dropout: expected an array input", "found list",
    ),
    "Dropout with params": Bad(
        lambda: layers.Dropout(0.5).apply({"w": 1}, F32), ParamError, "Dropout has no parameter 'w'", "params/w",
    ),
    # combinators
    "serial of an int": Bad(
        lambda: layers.serial(layers.Dense(3), 5), TypeError, "serial: argument 1 must be a Layer", "found int",
    ),
    "serial of an uncalled layer": Bad(
        lambda: layers.serial(layers.Dense(3), layers.Relu), TypeError,
        "serial: argument 1 must be a Layer", "found function Relu; call it to make the layer: Relu()",
    ),
    "parallel of a string": Bad(
        lambda: layers.parallel(layers.Dense(3), "x"), TypeError, "parallel: argument 1 must be a Layer", "found str",
    ),
    "residual of an int": Bad(
        lambda: layers.residual(3), TypeError, "residual: argument 0 must be a Layer", "found int",
    ),
    "serial init of a child that cannot take the shape": Bad(
        lambda: layers.serial(layers.Flatten(), layers.Dense(3)).init(KEY, ()), ValueError,
        "serial: layer 0 (flatten) with input shape ()",
        "Flatten: expected an input shape with at least 1 axes, found ()",
    ),
    "residual init of a branch that changes the shape": Bad(
        lambda: layers.residual(layers.Dense(4)).init(KEY, (-1, 3)), ValueError,
        "residual: the branch (dense) must keep its input shape (N, 3)", "found output shape (N, 4)",
    ),
    "serial with params of an unknown child": Bad(
        lambda: init_apply(layers.serial(layers.Dense(3), layers.Relu()), (-1, 3), F32, with_entry(foo={})), ParamError,
        "serial has no child 'foo' (its children: ['dense_0', 'relu_1'])", "params/foo",
    ),
    "serial without a child's params": Bad(
        lambda: init_apply(layers.serial(layers.Dense(3), layers.Dense(2)), (-1, 3), F32, without("dense_1")),
        ParamError,
        "Dense(2) expected a parameter of shape (?, 2)", "params/dense_1/w: missing",
    ),
    "serial with params in a list": Bad(
        lambda: init_apply(layers.serial(layers.Dense(3)), (-1, 3), F32, lambda p: [p]), ParamError,
        "serial expected a dict of its children's parameters", "found list",
    ),
    "serial on an input its first child cannot take": Bad(
        lambda: init_apply(layers.serial(layers.Dense(3), layers.Dense(2)), (-1, 3), np.ones((2, 4))), ValueError,
        "Dense(3): expected input with 3 features", "found shape (2, 4)",
    ),
    "residual with params of an unknown child": Bad(
        lambda: init_apply(layers.residual(layers.Dense(3)), (-1, 3), F32, lambda p: {"foo": 1}), ParamError,
        "residual has no child 'foo'", "params/foo",
    ),
    "parallel init for one shape": Bad(
        lambda: TWO_BRANCHES.init(KEY, (-1, 3)), TypeError,
        "parallel: expected a tuple of input shapes", "found (-1, 3)",
    ),
    "parallel init for one shape of two": Bad(
        lambda: TWO_BRANCHES.init(KEY, ((-1, 3),)), ValueError,
        "parallel: expected a tuple of 2 input shapes", "found 1",
    ),
    "parallel on an array": Bad(
        lambda: apply_two_branches(F32), TypeError,
        "parallel: expected a tuple of inputs (one per branch)", "found a float32 array of shape (2, 3)",
    ),
    "parallel on one input of two": Bad(
        lambda: apply_two_branches((F32,)), ValueError, "parallel: expected 2 inputs", "found 1",
    ),
    "fan_out(0)": Bad(lambda: layers.fan_out(0), ValueError, "fan_out: n must be an int >= 1", "found 0"),
    "fan_out(2.5)": Bad(lambda: layers.fan_out(2.5), TypeError, "fan_out: n must be an int >= 1", "found 2.5"),
    "fan_out with params": Bad(
        lambda: layers.fan_out(2).apply({"w": 1}, F32), ParamError, "fan_out has no parameter 'w'", "params/w",
    ),
    "fan_in_sum init of different shapes": Bad(
        lambda: layers.fan_in_sum().init(KEY, ((-1, 3), (-1, 4))), ValueError,
        "fan_in_sum: expected inputs of the same shape", "found ['(N, 3)', '(N, 4)']",
    ),
    "fan_in_sum init for one shape": Bad(
        lambda: layers.fan_in_sum().init(KEY, (-1, 3)), TypeError,
        "fan_in_sum: expected a tuple of input shapes", "found (-1, 3)",
    ),
    "fan_in_sum of an array": Bad(
        lambda: layers.fan_in_sum().apply({}, F32), TypeError,
        "fan_in_sum: expected a tuple of inputs", "found a float32 array",
    ),
    "fan_in_sum of nothing": Bad(
        lambda: layers.fan_in_sum().apply({}, ()), ValueError, "expected at least one input", "found 0",
    ),
    "fan_in_sum of (2, 3) and (2, 4)": Bad(
        lambda: layers.fan_in_sum().apply({}, (F32, np.ones((2, 4)))), ValueError,
        "add: operands could not be broadcast together with shapes (2,3) (2,4)", "a float64 array of shape (2, 4)",
    ),
    "fan_in_concat over axis 'a'": Bad(
        lambda: layers.fan_in_concat("a"), TypeError, "fan_in_concat: axis must be an int", "found 'a'",
    ),
    "fan_in_concat init over axis 5": Bad(
        lambda: layers.fan_in_concat(5).init(KEY, ((-1, 3), (-1, 3))), ValueError,
        "fan_in_concat(axis=5): expected inputs that have axis 5", "found ['(N, 3)', '(N, 3)']",
    ),
    "fan_in_concat init of different ranks": Bad(
        lambda: layers.fan_in_concat().init(KEY, ((-1, 3), (-1, 4, 5))), ValueError,
        "match on every other axis", "found ['(N, 3)', '(N, 4, 5)']",
    ),
    "fan_in_concat of (2, 3) and (2, 4) along 0": Bad(
        lambda: layers.fan_in_concat(0).apply({}, (F32, np.ones((2, 4)))), ValueError,
        "concatenate: all the input array dimensions except for the concatenation axis must match", "has size 4",
    ),
    "fan_in_concat of an array": Bad(
        lambda: layers.fan_in_concat().apply({}, F32), TypeError,
        "fan_in_concat(axis=-1): expected a tuple of inputs", "found a float32 array",
    ),
    # LayerNorm and RMSNorm
    "LayerNorm with eps -1": Bad(
        lambda: layers.LayerNorm(eps=-1), ValueError,
        "LayerNorm: eps must be a finite number in [0, inf)", "found -1.0",
    ),
    "LayerNorm over axis 1.5": Bad(
        lambda: layers.LayerNorm(axis=1.5), TypeError, "LayerNorm: axis must be an int", "found 1.5",
    ),
    "LayerNorm init over axis 5": Bad(
        lambda: layers.LayerNorm(axis=5).init(KEY, (-1, 3)), ValueError,
        "LayerNorm(axis=5): expected an input with at least one feature along axis 5", "found shape (N, 3)",
    ),
    "LayerNorm init for no features": Bad(
        lambda: layers.LayerNorm().init(KEY, (-1, 0)), ValueError,
        "at least one feature along axis -1", "found shape (N, 0)",
    ),
    "LayerNorm on 4 features for 3": Bad(
        lambda: init_apply(layers.LayerNorm(), (-1, 3), np.ones((2, 4))), ParamError,
        "params/gamma: LayerNorm(axis=-1) expected shape (4,)", "found (3,)",
    ),
    "LayerNorm on strings": Bad(
        lambda: init_apply(layers.LayerNorm(), (-1, 3), STRINGS), TypeError,
        "expected an array of numbers", "found dtype <U1",
    ),
    "RMSNorm init for ()": Bad(
        lambda: layers.RMSNorm().init(KEY, ()), ValueError,
        "RMSNorm(axis=-1): expected an input with at least one feature", "found shape ()",
    ),
    "RMSNorm with a beta": Bad(
        lambda: init_apply(layers.RMSNorm(), (-1, 3), F32, with_entry(beta=np.zeros(3))), ParamError,
        "RMSNorm(axis=-1) has no parameter 'beta' (its parameters: ['gamma'])", "params/beta",
    ),
    "layer_norm with gamma (4,) for 3 features": Bad(
        lambda: layers.layer_norm(F32, np.ones(4), np.ones(3)), ValueError,
        "layer_norm: expected gamma of shape (3,) for input (2, 3)", "found (4,)",
    ),
    "rms_norm with gamma (1, 3)": Bad(
        lambda: layers.rms_norm(F32, np.ones((1, 3))), ValueError,
        "rms_norm: expected gamma of shape (3,)", "found (1, 3)",
    ),
    # embeddings
    "Embedding(0, 3)": Bad(
        lambda: layers.Embedding(0, 3), ValueError, "Embedding: vocab_size must be an int >= 1", "found 0",
    ),
    "Embedding(5, 2.5)": Bad(
        lambda: layers.Embedding(5, 2.5), TypeError, "Embedding: dim must be an int >= 1", "found 2.5",
    ),
    "Embedding init for 4": Bad(
        lambda: layers.Embedding(5, 3).init(KEY, 4), TypeError, "Embedding(5, 3): expected an input shape", "found 4",
    ),
    "Embedding of float ids": Bad(
        lambda: init_apply(layers.Embedding(5, 3), (-1, 4), np.ones((2, 4))), TypeError,
        "Embedding(5, 3): expected integer ids", "found dtype float64",
    ),
    "Embedding of id 5 for 5 rows": Bad(
        lambda: init_apply(layers.Embedding(5, 3), (-1, 4), np.full((2, 4), 5)), ValueError,
        "embedding_lookup: expected ids in [0, 5) (the rows of w)", "found 5 at index (0, 0)",
    ),
    "Embedding of id -1": Bad(
        lambda: init_apply(layers.Embedding(5, 3), (-1, 4), np.array([[0, -1]])), ValueError,
        "expected ids in [0, 5)", "found -1 at index (0, 1)",
    ),
    "Embedding with a table of 6 rows": Bad(
        lambda: init_apply(layers.Embedding(5, 3), (-1, 4), np.zeros((2, 4), int), with_entry(w=np.ones((6, 3)))),
        ParamError,
        "Embedding(5, 3) expected shape (5, 3)", "found (6, 3)",
    ),
    "embedding_lookup in a vector": Bad(
        lambda: layers.embedding_lookup(np.ones(5), np.zeros(3, int)), ValueError,
        "expected a table w of shape (vocab, dim)", "found shape (5,)",
    ),
    "PositionalEmbedding(0, 3)": Bad(
        lambda: layers.PositionalEmbedding(0, 3), ValueError, "max_len must be an int >= 1", "found 0",
    ),
    "PositionalEmbedding init of the wrong width": Bad(
        lambda: layers.PositionalEmbedding(4, 3).init(KEY, (-1, 4, 2)), ValueError,
        "PositionalEmbedding(4, 3): expected an input (batch, T, 3)", "found shape (N, 4, 2)",
    ),
    "PositionalEmbedding on 5 positions for 4": Bad(
        lambda: init_apply(layers.PositionalEmbedding(4, 3), (-1, 4, 3), np.ones((2, 5, 3))), ValueError,
        "expected a sequence of at most 4 positions (axis -2)", "found 5 in shape (2, 5, 3)",
    ),
    "PositionalEmbedding on a vector": Bad(
        lambda: init_apply(layers.PositionalEmbedding(4, 3), (-1, 4, 3), np.ones(3)), ValueError,
        "expected an input with at least 2 axes", "found shape (3,)",
    ),
    "SinusoidalPositionalEncoding(4, 2.5)": Bad(
        lambda: layers.SinusoidalPositionalEncoding(4, 2.5), TypeError, "dim must be an int >= 1", "found 2.5",
    ),
    "SinusoidalPositionalEncoding on 5 positions for 4": Bad(
        lambda: layers.SinusoidalPositionalEncoding(4, 3).apply({}, np.ones((2, 5, 3))), ValueError,
        "at most 4 positions", "found 5 in shape (2, 5, 3)",
    ),
    "SinusoidalPositionalEncoding with params": Bad(
        lambda: layers.SinusoidalPositionalEncoding(4, 3).apply({"w": 1}, np.ones((2, 4, 3))), ParamError,
        "has no parameter 'w'", "params/w",
    ),
    "sinusoidal_table of -1 positions": Bad(
        lambda: layers.sinusoidal_table(-1, 4), ValueError, "sinusoidal_table: max_len must be an int >= 0", "found -1",
    ),
}

def batch_norm_apply(x, train=False, state=None):
    """BatchNorm initialised for 3 channels, applied to ``x`` (with ``state`` if given)."""
    layer = conv.BatchNorm()
    _, params, initial = layer.init(KEY, (-1, 3, 8, 8))
    return layer.apply(params, x, state=initial if state is None else state, train=train)


CONV = {
    "Conv2D(0, 3)": Bad(lambda: conv.Conv2D(0, 3), ValueError, "Conv2D: out_channels must be an int >= 1", "found 0"),
    "Conv2D(True, 3)": Bad(lambda: conv.Conv2D(True, 3), TypeError, "out_channels must be an int >= 1", "found True"),
    "Conv2D with kernel 0": Bad(
        lambda: conv.Conv2D(4, 0), ValueError, "kernel_size must be an int >= 1 or a pair of them", "found 0",
    ),
    "Conv2D with kernel (3,)": Bad(
        lambda: conv.Conv2D(4, (3,)), ValueError, "kernel_size must be an int >= 1 or a pair", "found (3,)",
    ),
    "Conv2D with kernel 2.5": Bad(
        lambda: conv.Conv2D(4, 2.5), ValueError, "kernel_size must be an int >= 1", "found 2.5",
    ),
    "Conv2D with stride 0": Bad(
        lambda: conv.Conv2D(4, 3, stride=0), ValueError, "stride must be an int >= 1 or a pair", "found 0",
    ),
    "Conv2D with stride True": Bad(
        lambda: conv.Conv2D(4, 3, stride=True), ValueError, "stride must be an int >= 1", "found True",
    ),
    "Conv2D with padding -1": Bad(
        lambda: conv.Conv2D(4, 3, padding=-1), ValueError, "padding must be an int >= 0 or a pair", "found -1",
    ),
    "Conv2D with padding 'full'": Bad(
        lambda: conv.Conv2D(4, 3, padding="full"), ValueError,
        "padding must be an int, a pair, 'same' or 'valid'", "found 'full'",
    ),
    "Conv2D with padding 'same' and an even kernel": Bad(
        lambda: conv.Conv2D(4, 2, padding="same"), ValueError,
        "needs an odd (dilated) kernel size", "found kernel_size (2, 2)",
    ),
    "Conv2D with dilation '2'": Bad(
        lambda: conv.Conv2D(4, 3, dilation="2"), ValueError, "dilation must be an int >= 1", "found '2'",
    ),
    "Conv2D with groups 0": Bad(
        lambda: conv.Conv2D(4, 3, groups=0), ValueError, "Conv2D: groups must be an int >= 1", "found 0",
    ),
    "Conv2D with groups 1.5": Bad(
        lambda: conv.Conv2D(4, 3, groups=1.5), TypeError, "groups must be an int >= 1", "found 1.5",
    ),
    "Conv2D with activation tanh": Bad(
        lambda: conv.Conv2D(4, 3, activation="tanh"), ValueError, "activation must be None or 'relu'", "found 'tanh'",
    ),
    "Conv2D init with groups not dividing the channels": Bad(
        lambda: conv.Conv2D(4, 3, groups=2).init(KEY, (-1, 3, 8, 8)), ValueError,
        "groups=2 must divide the 3 input channels", "of (N, 3, 8, 8)",
    ),
    "Conv2D init with a kernel larger than the image": Bad(
        lambda: conv.Conv2D(4, 5).init(KEY, (-1, 3, 4, 4)), ValueError,
        "is smaller than the (dilated) kernel (5, 5)", "input (N, 3, 4, 4) padded by (0, 0)",
    ),
    "Conv2D init with a dilated kernel larger than the image": Bad(
        lambda: conv.Conv2D(4, 3, dilation=3).init(KEY, (-1, 3, 6, 6)), ValueError,
        "smaller than the (dilated) kernel (7, 7)", "input (N, 3, 6, 6)",
    ),
    "Conv2D init for a 3-d shape": Bad(
        lambda: conv.Conv2D(4, 3).init(KEY, (-1, 8, 8)), ValueError,
        "expected NCHW input (N, C, H, W)", "found shape (N, 8, 8)",
    ),
    "Conv2D init for 8": Bad(
        lambda: conv.Conv2D(4, 3).init(KEY, 8), TypeError, "expected an input shape, a tuple of ints", "found 8",
    ),
    "Conv2D on 5 channels for 3": Bad(
        lambda: init_apply(conv.Conv2D(4, 3), (-1, 3, 8, 8), np.ones((2, 5, 8, 8))), ValueError,
        "expected NCHW input (N, 3, H, W)", "found shape (2, 5, 8, 8)",
    ),
    "Conv2D on an NHWC image": Bad(
        lambda: init_apply(conv.Conv2D(4, 3), (-1, 3, 8, 8), np.ones((2, 8, 8, 3))), ValueError,
        "expected NCHW input (N, 3, H, W)", "found shape (2, 8, 8, 3)",
    ),
    "Conv2D on an image smaller than the kernel": Bad(
        lambda: init_apply(conv.Conv2D(4, 3), (-1, 3, 8, 8), np.ones((2, 3, 2, 2))), ValueError,
        "is smaller than the (dilated) kernel (3, 3)", "input (2, 3, 2, 2)",
    ),
    "Conv2D with a 5x5 weight for 3x3": Bad(
        lambda: init_apply(conv.Conv2D(4, 3), (-1, 3, 8, 8), IMAGES, with_entry(w=np.ones((4, 3, 5, 5)))), ParamError,
        "params/w: Conv2D(4, kernel_size=(3, 3)) expected shape (4, ?, 3, 3)", "found (4, 3, 5, 5)",
    ),
    "Conv2D on strings": Bad(
        lambda: init_apply(conv.Conv2D(4, 3), (-1, 3, 8, 8), np.full((2, 3, 8, 8), "a")), TypeError,
        "expected an array of numbers", "found dtype <U1",
    ),
    "conv2d of strings": Bad(
        lambda: conv.conv2d(np.full((2, 3, 8, 8), "a"), np.ones((4, 3, 3, 3))), TypeError,
        "conv2d: expected arrays of real numbers", "found dtype <U",
    ),
    "conv2d with a bias (5,) for 4 channels": Bad(
        lambda: conv.conv2d(IMAGES, np.ones((4, 3, 3, 3)), np.ones(5)), ValueError,
        "conv2d: expected a bias of shape (4,)", "found (5,)",
    ),
    "conv2d with a 3-d weight": Bad(
        lambda: conv.conv2d(IMAGES, np.ones((4, 3, 3))), ValueError,
        "conv2d: expected a weight (OC, C/groups, KH, KW)", "found shape (4, 3, 3)",
    ),
    "conv2d with groups 1.0": Bad(
        lambda: conv.conv2d(IMAGES, np.ones((4, 3, 3, 3)), groups=1.0), TypeError,
        "conv2d: groups must be an int >= 1", "found 1.0",
    ),
    "conv2d with groups for 6 channels on 3": Bad(
        lambda: conv.conv2d(IMAGES, np.ones((4, 3, 3, 3)), groups=2), ValueError,
        "expected NCHW input (N, 6, H, W)", "found shape (2, 3, 8, 8)",
    ),
    "ConvTranspose2D(0, 3)": Bad(
        lambda: conv.ConvTranspose2D(0, 3), ValueError, "ConvTranspose2D: out_channels must be an int >= 1", "found 0",
    ),
    "ConvTranspose2D with groups 0": Bad(
        lambda: conv.ConvTranspose2D(4, 3, groups=0), ValueError,
        "ConvTranspose2D: groups must be an int >= 1", "found 0",
    ),
    "ConvTranspose2D with stride 0": Bad(
        lambda: conv.ConvTranspose2D(4, 3, stride=0), ValueError, "stride must be an int >= 1", "found 0",
    ),
    "ConvTranspose2D with padding 'same'": Bad(
        lambda: conv.ConvTranspose2D(4, 3, padding="same"), ValueError,
        "padding must be an int >= 0 or a pair", "found 'same'",
    ),
    "ConvTranspose2D init with groups not dividing out_channels": Bad(
        lambda: conv.ConvTranspose2D(3, 2, groups=2).init(KEY, (-1, 4, 5, 5)), ValueError,
        "must divide out_channels", "groups=2",
    ),
    "ConvTranspose2D init with output_padding 2 at stride 2": Bad(
        lambda: conv.ConvTranspose2D(4, 3, stride=2, output_padding=2).init(KEY, (-1, 3, 8, 8)), ValueError,
        "must be smaller than the stride (2, 2) or the dilation (1, 1)", "output_padding (2, 2)",
    ),
    "ConvTranspose2D init with padding larger than the output": Bad(
        lambda: conv.ConvTranspose2D(4, 3, padding=5).init(KEY, (-1, 3, 2, 2)), ValueError,
        "padding (5, 5) is too large for input (N, 3, 2, 2)", "the output would be (-6, -6)",
    ),
    "ConvTranspose2D on 5 channels for 3": Bad(
        lambda: init_apply(conv.ConvTranspose2D(4, 3), (-1, 3, 8, 8), np.ones((2, 5, 8, 8))), ValueError,
        "expected NCHW input (N, 3, H, W)", "found shape (2, 5, 8, 8)",
    ),
    "conv_transpose2d with a bias (3,) for 4 channels": Bad(
        lambda: conv.conv_transpose2d(IMAGES, np.ones((3, 4, 3, 3)), np.ones(3)), ValueError,
        "conv_transpose2d: expected a bias of shape (4,)", "found (3,)",
    ),
    "MaxPool2D(0)": Bad(lambda: conv.MaxPool2D(0), ValueError, "window must be an int >= 1 or a pair", "found 0"),
    "MaxPool2D with padding larger than half the window": Bad(
        lambda: conv.MaxPool2D(2, padding=2), ValueError, "must be at most half the window (2, 2)", "padding (2, 2)",
    ),
    "MaxPool2D init with a window larger than the image": Bad(
        lambda: conv.MaxPool2D(9).init(KEY, (-1, 3, 8, 8)), ValueError,
        "smaller than the window (9, 9)", "input (N, 3, 8, 8)",
    ),
    "MaxPool2D on a 3-d image": Bad(
        lambda: conv.MaxPool2D(2).apply({}, np.ones((3, 8, 8))), ValueError,
        "max_pool2d: expected NCHW input (N, C, H, W)", "found shape (3, 8, 8)",
    ),
    "MaxPool2D with params": Bad(
        lambda: conv.MaxPool2D(2).apply({"w": 1}, IMAGES), ParamError, "has no parameter 'w'", "params/w",
    ),
    "AvgPool2D with stride 0": Bad(
        lambda: conv.AvgPool2D(2, stride=0), ValueError, "stride must be an int >= 1", "found 0",
    ),
    "AvgPool2D on an image smaller than the window": Bad(
        lambda: conv.AvgPool2D(4).apply({}, np.ones((2, 3, 2, 2))), ValueError,
        "smaller than the window (4, 4)", "input (2, 3, 2, 2)",
    ),
    "max_pool2d with a window of 3 sides": Bad(
        lambda: conv.max_pool2d(IMAGES, (2, 2, 2)), ValueError,
        "window must be an int >= 1 or a pair of them", "found (2, 2, 2)",
    ),
    "GlobalAvgPool2D init for a 3-d shape": Bad(
        lambda: conv.GlobalAvgPool2D().init(KEY, (-1, 8, 8)), ValueError,
        "expected NCHW input (N, C, H, W) with H, W >= 1", "found shape (N, 8, 8)",
    ),
    "GlobalAvgPool2D of empty images": Bad(
        lambda: conv.GlobalAvgPool2D().apply({}, np.ones((2, 3, 0, 0))), ValueError,
        "with H, W >= 1", "found shape (2, 3, 0, 0)",
    ),
    "BatchNorm with momentum 2": Bad(
        lambda: conv.BatchNorm(momentum=2), ValueError,
        "BatchNorm: momentum must be a finite number in [0, 1]", "found 2.0",
    ),
    "BatchNorm with momentum 'a'": Bad(
        lambda: conv.BatchNorm(momentum="a"), TypeError, "momentum must be a real number", "found 'a'",
    ),
    "BatchNorm with eps -1": Bad(
        lambda: conv.BatchNorm(eps=-1), ValueError, "BatchNorm: eps must be a finite number in [0, inf)", "found -1.0",
    ),
    "BatchNorm over axis 1.5": Bad(
        lambda: conv.BatchNorm(axis=1.5), TypeError, "BatchNorm: axis must be an int", "found 1.5",
    ),
    "BatchNorm init over axis 5": Bad(
        lambda: conv.BatchNorm(axis=5).init(KEY, (-1, 3, 8, 8)), ValueError,
        "BatchNorm(axis=5): expected an input (N, C, ...) with that axis", "found shape (N, 3, 8, 8)",
    ),
    "BatchNorm on 5 channels for 3": Bad(
        lambda: batch_norm_apply(np.ones((2, 5, 8, 8))), ParamError,
        "params/gamma: BatchNorm(axis=1) on input (2, 5, 8, 8) expected shape (5,)", "found (3,)",
    ),
    "BatchNorm training on an empty batch": Bad(
        lambda: batch_norm_apply(np.ones((0, 3, 8, 8)), train=True), ValueError,
        "the statistics of an empty batch are undefined", "(input shape (0, 3, 8, 8))",
    ),
    "BatchNorm with a running mean of 4 channels for 3": Bad(
        lambda: batch_norm_apply(IMAGES, state={"mean": np.zeros(4), "var": np.ones(3)}), ParamError,
        "state/mean: BatchNorm(axis=1) on input (2, 3, 8, 8) expected shape (3,)", "found (4,)",
    ),
    "batch_norm over axis 5": Bad(
        lambda: conv.batch_norm(IMAGES, np.ones(3), np.ones(3), axis=5), ValueError,
        "batch_norm: expected an input with a feature axis 5", "found shape (2, 3, 8, 8)",
    ),
    "batch_norm of a scalar": Bad(
        lambda: conv.batch_norm(np.array(1.0), np.ones(1), np.ones(1)), ValueError,
        "expected an input with a feature axis 1", "found shape ()",
    ),
    "batch_norm with gamma (4,) for 3 channels": Bad(
        lambda: conv.batch_norm(IMAGES, np.ones(4), np.ones(3)), ValueError,
        "batch_norm: expected gamma of shape (3,) for input (2, 3, 8, 8) (axis 1)", "found (4,)",
    ),
    "batch_moments over axis 5": Bad(
        lambda: conv.batch_moments(IMAGES, axis=5), ValueError,
        "batch_moments: expected an input with a feature axis 5", "found shape (2, 3, 8, 8)",
    ),
}


LOGITS, CLASSES = np.arange(12.0).reshape(4, 3), np.array([0, 1, 2, 0])
BINARY = np.zeros(4)


def static_graph_loss_with_labels(labels):
    """The value and gradient of a loss under a static graph: traced with good labels, then
    replayed with ``labels`` (only the primitives see them)."""
    value_and_grad = tinyfn.value_and_grad(losses.softmax_cross_entropy, static_graph=True)
    value_and_grad(LOGITS, CLASSES)
    return value_and_grad(LOGITS, labels)


LOSSES = {
    "softmax_cross_entropy with reduction 'avg'": Bad(
        lambda: losses.softmax_cross_entropy(LOGITS, CLASSES, reduction="avg"), ValueError,
        "reduction must be one of ('mean', 'sum', 'none')", "found 'avg'",
    ),
    "binary_cross_entropy_with_logits with reduction None": Bad(
        lambda: losses.binary_cross_entropy_with_logits(BINARY, BINARY, reduction=None), ValueError,
        "reduction must be one of", "found None",
    ),
    "mse with reduction ['mean']": Bad(
        lambda: losses.mse(BINARY, BINARY, reduction=["mean"]), ValueError,
        "reduction must be one of", "found ['mean']",
    ),
    "softmax_cross_entropy of class 3 of 3": Bad(
        lambda: losses.softmax_cross_entropy(LOGITS, np.array([0, 1, 3, 0])), ValueError,
        "softmax_cross_entropy: labels must be class indices in [0, 3)", "found values from 0 to 3",
    ),
    "softmax_cross_entropy of class -1": Bad(
        lambda: losses.softmax_cross_entropy(LOGITS, np.array([0, -1, 2, 0])), ValueError,
        "class indices in [0, 3)", "found values from -1 to 2",
    ),
    "softmax_cross_entropy of class 3, traced": Bad(
        lambda: tinyfn.grad(losses.softmax_cross_entropy)(LOGITS, np.array([3, 1, 2, 0])), ValueError,
        "class indices in [0, 3)", "found values from 0 to 3",
    ),
    "softmax_cross_entropy of class 3, replayed in a static graph": Bad(
        lambda: static_graph_loss_with_labels(np.array([3, 1, 2, 0])), ValueError,
        "class indices in [0, 3)", "found values from 0 to 3",
    ),
    "softmax_cross_entropy of 3 labels for 4 rows": Bad(
        lambda: losses.softmax_cross_entropy(LOGITS, CLASSES[:3]), ValueError,
        "integer labels must have shape (4,)", "found (3,)",
    ),
    "softmax_cross_entropy of float class indices": Bad(
        lambda: losses.softmax_cross_entropy(LOGITS, CLASSES.astype(float)), ValueError,
        "pass them as integers (labels.astype(int)), or as one-hot rows of shape (4, 3)",
        "float labels of shape (4,) look like class indices",
    ),
    "softmax_cross_entropy of boolean labels": Bad(
        lambda: losses.softmax_cross_entropy(LOGITS, CLASSES > 0), TypeError,
        "expected integer class indices or float one-hot/soft labels", "found labels of dtype bool",
    ),
    "softmax_cross_entropy of one-hot rows of 2 classes for 3": Bad(
        lambda: losses.softmax_cross_entropy(LOGITS, np.ones((4, 2))), ValueError,
        "one-hot/soft labels must have the logits' shape (4, 3)", "found (4, 2)",
    ),
    "softmax_cross_entropy of an empty batch": Bad(
        lambda: losses.softmax_cross_entropy(np.ones((0, 3)), np.zeros(0, int)), ValueError,
        "expected a non-empty batch", "found predictions of shape (0, 3)",
    ),
    "softmax_cross_entropy of 0 classes": Bad(
        lambda: losses.softmax_cross_entropy(np.ones((4, 0)), np.zeros(4, int)), ValueError,
        "expected logits (..., C) with C >= 1 classes", "found shape (4, 0)",
    ),
    "softmax_cross_entropy of string logits": Bad(
        lambda: losses.softmax_cross_entropy(np.full((4, 3), "a"), CLASSES), TypeError,
        "softmax_cross_entropy: expected numeric logits", "found dtype <U1",
    ),
    "softmax_cross_entropy of None": Bad(
        lambda: losses.softmax_cross_entropy(None, CLASSES), TypeError, "expected numeric logits", "found dtype object",
    ),
    "binary_cross_entropy_with_logits of 3 labels for 4": Bad(
        lambda: losses.binary_cross_entropy_with_logits(BINARY, np.ones(3)), ValueError,
        "labels must have the logits' shape (4,)", "found (3,)",
    ),
    "binary_cross_entropy_with_logits of labels (4,) for (4, 1)": Bad(
        lambda: losses.binary_cross_entropy_with_logits(BINARY[:, None], np.ones(4)), ValueError,
        "labels must have the logits' shape (4, 1)", "found (4,)",
    ),
    "binary_cross_entropy_with_logits of class indices": Bad(
        lambda: losses.binary_cross_entropy_with_logits(BINARY, np.array([0, 1, 3, 0])), ValueError,
        "binary_cross_entropy_with_logits: expected labels in [0, 1]", "found values from 0.0 to 3.0",
    ),
    "binary_cross_entropy_with_logits of a label -0.5, traced": Bad(
        lambda: tinyfn.grad(losses.binary_cross_entropy_with_logits)(BINARY, np.array([0.5, -0.5, 1.0, 0.0])),
        ValueError,
        "expected labels in [0, 1]", "found values from -0.5 to 1.0",
    ),
    "binary_cross_entropy_with_logits of string labels": Bad(
        lambda: losses.binary_cross_entropy_with_logits(BINARY, np.full(4, "a")), TypeError,
        "expected numeric labels in [0, 1]", "found dtype <U1",
    ),
    "binary_cross_entropy_with_logits of string logits": Bad(
        lambda: losses.binary_cross_entropy_with_logits(np.full(4, "a"), BINARY), TypeError,
        "expected numeric logits", "found dtype <U1",
    ),
    "binary_cross_entropy_with_logits of an empty batch": Bad(
        lambda: losses.binary_cross_entropy_with_logits(np.ones(0), np.ones(0)), ValueError,
        "expected a non-empty batch", "found predictions of shape (0,)",
    ),
    "mse of (4,) and (3,)": Bad(
        lambda: losses.mse(BINARY, np.ones(3)), ValueError, "mse: predictions have shape (4,)", "but targets (3,)",
    ),
    "mse of (4, 1) and (4,), which would broadcast": Bad(
        lambda: losses.mse(BINARY[:, None], BINARY), ValueError, "predictions have shape (4, 1)", "but targets (4,)",
    ),
    "mse of an empty batch": Bad(
        lambda: losses.mse(np.ones(0), np.ones(0)), ValueError,
        "mse: expected a non-empty batch", "found predictions of shape (0,)",
    ),
    "mse of string targets": Bad(
        lambda: losses.mse(BINARY, np.full(4, "b")), TypeError, "mse: expected numeric targets", "found dtype <U1",
    ),
    "mse of None": Bad(
        lambda: losses.mse(None, None), TypeError, "mse: expected numeric predictions", "found dtype object",
    ),
    "accuracy of 3 labels for 4 rows": Bad(
        lambda: losses.accuracy(LOGITS, CLASSES[:3]), ValueError,
        "expected labels of shape (4,) for logits of shape (4, 3)", "found (3,)",
    ),
    "accuracy of an empty batch": Bad(
        lambda: losses.accuracy(np.ones((0, 3)), np.zeros(0, int)), ValueError,
        "expected a non-empty batch of logits", "found shape (0, 3)",
    ),
    "accuracy of class 5 of 3": Bad(
        lambda: losses.accuracy(LOGITS, np.array([0, 1, 5, 0])), ValueError,
        "expected class labels in [0, 3)", "found [0 1 5]",
    ),
    "accuracy of a fractional label": Bad(
        lambda: losses.accuracy(LOGITS, np.array([0, 1, 1.5, 0])), ValueError,
        "expected class labels in [0, 3)", "found [0.  1.  1.5]",
    ),
}

FAMILIES = {"ops": OPS, "autodiff": AUTODIFF, "layers": LAYERS, "conv": CONV, "losses": LOSSES}
CASES = [
    pytest.param(case, id=f"{family}: {name}") for family, table in FAMILIES.items() for name, case in table.items()
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_raises_a_tinyfn_error_naming_expected_and_found(case):
    with pytest.raises(Exception) as info:
        case.call()
    error, message = info.value, str(info.value)
    assert type(error) is case.error, f"{type(error).__name__}: {message}"
    assert case.expected in message, message
    assert case.found in message, message
    last_frame = Path(str(info.traceback[-1].path)).resolve()
    assert TINYFN_DIR in last_frame.parents, f"raised from {last_frame}: {message}"


def test_an_error_inside_nested_primitives_is_explained_once_and_keeps_numpy_as_its_cause():
    # reshape's forward calls reshape on plain arrays under the trace: the inner call explains it
    with pytest.raises(ValueError) as info:
        tinyfn.grad(lambda a: ops.sum(ops.reshape(a, (7,))))(X)
    message = str(info.value)
    assert message.startswith("reshape: cannot reshape") and message.count("called with") == 1, message
    assert info.value.primitive == "reshape"
    assert type(info.value.__cause__) is ValueError and str(info.value.__cause__).startswith("cannot reshape")


def test_an_error_tinyfn_raises_inside_a_primitive_keeps_its_name_once():
    with pytest.raises(ValueError) as info:
        losses.softmax_cross_entropy(LOGITS, np.array([0, 1, 3, 0]))
    assert str(info.value).count("softmax_cross_entropy:") == 1, str(info.value)


def test_the_checks_refuse_only_bad_inputs():
    # Flatten of an empty batch (reshape could not infer its -1), soft labels in [0, 1], numpy
    # ints for sizes, -1 and None for unknown sizes, and int inputs that numpy promotes
    flatten = layers.Flatten()
    assert flatten.apply({}, np.ones((0, 3, 4))).shape == (0, 12)
    assert flatten.init(KEY, (-1, 3, 4))[0] == (-1, 12)
    soft = losses.binary_cross_entropy_with_logits(BINARY, np.array([0.0, 0.3, 1.0, 0.5]))
    assert np.isfinite(soft)
    assert losses.binary_cross_entropy_with_logits(BINARY, np.array([0, 1, 1, 0])) > 0
    assert layers.Dense(np.int64(3)).init(KEY, [None, np.int32(4)])[0] == (None, 3)
    assert layers.fan_in_concat().init(KEY, ((-1, 3), (-1, 4)))[0] == (-1, 7)
    assert conv.Conv2D(2, 3, stride=np.int64(2), groups=np.int64(1)).init(KEY, (-1, 3, 9, 9))[0] == (-1, 2, 4, 4)
    assert conv.GlobalAvgPool2D().apply({}, np.ones((0, 3, 2, 2))).shape == (0, 3)
    assert init_apply(layers.Dense(2), (-1, 3), np.ones((1, 3), int)).shape == (1, 2)
    assert tinyfn.grad(lambda a, b: ops.sum(a * b), argnums=np.int64(1))(X, X).shape == (2, 3)
