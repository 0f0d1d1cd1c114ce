"""msgpack checkpoints of pytrees: parameters alone or a whole training state.

    save("run/checkpoint.msgpack", {"params": params, "opt_state": opt, "step": 7}, metadata={"epoch": 3})
    state = load("run/checkpoint.msgpack")                 # the same tree, bit for bit
    state = load("run/checkpoint.msgpack", target=state)   # ... checked against a template
    print(describe("run/checkpoint.msgpack"))               # paths, shapes, dtypes, counts

A checkpoint file is one msgpack map: a header (format name and version), the user's
metadata, the tree's container structure, the tree itself encoded the way
``flax.serialization`` encodes state dicts, and a SHA-256 checksum of everything before it.
``docs/checkpoint-format.md`` describes the bytes for readers in other languages.

* **Exact round trip.** Dicts (string or int keys), lists, tuples, None, bool, int, float,
  complex, str, numpy scalars and numpy arrays of the numeric dtypes in :data:`DTYPES`
  come back with the same values (bit for bit), dtypes and container types.
* **One copy of the data.** Loading reads the file once, front to back, in small pieces; an
  array's bytes go from the file straight into the array, so the arrays' data is in memory
  once (the last 16 MiB of a file, which msgpack decodes in one go, twice for a moment) and
  the whole file never is. Restored arrays are read-only, C-ordered and aligned, each in
  memory of its own (keeping one does not keep the others). Saving writes each array from
  its own memory (a copy only of an array that is not C-ordered little-endian).
* **flax interop.** ``flax.serialization.msgpack_restore(data)["tree"]`` is the flax state
  dict of a tinyfn checkpoint; ``from_bytes(data, flax=True)`` reads what flax writes.
* **Strict, and safe on untrusted input.** Only a regular file is read (a named pipe or a
  device is refused before any read); its size is checked against :class:`Limits` before
  reading and its header on the first bytes. No pickle and no object dtypes; every declared
  length is checked against the bytes left before anything is allocated; nesting depth and
  the number of values are capped by :class:`Limits`; only the encodings that
  ``docs/checkpoint-format.md`` lists are accepted. Any bad content raises
  :class:`CheckpointError`, and messages show names from the file escaped.
* **What save writes, load reads.** :func:`save` refuses, naming the limit, a tree that
  :func:`load` would refuse with the same :class:`Limits`.
* **Atomic save.** The file is written under a temporary name in the same folder, synced
  to disk, then renamed over the final name: an interrupted save leaves the previous
  checkpoint untouched. A save keeps an existing file's permissions, writes through a
  symbolic link to the file it names, and removes temporary files that killed saves of the
  same checkpoint left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import math
import os
import platform
import re
import secrets
import stat
import struct
import sys
from collections.abc import Iterator

import msgpack
import numpy as np

from . import tree

__all__ = [
    "FORMAT",
    "VERSION",
    "DTYPES",
    "MAX_CHUNK_BYTES",
    "CheckpointError",
    "CheckpointMismatchError",
    "Limits",
    "save",
    "load",
    "to_bytes",
    "from_bytes",
    "read_metadata",
    "metadata_from_bytes",
    "describe",
]

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

#: Arrays larger than this many bytes are split into chunks, as flax does: one msgpack
#: bin holds at most 2**32 - 1 bytes.
MAX_CHUNK_BYTES = 2**30

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


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read: corrupt, truncated, not a checkpoint, or unsupported."""


class CheckpointMismatchError(CheckpointError, tree.TreeMismatchError):
    """A loaded tree does not match the ``target`` template; the message names every differing path."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Caps on a checkpoint, so that hostile input cannot exhaust memory or the stack.

    :func:`load` refuses a file beyond them and :func:`save` refuses to write one: what
    ``save(..., limits=L)`` writes, ``load(..., limits=L)`` reads (both use the defaults
    when ``limits`` is None).

    ``max_bytes``: largest file (or byte string). ``max_depth``: deepest value, where the file's
    top-level map is at depth 1, its entries at depth 2, and the items of a map or array one
    deeper than it (a tree with ``d`` levels of containers needs ``d + 3``; metadata with ``d``
    levels of containers needs ``d + 2``). ``max_items``: most msgpack values in the metadata,
    structure and tree entries (map keys and what is inside an array's encoding not counted):
    a leaf takes three (itself, and the two of its structure node ``["leaf"]``), a list or
    tuple three plus its items', a dict three plus one per key plus its items'. Each value
    read costs tens of bytes of Python objects, so ``max_items`` also bounds that memory.
    """

    max_bytes: int = 2**33
    max_depth: int = 100
    max_items: int = 10_000_000

    def __post_init__(self):
        for name in ("max_bytes", "max_depth", "max_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be positive, found {getattr(self, name)}")
        if self.max_depth > 300:  # reading and writing recurse two frames a level; stay clear of Python's limit
            raise ValueError(f"Limits.max_depth must be at most 300, found {self.max_depth}")


# ----------------------------------------------------------------------------------------
# Public API


def save(path, tree, *, metadata=None, limits=None) -> None:
    """Write ``tree`` to the file ``path`` atomically.

    ``tree`` is a pytree (see :func:`to_bytes` for what it may hold); ``metadata`` an optional
    dict of plain values (None, bool, int, float, str, lists, dicts with string keys; numpy
    scalars are stored as Python numbers, tuples come back as lists). Both are checked before
    anything is written, against :class:`Limits` too (``limits``, or the defaults), so that
    :func:`load` with the same limits reads the file. The bytes go to a temporary file
    ``.NAME.HOST.PID.RANDOM.tmp`` beside the file, are flushed and fsynced, and the temporary
    file is then renamed to ``path``: if the save is interrupted, ``path`` still holds the
    previous checkpoint, and the next save of ``path`` on this machine removes what a killed
    save left behind.

    If ``path`` exists its permission bits are kept (a new file gets the usual ``0o666`` minus
    the umask). If ``path`` is a symbolic link, the file it points to is replaced and the link
    stays, as editors do.
    """
    pieces = _encode(tree, metadata, limits or Limits())
    target = os.path.realpath(path)
    folder, name = os.path.split(target)
    _remove_stale_temporaries(folder, name)
    mode = _permission_bits(target)
    temporary = os.path.join(folder, f".{name}.{_HOST}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    # created private when it will get an existing file's mode, so it is never wider in between
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666 if mode is None else 0o600)
    try:
        with open(fd, "wb") as f:
            if mode is not None:
                os.chmod(temporary, mode)
            _write(pieces, f.write)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    _fsync_folder(folder)


