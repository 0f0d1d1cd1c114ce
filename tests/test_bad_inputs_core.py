"""Bad inputs to the core families (tree, random, optim and its schedules, datasets, initializers).

Each case is a call that must fail, the error type it must raise (exactly that type: a tinyfn error
or a documented built-in one), a fragment of the message saying what was expected and one saying
what was found. Every error must be raised by tinyfn itself: the traceback's last frame is in the
tinyfn package, not inside numpy or Python's own modules, and no case may return a result.
"""

import math
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest

import tinyfn
from tinyfn import datasets, initializers, optim, random, tree
from tinyfn.optim import schedules

TINYFN_DIR = Path(tinyfn.__file__).resolve().parent
KEY = random.key(0)


class Bad(NamedTuple):
    call: Callable[[], object]
    error: type
    expected: str  # in the message: what was expected
    found: str  # in the message: what was found


def params():
    return {"w": np.zeros(3), "b": np.zeros(2)}


def grads_with_w(w):
    return {"w": w, "b": np.ones(2)}


TREE = {
    "add broadcasts (1, 3) onto (3,)": Bad(
        lambda: tree.add({"w": np.zeros(3)}, {"w": np.zeros((1, 3))}),
        tree.TreeMismatchError, "'w': expected a float64 array of shape (3,)", "found a float64 array of shape (1, 3)",
    ),
    "add broadcasts (4, 3) onto (3,)": Bad(
        lambda: tree.add({"w": np.zeros(3)}, {"w": np.zeros((4, 3))}),
        tree.TreeMismatchError, "expected a float64 array of shape (3,)", "found a float64 array of shape (4, 3)",
    ),
    "sub broadcasts a scalar leaf": Bad(
        lambda: tree.sub({"layers": [{"b": np.zeros(2)}]}, {"layers": [{"b": np.float32(1.0)}]}),
        tree.TreeMismatchError,
        "'layers/0/b': expected a float64 array of shape (2,)",
        "found a float32 array of shape ()",
    ),
    "add of different structures": Bad(
        lambda: tree.add({"w": 1, "b": 2}, {"w": 1}),
        tree.TreeMismatchError, "expected a dict with keys ['b', 'w']", "found a dict with keys ['w']",
    ),
    "scale by an array": Bad(
        lambda: tree.scale({"w": np.ones(3)}, np.ones(3)),
        TypeError, "expected a real scalar factor", "found a float64 array of shape (3,)",
    ),
    "scale by a tree": Bad(
        lambda: tree.scale({"w": np.ones(3)}, {"w": 2.0}),
        TypeError, "real scalar factor", "found a dict with keys ['w']",
    ),
    "scale by a string": Bad(
        lambda: tree.scale({"w": np.ones(3)}, "2"), TypeError, "real scalar", "a leaf of type str",
    ),
    "scale by a bool": Bad(
        lambda: tree.scale({"w": np.ones(3)}, True), TypeError, "real scalar", "a leaf of type bool",
    ),
    "map_matching of an int leaf for a float one": Bad(
        lambda: tree.map_matching(np.add, {"w": np.zeros(2)}, {"w": np.arange(2)}, same_kind=True),
        tree.TreeMismatchError, "'w': expected a float64 array of shape (2,)", "found an int64 array of shape (2,)",
    ),
    "map of a non-function": Bad(lambda: tree.map(3, {"w": 1}), TypeError, "expected a function", "found 3"),
    "unflatten with too many leaves": Bad(
        lambda: tree.unflatten(tree.structure({"a": 1}), [1, 2]), tree.TreeMismatchError, "has 1 leaves", "found 2"
    ),
}

