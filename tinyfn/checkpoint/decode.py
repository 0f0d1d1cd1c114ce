"""From the bytes of a checkpoint to its metadata and tree: the header checked on the first
bytes, the entries read by a :class:`~.reader._Reader`, the checksum verified, and the tree
rebuilt from the structure entry and the tree entry. A flax file is one msgpack value."""

from __future__ import annotations

import numpy as np

from .. import tree
from .errors import CheckpointError, Limits, _describe_node, _shown, _where
from .layout import _ENTRIES, _LEAF, _NONE, _PLAIN_LEAVES, _SCALAR_TYPES, _TRAILER, _TRAILER_SIZE, FORMAT, VERSION
from .reader import _Reader
from .source import _Source


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


def _treedef_from(node, path: tuple) -> tree.TreeDef:
    """The TreeDef described by the "structure" entry (see :func:`.encode._structure_of`)."""
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
