"""Training as a fold over batches.

The core is :func:`fit`: ``state = step(state, batch)`` repeated over the batches, which is
``functools.reduce(step, batches, state)`` plus the history of the metrics each step reports.
Everything else here is a convenience around it:

* :func:`init_train_state` and :func:`supervised_step` build the usual training state and
  step from a model, a loss and an optimizer; the step's two halves,
  :func:`supervised_gradients` and :func:`apply_gradients`, are there for steps that do
  something between them (:func:`tinyfn.distributed.data_parallel_step` averages the
  gradients over processes);
* :func:`evaluate` averages the loss and the metrics that fit it over batches (accuracy for
  the classification losses, nothing else for mse: see :func:`default_metrics`);
* :func:`train_epochs` runs epochs (reshuffled from a key), validates after each, prints
  progress, stops on a NaN or infinite loss, and calls hooks such as :func:`early_stopping`
  and :func:`save_checkpoints`, which pick the best epoch the same way (:func:`best_epoch`);
* :func:`train_steps` does the same by steps, validating every so many steps, for data
  drawn afresh at each step (random windows of a text) rather than passed over in epochs.

A training state is a plain dict (a pytree), so it is saved and restored with
:mod:`tinyfn.checkpoint` and a resumed run continues bit for bit:
``{"params", "opt_state", "model_state", "step", "key"}``.
"""

from __future__ import annotations

import functools
import itertools
import sys
import time
from pathlib import Path

import numpy as np

from . import losses, random
from .autodiff import value_and_grad
from .layers import Layer, apply_with_state, init_with_state

__all__ = [
    "fit",
    "NonFiniteLossError",
    "init_train_state",
    "default_metrics",
    "supervised_step",
    "supervised_gradients",
    "apply_gradients",
    "predictor",
    "evaluate",
    "train_epochs",
    "train_steps",
    "best_epoch",
    "early_stopping",
    "snapshot",
    "save_checkpoints",
]


def fit(step, state, batches, *, progress: bool = False):
    """Fold ``step`` over ``batches``: returns ``(final_state, history)``.

    ``step(state, batch) -> (state, metrics)`` where ``metrics`` is a dict of scalars.
    ``history`` maps each metric name to a float64 array with one entry per batch.
    ``batches`` may be any iterable. With ``progress=True`` and tqdm installed, a progress
    bar is shown on a terminal.
    """
    records: list[dict] = []

    def fold(state, batch):
        state, metrics = step(state, batch)
        records.append(metrics)
        return state

    state = functools.reduce(fold, _with_progress(batches, progress), state)
    names = records[0].keys() if records else ()
    return state, {name: np.array([float(r[name]) for r in records]) for name in names}


def _with_progress(iterable, progress: bool, total: int | None = None, desc: str | None = None, unit: str = "batch"):
    """Wrap ``iterable`` in a tqdm bar when asked for, tqdm is installed and stderr is a terminal."""
    if not progress or not sys.stderr.isatty():
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, unit=unit)


class NonFiniteLossError(FloatingPointError):
    """Training met a NaN or infinite loss (raised by :func:`train_epochs` and :func:`train_steps`).

    ``epoch`` and ``step`` (the step within that epoch, both counted from 1) say where; for
    :func:`train_steps`, ``epoch`` is None and ``step`` counts the steps of the run.
    ``state`` is the training state before that step, whose update was not applied.
    """

    def __init__(self, message: str, *, epoch: int, step: int, state):
        super().__init__(message)
        self.epoch, self.step, self.state = epoch, step, state


def init_train_state(model: Layer, optimizer, key, input_shape) -> dict:
    """A fresh training state for ``model`` on inputs of ``input_shape`` (batch axis may be -1).

    Returns ``{"params", "opt_state", "model_state", "step": 0, "key"}``; ``key`` is split so
    the state's key (used for dropout and the like) differs from the initialisation key.
    """
    init_key, state_key = random.split(key)
    _, params, model_state = init_with_state(model, init_key, input_shape)
    return {
        "params": params,
        "opt_state": optimizer.init(params),
        "model_state": model_state,
        "step": 0,
        "key": state_key,
    }


