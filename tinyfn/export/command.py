"""The ``tinyfn export`` command: the model of a run as ONNX, its weights as safetensors.

    tinyfn export runs/digits/checkpoint.msgpack --onnx digits.onnx
    tinyfn export runs/shakespeare-char/best.msgpack --onnx gpt.onnx --safetensors gpt.safetensors

The checkpoint's metadata holds the run's configuration, whose task names the model (and, for
a text task, the model's settings and vocabulary), so the model is rebuilt and its params are
checked against the saved ones before anything is written. The ONNX model takes a batch of
any size of what the task's model takes, and returns the logits: feature rows ``(batch, 64)``
for digits, and for a text task int64 ids ``(batch, sequence)`` of any length up to the
model's context, giving logits ``(batch, sequence, vocabulary)``. Mistakes raise
``ValueError`` with a one-line message (:class:`~tinyfn.checkpoint.CheckpointError` and
:class:`~tinyfn.export.onnx.ExportError` are ValueErrors), which the ``tinyfn`` command
prints as ``tinyfn export: error: ...`` with exit status 2.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .. import checkpoint, random, tree
from ..layers import init_with_state
from ..tasks import TASKS, LanguageTask
from ..text import CharTokenizer
from .onnx import MAX_OPSET, MIN_OPSET, to_onnx
from .safetensors import save_safetensors

__all__ = ["add_arguments", "run"]


def add_arguments(parser) -> None:
    """Add the arguments of ``tinyfn export`` to the argparse ``parser``."""
    parser.add_argument("checkpoint", help="a checkpoint written by `tinyfn train` (RUN/checkpoint.msgpack or "
                        "RUN/best.msgpack)")
    parser.add_argument("--onnx", metavar="FILE", help="write the model (inference, logits out) as ONNX")
    parser.add_argument("--safetensors", metavar="FILE", help="write the params as safetensors (named by path, "
                        "such as dense_0/w; with the model's state under model_state/ when it has one)")
    parser.add_argument("--opset", type=int, choices=range(MIN_OPSET, MAX_OPSET + 1), default=MAX_OPSET,
                        metavar="N", help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default: %(default)s)")
    parser.add_argument("--data", metavar="DIR", help="folder of IDX files (mnist task): the model is traced on a "
                        "test image")


def run(args) -> int:
    """Export the run saved at ``args.checkpoint`` to ``args.onnx`` and/or ``args.safetensors``."""
    if not (args.onnx or args.safetensors):
        raise ValueError("expected --onnx FILE, --safetensors FILE or both")
    if args.onnx and importlib.util.find_spec("onnx") is None:
        raise ValueError("--onnx needs the onnx package: pip install 'tinyfn[onnx]'")
    path = Path(args.checkpoint)
    if not path.is_file():
        found = "the folder" if path.is_dir() else "nothing at"
        raise ValueError(f"expected a checkpoint file written by `tinyfn train`, found {found} {path}")
    model, example, dynamic_axes = _model(path, checkpoint.read_metadata(path).get("config"), args.data)
    params, model_state = _saved_state(path, model, example.shape[1:])
    if args.onnx:
        onnx_model = to_onnx(model, params, example, args.onnx, model_state=model_state or None, opset=args.opset,
                             dynamic_axes=dynamic_axes)
        sizes = [dynamic_axes.get(i, str(n)) for i, n in enumerate(example.shape)]
        print(f"wrote {args.onnx}: {len(onnx_model.graph.node)} nodes, opset {args.opset}, input {example.dtype} "
              f"({', '.join(sizes)})")
    if args.safetensors:
        save_safetensors(args.safetensors, {"params": params, "model_state": model_state} if model_state else params)
        print(f"wrote {args.safetensors}")
    return 0


def _model(path: Path, config, data_dir) -> tuple:
    """``(model, example input of batch 1, dynamic axes)`` of the run whose configuration is ``config``."""
    task = TASKS.get(config["task"]) if isinstance(config, dict) and isinstance(config.get("task"), str) else None
    if task is None:
        found = f"the task {config['task']!r}" if isinstance(config, dict) and "task" in config else "no task"
        raise ValueError(f"{path}: expected a checkpoint written by `tinyfn train` with a known task in its "
                         f"metadata, found {found}")
    if isinstance(task, LanguageTask):
        if not (isinstance(config.get("model"), dict) and isinstance(config.get("vocabulary"), str)):
            raise ValueError(f"{path}: expected the model's settings and vocabulary in the metadata of a "
                             f"{task.name} run, found config keys {sorted(config)}")
        try:
            model = task.model(CharTokenizer(config["vocabulary"]).vocab_size, **config["model"])
            example = np.zeros((1, config["model"]["context"]), np.int64)
        except (TypeError, ValueError, KeyError) as e:  # settings from the file that do not make a model
            raise ValueError(f"{path}: the model's settings {config['model']} in its metadata do not make a "
                             f"{task.name} model ({type(e).__name__}: {e})") from None
        return model, example, {0: "batch", 1: "sequence"}
    if not isinstance(config.get("seed"), int):
        raise ValueError(f"{path}: expected the run's seed in its metadata, found config keys {sorted(config)}")
    return task.model(), task.load(config["seed"], data_dir).x_test[:1], {0: "batch"}


def _saved_state(path: Path, model, input_shape: tuple) -> tuple:
    """``(params, model_state)`` saved at ``path``, after checking the params have the names,
    shapes and dtypes of ``model``'s on inputs ``(batch,) + input_shape``."""
    saved = checkpoint.load(path)
    state = saved.get("state") if isinstance(saved, dict) else None
    if not (isinstance(state, dict) and "params" in state):
        raise ValueError(f"{path}: expected a run's {{'state': {{'params': ...}}, ...}}, found another tree")
    _, expected, _ = init_with_state(model, random.key(0), (-1,) + tuple(input_shape))
    want, found = _leaf_shapes(expected), _leaf_shapes(state["params"])
    for name in sorted(want.keys() | found.keys()):
        if want.get(name) != found.get(name):
            raise ValueError(f"{path}: the params do not fit the task's model: expected {name} "
                             f"{want.get(name, 'absent')}, found {found.get(name, 'absent')}")
    return state["params"], state.get("model_state") or {}


def _leaf_shapes(params) -> dict:
    """``{path: "(64, 10) float32"}`` for each leaf of ``params``."""
    return {path: f"{np.shape(leaf)} {np.asarray(leaf).dtype}" for path, leaf in tree.leaves_with_path(params)}
