"""What goes wrong, and how messages say it: :class:`CheckpointError`,
:class:`CheckpointMismatchError`, the :class:`Limits` on a checkpoint, and the words messages
use for what they found (text from a file is shown escaped)."""

from __future__ import annotations

import dataclasses

import numpy as np

from .. import tree


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read: corrupt, truncated, not a checkpoint, or unsupported."""


class CheckpointMismatchError(CheckpointError, tree.TreeMismatchError):
    """A loaded tree does not match the ``target`` template; the message names every differing path."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Caps on a checkpoint, so that hostile input cannot exhaust memory or the stack.

    :func:`~tinyfn.checkpoint.load` refuses a file beyond them and
    :func:`~tinyfn.checkpoint.save` refuses to write one: what ``save(..., limits=L)`` writes,
    ``load(..., limits=L)`` reads (both use the defaults when ``limits`` is None).

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


def _a(kind: str) -> str:
    """``kind`` with an article, for messages: "a map", "an int", "the end of the data"."""
    if kind == "end":
        return "the end of the data"
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {'msgpack ' + kind if kind in ('bin', 'extension') else kind}"


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