_CLASSIFICATION_LOSSES = (losses.softmax_cross_entropy, losses.binary_cross_entropy_with_logits)


def default_metrics(loss_fn) -> dict:
    """The metrics reported beside ``loss_fn``: ``{"accuracy": losses.accuracy}`` for the
    classification losses (``softmax_cross_entropy``, ``binary_cross_entropy_with_logits``),
    ``{}`` for any other (``mse``, a loss of your own: pass ``metrics=`` to choose)."""
    return {"accuracy": losses.accuracy} if loss_fn in _CLASSIFICATION_LOSSES else {}


def supervised_step(model: Layer, optimizer, loss_fn=losses.softmax_cross_entropy, regularizer=None, metrics=None):
    """The usual step for ``(x, y)`` batches: forward, loss, gradients, optimizer update.

    ``loss_fn(predictions, y)`` returns a scalar; ``regularizer(params)``, if given, is added
    to it (written with tinyfn ops, so it is differentiated too). ``metrics`` maps names to
    ``metric(predictions, y) -> float`` (default: :func:`default_metrics` of ``loss_fn``).
    Returns ``step(state, (x, y)) -> (state, {"loss": float, name: float for each metric})``
    for :func:`fit`.
    """
    metrics = default_metrics(loss_fn) if metrics is None else metrics
    loss_and_grads = supervised_gradients(model, loss_fn, regularizer)

    def step(state, batch):
        x, y = batch
        next_key, step_key = random.split(state["key"])
        (loss, (predictions, model_state)), grads = loss_and_grads(state["params"], state["model_state"], x, y, step_key)
        new_state = apply_gradients(optimizer, state, grads, model_state, next_key)
        return new_state, {"loss": float(loss), **{name: metric(predictions, y) for name, metric in metrics.items()}}

    return step


def supervised_gradients(model: Layer, loss_fn=losses.softmax_cross_entropy, regularizer=None):
    """The first half of :func:`supervised_step`: the loss of a batch and its gradients.

    Returns ``loss_and_grads(params, model_state, x, y, key) -> ((loss, (predictions,
    new_model_state)), grads)``: ``model`` applied to ``x`` in training mode (``key`` for
    dropout), ``loss_fn(predictions, y)`` plus ``regularizer(params)`` if given, and the
    gradients of that loss with respect to ``params`` (a tree like ``params``).
    """

    def objective(params, model_state, x, y, key):
        predictions, new_model_state = apply_with_state(model, params, x, model_state, key=key, train=True)
        loss = loss_fn(predictions, y)
        if regularizer is not None:
            loss = loss + regularizer(params)
        return loss, (predictions, new_model_state)

    return value_and_grad(objective, has_aux=True)


def apply_gradients(optimizer, state: dict, grads, model_state, key) -> dict:
    """The second half of :func:`supervised_step`: the training state after ``optimizer``'s
    update with ``grads``, with ``model_state`` and ``key`` as the new ones and ``step`` + 1."""
    from .optim import apply_updates

    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    return {
        "params": apply_updates(state["params"], updates),
        "opt_state": opt_state,
        "model_state": model_state,
        "step": state["step"] + 1,
        "key": key,
    }


def predictor(model: Layer, state: dict):
    """``predict(x) -> y`` running ``model`` in inference mode with the state's params."""

    def predict(x):
        y, _ = apply_with_state(model, state["params"], x, state["model_state"], train=False)
        return y

    return predict


