"""Training as a fold over batches.

The core is :func:`fit`: ``state = step(state, batch)`` repeated over the batches, which is
``functools.reduce(step, batches, state)`` plus the history of the metrics each step reports.
Everything else here is a convenience around it:

* :func:`init_train_state` and :func:`supervised_step` build the usual training state and
  step from a model, a loss and an optimizer;
* :func:`evaluate` averages loss and accuracy over batches;
* :func:`train_epochs` runs epochs (reshuffled from a key), validates after each, prints
  progress, and calls hooks such as :func:`early_stopping` and :func:`save_checkpoints`.

A training state is a plain dict (a pytree), so it is saved and restored with
:mod:`tinyfn.checkpoint` and a resumed run continues bit for bit:
``{"params", "opt_state", "model_state", "step", "key"}``.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import numpy as np

from . import losses, random
from .autodiff import value_and_grad
from .layers import Layer, apply_with_state, init_with_state

__all__ = [
    "fit",
    "init_train_state",
    "supervised_step",
    "predictor",
    "evaluate",
    "train_epochs",
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


def _with_progress(iterable, progress: bool):
    """Wrap ``iterable`` in a tqdm bar when asked for, tqdm is installed and stderr is a terminal."""
    if not progress or not sys.stderr.isatty():
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, leave=False, unit="batch")


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


def supervised_step(model: Layer, optimizer, loss_fn=losses.softmax_cross_entropy, regularizer=None):
    """The usual step for ``(x, y)`` batches: forward, loss, gradients, optimizer update.

    ``loss_fn(predictions, y)`` returns a scalar; ``regularizer(params)``, if given, is added
    to it (written with tinyfn ops, so it is differentiated too). Returns
    ``step(state, (x, y)) -> (state, {"loss", "accuracy"})`` for :func:`fit`.
    """
    from .optim import apply_updates

    def objective(params, model_state, x, y, key):
        predictions, new_model_state = apply_with_state(model, params, x, model_state, key=key, train=True)
        loss = loss_fn(predictions, y)
        if regularizer is not None:
            loss = loss + regularizer(params)
        return loss, (predictions, new_model_state)

    loss_and_grads = value_and_grad(objective, has_aux=True)

    def step(state, batch):
        x, y = batch
        next_key, step_key = random.split(state["key"])
        (loss, (predictions, model_state)), grads = loss_and_grads(state["params"], state["model_state"], x, y, step_key)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new_state = {
            "params": apply_updates(state["params"], updates),
            "opt_state": opt_state,
            "model_state": model_state,
            "step": state["step"] + 1,
            "key": next_key,
        }
        return new_state, {"loss": float(loss), "accuracy": losses.accuracy(predictions, y)}

    return step


def predictor(model: Layer, state: dict):
    """``predict(x) -> y`` running ``model`` in inference mode with the state's params."""

    def predict(x):
        y, _ = apply_with_state(model, state["params"], x, state["model_state"], train=False)
        return y

    return predict