RANDOM = {
    "key from a float": Bad(lambda: random.key(1.7), TypeError, "seed must be an int in [0, 2**64)", "found 1.7"),
    "key from a bool": Bad(lambda: random.key(True), TypeError, "an int in [0, 2**64)", "found True"),
    "key from a string": Bad(lambda: random.key("3"), TypeError, "an int in [0, 2**64)", "found '3'"),
    "key from a negative seed": Bad(lambda: random.key(-1), ValueError, "an int in [0, 2**64)", "found -1"),
    "key from a seed too large": Bad(lambda: random.key(2**64), ValueError, "[0, 2**64)", f"found {2**64}"),
    "split into 2.5 keys": Bad(lambda: random.split(KEY, 2.5), TypeError, "num must be an int >= 0", "found 2.5"),
    "split into -1 keys": Bad(lambda: random.split(KEY, -1), ValueError, "num must be an int >= 0", "found -1"),
    "fold_in a negative number": Bad(
        lambda: random.fold_in(KEY, -1), ValueError, "data must be an int in [0, 2**64)", "found -1",
    ),
    "fold_in a float": Bad(lambda: random.fold_in(KEY, 1.5), TypeError, "data must be an int", "found 1.5"),
    "normal of a negative shape": Bad(
        lambda: random.normal(KEY, (-1,)), ValueError, "a tuple of ints >= 0", "found (-1,)",
    ),
    "normal of a float shape": Bad(
        lambda: random.normal(KEY, (2.5,)), TypeError, "a tuple of ints >= 0", "found (2.5,)",
    ),
    "normal of a string shape": Bad(lambda: random.normal(KEY, "3"), TypeError, "a tuple of ints >= 0", "found '3'"),
    "normal of a bool shape": Bad(
        lambda: random.normal(KEY, (True, 2)), TypeError, "a tuple of ints", "found (True, 2)",
    ),
    "normal of int32": Bad(lambda: random.normal(KEY, (3,), np.int32), TypeError, "float32 or float64", "found int32"),
    "normal of an unknown dtype": Bad(
        lambda: random.normal(KEY, (3,), "foo"), TypeError, "dtype must be a numpy dtype", "found 'foo'",
    ),
    "uniform with minval > maxval": Bad(
        lambda: random.uniform(KEY, (3,), minval=2.0, maxval=1.0),
        ValueError, "maxval must be a finite number in [2, inf)", "found 1.0",
    ),
    "uniform with a NaN bound": Bad(
        lambda: random.uniform(KEY, (3,), minval=math.nan), ValueError, "minval must be a finite number", "found nan"
    ),
    "uniform of float16": Bad(
        lambda: random.uniform(KEY, (3,), np.float16), TypeError, "float32 or float64", "found float16",
    ),
    "bernoulli with p > 1": Bad(
        lambda: random.bernoulli(KEY, 1.5, (3,)), ValueError, "p must be a finite number in [0, 1]", "found 1.5",
    ),
    "bernoulli with p an array": Bad(
        lambda: random.bernoulli(KEY, np.array([0.2, 0.3]), (3,)),
        TypeError, "p must be a real number in [0, 1]", "array([0.2, 0.3])",
    ),
    "bernoulli with p a string": Bad(
        lambda: random.bernoulli(KEY, "0.5"), TypeError, "a real number in [0, 1]", "found '0.5'",
    ),
    "permutation of -1": Bad(lambda: random.permutation(KEY, -1), ValueError, "n must be an int >= 0", "found -1"),
    "permutation of 2.5": Bad(lambda: random.permutation(KEY, 2.5), TypeError, "n must be an int >= 0", "found 2.5"),
    "permutation of an array": Bad(
        lambda: random.permutation(KEY, np.arange(3)), TypeError, "n must be an int >= 0", "found array([0, 1, 2])"
    ),
    "randint with low >= high": Bad(
        lambda: random.randint(KEY, (3,), 5, 2), ValueError, "expected low < high", "found low=5, high=2",
    ),
    "randint with a float bound": Bad(
        lambda: random.randint(KEY, (3,), 0.5, 2), TypeError, "low must be an int", "found 0.5",
    ),
    "choice of more than n without replacement": Bad(
        lambda: random.choice(KEY, 3, 5, replace=False), ValueError, "expected size <= 3", "found size=5"
    ),
    "choice with p of the wrong length": Bad(
        lambda: random.choice(KEY, 3, 2, p=[0.5, 0.5]), TypeError, "a 1-D array of 3 numbers", "array of shape (2,)"
    ),
    "choice with p not summing to 1": Bad(
        lambda: random.choice(KEY, 3, 2, p=[0.5, 0.5, 0.5]), ValueError, "summing to 1", "(sum 1.5)"
    ),
    "choice with a negative p": Bad(
        lambda: random.choice(KEY, 2, 1, p=[1.5, -0.5]), ValueError, "probabilities >= 0", "[1.5, -0.5]",
    ),
    "choice from range(0)": Bad(lambda: random.choice(KEY, 0, 2), ValueError, "expected n >= 1", "found n=0"),
    "choice from a float n": Bad(lambda: random.choice(KEY, 2.5, 2), TypeError, "n must be an int >= 0", "found 2.5"),
    "a key of the wrong shape": Bad(
        lambda: random.normal(np.array([1, 2, 3]), (2,)),
        TypeError, "uint64 array of shape (2,)", "found int64 array of shape (3,)",
    ),
}


