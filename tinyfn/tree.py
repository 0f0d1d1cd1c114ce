"""Pytrees: nested dicts, lists and tuples whose leaves are arrays or scalars.

Parameters, gradients and optimizer states in tinyfn are pytrees. A pytree is

* a ``dict`` (its values are subtrees),
* a ``list`` or ``tuple`` (its items are subtrees),
* ``None`` (an empty subtree: it has no leaves), or
* anything else, which is a *leaf* (a numpy array, a Python or numpy scalar, ...).

Dict keys are always visited in **sorted order** (``sorted(d)``), whatever order the
dict was built in, so two dicts with the same keys flatten the same way. Dicts made
by :func:`unflatten` and :func:`map` have their keys in that sorted order.

Paths name a position in a tree: dict keys and list/tuple indices joined by ``/``,
for example ``"dense_0/w"`` or ``"layers/2/b"``. Errors about mismatched trees name
the path where the trees first differ.

:func:`map` combines leaves however ``f`` likes (numpy broadcasting included).
:func:`map_matching`, and with it :func:`add` and :func:`sub`, refuses to broadcast: the
matching leaves must have the same shapes, which is what arithmetic on parameter trees needs.
"""

from __future__ import annotations

import builtins

import numpy as np

__all__ = [
    "TreeDef",
    "TreeMismatchError",
    "flatten",
    "unflatten",
    "leaves",
    "leaves_with_path",
    "structure",
    "map",
    "map_with_path",
    "map_matching",
    "zeros_like",
    "add",
    "sub",
    "scale",
    "size",
    "freeze",
    "format_path",
]


class TreeMismatchError(ValueError):
    """Two trees that should have the same structure do not; the message names the path."""


class TreeDef:
    """The structure of a pytree without its leaves.

    ``kind`` is one of ``"leaf"``, ``"none"``, ``"dict"``, ``"list"``, ``"tuple"``;
    ``keys`` holds the sorted dict keys (empty for the other kinds) and ``children``
    the TreeDefs of the subtrees. TreeDefs compare equal when the structures match.
    """

    __slots__ = ("kind", "keys", "children", "num_leaves", "_hash")

    def __init__(self, kind: str, keys: tuple = (), children: tuple = ()):
        self.kind = kind
        self.keys = keys
        self.children = children
        self.num_leaves = 1 if kind == "leaf" else builtins.sum(c.num_leaves for c in children)
        self._hash = hash((kind, keys, children))

    def __eq__(self, other):
        return (
            isinstance(other, TreeDef)
            and self._hash == other._hash
            and self.kind == other.kind
            and self.keys == other.keys
            and self.children == other.children
        )

    def __hash__(self):
        return self._hash

    def flatten_up_to(self, tree) -> list:
        """The leaves of ``tree``, which must have this structure (a TreeMismatchError if not).

        The same leaves as ``flatten(tree)[0]``, found faster when the structure is known
        (no TreeDef is built), as when a function is called again with new arrays in the
        same containers.
        """
        found: list = []
        if not _collect_leaves((tree,), (self,), found):
            raise TreeMismatchError(f"expected a tree of structure {self!r}, found {structure(tree)!r}")
        return found

    def __repr__(self):
        if self.kind == "leaf":
            return "*"
        if self.kind == "none":
            return "None"
        if self.kind == "dict":
            inner = ", ".join(f"{k!r}: {c!r}" for k, c in zip(self.keys, self.children))
            return "{" + inner + "}"
        inner = ", ".join(repr(c) for c in self.children)
        return f"[{inner}]" if self.kind == "list" else f"({inner}{',' if len(self.children) == 1 else ''})"