def load(path, target=None, *, flax=False, limits=None):
    """Read the tree saved in the file ``path``; see :func:`from_bytes` for the arguments.

    Returns the tree; arrays are read-only. A missing file raises ``FileNotFoundError``;
    anything that is not a regular file, or a file too large for ``limits``, raises
    :class:`CheckpointError` before a byte is read, and so does anything wrong with the
    content. The file is read once, in small pieces, an array's bytes straight into the array:
    loading takes the arrays' size in memory once, plus 2 MB or so. Below 16 MiB, msgpack
    decodes the rest of a file in one go, which takes up to twice its size while it lasts.
    Python values (a list of floats, say) take about 12 times their size in the file, as
    Python objects do; ``docs/checkpoint-format.md`` has the measurements.
    """
    limits = limits or Limits()
    with _opened(path, limits, checksummed=not flax) as source:
        found = _read_flax(source, limits) if flax else _read_checkpoint(source, limits)[1]
    return _matched(found, target, flax)


def to_bytes(tree, *, metadata=None, limits=None) -> bytes:
    """The checkpoint of ``tree`` as bytes (exactly what :func:`save` writes).

    ``tree`` is a pytree of dicts (keys str or int), lists, tuples and None whose leaves are
    numpy arrays (any shape and memory layout, dtypes in :data:`DTYPES`), numpy scalars, or
    Python bool, int (64-bit range), float, complex or str. Anything else raises
    :class:`CheckpointError` naming the path, and so does a tree beyond ``limits`` (see
    :func:`save`). ``metadata`` is as for :func:`save`. Equal trees give equal bytes (dict
    keys are written in sorted order).
    """
    out = io.BytesIO()
    _write(_encode(tree, metadata, limits or Limits()), out.write)
    return out.getvalue()


def from_bytes(data, target=None, *, flax=False, limits=None):
    """Read a tree from checkpoint bytes made by :func:`to_bytes` (or flax, see below).

    Args:
      data: ``bytes`` (or a bytes-like object).
      target: optional template tree. The loaded tree must have the same structure (dict
        keys, list/tuple kinds and lengths) and leaves of the same kind, shape and dtype;
        otherwise :class:`CheckpointMismatchError` lists every differing path, such as
        ``params/dense_1/w: expected shape (64, 10) float32, found (64, 12) float32``.
      flax: read bytes written by ``flax.serialization.msgpack_serialize`` or ``to_bytes``
        instead: a bare msgpack object with no header and no checksum. Without ``target``
        the result is what flax's ``msgpack_restore`` returns (lists and tuples saved
        through flax's ``to_bytes`` appear as dicts with keys "0", "1", ...); with
        ``target``, such dicts and string keys are turned back into the target's lists,
        tuples and int keys before the check.
      limits: :class:`Limits` for untrusted input (defaults apply when None).

    Returns the tree, with read-only C-ordered arrays (copies: they do not share ``data``).
    Raises :class:`CheckpointError` for anything that is not an intact checkpoint.
    """
    limits = limits or Limits()
    with _in_memory(data, limits, checksummed=not flax) as source:
        found = _read_flax(source, limits) if flax else _read_checkpoint(source, limits)[1]
    return _matched(found, target, flax)


def read_metadata(path, *, limits=None) -> dict:
    """The metadata dict stored in the checkpoint file ``path`` (the checksum is verified)."""
    limits = limits or Limits()
    with _opened(path, limits, checksummed=True) as source:
        return _read_checkpoint(source, limits, with_tree=False)[0]


def metadata_from_bytes(data, *, limits=None) -> dict:
    """The metadata dict stored in checkpoint bytes (the checksum is verified)."""
    limits = limits or Limits()
    with _in_memory(data, limits, checksummed=True) as source:
        return _read_checkpoint(source, limits, with_tree=False)[0]


def describe(path_or_tree, *, flax=False, limits=None) -> str:
    """A table of a checkpoint's leaves for people to read: what ``tinyfn inspect`` prints.

    ``path_or_tree`` is a checkpoint file (``str`` or path-like; read with ``flax=True`` for
    a flax file) or a tree. Returns lines with the file's format and size, its metadata,
    then one row per leaf (path, shape, dtype, element count) and the totals. A list or
    tuple of Python scalars of one type, such as a metric's history, is one row of shape ``[n]``.
    Text from the file (keys, strings) is shown escaped where it is not printable, so that a
    hostile file cannot send control sequences to the terminal; long values are cut short.
    """
    lines = []
    if isinstance(path_or_tree, (str, os.PathLike)):
        limits = limits or Limits()
        with _opened(path_or_tree, limits, checksummed=not flax) as source:
            if flax:
                metadata, value = {}, _read_flax(source, limits)
                kind = "flax msgpack, no checksum"
            else:
                metadata, value = _read_checkpoint(source, limits)
                kind = f"{FORMAT} version {VERSION}, checksum ok"
        lines.append(f"{_printable(os.fspath(path_or_tree))}  ({kind}, {source.size:,} bytes)")
        if metadata:
            lines.append("metadata:")
            lines += [f"  {_printable(key)}: {_shown(value, 200)}" for key, value in metadata.items()]
        lines.append("")
    else:
        value = path_or_tree
    return "\n".join(lines + _table(value))


