"""Character-level language modelling: the tokenizer, the Shakespeare data and its windows, the
shakespeare-char task (on a tiny model), `tinyfn sample`, and exact resume of a run by steps."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from tinyfn import checkpoint, datasets, random, tasks, tree
from tinyfn.cli import main
from tinyfn.text import CharTokenizer, generate

# ----------------------------------------------------------------------------- the tokenizer


def test_the_tokenizer_numbers_the_sorted_characters_and_round_trips():
    tokenizer = CharTokenizer.from_text("hello world")
    assert tokenizer.vocabulary == " dehlorw" and tokenizer.vocab_size == 8
    ids = tokenizer.encode("hello")
    assert ids.dtype == np.int64 and ids.tolist() == [3, 2, 4, 4, 5]
    assert tokenizer.decode(ids) == "hello" and tokenizer.decode([7, 5, 6, 4, 1]) == "world"
    saved = CharTokenizer(tokenizer.vocabulary)  # rebuilt from the vocabulary a run saves
    assert saved.encode("low").tolist() == [4, 5, 7]
    assert CharTokenizer("zyx").encode("xyz").tolist() == [2, 1, 0]  # the vocabulary's order, not sorted
    accented = CharTokenizer.from_text("né à Paris")
    assert accented.decode(accented.encode("à né")) == "à né"
    assert tokenizer.encode("").shape == (0,) and tokenizer.decode([]) == ""


def test_the_tokenizer_refuses_unknown_characters_and_ids_naming_them():
    tokenizer = CharTokenizer.from_text("hello world")
    with pytest.raises(ValueError, match=r"found 'HW' \(first at index 0\)"):
        tokenizer.encode("Hello World")
    with pytest.raises(ValueError, match=r"found 'é' \(first at index 3\)"):
        tokenizer.encode("helé")
    with pytest.raises(ValueError, match=r"expected ids in \[0, 8\), found \[8, -1\]"):
        tokenizer.decode([1, 8, -1])
    with pytest.raises(TypeError, match="integer ids"):
        tokenizer.decode(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"more than once"):
        CharTokenizer("abca")
    with pytest.raises(ValueError, match="non-empty"):
        CharTokenizer("")


def test_the_shakespeare_text_round_trips_through_its_62_characters():
    text = datasets.shakespeare()
    tokenizer = CharTokenizer.from_text(text)
    assert len(text) == 1_154_883 and tokenizer.vocab_size == 62  # as the data's README states
    assert tokenizer.decode(tokenizer.encode(text)) == text


# ----------------------------------------------------------------------------- splits and windows


def test_the_splits_are_the_first_90_percent_and_the_last_10_percent_by_position():
    text = datasets.shakespeare()
    train, validation = datasets.shakespeare("train"), datasets.shakespeare("validation")
    assert len(validation) == 115_488 and train + validation == text
    assert train.startswith("Bernardo:\nWho's there?\n")  # the first speech of Hamlet
    ids = np.arange(20)
    head, tail = datasets.split_by_position(ids, 0.25)
    assert head.tolist() == list(range(15)) and tail.tolist() == list(range(15, 20))
    with pytest.raises(ValueError, match="validation_fraction"):
        datasets.split_by_position(ids, 1.0)
    with pytest.raises(ValueError, match="split"):
        datasets.shakespeare("test")


def test_windows_from_a_key_are_reproducible_and_the_targets_are_the_inputs_shifted_by_one():
    ids = np.arange(1000) * 7  # an id tells its position, so a window tells where it starts
    inputs, targets = datasets.random_windows(random.key(3), ids, 16, 10)
    assert inputs.shape == targets.shape == (16, 10)
    starts = inputs[:, 0] // 7
    np.testing.assert_array_equal(inputs, (starts[:, None] + np.arange(10)) * 7)
    np.testing.assert_array_equal(targets, inputs + 7)
    assert starts.min() >= 0 and starts.max() <= 1000 - 11
    again = datasets.random_windows(random.key(3), ids, 16, 10)
    other = datasets.random_windows(random.key(4), ids, 16, 10)
    assert np.array_equal(again[0], inputs) and np.array_equal(again[1], targets)
    assert not np.array_equal(other[0], inputs)
    # every start can be drawn, the last one included: all 3 of them, over a few keys
    drawn = {int(datasets.random_windows(random.key(k), np.arange(5), 4, 2)[0][i, 0]) for k in range(10) for i in range(4)}
    assert drawn == {0, 1, 2}


def test_windows_out_of_the_sequence_are_refused():
    with pytest.raises(ValueError, match=r"starts in \[0, 6\]"):
        datasets.windows_at(np.arange(10), np.array([2, 7]), 3)
    with pytest.raises(ValueError, match="at least 11 ids"):
        datasets.random_windows(random.key(0), np.arange(10), 2, 10)


# ----------------------------------------------------------------------------- sampling


def test_generate_draws_from_the_softmax_of_the_last_position_at_the_temperature():
    # A "model" that always gives id 2 probability e^2 / (e^2 + 2) = 0.787 at temperature 1.
    lengths = []

    def logits_fn(ids):
        lengths.append(ids.shape)
        return np.tile(np.array([0.0, 0.0, 2.0]), (1, ids.shape[1], 1))

    draws = generate(logits_fn, [1], 2000, random.key(0), context=4)
    assert draws.shape == (2000,) and abs(np.mean(draws == 2) - np.e**2 / (np.e**2 + 2)) < 0.03
    assert lengths[:5] == [(1, 1), (1, 2), (1, 3), (1, 4), (1, 4)]  # the prompt, then the last 4 ids at most
    cold = generate(logits_fn, [1], 2000, random.key(0), temperature=0.25)
    assert np.mean(cold == 2) > 0.99  # e^8 / (e^8 + 2)
    assert np.array_equal(generate(logits_fn, [1], 50, random.key(5)), generate(logits_fn, [1], 50, random.key(5)))
    with pytest.raises(ValueError, match="temperature"):
        generate(logits_fn, [1], 5, random.key(0), temperature=0.0)


# ----------------------------------------------------------------------------- the task, on a tiny model


@pytest.fixture
def tiny_task(monkeypatch):
    """shakespeare-char with a one-block model of width 16, context 16, and 16 validation windows."""
    task = dataclasses.replace(
        tasks.TASKS["shakespeare-char"],
        model_config={"context": 16, "width": 16, "depth": 1, "heads": 2},
        validation_windows=16,
        batch_size=4,
        steps=6,
        eval_every=3,
    )
    monkeypatch.setitem(tasks.TASKS, "shakespeare-char", task)
    return task


def _train(*args):
    assert main(["train", "shakespeare-char", *args, "--no-progress"]) == 0


def _history(out):
    return json.loads((out / "history.json").read_text())


def _sample(*args):
    return subprocess.run([sys.executable, "-m", "tinyfn.cli", "sample", *map(str, args)], capture_output=True, text=True)


def test_the_task_trains_by_steps_and_writes_its_run_folder(tmp_path, tiny_task, capsys):
    out = tmp_path / "run"
    _train("--out", str(out), "--lr", "0.01")
    printed = capsys.readouterr().out
    assert "step 3/6" in printed and "step 6/6" in printed and "nats/char" in printed
    for name in ("checkpoint.msgpack", "best.msgpack", "history.json", "curves.png"):
        assert (out / name).exists(), name
    history = _history(out)
    assert history["step"] == [3, 6] and len(history["val_loss"]) == 2
    assert history["val_loss"][1] < history["val_loss"][0]
    meta = checkpoint.read_metadata(out / "checkpoint.msgpack")
    assert meta["step"] == 6 and meta["config"]["model"] == tiny_task.model_config
    assert meta["config"]["vocabulary"] == CharTokenizer.from_text(datasets.shakespeare()).vocabulary
    assert checkpoint.read_metadata(out / "best.msgpack")["step"] == history["step"][int(np.argmin(history["val_loss"]))]
    params = checkpoint.load(out / "checkpoint.msgpack")["state"]["params"]
    assert params["embedding_0"]["w"].shape == (62, 16) and params["dense_4"]["w"].shape == (16, 62)

    # what the run ends with is what `tinyfn sample RUN` writes with its defaults
    shown = printed.split("writes it again, `--seed N` others):\n", 1)[1]
    assert shown == _sample(out).stdout

    assert main(["eval", str(out / "checkpoint.msgpack")]) == 0
    reported = float(capsys.readouterr().out.split("validation loss ")[1].split()[0])
    assert reported == pytest.approx(history["val_loss"][-1], abs=1e-4)


def _sample_in_process(capsys, *args):
    assert main(["sample", *map(str, args)]) == 0
    return capsys.readouterr().out


def test_sample_gives_the_same_text_for_the_same_seed_and_another_for_another(tmp_path, tiny_task, capsys):
    out = tmp_path / "run"
    _train("--out", str(out), "--steps", "2")
    capsys.readouterr()
    first = _sample_in_process(capsys, out, "--tokens", "40", "--seed", "1", "--prompt", "Hamlet:")
    again = _sample_in_process(capsys, out / "checkpoint.msgpack", "--tokens", "40", "--seed", "1", "--prompt", "Hamlet:")
    other = _sample_in_process(capsys, out / "best.msgpack", "--tokens", "40", "--seed", "2", "--prompt", "Hamlet:")
    assert first == again != other
    for text in (first, other):
        assert text.startswith("Hamlet:") and len(text) == len("Hamlet:") + 40 + 1  # and print's line break


def test_sample_refuses_mistakes_in_one_line(tmp_path, tiny_task, capsys):
    out = tmp_path / "run"
    _train("--out", str(out), "--steps", "1")
    iris = tmp_path / "iris"
    assert main(["train", "iris", "--epochs", "1", "--out", str(iris), "--no-progress"]) == 0
    capsys.readouterr()
    mistakes = {
        (out, "--temperature", "0"): "--temperature: expected a number > 0, found '0'",
        (out, "--temperature", "nan"): "--temperature: expected a number > 0, found 'nan'",
        (out, "--tokens", "-3"): "--tokens: expected an integer > 0, found '-3'",
        (out, "--seed", "x"): "--seed: expected an integer >= 0, found 'x'",
        (out, "--prompt", "Où?"): "found 'ù'",
        (out, "--prompt", ""): "found an empty prompt",
        (tmp_path / "nothing",): "found nothing at",
        (iris,): "found a run of the task 'iris'",
    }
    for args, message in mistakes.items():
        try:
            status = main(["sample", *map(str, args)])
        except SystemExit as e:  # argparse's own exit
            status = e.code
        error = capsys.readouterr().err
        assert status == 2 and message in error, (args, error)
        assert error.startswith("tinyfn sample: error:") and len(error.strip().splitlines()) == 1
    for args in [(out, "--temperature", "-1"), (out, "--prompt", "Où?")]:  # as a user sees it: no traceback
        result = _sample(*args)
        assert result.returncode == 2 and result.stderr.startswith("tinyfn sample: error:")
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _interrupt():
    raise KeyboardInterrupt


def test_an_interrupted_run_by_steps_resumes_bitwise_to_the_uninterrupted_one(tmp_path, tiny_task, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    command = ["--steps", "7", "--eval-every", "2"]
    _train(*command, "--out", str(one))
    with pytest.MonkeyPatch.context() as patch:
        windows = datasets.random_windows
        calls = iter(range(100))
        patch.setattr(datasets, "random_windows", lambda *a: windows(*a) if next(calls) < 5 else _interrupt())
        assert main(["train", "shakespeare-char", *command, "--out", str(two), "--no-progress"]) == 130  # in step 6
    assert checkpoint.read_metadata(two / "checkpoint.msgpack")["step"] == 4
    _train("--out", str(two), "--resume")
    assert "resuming" in capsys.readouterr().out
    a, b = checkpoint.load(one / "checkpoint.msgpack"), checkpoint.load(two / "checkpoint.msgpack")
    assert tree.structure(a["state"]) == tree.structure(b["state"])
    for (where, x), (_, y) in zip(tree.leaves_with_path(a["state"]), tree.leaves_with_path(b["state"])):
        assert np.array_equal(x, y), where
    for name in ("step", "train_loss", "val_loss", "learning_rate"):
        assert _history(two)[name] == _history(one)[name], name
    assert _history(one)["step"] == [2, 4, 6, 7]


def test_extend_trains_on_at_the_final_rate_as_the_longer_run_would(tmp_path, tiny_task, capsys):
    short, long = tmp_path / "short", tmp_path / "long"
    _train("--schedule", "constant", "--lr", "0.003", "--steps", "6", "--out", str(long))
    _train("--schedule", "constant", "--lr", "0.003", "--steps", "3", "--out", str(short))
    _train("--steps", "6", "--out", str(short), "--extend")
    assert "keeps its 3 steps: steps 4-6 use its final rate 0.003" in capsys.readouterr().out
    a, b = checkpoint.load(long / "checkpoint.msgpack"), checkpoint.load(short / "checkpoint.msgpack")
    for (where, x), (_, y) in zip(tree.leaves_with_path(a["state"]), tree.leaves_with_path(b["state"])):
        assert np.array_equal(x, y), where
    _train("--steps", "3", "--out", str(tmp_path / "cosine"))  # warmup-cosine, the default, ends at 0
    assert main(["train", "shakespeare-char", "--steps", "5", "--out", str(tmp_path / "cosine"), "--extend"]) == 2
    assert "ends at learning rate 0, so more steps would not change it" in capsys.readouterr().err