def first_update(optimizer, grads):
    return optimizer.update(grads, optimizer.init(params()), params())


def clip_then_adam():
    return optim.chain(optim.clip_by_global_norm(1.0), optim.adam(0.1))


def updates_until(optimizer, steps):
    state = optimizer.init(params())
    for _ in range(steps):
        _, state = optimizer.update(params(), state, params())


OPTIMIZERS = {
    "sgd": lambda: optim.sgd(0.1),
    "sgd with momentum": lambda: optim.sgd(0.1, momentum=0.9),
    "adam": lambda: optim.adam(0.1),
    "adamw": lambda: optim.adamw(0.1),
    "rmsprop": lambda: optim.rmsprop(0.1, momentum=0.5),
    "adagrad": lambda: optim.adagrad(0.1),
}
# gradients for w, whose parameter is a float64 array of shape (3,): broadcastable shapes, wrong kinds
BAD_GRADIENTS = {
    "(1, 3)": (np.ones((1, 3)), "found a float64 array of shape (1, 3)"),
    "(4, 3)": (np.ones((4, 3)), "found a float64 array of shape (4, 3)"),
    "int": (np.ones(3, np.int64), "found an int64 array of shape (3,)"),
    "str": (np.array(["a", "b", "c"]), "found a <U1 array of shape (3,)"),
}
EXPECTED_W = "'w': expected a float64 array of shape (3,)"

