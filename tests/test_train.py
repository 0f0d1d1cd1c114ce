"""The training fold, the step helpers, epochs with hooks, exact resume, and the shipped tasks."""

import functools

import numpy as np
import pytest

from tinyfn import checkpoint, datasets, layers, losses, optim, random, train, tree
from tinyfn.cli import main


def test_fit_is_a_fold_over_batches_with_a_metric_history():
    def step(total, batch):
        return total + batch, {"seen": batch}

    state, history = train.fit(step, 0, iter(range(5)))
    assert state == functools.reduce(lambda s, b: step(s, b)[0], range(5), 0) == 10
    np.testing.assert_array_equal(history["seen"], [0, 1, 2, 3, 4])
    assert train.fit(step, 7, []) == (7, {})


def _problem(seed=0):
    x, y = datasets.digits()
    x_train, y_train, x_test, y_test = datasets.train_test_split(random.key(seed), x[:400], y[:400])
    x_train, x_test = datasets.standardize(x_train, x_test)
    model = layers.serial(layers.Dense(32), layers.Relu(), layers.Dropout(0.1), layers.Dense(10))
    return model, datasets.batches(random.key(seed + 1), x_train, y_train, 32), (x_test, y_test)


@pytest.mark.parametrize("make_optimizer", [lambda: optim.sgd(0.05, momentum=0.9), lambda: optim.adam(1e-3)], ids=["momentum", "adam"])
def test_a_run_resumed_from_its_checkpoint_ends_bitwise_equal(tmp_path, make_optimizer):
    model, batches, _ = _problem()
    optimizer = make_optimizer()
    step = train.supervised_step(model, optimizer)
    start = train.init_train_state(model, optimizer, random.key(5), (-1, 64))

    full_state, full_history = train.train_epochs(step, start, batches, epochs=4, log=None)

    hook = train.save_checkpoints(tmp_path, every=1, monitor=None)  # no validation, so no best epoch
    train.train_epochs(step, start, batches, epochs=2, hooks=[hook], log=None)
    saved = checkpoint.load(tmp_path / "checkpoint.msgpack")
    resumed_state, resumed_history = train.train_epochs(
        step, saved["state"], batches, epochs=4, history=saved["history"], log=None
    )
    for (path, a), (_, b) in zip(tree.leaves_with_path(full_state), tree.leaves_with_path(resumed_state)):
        assert np.array_equal(a, b), path
    assert resumed_history["train_loss"] == full_history["train_loss"]
    assert resumed_state["step"] == 4 * len(batches)


def test_training_lowers_the_loss_and_evaluate_reports_accuracy():
    model, batches, (x_test, y_test) = _problem()
    optimizer = optim.sgd(0.1)
    state = train.init_train_state(model, optimizer, random.key(0), (-1, 64))
    before = train.evaluate(train.predictor(model, state), [(x_test, y_test)])
    state, history = train.train_epochs(
        train.supervised_step(model, optimizer), state, batches, epochs=5, log=None,
        validate=lambda s: train.evaluate(train.predictor(model, s), [(x_test, y_test)]),
    )
    assert history["val_loss"][-1] < before["loss"] / 3
    assert history["val_accuracy"][-1] > 0.85 > before["accuracy"]
    assert history["epoch"] == [1, 2, 3, 4, 5]


def test_a_nan_in_the_data_stops_training_naming_the_epoch_and_step():
    model, batches, _ = _problem()
    x = batches.x.copy()
    x[17, 5] = np.nan
    data = datasets.batches(batches.key, x, batches.y, batches.batch_size)
    bad_step = 1 + next(i for i, (xb, _) in enumerate(data.epoch(0)) if np.isnan(xb).any())
    optimizer = optim.sgd(0.1)
    step = train.supervised_step(model, optimizer)
    state = train.init_train_state(model, optimizer, random.key(0), (-1, 64))
    with pytest.raises(train.NonFiniteLossError, match=f"epoch 1, step {bad_step} of {len(data)}: the training loss is nan") as error:
        train.train_epochs(step, state, data, epochs=3, log=None)
    assert (error.value.epoch, error.value.step) == (1, bad_step)
    assert error.value.state["step"] == bad_step - 1  # the state before the bad step
    assert all(np.isfinite(leaf).all() for leaf in tree.leaves(error.value.state["params"]))
    # with the check off, the NaN spreads to every parameter
    state, _ = train.train_epochs(step, state, data, epochs=3, log=None, check_finite=False)
    assert all(np.isnan(leaf).all() for leaf in tree.leaves(state["params"]))


