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
* **Restored arrays are read-only, C-ordered views** of the bytes read from the file (no
  extra copy; tinyfn never changes arrays in place). Call ``.copy()`` for a writable array.
* **flax interop.** ``flax.serialization.msgpack_restore(data)["tree"]`` is the flax state
  dict of a tinyfn checkpoint; ``from_bytes(data, flax=True)`` reads what flax writes.
* **Safe on untrusted input.** No pickle and no object dtypes; every declared length is
  checked against the bytes present before anything is allocated, and size, nesting depth
  and item count are capped by :class:`Limits`. Any bad input raises :class:`CheckpointError`.
* **Atomic save.** The file is written under a temporary name in the same folder, synced
  to disk, then renamed over the final name: an interrupted save leaves the previous
  checkpoint untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import math
import os
import secrets
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

_MAP_HEADERS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
_ARRAY_HEADERS = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read: corrupt, truncated, not a checkpoint, or unsupported."""


class CheckpointMismatchError(CheckpointError, tree.TreeMismatchError):
    """A loaded tree does not match the ``target`` template; the message names every differing path."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Caps applied while reading, so that hostile input cannot exhaust memory or the stack.

    ``max_bytes``: largest accepted file (or byte string). ``max_depth``: deepest value, where
    the file's top-level map is at depth 1, its entries at depth 2, and the items of a map or
    array one deeper than it (a tree with ``d`` levels of containers needs ``d + 3``).
    ``max_items``: most msgpack values in one file.
    """

    max_bytes: int = 2**33
    max_depth: int = 100
    max_items: int = 1_000_000

    def __post_init__(self):
        for name in ("max_bytes", "max_depth", "max_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be positive, found {getattr(self, name)}")
        if self.max_depth > 500:  # the reader recurses once per level; stay clear of Python's limit
            raise ValueError(f"Limits.max_depth must be at most 500, found {self.max_depth}")


# ----------------------------------------------------------------------------------------
# Public API


def save(path, tree, *, metadata=None) -> None:
    """Write ``tree`` to the file ``path`` atomically.

    ``tree`` is a pytree (see :func:`to_bytes` for what it may hold); ``metadata`` an optional
    dict of plain values (None, bool, int, float, str, lists, dicts with string keys; numpy
    scalars are stored as Python numbers, tuples come back as lists). The tree is checked
    before anything is written; the bytes go to a temporary file beside ``path``, are
    flushed and fsynced, and the file is then renamed to ``path``. If the save is
    interrupted, ``path`` still holds the previous checkpoint (a killed process may leave
    a hidden ``.NAME.*.tmp`` file, which is never read and can be deleted).
    """
    parts = _encode(tree, metadata)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    # os.open with mode 0o666 gives the usual permissions (minus umask), unlike mkstemp's 0o600
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with open(fd, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    _fsync_folder(folder)


def load(path, target=None, *, flax=False, limits=None):
    """Read the tree saved in the file ``path``; see :func:`from_bytes` for the arguments.

    Returns the tree; arrays are read-only. A missing file raises ``FileNotFoundError``;
    anything wrong with the file's content raises :class:`CheckpointError`.
    """
    limits = limits or Limits()
    return from_bytes(_read_file(path, limits), target, flax=flax, limits=limits)


def to_bytes(tree, *, metadata=None) -> bytes:
    """The checkpoint of ``tree`` as bytes (exactly what :func:`save` writes).

    ``tree`` is a pytree of dicts (keys str or int), lists, tuples and None whose leaves are
    numpy arrays (any shape and memory layout, dtypes in :data:`DTYPES`), numpy scalars, or
    Python bool, int (64-bit range), float, complex or str. Anything else raises
    :class:`CheckpointError` naming the path. ``metadata`` is as for :func:`save`.
    Equal trees give equal bytes (dict keys are written in sorted order).
    """
    return b"".join(_encode(tree, metadata))


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

    Returns the tree, with read-only C-ordered arrays. Raises :class:`CheckpointError` for
    anything that is not an intact checkpoint.
    """
    limits = limits or Limits()
    data = _as_bytes(data, limits)
    if flax:
        found = _read_flax(data, limits)
        if target is not None:
            found = _adopt_containers(found, target)
    else:
        found = _read_checkpoint(data, limits)[1]
    if target is not None:
        _check_matches(found, target)
    return found