# ----------------------------------------------------------------------------------------
# Text from files in messages


def _printable(text: str) -> str:
    """``text`` as is when every character is printable, else its repr (``'\\x1b[2J'``): text
    from a file must not reach a terminal as control characters."""
    return text if text.isprintable() else repr(text)


def _where(path: tuple) -> str:
    """A tree path for messages: keys and indices joined by ``/``, each shown by :func:`_printable`."""
    return "/".join(_printable(str(p)) for p in path) if path else "<root>"


def _shown(value, limit: int = 80) -> str:
    """``repr(value)`` (which escapes unprintable characters), cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------
# Writing
#
# The file is the msgpack map {"format", "version", "metadata", "structure", "tree",
# "sha256"} in that order. _encode checks everything and lays the file out as "pieces":
# bytes, and arrays that stand for their own data, so that the size is known before
# anything is written and no array is copied into an encoded form. _write then writes the
# pieces and appends the checksum of all of them as the last entry.


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
    """Refuse a checkpoint that :func:`load` would refuse with ``limits``: more values or
    deeper nesting than they allow (the limit on bytes is checked once the size is known)."""
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


# ----------------------------------------------------------------------------------------
# Saving: the files around the checkpoint

_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
# The machine's short name, as it appears in temporary file names (letters, digits, "-")
_HOST = re.sub(r"[^A-Za-z0-9-]", "", platform.node().split(".")[0])[:32] or "host"


def _permission_bits(path: str) -> int | None:
    """The permission bits of the file ``path``, or None if there is none."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode) & 0o777
    except FileNotFoundError:
        return None


def _remove_stale_temporaries(folder: str, name: str) -> None:
    """Delete the temporary files that saves of ``name`` on this machine left behind when their
    process was killed: ``.NAME.HOST.PID.RANDOM.tmp`` whose process PID no longer runs. Files
    of running processes, and of other machines sharing the folder, stay. Best effort: a file
    that cannot be removed is left."""
    if os.name != "posix":  # on Windows, os.kill(pid, 0) would end the process, not probe it
        return
    pattern = re.compile(rf"\.{re.escape(name)}\.{re.escape(_HOST)}\.([1-9][0-9]{{0,9}})\.[0-9a-f]{{12}}\.tmp")
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if match and entry.is_file(follow_symlinks=False) and not _running(int(match[1])):
                with contextlib.suppress(OSError):
                    os.remove(entry.path)