def _counting_step(total, batch):
    """A step whose state is the sum of the batches seen and whose loss is the batch."""
    return total + batch, {"loss": batch}


def test_train_steps_makes_a_row_every_eval_every_steps_and_resumes_from_the_last_one(tmp_path):
    batch_at = lambda i: float(i)  # the batch of step i (from 0) is the number i
    seen = []
    validate = lambda total: seen.append(total) or {"loss": -total}
    state, history = train.train_steps(_counting_step, 0.0, batch_at, steps=7, eval_every=3, validate=validate, log=None)
    assert state == sum(range(7)) and seen == [0 + 1 + 2, 15, 21]
    assert history["step"] == [3, 6, 7]
    assert history["train_loss"] == [1.0, 4.0, 6.0]  # the mean loss of steps 0-2, 3-5 and 6
    assert history["val_loss"] == [-3.0, -15.0, -21.0]

    hook = train.save_checkpoints(tmp_path, monitor="val_loss", metadata={"run": "a"})
    stop_after_two_rows = lambda total, h: len(h["step"]) == 2
    partial, partial_history = train.train_steps(
        _counting_step, 0.0, batch_at, steps=7, eval_every=3, validate=validate, hooks=[hook, stop_after_two_rows], log=None
    )
    assert partial == 15 and partial_history["step"] == [3, 6]
    assert checkpoint.read_metadata(tmp_path / "checkpoint.msgpack") == {"run": "a", "step": 6}
    saved = checkpoint.load(tmp_path / "checkpoint.msgpack")
    resumed, resumed_history = train.train_steps(
        _counting_step, float(saved["state"]), batch_at, steps=7, eval_every=3, validate=validate,
        history=saved["history"], log=None,
    )
    assert resumed == state and resumed_history == history | {"seconds": resumed_history["seconds"]}
    lines = []
    train.train_steps(_counting_step, 0.0, batch_at, steps=12, eval_every=5, log=lines.append)
    assert [line.rsplit("  ", 1)[0] for line in lines] == [  # all but the seconds
        "step  5/12  train_loss 2.0000", "step 10/12  train_loss 7.0000", "step 12/12  train_loss 10.5000"
    ]
    with pytest.raises(ValueError, match="train_steps: eval_every must be a positive int, found 0"):
        train.train_steps(_counting_step, 0.0, batch_at, steps=7, eval_every=0)


def test_a_nan_loss_stops_training_by_steps_naming_the_step():
    batch_at = lambda i: np.nan if i == 4 else float(i)
    with pytest.raises(train.NonFiniteLossError, match="^step 5 of 9: the training loss is nan") as error:
        train.train_steps(_counting_step, 0.0, batch_at, steps=9, eval_every=2, log=None)
    assert (error.value.epoch, error.value.step, error.value.state) == (None, 5, 0.0 + 1 + 2 + 3)


def test_metrics_fit_the_loss():
    x = random.normal(random.key(0), (40, 3))
    y = x @ np.array([[1.0], [-2.0], [0.5]], np.float32)
    model, optimizer = layers.Dense(1), optim.sgd(0.1)
    state = train.init_train_state(model, optimizer, random.key(1), (-1, 3))
    predict = lambda s: train.evaluate(train.predictor(model, s), [(x, y)], losses.mse)
    state, history = train.train_epochs(
        train.supervised_step(model, optimizer, losses.mse), state, datasets.batches(random.key(2), x, y, 8),
        epochs=3, validate=predict, log=None,
    )
    assert sorted(history) == ["epoch", "seconds", "train_loss", "val_loss"]  # no accuracy for a regression
    assert set(predict(state)) == {"loss"}
    mean_error = lambda out, target: float(np.abs(out - target).mean())
    uneven_batches = [(x[:30], y[:30]), (x[30:], y[30:])]  # weighted by size: the mean over all 40 samples
    scores = train.evaluate(train.predictor(model, state), uneven_batches, losses.mse, {"mae": mean_error})
    errors = np.abs(x @ state["params"]["w"] + state["params"]["b"] - y)
    assert set(scores) == {"loss", "mae"}
    assert scores["mae"] == pytest.approx(errors.mean()) and scores["loss"] == pytest.approx((errors**2).mean())
    assert train.default_metrics(losses.softmax_cross_entropy) == {"accuracy": losses.accuracy}
    assert train.default_metrics(losses.binary_cross_entropy_with_logits) == {"accuracy": losses.accuracy}
    assert train.default_metrics(lambda z, t: losses.mse(z, t)) == {}


