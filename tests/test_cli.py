"""The tinyfn command: train writes a run folder; eval, inspect, plot and resume read it."""

import json
import subprocess
import sys

import numpy as np

from tinyfn import checkpoint
from tinyfn.cli import main


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


def test_resume_continues_to_the_same_result_as_one_run(tmp_path, capsys):
    one = tmp_path / "one"
    two = tmp_path / "two"
    main(["train", "iris", "--epochs", "6", "--optimizer", "adam", "--out", str(one), "--no-progress"])
    main(["train", "iris", "--epochs", "3", "--optimizer", "adam", "--out", str(two), "--no-progress"])
    main(["train", "iris", "--epochs", "6", "--optimizer", "adam", "--out", str(two), "--no-progress", "--resume"])
    a = checkpoint.load(one / "checkpoint.msgpack")["state"]["params"]
    b = checkpoint.load(two / "checkpoint.msgpack")["state"]["params"]
    for layer in a:
        for name in a[layer]:
            assert np.array_equal(a[layer][name], b[layer][name])


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "iris", "--epochs", "2", "--out", str(out), "--no-progress"])
    try:
        main(["train", "iris", "--epochs", "4", "--lr", "0.3", "--out", str(out), "--resume", "--no-progress"])
    except SystemExit as e:
        assert "lr: saved 0.1, now 0.3" in str(e)
    else:
        raise AssertionError("resuming with another learning rate should fail")


def test_errors_are_reported_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"not a checkpoint at all")
    result = subprocess.run([sys.executable, "-m", "tinyfn.cli", "eval", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "tinyfn eval: error:" in result.stderr and "Traceback" not in result.stderr
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