def read_metadata(path, *, limits=None) -> dict:
    """The metadata dict stored in the checkpoint file ``path`` (the checksum is verified)."""
    limits = limits or Limits()
    return metadata_from_bytes(_read_file(path, limits), limits=limits)


def metadata_from_bytes(data, *, limits=None) -> dict:
    """The metadata dict stored in checkpoint bytes (the checksum is verified)."""
    limits = limits or Limits()
    return _read_checkpoint(_as_bytes(data, limits), limits, with_tree=False)[0]


def describe(path_or_tree, *, flax=False, limits=None) -> str:
    """A table of a checkpoint's leaves for people to read: what ``tinyfn inspect`` prints.

    ``path_or_tree`` is a checkpoint file (``str`` or path-like; read with ``flax=True`` for
    a flax file) or a tree. Returns lines with the file's format and size, its metadata,
    then one row per leaf (path, shape, dtype, element count) and the totals. A list or
    tuple of Python scalars of one type, such as a metric's history, is one row of shape ``[n]``.
    """
    lines = []
    if isinstance(path_or_tree, (str, os.PathLike)):
        limits = limits or Limits()
        data = _read_file(path_or_tree, limits)
        if flax:
            metadata, value = {}, _read_flax(data, limits)
            kind = "flax msgpack, no checksum"
        else:
            metadata, value = _read_checkpoint(data, limits)
            kind = f"{FORMAT} version {VERSION}, checksum ok"
        lines.append(f"{os.fspath(path_or_tree)}  ({kind}, {len(data):,} bytes)")
        if metadata:
            lines.append("metadata:")
            lines += [f"  {key}: {value!r}" for key, value in metadata.items()]
        lines.append("")
    else:
        value = path_or_tree
    return "\n".join(lines + _table(value))


# ----------------------------------------------------------------------------------------
# Writing
#
# The file is the msgpack map {"format", "version", "metadata", "structure", "tree",
# "sha256"} in that order. It is produced part by part, so that only one leaf at a time is
# held in encoded form, and the checksum of all parts is appended as the last entry.


def _encode(value, metadata) -> Iterator[bytes]:
    """Check ``value`` and ``metadata`` now; return an iterator over the checkpoint's bytes."""
    metadata = {} if metadata is None else metadata
    if type(metadata) is not dict:
        raise CheckpointError(f"metadata must be a dict, found {type(metadata).__name__}")
    metadata = _plain_metadata(metadata)
    treedef = tree.structure(value)
    _check_keys(treedef, ())
    leaves_with_paths = tree.leaves_with_path(value)
    for path, leaf in leaves_with_paths:
        _check_leaf(path, leaf)
    return _checksummed(_body_parts(treedef, [leaf for _, leaf in leaves_with_paths], metadata))


def _checksummed(parts):
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
        yield part
    yield _TRAILER + digest.digest()


def _body_parts(treedef, leaves, metadata):
    """Everything before the checksum: map header, header entries, metadata, structure, tree."""
    yield _map_header(len(_ENTRIES))
    yield msgpack.packb("format") + msgpack.packb(FORMAT)
    yield msgpack.packb("version") + msgpack.packb(VERSION)
    yield msgpack.packb("metadata") + msgpack.packb(metadata)
    yield msgpack.packb("structure") + msgpack.packb(_structure_of(treedef))
    yield msgpack.packb("tree")
    yield from _state_parts(treedef, iter(leaves))


def _map_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x80 | n])
    if n < 2**16:
        return b"\xde" + n.to_bytes(2, "big")
    return b"\xdf" + n.to_bytes(4, "big")


def _structure_of(treedef):
    """The "structure" entry: ``["leaf"]``, ``["none"]``, ``["list", *children]``,
    ``["tuple", *children]`` or ``["dict", key0, child0, key1, child1, ...]``."""
    children = [_structure_of(child) for child in treedef.children]
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
            yield from _state_parts(child, leaves)