def test_the_best_epoch_is_replaced_only_by_a_strictly_better_one(tmp_path):
    assert train.best_epoch({"val_loss": [0.5, 0.3, 0.3, 0.4]}) == 1
    assert train.best_epoch({"val_accuracy": [0.9, 1.0, 1.0]}, "val_accuracy") == 1
    assert train.best_epoch({"val_loss": [np.nan, 0.7, np.nan]}) == 1  # NaN is never the best
    assert train.best_epoch({"score": [3, 1, 2]}, "score", mode="min") == 1
    hook = train.save_checkpoints(tmp_path)  # monitors val_loss
    history = {"epoch": [], "val_loss": []}
    for epoch, loss in enumerate([0.5, 0.3, 0.3, 0.4], start=1):
        history["epoch"].append(epoch)
        history["val_loss"].append(loss)
        hook({"step": epoch}, history)
    assert checkpoint.read_metadata(tmp_path / "best.msgpack")["epoch"] == 2
    with pytest.raises(ValueError, match=r"monitor 'val_accuracy' is not in the history; found \['epoch', 'val_loss'\]"):
        train.save_checkpoints(tmp_path, monitor="val_accuracy")({}, history)


def test_counts_are_checked():
    model, batches, _ = _problem()
    step = train.supervised_step(model, optim.sgd(0.1))
    with pytest.raises(ValueError, match="train_epochs: epochs must be a positive int, found 0"):
        train.train_epochs(step, {}, batches, epochs=0)
    with pytest.raises(ValueError, match="save_checkpoints: every must be a positive int, found 0"):
        train.save_checkpoints("unused", every=0)
    with pytest.raises(ValueError, match="early_stopping: patience must be a positive int, found -1"):
        train.early_stopping(patience=-1)


def test_early_stopping_is_a_function_of_the_history():
    stop = train.early_stopping("val_accuracy", patience=2)
    assert not stop(None, {"val_accuracy": [0.5, 0.6, 0.6]})
    assert stop(None, {"val_accuracy": [0.5, 0.7, 0.6, 0.65]})
    model, batches, data = _problem()
    optimizer = optim.sgd(0.0)  # nothing improves
    state = train.init_train_state(model, optimizer, random.key(0), (-1, 64))
    _, history = train.train_epochs(
        train.supervised_step(model, optimizer), state, batches, epochs=20, log=None, hooks=[stop],
        validate=lambda s: train.evaluate(train.predictor(model, s), [data]),
    )
    assert len(history["epoch"]) == 3


def test_a_regularizer_written_as_plain_python_is_differentiated():
    model = layers.Dense(1)
    optimizer = optim.sgd(0.5)
    penalty = lambda p: 10.0 * (p["w"] * p["w"]).sum()
    step = train.supervised_step(model, optimizer, loss_fn=lambda z, y: losses.mse(z, y), regularizer=penalty)
    state = train.init_train_state(model, optimizer, random.key(0), (-1, 3))
    x = np.zeros((4, 3), np.float32)  # the data gives no gradient to w: only the penalty does
    y = np.zeros((4, 1), np.float32)
    w0 = state["params"]["w"].copy()
    state, _ = step(state, (x, y))
    np.testing.assert_allclose(state["params"]["w"], w0 * (1 - 0.5 * 20.0), rtol=1e-5)


def _test_accuracy(tmp_path, *args):
    out = tmp_path / "_".join(args)
    assert main(["train", *args, "--out", str(out), "--no-progress"]) == 0
    return checkpoint.read_metadata(out / "checkpoint.msgpack")["test_accuracy"]


def test_iris_binary_reaches_100_percent_for_every_seed(tmp_path, capsys):
    for seed in range(10):
        assert _test_accuracy(tmp_path, "iris-binary", "--seed", str(seed)) == 1.0, f"seed {seed}"


def test_iris_three_classes_reaches_95_percent(tmp_path, capsys):
    assert _test_accuracy(tmp_path, "iris") >= 0.95


def test_digits_mlp_reaches_97_percent(tmp_path, capsys):
    assert _test_accuracy(tmp_path, "digits") >= 0.97


def test_digits_cnn_reaches_98_percent(tmp_path, capsys):
    assert _test_accuracy(tmp_path, "digits-cnn") >= 0.98
