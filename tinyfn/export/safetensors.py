"""safetensors files of parameter trees, written and read with numpy alone.

    save_safetensors("weights.safetensors", params)      # tensors named dense_0/w, dense_0/b, ...
    params = load_safetensors("weights.safetensors")     # the same tree, bit for bit

safetensors is the weights format of Hugging Face, read by PyTorch, JAX, tinygrad and others
(``safetensors.numpy.load_file`` reads what this module writes). A file is:

* 8 bytes: ``N``, the length of the header, an unsigned little-endian 64-bit integer;
* ``N`` bytes: the header, a JSON object (UTF-8, padded with spaces to a multiple of 8 bytes)
  mapping each tensor's name to ``{"dtype": "F32", "shape": [64, 10], "data_offsets":
  [begin, end]}``, plus an optional ``"__metadata__"`` object of strings;
* the data: each tensor's bytes, little-endian and C-ordered, at ``[begin, end)`` counted from
  the end of the header. The tensors tile the data exactly: no gaps, no overlaps.

tinyfn names each tensor by its pytree path (``dense_0/w``, ``layers/2/b``) and stores the
tree's structure (dicts, lists, tuples, None, and the empty dicts of layers without params)
as JSON in the metadata entry ``"tinyfn.structure"``, so that loading gives back the same
tree. A file without that entry (one written by PyTorch, say) loads as a flat dict
``{name: array}``.

**Untrusted files.** :func:`load_safetensors` reads only a regular file no larger than
:class:`tinyfn.checkpoint.Limits` ``max_bytes``, and checks the whole header (at most 100 MB)
before allocating any array. A header length past the end of the file, malformed or
duplicated JSON entries, an unknown dtype, a shape whose size disagrees with its offsets,
offsets out of range, overlapping or leaving gaps, a boolean that is neither 0 nor 1, or a
structure that does not name the tensors present raise
:class:`~tinyfn.checkpoint.CheckpointError`, as the msgpack checkpoints do. Loaded arrays are
read-only.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct

import numpy as np

from .. import tree
from ..checkpoint import CheckpointError, Limits, atomic_write

__all__ = ["save_safetensors", "load_safetensors", "DTYPES", "STRUCTURE_KEY"]

#: safetensors' dtype names and the numpy dtypes they hold (BF16 and the 8-bit floats, which
#: numpy has no type for, are not read).
DTYPES = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype("<u1"), "I8": np.dtype("<i1"), "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"), "U32": np.dtype("<u4"), "I32": np.dtype("<i4"), "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"), "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
}  # fmt: skip
_NAMES = {dtype.newbyteorder("="): name for name, dtype in DTYPES.items()}

#: The metadata entry holding the tree's structure.
STRUCTURE_KEY = "tinyfn.structure"

_MAX_HEADER = 100_000_000  # bytes; the reference implementation refuses larger headers too
_METADATA = "__metadata__"
_FIELDS = {"dtype", "shape", "data_offsets"}


def save_safetensors(path, params) -> None:
    """Write the tree ``params`` to the safetensors file ``path``, atomically.

    ``params`` is a pytree (dicts with string keys, lists, tuples, None) of numpy arrays of the
    dtypes in :data:`DTYPES`. Each array is stored under its path (``dense_0/w``), the
    structure in the metadata. A key that is not a non-empty string without ``/``, or a leaf
    that is not such an array, raises ``ValueError`` naming its path before anything is
    written. The file is written as :func:`tinyfn.checkpoint.atomic_write` does: an
    interrupted save leaves the previous file untouched.
    """
    structure = _structure(params, ())
    leaves = tree.leaves_with_path(params)
    header, offset, arrays = {}, 0, []
    for name, leaf in leaves:
        dtype = leaf.dtype.newbyteorder("=")
        array = np.asarray(leaf, dtype=DTYPES[_NAMES[dtype]], order="C")  # little-endian, C-ordered
        header[name] = {"dtype": _NAMES[dtype], "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        arrays.append(array)
    header[_METADATA] = {STRUCTURE_KEY: json.dumps(structure, separators=(",", ":"))}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the reference writer does

    def write(f):
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for array in arrays:
            f.write(_raw(array))

    atomic_write(path, write)


def _structure(node, path: tuple):
    """The JSON description of ``node``'s structure (checking every key and leaf on the way):
    ``"array"`` for a leaf, null for None, ``{"dict": {key: ...}}``, ``{"list": [...]}``,
    ``{"tuple": [...]}``."""
    where = "/".join(path) or "<root>"
    if isinstance(node, dict):
        for key in node:
            if not (isinstance(key, str) and key and "/" not in key):
                raise ValueError(f"save_safetensors: expected dict keys that are non-empty strings without '/' (they "
                                 f"make the tensor names), found {key!r} at {where}")
        return {"dict": {key: _structure(node[key], path + (key,)) for key in sorted(node)}}
    if isinstance(node, (list, tuple)):
        return {type(node).__name__: [_structure(child, path + (str(i),)) for i, child in enumerate(node)]}
    if node is None:
        return None
    if not path:
        raise ValueError("save_safetensors: expected a tree of arrays (a dict, list or tuple), found a single leaf")
    if not (isinstance(node, np.ndarray) and node.dtype.newbyteorder("=") in _NAMES):
        found = f"a {node.dtype} array" if isinstance(node, np.ndarray) else type(node).__name__
        raise ValueError(f"save_safetensors: expected numpy arrays of dtype {', '.join(sorted({str(d) for d in _NAMES}))}, "
                         f"found {found} at {where}")
    return "array"


def load_safetensors(path, *, limits: Limits | None = None):
    """The tree stored in the safetensors file ``path``.

    Returns the tree :func:`save_safetensors` was given (same structure, names, dtypes, shapes
    and bits), with read-only arrays; a file without tinyfn's structure entry gives a flat dict
    ``{name: array}`` in the order of the data. A missing file raises ``FileNotFoundError``;
    anything else wrong (see the module docstring), and a file larger than ``limits.max_bytes``
    (:class:`~tinyfn.checkpoint.Limits`, defaults when None), raises
    :class:`~tinyfn.checkpoint.CheckpointError` naming the problem.
    """
    limits = limits or Limits()
    name = os.fspath(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise CheckpointError(f"{name}: expected a safetensors file, found something that is not a regular file")
    with open(fd, "rb", buffering=0) as f:
        size = info.st_size
        if size > limits.max_bytes:
            raise CheckpointError(f"{name}: {size:,} bytes is more than Limits.max_bytes={limits.max_bytes:,}")
        if size < 8:
            raise CheckpointError(f"{name}: expected at least the 8 bytes of the header's length, found {size} bytes")
        (header_size,) = struct.unpack("<Q", _read(f, 8, name))
        if header_size > size - 8:
            raise CheckpointError(f"{name}: the header length {header_size:,} goes past the end of the file "
                                  f"({size:,} bytes)")
        if header_size > _MAX_HEADER:
            raise CheckpointError(f"{name}: the header length {header_size:,} is more than the largest allowed, "
                                  f"{_MAX_HEADER:,}")
        header = _parse_header(_read(f, header_size, name), name)
        entries, metadata = _checked_entries(header, size - 8 - header_size, name)
        arrays = {}
        for tensor, dtype, shape, (begin, end) in entries:  # in the order of the data, which they tile
            array = np.empty(shape, dtype)
            _read_into(f, memoryview(_raw(array)), name)
            if dtype == np.bool_ and array.view(np.uint8).max(initial=0) > 1:
                raise CheckpointError(f"{name}: tensor {tensor!r} of dtype BOOL holds bytes other than 0 and 1")
            array = array.astype(dtype.newbyteorder("="), copy=False)
            array.flags.writeable = False
            arrays[tensor] = array
    if STRUCTURE_KEY not in metadata:
        return arrays
    return _tree(_parse_json(metadata[STRUCTURE_KEY], name, "the structure"), arrays, name, limits.max_depth)


def _raw(array: np.ndarray) -> np.ndarray:
    """The bytes of the C-ordered ``array`` as a flat uint8 view (empty and 0-d arrays too)."""
    return array.reshape(-1).view(np.uint8)


def _read(f, n: int, name: str) -> bytearray:
    data = bytearray(n)
    _read_into(f, memoryview(data), name)
    return data


def _read_into(f, out: memoryview, name: str) -> None:
    """Fill ``out`` from the file ``f`` (a read may return less than asked: Linux reads at most
    2 GiB at a time)."""
    filled = 0
    while filled < len(out):
        n = f.readinto(out[filled:])
        if not n:
            raise CheckpointError(f"{name}: the file ended early (it changed while being read?)")
        filled += n


def _parse_json(data, name: str, what: str):
    def unique(pairs):
        found = {}
        for key, value in pairs:
            if key in found:
                raise CheckpointError(f"{name}: {what} names an entry twice: {key[:80]!r}")
            found[key] = value
        return found

    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data  # not json's guess at UTF-16
        return json.loads(text, object_pairs_hook=unique)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{name}: {what} is not valid JSON ({type(e).__name__}: {str(e)[:80]})") from None


def _parse_header(data: bytes, name: str) -> dict:
    header = _parse_json(data, name, "the header")
    if not isinstance(header, dict):
        raise CheckpointError(f"{name}: expected a header that is a JSON object, found {type(header).__name__}")
    return header


def _is_count(value) -> bool:
    return type(value) is int and value >= 0


def _checked_entries(header: dict, data_size: int, name: str) -> tuple:
    """``([(tensor, dtype, shape, (begin, end)) sorted by offset], metadata)`` after checking
    each entry and that the tensors tile the ``data_size`` bytes of data exactly."""
    metadata = header.get(_METADATA, {})
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise CheckpointError(f"{name}: expected {_METADATA} to map names to strings, found {str(metadata)[:80]}")
    entries = []
    for tensor, entry in header.items():
        if tensor == _METADATA:
            continue
        where = f"{name}: tensor {tensor[:80]!r}"
        if not (isinstance(entry, dict) and entry.keys() == _FIELDS):
            raise CheckpointError(f"{where}: expected an entry with {sorted(_FIELDS)}, found {str(entry)[:80]}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPES:
            raise CheckpointError(f"{where}: expected a dtype of {', '.join(DTYPES)}, found {str(dtype)[:20]!r}")
        if not (isinstance(shape, list) and len(shape) <= 64 and all(_is_count(n) for n in shape)):
            raise CheckpointError(f"{where}: expected a shape, a list of sizes >= 0, found {str(shape)[:80]}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(n) for n in offsets)):
            raise CheckpointError(f"{where}: expected data_offsets [begin, end], found {str(offsets)[:80]}")
        begin, end = offsets
        if not begin <= end <= data_size:
            raise CheckpointError(f"{where}: data_offsets [{begin}, {end}] are out of range: the data holds "
                                  f"{data_size:,} bytes")
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        if nbytes != end - begin:
            raise CheckpointError(f"{where}: dtype {dtype} and shape {shape} make {nbytes:,} bytes, but its "
                                  f"data_offsets [{begin}, {end}] hold {end - begin:,}")
        entries.append((tensor, DTYPES[dtype], tuple(shape), (begin, end)))
    entries.sort(key=lambda e: e[3])
    position = 0
    for tensor, _, _, (begin, end) in entries:
        if begin != position:
            problem = "overlaps the tensor before it" if begin < position else f"leaves bytes {position}-{begin} unused"
            raise CheckpointError(f"{name}: tensor {tensor[:80]!r} at data_offsets [{begin}, {end}] {problem}")
        position = end
    if position != data_size:
        raise CheckpointError(f"{name}: the tensors end at byte {position:,} of the data, which holds {data_size:,}")
    return entries, metadata


def _tree(structure, arrays: dict, name: str, max_depth: int):
    """The tree ``structure`` describes, its leaves taken from ``arrays`` by path; every array
    must be used once."""
    used: set = set()
    result = _build(structure, (), arrays, used, name, max_depth)
    if used != arrays.keys():
        raise CheckpointError(f"{name}: the structure leaves out tensor {sorted(arrays.keys() - used)[0][:80]!r}")
    return result


def _build(node, path: tuple, arrays: dict, used: set, name: str, max_depth: int):
    """The subtree ``node`` of the structure describes at ``path``, adding the names of the
    arrays it takes to ``used``. (A module-level function: a nested one calling itself would be
    a reference cycle holding the arrays, see :mod:`tinyfn.tree`.)"""
    where = "/".join(path)
    if len(path) > max_depth:
        raise CheckpointError(f"{name}: the structure is deeper than Limits.max_depth={max_depth}")
    if node == "array" and path:
        if where not in arrays:
            raise CheckpointError(f"{name}: the structure names a tensor {where[:80]!r} the file does not hold")
        used.add(where)
        return arrays[where]
    if node is None:
        return None
    if isinstance(node, dict) and len(node) == 1:
        ((kind, children),) = node.items()
        if kind == "dict" and isinstance(children, dict) and all(k and "/" not in k for k in children):
            return {k: _build(child, path + (k,), arrays, used, name, max_depth) for k, child in children.items()}
        if kind in ("list", "tuple") and isinstance(children, list):
            items = [_build(child, path + (str(i),), arrays, used, name, max_depth) for i, child in enumerate(children)]
            return items if kind == "list" else tuple(items)
    raise CheckpointError(f"{name}: the structure is malformed at {where or '<root>'}: {str(node)[:80]}")
