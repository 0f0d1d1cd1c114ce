"""Save a training state to a msgpack checkpoint, inspect it, and load it back.

    python examples/checkpoint_roundtrip.py
"""

import tempfile
from pathlib import Path

import numpy as np

from tinyfn import checkpoint, random, tree


def training_state():
    """Parameters of a 784-64-10 MLP, a momentum buffer, the step, a PRNG key and a history."""
    k0, k1, k_state = random.split(random.key(0), 3)
    params = {
        "dense_0": {"w": random.normal(k0, (784, 64)), "b": np.zeros(64, np.float32)},
        "dense_1": {"w": random.normal(k1, (64, 10)), "b": np.zeros(10, np.float32)},
    }
    return {
        "params": params,
        "opt_state": {"momentum": tree.zeros_like(params)},
        "step": 1200,
        "key": k_state,
        "history": {"loss": [2.3, 0.9, 0.41], "accuracy": [0.12, 0.71, 0.88]},
    }


def main(folder: Path):
    """Save, describe and reload a checkpoint in ``folder``; returns the reloaded state."""
    state = training_state()
    path = Path(folder) / "checkpoint.msgpack"
    checkpoint.save(path, state, metadata={"epoch": 3, "model": "mlp 784-64-10"})
    print(checkpoint.describe(path))

    # Load it back: the same tree, bit for bit (arrays come back read-only).
    restored = checkpoint.load(path)
    assert np.array_equal(restored["params"]["dense_0"]["w"], state["params"]["dense_0"]["w"])
    print("\nmetadata:", checkpoint.read_metadata(path))

    # Load into a template: a model of another shape is refused with the paths that differ.
    twelve_classes = {"w": np.zeros((64, 12), np.float32), "b": np.zeros(12, np.float32)}
    template = {**state, "params": {**state["params"], "dense_1": twelve_classes}}
    try:
        checkpoint.load(path, target=template)
    except checkpoint.CheckpointMismatchError as error:
        print(f"\n{error}")
    return restored


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        main(Path(folder))
