"""Tests of tinyfn.export.safetensors: exact round trips of parameter trees, files that the
``safetensors`` package reads (and files it writes), and hostile files refused with
CheckpointError.

Hostile files are forged here byte by byte from the format's description (8-byte length,
JSON header, data), not with the code under test; interop goes through the reference
implementation (``safetensors.numpy``) when it is installed.
"""

import json
import os
import struct
import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinyfn import random, tasks, tree
from tinyfn.checkpoint import CheckpointError, Limits
from tinyfn.export import load_safetensors, save_safetensors

DTYPES = ["bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16", "float32", "float64"]


def _assert_same_tree(a, b):
    """Same structure (container types included), and leaves of the same dtype, shape and bits."""
    assert tree.structure(a) == tree.structure(b)
    for (path, x), (_, y) in zip(tree.leaves_with_path(a), tree.leaves_with_path(b)):
        assert x.dtype == y.dtype and x.shape == y.shape, path
        assert x.tobytes() == y.tobytes(), path


def _gpt_params():
    _, params = tasks.gpt(65, context=8, width=16, depth=1, heads=2).init(random.key(0), (-1, 8))
    return params


def test_round_trip_of_a_model_is_exact(tmp_path):
    params = _gpt_params()
    save_safetensors(tmp_path / "w.safetensors", params)
    loaded = load_safetensors(tmp_path / "w.safetensors")
    _assert_same_tree(params, loaded)
    assert all(not leaf.flags.writeable for leaf in tree.leaves(loaded))


def test_round_trip_keeps_containers_empty_dicts_none_and_every_dtype(tmp_path):
    params = {
        "layers": [{"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, {}, None],
        "pair": (np.array(True), np.zeros((0, 4), np.int16)),
        "scalar": np.array(np.pi),
        "dtypes": {d: (np.arange(5) % 2).astype(d) for d in DTYPES},
        "strided": np.arange(20, dtype=np.int32).reshape(4, 5)[:, ::2],
    }
    save_safetensors(tmp_path / "w.safetensors", params)
    _assert_same_tree(params, load_safetensors(tmp_path / "w.safetensors"))


@given(
    st.dictionaries(
        st.text("abc_0", min_size=1, max_size=4),
        hnp.arrays(st.sampled_from(DTYPES), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3)),
        max_size=4,
    )
)
def test_round_trip_of_generated_trees(arrays):
    path = os.path.join(tempfile.gettempdir(), f"tinyfn-safetensors-{os.getpid()}.safetensors")  # hypothesis: no tmp_path
    try:
        save_safetensors(path, {"group": arrays, "list": list(arrays.values())})
        _assert_same_tree({"group": arrays, "list": list(arrays.values())}, load_safetensors(path))
    finally:
        if os.path.exists(path):
            os.remove(path)


def test_the_file_follows_the_format(tmp_path):
    params = {"dense_0": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int64)}}
    save_safetensors(tmp_path / "w.safetensors", params)
    data = (tmp_path / "w.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    w, b = header["dense_0/w"], header["dense_0/b"]
    assert (w["dtype"], w["shape"], b["dtype"], b["shape"]) == ("F32", [2, 3], "I64", [2])
    assert np.array_equal(np.frombuffer(body[slice(*w["data_offsets"])], "<f4"), np.arange(6))
    assert np.array_equal(np.frombuffer(body[slice(*b["data_offsets"])], "<i8"), [1, 2])
    assert json.loads(header["__metadata__"]["tinyfn.structure"]) == {"dict": {"dense_0": {"dict": {"b": "array", "w": "array"}}}}


def test_the_safetensors_package_reads_what_tinyfn_writes(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    params = _gpt_params()
    save_safetensors(tmp_path / "w.safetensors", params)
    loaded = safetensors_numpy.load_file(str(tmp_path / "w.safetensors"))
    expected = dict(tree.leaves_with_path(params))
    assert sorted(loaded) == sorted(expected)
    assert "transformer_block_2/attn/q/w" in loaded and "embedding_0/w" in loaded
    for name, array in expected.items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name], array)


