"""The writer: from a tree and its metadata to the bytes of a checkpoint, checked first.

The file is the msgpack map {"format", "version", "metadata", "structure", "tree",
"sha256"} in that order. _encode checks everything and lays the file out as "pieces":
bytes, and arrays that stand for their own data, so that the size is known before
anything is written and no array is copied into an encoded form. _write then writes the
pieces and appends the checksum of all of them as the last entry.
"""

from __future__ import annotations

import hashlib

import msgpack
import numpy as np

from .. import tree
from .errors import CheckpointError, Limits, _printable, _where
from .layout import (
    _CHUNKED,
    _ENTRIES,
    _EXT_ARRAY,
    _EXT_COMPLEX,
    _EXT_NUMPY_SCALAR,
    _FIXEXT,
    _INT_RANGE,
    _LEAF_NODE,
    _SCALAR_LEAVES,
    _SCALAR_TYPES,
    _TRAILER,
    _TRAILER_SIZE,
    DTYPES,
    FORMAT,
    VERSION,
)

#: Arrays larger than this many bytes are split into chunks, as flax does: one msgpack
#: bin holds at most 2**32 - 1 bytes.
MAX_CHUNK_BYTES = 2**30


def _encode(value, metadata, limits: Limits) -> list:
    """Check ``value`` and ``metadata`` against what a checkpoint holds and ``limits``; return
    the pieces of the file before its checksum entry (see :func:`_write`)."""
    metadata = {} if metadata is None else metadata
    if type(metadata) is not dict:
        raise CheckpointError(f"metadata must be a dict, found {type(metadata).__name__}")
    metadata = _plain_metadata(metadata)
    leaves, treedef = tree.flatten(value)
    _check_keys(treedef, ())
    _check_leaves(value, leaves)
    _check_extent(limits, metadata, value)
    structure = _structure_of(treedef)
    pieces = _joined([
        _map_header(len(_ENTRIES)),
        msgpack.packb("format") + msgpack.packb(FORMAT),
        msgpack.packb("version") + msgpack.packb(VERSION),
        msgpack.packb("metadata") + msgpack.packb(metadata),
        msgpack.packb("structure") + msgpack.packb(structure),
        msgpack.packb("tree"),
        *_state_parts(treedef, iter(leaves)),
    ])  # fmt: skip
    size = sum(p.nbytes if isinstance(p, np.ndarray) else len(p) for p in pieces) + _TRAILER_SIZE
    if size > limits.max_bytes:
        raise CheckpointError(
            f"the checkpoint would be {size:,} bytes, more than Limits.max_bytes={limits.max_bytes:,}"
        )
    return pieces


def _write(pieces: list, write) -> None:
    """Write the pieces of :func:`_encode` with ``write``, then the checksum entry. A piece is
    bytes, or an array standing for its elements in C order, little-endian."""
    digest = hashlib.sha256()
    for piece in pieces:
        data = _data_bytes(piece) if isinstance(piece, np.ndarray) else piece
        digest.update(data)
        write(data)
    write(_TRAILER + digest.digest())


def _data_bytes(array: np.ndarray) -> memoryview:
    """The elements of ``array`` in C order, little-endian: its own memory when it is laid
    out so, else a copy."""
    if array.dtype.kind == "b":  # a numpy bool is a byte that may hold 2..255; write 0 and 1 as load requires
        array = array.view(np.uint8) != 0
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return memoryview(data.reshape(-1).view(np.uint8))


def _joined(parts) -> list:
    """``parts`` with each run of bytes gathered into one bytearray (arrays stay as they are)."""
    pieces = [bytearray()]
    for part in parts:
        if isinstance(part, np.ndarray):
            pieces += [part, bytearray()]
        else:
            pieces[-1] += part
    return pieces


def _check_extent(limits: Limits, metadata: dict, value) -> None:
    """Refuse a checkpoint that :func:`~tinyfn.checkpoint.load` would refuse with ``limits``:
    more values or deeper nesting than they allow (the limit on bytes is checked once the size
    is known)."""
    metadata_items, metadata_depth, _, _ = _extents(metadata)
    tree_items, tree_depth, structure_items, structure_depth = _extents(value)
    items = metadata_items + tree_items + structure_items
    if items > limits.max_items:
        raise CheckpointError(
            f"the checkpoint would hold {items:,} msgpack values, more than Limits.max_items={limits.max_items:,} "
            "(save and load it with a larger limits=Limits(max_items=...))"
        )
    for name, depth in (("metadata", metadata_depth), ("tree", max(tree_depth, structure_depth))):
        if depth + 1 > limits.max_depth:  # the entries' values are at depth 2
            raise CheckpointError(
                f"the {name} would reach depth {depth + 1} in the file, more than Limits.max_depth={limits.max_depth} "
                "(a tree with d levels of containers needs depth d + 3, metadata d + 2)"
            )