OPTIM = {
    f"{name} update with a {kind} gradient": Bad(
        lambda make=make, w=w: first_update(make(), grads_with_w(w)), tree.TreeMismatchError, EXPECTED_W, found
    )
    for name, make in OPTIMIZERS.items()
    for kind, (w, found) in BAD_GRADIENTS.items()
}
OPTIM |= {
    f"{name} with a {kind} gradient": Bad(
        lambda call=call, w=w: call(grads_with_w(w)), tree.TreeMismatchError, EXPECTED_W, found
    )
    for name, call in {
        "apply_updates": lambda updates: optim.apply_updates(params(), updates),
        "sgd_step": lambda grads: optim.sgd_step(params(), grads, 0.1),
    }.items()
    for kind, (w, found) in BAD_GRADIENTS.items()
}
OPTIM |= {
    "clip then adam update with a (4, 3) gradient": Bad(
        lambda: first_update(clip_then_adam(), grads_with_w(np.ones((4, 3)))),
        tree.TreeMismatchError, EXPECTED_W, "found a float64 array of shape (4, 3)",
    ),
    "global_norm of strings": Bad(
        lambda: optim.global_norm(grads_with_w(np.array(["a", "b", "c"]))),
        TypeError, "expected real numbers at 'w'", "found <U1 values",
    ),
    "sgd_step with grads missing a leaf": Bad(
        lambda: optim.sgd_step(params(), {"w": np.ones(3)}, 0.1),
        tree.TreeMismatchError, "expected a dict with keys ['b', 'w']", "found a dict with keys ['w']",
    ),
    "update with grads missing a leaf": Bad(
        lambda: first_update(optim.adam(0.1), {"w": np.ones(3)}),
        tree.TreeMismatchError, "expected a dict with keys ['b', 'w']", "found a dict with keys ['w']",
    ),
    "sgd_step with lr < 0": Bad(
        lambda: optim.sgd_step(params(), params(), -1),
        ValueError, "lr must be a finite number in [0, inf)", "found -1.0",
    ),
    "sgd_step with lr NaN": Bad(
        lambda: optim.sgd_step(params(), params(), math.nan), ValueError, "[0, inf)", "found nan",
    ),
    "sgd_step with lr a string": Bad(
        lambda: optim.sgd_step(params(), params(), "0.1"), TypeError, "lr must be a real number", "found '0.1'",
    ),
    "sgd with momentum 1.5": Bad(
        lambda: optim.sgd(0.1, momentum=1.5), ValueError, "momentum must be a finite number in [0, 1)", "found 1.5",
    ),
    "sgd with momentum 1": Bad(
        lambda: optim.sgd(0.1, momentum=1.0), ValueError, "momentum must be a finite number in [0, 1)", "found 1.0",
    ),
    "sgd with momentum < 0": Bad(lambda: optim.sgd(0.1, momentum=-0.5), ValueError, "[0, 1)", "found -0.5"),
    "sgd with nesterov and no momentum": Bad(
        lambda: optim.sgd(0.1, nesterov=True), ValueError, "needs a momentum > 0", "found momentum=0",
    ),
    "sgd with lr < 0": Bad(
        lambda: optim.sgd(-0.1), ValueError, "learning_rate must be a finite number in [0, inf)", "found -0.1",
    ),
    "adam with eps 0": Bad(
        lambda: optim.adam(0.1, eps=0), ValueError, "eps must be a finite number in (0, inf)", "found 0.0",
    ),
    "adam with lr inf": Bad(
        lambda: optim.adam(math.inf), ValueError, "learning_rate must be a finite number", "found inf",
    ),
    "adam with lr a string": Bad(
        lambda: optim.adam("1e-3"), TypeError, "learning_rate must be a real number", "found '1e-3'",
    ),
    "adam with lr None": Bad(lambda: optim.adam(None), TypeError, "learning_rate must be a real number", "found None"),
    "adam with b1 1": Bad(
        lambda: optim.adam(0.1, b1=1.0), ValueError, "b1 must be a finite number in [0, 1)", "found 1.0",
    ),
    "adam with b2 > 1": Bad(
        lambda: optim.adam(0.1, b2=1.5), ValueError, "b2 must be a finite number in [0, 1)", "found 1.5",
    ),
    "adam with b1 < 0": Bad(
        lambda: optim.adam(0.1, b1=-0.1), ValueError, "b1 must be a finite number in [0, 1)", "found -0.1",
    ),
    "adamw with weight_decay < 0": Bad(
        lambda: optim.adamw(0.1, weight_decay=-1),
        ValueError, "weight_decay must be a finite number in [0, inf)", "found -1.0",
    ),
    "rmsprop with eps 0": Bad(
        lambda: optim.rmsprop(0.1, eps=0), ValueError, "eps must be a finite number in (0, inf)", "found 0.0",
    ),
    "rmsprop with decay < 0": Bad(
        lambda: optim.rmsprop(0.1, decay=-0.5), ValueError, "decay must be a finite number in [0, 1)", "found -0.5",
    ),
    "rmsprop with momentum 1.5": Bad(
        lambda: optim.rmsprop(0.1, momentum=1.5), ValueError, "momentum must be a finite number in [0, 1)", "found 1.5",
    ),
    "adagrad with eps 0": Bad(
        lambda: optim.adagrad(0.1, eps=0), ValueError, "eps must be a finite number in (0, inf)", "found 0.0",
    ),
    "adagrad with eps NaN": Bad(
        lambda: optim.adagrad(0.1, eps=math.nan), ValueError, "eps must be a finite number", "found nan",
    ),
    "adagrad with a negative accumulator": Bad(
        lambda: optim.adagrad(0.1, initial_accumulator_value=-1),
        ValueError, "initial_accumulator_value must be a finite number in [0, inf)", "found -1.0",
    ),
    "trace with decay 1": Bad(
        lambda: optim.trace(1.0), ValueError, "decay must be a finite number in [0, 1)", "found 1.0",
    ),
    "scale by NaN": Bad(lambda: optim.scale(math.nan), ValueError, "step_size must be a finite number", "found nan"),
    "clip_by_global_norm below 0": Bad(
        lambda: optim.clip_by_global_norm(-1.0),
        ValueError, "max_norm must be a finite number in [0, inf)", "found -1.0",
    ),
    "scale_by_schedule of a number": Bad(
        lambda: optim.scale_by_schedule(0.5), TypeError, "must be a schedule (a function step -> value)", "found 0.5",
    ),
    "chain of an uncalled optimizer": Bad(
        lambda: optim.chain(optim.adam), TypeError, "expected GradientTransformations", "found <function adam",
    ),
    "a schedule whose rate turns negative": Bad(
        lambda: updates_until(optim.adam(lambda step: 0.1 - 0.1 * step), 3),
        ValueError, "learning_rate at step 2 must be a finite number in [0, inf)", "found -0.1",
    ),
    "a schedule that returns a string": Bad(
        lambda: optim.sgd(lambda step: "0.1").init(params()),
        TypeError, "learning_rate at step 0 must be a real number", "found '0.1'",
    ),
}

