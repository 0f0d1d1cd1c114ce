"""Data: the small data sets shipped with tinyfn, an IDX (MNIST format) reader, splitting,
standardisation, mini-batches, and windows of a sequence for language models.

Shipped data (in ``tinyfn/data/``, credited in the README):

* :func:`iris`: Fisher's Iris, 150 samples x 4 features, 3 classes.
* :func:`digits`: UCI handwritten digits, 1,797 samples of 8x8 pixels (0..16), 10 classes.
* :func:`shakespeare`: the speeches of nine Shakespeare plays, 1,154,883 characters of text.

Samples are on axis 0 of numpy arrays (lists are converted). Bad arguments raise ``TypeError``
or ``ValueError`` naming what was expected and what was found: ``x`` and ``y`` of different
lengths, a fraction outside (0, 1), a batch size or epoch that is not an int in range, data
to standardise that is not floating-point or holds NaN or inf.
"""

from __future__ import annotations

import gzip
import itertools
import math
from importlib import resources
from pathlib import Path

import numpy as np

from . import random
from .random import _check_int, _check_key, _check_real

__all__ = [
    "iris",
    "digits",
    "shakespeare",
    "split_by_position",
    "windows_at",
    "random_windows",
    "train_test_split",
    "Standardizer",
    "standardize",
    "Batches",
    "batches",
    "load_idx",
    "mnist",
]


def _data_file(name: str):
    return resources.files("tinyfn") / "data" / name


def iris() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Fisher's Iris: features ``(150, 4)`` float32 (sepal length/width, petal length/width in
    cm), labels ``(150,)`` int64 (0 setosa, 1 versicolor, 2 virginica), and the class names."""
    lines = _data_file("iris.csv").read_text().strip().splitlines()
    class_names = lines[0].split(",")[2:]
    table = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    return table[:, :4].astype(np.float32), table[:, 4].astype(np.int64), class_names


def digits(images: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Handwritten digits: features ``(1797, 64)`` float32 with pixel values 0..16 (or
    ``(1797, 1, 8, 8)`` NCHW images when ``images=True``), labels ``(1797,)`` int64 in 0..9."""
    with _data_file("digits.csv.gz").open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.float32)
    x, y = table[:, :64], table[:, 64].astype(np.int64)
    return (x.reshape(-1, 1, 8, 8) if images else x), y


def shakespeare(split: str | None = None) -> str:
    """The speeches of nine Shakespeare plays as one text: each speech is ``Speaker:`` on a
    line of its own, then its lines, then a blank line (stage directions removed).

    The plays, in order: Hamlet, Macbeth, King Lear, Othello, Romeo and Juliet, Julius Caesar,
    Richard III, A Midsummer Night's Dream, The Tempest: 1,154,883 characters, 62 distinct
    (ASCII). ``split`` is None (the whole text), ``"train"`` (the first 90%) or
    ``"validation"`` (the last 10%), split by position as :func:`split_by_position` does.
    """
    splits = (None, "train", "validation")
    if split not in splits:
        raise ValueError(f"shakespeare: expected split to be one of {splits}, found {split!r}")
    with _data_file("shakespeare.txt.gz").open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        text = f.read()
    if split is None:
        return text
    train, validation = split_by_position(text)
    return train if split == "train" else validation


def split_by_position(sequence, validation_fraction: float = 0.1):
    """``(train, validation)``: the first ``1 - validation_fraction`` of ``sequence`` (a str or
    an array, along axis 0) and the rest, ``0 < validation_fraction < 1``.

    A sequence is split by position, not shuffled: windows of a text overlap, so windows
    drawn from one shuffled pool would put copies of the training text into the validation
    set. The validation part has ``round(validation_fraction * len(sequence))`` items.
    """
    _check_real("split_by_position: validation_fraction", validation_fraction, 0.0, 1.0, open_low=True, open_high=True)
    cut = len(sequence) - round(validation_fraction * len(sequence))
    return sequence[:cut], sequence[cut:]


