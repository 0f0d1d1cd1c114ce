"""Shared test settings: hypothesis runs derandomized (the same examples every run) with no deadline
(the first call of a Numba kernel compiles it); fixtures used by several test files."""

import gc
import os

import pytest
from hypothesis import settings

settings.register_profile("tinyfn", max_examples=30, deadline=None, derandomize=True, print_blob=True)
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "tinyfn"))


@pytest.fixture
def no_cycle_collector():
    """Python's cycle collector switched off: arrays must then be freed as soon as nothing refers
    to them, which fails if some reference cycle holds them."""
    gc.disable()
    yield
    gc.enable()
