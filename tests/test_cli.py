"""The tinyfn command: train writes a run folder; eval, inspect, plot and resume read it."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from tinyfn import checkpoint, datasets, layers, losses, random, tree
from tinyfn.cli import main
from tinyfn.tasks import get_task


def test_train_writes_checkpoint_history_and_curves_then_eval_and_inspect_read_them(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "iris-binary", "--epochs", "5", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "epoch 5/5" in printed and "test accuracy" in printed
    for name in ("checkpoint.msgpack", "best.msgpack", "history.json", "curves.png"):
        assert (out / name).exists(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == [1, 2, 3, 4, 5] and len(history["val_accuracy"]) == 5

    assert main(["eval", str(out / "checkpoint.msgpack")]) == 0
    reported = float(capsys.readouterr().out.split("test accuracy")[1].split()[0])
    assert reported == checkpoint.read_metadata(out / "checkpoint.msgpack")["test_accuracy"]

    assert main(["inspect", str(out / "checkpoint.msgpack")]) == 0
    listing = capsys.readouterr().out
    assert "state/params/dense_0/w" in listing and "(4, 3)" in listing and "float32" in listing

    (out / "curves.png").unlink()
    assert main(["plot", str(out)]) == 0
    assert (out / "curves.png").exists()


def _train(*args):
    assert main(["train", *args, "--no-progress"]) == 0


def _assert_same_states(path_a, path_b):
    a, b = checkpoint.load(path_a)["state"], checkpoint.load(path_b)["state"]
    assert tree.structure(a) == tree.structure(b)
    for (where, x), (_, y) in zip(tree.leaves_with_path(a), tree.leaves_with_path(b)):
        assert np.array_equal(x, y), where


def _history(out):
    return json.loads((out / "history.json").read_text())


def test_an_interrupted_run_resumes_to_the_same_result_as_one_run(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    command = ["train", "iris", "--epochs", "6", "--optimizer", "adam", "--schedule", "cosine", "--no-progress"]
    assert main([*command, "--out", str(one)]) == 0
    with pytest.MonkeyPatch.context() as patch:
        epoch = datasets.Batches.epoch
        patch.setattr(datasets.Batches, "epoch", lambda self, i: epoch(self, i) if i < 3 else _interrupt())
        assert main([*command, "--out", str(two)]) == 130  # Ctrl-C during epoch 4
    assert capsys.readouterr().err.strip() == "tinyfn train: interrupted"
    assert checkpoint.read_metadata(two / "checkpoint.msgpack")["epoch"] == 3
    assert main([*command, "--out", str(two), "--resume"]) == 0
    _assert_same_states(one / "checkpoint.msgpack", two / "checkpoint.msgpack")
    assert _history(two)["learning_rate"] == _history(one)["learning_rate"]


def _interrupt():
    raise KeyboardInterrupt


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    _train("iris", "--epochs", "2", "--out", str(out))
    assert main(["train", "iris", "--lr", "0.3", "--out", str(out), "--resume", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "lr: saved 0.1, now 0.3" in error and "--extend" not in error


def test_flags_of_the_other_kind_of_task_are_refused(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "iris", "--steps", "100", "--eval-every", "10", "--out", out, "--no-progress"]) == 2
    assert "--steps, --eval-every: the iris task trains by epochs, so its flags are --epochs, --patience, --monitor" in capsys.readouterr().err
    assert main(["train", "shakespeare-char", "--epochs", "3", "--out", out, "--no-progress"]) == 2
    assert "--epochs: the shakespeare-char task trains by steps, so its flags are --steps, --eval-every" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_extend_of_a_constant_schedule_is_the_longer_run(tmp_path, capsys):
    short, long = tmp_path / "short", tmp_path / "long"
    _train("iris", "--epochs", "5", "--out", str(long))
    _train("iris", "--epochs", "3", "--out", str(short))
    _train("iris", "--epochs", "5", "--out", str(short), "--extend")
    assert "epochs 4-5 use its final rate 0.1" in capsys.readouterr().out
    _assert_same_states(long / "checkpoint.msgpack", short / "checkpoint.msgpack")


def test_extend_keeps_the_length_of_the_schedule_and_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    _train("iris", "--epochs", "4", "--schedule", "step", "--lr", "0.2", "--out", str(out))
    planned = _history(out)["learning_rate"]
    _train("iris", "--epochs", "6", "--out", str(out), "--extend")
    assert "the step learning-rate schedule keeps its 4 epochs: epochs 5-6 use its final rate 0.002" in capsys.readouterr().out
    rates = _history(out)["learning_rate"]
    assert rates[:4] == planned and np.allclose(rates[4:], [0.002, 0.002])
    assert checkpoint.read_metadata(out / "checkpoint.msgpack")["config"]["epochs"] == 6


def test_extend_is_refused_when_the_schedule_ends_at_zero_or_the_epochs_do_not_grow(tmp_path, capsys):
    out = tmp_path / "run"
    _train("iris", "--epochs", "2", "--schedule", "cosine", "--out", str(out))
    capsys.readouterr()
    assert main(["train", "iris", "--epochs", "4", "--out", str(out), "--extend", "--no-progress"]) == 2
    assert "the cosine schedule of this run ends at learning rate 0" in capsys.readouterr().err
    assert main(["train", "iris", "--epochs", "2", "--out", str(out), "--extend", "--no-progress"]) == 2
    assert "expected --epochs greater than the run's 2, found 2" in capsys.readouterr().err


def test_resuming_a_run_that_stopped_early_trains_no_further(tmp_path, capsys):
    out = tmp_path / "run"
    # validation accuracy is at its best from epoch 1 on and later epochs only tie it: a stop at epoch 3
    _train("iris-binary", "--monitor", "val_accuracy", "--patience", "2", "--out", str(out))
    assert _history(out)["epoch"] == [1, 2, 3]
    _train("iris-binary", "--out", str(out), "--resume")
    assert "the run stopped early at epoch 3" in capsys.readouterr().out
    assert _history(out)["epoch"] == [1, 2, 3]


def test_best_checkpoint_is_the_epoch_of_lowest_validation_loss(tmp_path, capsys):
    out = tmp_path / "run"
    _train("iris-binary", "--out", str(out))
    history = _history(out)
    best = checkpoint.read_metadata(out / "best.msgpack")["epoch"]
    assert best == history["epoch"][int(np.argmin(history["val_loss"]))]
    assert best > 1 and history["val_loss"][best - 1] < history["val_loss"][0] / 5


def test_monitoring_accuracy_keeps_the_first_of_tied_epochs(tmp_path, capsys):
    out = tmp_path / "run"
    _train("iris-binary", "--epochs", "6", "--monitor", "val_accuracy", "--out", str(out))
    accuracy = _history(out)["val_accuracy"]
    first_best = accuracy.index(max(accuracy)) + 1
    assert checkpoint.read_metadata(out / "best.msgpack")["epoch"] == first_best
    assert accuracy.count(max(accuracy)) > 1  # a tie, which the earlier epoch wins


def test_a_digits_checkpoint_loads_into_the_mlp_a_user_writes(tmp_path, capsys):
    out = tmp_path / "run"
    _train("digits", "--epochs", "1", "--out", str(out))
    user_model = layers.serial(layers.Dense(128, activation="relu"), layers.Dense(64, activation="relu"), layers.Dense(10))
    _, user_params = user_model.init(random.key(7), (-1, 64))
    saved = checkpoint.load(out / "checkpoint.msgpack")
    target = {**saved, "state": {**saved["state"], "params": user_params}}
    params = checkpoint.load(out / "checkpoint.msgpack", target=target)["state"]["params"]
    data = get_task("digits").load(0)  # the test split of seed 0, as the run held it out
    accuracy = losses.accuracy(user_model.apply(params, data.x_test), data.y_test)
    assert accuracy == checkpoint.read_metadata(out / "checkpoint.msgpack")["test_accuracy"] > 0.8


def test_errors_are_reported_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"not a checkpoint at all")
    result = subprocess.run([sys.executable, "-m", "tinyfn.cli", "eval", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "tinyfn eval: error:" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = subprocess.run([sys.executable, "-m", "tinyfn.cli", "train", "mnist", "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and "--data DIR" in result.stderr


def test_train_mnist_runs_the_cnn_on_idx_files(tmp_path, capsys):
    import gzip

    from test_datasets import _idx_bytes

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 48), ("t10k", 12)):
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(_idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 0x08))
        )
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(rng.integers(0, 10, n, dtype=np.uint8), 0x08))
    out = tmp_path / "run"
    assert main(["train", "mnist", "--data", str(tmp_path), "--epochs", "1", "--batch-size", "16", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "conv2d" in printed.lower() and "(N, 64, 12, 12)" in printed
    params = checkpoint.load(out / "checkpoint.msgpack")["state"]["params"]
    assert params["conv2d_0"]["w"].shape == (32, 1, 3, 3)


def _train_on_a_terminal(out, before=""):
    """``tinyfn train iris`` with stderr on a pseudo-terminal 100 columns wide; returns what it showed."""
    fcntl, termios = pytest.importorskip("fcntl"), pytest.importorskip("termios")  # Unix only
    main_fd, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    code = f"{before}\nimport sys\nfrom tinyfn.cli import main\nsys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", code, "train", "iris", "--epochs", "2", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=terminal, text=True)
    os.close(terminal)  # the child holds the only other end now
    shown = b""
    while True:  # read while the child writes, so a full terminal buffer cannot block it
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # the child has exited and closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(main_fd)
    printed, _ = process.communicate()
    assert process.returncode == 0 and "test accuracy" in printed
    return shown.decode()


def test_a_progress_bar_shows_on_a_terminal_when_tqdm_is_installed(tmp_path):
    pytest.importorskip("tqdm")
    shown = _train_on_a_terminal(tmp_path / "run")
    assert "epoch 1/2:" in shown and "0/7" in shown and "batch/s" in shown


def test_training_works_without_tqdm_and_says_how_to_get_a_bar(tmp_path):
    shown = _train_on_a_terminal(tmp_path / "run", before="import sys; sys.modules['tqdm'] = None")
    assert shown.strip() == "(no progress bar: it needs tqdm, pip install tqdm or tinyfn's extra 'progress')"
    assert (tmp_path / "run" / "checkpoint.msgpack").exists()


def test_export_writes_an_onnx_model_that_gives_the_runs_outputs(tmp_path, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    out = tmp_path / "run"  # the CNN with BatchNorm: its running statistics go into the model
    assert main(["train", "digits-cnn", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    assert main(["export", str(out / "checkpoint.msgpack"), "--onnx", str(tmp_path / "m.onnx")]) == 0
    state = checkpoint.load(out / "checkpoint.msgpack")["state"]
    model = get_task("digits-cnn").model()
    x = datasets.digits(images=True)[0][:5] / 16.0
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x.astype(np.float32)})
    expected, _ = model.apply(state["params"], x.astype(np.float32), state=state["model_state"])
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    capsys.readouterr()
    assert main(["export", str(out / "checkpoint.msgpack")]) == 2
    assert "tinyfn export: error: expected --onnx FILE, --safetensors FILE or both" in capsys.readouterr().err
