"""The named training tasks of the ``tinyfn train`` command: data, model, loss, metrics and defaults.

Each task is rebuilt the same way from its name and seed, which is how ``tinyfn eval`` can
score a checkpoint on the same test split the run held out. The models are written the way a
user would write them (``Dense(n, activation="relu")``), so a checkpoint's ``params`` load
into the same model built by hand.

Two kinds of task: a :class:`Task` classifies samples and trains by epochs; a
:class:`LanguageTask` models a text character by character and trains by steps, each on a
batch of random windows of the text (an epoch means little when the windows overlap).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import conv, datasets, layers, losses, ops, random
from .text import CharTokenizer

__all__ = ["Task", "Data", "LanguageTask", "TextData", "TASKS", "get_task", "mnist_cnn", "gpt"]


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


@dataclass(frozen=True)
class TextData:
    """A text task's data: its tokenizer, the training text as ids ``(N,)``, and the fixed
    validation windows ``(inputs, targets)``, both ``(windows, context)``."""

    tokenizer: CharTokenizer
    train_ids: np.ndarray
    validation: tuple


@dataclass(frozen=True)
class LanguageTask:
    """A named language-modelling task, trained by steps.

    ``load(context, validation_windows, vocabulary=None) -> TextData``: the tokenizer is built
    from the text, or from a saved ``vocabulary`` string, and the validation set is
    ``validation_windows`` windows of ``context`` characters. ``model(vocab_size,
    **model_config) -> Layer`` maps ids ``(B, T)`` to logits ``(B, T, vocab_size)``; the loss
    is the softmax cross-entropy of each next character, in nats per character. The rest are
    defaults of a run: the optimizer is AdamW with warm-up and cosine decay, its updates
    clipped to a global norm of ``clip_norm``.
    """

    name: str
    description: str
    load: Callable
    model: Callable
    model_config: dict
    steps: int
    eval_every: int
    batch_size: int
    lr: float
    weight_decay: float
    validation_windows: int = 512
    clip_norm: float = 1.0
    loss: Callable = losses.softmax_cross_entropy


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


def _digit_images(seed, data_dir=None) -> Data:
    x, y = datasets.digits(images=True)  # (1797, 1, 8, 8), pixels in 0..16
    x_train, y_train, x_test, y_test = datasets.train_test_split(random.key(seed), x, y)
    return Data(x_train / 16.0, y_train, x_test / 16.0, y_test)


def _mnist(seed, data_dir=None) -> Data:
    if data_dir is None:
        raise ValueError("the mnist task needs the folder of the MNIST IDX files: tinyfn train mnist --data DIR")
    return Data(*datasets.mnist(data_dir))


def digits_cnn() -> layers.Layer:
    """A small CNN for the 8x8 digits: (N, 1, 8, 8) images -> (N, 10) logits.

    conv 3x3 16 (no bias) - BatchNorm - ReLU - conv 3x3 32 - ReLU - max-pool 2 - flatten -
    dropout 0.3 - dense 10. Stateful: BatchNorm keeps running statistics.
    """
    return layers.serial(
        conv.Conv2D(16, 3, padding="same", use_bias=False),  # BatchNorm's beta is the bias
        conv.BatchNorm(),
        layers.Relu(),
        conv.Conv2D(32, 3, padding="same", activation="relu"),
        conv.MaxPool2D(2),  # -> (N, 32, 4, 4)
        layers.Flatten(),
        layers.Dropout(0.3),
        layers.Dense(10),
    )


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


def gpt(vocab_size: int, context: int = 64, width: int = 128, depth: int = 4, heads: int = 4) -> layers.Layer:
    """A small GPT: ids ``(B, T)``, ``T <= context``, to next-token logits ``(B, T, vocab_size)``.

    Token embedding and learned position embedding (``width`` features), ``depth`` causal
    pre-norm transformer blocks of ``heads`` heads (each position sees itself and the
    positions before it), a final LayerNorm and a dense head to the vocabulary. Params:
    ``embedding_0``, ``positional_embedding_1``, ``transformer_block_2`` .. and, after the
    blocks, ``layer_norm_*`` and ``dense_*``.
    """
    return layers.serial(
        layers.Embedding(vocab_size, width),
        layers.PositionalEmbedding(context, width),
        *[layers.TransformerBlock(heads, causal=True) for _ in range(depth)],
        layers.LayerNorm(),
        layers.Dense(vocab_size),
    )


def _shakespeare_char(context: int, validation_windows: int, vocabulary: str | None = None) -> TextData:
    text = datasets.shakespeare()
    tokenizer = CharTokenizer(vocabulary) if vocabulary is not None else CharTokenizer.from_text(text)
    train_ids, validation_ids = datasets.split_by_position(tokenizer.encode(text))
    # The same windows for every run and seed, spread evenly over the validation text.
    starts = np.linspace(0, len(validation_ids) - context - 1, validation_windows).astype(np.int64)
    return TextData(tokenizer, train_ids, datasets.windows_at(validation_ids, starts, context))


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
            "digits-cnn",
            "8x8 handwritten digits as images, a small CNN with BatchNorm and max pooling",
            _digit_images,
            digits_cnn,
            losses.softmax_cross_entropy,
            epochs=20,
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
        LanguageTask(
            "shakespeare-char",
            "Shakespeare's plays character by character, a small GPT trained with AdamW",
            _shakespeare_char,
            gpt,
            model_config={"context": 64, "width": 128, "depth": 4, "heads": 4},
            steps=2000,
            eval_every=250,
            batch_size=32,
            lr=5e-3,
            weight_decay=0.1,
        ),
    ]
}


def get_task(name: str) -> Task | LanguageTask:
    """The task called ``name``; ValueError listing the known names otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]
