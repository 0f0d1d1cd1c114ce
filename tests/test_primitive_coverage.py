"""Every registered primitive must have a finite-difference gradient test somewhere in tests/."""

import importlib
import pkgutil
from pathlib import Path

import tinyfn
from tinyfn.autodiff import PRIMITIVES

from gradient_registry import COVERED


def test_every_primitive_has_a_gradient_test():
    for module in pkgutil.walk_packages(tinyfn.__path__, "tinyfn."):
        importlib.import_module(module.name)
    for path in Path(__file__).parent.glob("test_*.py"):
        importlib.import_module(path.stem)
    missing = sorted(set(PRIMITIVES) - COVERED)
    assert not missing, f"primitives without a gradient test: {missing}"
    assert len(PRIMITIVES) >= 30