def windows_at(ids, starts, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The windows of ``length + 1`` ids of ``ids`` (1-D) that begin at ``starts`` (N,), as
    ``(inputs, targets)``, both ``(N, length)``: ``targets[n, t] = inputs[n, t + 1]``, the id
    that follows. Each start must leave room for its window: ``0 <= start <= len(ids) - length - 1``.
    """
    ids, starts = np.asarray(ids), np.asarray(starts)
    length = _check_int("windows_at: length", length, 1)
    if ids.ndim != 1:
        raise ValueError(f"windows_at: expected a 1-D sequence of ids, found shape {ids.shape}")
    last = len(ids) - length - 1
    if starts.ndim != 1 or starts.dtype.kind not in "iu" or (starts.size and (starts.min() < 0 or starts.max() > last)):
        raise ValueError(
            f"windows_at: expected a 1-D array of integer starts in [0, {last}] (windows of {length} + 1 ids in "
            f"{len(ids)}), found {starts.dtype} array of shape {starts.shape} with values {starts[:5].tolist()}"
        )
    windows = ids[starts[:, None] + np.arange(length + 1)]
    return windows[:, :-1], windows[:, 1:]


def random_windows(key, ids, batch_size: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch of ``batch_size`` windows of ``ids`` (1-D) at starts drawn uniformly from ``key``:
    ``(inputs, targets)``, both ``(batch_size, length)``, the targets the inputs shifted by
    one (see :func:`windows_at`). The same key gives the same batch; draw the batch of step
    ``i`` from ``random.fold_in(key, i)``.
    """
    batch_size = _check_int("random_windows: batch_size", batch_size, 1)
    length = _check_int("random_windows: length", length, 1)
    if np.ndim(ids) != 1 or len(ids) < length + 1:
        raise ValueError(f"random_windows: expected a 1-D sequence of at least {length + 1} ids (length + 1), found "
                         f"shape {np.shape(ids)}")
    return windows_at(ids, random.randint(key, (batch_size,), 0, len(ids) - length), length)


def _samples(name: str, x, y) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` as numpy arrays, after checking they hold the same number of samples."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise ValueError(
            f"{name}: expected x and y with the same number of samples on axis 0, found shapes {x.shape} and {y.shape}"
        )
    return x, y


def train_test_split(key, x, y, test_fraction: float = 0.2):
    """Split ``(x, y)`` into train and test sets, stratified by class, deterministically from ``key``.

    ``y`` holds one class label per sample; ``0 < test_fraction < 1``. Each class contributes
    ``round(test_fraction * class count)`` samples to the test set. Returns
    ``(x_train, y_train, x_test, y_test)``; samples keep their order within each set.
    """
    _check_real("train_test_split: test_fraction", test_fraction, 0.0, 1.0, open_low=True, open_high=True)
    x, y = _samples("train_test_split", x, y)
    if y.ndim != 1:
        raise ValueError(f"train_test_split: expected y of shape ({len(y)},) (one label per sample), found {y.shape}")
    classes = np.unique(y)
    is_test = np.zeros(len(y), dtype=bool)
    for cls, k in zip(classes, random.split(key, len(classes))):
        members = np.flatnonzero(y == cls)
        chosen = members[random.permutation(k, len(members))[: round(test_fraction * len(members))]]
        is_test[chosen] = True
    return x[~is_test], y[~is_test], x[is_test], y[is_test]


def _finite_floats(name: str, x) -> np.ndarray:
    """``x`` as a numpy array, after checking it is floating-point samples (axis 0), all finite.

    The error for NaN or inf counts the rows that hold them and lists the first columns (the
    feature indices, counted over the flattened features of each sample).
    """
    x = np.asarray(x)
    if x.dtype.kind != "f" or x.ndim == 0:
        raise TypeError(f"{name}: expected a floating-point array of samples, found {x.dtype} array of shape {x.shape}")
    bad = ~np.isfinite(x)
    if bad.any():
        bad = bad.reshape(len(x), -1)
        rows, columns = np.flatnonzero(bad.any(axis=1)), np.flatnonzero(bad.any(axis=0))
        raise ValueError(
            f"{name}: expected finite numbers, found NaN or inf in {len(rows)} of {len(x)} rows, "
            f"columns {columns[:10].tolist()}{' ...' if len(columns) > 10 else ''}"
        )
    return x


class Standardizer:
    """Per-feature standardisation ``(x - mean) / std`` with statistics fitted on training data
    only (features with zero spread are left unscaled). ``mean`` and ``std`` have the
    feature shape of ``x`` (axis 0 is the sample axis). Data must be floating-point and finite."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean = mean
        self.std = std

    @classmethod
    def fit(cls, x_train) -> "Standardizer":
        """Fit mean and standard deviation on ``x_train`` (at least one sample, on axis 0)."""
        x_train = _finite_floats("Standardizer.fit: x_train", x_train)
        if len(x_train) == 0:
            raise ValueError(f"Standardizer.fit: expected at least one sample, found shape {x_train.shape}")
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        return cls(mean.astype(x_train.dtype), np.where(std > 0, std, 1).astype(x_train.dtype))

    def __call__(self, x):
        """Standardise ``x`` with the fitted statistics; same shape and dtype as ``x``."""
        return self._apply("Standardizer: x", x)

    def _apply(self, name: str, x):
        x = _finite_floats(name, x)
        if x.shape[1:] != np.shape(self.mean):
            raise ValueError(f"{name}: expected samples of the fitted shape {np.shape(self.mean)}, found {x.shape[1:]}")
        return ((x - self.mean) / self.std).astype(x.dtype, copy=False)


def standardize(x_train, *others):
    """Fit a :class:`Standardizer` on ``x_train`` and apply it to it and to every array in ``others``.

    Returns the standardised arrays in the same order.
    """
    scaler = Standardizer.fit(x_train)
    names = ["x_train"] + [f"others[{i}]" for i in range(len(others))]
    return tuple(scaler._apply(f"standardize: {name}", x) for name, x in zip(names, (x_train,) + others))


class Batches:
    """Mini-batches of ``(x, y)``, reshuffled each epoch from one key.

    Epoch ``e`` uses the permutation drawn from ``random.fold_in(key, e)``, so any epoch can
    be reproduced on its own (which is what makes resuming a run exact). Iterating the
    object yields epoch 0; use :meth:`epoch` for others and :meth:`epochs` for a stream of
    several. ``len()`` is the number of batches per epoch.
    """

    def __init__(self, key, x, y, batch_size: int, shuffle: bool = True, drop_last: bool = False):
        self.x, self.y = _samples("batches", x, y)
        if key is None and shuffle:
            raise TypeError("batches: shuffle=True needs a PRNG key (tinyfn.random.key(...)), found None")
        self.key = None if key is None else _check_key(key)  # no key needed to keep the order
        self.batch_size = _check_int("batches: batch_size", batch_size, 1)
        self.shuffle, self.drop_last = shuffle, drop_last

    def __len__(self):
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch(self, index: int):
        """Iterator over the ``(x_batch, y_batch)`` pairs of epoch ``index`` (an int >= 0)."""
        index = _check_int("Batches.epoch: index", index)
        n = len(self.x)
        order = random.permutation(random.fold_in(self.key, index), n) if self.shuffle else np.arange(n)
        return self._batches(order)

    def _batches(self, order):
        for b in range(len(self)):
            take = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.x[take], self.y[take]

    def epochs(self, count: int, start: int = 0):
        """Iterator over the batches of epochs ``start .. start + count - 1``, in order (ints >= 0)."""
        count = _check_int("Batches.epochs: count", count)
        start = _check_int("Batches.epochs: start", start)
        return itertools.chain.from_iterable(self.epoch(e) for e in range(start, start + count))

    def __iter__(self):
        return self.epoch(0)


def batches(key, x, y, batch_size: int, shuffle: bool = True, drop_last: bool = False) -> Batches:
    """Mini-batches of ``(x, y)`` along axis 0, shuffled per epoch from ``key`` (see :class:`Batches`;
    ``key`` may be None when ``shuffle`` is False).

    The last batch is smaller when ``len(x)`` is not a multiple of ``batch_size``, unless
    ``drop_last`` is True.
    """
    return Batches(key, x, y, batch_size, shuffle, drop_last)


# ----------------------------------------------------------------------------- IDX files (MNIST format)

_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def load_idx(path) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST format), gzip-compressed or raw.

    The header is two zero bytes, a type code, the number of dimensions and one big-endian
    uint32 per dimension. Returns an array of that shape in native byte order. Raises
    ValueError naming the file when the header is malformed or the data size does not match,
    and FileNotFoundError when there is no such file.
    """
    path = Path(path)
    with open(path, "rb") as f:  # the built-in open: a missing file is reported from here, not from pathlib
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (expected bytes 00 00 <type> <ndim>, found {data[:4].hex(' ')})")
    dtype, ndim = _IDX_TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header (expected {header} bytes, found {len(data)})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: IDX shape {shape} of {dtype} needs {expected} bytes, found {len(data)}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def mnist(folder) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST or Fashion-MNIST from the four standard IDX files in ``folder`` (``.gz`` or not).

    Returns ``(x_train, y_train, x_test, y_test)``: images ``(N, 1, 28, 28)`` float32 scaled to
    [0, 1] and int64 labels.
    """
    folder = Path(folder)

    def find(stem):
        for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
            if (folder / name).exists():
                return folder / name
        raise FileNotFoundError(f"{folder}: expected the IDX file {stem} (or {stem}.gz), found none")

    def images(stem):
        return (load_idx(find(stem)).astype(np.float32) / 255.0)[:, None, :, :]

    def labels(stem):
        return load_idx(find(stem)).astype(np.int64)

    return (
        images("train-images-idx3-ubyte"),
        labels("train-labels-idx1-ubyte"),
        images("t10k-images-idx3-ubyte"),
        labels("t10k-labels-idx1-ubyte"),
    )