SCHEDULES = {
    "constant NaN": Bad(lambda: schedules.constant(math.nan), ValueError, "value must be a finite number", "found nan"),
    "constant of a string": Bad(
        lambda: schedules.constant("0.1"), TypeError, "value must be a real number", "found '0.1'",
    ),
    "linear over 2.5 steps": Bad(
        lambda: schedules.linear(1.0, 0.0, 2.5), TypeError, "transition_steps must be an int >= 1", "found 2.5",
    ),
    "linear over 0 steps": Bad(
        lambda: schedules.linear(1.0, 0.0, 0), ValueError, "transition_steps must be an int >= 1", "found 0",
    ),
    "exponential_decay with a negative rate": Bad(
        lambda: schedules.exponential_decay(1.0, -0.5, 10),
        ValueError, "decay_rate must be a finite number in (0, inf)", "found -0.5",
    ),
    "exponential_decay over 0 steps": Bad(
        lambda: schedules.exponential_decay(1.0, 0.5, 0), ValueError, "transition_steps must be an int >= 1", "found 0",
    ),
    "step_decay every 0 steps": Bad(
        lambda: schedules.step_decay(1.0, 0, 0.5), ValueError, "step_decay: step_size must be an int >= 1", "found 0",
    ),
    "step_decay with a negative gamma": Bad(
        lambda: schedules.step_decay(1.0, 10, -1),
        ValueError, "gamma must be a finite number in (0, inf)", "found -1.0",
    ),
    "cosine_decay over 2.5 steps": Bad(
        lambda: schedules.cosine_decay(1.0, 2.5), TypeError, "decay_steps must be an int >= 1", "found 2.5",
    ),
    "cosine_decay over 0 steps": Bad(
        lambda: schedules.cosine_decay(1.0, 0), ValueError, "decay_steps must be an int >= 1", "found 0",
    ),
    "cosine_decay from NaN": Bad(
        lambda: schedules.cosine_decay(math.nan, 10), ValueError, "init_value must be a finite number", "found nan",
    ),
    "warmup_cosine_decay with negative warmup": Bad(
        lambda: schedules.warmup_cosine_decay(1.0, -1, 10), ValueError, "warmup_steps must be an int >= 0", "found -1"
    ),
    "warmup_cosine_decay with warmup_steps = decay_steps": Bad(
        lambda: schedules.warmup_cosine_decay(1.0, 10, 10),
        ValueError, "expected 0 <= warmup_steps < decay_steps", "warmup_steps=10, decay_steps=10",
    ),
    "warmup_cosine_decay to inf": Bad(
        lambda: schedules.warmup_cosine_decay(1.0, 1, 10, end_value=math.inf),
        ValueError, "end_value must be a finite number", "found inf",
    ),
    "piecewise_constant with a NaN value": Bad(
        lambda: schedules.piecewise_constant([5], [1.0, math.nan]),
        ValueError, "values[1] must be a finite number", "found nan",
    ),
    "piecewise_constant with decreasing boundaries": Bad(
        lambda: schedules.piecewise_constant([5, 2], [1, 2, 3]),
        ValueError, "boundaries must be non-decreasing", "found [5, 2]",
    ),
    "piecewise_constant with too many values": Bad(
        lambda: schedules.piecewise_constant([5], [1, 2, 3]),
        ValueError, "len(schedules) == len(boundaries) + 1", "found 3 schedules and 1 boundaries",
    ),
    "join with too few schedules": Bad(
        lambda: schedules.join([schedules.constant(1)], [5]),
        ValueError, "len(schedules) == len(boundaries) + 1", "found 1 schedules and 1 boundaries",
    ),
    "join of numbers": Bad(
        lambda: schedules.join([1.0, 2.0], [2]), TypeError, "schedules[0] must be a schedule", "found 1.0",
    ),
    "join at a float boundary": Bad(
        lambda: schedules.join([float, float], [2.5]), TypeError, "boundaries[0] must be an int >= 0", "found 2.5",
    ),
    "join at a negative boundary": Bad(
        lambda: schedules.join([float, float], [-2]), ValueError, "boundaries[0] must be an int >= 0", "found -2",
    ),
}

