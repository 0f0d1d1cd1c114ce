"""The ``tinyfn`` command.

    tinyfn train iris-binary                     # train a task, write a run folder
    tinyfn train digits --optimizer adam --schedule cosine
    tinyfn train digits --resume                 # continue a stopped run exactly
    tinyfn train digits --epochs 40 --extend     # train a run for more epochs than it was made for
    tinyfn eval runs/digits/checkpoint.msgpack   # test loss and accuracy of a saved run
    tinyfn inspect runs/digits/checkpoint.msgpack
    tinyfn plot runs/digits                      # redraw the curves
    tinyfn train shakespeare-char                # a small GPT on Shakespeare, by steps
    tinyfn sample runs/shakespeare-char --tokens 500 --temperature 0.8 --seed 1 --prompt "Hamlet:"
    tinyfn export runs/digits/checkpoint.msgpack --onnx digits.onnx --safetensors digits.safetensors
    tinyfn train digits --ranks 4                # data-parallel on 4 local processes (MPI)

A run folder holds ``checkpoint.msgpack`` (the latest training state and history),
``best.msgpack`` (the state at the best epoch by ``--monitor``), ``history.json`` and
``curves.png``.

**Epochs and steps.** The classification tasks train by epochs. A text task
(``shakespeare-char``) trains by steps, each on a batch of windows drawn at random from the
text, with ``--steps`` in all and a validation (and a row of the history, and a checkpoint)
every ``--eval-every`` steps; its ``best.msgpack`` is the row of lowest validation loss.
Where this help says epochs, read evaluations for such a run (``--checkpoint-every``).

**What a run is.** The settings its numbers depend on (task, seed, batch size, learning
rate, optimizer, schedule, weight decay, epochs, patience, monitor; or steps and eval-every)
are the run's configuration, saved in its checkpoints with, for a text task, the model's
settings and the vocabulary (which is how ``tinyfn sample`` rebuilds the model).
``--resume`` continues a run with that configuration: a flag left out takes its saved value
and a flag given with another value is refused, so a resumed run ends bit for bit where the
uninterrupted run would have. ``--extend`` is the one way to change a saved run: it resumes
it and trains it up to a larger ``--epochs`` (``--steps``). The learning-rate schedule keeps
the length it was made with, so the added epochs use its final rate (the same rate for
``constant``, 1% of it for ``step``; ``cosine`` and ``warmup-cosine`` end at 0, so such runs
cannot be extended).

**Ranks.** ``--ranks N`` trains on N processes with MPI (the extra ``mpi``): the command
starts ``mpiexec -n N python -m mpi4py -m tinyfn train ...`` with the same arguments and
returns its exit status. Each rank computes the gradients of its shard of every batch and
the ranks average them (:mod:`tinyfn.distributed`); only rank 0 prints and writes the run
folder. The number of ranks is part of the run's configuration (N ranks train like one
process accumulating N micro-batches, not like one process on the whole batch). On a
cluster, start the ranks with its launcher, ``srun -n 64 python -m mpi4py -m tinyfn train
...``: a process started as one of several ranks trains with all of them.

A mistake in the command line or in the files it names ends the command with one line,
``tinyfn COMMAND: error: ...``, on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

import numpy as np

from . import __version__, checkpoint, datasets, optim, random, train, tree
from .export import command as export_command
from .layers import init_with_state, summary
from .tasks import TASKS, LanguageTask, get_task
from .text import CharTokenizer, generate

# The settings of a run that a flag can give: those of every task, then those of the tasks
# trained by epochs and of those trained by steps. With "task" and the length of the
# learning-rate schedule ("schedule_epochs" or "schedule_steps", which only --extend makes
# differ from "epochs" or "steps") they are the configuration saved in the run's checkpoints.
_RUN_FLAGS = ("seed", "batch_size", "lr", "optimizer", "schedule", "weight_decay", "ranks")
_EPOCH_FLAGS = ("epochs", "patience", "monitor")
_STEP_FLAGS = ("steps", "eval_every")

# What `tinyfn sample` writes when its flags are left out; `tinyfn train` ends a text task
# with this sample.
SAMPLE_DEFAULTS = {"prompt": "\n\n", "tokens": 500, "temperature": 0.8, "seed": 0}

SCHEDULES = ("constant", "cosine", "warmup-cosine", "step")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad")
MONITORS = ("val_loss", "val_accuracy")


class CommandError(Exception):
    """A mistake in the command line or in the files it names: reported in one line."""


def make_schedule(name: str, lr: float, total_steps: int):
    """The learning rate of the schedule called ``name`` over ``total_steps`` steps: the number ``lr``
    for ``constant``, else a function ``step -> rate``: ``cosine`` (from ``lr`` to 0),
    ``warmup-cosine`` (10% linear warm-up, then cosine to 0) or ``step`` (x0.1 at 50% and 75%).
    Past ``total_steps`` each schedule stays at its final rate."""
    total_steps = max(total_steps, 2)  # schedules need a warm-up shorter than the decay
    schedules = {
        "constant": lambda: lr,
        "cosine": lambda: optim.schedules.cosine_decay(lr, total_steps),
        "warmup-cosine": lambda: optim.schedules.warmup_cosine_decay(lr, max(1, total_steps // 10), total_steps),
        "step": lambda: optim.schedules.piecewise_constant(
            [total_steps // 2, (3 * total_steps) // 4], [lr, lr * 0.1, lr * 0.01]
        ),
    }
    if name not in schedules:
        raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(schedules)}")
    return schedules[name]()


def make_optimizer(name: str, learning_rate, weight_decay: float):
    """An optimizer from its command-line name: ``sgd``, ``momentum``, ``adam``, ``adamw``,
    ``rmsprop`` or ``adagrad``. ``learning_rate`` is a number or a schedule; ``weight_decay``
    is decoupled for ``adamw`` and an L2 term added to the gradients for the others."""
    optimizers = {
        "sgd": lambda: optim.sgd(learning_rate),
        "momentum": lambda: optim.sgd(learning_rate, momentum=0.9),
        "adam": lambda: optim.adam(learning_rate),
        "adamw": lambda: optim.adamw(learning_rate, weight_decay=weight_decay, mask=optim.decay_mask_no_bias),
        "rmsprop": lambda: optim.rmsprop(learning_rate),
        "adagrad": lambda: optim.adagrad(learning_rate),
    }
    if name not in optimizers:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(optimizers)}")
    opt = optimizers[name]()
    if weight_decay and name != "adamw":
        opt = optim.chain(optim.add_weight_decay(weight_decay, mask=optim.decay_mask_no_bias), opt)
    return opt


# ----------------------------------------------------------------------------- the run's configuration


def _unit(task) -> str:
    """What a run of ``task`` counts: ``"steps"`` for a text task, ``"epochs"`` for the others."""
    return "steps" if isinstance(task, LanguageTask) else "epochs"


def _default_optimizer(task) -> str:
    return "adamw" if isinstance(task, LanguageTask) else "sgd"


def _task_defaults(task, optimizer: str) -> dict:
    """The settings of a new run of ``task`` with ``optimizer`` that the command line leaves out."""
    if isinstance(task, LanguageTask):
        return {
            "seed": 0,
            "batch_size": task.batch_size,
            "lr": task.lr,
            "optimizer": _default_optimizer(task),
            "schedule": "warmup-cosine",
            "weight_decay": task.weight_decay if optimizer == "adamw" else 0.0,
            "steps": task.steps,
            "eval_every": task.eval_every,
            "ranks": 1,
        }
    adaptive = optimizer in ("adam", "adamw", "rmsprop")
    return {
        "seed": 0,
        "batch_size": task.batch_size,
        "lr": 1e-3 if adaptive else task.lr if optimizer == "sgd" else task.lr / 2,
        "optimizer": _default_optimizer(task),
        "schedule": "constant",
        "weight_decay": 1e-4 if optimizer == "adamw" else 0.0,
        "epochs": task.epochs,
        "patience": 0,
        "monitor": "val_loss",
        "ranks": 1,
    }


def run_config(args, task, saved: dict | None) -> dict:
    """The configuration of the run ``args`` asks for: each setting from its flag if given,
    else from the ``saved`` configuration of the run being resumed, else the task's default.

    Raises :class:`CommandError` when a given flag differs from the saved run (``epochs``
    or ``steps`` may grow with ``args.extend``), or belongs to the other kind of task.
    """
    unit = _unit(task)
    own, other = (_STEP_FLAGS, _EPOCH_FLAGS) if unit == "steps" else (_EPOCH_FLAGS, _STEP_FLAGS)
    misplaced = [_flag(name) for name in other if getattr(args, name) is not None]
    if misplaced:
        raise CommandError(f"{', '.join(misplaced)}: the {task.name} task trains by {unit}, so its flags are "
                           f"{', '.join(_flag(name) for name in own)}")
    given = {name: getattr(args, name) for name in _RUN_FLAGS + own if getattr(args, name) is not None}
    given["task"] = task.name
    if saved is not None:
        _check_resumable(given, saved, args.extend, unit)
    optimizer = given.get("optimizer", (saved or {}).get("optimizer", _default_optimizer(task)))
    config = {**_task_defaults(task, optimizer), **(saved or {}), **given}
    config.setdefault(f"schedule_{unit}", config[unit])
    return config


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_resumable(given: dict, saved: dict, extend: bool, unit: str) -> None:
    differ = {name: (saved[name], value) for name, value in given.items() if name in saved and saved[name] != value}
    if extend:
        if unit not in differ or given[unit] < saved[unit]:
            found = given.get(unit, f"no --{unit}")
            raise CommandError(f"--extend: expected --{unit} greater than the run's {saved.get(unit)}, found {found}")
        del differ[unit]
    if differ:
        diffs = ", ".join(f"{name}: saved {a!r}, now {b!r}" for name, (a, b) in differ.items())
        hint = f", or pass --extend to train it for more {unit}" if unit in differ else ""
        raise CommandError(
            f"--resume: the saved run was made with other settings ({diffs}); leave those flags out to continue "
            f"it as it was{hint}"
        )


def _saved_config(out: Path) -> dict:
    path = out / "checkpoint.msgpack"
    if not path.is_file():
        raise CommandError(
            f"expected a run to continue in {out}, found no {path} (train it first, without --resume or --extend)"
        )
    config = checkpoint.read_metadata(path).get("config")
    if not isinstance(config, dict) or "task" not in config:
        raise CommandError(f"{path}: expected a checkpoint written by `tinyfn train`, found no task in its metadata")
    return config


def _run_folder(out: str | None, task) -> Path:
    folder = Path(out) if out else Path("runs") / task.name
    if folder.exists() and not folder.is_dir():
        raise CommandError(f"--out: expected a folder for the run, found the file {folder}")
    return folder


# ----------------------------------------------------------------------------- saved runs


def _checkpoint_file(name: str) -> Path:
    path = Path(name)
    if not path.exists():
        raise CommandError(f"expected a checkpoint file, found nothing at {path}")
    if path.is_dir():
        hint = f" (did you mean {path / 'checkpoint.msgpack'}?)" if (path / "checkpoint.msgpack").is_file() else ""
        raise CommandError(f"expected a checkpoint file, found the folder {path}{hint}")
    return path


def _leaf_shapes(params) -> dict:
    """``{path: "(64, 10) float32"}`` for each leaf of ``params``."""
    return {path: f"{np.shape(leaf)} {np.asarray(leaf).dtype}" for path, leaf in tree.leaves_with_path(params)}


def _load_run(path: Path, expected_params) -> dict:
    """The ``{"state", "history"}`` saved at ``path``, after checking that its params have the
    names, shapes and dtypes of ``expected_params`` (the task's model, freshly initialised)."""
    saved = checkpoint.load(path)
    try:
        found = _leaf_shapes(saved["state"]["params"])
        if not ("epoch" in saved["history"] or "step" in saved["history"]):  # what a resumed run continues from
            raise KeyError("epoch")
    except (KeyError, TypeError):
        layout = "{'state': {'params': ...}, 'history': {'epoch' or 'step': ...}}"
        raise CommandError(f"{path}: expected a run's {layout}, found another tree") from None
    expected = _leaf_shapes(expected_params)
    for name in sorted(expected.keys() | found.keys()):
        if expected.get(name) != found.get(name):
            raise CommandError(
                f"{path}: the params do not fit the task's model: expected {name} {expected.get(name, 'absent')}, "
                f"found {found.get(name, 'absent')} (a checkpoint of another model or tinyfn version?)"
            )
    return saved


def _evaluate(task, model, state, x, y) -> dict:
    return train.evaluate(train.predictor(model, state), [(x, y)], task.loss, task.metrics)


def _format_metrics(prefix: str, metrics: dict) -> str:
    return "  ".join(f"{prefix} {name} {value:.4f}" for name, value in metrics.items())


def _text_run(path: Path) -> tuple:
    """``(task, config, model, tokenizer, state)`` of the run of a text task saved at ``path``:
    the model and tokenizer rebuilt from the configuration in its metadata."""
    config = checkpoint.read_metadata(path).get("config")
    task = TASKS.get(config.get("task")) if isinstance(config, dict) else None
    settings = {"model": dict, "vocabulary": str, "validation_windows": int}
    if not (isinstance(task, LanguageTask) and all(isinstance(config.get(k), kind) for k, kind in settings.items())):
        has_task = isinstance(config, dict) and "task" in config
        found = f"a run of the task {config['task']!r}" if has_task else "no run's configuration"
        raise CommandError(f"{path}: expected a checkpoint of a text task (such as shakespeare-char) written by "
                           f"`tinyfn train`, found {found}")
    tokenizer = CharTokenizer(config["vocabulary"])
    model = task.model(tokenizer.vocab_size, **config["model"])
    _, fresh_params, _ = init_with_state(model, random.key(0), (-1, config["model"]["context"]))
    return task, config, model, tokenizer, _load_run(path, fresh_params)["state"]


def _text_loss(task, model, state, windows) -> dict:
    """``{"loss": nats per character}`` of the model in ``state`` on ``windows`` ``(inputs, targets)``."""
    inputs, targets = windows
    batches = [(inputs[i : i + 128], targets[i : i + 128]) for i in range(0, len(inputs), 128)]
    return train.evaluate(train.predictor(model, state), batches, task.loss, metrics={})


def _sample_text(model, state, tokenizer, context: int, *, prompt: str, tokens: int, temperature: float, seed: int):
    """``prompt`` followed by the ``tokens`` characters the model in ``state`` writes after it."""
    unknown = sorted(set(prompt) - set(tokenizer.vocabulary))
    if not prompt or unknown:
        found = repr("".join(unknown)) if unknown else "an empty prompt"
        raise CommandError(f"--prompt: expected at least one character, each one of the model's vocabulary "
                           f"{tokenizer.vocabulary!r}; found {found}")
    ids = generate(train.predictor(model, state), tokenizer.encode(prompt), tokens, random.key(seed),
                   temperature=temperature, context=context)
    return prompt + tokenizer.decode(ids)


# ----------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from .distributed import current_world  # imports MPI only in a process started as a rank

    task = get_task(args.task)
    out = _run_folder(args.out, task)
    resume = args.resume or args.extend
    saved = _saved_config(out) if resume else None
    world = current_world()
    if world.size > 1 and args.ranks is None:
        args.ranks = world.size  # started by mpiexec or srun itself: a run of all its ranks
    config = run_config(args, task, saved)
    if config["ranks"] != world.size:
        if world.size > 1:
            raise CommandError(f"--ranks: expected the {world.size} ranks this process was started with, "
                               f"found --ranks {config['ranks']}")
        return _launch(args, config["ranks"])
    train_run = _train_by_steps if isinstance(task, LanguageTask) else _train_by_epochs
    if world.rank == 0:
        return train_run(args, task, out, config, resume, world)
    with contextlib.redirect_stdout(None):  # print() writes nothing when sys.stdout is None: rank 0 speaks
        return train_run(args, task, out, config, resume, world)


def _launch(args, ranks: int) -> int:
    """Run this command on ``ranks`` local ranks under mpiexec; their exit status."""
    from .distributed import launch

    try:
        return launch(ranks, args.argv)
    except (ImportError, FileNotFoundError) as e:
        raise CommandError(f"--ranks {ranks}: {e}") from None


def _training_step(model, optimizer, loss_fn, metrics, world):
    """The supervised step, or on several ranks its data-parallel form."""
    if world.size == 1:
        return train.supervised_step(model, optimizer, loss_fn, metrics=metrics)
    from .distributed import data_parallel_step

    return data_parallel_step(model, optimizer, loss_fn, metrics=metrics, world=world)


def _train_by_epochs(args, task, out: Path, config: dict, resume: bool, world) -> int:
    data = task.load(config["seed"], args.data)
    key = random.key(config["seed"])
    # hold out a stratified validation split of the training set; the test split is only scored at the end
    x_train, y_train, x_val, y_val = datasets.train_test_split(random.fold_in(key, 1), data.x_train, data.y_train, 0.15)
    batches = datasets.batches(random.fold_in(key, 2), x_train, y_train, config["batch_size"])
    schedule_steps = config["schedule_epochs"] * len(batches)
    learning_rate = make_schedule(config["schedule"], config["lr"], schedule_steps)
    optimizer = make_optimizer(config["optimizer"], learning_rate, config["weight_decay"])
    model = task.model()
    input_shape = (-1,) + x_train.shape[1:]
    state = train.init_train_state(model, optimizer, random.fold_in(key, 3), input_shape)
    history = None

    if resume:
        state, history = _resume(out, config, "epochs", learning_rate, schedule_steps, state)
    else:
        print(f"{task.description}\n{summary(model, input_shape)}")
    state = world.broadcast(state)  # every rank starts from rank 0's state
    print(f"train {len(x_train)}, validation {len(x_val)}, test {len(data.x_test)} samples; "
          f"{config['optimizer']} lr={config['lr']} schedule={config['schedule']}, batch {config['batch_size']}, "
          f"seed {config['seed']}, best epoch by {config['monitor']}{_on_ranks(world)}")

    hooks = []
    if world.rank == 0:  # the only rank that writes
        hooks.append(train.save_checkpoints(out, args.checkpoint_every, monitor=config["monitor"],
                                            metadata={"config": config}))
    epochs = config["epochs"]
    if config["patience"]:
        stop_early = train.early_stopping(config["monitor"], config["patience"])
        hooks.append(stop_early)
        if history is not None and stop_early(state, history):
            epochs = len(history["epoch"])  # the uninterrupted run stopped here: train no further
            print(f"the run stopped early at epoch {epochs}: "
                  f"{config['monitor']} did not improve for {config['patience']} epochs")
    state, history = train.train_epochs(
        _training_step(model, optimizer, task.loss, task.metrics, world),
        state,
        batches,
        epochs=epochs,
        validate=lambda s: _evaluate(task, model, s, x_val, y_val),
        record=_learning_rate,
        history=history,
        hooks=hooks,
        progress=_progress(args, world),
    )
    if world.rank != 0:
        return 0  # rank 0 writes the run
    test = _evaluate(task, model, state, data.x_test, data.y_test)
    checkpoint.save(
        out / "checkpoint.msgpack",
        train.snapshot(state, history),
        metadata={"config": config, "epoch": history["epoch"][-1], **{f"test_{k}": v for k, v in test.items()}},
    )
    _write_outputs(out, history, f"tinyfn train {task.name} ({config['optimizer']}, seed {config['seed']})")
    print(_format_metrics("test", test))
    print(f"wrote {out / 'checkpoint.msgpack'}")
    return 0


def _train_by_steps(args, task, out: Path, config: dict, resume: bool, world) -> int:
    # A new run takes the task's model, validation set and characters; a resumed one keeps its own.
    model_config = config.setdefault("model", dict(task.model_config))
    config.setdefault("validation_windows", task.validation_windows)
    data = task.load(model_config["context"], config["validation_windows"], config.get("vocabulary"))
    config.setdefault("vocabulary", data.tokenizer.vocabulary)
    model = task.model(data.tokenizer.vocab_size, **model_config)
    key = random.key(config["seed"])
    learning_rate = make_schedule(config["schedule"], config["lr"], config["schedule_steps"])
    optimizer = make_optimizer(config["optimizer"], learning_rate, config["weight_decay"])
    optimizer = optim.chain(optim.clip_by_global_norm(task.clip_norm), optimizer)
    input_shape = (-1, model_config["context"])
    state = train.init_train_state(model, optimizer, random.fold_in(key, 3), input_shape)
    history = None

    if resume:
        state, history = _resume(out, config, "steps", learning_rate, config["schedule_steps"], state)
    else:
        print(f"{task.description}\n{summary(model, input_shape)}")
    state = world.broadcast(state)  # every rank starts from rank 0's state
    windows, context = data.validation[0].shape
    print(f"train {len(data.train_ids):,} characters, validation {windows} windows of {context}; {config['optimizer']} "
          f"lr={config['lr']} schedule={config['schedule']}, batch {config['batch_size']}, {config['steps']} steps, "
          f"validation every {config['eval_every']}, seed {config['seed']}{_on_ranks(world)}")

    train_key = random.fold_in(key, 2)  # as in the tasks by epochs: 2 for the batches, 3 for the initialisation
    hooks = [train.save_checkpoints(out, args.checkpoint_every, metadata={"config": config})] if world.rank == 0 else []
    state, history = train.train_steps(
        _training_step(model, optimizer, task.loss, {}, world),
        state,
        lambda i: datasets.random_windows(random.fold_in(train_key, i), data.train_ids, config["batch_size"], context),
        steps=config["steps"],
        eval_every=config["eval_every"],
        validate=lambda s: _text_loss(task, model, s, data.validation),
        record=_learning_rate,
        history=history,
        hooks=hooks,
        progress=_progress(args, world),
    )
    if world.rank != 0:
        return 0  # rank 0 writes the run
    checkpoint.save(out / "checkpoint.msgpack", train.snapshot(state, history),
                    metadata={"config": config, "step": history["step"][-1]})
    _write_outputs(out, history, f"tinyfn train {task.name} ({config['optimizer']}, seed {config['seed']})")
    print(f"validation loss {history['val_loss'][-1]:.4f} nats/char ({history['val_loss'][-1] / math.log(2):.3f} bits/char)")
    print(f"wrote {out / 'checkpoint.msgpack'}")
    print(f"\nA sample (`tinyfn sample {out}` writes it again, `--seed N` others):")
    print(_sample_text(model, state, data.tokenizer, context, **SAMPLE_DEFAULTS))
    return 0


def _learning_rate(state) -> dict:
    return {"learning_rate": optim.current_learning_rate(state["opt_state"])}


def _progress(args, world) -> bool:
    """Whether to show a progress bar (said once: how to get one when tqdm is missing); on
    rank 0 only."""
    if world.rank != 0:
        return False
    if not args.no_progress:
        _hint_if_no_progress_bar()
    return not args.no_progress


def _on_ranks(world) -> str:
    """``", on 4 ranks"`` for a line describing a run of several ranks."""
    return f", on {world.size} ranks" if world.size > 1 else ""


def _resume(out: Path, config: dict, unit: str, learning_rate, schedule_steps: int, fresh_state) -> tuple:
    """The ``(state, history)`` of the run saved in ``out``, after checking its params fit
    those of ``fresh_state``, and saying what ``--extend`` does to the learning rate (a number
    or a schedule of ``schedule_steps`` optimizer steps)."""
    if config[unit] > config[f"schedule_{unit}"]:
        _explain_extension(config, unit, learning_rate(schedule_steps) if callable(learning_rate) else learning_rate)
    snapshot = _load_run(out / "checkpoint.msgpack", fresh_state["params"])
    counter = unit[:-1]  # "epoch" or "step"
    print(f"resuming {out} after {counter} {snapshot['history'][counter][-1]} of {config[unit]}")
    return snapshot["state"], snapshot["history"]


def _explain_extension(config: dict, unit: str, final_rate: float) -> None:
    """Say what happens to the learning rate of a run trained past its schedule (``--extend``)."""
    schedule, length = config["schedule"], config[f"schedule_{unit}"]
    if final_rate == 0:
        raise CommandError(f"--extend: the {schedule} schedule of this run ends at learning rate 0, so more {unit} "
                           f"would not change it; start a new run with the --{unit} you want")
    print(f"the {schedule} learning-rate schedule keeps its {length} {unit}: {unit} "
          f"{length + 1}-{config[unit]} use its final rate {final_rate:g}")


def _hint_if_no_progress_bar() -> None:
    if not sys.stderr.isatty():
        return
    try:
        import tqdm  # noqa: F401
    except ImportError:
        print("(no progress bar: it needs tqdm, pip install tqdm or tinyfn's extra 'progress')", file=sys.stderr)


def _write_outputs(out: Path, history: dict, title: str) -> None:
    (out / "history.json").write_text(json.dumps(history, indent=1))
    try:
        from .viz import plot_history

        plot_history(history, out / "curves.png", title=title)
        print(f"wrote {out / 'curves.png'}")
    except ImportError as e:
        print(f"(no plot: {e})")


def cmd_eval(args) -> int:
    path = _checkpoint_file(args.checkpoint)
    config = checkpoint.read_metadata(path).get("config")
    if not isinstance(config, dict) or "task" not in config or not isinstance(config.get("seed"), int):
        found = f"config keys {sorted(config)}" if isinstance(config, dict) else "no config"
        raise CommandError(f"{path}: expected a checkpoint written by `tinyfn train`, with the task and seed in "
                           f"its metadata's config; found {found}")
    task = get_task(config["task"])
    if isinstance(task, LanguageTask):
        return _eval_text(path)
    data = task.load(config["seed"], args.data)
    model = task.model()
    _, expected_params, _ = init_with_state(model, random.key(0), (-1,) + data.x_test.shape[1:])
    state = _load_run(path, expected_params)["state"]
    test = _evaluate(task, model, state, data.x_test, data.y_test)
    print(f"{task.name}: {_format_metrics('test', test)}  ({len(data.y_test)} samples)")
    return 0


def _eval_text(path: Path) -> int:
    task, config, model, tokenizer, state = _text_run(path)
    data = task.load(config["model"]["context"], config["validation_windows"], tokenizer.vocabulary)
    loss = _text_loss(task, model, state, data.validation)["loss"]
    windows, context = data.validation[0].shape
    print(f"{task.name}: validation loss {loss:.4f} nats/char ({loss / math.log(2):.3f} bits/char), "
          f"{windows} windows of {context} characters")
    return 0


def cmd_sample(args) -> int:
    run = Path(args.run_dir)
    path = run / "checkpoint.msgpack" if run.is_dir() else run
    if not path.is_file():
        raise CommandError(f"expected a run folder with checkpoint.msgpack, or a checkpoint file; found nothing at {path}")
    task, config, model, tokenizer, state = _text_run(path)
    print(_sample_text(model, state, tokenizer, config["model"]["context"], prompt=args.prompt, tokens=args.tokens,
                       temperature=args.temperature, seed=args.seed))
    return 0


def cmd_inspect(args) -> int:
    print(checkpoint.describe(_checkpoint_file(args.checkpoint)))
    return 0


def cmd_plot(args) -> int:
    run = Path(args.run_dir)
    history_file = run / "history.json"
    if not history_file.is_file():
        raise CommandError(f"{run}: expected a run folder with history.json, found none")
    from .viz import plot_history

    try:
        path = plot_history(json.loads(history_file.read_text()), run / "curves.png", title=str(run))
    except ImportError as e:  # matplotlib is an optional extra
        raise CommandError(str(e)) from None
    print(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------- the command line


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``PROG: error: MESSAGE``, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(convert, low, *, strict: bool):
    """An argparse ``type``: ``convert(text)``, finite and ``> low`` (``strict``) or ``>= low``."""
    expected = f"{'an integer' if convert is int else 'a number'} {'>' if strict else '>='} {low}"

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"expected {expected}, found {text!r}")
        return value

    return parse


_positive_int = _number(int, 0, strict=True)
_natural_int = _number(int, 0, strict=False)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tinyfn`` command."""
    parser = _Parser(prog="tinyfn", description="tinyfn: train and inspect small models")
    parser.add_argument("--version", action="version", version=f"tinyfn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", help="train a model on a named task",
                            description="Train a model on a named task and write its run folder. Settings left "
                            "out take the task's defaults, or the saved run's with --resume and --extend.")
    p.add_argument("task", choices=list(TASKS))
    p.add_argument("--epochs", metavar="N", type=_positive_int,
                   help="total epochs of a classification task (default: per task)")
    p.add_argument("--steps", metavar="N", type=_positive_int, help="total steps of a text task (default: per task)")
    p.add_argument("--eval-every", metavar="N", type=_positive_int,
                   help="steps between two validations (and checkpoints) of a text task (default: per task)")
    p.add_argument("--batch-size", metavar="N", type=_positive_int, help="mini-batch size (default: per task)")
    p.add_argument("--lr", type=_number(float, 0, strict=True), help="learning rate (default: per task and optimizer)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="default: sgd (adamw for a text task)")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help="learning-rate schedule over the epochs or steps (default: constant; warmup-cosine for a "
                   "text task, with 10%% of the steps for the warm-up)")
    p.add_argument("--weight-decay", type=_number(float, 0, strict=False),
                   help="L2 weight decay, decoupled for adamw (default: 1e-4 for adamw, 0.1 for adamw on a text task, "
                   "else 0)")
    p.add_argument("--seed", metavar="N", type=_natural_int,
                   help="seed of the split, the init and the shuffling (default: 0)")
    p.add_argument("--monitor", choices=MONITORS,
                   help="the validation metric that picks best.msgpack and drives --patience: val_loss (lower is "
                   "better; the default) or val_accuracy (higher is better). A later epoch becomes the best only "
                   "if strictly better, so ties keep the earlier epoch")
    p.add_argument("--patience", metavar="N", type=_natural_int,
                   help="stop after N epochs without improvement of --monitor (default: 0, never stop early)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/TASK)")
    p.add_argument("--data", metavar="DIR", help="folder of IDX files (mnist task)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in the output folder from its checkpoint, with its saved settings")
    p.add_argument("--extend", action="store_true",
                   help="resume the run and train it up to a larger --epochs; its learning-rate schedule keeps its "
                   "length, so the added epochs use the schedule's final rate")
    p.add_argument("--checkpoint-every", metavar="N", type=_positive_int, default=1,
                   help="save checkpoint.msgpack every N epochs (every N validations for a text task)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (shown on a terminal when tqdm is installed)")
    p.add_argument("--ranks", metavar="N", type=_positive_int,
                   help="train on N local processes with MPI (the extra 'mpi'): runs mpiexec -n N python -m mpi4py -m "
                   "tinyfn train ...; each rank takes 1/N of every batch (default: 1, or the ranks mpiexec or srun "
                   "started this process with)")
    p.set_defaults(run=cmd_train)

    p = commands.add_parser("eval", help="test loss and accuracy of a checkpoint written by `tinyfn train`")
    p.add_argument("checkpoint")
    p.add_argument("--data", metavar="DIR", help="folder of IDX files (mnist task)")
    p.set_defaults(run=cmd_eval)

    p = commands.add_parser("sample", help="write text with the model of a text task's run",
                            description="Write text with the model of a run of a text task (shakespeare-char): the "
                            "prompt, then characters drawn one at a time. The same seed gives the same text.")
    p.add_argument("run_dir", metavar="RUN", help="a run folder (its checkpoint.msgpack) or a checkpoint file, such as "
                   "RUN/best.msgpack")
    p.add_argument("--tokens", metavar="N", type=_positive_int, default=SAMPLE_DEFAULTS["tokens"],
                   help="how many characters to write (default: %(default)s)")
    p.add_argument("--temperature", metavar="T", type=_number(float, 0, strict=True),
                   default=SAMPLE_DEFAULTS["temperature"],
                   help="below 1 the likelier characters are drawn more often, above 1 less (default: %(default)s)")
    p.add_argument("--seed", metavar="N", type=_natural_int, default=SAMPLE_DEFAULTS["seed"],
                   help="seed of the draws (default: %(default)s)")
    p.add_argument("--prompt", metavar="TEXT", default=SAMPLE_DEFAULTS["prompt"],
                   help="the text to continue (default: two line breaks, the end of a speech, so that the text "
                   "starts with a speaker's name)")
    p.set_defaults(run=cmd_sample)

    p = commands.add_parser("inspect", help="print the tree stored in a checkpoint")
    p.add_argument("checkpoint")
    p.set_defaults(run=cmd_inspect)

    p = commands.add_parser("export", help="write a run's model as ONNX and/or its params as safetensors",
                            description="Write the model of a run saved by `tinyfn train` as an ONNX model "
                            "(inference: logits out, any batch size; for a text task, any sequence length up to "
                            "the context) and/or its params as safetensors.")
    export_command.add_arguments(p)
    p.set_defaults(run=export_command.run)

    p = commands.add_parser("plot", help="draw the curves of a run folder to curves.png")
    p.add_argument("run_dir")
    p.set_defaults(run=cmd_plot)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``tinyfn`` command; returns the exit status.

    Mistakes in the command line or the files it names (and a training loss that turns NaN)
    print one line ``tinyfn COMMAND: error: ...`` to stderr and return 2; argparse exits
    with 2 itself for a malformed command line.
    """
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `train --ranks N` passes on to each rank
    try:
        return args.run(args)
    except (CommandError, ValueError, OSError, train.NonFiniteLossError) as e:
        print(f"tinyfn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tinyfn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
