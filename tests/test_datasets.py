"""Shipped data, stratified splits, standardisation, batching and the IDX reader."""

import gzip

import numpy as np
import pytest

from tinyfn import datasets, random


def test_shipped_iris_and_digits_load_with_the_documented_shapes():
    x, y, names = datasets.iris()
    assert x.shape == (150, 4) and x.dtype == np.float32 and y.dtype == np.int64
    assert names == ["setosa", "versicolor", "virginica"] and np.bincount(y).tolist() == [50, 50, 50]
    np.testing.assert_allclose(x[0], [5.1, 3.5, 1.4, 0.2])
    x, y = datasets.digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32 and x.min() == 0 and x.max() == 16
    assert sorted(set(y.tolist())) == list(range(10))
    images, _ = datasets.digits(images=True)
    assert images.shape == (1797, 1, 8, 8)
    np.testing.assert_array_equal(images[5, 0, 2], x[5, 16:24])


def test_split_is_stratified_disjoint_and_deterministic():
    x, y, _ = datasets.iris()
    ids = np.arange(150)
    a = datasets.train_test_split(random.key(0), ids, y, 0.2)
    b = datasets.train_test_split(random.key(0), ids, y, 0.2)
    c = datasets.train_test_split(random.key(1), ids, y, 0.2)
    ids_train, y_train, ids_test, y_test = a
    assert np.bincount(y_test).tolist() == [10, 10, 10] and len(ids_train) == 120
    assert not set(ids_train.tolist()) & set(ids_test.tolist())
    np.testing.assert_array_equal(a[2], b[2])
    assert not np.array_equal(a[2], c[2])
    np.testing.assert_array_equal(y[ids_test], y_test)


def test_standardisation_uses_training_statistics_only():
    train = np.array([[1.0, 5.0], [3.0, 5.0]], np.float32)
    test = np.array([[5.0, 7.0]], np.float32)
    train_s, test_s = datasets.standardize(train, test)
    np.testing.assert_allclose(train_s, [[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(test_s, [[3.0, 2.0]])  # constant feature: centred, not scaled
    assert test_s.dtype == np.float32


def test_batches_cover_every_sample_once_per_epoch_and_reshuffle():
    x = np.arange(10).reshape(10, 1)
    b = datasets.batches(random.key(0), x, np.arange(10), batch_size=4)
    assert len(b) == 3
    epoch0 = [yb for _, yb in b.epoch(0)]
    assert [len(e) for e in epoch0] == [4, 4, 2]
    assert sorted(np.concatenate(epoch0).tolist()) == list(range(10))
    epoch1 = np.concatenate([yb for _, yb in b.epoch(1)])
    assert not np.array_equal(np.concatenate(epoch0), epoch1)
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in b]), np.concatenate(epoch0))
    assert len(list(b.epochs(3))) == 9
    dropped = datasets.batches(random.key(0), x, np.arange(10), 4, shuffle=False, drop_last=True)
    assert [yb.tolist() for _, yb in dropped] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_lists_and_numpy_integers_are_accepted():
    # bad batch sizes, epochs, fractions and data are refused: see tests/test_bad_inputs_core.py
    x, y = np.arange(20.0).reshape(10, 2), np.arange(10) % 2
    as_lists = datasets.batches(random.key(0), x.tolist(), y.tolist(), np.int64(4))
    as_arrays = datasets.batches(random.key(0), x, y, 4)
    pairs = zip(as_lists.epochs(np.int64(2), start=np.int32(1)), as_arrays.epochs(2, start=1), strict=True)
    for (xa, ya), (xb, yb) in pairs:
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    split_lists = datasets.train_test_split(random.key(0), x.tolist(), y.tolist(), np.float64(0.2))
    for a, b in zip(split_lists, datasets.train_test_split(random.key(0), x, y, 0.2), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(datasets.standardize([[1.0, 5.0], [3.0, 5.0]])[0], [[-1.0, 0.0], [1.0, 0.0]])


def test_an_epoch_is_checked_when_asked_for_and_drawn_when_iterated():
    b = datasets.batches(random.key(0), np.arange(6.0), np.arange(6), 4)
    epoch = b.epoch(2)
    assert [len(yb) for _, yb in epoch] == [4, 2]
    assert list(epoch) == []  # an iterator: spent after one pass, as before
    assert sum(1 for _ in b.epochs(0)) == 0


def _idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def test_idx_reader_reads_raw_and_gzip_files(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    floats = np.array([[1.5, -2.0]], dtype=np.float32)
    (tmp_path / "a.idx").write_bytes(_idx_bytes(images, 0x08))
    (tmp_path / "b.idx.gz").write_bytes(gzip.compress(_idx_bytes(floats, 0x0D)))
    np.testing.assert_array_equal(datasets.load_idx(tmp_path / "a.idx"), images)
    loaded = datasets.load_idx(tmp_path / "b.idx.gz")
    np.testing.assert_array_equal(loaded, floats)
    assert loaded.dtype.isnative


def test_idx_reader_rejects_bad_files_clearly(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01abcd")
    with pytest.raises(ValueError, match="not an IDX file"):
        datasets.load_idx(tmp_path / "bad")
    good = _idx_bytes(np.zeros((3, 2), np.uint8), 0x08)
    (tmp_path / "short").write_bytes(good[:-1])
    with pytest.raises(ValueError, match=r"needs 18 bytes, found 17"):
        datasets.load_idx(tmp_path / "short")


def test_mnist_folder_loader(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 5), ("t10k", 3)):
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(_idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 0x08))
        )
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(rng.integers(0, 10, n, dtype=np.uint8), 0x08))
    x_train, y_train, x_test, y_test = datasets.mnist(tmp_path)
    assert x_train.shape == (5, 1, 28, 28) and x_test.shape == (3, 1, 28, 28)
    assert x_train.dtype == np.float32 and 0 <= x_train.min() and x_train.max() <= 1
    assert y_train.dtype == np.int64 and len(y_test) == 3


def test_unshuffled_batches_need_no_key_and_shuffled_ones_say_they_do():
    x, y = np.arange(10.0).reshape(5, 2), np.arange(5)
    order = [yb.tolist() for _, yb in datasets.batches(None, x, y, 2, shuffle=False)]
    assert order == [[0, 1], [2, 3], [4]]
    with pytest.raises(TypeError, match="shuffle=True needs a PRNG key"):
        datasets.batches(None, x, y, 2)


def test_shakespeare_ships_with_the_package_and_splits_by_position():
    text = datasets.shakespeare()
    train, validation = datasets.shakespeare("train"), datasets.shakespeare("validation")
    assert len(text) == 1_154_883 and len(set(text)) == 62
    assert train + validation == text and len(validation) == round(0.1 * len(text))
    assert text.startswith(train) and "Hamlet:" in text
    with pytest.raises(ValueError, match="expected split to be one of"):
        datasets.shakespeare("test")