def evaluate(predict, batches, loss_fn=losses.softmax_cross_entropy) -> dict:
    """Mean ``loss`` and ``accuracy`` of ``predict(x)`` over ``(x, y)`` batches, weighted by
    batch size. Returns ``{"loss": float, "accuracy": float}``."""
    total = loss_sum = correct = 0.0
    for x, y in batches:
        out = predict(x)
        n = len(y)
        loss_sum += float(loss_fn(out, y)) * n
        correct += losses.accuracy(out, y) * n
        total += n
    if total == 0:
        raise ValueError("evaluate: no batches to evaluate")
    return {"loss": loss_sum / total, "accuracy": correct / total}


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
):
    """Train for ``epochs`` epochs in total, continuing after the epochs already in ``history``.

    Args:
      step: a step function for :func:`fit`.
      state: the training state (see :func:`init_train_state`).
      data: a :class:`tinyfn.datasets.Batches`; epoch ``e`` uses its ``epoch(e)`` order.
      validate: optional ``validate(state) -> {"loss": .., "accuracy": ..}`` run after each epoch.
      record: optional ``record(state) -> {name: float}`` of extra per-epoch values (for
        example the learning rate) added to the history.
      history: the per-epoch history of an earlier run to resume (from its checkpoint).
      hooks: functions ``hook(state, history) -> bool`` run after each epoch; if any returns
        True training stops (see :func:`early_stopping`, :func:`save_checkpoints`).
      progress: show a batch progress bar (tqdm, on a terminal only).
      log: where the per-epoch line goes (``print`` by default; ``None`` for silence).

    Returns ``(state, history)``; ``history`` maps ``"epoch"``, ``"train_loss"``,
    ``"train_accuracy"``, ``"val_loss"``, ``"val_accuracy"``, ``"seconds"`` to per-epoch lists.
    """
    history = {name: np.asarray(values).tolist() for name, values in (history or {}).items()}
    start = len(history.get("epoch", []))
    for epoch in range(start, epochs):
        started = time.perf_counter()
        state, batch_history = fit(step, state, data.epoch(epoch), progress=progress)
        row = {"epoch": epoch + 1}
        row.update({f"train_{name}": float(np.mean(values)) for name, values in batch_history.items()})
        if validate is not None:
            row.update({f"val_{name}": float(value) for name, value in validate(state).items()})
        if record is not None:
            row.update({name: float(value) for name, value in record(state).items()})
        row["seconds"] = time.perf_counter() - started
        for name, value in row.items():
            history.setdefault(name, []).append(value)
        if log is not None:
            log(_format_row(row, epochs))
        stop = [hook(state, history) for hook in hooks]  # every hook runs, even after a stop
        if any(stop):
            break
    return state, history


def _format_row(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}"]
    parts += [
        f"{name} {value:.3g}" if name == "learning_rate" else f"{name} {value:.4f}"
        for name, value in row.items()
        if name not in ("epoch", "seconds")
    ]
    parts.append(f"{row['seconds']:.2f}s")
    return "  ".join(parts)


def _best_epoch(values: list, mode: str) -> int:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', found {mode!r}")
    return int(np.argmax(values) if mode == "max" else np.argmin(values))


def early_stopping(monitor: str = "val_accuracy", patience: int = 5, mode: str = "max"):
    """A hook that stops training when ``history[monitor]`` has not improved for ``patience``
    epochs. It is a pure function of the history, so it behaves the same after a resume."""

    def hook(state, history):
        values = history[monitor]
        return len(values) - 1 - _best_epoch(values, mode) >= patience

    return hook


def snapshot(state: dict, history: dict) -> dict:
    """The tree a checkpoint of a run stores: ``{"state": state, "history": ...}`` with each
    per-epoch history list as one array (one leaf per quantity rather than one per epoch)."""
    return {"state": state, "history": {name: np.asarray(values) for name, values in history.items()}}


def save_checkpoints(run_dir, every: int = 1, monitor: str | None = "val_accuracy", mode: str = "max", metadata=None):
    """A hook writing ``{"state", "history"}`` to ``run_dir/checkpoint.msgpack`` every ``every``
    epochs, and to ``run_dir/best.msgpack`` when ``history[monitor]`` is the best so far.
    ``metadata`` (a dict) is stored in both files with the epoch. Resume from
    ``checkpoint.msgpack`` by passing its state and history back to :func:`train_epochs`."""
    from . import checkpoint

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    def hook(state, history):
        info = {**(metadata or {}), "epoch": history["epoch"][-1]}
        contents = snapshot(state, history)
        if info["epoch"] % every == 0:
            checkpoint.save(run_dir / "checkpoint.msgpack", contents, metadata=info)
        if monitor is not None and monitor in history and _best_epoch(history[monitor], mode) == len(history[monitor]) - 1:
            checkpoint.save(run_dir / "best.msgpack", contents, metadata=info)
        return False

    return hook
