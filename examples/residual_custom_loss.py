"""A model with a residual branch and a custom loss written as plain Python.

The loss is cross-entropy with label smoothing plus an L2 penalty on the weights, written
with ordinary operators on traced values; tinyfn differentiates all of it.

Run:  python examples/residual_custom_loss.py
"""

import numpy as np

import tinyfn
from tinyfn import datasets, layers, ops, optim, random, tree

model = layers.serial(
    layers.Dense(64),
    layers.Relu(),
    layers.residual(layers.serial(layers.Dense(64), layers.Tanh(), layers.Dense(64))),
    layers.Relu(),
    layers.Dense(10),
)


def smoothed_cross_entropy(logits, labels, smoothing=0.1):
    """Cross-entropy against (1 - smoothing) * one_hot + smoothing / classes."""
    classes = logits.shape[-1]
    targets = np.full((len(labels), classes), smoothing / classes, np.float32)
    targets[np.arange(len(labels)), labels] += 1 - smoothing
    return -(targets * ops.log_softmax(logits)).sum(axis=-1).mean()


def loss(params, x, y):
    weights = [w for path, w in tree.leaves_with_path(params) if path.endswith("/w")]
    l2 = sum((w * w).sum() for w in weights)
    return smoothed_cross_entropy(model.apply(params, x), y) + 1e-4 * l2


def main(seed=0, epochs=15):
    x, y = datasets.digits()
    x_train, y_train, x_test, y_test = datasets.train_test_split(random.key(seed), x, y)
    x_train, x_test = datasets.standardize(x_train, x_test)
    _, params = model.init(random.key(seed + 1), (-1, 64))
    grad_fn = tinyfn.value_and_grad(loss)
    batches = datasets.batches(random.key(seed + 2), x_train, y_train, 32)
    for epoch in range(epochs):
        for xb, yb in batches.epoch(epoch):
            value, grads = grad_fn(params, xb, yb)
            params = optim.sgd_step(params, grads, 0.05)
        accuracy = np.mean(model.apply(params, x_test).argmax(-1) == y_test)
        print(f"epoch {epoch + 1:2d}  last batch loss {value:.4f}  test accuracy {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main()