def _leaf_parts(leaf):
    if isinstance(leaf, np.ndarray):
        if leaf.nbytes > MAX_CHUNK_BYTES:
            yield from _chunked_parts(leaf)
        else:
            yield msgpack.packb(_array_ext(_EXT_ARRAY, leaf))
    elif isinstance(leaf, np.generic):
        yield msgpack.packb(_array_ext(_EXT_NUMPY_SCALAR, np.asarray(leaf)))
    elif type(leaf) is complex:
        yield msgpack.packb(msgpack.ExtType(_EXT_COMPLEX, msgpack.packb([leaf.real, leaf.imag])))
    else:
        yield msgpack.packb(leaf)


def _array_ext(code: int, array: np.ndarray) -> msgpack.ExtType:
    """flax's array encoding: the msgpack of ``[shape, dtype name, little-endian C-order bytes]``."""
    little_endian = array.astype(array.dtype.newbyteorder("<"), copy=False)
    payload = msgpack.packb([list(array.shape), array.dtype.name, little_endian.tobytes(order="C")])
    return msgpack.ExtType(code, payload)


def _chunked_parts(array: np.ndarray):
    """flax's encoding of a large array: ``{"__msgpack_chunked_array__": True, "shape": {"0": d0, ...},
    "chunks": {"0": flat_piece0, ...}}``, pieces of at most MAX_CHUNK_BYTES in C order."""
    flat = array.ravel(order="C")
    per_chunk = max(1, MAX_CHUNK_BYTES // array.itemsize)
    chunks = [flat[start : start + per_chunk] for start in range(0, flat.size, per_chunk)]
    yield _map_header(3)
    yield msgpack.packb(_CHUNKED) + msgpack.packb(True)
    yield msgpack.packb("shape") + msgpack.packb({str(i): size for i, size in enumerate(array.shape)})
    yield msgpack.packb("chunks") + _map_header(len(chunks))
    for i, chunk in enumerate(chunks):
        yield msgpack.packb(str(i)) + msgpack.packb(_array_ext(_EXT_ARRAY, chunk))


def _check_keys(treedef, path: tuple) -> None:
    """Dict keys must be str or int, distinct as strings (the tree entry keys by ``str(key)``)."""
    if treedef.kind == "dict":
        where = tree.format_path(path)
        seen = {}
        for key in treedef.keys:
            if type(key) is str:
                _check_str(key, where)
            elif type(key) is int:
                _check_int(key, where)
            else:
                raise CheckpointError(f"{where}: dict keys must be str or int, found {type(key).__name__} key {key!r}")
            if key == _CHUNKED:
                raise CheckpointError(f"{where}: the key {_CHUNKED!r} is reserved (it marks chunked arrays)")
            if str(key) in seen:
                raise CheckpointError(f"{where}: keys {seen[str(key)]!r} and {key!r} are both written as {str(key)!r}")
            seen[str(key)] = key
    labels = treedef.keys if treedef.kind == "dict" else range(len(treedef.children))
    for label, child in zip(labels, treedef.children):
        _check_keys(child, path + (label,))


def _check_leaf(path: str, leaf) -> None:
    if type(leaf) is np.ndarray or isinstance(leaf, np.generic):
        if leaf.dtype.name not in DTYPES or leaf.dtype.fields is not None:
            raise CheckpointError(f"{path}: dtype {leaf.dtype} cannot be saved; supported dtypes: {', '.join(DTYPES)}")
    elif type(leaf) is int:
        _check_int(leaf, path)
    elif type(leaf) is str:
        _check_str(leaf, path)
    elif type(leaf) not in _SCALAR_TYPES:
        raise CheckpointError(
            f"{path}: cannot save a leaf of type {type(leaf).__name__}; leaves are numpy arrays "
            "(not subclasses: use np.asarray), numpy scalars, or bool, int, float, complex, str"
        )


def _check_int(value: int, where: str) -> None:
    if not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
        raise CheckpointError(f"{where}: integer {value} does not fit in 64 bits")


def _check_str(value: str, where: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CheckpointError(f"{where}: string {value!r} is not valid unicode ({exc.reason})") from None


def _plain_metadata(value, path=("metadata",)):
    """``value`` checked to be plain msgpack data; numpy bool/int/float scalars become Python numbers."""
    where = tree.format_path(path)
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        value = value.item()
    if type(value) is dict:
        for key in value:
            if type(key) is not str:
                raise CheckpointError(f"{where}: metadata keys must be str, found {type(key).__name__} key {key!r}")
            _check_str(key, where)
        return {key: _plain_metadata(item, path + (key,)) for key, item in value.items()}
    if type(value) in (list, tuple):
        return [_plain_metadata(item, path + (i,)) for i, item in enumerate(value)]
    if type(value) is int:
        _check_int(value, where)
    elif type(value) is str:
        _check_str(value, where)
    elif value is not None and type(value) not in (bool, float):
        raise CheckpointError(
            f"{where}: metadata cannot hold {type(value).__name__}; it holds None, bool, int, float, str, "
            "lists and dicts with str keys (put arrays in the tree)"
        )
    return value


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


def _read_file(path, limits: Limits) -> bytes:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limits.max_bytes:
            raise CheckpointError(
                f"{os.fspath(path)}: {size:,} bytes is more than Limits.max_bytes={limits.max_bytes:,}"
            )
        data = f.read(size + 1)  # read(n) allocates n bytes first: ask for what the file holds
    if len(data) != size:
        raise CheckpointError(f"{os.fspath(path)}: the file changed size while it was read")
    return _as_bytes(data, limits)


def _as_bytes(data, limits: Limits) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, found {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise CheckpointError("empty input: a checkpoint is never empty")
    if len(data) > limits.max_bytes:
        raise CheckpointError(f"{len(data):,} bytes is more than Limits.max_bytes={limits.max_bytes:,}")
    return data


def _read_checkpoint(data: bytes, limits: Limits, with_tree: bool = True):
    """``(metadata, tree)`` from checkpoint bytes (``tree`` is None unless ``with_tree``)."""
    reader = _Reader(data, limits)
    entries = _read_header(reader)
    _verify_checksum(data)
    if entries != len(_ENTRIES):
        raise CheckpointError(f"corrupt checkpoint: the top-level map has {entries} entries, expected {len(_ENTRIES)}")
    metadata = reader.entry("metadata")
    if type(metadata) is not dict or any(type(key) is not str for key in metadata):
        raise CheckpointError("corrupt checkpoint: metadata is not a map with string keys")
    if not with_tree:
        return metadata, None
    treedef = _treedef_from(reader.entry("structure"), ("structure",))
    state = reader.entry("tree", arrays=True)
    leaves: list = []
    _collect_leaves(treedef, state, ("tree",), leaves)
    reader.entry("sha256")
    if not reader.at_end():
        raise CheckpointError("corrupt checkpoint: unexpected bytes after the checksum")
    return metadata, tree.unflatten(treedef, leaves)


def _read_header(reader: _Reader) -> int:
    """Check the format name and version; return the number of top-level entries."""
    not_a_checkpoint = (
        f"not a tinyfn checkpoint: it does not begin with the entry 'format': {FORMAT!r} "
        "(to read a file written by flax.serialization, pass flax=True)"
    )
    try:
        entries = reader.map_header(())
        name = reader.entry("format")
    except CheckpointError as exc:
        raise CheckpointError(f"{not_a_checkpoint}; {exc}") from None
    if name != FORMAT:
        raise CheckpointError(not_a_checkpoint)
    version = reader.entry("version")
    if type(version) is not int or version != VERSION:
        raise CheckpointError(
            f"unsupported checkpoint version {version!r}: this tinyfn reads version {VERSION} (or the file is corrupt)"
        )
    return entries


def _verify_checksum(data: bytes) -> None:
    """The last entry is ``"sha256": <32 bytes>``, the SHA-256 of every byte before it."""
    if len(data) < _TRAILER_SIZE or data[-_TRAILER_SIZE:-32] != _TRAILER:
        raise CheckpointError("corrupt checkpoint: the checksum at the end is missing (truncated or extended file?)")
    if hashlib.sha256(memoryview(data)[:-_TRAILER_SIZE]).digest() != data[-32:]:
        raise CheckpointError(
            "corrupt checkpoint: SHA-256 checksum mismatch (the bytes changed after they were written)"
        )


def _read_flax(data: bytes, limits: Limits):
    reader = _Reader(data, limits)
    value = reader.value((), 1, arrays=True)
    if not reader.at_end():
        raise CheckpointError(f"unexpected bytes after the msgpack object (at offset {reader.offset:,})")
    return value


class _Reader:
    """Reads msgpack values one at a time from ``data``, building containers itself.

    msgpack's own unpacker allocates a list or dict of the length a header declares before
    reading any item, so a few bytes could ask for gigabytes. Here a container's header is
    read alone, its declared length is checked against the bytes that remain, and items are
    added as they are read. Scalars, strings, bins and extensions come from msgpack, which
    reads their bytes only once they are all present. Depth and item count are capped.
    """

    def __init__(self, data: bytes, limits: Limits):
        self._data = data
        self._limits = limits
        self._items = 0
        self._unpacker = msgpack.Unpacker(io.BytesIO(data), raw=False, max_buffer_size=len(data))

    @property
    def offset(self) -> int:
        return self._unpacker.tell()

    def at_end(self) -> bool:
        return self.offset == len(self._data)

    def entry(self, name: str, *, arrays: bool = False):
        """The value of the next top-level entry, whose key must be ``name``."""
        key = self._key((name,))
        if key != name:
            raise CheckpointError(f"corrupt checkpoint: expected the entry {name!r} next, found {key!r}")
        return self.value((name,), 2, arrays)

    def value(self, path: tuple, depth: int, arrays: bool):
        """The next value; ``arrays`` allows msgpack extensions (arrays, complex, numpy scalars)."""
        if depth > self._limits.max_depth:
            where = tree.format_path(path)
            raise CheckpointError(f"{where}: nested deeper than Limits.max_depth={self._limits.max_depth}")
        self._items += 1
        if self._items > self._limits.max_items:
            raise CheckpointError(f"more than Limits.max_items={self._limits.max_items:,} values")
        first = self._peek(path)
        if first in _MAP_HEADERS:
            return self._map(path, depth, arrays)
        if first in _ARRAY_HEADERS:
            return self._list(path, depth, arrays)
        return self._scalar(path, arrays)

    def map_header(self, path: tuple) -> int:
        if self._peek(path) not in _MAP_HEADERS:
            raise CheckpointError(f"{tree.format_path(path)}: expected a msgpack map")
        return self._checked_length(path, self._call(path, self._unpacker.read_map_header), 2)

    def _map(self, path, depth, arrays) -> dict:
        out = {}
        for _ in range(self.map_header(path)):
            key = self._key(path)
            if key in out:
                raise CheckpointError(f"{tree.format_path(path)}: duplicate map key {key!r}")
            out[key] = self.value(path + (key,), depth + 1, arrays)
        if arrays and _CHUNKED in out:
            return _unchunk(out, path)
        return out

    def _list(self, path, depth, arrays) -> list:
        length = self._checked_length(path, self._call(path, self._unpacker.read_array_header), 1)
        return [self.value(path + (i,), depth + 1, arrays) for i in range(length)]

    def _key(self, path):
        if self._peek(path) in _MAP_HEADERS | _ARRAY_HEADERS:
            raise CheckpointError(f"{tree.format_path(path)}: map keys must be strings or integers, found a container")
        key = self._call(path, self._unpacker.unpack)
        if type(key) not in (str, int):
            raise CheckpointError(f"{tree.format_path(path)}: map keys must be strings or integers, found {key!r}")
        return key

    def _scalar(self, path, arrays):
        value = self._call(path, self._unpacker.unpack)
        if isinstance(value, msgpack.ExtType):
            if not arrays:
                raise CheckpointError(f"{tree.format_path(path)}: msgpack extension (array) not allowed here")
            return _decode_ext(value, path)
        if value is None or type(value) in (bool, int, float, str, bytes):
            return value
        raise CheckpointError(f"{tree.format_path(path)}: unsupported msgpack value {type(value).__name__}")

    def _peek(self, path) -> int:
        if self.at_end():
            raise CheckpointError(f"{tree.format_path(path)}: the data ends early (truncated file?)")
        return self._data[self.offset]

    def _checked_length(self, path, length: int, min_bytes_per_item: int) -> int:
        remaining = len(self._data) - self.offset
        if length * min_bytes_per_item > remaining:
            raise CheckpointError(
                f"{tree.format_path(path)}: declares {length:,} items but only {remaining:,} bytes remain "
                "(truncated or corrupt)"
            )
        return length

    @staticmethod
    def _call(path, read):
        try:
            return read()
        except (ValueError, msgpack.UnpackException) as exc:
            where = tree.format_path(path)
            raise CheckpointError(f"{where}: malformed msgpack ({type(exc).__name__}: {exc})") from None


def _decode_ext(ext: msgpack.ExtType, path: tuple):
    if ext.code == _EXT_ARRAY:
        return _array_from_payload(ext.data, path)
    if ext.code == _EXT_NUMPY_SCALAR:
        array = _array_from_payload(ext.data, path)
        if array.ndim != 0:
            raise CheckpointError(f"{tree.format_path(path)}: a numpy scalar must have shape (), found {array.shape}")
        return array[()]
    if ext.code == _EXT_COMPLEX:
        parts = _unpack_payload(ext.data, path, max_array_len=2)
        if type(parts) is not list or len(parts) != 2 or any(type(p) is not float for p in parts):
            where = tree.format_path(path)
            raise CheckpointError(f"{where}: a complex number must be [real, imag] floats, found {parts!r}")
        return complex(*parts)
    raise CheckpointError(
        f"{tree.format_path(path)}: unknown msgpack extension type {ext.code} "
        f"(known: {_EXT_ARRAY} array, {_EXT_COMPLEX} complex, {_EXT_NUMPY_SCALAR} numpy scalar)"
    )


def _unpack_payload(payload: bytes, path: tuple, max_array_len: int):
    """msgpack of an extension's payload, with no maps or extensions and short arrays only."""
    try:
        return msgpack.unpackb(
            payload, raw=True, max_array_len=max_array_len, max_map_len=0, max_ext_len=0,
            max_str_len=len(payload), max_bin_len=len(payload),
        )  # fmt: skip
    except (ValueError, msgpack.UnpackException) as exc:
        where = tree.format_path(path)
        raise CheckpointError(f"{where}: malformed extension payload ({type(exc).__name__}: {exc})") from None


def _array_from_payload(payload: bytes, path: tuple) -> np.ndarray:
    """A read-only array from ``[shape, dtype name, bytes]``, checking that the bytes fit the shape."""
    where = tree.format_path(path)
    fields = _unpack_payload(payload, path, max_array_len=_MAX_NDIM)
    if type(fields) is not list or len(fields) != 3 or type(fields[2]) is not bytes:
        raise CheckpointError(f"{where}: an array must be encoded as [shape, dtype, bytes]")
    shape, name, buffer = fields
    name = name.decode("ascii", errors="replace") if type(name) is bytes else name
    if name not in DTYPES:
        raise CheckpointError(f"{where}: unsupported array dtype {name!r}; supported: {', '.join(DTYPES)}")
    dtype = np.dtype(name).newbyteorder("<")
    _check_shape(shape, dtype.itemsize, where)
    count = math.prod(shape)
    if count * dtype.itemsize != len(buffer):
        raise CheckpointError(
            f"{where}: array declares shape {tuple(shape)} {name} ({count * dtype.itemsize:,} bytes) "
            f"but holds {len(buffer):,} bytes"
        )
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


def _check_shape(shape, itemsize: int, where: str) -> None:
    if type(shape) is not list or len(shape) > _MAX_NDIM or any(type(d) is not int or d < 0 for d in shape):
        raise CheckpointError(f"{where}: invalid array shape {shape!r} (at most {_MAX_NDIM} non-negative ints)")
    if math.prod(max(d, 1) for d in shape) * itemsize > sys.maxsize:  # numpy would refuse even an empty one
        raise CheckpointError(f"{where}: array shape {tuple(shape)} is too large")


def _unchunk(node: dict, path: tuple) -> np.ndarray:
    """The array of a flax chunked-array map (see :func:`_chunked_parts`)."""
    where = tree.format_path(path)
    if set(node) != {_CHUNKED, "shape", "chunks"} or node[_CHUNKED] is not True:
        raise CheckpointError(f"{where}: a chunked array must be {{{_CHUNKED!r}: True, 'shape': ..., 'chunks': ...}}")
    shape = _numbered_items(node["shape"], where + "/shape")
    chunks = _numbered_items(node["chunks"], where + "/chunks")
    if not chunks or any(type(c) is not np.ndarray or c.ndim != 1 or c.dtype != chunks[0].dtype for c in chunks):
        raise CheckpointError(f"{where}: chunks must be one or more 1-d arrays of one dtype")
    _check_shape(shape, chunks[0].itemsize, where)
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
    where = tree.format_path(path)
    if type(node) is not list or not node or node[0] not in ("leaf", "none", "list", "tuple", "dict"):
        raise CheckpointError(f"{where}: invalid structure node {node!r}")
    kind, rest = node[0], node[1:]
    if kind in ("leaf", "none"):
        if rest:
            raise CheckpointError(f"{where}: a {kind} structure node has no children")
        return tree.TreeDef(kind)
    if kind in ("list", "tuple"):
        return tree.TreeDef(kind, (), tuple(_treedef_from(child, path + (i,)) for i, child in enumerate(rest)))
    keys, children = rest[0::2], rest[1::2]
    if len(keys) != len(children) or any(type(k) not in (str, int) for k in keys):
        raise CheckpointError(f"{where}: a dict structure node alternates str or int keys and children")
    if len({str(k) for k in keys}) != len(keys):
        raise CheckpointError(f"{where}: duplicate dict keys in the structure")
    return tree.TreeDef("dict", tuple(keys), tuple(_treedef_from(c, path + (k,)) for k, c in zip(keys, children)))


def _collect_leaves(treedef, node, path: tuple, out: list) -> None:
    """Append the leaves of the "tree" entry ``node`` to ``out``, checking it follows ``treedef``."""
    where = tree.format_path(path)
    if treedef.kind == "leaf":
        if not (isinstance(node, (np.ndarray, np.generic)) or type(node) in _SCALAR_TYPES):
            raise CheckpointError(f"{where}: expected a leaf (array or scalar), found {_describe_node(node)}")
        out.append(node)
        return
    if treedef.kind == "none":
        if node is not None:
            raise CheckpointError(f"{where}: expected nil for None, found {_describe_node(node)}")
        return
    labels = treedef.keys if treedef.kind == "dict" else range(len(treedef.children))
    keys = [str(label) for label in labels]
    if type(node) is not dict or set(node) != set(keys):
        raise CheckpointError(
            f"{where}: the tree entry does not follow the structure entry (expected a map with keys {keys})"
        )
    for label, key, child in zip(labels, keys, treedef.children):
        _collect_leaves(child, node[key], path + (label,), out)


# ----------------------------------------------------------------------------------------
# Matching a target


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
    where = tree.format_path(path)
    if isinstance(target, dict):
        if not isinstance(found, dict):
            out.append(f"{where}: expected a dict, found {_describe_node(found)}")
            return
        for key in _sorted(target.keys() - found.keys()):
            out.append(f"{tree.format_path(path + (key,))}: missing from the checkpoint")
        for key in _sorted(found.keys() - target.keys()):
            out.append(f"{tree.format_path(path + (key,))}: unexpected (not in the target)")
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
        return f"a dict with keys {_sorted(node)}"
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
            return [(tree.format_path(path), f"[{len(node)}]", kinds.pop().__name__, len(node), 0, len(node))]
        return [row for i, item in enumerate(node) for row in _table_rows(item, path + (i,))]
    if node is None:
        return []
    if isinstance(node, (np.ndarray, np.generic)):
        return [(tree.format_path(path), str(node.shape), node.dtype.name, node.size, node.nbytes, 1)]
    return [(tree.format_path(path), "()", type(node).__name__, 1, 0, 1)]