def test_a_file_the_safetensors_package_writes_loads_as_a_flat_dict(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    arrays = {"fc1.weight": np.ones((3, 2), np.float32), "fc1.bias": np.arange(3, dtype=np.float64), "ids": np.arange(4, dtype=np.int64)}
    safetensors_numpy.save_file(arrays, str(tmp_path / "w.safetensors"))
    loaded = load_safetensors(tmp_path / "w.safetensors")
    _assert_same_tree(dict(sorted(arrays.items())), dict(sorted(loaded.items())))


@pytest.mark.parametrize(
    "params, message",
    [
        ({"a/b": np.ones(2)}, "without '/'"),
        ({"": np.ones(2)}, "non-empty strings"),
        ({1: np.ones(2)}, "found 1 at <root>"),
        ({"a": np.ones(2, np.complex64)}, "found a complex64 array at a"),
        ({"a": [1.0]}, "found float at a/0"),
        (np.ones(3), "found a single leaf"),
    ],
)
def test_trees_that_cannot_be_saved_are_refused_before_writing(tmp_path, params, message):
    target = tmp_path / "w.safetensors"
    save_safetensors(target, {"kept": np.ones(2)})
    before = target.read_bytes()
    with pytest.raises(ValueError, match=message):
        save_safetensors(target, params)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["w.safetensors"]


# ----------------------------------------------------------------------------- hostile files


def _forge(path, header: dict, data: bytes = b"", header_size=None, pad: bytes = b""):
    text = json.dumps(header).encode() + pad
    path.write_bytes(struct.pack("<Q", len(text) if header_size is None else header_size) + text + data)
    return path


def _entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


F32_PAIR = np.array([1.0, 2.0], "<f4").tobytes()


@pytest.mark.parametrize(
    "header, data, header_size, message",
    [
        ({"a": _entry("F32", [2], 0, 8)}, F32_PAIR, 10**6, "header length 1,000,000 goes past the end"),
        ({"a": _entry("F32", [2], 0, 8)}, F32_PAIR, 2**64 - 1, "goes past the end"),
        ({"a": _entry("F32", [2], 0, 8)}, b"", None, r"data_offsets \[0, 8\] are out of range"),
        ({"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [1], 4, 8)}, F32_PAIR + bytes(4), None, "leaves bytes|overlaps"),
        ({"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 4, 12)}, F32_PAIR + bytes(4), None, "overlaps the tensor before it"),
        ({"a": _entry("F32", [1], 4, 8)}, F32_PAIR, None, "leaves bytes 0-4 unused"),
        ({"a": _entry("F32", [1], 0, 4)}, F32_PAIR, None, "the tensors end at byte 4 of the data, which holds 8"),
        ({"a": _entry("F32", [3], 0, 8)}, F32_PAIR, None, "make 12 bytes, but its data_offsets"),
        ({"a": _entry("F64", [2], 0, 8)}, F32_PAIR, None, "F64 and shape .2. make 16 bytes"),
        ({"a": _entry("BF16", [4], 0, 8)}, F32_PAIR, None, "expected a dtype of BOOL"),
        ({"a": _entry("F32", [-2], 0, 8)}, F32_PAIR, None, "expected a shape"),
        ({"a": _entry("F32", [2], 8, 0)}, F32_PAIR, None, "out of range"),
        ({"a": {"dtype": "F32", "shape": [2]}}, F32_PAIR, None, "expected an entry with"),
        ({"a": _entry("BOOL", [2], 0, 2)}, b"\x01\x02", None, "holds bytes other than 0 and 1"),
        ({"__metadata__": {"n": 1}, "a": _entry("F32", [2], 0, 8)}, F32_PAIR, None, "__metadata__ to map names to strings"),
        ({"__metadata__": {"tinyfn.structure": '{"dict": {"b": "array"}}'}, "a": _entry("F32", [2], 0, 8)}, F32_PAIR, None,
         "names a tensor 'b' the file does not hold"),
        ({"__metadata__": {"tinyfn.structure": '{"dict": {}}'}, "a": _entry("F32", [2], 0, 8)}, F32_PAIR, None,
         "leaves out tensor 'a'"),
        ({"__metadata__": {"tinyfn.structure": '{"set": []}'}, "a": _entry("F32", [2], 0, 8)}, F32_PAIR, None,
         "the structure is malformed"),
        ({"__metadata__": {"tinyfn.structure": "[" * 5000}}, b"", None, "the structure is not valid JSON"),
        ([1, 2], b"", None, "a JSON object, found list"),
    ],
)
def test_hostile_files_raise_checkpoint_error(tmp_path, header, data, header_size, message):
    path = _forge(tmp_path / "bad.safetensors", header, data, header_size)
    with pytest.raises(CheckpointError, match=message):
        load_safetensors(path)


def test_malformed_and_duplicated_json_raises_checkpoint_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    for text, message in [(b"{not json", "not valid JSON"), (b"\xff\xfe{}", "not valid JSON"),
                          (b'{"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}, "a": {}}', "names an entry twice: 'a'")]:
        path.write_bytes(struct.pack("<Q", len(text)) + text)
        with pytest.raises(CheckpointError, match=message):
            load_safetensors(path)


def test_short_large_and_non_regular_files_raise_checkpoint_error(tmp_path):
    (tmp_path / "short").write_bytes(b"\x00\x00\x00")
    with pytest.raises(CheckpointError, match="expected at least the 8 bytes"):
        load_safetensors(tmp_path / "short")
    save_safetensors(tmp_path / "w.safetensors", {"a": np.ones(100)})
    with pytest.raises(CheckpointError, match="more than Limits.max_bytes=100"):
        load_safetensors(tmp_path / "w.safetensors", limits=Limits(max_bytes=100))
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_safetensors(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_safetensors(tmp_path / "missing.safetensors")