def _collect_leaves(nodes, treedefs, found: list) -> bool:
    """Append the leaves of each node (whose structure should be the matching TreeDef) to
    ``found``; False as soon as a structure differs. One call per container, none per leaf."""
    for treedef, node in zip(treedefs, nodes):
        kind = treedef.kind
        if kind == "leaf":
            if node is None or isinstance(node, _CONTAINERS):
                return False
            found.append(node)
        elif kind == "none":
            if node is not None:
                return False
        elif kind == "dict":
            if not isinstance(node, dict) or len(node) != len(treedef.keys):
                return False
            try:
                kids = [node[k] for k in treedef.keys]
            except KeyError:
                return False
            if not _collect_leaves(kids, treedef.children, found):
                return False
        elif not (
            isinstance(node, list if kind == "list" else tuple)
            and len(node) == len(treedef.children)
            and _collect_leaves(node, treedef.children, found)
        ):
            return False
    return True


_LEAF = TreeDef("leaf")
_NONE = TreeDef("none")


def _sorted_keys(d: dict) -> list:
    try:
        return sorted(d)
    except TypeError:  # mixed key types (say str and int): order by type name, then key
        return sorted(d, key=lambda k: (type(k).__name__, k))


def _children(node):
    """(kind, keys, child list) of a container node, or None for a leaf."""
    if isinstance(node, dict):
        keys = _sorted_keys(node)
        return "dict", tuple(keys), [node[k] for k in keys]
    if isinstance(node, list):
        return "list", (), node
    if isinstance(node, tuple):
        return "tuple", (), list(node)
    if node is None:
        return "none", (), []
    return None


def format_path(path: tuple) -> str:
    """Join path entries with ``/``; the root is ``"<root>"``."""
    return "/".join(str(p) for p in path) if path else "<root>"


# The recursive helpers below are module-level functions, not closures nested in the function
# that uses them: a nested function that calls itself is a reference cycle (function -> closure
# cell -> function) that also holds everything else it closes over, such as the list of leaves.
# The cycle, and with it every array in the tree, would stay in memory until Python's cycle
# collector next runs; in a training loop that is several steps' worth of gradients, and new
# arrays cannot reuse their memory.


def _flatten_into(node, found: list) -> TreeDef:
    """Append the leaves of ``node`` to ``found``; returns the TreeDef of ``node``."""
    parts = _children(node)
    if parts is None:
        found.append(node)
        return _LEAF
    kind, keys, kids = parts
    if kind == "none":
        return _NONE
    return TreeDef(kind, keys, tuple([_flatten_into(k, found) for k in kids]))


def flatten(tree) -> tuple[list, TreeDef]:
    """Return ``(leaves, treedef)``: the leaves in visiting order and the tree's structure.

    Works without recursion depth limits for ordinary parameter trees (it recurses once
    per nesting level).
    """
    found: list = []
    treedef = _flatten_into(tree, found)
    return found, treedef


def unflatten(treedef: TreeDef, leaves_) -> object:
    """Build a tree with structure ``treedef`` from a sequence of leaves (inverse of flatten)."""
    leaves_ = list(leaves_)
    if len(leaves_) != treedef.num_leaves:
        raise TreeMismatchError(
            f"unflatten: structure {treedef!r} has {treedef.num_leaves} leaves, found {len(leaves_)}"
        )
    return _build(treedef, iter(leaves_))


def _build(treedef: TreeDef, leaves_iter):
    """The tree of structure ``treedef`` whose leaves are the next ones of ``leaves_iter``."""
    if treedef.kind == "leaf":
        return next(leaves_iter)
    if treedef.kind == "none":
        return None
    kids = [next(leaves_iter) if c.kind == "leaf" else _build(c, leaves_iter) for c in treedef.children]
    if treedef.kind == "dict":
        return dict(zip(treedef.keys, kids))
    return kids if treedef.kind == "list" else tuple(kids)


def leaves(tree) -> list:
    """The leaves of ``tree`` in visiting order (dict keys sorted)."""
    return flatten(tree)[0]


def structure(tree) -> TreeDef:
    """The TreeDef of ``tree``."""
    return flatten(tree)[1]


