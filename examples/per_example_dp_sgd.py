"""DP-SGD on the digits: the 64-128-64-10 ReLU MLP trained on privatised gradients.

Each step takes every example's gradient (``per_example_grads``, one traced pass), scales it
down to norm at most ``clip_norm``, sums, adds Gaussian noise of standard deviation
``noise_multiplier * clip_norm`` drawn from an explicit key, and divides by the batch size
(Abadi et al., "Deep Learning with Differential Privacy", 2016). No example can move the
parameters by more than ``lr * clip_norm / batch_size`` before the noise. The mechanics only:
the privacy budget (epsilon) that a run spends needs an accountant, and the guarantees assume
batches drawn by Poisson sampling rather than the shuffled batches used here.

Run:  python examples/per_example_dp_sgd.py
"""

import numpy as np

from tinyfn import datasets, layers, losses, optim, random, train, tree
from tinyfn.per_example import per_example_value_and_grads


def privatised_mean(grads, key, clip_norm: float, noise_multiplier: float):
    """DP-SGD's gradient from per-example gradients (leaves ``(B, ...)``): each example's
    gradient clipped to norm ``clip_norm``, summed, noised, divided by B. Returns
    ``(gradient tree shaped like one example's, fraction of examples clipped)``."""
    leaves, structure = tree.flatten(grads)
    batch = len(leaves[0])
    norms = np.sqrt(sum(np.sum(leaf.reshape(batch, -1) ** 2, axis=1) for leaf in leaves))  # (B,)
    scales = clip_norm / np.maximum(norms, clip_norm)  # min(1, clip_norm / norm), without dividing by 0
    noise_keys = random.split(key, len(leaves))
    private = [
        (np.tensordot(scales, leaf, axes=1) + noise_multiplier * clip_norm * random.normal(k, leaf.shape[1:], leaf.dtype)) / batch
        for leaf, k in zip(leaves, noise_keys)
    ]
    return tree.unflatten(structure, private), float(np.mean(norms > clip_norm))


def dp_sgd_step(model, lr: float, clip_norm: float, noise_multiplier: float):
    """``step(state, (x, y)) -> (state, metrics)`` for :func:`tinyfn.train.fit`, with state
    ``{"params", "key"}``: one DP-SGD update."""

    def example_losses(params, x, y):
        return losses.softmax_cross_entropy(model.apply(params, x), y, reduction="none")

    losses_and_grads = per_example_value_and_grads(example_losses)

    def step(state, batch):
        next_key, noise_key = random.split(state["key"])
        batch_losses, grads = losses_and_grads(state["params"], *batch)
        gradient, clipped = privatised_mean(grads, noise_key, clip_norm, noise_multiplier)
        params = optim.sgd_step(state["params"], gradient, lr)
        return {"params": params, "key": next_key}, {"loss": float(np.mean(batch_losses)), "clipped": clipped}

    return step


def main(seed=0, epochs=15, lr=0.5, clip_norm=1.0, noise_multiplier=1.0, batch_size=64):
    x, y = datasets.digits()
    x_train, y_train, x_test, y_test = datasets.train_test_split(random.key(seed), x, y)
    x_train, x_test = datasets.standardize(x_train, x_test)

    model = layers.serial(layers.Dense(128, activation="relu"), layers.Dense(64, activation="relu"), layers.Dense(10))
    init_key, noise_key, batch_key = random.split(random.key(seed + 1), 3)
    _, params = model.init(init_key, (-1, 64))
    batches = datasets.batches(batch_key, x_train, y_train, batch_size=batch_size)
    step = dp_sgd_step(model, lr, clip_norm, noise_multiplier)
    state, history = train.fit(step, {"params": params, "key": noise_key}, batches.epochs(epochs))

    accuracy = losses.accuracy(model.apply(state["params"], x_test), y_test)
    print(
        f"DP-SGD, {epochs} epochs of batches of {batch_size} (clip norm {clip_norm}, noise multiplier "
        f"{noise_multiplier}): last epoch's mean loss {history['loss'][-len(batches):].mean():.3f}, "
        f"examples clipped {history['clipped'][-len(batches):].mean():.0%}; test accuracy {accuracy:.4f}"
    )
    return accuracy


if __name__ == "__main__":
    main()