def _extents(value) -> tuple[int, int, int, int]:
    """``(values, depth)`` of ``value`` written as the tree entry, then as the structure entry.
    In the tree entry a dict, list or tuple is a map holding its items one level deeper, and a
    chunked array a map of maps (see :func:`_chunked_parts`); in the structure entry every node
    is an array holding its kind (and a dict's keys) and its children's nodes one level deeper."""
    if isinstance(value, np.ndarray) and value.nbytes > MAX_CHUNK_BYTES:
        return 4 + value.ndim + len(_chunk_starts(value)), 3, 2, 2
    if not isinstance(value, (dict, list, tuple)):
        return 1, 1, 2, 2
    children = value.values() if isinstance(value, dict) else value
    items, node_items = 1, 2 + (len(value) if isinstance(value, dict) else 0)
    depth, node_depth = (2, 3) if value else (1, 2)
    for child in children:
        if type(child) in _SCALAR_LEAVES:  # most children: counted without a call
            items, node_items = items + 1, node_items + 2
        else:
            child_items, child_depth, child_node_items, child_node_depth = _extents(child)
            items, node_items = items + child_items, node_items + child_node_items
            depth, node_depth = max(depth, child_depth + 1), max(node_depth, child_node_depth + 1)
    return items, depth, node_items, node_depth


def _map_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x80 | n])
    if n < 2**16:
        return b"\xde" + n.to_bytes(2, "big")
    return b"\xdf" + n.to_bytes(4, "big")


def _bin_header(n: int) -> bytes:
    if n < 2**8:
        return bytes([0xC4, n])
    if n < 2**16:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def _ext_header(code: int, n: int) -> bytes:
    """The header of an extension of ``n`` bytes, in the form msgpack itself picks."""
    if n in _FIXEXT:
        return bytes([_FIXEXT[n], code])
    if n < 2**8:
        return bytes([0xC7, n, code])
    if n < 2**16:
        return b"\xc8" + n.to_bytes(2, "big") + bytes([code])
    return b"\xc9" + n.to_bytes(4, "big") + bytes([code])


def _structure_of(treedef):
    """The "structure" entry: ``["leaf"]``, ``["none"]``, ``["list", *children]``,
    ``["tuple", *children]`` or ``["dict", key0, child0, key1, child1, ...]``."""
    children = [_LEAF_NODE if child.kind == "leaf" else _structure_of(child) for child in treedef.children]
    if treedef.kind == "dict":
        return ["dict"] + [item for pair in zip(treedef.keys, children) for item in pair]
    return [treedef.kind] + children


def _state_parts(treedef, leaves):
    """The "tree" entry: the tree as a flax state dict. Dicts, lists and tuples all become maps
    with string keys (``str(key)`` or ``"0"``, ``"1"``, ...), None becomes nil."""
    if treedef.kind == "leaf":
        yield from _leaf_parts(next(leaves))
    elif treedef.kind == "none":
        yield msgpack.packb(None)
    else:
        labels = treedef.keys if treedef.kind == "dict" else range(len(treedef.children))
        yield _map_header(len(treedef.children))
        for label, child in zip(labels, treedef.children):
            yield msgpack.packb(str(label))
            if child.kind == "leaf":  # most children: no generator of their own
                yield from _leaf_parts(next(leaves))
            else:
                yield from _state_parts(child, leaves)


def _leaf_parts(leaf) -> list:
    if isinstance(leaf, np.ndarray):
        if leaf.nbytes > MAX_CHUNK_BYTES:
            return list(_chunked_parts(leaf))
        return _array_parts(_EXT_ARRAY, leaf)
    if isinstance(leaf, np.generic):
        return _array_parts(_EXT_NUMPY_SCALAR, np.asarray(leaf))
    if type(leaf) is complex:
        return [msgpack.packb(msgpack.ExtType(_EXT_COMPLEX, msgpack.packb([leaf.real, leaf.imag])))]
    return [msgpack.packb(leaf)]


def _array_parts(code: int, array: np.ndarray) -> list:
    """flax's array encoding: extension ``code`` holding the msgpack array ``[shape, dtype
    name, data]``, the data a bin of the elements in C order, little-endian. The headers are
    bytes; the array itself stands for its data (see :func:`_write`)."""
    head = b"\x93" + msgpack.packb(list(array.shape)) + msgpack.packb(array.dtype.name) + _bin_header(array.nbytes)
    return [_ext_header(code, len(head) + array.nbytes) + head, array]