def evaluate(predict, batches, loss_fn=losses.softmax_cross_entropy, metrics=None) -> dict:
    """Mean loss and metrics of ``predict(x)`` over ``(x, y)`` batches, weighted by batch size.

    ``metrics`` maps names to ``metric(predictions, y) -> float`` (default:
    :func:`default_metrics` of ``loss_fn``, so accuracy for the classification losses only).
    Returns ``{"loss": float, name: float for each metric}``.
    """
    metrics = default_metrics(loss_fn) if metrics is None else metrics
    total = 0
    sums = dict.fromkeys(["loss", *metrics], 0.0)
    for x, y in batches:
        out = predict(x)
        n = len(y)
        sums["loss"] += float(loss_fn(out, y)) * n
        for name, metric in metrics.items():
            sums[name] += metric(out, y) * n
        total += n
    if total == 0:
        raise ValueError("evaluate: no batches to evaluate")
    return {name: value / total for name, value in sums.items()}


def train_epochs(
    step,
    state: dict,
    data,
    *,
    epochs: int,
    validate=None,
    record=None,
    history: dict | None = None,
    hooks=(),
    progress: bool = True,
    log=print,
    check_finite: bool = True,
):
    """Train for ``epochs`` epochs in total, continuing after the epochs already in ``history``.

    Args:
      step: a step function for :func:`fit`.
      state: the training state (see :func:`init_train_state`).
      data: a :class:`tinyfn.datasets.Batches`; epoch ``e`` uses its ``epoch(e)`` order.
      epochs: the total number of epochs (a positive int), those in ``history`` included.
      validate: optional ``validate(state) -> {"loss": .., ...}`` run after each epoch (such
        as :func:`evaluate` on a validation split).
      record: optional ``record(state) -> {name: float}`` of extra per-epoch values (for
        example the learning rate) added to the history.
      history: the per-epoch history of an earlier run to resume (from its checkpoint).
      hooks: functions ``hook(state, history) -> bool`` run after each epoch; if any returns
        True training stops (see :func:`early_stopping`, :func:`save_checkpoints`).
      progress: show a batch progress bar (tqdm, on a terminal only).
      log: where the per-epoch line goes (``print`` by default; ``None`` for silence).
      check_finite: raise :class:`NonFiniteLossError` (naming the epoch and step) as soon as
        a step's ``"loss"`` is NaN or infinite, before its update is applied; a single NaN
        in the data would otherwise turn every parameter into NaN without a word.

    Returns ``(state, history)``; ``history`` maps ``"epoch"``, ``"train_loss"``,
    ``"val_loss"``, one ``"train_NAME"`` and ``"val_NAME"`` per metric (such as
    ``"train_accuracy"``), the names ``record`` returns, and ``"seconds"`` to per-epoch lists.
    """
    _check_count("train_epochs: epochs", epochs)
    history = _as_lists(history)
    for epoch in range(len(history.get("epoch", [])), epochs):
        batches = _with_progress(data.epoch(epoch), progress, total=len(data), desc=f"epoch {epoch + 1}/{epochs}")
        epoch_step = _stop_on_nonfinite_loss(step, epoch + 1, 1, len(data)) if check_finite else step
        state, row = _train_interval(epoch_step, state, batches, {"epoch": epoch + 1}, validate, record)
        if _add_row(history, row, state, epochs, hooks, log):
            break
    return state, history


