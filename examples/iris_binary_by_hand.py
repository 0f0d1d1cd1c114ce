"""Iris setosa vs versicolor with the core API only: a 4-3-1 sigmoid network, binary
cross-entropy, the pure SGD step, 30 epochs, gradients from a static graph. No layers
library, no CLI: every part is visible.

Run:  python examples/iris_binary_by_hand.py [SEED]
"""

import sys

import numpy as np

import tinyfn
from tinyfn import datasets, ops, random


def init_params(key):
    """Glorot-uniform weights for 4 -> 3 -> 1, zero biases; a dict pytree."""
    k1, k2 = random.split(key)
    limit1, limit2 = np.sqrt(6 / (4 + 3)), np.sqrt(6 / (3 + 1))
    return {
        "hidden": {"w": random.uniform(k1, (4, 3), minval=-limit1, maxval=limit1), "b": np.zeros(3, np.float32)},
        "out": {"w": random.uniform(k2, (3, 1), minval=-limit2, maxval=limit2), "b": np.zeros(1, np.float32)},
    }


def predict(params, x):
    """Logits of shape (batch,) for inputs of shape (batch, 4)."""
    h = ops.sigmoid(x @ params["hidden"]["w"] + params["hidden"]["b"])
    return ops.reshape(h @ params["out"]["w"] + params["out"]["b"], (-1,))


def loss(params, x, y):
    """Binary cross-entropy written as plain Python: -mean(y log s + (1 - y) log(1 - s)), stably."""
    z = predict(params, x)
    return ops.mean(ops.softplus(z) - z * y)  # softplus(z) - z y equals the cross-entropy of sigmoid(z)


def main(seed=0):
    x, y, _ = datasets.iris()
    keep = y < 2
    x_train, y_train, x_test, y_test = datasets.train_test_split(random.key(seed), x[keep], y[keep].astype(np.float32))
    x_train, x_test = datasets.standardize(x_train, x_test)
    params = init_params(random.key(seed + 100))
    # static_graph: loss is traced once per batch shape, then its recorded primitives are replayed
    grad_fn = tinyfn.value_and_grad(loss, static_graph=True)
    for epoch, (xb, yb) in enumerate(datasets.batches(random.key(seed + 1), x_train, y_train, 8).epochs(30)):
        value, grads = grad_fn(params, xb, yb)
        params = tinyfn.tree.map(lambda p, g: p - 0.5 * g, params, grads)  # the pure SGD step
    accuracy = np.mean((predict(params, x_test) > 0) == (y_test > 0.5))
    print(f"seed {seed}: final batch loss {value:.4f}, test accuracy {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
