"""The fused elementwise kernels give exactly the bits of their plain-numpy formulas."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinyfn.kernels import elementwise
from tinyfn.testing import shapes

FLOATS = st.sampled_from([np.float32, np.float64])


@pytest.fixture(autouse=True)
def kernels_for_every_size(monkeypatch):
    """Send even the small generated arrays through the kernels, not the numpy fallback."""
    monkeypatch.setattr(elementwise, "_MIN_KERNEL_SIZE", 1)


@given(data=st.data(), shape=shapes(max_dims=3, max_side=6), dtype=FLOATS, lr=st.floats(1e-4, 2.0))
def test_sgd_update_kernel_matches_numpy_bitwise(data, shape, dtype, lr):
    finite = st.floats(-1e3, 1e3, width=32)
    param = data.draw(hnp.arrays(dtype, shape, elements=finite))
    grad = data.draw(hnp.arrays(dtype, shape, elements=finite))
    expected = np.subtract(param, dtype(lr) * grad, dtype=dtype)
    got = elementwise.sgd_update(param, grad, lr)
    assert got.dtype == dtype and got.shape == param.shape
    np.testing.assert_array_equal(got, expected)


@given(data=st.data(), shape=shapes(max_dims=3, max_side=6), dtype=FLOATS)
def test_relu_vjp_kernel_matches_numpy_bitwise(data, shape, dtype):
    finite = st.floats(-10, 10, width=32)
    g = data.draw(hnp.arrays(dtype, shape, elements=finite))
    y = np.maximum(data.draw(hnp.arrays(dtype, shape, elements=finite)), 0)
    np.testing.assert_array_equal(elementwise.relu_vjp(g, y), g * (y > 0))


@pytest.mark.parametrize("case", ["mixed dtypes", "strided", "int"])
def test_inputs_the_kernels_do_not_take_use_the_numpy_formula(case):
    p = np.arange(12.0).reshape(3, 4)
    g = np.ones((3, 4))
    if case == "mixed dtypes":
        p = p.astype(np.float32)
    elif case == "strided":
        p, g = p[:, ::2], g[:, ::2]
    else:
        p, g = p.astype(np.int64), g.astype(np.int64)
    np.testing.assert_array_equal(elementwise.sgd_update(p, g, 0.5), np.subtract(p, p.dtype.type(0.5) * g, dtype=p.dtype))
    assert elementwise.sgd_update(p, g, 0.5).dtype == p.dtype