def _running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (POSIX)."""
    try:
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it exists, and belongs to someone else
        return True
    return True


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX; Windows cannot open a folder for syncing)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------
# Reading
#
# A file is read once, front to back, by a _Reader (see there for its two ways of
# reading) over a _Source.

_CHUNK = 64 * 1024  # bytes read at a time
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a named pipe must not wait for a writer

_LITTLE_ENDIAN = {name: np.dtype(name).newbyteorder("<") for name in DTYPES}
_NOT_SCALARS = {  # why the reader refuses each kind where it expects a scalar
    "bin": "found a msgpack bin, which holds array data only (inside an array extension)",
    "extension": "found a msgpack extension: extensions (arrays, complex, numpy scalars) belong in the tree only",
    "map": "expected a scalar, found a map",
    "array": "expected a scalar, found an array",
    "end": "the data ends early (truncated file?)",
}
_KIND_OF_TYPE = {  # the kind (as in _KINDS) of what msgpack.unpackb returns
    type(None): "nil", bool: "bool", int: "int", float: "float", str: "str", bytes: "bin", list: "array", dict: "map",
}  # fmt: skip
_COMPLEX_PAYLOAD = struct.Struct(">BBdBd")  # fixarray of 2, float 64, float 64: 92 cb ........ cb ........


class _Source:
    """The bytes of a checkpoint (a file or bytes in memory), read once, front to back.

    msgpack's Unpacker pulls bytes through :meth:`read`; the reader looks at the next byte with
    :meth:`peek` and takes bytes past msgpack with :meth:`read_into` (an array's data goes
    straight into the array). Every byte before ``hash_end`` goes through SHA-256 once, in
    order, as it is read; :meth:`checksum_matches` compares the result with the last 32 bytes.
    """

    def __init__(self, stream, size: int, hash_end: int, name: str):
        self.size = size
        self.given = 0  # bytes passed on, to msgpack or to read_into
        self._stream = stream
        self._name = name
        self._hash_end = hash_end
        self._digest = hashlib.sha256()
        self._fetched = 0  # bytes read from the stream
        self._window = bytearray()  # the bytes from _window_start to _fetched, for peek
        self._window_start = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._stream.close()

    def read(self, n: int) -> bytes:
        """At most ``n`` of the next bytes, ``b""`` at the end (msgpack's Unpacker reads these)."""
        if self.given == self._fetched:
            piece = self._fetch(n)
            self._window += piece
        else:  # bytes peek read ahead
            start = self.given - self._window_start
            piece = bytes(self._window[start : start + n])
        self.given += len(piece)
        return piece

    def peek(self, offset: int) -> int:
        """The byte at ``offset`` (_END at the end). ``offset`` is at most ``given``, and at
        least the offset of the previous call: bytes before it are forgotten."""
        if offset - self._window_start >= _CHUNK:
            del self._window[: offset - self._window_start]
            self._window_start = offset
        if offset == self._fetched:
            if offset == self.size:
                return _END
            self._window += self._fetch(_CHUNK)
        return self._window[offset - self._window_start]

    def read_into(self, out: memoryview) -> None:
        """Fill ``out`` with the bytes that follow those given so far."""
        start = self.given - self._window_start
        ahead = self._window[start : start + len(out)]
        out[: len(ahead)] = ahead
        self.given += len(ahead)
        rest = out[len(ahead) :]
        if rest:  # past the window: straight from the stream
            while rest:
                count = self._stream.readinto(rest)
                if not count:
                    raise self._changed()
                self._hash(rest[:count])
                self._fetched += count
                rest = rest[count:]
            self.given = self._window_start = self._fetched
            self._window.clear()

    @contextlib.contextmanager
    def bytes_read(self, start: int, end: int) -> Iterator[memoryview]:
        """A view of the bytes from ``start`` to ``end``, read already and not forgotten by :meth:`peek`."""
        begin = start - self._window_start
        with memoryview(self._window) as window, window[begin : begin + end - start] as data:
            yield data

    def tail(self, n: int) -> bytes:
        """The last ``n`` bytes, read without moving on."""
        position = self._stream.tell()
        self._stream.seek(self.size - n)
        data = self._stream.read(n)
        self._stream.seek(position)
        return data

    def checksum_matches(self) -> bool:
        """Whether the last 32 bytes are the SHA-256 of the bytes before ``hash_end`` (reading on to it)."""
        while self._fetched < self._hash_end:
            self._fetch(4 * _CHUNK)
        return self._digest.digest() == self.tail(32)

    def _fetch(self, n: int) -> bytes:
        n = min(n, self.size - self._fetched)
        data = self._stream.read(n) if n else b""
        if n and not data:
            raise self._changed()
        self._hash(data)
        self._fetched += len(data)
        return data

    def _hash(self, data) -> None:
        covered = self._hash_end - self._fetched  # how much of data lies before hash_end
        if covered > 0:
            self._digest.update(data[:covered])

    def _changed(self) -> CheckpointError:
        return CheckpointError(
            f"{self._name}: the file ended after {self._fetched:,} of its {self.size:,} bytes "
            "(it changed while it was read)"
        )


def _opened(path, limits: Limits, *, checksummed: bool) -> _Source:
    """A _Source over the regular file ``path``; anything else, or a file beyond ``limits``,
    is refused before a byte is read."""
    name = _printable(os.fspath(path))
    fd = os.open(path, os.O_RDONLY | _O_NONBLOCK | _O_BINARY)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{name}: expected a checkpoint file, found {_file_kind(info.st_mode)}")
        size = _checked_size(info.st_size, limits, f"{name}: ")
    except BaseException:
        os.close(fd)
        raise
    return _Source(open(fd, "rb", buffering=0), size, _hash_end(size, checksummed), name)


def _in_memory(data, limits: Limits, *, checksummed: bool) -> _Source:
    """A _Source over the bytes-like ``data``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, found {type(data).__name__}")
    size = _checked_size(memoryview(data).nbytes, limits, "")
    stream = io.BytesIO(data if type(data) is bytes else bytes(data))  # BytesIO shares bytes, copies the rest
    return _Source(stream, size, _hash_end(size, checksummed), "the data")


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]  # fmt: skip
    return next((kind for test, kind in kinds if test(mode)), "something that is not a regular file")


def _checked_size(size: int, limits: Limits, where: str) -> int:
    if size == 0:
        raise CheckpointError(f"{where}empty input: a checkpoint is never empty")
    if size > limits.max_bytes:
        raise CheckpointError(f"{where}{size:,} bytes is more than Limits.max_bytes={limits.max_bytes:,}")
    return size


def _hash_end(size: int, checksummed: bool) -> int:
    """Where the bytes covered by the checksum end: before the 41-byte checksum entry."""
    return max(size - _TRAILER_SIZE, 0) if checksummed else 0


def _read_checkpoint(source: _Source, limits: Limits, with_tree: bool = True):
    """``(metadata, tree)`` from a checkpoint (``tree`` is None unless ``with_tree``)."""
    reader = _Reader(source, limits)
    entries = _read_header(reader)
    if source.size < _TRAILER_SIZE or source.tail(_TRAILER_SIZE)[:-32] != _TRAILER:
        raise CheckpointError("corrupt checkpoint: the checksum at the end is missing (truncated or extended file?)")
    if entries != len(_ENTRIES):
        raise CheckpointError(f"corrupt checkpoint: the top-level map has {entries} entries, expected {len(_ENTRIES)}")
    try:
        found = _read_entries(reader, with_tree)
    except CheckpointError as error:
        if not source.checksum_matches():  # the damage, not the reader, is the news
            raise _checksum_mismatch() from error
        raise
    if not source.checksum_matches():
        raise _checksum_mismatch()
    return found


def _checksum_mismatch() -> CheckpointError:
    return CheckpointError("corrupt checkpoint: SHA-256 checksum mismatch (the bytes changed after they were written)")


def _read_header(reader: _Reader) -> int:
    """Check the format name and version on the first bytes; return the number of top-level entries."""
    not_a_checkpoint = (
        f"not a tinyfn checkpoint: it does not begin with the entry 'format': {FORMAT!r} "
        "(to read a file written by flax.serialization, pass flax=True)"
    )
    try:
        entries = reader.map_header(())
        name = reader.scalar_entry("format")
    except CheckpointError as exc:
        raise CheckpointError(f"{not_a_checkpoint}; {exc}") from None
    if name != FORMAT:
        raise CheckpointError(not_a_checkpoint)
    version = reader.scalar_entry("version")
    if type(version) is not int or version != VERSION:
        raise CheckpointError(
            f"unsupported checkpoint version {_shown(version)}: this tinyfn reads version {VERSION} "
            "(or the file is corrupt)"
        )
    return entries


def _read_entries(reader: _Reader, with_tree: bool):
    """``(metadata, tree)`` from the entries after the header."""
    metadata = reader.entry("metadata")
    if type(metadata) is not dict:
        raise CheckpointError(f"corrupt checkpoint: metadata is not a map, found {_describe_node(metadata)}")
    if not with_tree:
        return metadata, None
    treedef = _treedef_from(reader.entry("structure"), ("structure",))
    state = reader.entry("tree", arrays=True)
    if reader.offset != reader.size - _TRAILER_SIZE:
        raise CheckpointError("corrupt checkpoint: the tree entry does not end where the checksum entry begins")
    leaves: list = []
    _collect_leaves(treedef, state, ("tree",), leaves)
    return metadata, tree.unflatten(treedef, leaves)


def _read_flax(source: _Source, limits: Limits):
    reader = _Reader(source, limits)
    value = reader.value((), 1, arrays=True)
    if reader.offset != source.size:
        raise CheckpointError(f"unexpected bytes after the msgpack object (at offset {reader.offset:,})")
    return value


_BULK_BYTES = 16 * 2**20  # the most bytes msgpack decodes in one go (see _Reader)
_SCALARS = frozenset({type(None), bool, int, float, str})
_SCALARS_AND_ARRAYS = _SCALARS | {np.ndarray, complex}


class _Malformed(Exception):
    """What is wrong with an extension, said without its path (the reader adds it)."""


class _BadMap(Exception):
    """What is wrong with the keys of a map msgpack decoded in bulk, said without its path."""


class _Reader:
    """Reads msgpack values from a _Source, front to back, in one of two ways.

    * In bulk, when the rest of the data is small (at most _BULK_BYTES, and no more bytes than
      the values the Limits still allow: a value takes at least a byte). msgpack's Unpacker
      first skips the value, which proves that every item its headers declare is present
      while building nothing; ``msgpack.unpackb`` then decodes those bytes in one go (it sets
      aside room for the count a header declares, which is safe once the items are known to
      be there), extensions included (see :func:`_extension_hook`), and :meth:`_checked`
      checks the result.
    * Walking, otherwise. msgpack decodes the scalars and the headers of maps and arrays; the
      reader builds maps and lists item by item once it has checked that the bytes left can
      hold the items a header declares, and reads extensions itself, so that an array's bytes
      go from the source straight into the array.

    Both check the same things with the same messages: depth and the number of values
    against the Limits, string keys without duplicates, the kinds of values allowed where
    they are, and the encoding of extensions.
    """

    def __init__(self, source: _Source, limits: Limits):
        self.size = source.size
        self._source = source
        self._limits = limits
        self._items = 0
        self._bypassed = 0  # bytes taken past msgpack (see _read_raw_into): its tell() does not count them
        # its limits on lengths (max_str_len, max_map_len, ...) follow max_buffer_size: the data's size
        self._unpacker = msgpack.Unpacker(source, read_size=_CHUNK, max_buffer_size=max(source.size, _CHUNK), raw=False)

    @property
    def offset(self) -> int:
        """Where the next value begins."""
        return self._unpacker.tell() + self._bypassed

    def entry(self, name: str, *, arrays: bool = False):
        """The value of the next top-level entry, whose key must be ``name``."""
        self._expect_key(name)
        return self.value((name,), 2, arrays)

    def scalar_entry(self, name: str):
        """The value of the next top-level entry, whose key must be ``name``: a scalar, not counted."""
        self._expect_key(name)
        return self._scalar((name,), _KINDS[self._first()])

    def map_header(self, path: tuple) -> int:
        kind = _KINDS[self._first()]
        if kind != "map":
            raise CheckpointError(f"{_where(path)}: expected a msgpack map, found {_a(kind)}")
        return self._header(path, self._unpacker.read_map_header, 2)

    def value(self, path: tuple, depth: int, arrays: bool):
        """The next value; ``arrays`` allows extensions (arrays, complex numbers, numpy scalars)."""
        self._enter(path, depth, 1)
        first = self._first()  # which also keeps the source's window from here on, as _bulk needs
        if self.size - self.offset <= min(_BULK_BYTES, self._limits.max_items - self._items):
            return self._checked(self._bulk(path), path, depth, arrays)
        kind = _KINDS[first]
        if kind == "map":
            return self._map(path, depth, arrays)
        if kind == "array":
            return self._list(path, depth, arrays)
        if kind == "extension" and arrays:
            try:
                return self._extension(first)
            except _Malformed as problem:
                raise CheckpointError(f"{_where(path)}: {problem}") from None
        return self._scalar(path, kind)

    def _enter(self, path, depth: int, count: int) -> None:
        """Count ``count`` values at ``depth`` against the limits."""
        if count and depth > self._limits.max_depth:
            raise CheckpointError(f"{_where(path)}: nested deeper than Limits.max_depth={self._limits.max_depth}")
        self._items += count
        if self._items > self._limits.max_items:
            raise CheckpointError(f"more than Limits.max_items={self._limits.max_items:,} values")

    # In bulk

    def _bulk(self, path):
        """The next value as ``msgpack.unpackb`` decodes it: maps by :func:`_map_hook`,
        extensions by :func:`_extension_hook`, bins as bytes."""
        start = self.offset
        self._call(path, self._unpacker.skip)
        with self._source.bytes_read(start, self.offset) as data:
            return self._call(path, lambda: _unpack_in_bulk(data))

    def _checked(self, value, path, depth, arrays):
        """``value`` (counted already) from :meth:`_bulk`, checked as the walker checks what it
        reads, with maps turned into dicts."""
        kind = type(value)
        plain = _SCALARS_AND_ARRAYS if arrays else _SCALARS  # the items that need no checking
        if kind is dict:
            self._enter(path, depth + 1, len(value))
            for key, item in value.items():
                if type(item) not in plain:
                    value[key] = self._checked(item, path + (key,), depth + 1, arrays)
            return _unchunk(value, path) if arrays and _CHUNKED in value else value
        if kind is list:
            self._enter(path, depth + 1, len(value))
            if not plain.issuperset(map(type, value)):  # most lists hold scalars, such as a structure node ["leaf"]
                for i, item in enumerate(value):
                    if type(item) not in plain:
                        value[i] = self._checked(item, path + (i,), depth + 1, arrays)
            return value
        if kind in plain or arrays and isinstance(value, np.generic):
            return value
        if kind is _BadMap or kind is _Malformed and arrays:
            raise CheckpointError(f"{_where(path)}: {value}")
        if kind is msgpack.Timestamp and arrays:  # msgpack decodes extension -1 itself
            raise CheckpointError(f"{_where(path)}: {_unknown_extension(-1)}")
        raise _not_scalar_error(path, _kind_of(value))

    # Walking

    def _map(self, path, depth, arrays) -> dict:
        out = {}
        for _ in range(self.map_header(path)):
            key = self._key(path)
            if key in out:
                raise CheckpointError(f"{_where(path)}: {_duplicate_key(key)}")
            out[key] = self.value(path + (key,), depth + 1, arrays)
        if arrays and _CHUNKED in out:
            return _unchunk(out, path)
        return out

    def _list(self, path, depth, arrays) -> list:
        out = []
        for i in range(self._header(path, self._unpacker.read_array_header, 1)):
            out.append(self.value(path + (i,), depth + 1, arrays))
        return out

    def _key(self, path):
        kind = _KINDS[self._first()]
        if kind != "str":
            raise CheckpointError(f"{_where(path)}: {_not_a_key(kind)}")
        return self._call(path, self._unpacker.unpack)

    def _expect_key(self, name: str) -> None:
        key = self._key((name,))
        if key != name:
            raise CheckpointError(f"corrupt checkpoint: expected the entry {name!r} next, found {_shown(key)}")

    def _scalar(self, path, kind: str):
        if kind in _NOT_SCALARS:
            raise _not_scalar_error(path, kind)
        return self._call(path, self._unpacker.unpack)

    def _first(self) -> int:
        """The first byte of the next value (_END at the end); ``_KINDS[byte]`` is its kind."""
        return self._source.peek(self._unpacker.tell() + self._bypassed)

    def _header(self, path, read_header, min_bytes_per_item: int) -> int:
        """The item count of the map or array header ``read_header`` reads, checked against the
        bytes left and the values the limits still allow before anything is allocated."""
        length = self._call(path, read_header)
        remaining = self.size - self.offset
        if length * min_bytes_per_item > remaining:
            raise CheckpointError(
                f"{_where(path)}: declares {length:,} items but only {remaining:,} bytes remain (truncated or corrupt)"
            )
        if length > self._limits.max_items - self._items:
            limit = self._limits.max_items
            raise CheckpointError(f"{_where(path)}: {length:,} items make more than Limits.max_items={limit:,} values")
        return length

    def _call(self, path, read):
        try:
            return read()
        except CheckpointError:
            raise
        except msgpack.OutOfData:
            raise CheckpointError(f"{_where(path)}: the data ends early (truncated file?)") from None
        except msgpack.StackError:  # msgpack nests at most 1024 deep, Limits.max_depth at most 300
            limit = self._limits.max_depth
            raise CheckpointError(f"{_where(path)}: nested deeper than Limits.max_depth={limit}") from None
        except (ValueError, msgpack.UnpackException) as exc:
            raise CheckpointError(f"{_where(path)}: malformed msgpack ({type(exc).__name__}: {exc})") from None

    def _extension(self, first: int):
        """The value of the extension that begins with the byte ``first`` (raises _Malformed)."""
        header_size, fixed_size = _EXT_HEADERS[first]
        header = self._read_raw(header_size)
        size = fixed_size or int.from_bytes(header[1:-1], "big")
        code = int.from_bytes(header[-1:], "big", signed=True)
        end = self.offset + size
        if end > self.size:
            raise _Malformed(f"an extension declares {size:,} bytes but only {self.size - self.offset:,} remain")
        return _extension_value(code, lambda: self._read_raw(size), lambda: self._array(end))

    def _array(self, end: int) -> np.ndarray:
        """The array of an extension payload ``[shape, dtype name, data]`` that ends at ``end``,
        its data read straight into the array."""
        if _KINDS[self._first()] != "array" or self._raw_call(self._unpacker.read_array_header) != 3:
            raise _Malformed(_array_layout())
        kind = _KINDS[self._first()]
        if kind != "array":
            raise _Malformed(_array_layout(f"its shape must be a msgpack array, found {_a(kind)}"))
        ndim = self._raw_call(self._unpacker.read_array_header)
        if ndim > _MAX_NDIM:
            raise _Malformed(_array_layout(f"at most {_MAX_NDIM} dimensions, found {ndim:,}"))
        shape = [self._dimension() for _ in range(ndim)]
        kind = _KINDS[self._first()]
        if kind != "str":
            raise _Malformed(_array_layout(f"its dtype name must be a str, found {_a(kind)}"))
        name = self._raw_call(self._unpacker.unpack)
        first = self._first()
        if _KINDS[first] != "bin":
            raise _Malformed(_array_layout(f"its data must be a msgpack bin, found {_a(_KINDS[first])}"))
        size = int.from_bytes(self._read_raw(_BIN_HEADER_SIZES[first])[1:], "big")
        dtype = _array_dtype(shape, name, size)
        if self.offset + size != end:
            raise _Malformed("the array's encoding does not fill its extension exactly")
        out = np.empty(shape, dtype)
        data = out.reshape(-1).view(np.uint8)
        self._read_raw_into(memoryview(data))
        if dtype.kind == "b":
            _check_bools(data)
        out.flags.writeable = False
        return out

    def _dimension(self) -> int:
        kind = _KINDS[self._first()]
        if kind != "int":
            raise _Malformed(f"an array's dimensions must be ints, found {_a(kind)}")
        return self._raw_call(self._unpacker.unpack)

    def _raw_call(self, read):
        """``read()``, its msgpack errors raised as _Malformed (inside an extension)."""
        try:
            return read()
        except CheckpointError:
            raise
        except msgpack.OutOfData:
            raise _Malformed("the data ends early (truncated file?)") from None
        except (ValueError, msgpack.UnpackException) as exc:
            raise _Malformed(_array_layout(f"{type(exc).__name__}: {exc}")) from None

    def _read_raw(self, n: int) -> bytearray:
        if n > self.size - self.offset:
            raise _Malformed("the data ends early (truncated file?)")
        out = bytearray(n)
        self._read_raw_into(memoryview(out))
        return out

    def _read_raw_into(self, out: memoryview) -> None:
        """Fill ``out`` with the next bytes, past msgpack: those it has read ahead come from its
        buffer, the rest straight from the source."""
        held = min(len(out), self._source.given - self.offset)
        out[:held] = self._unpacker.read_bytes(held)
        if held < len(out):
            self._source.read_into(out[held:])
            self._bypassed += len(out) - held


# Maps and extensions in bulk, and the messages both ways of reading share


def _unpack_in_bulk(data: memoryview):
    """The msgpack value ``data`` holds, every item of which is known to be there (see
    _Reader). Its limits on lengths (max_str_len, max_map_len, ...) default to len(data)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, object_pairs_hook=_map_hook, ext_hook=_extension_hook)


