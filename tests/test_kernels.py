"""The Numba kernels agree with the plain-numpy references, in float32 and float64, over
hypothesis-generated shapes, strides, paddings, dilations and groups."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyfn import kernels
from tinyfn.kernels import reference

DTYPES = st.sampled_from([np.float32, np.float64])
TOLERANCE = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}

pairs = st.tuples


@st.composite
def conv_configs(draw):
    """A small convolution: input and weight shapes and the (rows, cols) settings, always valid."""
    groups = draw(st.integers(1, 3))
    kernel = draw(pairs(st.integers(1, 3), st.integers(1, 3)))
    stride = draw(pairs(st.integers(1, 3), st.integers(1, 3)))
    dilation = draw(pairs(st.integers(1, 2), st.integers(1, 2)))
    padding = draw(pairs(st.integers(0, 2), st.integers(0, 2)))
    # the image must cover the dilated kernel once padded
    size = [draw(st.integers(max(1, dilation[a] * (kernel[a] - 1) + 1 - 2 * padding[a]), 7)) for a in range(2)]
    x_shape = (draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))) + tuple(size)
    w_shape = (groups * draw(st.integers(1, 2)), x_shape[1] // groups) + kernel
    return dict(x_shape=x_shape, w_shape=w_shape, stride=stride, padding=padding, dilation=dilation, groups=groups)


# The max-pooling kernel is compiled for each (window, stride), so the tests draw them from a
# varied handful rather than from every combination (each one would cost a compilation).
POOL_GEOMETRIES = [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((3, 2), (1, 2)), ((1, 3), (3, 1)), ((2, 1), (1, 1))]


@st.composite
def pool_configs(draw):
    window, stride = draw(st.sampled_from(POOL_GEOMETRIES))
    padding = draw(pairs(st.integers(0, window[0] // 2), st.integers(0, window[1] // 2)))
    size = [draw(st.integers(max(1, window[a] - 2 * padding[a]), 7)) for a in range(2)]
    x_shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3))) + tuple(size)
    return dict(x_shape=x_shape, window=window, stride=stride, padding=padding)


def normal(seed, shape, dtype):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def assert_close(actual, expected, dtype):
    assert actual.dtype == dtype
    np.testing.assert_allclose(actual, expected, **TOLERANCE[dtype])


def conv_settings(cfg):
    return cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"]


@given(conv_configs(), DTYPES, st.booleans())
def test_conv2d_forward_matches_reference(cfg, dtype, with_bias):
    x, w = normal(0, cfg["x_shape"], dtype), normal(1, cfg["w_shape"], dtype)
    b = normal(2, cfg["w_shape"][:1], dtype) if with_bias else None
    y, cols = kernels.conv2d(x, w, b, *conv_settings(cfg))
    assert_close(y, reference.conv2d(x, w, b, *conv_settings(cfg)), dtype)
    assert cols.shape == (x.shape[0], x.shape[1] * w.shape[2] * w.shape[3], y.shape[2] * y.shape[3])


@given(conv_configs(), DTYPES)
def test_conv2d_vjps_match_reference(cfg, dtype):
    x, w = normal(0, cfg["x_shape"], dtype), normal(1, cfg["w_shape"], dtype)
    y, cols = kernels.conv2d(x, w, None, *conv_settings(cfg))
    g = normal(3, y.shape, dtype)
    assert_close(
        kernels.conv2d_input_vjp(g, w, x.shape, *conv_settings(cfg)),
        reference.conv2d_input_vjp(g, w, x.shape, *conv_settings(cfg)),
        dtype,
    )
    assert_close(
        kernels.conv2d_weight_vjp(g, cols, w.shape, cfg["groups"]),
        reference.conv2d_weight_vjp(g, x, w.shape, *conv_settings(cfg)),
        dtype,
    )


@given(conv_configs(), DTYPES)
def test_col2im_is_the_adjoint_of_im2col(cfg, dtype):
    """<im2col(x), c> == <x, col2im(c)> for all x and c: the defining property of the adjoint."""
    stride, padding, dilation, _ = conv_settings(cfg)
    kernel = cfg["w_shape"][2:]
    out = tuple(kernels.output_size(cfg["x_shape"][2 + a], kernel[a], stride[a], padding[a], dilation[a]) for a in range(2))
    x = normal(0, cfg["x_shape"], dtype)
    cols = kernels.im2col(x, kernel, stride, padding, dilation, out)
    c = normal(1, cols.shape, dtype)
    back = kernels.col2im(c, x.shape, kernel, stride, padding, dilation, out)
    np.testing.assert_allclose(np.vdot(cols, c), np.vdot(x, back), **TOLERANCE[dtype])


@given(st.integers(1, 9), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2), st.integers(1, 2), st.integers(0, 2))
def test_transposed_output_size_inverts_output_size(size, kernel, stride, padding, dilation, extra):
    output_padding = extra % stride
    out = kernels.transposed_output_size(size, kernel, stride, padding, dilation, output_padding)
    if out >= 1:
        assert kernels.output_size(out, kernel, stride, padding, dilation) == size


@given(pool_configs(), DTYPES)
def test_max_pool2d_matches_reference(cfg, dtype):
    x = normal(0, cfg["x_shape"], dtype)
    args = cfg["window"], cfg["stride"], cfg["padding"]
    y, argmax = kernels.max_pool2d(x, *args)
    y_ref, argmax_ref = reference.max_pool2d(x, *args)
    assert_close(y, y_ref, dtype)
    np.testing.assert_array_equal(argmax, argmax_ref)
    g = normal(1, y.shape, dtype)
    assert_close(
        kernels.max_pool2d_vjp(g, argmax, x.shape, cfg["padding"]),
        reference.max_pool2d_vjp(g, argmax_ref, x.shape, cfg["padding"]),
        dtype,
    )


def test_max_pool2d_ties_go_to_the_first_maximum_and_padding_never_wins():
    x = np.full((1, 1, 2, 2), -5.0)
    y, argmax = kernels.max_pool2d(x, (2, 2), (1, 1), (1, 1))
    assert (y == -5.0).all()
    # padded plane is 4 wide; the real pixels sit at rows/cols 1..2
    np.testing.assert_array_equal(argmax[0, 0], [[5, 5, 6], [5, 5, 6], [9, 9, 10]])


@given(pool_configs(), DTYPES)
def test_avg_pool2d_matches_reference(cfg, dtype):
    x = normal(0, cfg["x_shape"], dtype)
    args = cfg["window"], cfg["stride"], cfg["padding"]
    y = kernels.avg_pool2d(x, *args)
    assert_close(y, reference.avg_pool2d(x, *args), dtype)
    g = normal(1, y.shape, dtype)
    assert_close(kernels.avg_pool2d_vjp(g, x.shape, *args), reference.avg_pool2d_vjp(g, x.shape, *args), dtype)


@pytest.mark.parametrize("make", [lambda x: x[:, :, ::2], lambda x: x.transpose(0, 1, 3, 2), "readonly"])
def test_kernels_accept_strided_and_read_only_inputs(make):
    x = normal(0, (2, 3, 6, 6), np.float32)
    if make == "readonly":
        view = x.view()
        view.flags.writeable = False
    else:
        view = make(x)
    w = normal(1, (4, 3, 3, 3), np.float32)
    y, _ = kernels.conv2d(view, w, None, (1, 1), (1, 1), (1, 1), 1)
    assert_close(y, reference.conv2d(np.array(view), w, None, (1, 1), (1, 1), (1, 1), 1), np.float32)
    y, _ = kernels.max_pool2d(view, (2, 2), (2, 2), (0, 0))
    assert_close(y, reference.max_pool2d(np.array(view), (2, 2), (2, 2), (0, 0))[0], np.float32)


@given(st.sampled_from([(3, 2), (2, 3, 4, 5)]), DTYPES)
def test_bias_relu_matches_reference(shape, dtype):
    y, b, g = normal(0, shape, dtype), normal(1, shape[1:2], dtype), normal(2, shape, dtype)
    out = kernels.bias_relu_(y.copy(), b)
    assert_close(out, reference.bias_relu(y, b), dtype)
    dx, db = kernels.bias_relu_vjp(g, out)
    dx_ref, db_ref = reference.bias_relu_vjp(g, out)
    assert_close(dx, dx_ref, dtype)
    assert_close(db, db_ref, dtype)
