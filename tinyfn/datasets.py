"""Data: the small data sets shipped with tinyfn, an IDX (MNIST format) reader, splitting,
standardisation and mini-batches.

Shipped data (in ``tinyfn/data/``, credited in the README):

* :func:`iris`: Fisher's Iris, 150 samples x 4 features, 3 classes.
* :func:`digits`: UCI handwritten digits, 1,797 samples of 8x8 pixels (0..16), 10 classes.
"""

from __future__ import annotations

import gzip
import math
from importlib import resources
from pathlib import Path

import numpy as np

from . import random

__all__ = [
    "iris",
    "digits",
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


def train_test_split(key, x, y, test_fraction: float = 0.2):
    """Split ``(x, y)`` into train and test sets, stratified by class, deterministically from ``key``.

    Each class contributes ``round(test_fraction * class count)`` samples to the test set.
    Returns ``(x_train, y_train, x_test, y_test)``; samples keep their order within each set.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), found {test_fraction}")
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same number of samples, found {len(x)} and {len(y)}")
    y = np.asarray(y)
    classes = np.unique(y)
    is_test = np.zeros(len(y), dtype=bool)
    for cls, k in zip(classes, random.split(key, len(classes))):
        members = np.flatnonzero(y == cls)
        chosen = members[random.permutation(k, len(members))[: round(test_fraction * len(members))]]
        is_test[chosen] = True
    return x[~is_test], y[~is_test], x[is_test], y[is_test]


class Standardizer:
    """Per-feature standardisation ``(x - mean) / std`` with statistics fitted on training data
    only (features with zero spread are left unscaled). ``mean`` and ``std`` have the
    feature shape of ``x`` (axis 0 is the sample axis)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean = mean
        self.std = std

    @classmethod
    def fit(cls, x_train) -> "Standardizer":
        """Fit mean and standard deviation on ``x_train`` (samples on axis 0)."""
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        return cls(mean.astype(x_train.dtype), np.where(std > 0, std, 1).astype(x_train.dtype))

    def __call__(self, x):
        """Standardise ``x`` with the fitted statistics; same shape and dtype as ``x``."""
        return ((x - self.mean) / self.std).astype(x.dtype, copy=False)


def standardize(x_train, *others):
    """Fit a :class:`Standardizer` on ``x_train`` and apply it to it and to every array in ``others``.

    Returns the standardised arrays in the same order.
    """
    scaler = Standardizer.fit(x_train)
    return tuple(scaler(x) for x in (x_train,) + others)


class Batches:
    """Mini-batches of ``(x, y)``, reshuffled each epoch from one key.

    Epoch ``e`` uses the permutation drawn from ``random.fold_in(key, e)``, so any epoch can
    be reproduced on its own (which is what makes resuming a run exact). Iterating the
    object yields epoch 0; use :meth:`epoch` for others and :meth:`epochs` for a stream of
    several. ``len()`` is the number of batches per epoch.
    """

    def __init__(self, key, x, y, batch_size: int, shuffle: bool = True, drop_last: bool = False):
        if len(x) != len(y):
            raise ValueError(f"batches: x and y must have the same number of samples, found {len(x)} and {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batches: batch_size must be >= 1, found {batch_size}")
        self.key, self.x, self.y = key, x, y
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last

    def __len__(self):
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch(self, index: int):
        """Iterator over the ``(x_batch, y_batch)`` pairs of epoch ``index``."""
        n = len(self.x)
        order = random.permutation(random.fold_in(self.key, index), n) if self.shuffle else np.arange(n)
        for b in range(len(self)):
            take = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.x[take], self.y[take]

    def epochs(self, count: int, start: int = 0):
        """Iterator over the batches of epochs ``start .. start + count - 1``, in order."""
        for e in range(start, start + count):
            yield from self.epoch(e)

    def __iter__(self):
        return self.epoch(0)


def batches(key, x, y, batch_size: int, shuffle: bool = True, drop_last: bool = False) -> Batches:
    """Mini-batches of ``(x, y)`` along axis 0, shuffled per epoch from ``key`` (see :class:`Batches`).

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
    ValueError naming the file when the header is malformed or the data size does not match.
    """
    path = Path(path)
    with path.open("rb") as f:
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
