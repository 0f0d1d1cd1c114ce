"""A user's mistake on the command line ends in one line naming what was expected and what was
found, exit status 2, and no traceback.

A few cases run ``tinyfn`` in a fresh interpreter, as a user would; the others call
``main`` in this process (where a traceback would be an exception failing the test), which
is much faster.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

import tinyfn
from tinyfn import checkpoint
from tinyfn.cli import main


def tinyfn_command(*args):
    """Run ``tinyfn ARGS`` in a fresh interpreter; returns the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, "-m", "tinyfn.cli", *args], capture_output=True, text=True)


def in_process(capsys, *args):
    """Run ``main(ARGS)`` here; returns a CompletedProcess with its exit status, stdout and stderr."""
    status = main(list(args))
    printed = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, printed.out, printed.err)


def assert_one_line_error(result, *fragments):
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinyfn"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "0"], "argument --epochs: expected an integer > 0, found '0'"),
        (["--epochs", "-1"], "argument --epochs: expected an integer > 0, found '-1'"),
        (["--epochs", "1.5"], "argument --epochs: expected an integer > 0, found '1.5'"),
        (["--batch-size", "0"], "argument --batch-size: expected an integer > 0, found '0'"),
        (["--checkpoint-every", "0"], "argument --checkpoint-every: expected an integer > 0, found '0'"),
        (["--patience", "-1"], "argument --patience: expected an integer >= 0, found '-1'"),
        (["--seed", "-3"], "argument --seed: expected an integer >= 0, found '-3'"),
        (["--lr", "0"], "argument --lr: expected a number > 0, found '0'"),
        (["--lr", "nan"], "argument --lr: expected a number > 0, found 'nan'"),
        (["--weight-decay", "-0.5"], "argument --weight-decay: expected a number >= 0, found '-0.5'"),
        (["--monitor", "accuracy"], "argument --monitor: invalid choice: 'accuracy'"),
    ],
)
def test_every_flag_is_validated_in_one_line(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["train", "iris", "--out", str(tmp_path / "run"), *flags])
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tinyfn train: error: {message}"), lines
    assert not (tmp_path / "run").exists()


def test_a_bad_flag_in_a_real_process_gives_one_line_and_status_2():
    assert_one_line_error(tinyfn_command("train", "iris", "--epochs", "0"), "expected an integer > 0, found '0'")


def test_version_prints_the_package_version():
    result = tinyfn_command("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"tinyfn {tinyfn.__version__}"


def test_out_naming_a_file_is_refused(tmp_path, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    result = in_process(capsys, "train", "iris", "--epochs", "1", "--out", str(file))
    assert_one_line_error(result, "--out: expected a folder for the run, found the file", str(file))
    assert file.read_text() == "mine"


@pytest.mark.parametrize("command", ["eval", "inspect"])
def test_eval_and_inspect_of_a_folder_point_to_the_checkpoint_file(command, tmp_path, capsys):
    (tmp_path / "checkpoint.msgpack").write_bytes(b"")
    result = in_process(capsys, command, str(tmp_path))
    assert_one_line_error(result, "expected a checkpoint file, found the folder", f"did you mean {tmp_path / 'checkpoint.msgpack'}?")


def test_eval_of_a_checkpoint_without_a_seed_names_what_is_missing(tmp_path, capsys):
    path = tmp_path / "mine.msgpack"
    checkpoint.save(path, {"state": {"params": {}}}, metadata={"config": {"task": "iris"}})
    result = in_process(capsys, "eval", str(path))
    assert_one_line_error(result, "expected a checkpoint written by `tinyfn train`, with the task and seed", "found config keys ['task']")


def test_eval_of_a_checkpoint_of_another_model_names_the_first_parameter_that_differs(tmp_path, capsys):
    path = tmp_path / "other.msgpack"
    params = {"dense_0": {"b": np.zeros(16, np.float32), "w": np.zeros((4, 16), np.float32)},
              "dense_2": {"b": np.zeros(3, np.float32), "w": np.zeros((16, 3), np.float32)}}  # the names before issue 14
    checkpoint.save(path, {"state": {"params": params}, "history": {"epoch": [1]}}, metadata={"config": {"task": "iris", "seed": 0}})
    result = in_process(capsys, "eval", str(path))
    assert_one_line_error(result, "the params do not fit the task's model: expected dense_1/b (3,) float32, found absent")


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    (tmp_path / "history.json").write_text(json.dumps({"epoch": [1, 2], "train_loss": [1.0, 0.5]}))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    result = in_process(capsys, "plot", str(tmp_path))
    assert_one_line_error(result, "plotting needs matplotlib", "pip install 'tinyfn[plot]'")
    assert not (tmp_path / "curves.png").exists()


def test_plot_of_a_folder_without_history_names_what_it_expected(tmp_path, capsys):
    assert_one_line_error(in_process(capsys, "plot", str(tmp_path)), "expected a run folder with history.json, found none")


def test_resume_before_any_checkpoint_exists_says_so(tmp_path, capsys):
    result = in_process(capsys, "train", "iris", "--resume", "--out", str(tmp_path / "new"))
    assert_one_line_error(result, "expected a run to continue in", "found no", "train it first, without --resume")


def test_resume_with_another_epochs_is_not_silent(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "iris", "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    before = (out / "checkpoint.msgpack").read_bytes()
    result = tinyfn_command("train", "iris", "--epochs", "4", "--resume", "--out", str(out), "--no-progress")
    assert_one_line_error(result, "epochs: saved 2, now 4", "pass --extend")
    assert (out / "checkpoint.msgpack").read_bytes() == before


def test_a_loss_that_turns_nan_stops_training_naming_the_epoch_and_step(tmp_path):
    result = tinyfn_command("train", "iris", "--lr", "1e30", "--epochs", "3", "--out", str(tmp_path), "--no-progress")
    assert "Traceback" not in result.stderr and result.returncode == 2
    # numpy's overflow warnings may come first; the error is the last line
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tinyfn train: error: epoch 1, step ") and "the training loss is nan" in last