def _describe(node) -> str:
    parts = _children(node)
    if parts is None:
        if isinstance(node, (np.ndarray, np.generic)):
            article = "an" if str(node.dtype)[0] in "aeio" else "a"
            return f"{article} {node.dtype} array of shape {node.shape}"
        return f"a leaf of type {type(node).__name__}"
    kind, keys, kids = parts
    if kind == "dict":
        return f"a dict with keys {list(keys)}"
    if kind == "none":
        return "None"
    return f"a {kind} of length {len(kids)}"


def _path_str(where) -> str:
    """The path string of a ``where`` chain ``(..((None, k1), k2).., kn)`` built while visiting."""
    keys = []
    while where is not None:
        where, key = where
        keys.append(str(key))
    return "/".join(reversed(keys)) or "<root>"


def _mismatch(where, expected, found):
    raise TreeMismatchError(
        f"trees differ at '{_path_str(where)}': expected {_describe(expected)}, found {_describe(found)}"
    )


_CONTAINERS = (dict, list, tuple)


class _LeafMismatch(Exception):
    """Raised by a leaf function (see :func:`_matching`) with ``(expected, found)`` leaves; the
    map turns it into a TreeMismatchError naming the path, which only the map knows."""


def _map(f, trees: tuple, with_path: bool):
    """Shared body of :func:`map` and :func:`map_with_path` (the hot path of every optimizer step)."""
    if not callable(f):
        raise TypeError(f"tree.map: expected a function to apply to the leaves, found {f!r}")
    return _map_node(f, with_path, None, trees[0], trees[1:])


def _map_leaf(f, with_path: bool, where, node, others):
    for other in others:
        if other is None or isinstance(other, _CONTAINERS):
            _mismatch(where, node, other)
    try:
        return f(_path_str(where), node, *others) if with_path else f(node, *others)
    except _LeafMismatch as mismatch:
        expected, found = mismatch.args
        raise TreeMismatchError(
            f"leaves differ at '{_path_str(where)}': expected {_describe(expected)}, found {_describe(found)}"
        ) from None


def _map_node(f, with_path: bool, where, node, others):
    """``f`` mapped over ``node`` and the matching subtrees ``others``.

    The position is carried as a cheap chain ``where`` of ``(parent, key)`` pairs and turned
    into a path string only when it is needed (for ``f`` or for an error).
    """
    if isinstance(node, dict):
        for other in others:
            if not isinstance(other, dict) or other.keys() != node.keys():
                _mismatch(where, node, other)
        out = {}  # a loop, not a comprehension: this is the hottest code of a training step
        for k in _sorted_keys(node):
            child = node[k]
            kids = [other[k] for other in others] if others else others
            if child is None or isinstance(child, _CONTAINERS):
                out[k] = _map_node(f, with_path, (where, k), child, kids)
            elif with_path or kids:
                out[k] = _map_leaf(f, with_path, (where, k), child, kids)
            else:  # a leaf of a single tree, the commonest case: no call to check the others
                out[k] = f(child)
        return out
    if isinstance(node, (list, tuple)):
        kind = list if isinstance(node, list) else tuple
        for other in others:
            if not isinstance(other, kind) or len(other) != len(node):
                _mismatch(where, node, other)
        items = [_map_node(f, with_path, (where, i), item, [other[i] for other in others]) for i, item in enumerate(node)]
        return items if kind is list else tuple(items)
    if node is None:
        for other in others:
            if other is not None:
                _mismatch(where, node, other)
        return None
    return _map_leaf(f, with_path, where, node, others)


def map(f, tree, *rest):
    """Apply ``f`` leaf-wise: ``f(leaf, *matching_leaves_of_rest)``; returns a new tree.

    All trees must have the same structure; otherwise :class:`TreeMismatchError` names the
    first path where they differ.
    """
    return _map(f, (tree,) + rest, with_path=False)


