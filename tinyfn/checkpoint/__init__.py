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

The package, one topic a module:

* :mod:`~tinyfn.checkpoint.errors`: :class:`CheckpointError`, :class:`Limits`, and how
  messages show what they found;
* :mod:`~tinyfn.checkpoint.layout`: the format's names and constants, and msgpack's first bytes;
* :mod:`~tinyfn.checkpoint.encode`: the writer, from a tree to the bytes of a file, checked;
* :mod:`~tinyfn.checkpoint.files`: :func:`atomic_write` and the files around a save;
* :mod:`~tinyfn.checkpoint.source`: the bytes of a file or of memory, read once, checksummed;
* :mod:`~tinyfn.checkpoint.reader`: the strict msgpack reader, in bulk or walking;
* :mod:`~tinyfn.checkpoint.extensions`: arrays, complex numbers, numpy scalars and
  chunked arrays, decoded;
* :mod:`~tinyfn.checkpoint.decode`: from a checkpoint's entries (or a flax file) to a tree;
* :mod:`~tinyfn.checkpoint.matching`: a loaded tree checked against a ``target``;
* :mod:`~tinyfn.checkpoint.table`: the table :func:`describe` prints.
"""

from __future__ import annotations

import io
import os

from .decode import _read_checkpoint, _read_flax
from .encode import MAX_CHUNK_BYTES, _encode, _write
from .errors import CheckpointError, CheckpointMismatchError, Limits, _printable, _shown
from .files import atomic_write
from .layout import DTYPES, FORMAT, VERSION
from .matching import _matched
from .source import _in_memory, _opened
from .table import _table

__all__ = [
    "FORMAT",
    "VERSION",
    "DTYPES",
    "MAX_CHUNK_BYTES",
    "CheckpointError",
    "CheckpointMismatchError",
    "Limits",
    "save",
    "atomic_write",
    "load",
    "to_bytes",
    "from_bytes",
    "read_metadata",
    "metadata_from_bytes",
    "describe",
]


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
    atomic_write(path, lambda f: _write(pieces, f.write))


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
