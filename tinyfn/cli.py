"""The ``tinyfn`` command.

    tinyfn train iris-binary                     # train a task, write a run folder
    tinyfn train digits --optimizer adam --schedule cosine
    tinyfn train digits --epochs 40 --resume     # continue a stopped run exactly
    tinyfn eval runs/digits/checkpoint.msgpack   # test accuracy of a saved run
    tinyfn inspect runs/digits/checkpoint.msgpack
    tinyfn plot runs/digits                      # redraw the curves

A run folder holds ``checkpoint.msgpack`` (the latest training state and history),
``best.msgpack`` (the state with the best validation accuracy), ``history.json`` and
``curves.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import checkpoint, datasets, optim, random, train
from .layers import summary
from .tasks import TASKS, get_task

# Flags that must be the same when a run is resumed (epochs may grow).
_RUN_CONFIG = ("task", "seed", "batch_size", "lr", "optimizer", "schedule", "weight_decay")


def make_optimizer(name: str, lr: float, schedule: str, weight_decay: float, total_steps: int):
    """An optimizer from command-line names: ``sgd``, ``momentum``, ``adam``, ``adamw``,
    ``rmsprop`` or ``adagrad``, with a learning-rate ``schedule`` over ``total_steps``:
    ``constant``, ``cosine``, ``warmup-cosine`` (10% warm-up) or ``step`` (x0.1 at 50% and 75%)."""
    total_steps = max(total_steps, 2)  # schedules need a warm-up shorter than the decay
    schedules = {
        "constant": lambda: lr,
        "cosine": lambda: optim.schedules.cosine_decay(lr, total_steps),
        "warmup-cosine": lambda: optim.schedules.warmup_cosine_decay(lr, max(1, total_steps // 10), total_steps),
        "step": lambda: optim.schedules.piecewise_constant(
            [total_steps // 2, (3 * total_steps) // 4], [lr, lr * 0.1, lr * 0.01]
        ),
    }
    if schedule not in schedules:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(schedules)}")
    rate = schedules[schedule]()
    optimizers = {
        "sgd": lambda: optim.sgd(rate),
        "momentum": lambda: optim.sgd(rate, momentum=0.9),
        "adam": lambda: optim.adam(rate),
        "adamw": lambda: optim.adamw(rate, weight_decay=weight_decay or 1e-4, mask=optim.decay_mask_no_bias),
        "rmsprop": lambda: optim.rmsprop(rate),
        "adagrad": lambda: optim.adagrad(rate),
    }
    if name not in optimizers:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(optimizers)}")
    opt = optimizers[name]()
    if weight_decay and name != "adamw":
        opt = optim.chain(optim.add_weight_decay(weight_decay, mask=optim.decay_mask_no_bias), opt)
    return opt


def _default_lr(task, optimizer: str) -> float:
    return 1e-3 if optimizer in ("adam", "adamw", "rmsprop") else task.lr if optimizer == "sgd" else task.lr / 2


def _write_outputs(out: Path, history: dict, title: str) -> None:
    (out / "history.json").write_text(json.dumps(history, indent=1))
    try:
        from .viz import plot_history

        plot_history(history, out / "curves.png", title=title)
        print(f"wrote {out / 'curves.png'}")
    except ImportError as e:
        print(f"(no plot: {e})")


def cmd_train(args) -> int:
    task = get_task(args.task)
    args.epochs = args.epochs or task.epochs
    args.batch_size = args.batch_size or task.batch_size
    args.lr = args.lr if args.lr is not None else _default_lr(task, args.optimizer)
    out = Path(args.out or Path("runs") / task.name)
    out.mkdir(parents=True, exist_ok=True)
    config = {name: getattr(args, name) for name in _RUN_CONFIG}

    data = task.load(args.seed, args.data)
    key = random.key(args.seed)
    # hold out a stratified validation split of the training set; the test split is only scored at the end
    x_train, y_train, x_val, y_val = datasets.train_test_split(random.fold_in(key, 1), data.x_train, data.y_train, 0.15)
    batches = datasets.batches(random.fold_in(key, 2), x_train, y_train, args.batch_size)
    optimizer = make_optimizer(args.optimizer, args.lr, args.schedule, args.weight_decay, args.epochs * len(batches))
    model = task.model()
    input_shape = (-1,) + x_train.shape[1:]
    state = train.init_train_state(model, optimizer, random.fold_in(key, 3), input_shape)
    history = None

    if args.resume:
        snapshot = checkpoint.load(out / "checkpoint.msgpack")
        saved = checkpoint.read_metadata(out / "checkpoint.msgpack").get("config", {})
        changed = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
        if changed:
            diffs = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in changed.items())
            raise SystemExit(f"--resume: the run in {out} was made with other settings ({diffs})")
        state, history = snapshot["state"], snapshot["history"]
        print(f"resuming {out} after epoch {len(history['epoch'])}")
    else:
        print(f"{task.description}\n{summary(model, input_shape)}")
    print(f"train {len(x_train)}, validation {len(x_val)}, test {len(data.x_test)} samples; "
          f"{args.optimizer} lr={args.lr} schedule={args.schedule}, batch {args.batch_size}, seed {args.seed}")

    def validate(s):
        return train.evaluate(train.predictor(model, s), [(x_val, y_val)], task.loss)

    hooks = [train.save_checkpoints(out, args.checkpoint_every, metadata={"config": config})]
    if args.patience:
        hooks.append(train.early_stopping("val_accuracy", args.patience))
    state, history = train.train_epochs(
        train.supervised_step(model, optimizer, task.loss),
        state,
        batches,
        epochs=args.epochs,
        validate=validate,
        record=lambda s: {"learning_rate": optim.current_learning_rate(s["opt_state"])},
        history=history,
        hooks=hooks,
        progress=not args.no_progress,
    )
    test = train.evaluate(train.predictor(model, state), [(data.x_test, data.y_test)], task.loss)
    checkpoint.save(
        out / "checkpoint.msgpack",
        train.snapshot(state, history),
        metadata={"config": config, "epoch": history["epoch"][-1], "test_accuracy": test["accuracy"]},
    )
    _write_outputs(out, history, f"tinyfn train {task.name} ({args.optimizer}, seed {args.seed})")
    print(f"test accuracy {test['accuracy']:.4f}  test loss {test['loss']:.4f}")
    print(f"wrote {out / 'checkpoint.msgpack'}")
    return 0


def cmd_eval(args) -> int:
    path = Path(args.checkpoint)
    config = checkpoint.read_metadata(path).get("config")
    if not config or "task" not in config:
        raise SystemExit(f"{path}: not a checkpoint written by `tinyfn train` (its metadata has no task)")
    task = get_task(config["task"])
    data = task.load(config["seed"], args.data)
    state = checkpoint.load(path)["state"]
    test = train.evaluate(train.predictor(task.model(), state), [(data.x_test, data.y_test)], task.loss)
    print(f"{task.name}: test accuracy {test['accuracy']:.4f}  test loss {test['loss']:.4f}  ({len(data.y_test)} samples)")
    return 0


def cmd_inspect(args) -> int:
    print(checkpoint.describe(args.checkpoint))
    return 0


def cmd_plot(args) -> int:
    run = Path(args.run_dir)
    history_file = run / "history.json"
    if not history_file.exists():
        raise SystemExit(f"{run}: expected a run folder with history.json, found none")
    from .viz import plot_history

    print(f"wrote {plot_history(json.loads(history_file.read_text()), run / 'curves.png', title=str(run))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tinyfn`` command."""
    parser = argparse.ArgumentParser(prog="tinyfn", description="tinyfn: train and inspect small models")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", help="train a model on a named task")
    p.add_argument("task", choices=list(TASKS))
    p.add_argument("--epochs", type=int, help="total epochs (default: per task)")
    p.add_argument("--batch-size", type=int, help="mini-batch size (default: per task)")
    p.add_argument("--lr", type=float, help="learning rate (default: per task and optimizer)")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad"])
    p.add_argument("--schedule", default="constant", choices=["constant", "cosine", "warmup-cosine", "step"])
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay (decoupled for adamw)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the init and the shuffling")
    p.add_argument("--out", help="run folder (default: runs/TASK)")
    p.add_argument("--data", help="folder of IDX files (mnist task)")
    p.add_argument("--resume", action="store_true", help="continue the run in the output folder from its checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=1, help="save checkpoint.msgpack every N epochs")
    p.add_argument("--patience", type=int, default=0, help="stop after N epochs without validation improvement")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_train)

    p = commands.add_parser("eval", help="test accuracy of a checkpoint written by `tinyfn train`")
    p.add_argument("checkpoint")
    p.add_argument("--data", help="folder of IDX files (mnist task)")
    p.set_defaults(run=cmd_eval)

    p = commands.add_parser("inspect", help="print the tree stored in a checkpoint")
    p.add_argument("checkpoint")
    p.set_defaults(run=cmd_inspect)

    p = commands.add_parser("plot", help="draw the curves of a run folder to curves.png")
    p.add_argument("run_dir")
    p.set_defaults(run=cmd_plot)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``tinyfn`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, checkpoint.CheckpointError) as e:
        print(f"tinyfn {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