def _map_hook(pairs: list):
    """msgpack's object_pairs_hook in bulk: the dict of ``pairs``, or the _BadMap saying why
    there is none, which :meth:`_Reader._checked` raises with the path."""
    try:
        out = dict(pairs)
    except TypeError:  # an unhashable key, such as a list
        out = {}
    if len(out) == len(pairs) and {str}.issuperset(map(type, out)):
        return out
    seen = set()
    for key, _ in pairs:
        if type(key) is not str:
            return _BadMap(_not_a_key(_kind_of(key)))
        if key in seen:
            return _BadMap(_duplicate_key(key))
        seen.add(key)


def _extension_hook(code: int, payload: bytes):
    """msgpack's ext_hook in bulk: the value of an extension, or the _Malformed saying why it
    has none, which :meth:`_Reader._checked` raises with the path."""
    try:
        return _extension_value(code, lambda: payload, lambda: _array_from_payload(payload))
    except _Malformed as problem:
        return problem


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


def _kind_of(value) -> str:
    """The kind (as in _KINDS) of a value that msgpack.unpackb returned."""
    return _KIND_OF_TYPE.get(type(value), "extension")


def _not_a_key(kind: str) -> str:
    return f"map keys must be strings, found {_a(kind)}"


def _duplicate_key(key) -> str:
    return f"duplicate map key {_shown(key)}"


