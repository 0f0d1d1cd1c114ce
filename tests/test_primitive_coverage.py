"""Every registered primitive must have finite-difference tests of its first and second
derivatives somewhere in tests/."""

import importlib
import pkgutil
from pathlib import Path

import pytest

import tinyfn
from tinyfn.autodiff import PRIMITIVES

from gradient_registry import COVERED


def _registered() -> set:
    for module in pkgutil.walk_packages(tinyfn.__path__, "tinyfn."):
        importlib.import_module(module.name)
    for path in Path(__file__).parent.glob("test_*.py"):
        importlib.import_module(path.stem)
    # Primitives defined by the package or by the test modules; those that the documentation's
    # examples define (in a doctest or a markdown block, run after the tests) are left out.
    return {
        name
        for name, primitive in PRIMITIVES.items()
        if not name.startswith("test_") and Path(primitive.vjp.__code__.co_filename).suffix == ".py"
        and Path(primitive.vjp.__code__.co_filename).is_file()
    }


@pytest.mark.parametrize("order", [1, 2])
def test_every_primitive_has_a_gradient_test_of_each_order(order):
    registered = _registered()
    missing = sorted(registered - COVERED[order])
    assert not missing, f"primitives without a test of their order-{order} derivatives: {missing}"
    assert len(registered) >= 30