def train_steps(
    step,
    state: dict,
    batch_at,
    *,
    steps: int,
    eval_every: int,
    validate=None,
    record=None,
    history: dict | None = None,
    hooks=(),
    progress: bool = True,
    log=print,
    check_finite: bool = True,
):
    """Train for ``steps`` steps in total, continuing after the steps already in ``history``.

    The steps are grouped in intervals of ``eval_every``: after each interval (and after the
    last step) the history gets a row, as :func:`train_epochs` adds one per epoch, and the
    hooks run. A resumed run continues from the last row.

    Args:
      step: a step function for :func:`fit`.
      state: the training state (see :func:`init_train_state`).
      batch_at: ``batch_at(i) -> batch`` for step ``i`` (counted from 0 over the whole run).
        It must depend on ``i`` alone, such as random windows drawn from
        ``random.fold_in(key, i)``, so that a resumed run sees the same batches.
      steps: the total number of steps (a positive int), those in ``history`` included.
      eval_every: the number of steps between two rows of the history (a positive int).
      validate, record, hooks, progress, log, check_finite: as in :func:`train_epochs`,
        per interval instead of per epoch.
      history: the history of an earlier run to resume (from its checkpoint).

    Returns ``(state, history)``; ``history`` maps ``"step"`` (the steps done at each row),
    ``"train_loss"`` and the other step metrics (each the mean over the interval),
    ``"val_loss"`` and the other validation results, the names ``record`` returns, and
    ``"seconds"`` to per-row lists.
    """
    _check_count("train_steps: steps", steps)
    _check_count("train_steps: eval_every", eval_every)
    history = _as_lists(history)
    done = history["step"][-1] if history.get("step") else 0
    while done < steps:
        end = min((done // eval_every + 1) * eval_every, steps)
        batches = (batch_at(i) for i in range(done, end))
        desc = f"steps {done + 1}-{end}/{steps}"
        batches = _with_progress(batches, progress, total=end - done, desc=desc, unit="step")
        interval_step = _stop_on_nonfinite_loss(step, None, done + 1, steps) if check_finite else step
        state, row = _train_interval(interval_step, state, batches, {"step": end}, validate, record)
        if _add_row(history, row, state, steps, hooks, log):
            break
        done = end
    return state, history


def _check_count(name: str, value) -> None:
    if not (isinstance(value, (int, np.integer)) and value >= 1):
        raise ValueError(f"{name} must be a positive int, found {value!r}")


def _as_lists(history: dict | None) -> dict:
    """A copy of ``history`` (as saved: arrays, or lists) with a list per quantity."""
    return {name: np.asarray(values).tolist() for name, values in (history or {}).items()}


def _train_interval(step, state, batches, row: dict, validate, record) -> tuple:
    """Fold ``step`` over ``batches``, then complete ``row`` (its counter, such as ``{"epoch": 3}``)
    with the mean of each step metric (``train_NAME``), the validation results (``val_NAME``),
    the recorded values and the seconds taken. Returns ``(state, row)``."""
    started = time.perf_counter()
    state, batch_history = fit(step, state, batches)
    row.update({f"train_{name}": float(np.mean(values)) for name, values in batch_history.items()})
    if validate is not None:
        row.update({f"val_{name}": float(value) for name, value in validate(state).items()})
    if record is not None:
        row.update({name: float(value) for name, value in record(state).items()})
    row["seconds"] = time.perf_counter() - started
    return state, row


def _add_row(history: dict, row: dict, state, total: int, hooks, log) -> bool:
    """Append ``row`` to ``history``, log it, run the hooks; True if one of them says stop."""
    for name, value in row.items():
        history.setdefault(name, []).append(value)
    if log is not None:
        log(_format_row(row, total))
    stop = [hook(state, history) for hook in hooks]  # every hook runs, even after a stop
    return any(stop)


def _stop_on_nonfinite_loss(step, epoch: int | None, first: int, total: int):
    """``step`` that raises :class:`NonFiniteLossError` instead of returning a NaN or infinite
    loss; its calls are numbered from ``first`` (of ``total``) in the message."""
    numbers = itertools.count(first)

    def checked(state, batch):
        number = next(numbers)
        new_state, metrics = step(state, batch)
        loss = metrics.get("loss", 0.0)
        if not np.isfinite(loss):
            where = f"step {number} of {total}" if epoch is None else f"epoch {epoch}, step {number} of {total}"
            raise NonFiniteLossError(
                f"{where}: the training loss is {loss}; training stopped before this update (look for NaN or inf "
                "in the data, or lower the learning rate)",
                epoch=epoch,
                step=number,
                state=state,
            )
        return new_state, metrics

    return checked


def _format_row(row: dict, total: int) -> str:
    counter, number = next(iter(row.items()))  # "epoch" or "step", the first entry
    parts = [f"{counter} {number:>{len(str(total))}}/{total}"]
    parts += [
        f"{name} {value:.3g}" if name == "learning_rate" else f"{name} {value:.4f}"
        for name, value in row.items()
        if name not in (counter, "seconds")
    ]
    parts.append(f"{row['seconds']:.2f}s")
    return "  ".join(parts)


def best_epoch(history: dict, monitor: str = "val_loss", mode: str = "auto") -> int:
    """The index (from 0) of the best epoch (or row) in ``history`` by ``history[monitor]``.

    ``mode`` is ``"min"`` (lower is better), ``"max"``, or ``"auto"``: ``"min"`` for a name
    ending in ``loss``, ``"max"`` for any other (an accuracy). Ties go to the earliest
    epoch: a later epoch replaces the best only if it is strictly better. A NaN is never
    better than a number. This is the rule of :func:`early_stopping` and of the
    ``best.msgpack`` of :func:`save_checkpoints`.
    """
    if monitor not in history:
        raise ValueError(f"monitor {monitor!r} is not in the history; found {sorted(history)}")
    if mode == "auto":
        mode = "min" if monitor.endswith("loss") else "max"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min', 'max' or 'auto', found {mode!r}")
    values = np.asarray(history[monitor], dtype=np.float64)
    if mode == "min":
        values = -values
    return int(np.argmax(np.nan_to_num(values, nan=-np.inf)))  # argmax returns the first of equal values


def early_stopping(monitor: str = "val_loss", patience: int = 5, mode: str = "auto"):
    """A hook that stops training when ``history[monitor]`` has not improved (strictly, see
    :func:`best_epoch`) for ``patience`` epochs. It is a pure function of the history, so it
    behaves the same after a resume."""
    if not (isinstance(patience, (int, np.integer)) and patience >= 1):
        raise ValueError(f"early_stopping: patience must be a positive int, found {patience!r}")

    def hook(state, history):
        return len(history[monitor]) - 1 - best_epoch(history, monitor, mode) >= patience

    return hook


def snapshot(state: dict, history: dict) -> dict:
    """The tree a checkpoint of a run stores: ``{"state": state, "history": ...}`` with each
    per-epoch history list as one array (one leaf per quantity rather than one per epoch)."""
    return {"state": state, "history": {name: np.asarray(values) for name, values in history.items()}}


def save_checkpoints(run_dir, every: int = 1, monitor: str | None = "val_loss", mode: str = "auto", metadata=None):
    """A hook writing ``{"state", "history"}`` to ``run_dir/checkpoint.msgpack`` every ``every``
    rows of the history (epochs, or the intervals of :func:`train_steps`), and to
    ``run_dir/best.msgpack`` when the row is the best so far by ``history[monitor]`` (see
    :func:`best_epoch`: only a strictly better row replaces it; ``monitor=None`` writes no
    best.msgpack). ``metadata`` (a dict) is stored in both files with the row's ``"epoch"``
    (or ``"step"``). Resume from ``checkpoint.msgpack`` by passing its state and history back
    to :func:`train_epochs` (or :func:`train_steps`)."""
    from . import checkpoint

    if not (isinstance(every, (int, np.integer)) and every >= 1):
        raise ValueError(f"save_checkpoints: every must be a positive int, found {every!r}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    def hook(state, history):
        counter = "epoch" if "epoch" in history else "step"
        rows = len(history[counter])
        info = {**(metadata or {}), counter: history[counter][-1]}
        contents = snapshot(state, history)
        if rows % every == 0:
            checkpoint.save(run_dir / "checkpoint.msgpack", contents, metadata=info)
        if monitor is not None and best_epoch(history, monitor, mode) == rows - 1:
            checkpoint.save(run_dir / "best.msgpack", contents, metadata=info)
        return False

    return hook