def _not_scalar_error(path: tuple, kind: str) -> CheckpointError:
    return CheckpointError(f"{_where(path)}: {_NOT_SCALARS[kind]}")


def _a(kind: str) -> str:
    """``kind`` with an article, for messages: "a map", "an int", "the end of the data"."""
    if kind == "end":
        return "the end of the data"
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {'msgpack ' + kind if kind in ('bin', 'extension') else kind}"


def _unchunk(node: dict, path: tuple) -> np.ndarray:
    """The array of a flax chunked-array map (see :func:`_chunked_parts`)."""
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


def _treedef_from(node, path: tuple) -> tree.TreeDef:
    """The TreeDef described by the "structure" entry (see :func:`_structure_of`)."""
    if type(node) is not list or not node or node[0] not in ("leaf", "none", "list", "tuple", "dict"):
        raise CheckpointError(f"{_where(path)}: invalid structure node {_shown(node)}")
    kind, rest = node[0], node[1:]
    if kind in ("leaf", "none"):
        if rest:
            raise CheckpointError(f"{_where(path)}: a {kind} structure node has no children")
        return _LEAF if kind == "leaf" else _NONE
    if kind in ("list", "tuple"):
        return tree.TreeDef(kind, (), _child_treedefs(range(len(rest)), rest, path))
    keys, children = rest[0::2], rest[1::2]
    if len(keys) != len(children) or any(type(k) not in (str, int) for k in keys):
        raise CheckpointError(f"{_where(path)}: a dict structure node alternates str or int keys and children")
    if len({str(k) for k in keys}) != len(keys):
        raise CheckpointError(f"{_where(path)}: duplicate dict keys in the structure")
    return tree.TreeDef("dict", tuple(keys), _child_treedefs(keys, children, path))


