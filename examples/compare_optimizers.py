"""Plain SGD (30 epochs, the `tinyfn train digits` defaults) against Adam (10 epochs, lr 3e-3 with
warm-up and cosine decay) on the digits MLP, over several seeds; draws the validation curves.

Run:  python examples/compare_optimizers.py [OUT_PNG]     (default: runs/sgd-vs-adam.png)
It runs the same code path as `tinyfn train digits` and prints the test accuracy of every run.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

from tinyfn import checkpoint, viz
from tinyfn.cli import main as tinyfn_command

RUNS = {
    "sgd, 30 epochs": ["--optimizer", "sgd", "--epochs", "30"],
    "adam warm-up+cosine, 10 epochs": ["--optimizer", "adam", "--lr", "0.003", "--schedule", "warmup-cosine", "--epochs", "10"],
}


def run(flags, seed, folder):
    tinyfn_command(["train", "digits", *flags, "--seed", str(seed), "--out", str(folder), "--no-progress"])
    saved = checkpoint.load(folder / "checkpoint.msgpack")
    accuracy = checkpoint.read_metadata(folder / "checkpoint.msgpack")["test_accuracy"]
    return accuracy, saved["history"]


def main(out_png=Path("runs/sgd-vs-adam.png"), seeds=range(5)):
    results = {label: [] for label in RUNS}
    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, flags in RUNS.items():
            for seed in seeds:
                accuracy, history = run(flags, seed, Path(tmp) / f"{label}-{seed}")
                results[label].append(accuracy)
                if seed == 0:
                    curves[label] = history
    for label, accuracies in results.items():
        print(f"{label:32s} test accuracy per seed {[round(a, 4) for a in accuracies]}  mean {np.mean(accuracies):.4f}")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    print(f"wrote {viz.plot_comparison(curves, out_png, title='digits MLP, seed 0')}")
    return results


if __name__ == "__main__":
    main(Path(sys.argv[1])) if len(sys.argv) > 1 else main()
