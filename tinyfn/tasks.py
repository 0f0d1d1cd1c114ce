"""The named training tasks of the ``tinyfn train`` command: data, model, loss, metrics and defaults.

Each task is rebuilt the same way from its name and seed, which is how ``tinyfn eval`` can
score a checkpoint on the same test split the run held out. The models are written the way a
user would write them (``Dense(n, activation="relu")``), so a checkpoint's ``params`` load
into the same model built by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import conv, datasets, layers, losses, ops, random

__all__ = ["Task", "Data", "TASKS", "get_task", "mnist_cnn"]


@dataclass(frozen=True)
class Data:
    """Train and test arrays of a task (features already standardised)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class Task:
    """A named task: ``load(seed, data_dir) -> Data``, ``model() -> Layer``, the loss, the
    metrics reported beside it (``{name: metric(predictions, y) -> float}``) and defaults."""

    name: str
    description: str
    load: Callable
    model: Callable
    loss: Callable
    epochs: int
    batch_size: int
    lr: float
    # every shipped task is a classifier; a regression task would pass metrics={}
    metrics: dict = field(default_factory=lambda: {"accuracy": losses.accuracy})


def _split_and_standardize(seed: int, x, y, test_fraction=0.2) -> Data:
    x_train, y_train, x_test, y_test = datasets.train_test_split(random.key(seed), x, y, test_fraction)
    x_train, x_test = datasets.standardize(x_train, x_test)
    return Data(x_train, y_train, x_test, y_test)


def _iris_binary(seed, data_dir=None) -> Data:
    x, y, _ = datasets.iris()
    keep = y < 2  # setosa vs versicolor, as in the original tiny-framework post
    return _split_and_standardize(seed, x[keep], y[keep])


def _iris(seed, data_dir=None) -> Data:
    x, y, _ = datasets.iris()
    return _split_and_standardize(seed, x, y)


def _digits(seed, data_dir=None) -> Data:
    x, y = datasets.digits()
    return _split_and_standardize(seed, x, y)


def _mnist(seed, data_dir=None) -> Data:
    if data_dir is None:
        raise ValueError("the mnist task needs the folder of the MNIST IDX files: tinyfn train mnist --data DIR")
    return Data(*datasets.mnist(data_dir))


def mnist_cnn() -> layers.Layer:
    """The classic PyTorch MNIST example network: (N, 1, 28, 28) images -> (N, 10) logits.

    conv 3x3 32 - ReLU - conv 3x3 64 - ReLU - max-pool 2 - dropout 0.25 - flatten -
    dense 128 - ReLU - dropout 0.5 - dense 10. Params: ``conv2d_0``, ``conv2d_1``,
    ``dense_5``, ``dense_7``.
    """
    return layers.serial(
        conv.Conv2D(32, 3, activation="relu"),  # -> (N, 32, 26, 26)
        conv.Conv2D(64, 3, activation="relu"),  # -> (N, 64, 24, 24)
        conv.MaxPool2D(2),  # -> (N, 64, 12, 12)
        layers.Dropout(0.25),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dropout(0.5),
        layers.Dense(10),
    )


def _binary_loss(logits, y):
    return losses.binary_cross_entropy_with_logits(ops.reshape(logits, (-1,)), y)


TASKS = {
    task.name: task
    for task in [
        Task(
            "iris-binary",
            "Iris setosa vs versicolor, a 4-3-1 sigmoid network with binary cross-entropy",
            _iris_binary,
            lambda: layers.serial(layers.Dense(3), layers.Sigmoid(), layers.Dense(1)),
            _binary_loss,
            epochs=30,
            batch_size=8,
            lr=0.5,
        ),
        Task(
            "iris",
            "Iris, 3 classes, a 4-16-3 ReLU network with softmax cross-entropy",
            _iris,
            lambda: layers.serial(layers.Dense(16, activation="relu"), layers.Dense(3)),
            losses.softmax_cross_entropy,
            epochs=60,
            batch_size=16,
            lr=0.1,
        ),
        Task(
            "digits",
            "8x8 handwritten digits, a 64-128-64-10 ReLU network with softmax cross-entropy",
            _digits,
            lambda: layers.serial(
                layers.Dense(128, activation="relu"), layers.Dense(64, activation="relu"), layers.Dense(10)
            ),
            losses.softmax_cross_entropy,
            epochs=30,
            batch_size=32,
            lr=0.05,
        ),
        Task(
            "mnist",
            "MNIST or Fashion-MNIST from IDX files (--data DIR), the PyTorch example CNN",
            _mnist,
            mnist_cnn,
            losses.softmax_cross_entropy,
            epochs=2,
            batch_size=64,
            lr=0.05,
        ),
    ]
}


def get_task(name: str) -> Task:
    """The task called ``name``; ValueError listing the known names otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]