X, Y = np.arange(20.0).reshape(10, 2), np.arange(10) % 2


def batches(**changes):
    arguments = {"key": KEY, "x": X, "y": Y, "batch_size": 4} | changes
    return datasets.batches(**arguments)


DATASETS = {
    "batches of 2.5": Bad(lambda: batches(batch_size=2.5), TypeError, "batch_size must be an int >= 1", "found 2.5"),
    "batches of True": Bad(lambda: batches(batch_size=True), TypeError, "batch_size must be an int >= 1", "found True"),
    "batches of 0": Bad(lambda: batches(batch_size=0), ValueError, "batch_size must be an int >= 1", "found 0"),
    "batches of mismatched x and y": Bad(
        lambda: batches(y=Y[:5]), ValueError, "the same number of samples", "found shapes (10, 2) and (5,)",
    ),
    "batches of a scalar x": Bad(
        lambda: batches(x=3), ValueError, "the same number of samples", "found shapes () and (10,)",
    ),
    "batches with a bad key": Bad(
        lambda: batches(key=3), TypeError, "uint64 array of shape (2,)", "found int64 array of shape ()",
    ),
    "epoch -1": Bad(lambda: batches().epoch(-1), ValueError, "index must be an int >= 0", "found -1"),
    "epoch 1.5": Bad(lambda: batches().epoch(1.5), TypeError, "index must be an int >= 0", "found 1.5"),
    "epochs -1": Bad(lambda: batches().epochs(-1), ValueError, "count must be an int >= 0", "found -1"),
    "epochs from -1": Bad(lambda: batches().epochs(2, start=-1), ValueError, "start must be an int >= 0", "found -1"),
    "standardize NaN": Bad(
        lambda: datasets.standardize(np.array([[1.0, math.nan], [2.0, 3.0], [4.0, 5.0]])),
        ValueError, "x_train: expected finite numbers", "found NaN or inf in 1 of 3 rows, columns [1]",
    ),
    "standardize inf in the test set": Bad(
        lambda: datasets.standardize(X, np.array([[math.inf, 1.0], [2.0, -math.inf]])),
        ValueError, "others[0]: expected finite numbers", "found NaN or inf in 2 of 2 rows, columns [0, 1]",
    ),
    "standardize integers": Bad(
        lambda: datasets.standardize(np.array([[1, 2], [3, 4]])),
        TypeError, "expected a floating-point array", "found int64 array",
    ),
    "standardize no samples": Bad(
        lambda: datasets.standardize(np.zeros((0, 3))), ValueError, "expected at least one sample", "found shape (0, 3)"
    ),
    "standardize a test set of other features": Bad(
        lambda: datasets.standardize(np.zeros((4, 3)), np.zeros((4, 2))),
        ValueError, "the fitted shape (3,)", "found (2,)",
    ),
    "train_test_split with fraction 0": Bad(
        lambda: datasets.train_test_split(KEY, X, Y, 0),
        ValueError, "test_fraction must be a finite number in (0, 1)", "found 0.0",
    ),
    "train_test_split with fraction 1.5": Bad(
        lambda: datasets.train_test_split(KEY, X, Y, 1.5),
        ValueError, "test_fraction must be a finite number in (0, 1)", "found 1.5",
    ),
    "train_test_split with fraction NaN": Bad(
        lambda: datasets.train_test_split(KEY, X, Y, math.nan), ValueError, "(0, 1)", "found nan",
    ),
    "train_test_split with fraction a string": Bad(
        lambda: datasets.train_test_split(KEY, X, Y, "0.2"),
        TypeError, "test_fraction must be a real number", "found '0.2'",
    ),
    "train_test_split of mismatched x and y": Bad(
        lambda: datasets.train_test_split(KEY, X, Y[:5]),
        ValueError, "the same number of samples", "found shapes (10, 2) and (5,)",
    ),
    "train_test_split with 2-D labels": Bad(
        lambda: datasets.train_test_split(KEY, X, np.zeros((10, 2))),
        ValueError, "expected y of shape (10,)", "found (10, 2)",
    ),
    "load_idx of a missing file": Bad(
        lambda: datasets.load_idx("/nonexistent/train-images-idx3-ubyte"),
        FileNotFoundError, "No such file", "/nonexistent/train-images-idx3-ubyte",
    ),
}

