"""The values of flax's msgpack extensions, checked: arrays (code 1), complex numbers (2)
and numpy scalars (3); and flax's chunked arrays, the maps that hold a large array in pieces.
What is wrong is raised as :class:`_Malformed`, to which the reader adds the path."""

from __future__ import annotations

import math
import struct
import sys

import msgpack
import numpy as np

from .errors import CheckpointError, _a, _shown, _where
from .layout import _CHUNKED, _EXT_ARRAY, _EXT_COMPLEX, _EXT_NUMPY_SCALAR, _MAX_NDIM, DTYPES, _kind_of

_LITTLE_ENDIAN = {name: np.dtype(name).newbyteorder("<") for name in DTYPES}

_COMPLEX_PAYLOAD = struct.Struct(">BBdBd")  # fixarray of 2, float 64, float 64: 92 cb ........ cb ........


class _Malformed(Exception):
    """What is wrong with an extension, said without its path (the reader adds it)."""


def _extension_value(code: int, payload, array):
    """The value of extension ``code``: a complex number from its 19 bytes ``payload()``, or
    the array ``array()`` reads (the numpy scalar it holds for code 3)."""
    if code == _EXT_COMPLEX:
        return _complex_from(payload())
    if code not in (_EXT_ARRAY, _EXT_NUMPY_SCALAR):
        raise _Malformed(_unknown_extension(code))
    value = array()
    if code == _EXT_ARRAY:
        return value
    if value.ndim != 0:
        raise _Malformed(f"a numpy scalar must have shape (), found {value.shape}")
    return value[()]


def _array_from_payload(payload: bytes) -> np.ndarray:
    """The array of an extension payload ``[shape, dtype name, data]``, viewing its data."""
    try:  # the shape is the longest container in a payload: at most _MAX_NDIM items
        fields = msgpack.unpackb(payload, raw=False, max_array_len=_MAX_NDIM, max_map_len=_MAX_NDIM, max_ext_len=0)
    except (ValueError, msgpack.UnpackException) as exc:
        raise _Malformed(_array_layout(f"{type(exc).__name__}: {exc}")) from None
    if type(fields) is not list or len(fields) != 3:
        raise _Malformed(_array_layout())
    shape, name, data = fields
    if type(shape) is not list:
        raise _Malformed(_array_layout(f"its shape must be a msgpack array, found {_a(_kind_of(shape))}"))
    if type(name) is not str:
        raise _Malformed(_array_layout(f"its dtype name must be a str, found {_a(_kind_of(name))}"))
    if type(data) is not bytes:
        raise _Malformed(_array_layout(f"its data must be a msgpack bin, found {_a(_kind_of(data))}"))
    dtype = _array_dtype(shape, name, len(data))
    if dtype.kind == "b":
        _check_bools(np.frombuffer(data, np.uint8))
    return np.frombuffer(data, dtype).reshape(shape)  # read-only: bytes cannot change


def _array_dtype(shape: list, name: str, size: int) -> np.dtype:
    """The dtype of an array with ``shape``, dtype ``name`` and ``size`` bytes of data, all checked."""
    if not {int}.issuperset(map(type, shape)):
        raise _Malformed(f"an array's dimensions must be ints, found {_shown(shape)}")
    dtype = _LITTLE_ENDIAN.get(name)
    if dtype is None:
        raise _Malformed(f"unsupported array dtype {_shown(name)}; supported: {', '.join(DTYPES)}")
    _check_shape(shape, dtype.itemsize)
    expected = math.prod(shape) * dtype.itemsize
    if size != expected:
        raise _Malformed(f"array declares shape {tuple(shape)} {name} ({expected:,} bytes) but holds {size:,} bytes")
    return dtype


def _check_shape(shape: list, itemsize: int) -> None:
    if min(shape, default=0) < 0:
        raise _Malformed(f"invalid array shape {_shown(shape)} (dimensions must be non-negative)")
    if math.prod(filter(None, shape)) * itemsize > sys.maxsize:  # numpy would refuse even an empty one
        raise _Malformed(f"array shape {tuple(shape)} is too large")


def _check_bools(data: np.ndarray) -> None:
    """A bool array's bytes (``data``, as uint8) must be 0 or 1: numpy would read 2..255 as True,
    yet keep and write those bytes."""
    if data.max(initial=0) > 1:
        raise _Malformed("a bool array holds bytes other than 0 and 1")


def _complex_from(payload) -> complex:
    expected = "a complex number must be the msgpack array [float 64, float 64]"
    if len(payload) != _COMPLEX_PAYLOAD.size:
        raise _Malformed(f"{expected} ({_COMPLEX_PAYLOAD.size} bytes), found {len(payload)} bytes")
    marker, real_tag, real, imag_tag, imag = _COMPLEX_PAYLOAD.unpack(payload)
    if (marker, real_tag, imag_tag) != (0x92, 0xCB, 0xCB):
        raise _Malformed(f"{expected}, found other items")
    return complex(real, imag)


def _unknown_extension(code: int) -> str:
    return (
        f"unknown msgpack extension type {code} "
        f"(known: {_EXT_ARRAY} array, {_EXT_COMPLEX} complex, {_EXT_NUMPY_SCALAR} numpy scalar)"
    )


def _array_layout(problem: str = "") -> str:
    return "an array must be encoded as [shape, dtype, data]" + (f"; {problem}" if problem else "")


def _unchunk(node: dict, path: tuple) -> np.ndarray:
    """The array of a flax chunked-array map (see :func:`.encode._chunked_parts`)."""
    where = _where(path)
    if set(node) != {_CHUNKED, "shape", "chunks"} or node[_CHUNKED] is not True:
        raise CheckpointError(f"{where}: a chunked array must be {{{_CHUNKED!r}: True, 'shape': ..., 'chunks': ...}}")
    shape = _numbered_items(node["shape"], where + "/shape")
    chunks = _numbered_items(node["chunks"], where + "/chunks")
    if not chunks or any(type(c) is not np.ndarray or c.ndim != 1 or c.dtype != chunks[0].dtype for c in chunks):
        raise CheckpointError(f"{where}: chunks must be one or more 1-d arrays of one dtype")
    if any(type(d) is not int for d in shape):
        raise CheckpointError(f"{where}: a chunked array's shape must hold ints, found {_shown(shape)}")
    try:
        _check_shape(shape, chunks[0].itemsize)
    except _Malformed as problem:
        raise CheckpointError(f"{where}: {problem}") from None
    flat = np.concatenate(chunks)
    if flat.size != math.prod(shape):
        raise CheckpointError(
            f"{where}: shape {tuple(shape)} needs {math.prod(shape):,} elements, chunks hold {flat.size:,}"
        )
    flat.flags.writeable = False
    return flat.reshape(shape)


def _numbered_items(node, where: str) -> list:
    """The values of a map with keys "0", "1", ..., "n-1", in that order."""
    if type(node) is not dict or set(node) != {str(i) for i in range(len(node))}:
        raise CheckpointError(f"{where}: expected a map with keys '0', '1', ...")
    return [node[str(i)] for i in range(len(node))]