def _child_treedefs(labels, children: list, path: tuple) -> tuple:
    treedefs = []
    for label, child in zip(labels, children):  # most children are leaves: a comparison instead of a call
        treedefs.append(_LEAF if child == ["leaf"] else _treedef_from(child, path + (label,)))
    return tuple(treedefs)


def _collect_leaves(treedef, node, path: tuple, out: list) -> None:
    """Append the leaves of the "tree" entry ``node`` to ``out``, checking it follows ``treedef``."""
    if treedef.kind == "leaf":
        if not (isinstance(node, (np.ndarray, np.generic)) or type(node) in _SCALAR_TYPES):
            raise CheckpointError(f"{_where(path)}: expected a leaf (array or scalar), found {_describe_node(node)}")
        out.append(node)
        return
    if treedef.kind == "none":
        if node is not None:
            raise CheckpointError(f"{_where(path)}: expected nil for None, found {_describe_node(node)}")
        return
    labels = treedef.keys if treedef.kind == "dict" else range(len(treedef.children))
    if type(node) is not dict or len(node) != len(labels):
        raise _not_following(labels, path)
    for label, child in zip(labels, treedef.children):
        item = node.get(str(label), _MISSING)
        if child is _LEAF and type(item) in _PLAIN_LEAVES:  # most leaves: appended without a call
            out.append(item)
        elif item is _MISSING:
            raise _not_following(labels, path)
        else:
            _collect_leaves(child, item, path + (label,), out)


