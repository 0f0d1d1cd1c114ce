"""The table of a tree's leaves that :func:`~tinyfn.checkpoint.describe` prints (and
``tinyfn inspect``): path, shape, dtype and element count a row, then the totals."""

from __future__ import annotations

import numpy as np

from .errors import _sorted, _where


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