INITIALIZERS = {
    "glorot_uniform of a vector": Bad(
        lambda: initializers.glorot_uniform(KEY, (3,)),
        ValueError, "glorot_uniform: expected a weight shape of at least 2 dimensions", "found (3,)",
    ),
    "glorot_uniform of a negative shape": Bad(
        lambda: initializers.glorot_uniform(KEY, (3, -2)),
        ValueError, "glorot_uniform: shape must be a tuple of ints >= 0", "found (3, -2)",
    ),
    "glorot_uniform of zero fans": Bad(
        lambda: initializers.glorot_uniform(KEY, (0, 0)),
        ValueError, "expected a weight shape with a nonzero fan", "found (0, 0)",
    ),
    "he_normal of zero fan_in": Bad(
        lambda: initializers.he_normal(KEY, (0, 4)),
        ValueError, "he_normal: expected a weight shape with a nonzero fan", "found (0, 4)",
    ),
    "he_normal of a float shape": Bad(
        lambda: initializers.he_normal(KEY, (3, 2.5)),
        TypeError, "he_normal: shape must be a tuple of ints", "found (3, 2.5)",
    ),
    "he_normal in int32": Bad(
        lambda: initializers.he_normal(KEY, (3, 2), np.int32),
        TypeError, "he_normal: dtype must be a floating-point dtype", "found int32",
    ),
    "he_normal with a bad key": Bad(
        lambda: initializers.he_normal(5, (2, 2)),
        TypeError, "uint64 array of shape (2,)", "found int64 array of shape ()",
    ),
    "lecun_normal of an int shape": Bad(
        lambda: initializers.lecun_normal(KEY, 3), ValueError, "at least 2 dimensions", "found (3,)",
    ),
    "normal with a negative stddev": Bad(
        lambda: initializers.normal(-1.0), ValueError, "stddev must be a finite number in [0, inf)", "found -1.0",
    ),
    "normal in int32": Bad(
        lambda: initializers.normal()(KEY, (2,), np.int32),
        TypeError, "normal: dtype must be a floating-point dtype", "found int32",
    ),
    "uniform with a negative limit": Bad(
        lambda: initializers.uniform(-1.0), ValueError, "limit must be a finite number in [0, inf)", "found -1.0",
    ),
    "uniform with a NaN limit": Bad(
        lambda: initializers.uniform(math.nan), ValueError, "limit must be a finite number", "found nan",
    ),
    "zeros of a negative shape": Bad(
        lambda: initializers.zeros(KEY, (-1,)), ValueError, "zeros: shape must be a tuple of ints >= 0", "found (-1,)",
    ),
    "zeros of an unknown dtype": Bad(
        lambda: initializers.zeros(KEY, (2,), "foo"), TypeError, "zeros: dtype must be a numpy dtype", "found 'foo'",
    ),
    "constant of a string": Bad(
        lambda: initializers.constant("a"), TypeError, "value must be a real number", "found 'a'",
    ),
    "fans of a vector": Bad(
        lambda: initializers.fans((5,)),
        ValueError, "fans: expected a weight shape of at least 2 dimensions", "found (5,)",
    ),
}

FAMILIES = {
    "tree": TREE,
    "random": RANDOM,
    "optim": OPTIM,
    "schedules": SCHEDULES,
    "datasets": DATASETS,
    "initializers": INITIALIZERS,
}
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


def test_initializers_still_take_every_float_dtype_and_shapes_as_lists_or_numpy_ints():
    # the checks above refuse bad inputs only: weights are drawn in float64 and cast, so float16 works
    weights = initializers.he_normal(KEY, [np.int64(4), 3], np.float16)
    assert weights.dtype == np.float16 and weights.shape == (4, 3)
    np.testing.assert_array_equal(weights, initializers.he_normal(KEY, (4, 3), np.float64).astype(np.float16))
    assert initializers.zeros(KEY, (2,), np.int32).dtype == np.int32
    assert initializers.fans([np.int32(8), 3, 3, 3]) == (27, 72)
