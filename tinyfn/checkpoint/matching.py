"""A loaded tree checked against a ``target`` template: every path where they differ, in
one :class:`~.errors.CheckpointMismatchError`; for a flax file, lists, tuples and int keys
that flax's encoding turned into maps and strings are first turned back."""

from __future__ import annotations

import numpy as np

from .errors import CheckpointMismatchError, _describe_node, _sorted, _where


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