def map_with_path(f, tree, *rest):
    """Like :func:`map` but calls ``f(path, leaf, *rest_leaves)`` with the leaf's path string."""
    return _map(f, (tree,) + rest, with_path=True)


def _dtype_kind(leaf) -> str:
    """The numpy dtype kind of a leaf: ``"f"`` for floats, ``"i"`` for ints, ``"U"`` for strings..."""
    dtype = getattr(leaf, "dtype", None)
    return (dtype if dtype is not None else np.asarray(leaf).dtype).kind


def _matching(f, same_kind: bool):
    """``f(reference_leaf, found_leaf, *rest)`` behind a check that ``found_leaf`` has the shape
    (and with ``same_kind`` the dtype kind) of ``reference_leaf``. Shapes and dtypes are
    compared, never values: a few hundred nanoseconds a leaf, cheap enough for every optimizer
    step."""

    def checked(expected, found, *rest):
        try:  # the common case, two numpy arrays, without the slower getattr defaults
            same = found.shape == expected.shape and (not same_kind or found.dtype.kind == expected.dtype.kind)
        except AttributeError:  # a Python number among the leaves
            same = getattr(found, "shape", ()) == getattr(expected, "shape", ()) and (
                not same_kind or _dtype_kind(found) == _dtype_kind(expected)
            )
        if not same:
            raise _LeafMismatch(expected, found)
        return f(expected, found, *rest)

    return checked


def map_matching(f, reference, found, *rest, same_kind: bool = False):
    """``map(f, reference, found, *rest)``, refusing leaves of ``found`` unlike ``reference``'s.

    Each leaf of ``found`` must have the shape of the matching leaf of ``reference`` (no
    broadcasting) and, with ``same_kind=True``, the same dtype kind (float for float, int for
    int: float64 gradients for float32 parameters pass, integer or string ones do not). The
    ``rest`` trees only need the same structure. A mismatch raises
    :class:`TreeMismatchError` naming the path and both leaves.
    """
    return _map(_matching(f, same_kind), (reference, found) + rest, with_path=False)


def leaves_with_path(tree) -> list[tuple[str, object]]:
    """``[(path, leaf), ...]`` in visiting order, for example ``[("dense_0/b", b), ...]``."""
    found: list = []
    map_with_path(lambda p, x: found.append((p, x)), tree)
    return found


def zeros_like(tree):
    """A tree of the same structure whose leaves are zero arrays of the same shape and dtype."""
    return map(np.zeros_like, tree)


def add(a, b):
    """Leaf-wise ``a + b`` as a new tree; matching leaves must have the same shapes
    (:class:`TreeMismatchError` naming the path otherwise)."""
    return map_matching(np.add, a, b)


def sub(a, b):
    """Leaf-wise ``a - b`` as a new tree; matching leaves must have the same shapes
    (:class:`TreeMismatchError` naming the path otherwise)."""
    return map_matching(np.subtract, a, b)


def scale(tree, s):
    """Leaf-wise ``s * leaf`` as a new tree; ``s`` is a real scalar (a Python or numpy number
    or a 0-d array; not a bool: ``TypeError`` otherwise). Array dtypes are kept."""
    if np.ndim(s) != 0 or _dtype_kind(s) not in "iuf":
        raise TypeError(f"tree.scale: expected a real scalar factor, found {_describe(s)}")
    return map(lambda x: (np.asarray(x) * s).astype(np.result_type(x), copy=False), tree)


def size(tree) -> int:
    """Total number of scalar elements over all leaves (the parameter count of a model)."""
    return int(builtins.sum(np.size(x) for x in leaves(tree)))


def freeze(tree):
    """Return the tree with every array leaf marked read-only (a view; no data is copied)."""

    def frozen(x):
        if isinstance(x, np.ndarray) and x.flags.writeable:
            x = x.view()
            x.flags.writeable = False
        return x

    return map(frozen, tree)
