"""Pytree utilities: flatten/unflatten, fixed key order, mismatch errors naming the path."""

import weakref

import numpy as np
import pytest
from hypothesis import given

from tinyfn import tree
from tinyfn.testing import param_trees


def test_dict_keys_are_visited_in_sorted_order_whatever_the_insertion_order():
    a = {"b": 1, "a": 2, "c": {"z": 3, "y": 4}}
    b = {"c": {"y": 4, "z": 3}, "a": 2, "b": 1}
    assert tree.leaves(a) == [2, 1, 4, 3] == tree.leaves(b)
    assert tree.structure(a) == tree.structure(b)


def test_containers_and_none_round_trip_through_flatten():
    t = {"params": [np.ones(2), (np.zeros(1), None)], "step": 3, "empty": {}}
    leaves, treedef = tree.flatten(t)
    assert len(leaves) == 3 and treedef.num_leaves == 3
    back = tree.unflatten(treedef, leaves)
    assert type(back["params"]) is list and type(back["params"][1]) is tuple and back["params"][1][1] is None
    assert back["empty"] == {} and back["step"] == 3


@given(param_trees())
def test_flatten_then_unflatten_is_the_identity(t):
    leaves, treedef = tree.flatten(t)
    back = tree.unflatten(treedef, leaves)
    assert tree.structure(back) == treedef
    for x, y in zip(tree.leaves(back), leaves):
        assert x is y


@given(param_trees())
def test_flatten_up_to_finds_the_leaves_of_a_tree_of_the_same_structure(t):
    leaves, treedef = tree.flatten(t)
    same_structure = tree.map(lambda x: x + 1, t)
    assert [x is y for x, y in zip(treedef.flatten_up_to(t), leaves)] == [True] * len(leaves)
    np.testing.assert_equal(treedef.flatten_up_to(same_structure), tree.leaves(same_structure))


@pytest.mark.parametrize(
    "other",
    [{"a": 1, "c": 2}, {"a": 1}, {"a": 1, "b": 2, "c": 3}, {"a": [1], "b": 2}, {"a": None, "b": 2}, [1, 2], (1, 2)],
)
def test_flatten_up_to_refuses_another_structure(other):
    treedef = tree.structure({"a": 1, "b": 2})
    with pytest.raises(tree.TreeMismatchError, match="expected a tree of structure"):
        treedef.flatten_up_to(other)


def test_map_over_several_trees_and_arithmetic_helpers():
    a = {"w": np.array([1.0, 2.0]), "b": [np.array(3.0)]}
    b = {"w": np.array([10.0, 20.0]), "b": [np.array(30.0)]}
    np.testing.assert_array_equal(tree.add(a, b)["w"], [11.0, 22.0])
    np.testing.assert_array_equal(tree.sub(b, a)["b"][0], 27.0)
    np.testing.assert_array_equal(tree.scale(a, 2.0)["w"], [2.0, 4.0])
    assert tree.zeros_like(a)["w"].tolist() == [0.0, 0.0]
    assert tree.size(a) == 3
    assert [p for p, _ in tree.leaves_with_path(a)] == ["b/0", "w"]


def test_scale_keeps_float32():
    assert tree.scale({"w": np.ones(2, np.float32)}, 0.1)["w"].dtype == np.float32


@pytest.mark.parametrize(
    "a, b, message",
    [
        ({"w": 1, "b": 2}, {"w": 1}, r"'<root>': expected a dict with keys \['b', 'w'\], found a dict with keys \['w'\]"),
        ({"l": [1, 2]}, {"l": [1, 2, 3]}, r"'l': expected a list of length 2, found a list of length 3"),
        ({"l": [1, 2]}, {"l": (1, 2)}, r"'l': expected a list of length 2, found a tuple"),
        ({"d": {"w": 1}}, {"d": 5}, r"'d': expected a dict with keys \['w'\], found a leaf of type int"),
    ],
)
def test_mismatched_trees_name_the_path(a, b, message):
    with pytest.raises(tree.TreeMismatchError, match=message):
        tree.map(lambda x, y: x, a, b)


def test_add_and_sub_refuse_to_broadcast():
    # the other bad inputs of the tree functions: see tests/test_bad_inputs_core.py
    with pytest.raises(tree.TreeMismatchError, match=r"'w': expected .* shape \(3,\), found .* shape \(1, 3\)"):
        tree.add({"w": np.zeros(3)}, {"w": np.zeros((1, 3))})
    with pytest.raises(tree.TreeMismatchError, match=r"'w': expected .* shape \(1, 3\), found .* shape \(3,\)"):
        tree.sub({"w": np.zeros((1, 3))}, {"w": np.zeros(3)})


def test_map_matching_checks_shapes_and_kinds_of_the_found_tree_only():
    reference = {"w": np.ones((2, 2), np.float32), "b": np.ones(2, np.float32)}
    found = {"w": np.full((2, 2), 2.0), "b": np.full(2, 3.0)}  # float64 for float32: the same kind
    mask = {"w": True, "b": False}  # scalars: only their structure is checked
    out = tree.map_matching(lambda r, f, m: r + f if m else r, reference, found, mask, same_kind=True)
    np.testing.assert_array_equal(out["w"], np.full((2, 2), 3.0))
    np.testing.assert_array_equal(out["b"], np.ones(2))
    ints = {"w": np.ones((2, 2), np.int64), "b": np.ones(2, np.int64)}
    assert tree.map_matching(np.add, reference, ints)["b"].tolist() == [2.0, 2.0]  # kinds differ: allowed by default
    with pytest.raises(tree.TreeMismatchError, match=r"'b': expected a float32 array of shape \(2,\), found an int64"):
        tree.map_matching(np.add, reference, ints, same_kind=True)


def test_freeze_makes_leaves_read_only_without_copying():
    w = np.ones(3)
    frozen = tree.freeze({"w": w})
    assert not frozen["w"].flags.writeable and w.flags.writeable
    assert np.shares_memory(frozen["w"], w)
    with pytest.raises(ValueError):
        frozen["w"][0] = 2.0


def test_unflatten_with_the_wrong_number_of_leaves_is_an_error():
    _, treedef = tree.flatten({"a": 1, "b": 2})
    with pytest.raises(tree.TreeMismatchError, match="2 leaves, found 3"):
        tree.unflatten(treedef, [1, 2, 3])


@pytest.mark.parametrize(
    "operation",
    [
        lambda t: tree.flatten(t),
        lambda t: tree.unflatten(tree.structure(t), tree.leaves(t)),
        lambda t: tree.map(lambda x: x + 1, t),
        lambda t: tree.map(np.add, t, t),
        lambda t: tree.leaves_with_path(t),
    ],
    ids=["flatten", "unflatten", "map", "map of two trees", "leaves_with_path"],
)
def test_tree_operations_keep_no_reference_to_the_arrays(no_cycle_collector, operation):
    arrays = {"a": np.ones(3), "b": [np.zeros(2), (np.ones(1),)]}
    result = operation(arrays)
    refs = [weakref.ref(leaf) for leaf in tree.leaves(arrays) + tree.leaves(result) if isinstance(leaf, np.ndarray)]
    del arrays, result
    still_alive = [r() for r in refs if r() is not None]
    assert still_alive == []