_MISSING = object()


def _not_following(labels, path: tuple) -> CheckpointError:
    keys = [str(label) for label in labels]
    return CheckpointError(
        f"{_where(path)}: the tree entry does not follow the structure entry (expected a map with keys {_shown(keys)})"
    )


# ----------------------------------------------------------------------------------------
# Matching a target


def _matched(found, target, flax: bool):
    """``found``, checked against ``target`` (if any) after adopting its container kinds (flax)."""
    if target is None:
        return found
    if flax:
        found = _adopt_containers(found, target)
    _check_matches(found, target)
    return found


def _adopt_containers(found, target):
    """``found`` (read from a flax file) with containers turned into the target's kinds where
    flax's state-dict encoding changed them: lists and tuples saved as maps with keys "0",
    "1", ..., int keys saved as strings. Anything else is left for the check to report."""
    if isinstance(target, (list, tuple)):
        if type(found) is dict and set(found) == {str(i) for i in range(len(found))}:
            found = [found[str(i)] for i in range(len(found))]
        if type(found) is not list:
            return found
        adopted = [_adopt_containers(item, target[i]) if i < len(target) else item for i, item in enumerate(found)]
        return tuple(adopted) if isinstance(target, tuple) else adopted
    if isinstance(target, dict) and type(found) is dict:
        target_key = {str(k): k for k in target}
        renamed = {}
        for key, item in found.items():
            key = key if key in target else target_key.get(key, key)
            renamed[key] = _adopt_containers(item, target[key]) if key in target else item
        return renamed
    return found


def _check_matches(found, target) -> None:
    problems: list = []
    _mismatches(found, target, (), problems)
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise CheckpointMismatchError(
            f"the checkpoint does not match the target ({len(problems)} difference"
            f"{'s' if len(problems) > 1 else ''}):\n  " + "\n  ".join(shown)
        )


def _mismatches(found, target, path: tuple, out: list) -> None:
    """Append to ``out`` one line per place where ``found`` differs from ``target``."""
    where = _where(path)
    if isinstance(target, dict):
        if not isinstance(found, dict):
            out.append(f"{where}: expected a dict, found {_describe_node(found)}")
            return
        for key in _sorted(target.keys() - found.keys()):
            out.append(f"{_where(path + (key,))}: missing from the checkpoint")
        for key in _sorted(found.keys() - target.keys()):
            out.append(f"{_where(path + (key,))}: unexpected (not in the target)")
        for key in _sorted(target.keys() & found.keys()):
            _mismatches(found[key], target[key], path + (key,), out)
    elif isinstance(target, (list, tuple)):
        kind = list if isinstance(target, list) else tuple  # a namedtuple is a tuple, as in tinyfn.tree
        if not isinstance(found, kind) or len(found) != len(target):
            out.append(f"{where}: expected {_describe_node(target)}, found {_describe_node(found)}")
            return
        for i, (item, expected) in enumerate(zip(found, target)):
            _mismatches(item, expected, path + (i,), out)
    elif target is None:
        if found is not None:
            out.append(f"{where}: expected None, found {_describe_node(found)}")
    else:
        expected, got = _describe_node(target), _describe_node(found)
        if expected != got:
            if isinstance(target, np.ndarray) and isinstance(found, np.ndarray):
                got = got.removeprefix("shape ")
            out.append(f"{where}: expected {expected}, found {got}")


def _sorted(keys) -> list:
    return sorted(keys, key=lambda k: (type(k).__name__, k))


def _describe_node(node) -> str:
    """What a node is, in the words of mismatch messages: ``shape (3, 4) float32``, ``int``, ..."""
    if isinstance(node, np.ndarray):
        return f"shape {node.shape} {node.dtype.name}"
    if isinstance(node, np.generic):
        return f"numpy {node.dtype.name} scalar"
    if isinstance(node, dict):
        return f"a dict with keys {_shown(_sorted(node))}"
    if isinstance(node, (list, tuple)):
        return f"a {type(node).__name__} of length {len(node)}"
    return "None" if node is None else type(node).__name__


# ----------------------------------------------------------------------------------------
# describe()


def _table(value) -> list:
    rows = _table_rows(value, ())
    if not rows:
        return ["(no leaves)"]
    header = ("path", "shape", "dtype", "elements")
    cells = [header] + [(path, shape, dtype, f"{count:,}") for path, shape, dtype, count, _, _ in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    lines = [
        f"{path:<{widths[0]}}  {shape:<{widths[1]}}  {dtype:<{widths[2]}}  {count:>{widths[3]}}"
        for path, shape, dtype, count in cells
    ]
    leaves, elements, array_bytes = (sum(row[i] for row in rows) for i in (5, 3, 4))
    lines.append(f"{leaves:,} leaves, {elements:,} elements, {array_bytes:,} bytes of array data")
    return lines


def _table_rows(node, path: tuple) -> list:
    """``(path, shape, dtype, elements, array bytes, leaves)`` rows in tree order. A list or
    tuple of Python scalars of one type (a metric's history, say) is one row, shape ``[n]``."""
    if isinstance(node, dict):
        return [row for key in _sorted(node) for row in _table_rows(node[key], path + (key,))]
    if isinstance(node, (list, tuple)):
        kinds = {type(item) for item in node}
        if len(kinds) == 1 and kinds <= {bool, int, float, str}:
            return [(_where(path), f"[{len(node)}]", kinds.pop().__name__, len(node), 0, len(node))]
        return [row for i, item in enumerate(node) for row in _table_rows(item, path + (i,))]
    if node is None:
        return []
    if isinstance(node, (np.ndarray, np.generic)):
        return [(_where(path), str(node.shape), node.dtype.name, node.size, node.nbytes, 1)]
    return [(_where(path), "()", type(node).__name__, 1, 0, 1)]