def _chunk_starts(array: np.ndarray) -> range:
    """Where the chunks of a chunked array begin, in elements: at most MAX_CHUNK_BYTES each."""
    return range(0, array.size, max(1, MAX_CHUNK_BYTES // array.itemsize))


def _chunked_parts(array: np.ndarray):
    """flax's encoding of a large array: ``{"__msgpack_chunked_array__": True, "shape": {"0": d0, ...},
    "chunks": {"0": flat_piece0, ...}}``, pieces of at most MAX_CHUNK_BYTES in C order."""
    flat = array.reshape(-1)  # a view of a C-ordered array, a copy of any other
    starts = _chunk_starts(array)
    yield _map_header(3)
    yield msgpack.packb(_CHUNKED) + msgpack.packb(True)
    yield msgpack.packb("shape") + msgpack.packb({str(i): size for i, size in enumerate(array.shape)})
    yield msgpack.packb("chunks") + _map_header(len(starts))
    for i, start in enumerate(starts):
        yield msgpack.packb(str(i))
        yield from _array_parts(_EXT_ARRAY, flat[start : start + starts.step])


def _check_keys(treedef, path: tuple) -> None:
    """Dict keys must be str or int, distinct as strings (the tree entry keys by ``str(key)``)."""
    if treedef.kind == "dict":
        where = _where(path)
        seen = {}
        for key in treedef.keys:
            if type(key) is str:
                _check(_str_problem(key), where)
            elif type(key) is int:
                _check(_int_problem(key), where)
            else:
                raise CheckpointError(f"{where}: dict keys must be str or int, found {type(key).__name__} key {key!r}")
            if key == _CHUNKED:
                raise CheckpointError(f"{where}: the key {_CHUNKED!r} is reserved (it marks chunked arrays)")
            if str(key) in seen:
                raise CheckpointError(f"{where}: keys {seen[str(key)]!r} and {key!r} are both written as {str(key)!r}")
            seen[str(key)] = key
    labels = treedef.keys if treedef.kind == "dict" else range(len(treedef.children))
    for label, child in zip(labels, treedef.children):
        if child.children:  # a leaf or an empty container has no keys to check
            _check_keys(child, path + (label,))


def _check_leaves(value, leaves: list) -> None:
    """Every leaf must be one a checkpoint holds; the error names the first that is not."""
    for index, leaf in enumerate(leaves):
        problem = _leaf_problem(leaf)
        if problem:
            path = tree.leaves_with_path(value)[index][0]
            raise CheckpointError(f"{_printable(path)}: {problem}")


def _leaf_problem(leaf) -> str | None:
    """Why ``leaf`` cannot be saved, or None."""
    if type(leaf) is np.ndarray or isinstance(leaf, np.generic):
        if leaf.dtype.name not in DTYPES or leaf.dtype.fields is not None:
            return f"dtype {leaf.dtype} cannot be saved; supported dtypes: {', '.join(DTYPES)}"
        return None
    if type(leaf) is int:
        return _int_problem(leaf)
    if type(leaf) is str:
        return _str_problem(leaf)
    if type(leaf) not in _SCALAR_TYPES:
        return (
            f"cannot save a leaf of type {type(leaf).__name__}; leaves are numpy arrays "
            "(not subclasses: use np.asarray), numpy scalars, or bool, int, float, complex, str"
        )
    return None


def _int_problem(value: int) -> str | None:
    return None if _INT_RANGE[0] <= value <= _INT_RANGE[1] else f"integer {value} does not fit in 64 bits"


def _str_problem(value: str) -> str | None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"string {value!r} is not valid unicode ({exc.reason})"
    return None


def _check(problem: str | None, where: str) -> None:
    if problem:
        raise CheckpointError(f"{where}: {problem}")


def _plain_metadata(value, path=("metadata",)):
    """``value`` checked to be plain msgpack data; numpy bool/int/float scalars become Python numbers."""
    where = _where(path)
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        value = value.item()
    if type(value) is dict:
        for key in value:
            if type(key) is not str:
                raise CheckpointError(f"{where}: metadata keys must be str, found {type(key).__name__} key {key!r}")
            _check(_str_problem(key), where)
        return {key: _plain_metadata(item, path + (key,)) for key, item in value.items()}
    if type(value) in (list, tuple):
        return [_plain_metadata(item, path + (i,)) for i, item in enumerate(value)]
    if type(value) is int:
        _check(_int_problem(value), where)
    elif type(value) is str:
        _check(_str_problem(value), where)
    elif value is not None and type(value) not in (bool, float):
        raise CheckpointError(
            f"{where}: metadata cannot hold {type(value).__name__}; it holds None, bool, int, float, str, "
            "lists and dicts with str keys (put arrays in the tree)"
        )
    return value
