"""The layout of a checkpoint file: its format name and version, the dtypes and the other
values it holds, flax's extension codes, the entries and the checksum trailer, and msgpack's
specification in tables (the kind of value each first byte begins, the sizes of headers),
which the writer and the reader share. ``docs/checkpoint-format.md`` describes the bytes."""

from __future__ import annotations

import msgpack
import numpy as np

from .. import tree

FORMAT = "tinyfn-checkpoint"
VERSION = 1

#: The array dtypes a checkpoint can hold (by numpy name).
DTYPES = (
    "bool",
    "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
    "complex64", "complex128",
)  # fmt: skip

# msgpack extension codes, as in flax.serialization
_EXT_ARRAY = 1
_EXT_COMPLEX = 2
_EXT_NUMPY_SCALAR = 3

_CHUNKED = "__msgpack_chunked_array__"  # marks a chunked array in flax's encoding
_ENTRIES = ("format", "version", "metadata", "structure", "tree", "sha256")
_TRAILER = msgpack.packb("sha256") + b"\xc4\x20"  # the key "sha256", then a bin8 header of 32 bytes
_TRAILER_SIZE = len(_TRAILER) + 32
_MAX_NDIM = 32  # numpy 1.x's limit
_INT_RANGE = (-(2**63), 2**64 - 1)  # what a msgpack integer can hold
_SCALAR_TYPES = (bool, int, float, complex, str)
_PLAIN_LEAVES = frozenset(_SCALAR_TYPES + (np.ndarray,))
_SCALAR_LEAVES = frozenset(_SCALAR_TYPES + (type(None),))

# The kind of msgpack value each first byte begins (msgpack's specification, in ranges)
_END = 256  # what _Source.peek returns at the end of the data: _KINDS[_END] is "end"
_KINDS = [
    kind
    for first, last, kind in [
        (0x00, 0x7F, "int"), (0x80, 0x8F, "map"), (0x90, 0x9F, "array"), (0xA0, 0xBF, "str"),
        (0xC0, 0xC0, "nil"), (0xC1, 0xC1, "reserved byte"), (0xC2, 0xC3, "bool"), (0xC4, 0xC6, "bin"),
        (0xC7, 0xC9, "extension"), (0xCA, 0xCB, "float"), (0xCC, 0xD3, "int"), (0xD4, 0xD8, "extension"),
        (0xD9, 0xDB, "str"), (0xDC, 0xDD, "array"), (0xDE, 0xDF, "map"), (0xE0, 0xFF, "int"),
        (_END, _END, "end"),
    ]
    for _ in range(first, last + 1)
]  # fmt: skip
_EXT_HEADERS = {  # first byte: (header size, payload size when fixed by the first byte)
    0xD4: (2, 1), 0xD5: (2, 2), 0xD6: (2, 4), 0xD7: (2, 8), 0xD8: (2, 16),
    0xC7: (3, None), 0xC8: (4, None), 0xC9: (6, None),
}  # fmt: skip
_BIN_HEADER_SIZES = {0xC4: 2, 0xC5: 3, 0xC6: 5}
_FIXEXT = {size: first for first, (_, size) in _EXT_HEADERS.items() if size}  # payload size: first byte

_LEAF = tree.TreeDef("leaf")
_LEAF_NODE = ["leaf"]  # a leaf's node in the structure entry
_NONE = tree.TreeDef("none")

_KIND_OF_TYPE = {  # the kind (as in _KINDS) of what msgpack.unpackb returns
    type(None): "nil", bool: "bool", int: "int", float: "float", str: "str", bytes: "bin", list: "array", dict: "map",
}  # fmt: skip


def _kind_of(value) -> str:
    """The kind (as in _KINDS) of a value that msgpack.unpackb returned."""
    return _KIND_OF_TYPE.get(type(value), "extension")
