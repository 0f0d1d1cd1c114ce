"""The Numba kernels agree with the plain-numpy references, in float32 and float64, over
hypothesis-generated shapes, strides, paddings, dilations and groups; the pooling kernels
and references both agree with maxima taken window by window, NaN and -inf included."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyfn
from gradient_registry import covers
from tinyfn import kernels
from tinyfn.kernels import reference
from tinyfn.testing import arrays, check_grads, shapes

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


def with_specials(x, seed):
    """``x`` with about a third of its entries replaced by NaN, inf or -inf."""
    rng = np.random.default_rng(seed)
    specials = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype=x.dtype), x.shape)
    return np.where(rng.random(x.shape) < 0.3, specials, x)


def window_corners(x_shape, window, stride, padding):
    """``(oh, ow, top, left)`` of every pooling window: its output pixel and its top-left
    corner in the padded plane."""
    out_h = (x_shape[2] + 2 * padding[0] - window[0]) // stride[0] + 1
    out_w = (x_shape[3] + 2 * padding[1] - window[1]) // stride[1] + 1
    return [(oh, ow, oh * stride[0], ow * stride[1]) for oh in range(out_h) for ow in range(out_w)]


def window_maxima(x, window, stride, padding):
    """``np.max`` over each window of ``x`` padded with -inf, one window at a time: ``(N, C, OH, OW)``."""
    x_padded = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2), constant_values=-np.inf)
    corners = window_corners(x.shape, window, stride, padding)
    y = np.empty(x.shape[:2] + (corners[-1][0] + 1, corners[-1][1] + 1), dtype=x.dtype)
    for oh, ow, top, left in corners:
        y[:, :, oh, ow] = np.max(x_padded[:, :, top : top + window[0], left : left + window[1]], axis=(2, 3))
    return y


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


@given(pool_configs(), DTYPES, st.booleans())
def test_max_pool2d_matches_reference(cfg, dtype, specials):
    x = with_specials(normal(0, cfg["x_shape"], dtype), 1) if specials else normal(0, cfg["x_shape"], dtype)
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


POOLINGS = [kernels, reference]  # the kernels and the references must both pass the tests below


@pytest.mark.parametrize("pooling", POOLINGS, ids=["kernels", "reference"])
@pytest.mark.parametrize("window, stride", POOL_GEOMETRIES)
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool2d_propagates_a_nan_from_every_position(pooling, window, stride, padded, dtype):
    """A window that holds a NaN outputs NaN and sends its gradient to the NaN."""
    padding = (window[0] // 2, window[1] // 2) if padded else (0, 0)
    h, w = 5, 6
    # sample p has its only NaN at pixel p (in every channel): together the samples put a NaN
    # at every position of every window
    rows, cols = np.divmod(np.arange(h * w), w)
    x = np.repeat(normal(0, (1, 2, h, w), dtype), h * w, axis=0)
    x[np.arange(h * w), :, rows, cols] = np.nan
    expected = window_maxima(x, window, stride, padding)
    y, argmax = pooling.max_pool2d(x, window, stride, padding)
    np.testing.assert_array_equal(y, expected)  # NaN exactly where the window holds the NaN
    holds_nan = np.isnan(expected)
    nan_index = (rows + padding[0]) * (w + 2 * padding[1]) + cols + padding[1]
    np.testing.assert_array_equal(argmax[holds_nan], np.broadcast_to(nan_index[:, None, None, None], y.shape)[holds_nan])
    g = normal(1, y.shape, dtype)
    dx = pooling.max_pool2d_vjp(g, argmax, x.shape, padding)
    assert_close(dx[np.arange(h * w), :, rows, cols], np.where(holds_nan, g, 0).sum(axis=(2, 3)), dtype)


@pytest.mark.parametrize("pooling", POOLINGS, ids=["kernels", "reference"])
@pytest.mark.parametrize("window, stride", POOL_GEOMETRIES)
def test_max_pool2d_of_nans_picks_the_last_nan_as_pytorch_does(pooling, window, stride):
    """PyTorch's max_pool2d(return_indices=True) takes a pixel that is greater *or NaN*, so of
    several NaNs the last one (row-major) wins; the padding never does."""
    padding = (window[0] // 2, window[1] // 2)
    x = np.full((1, 1, 4, 5), np.nan)
    y, argmax = pooling.max_pool2d(x, window, stride, padding)
    assert np.isnan(y).all()
    for oh, ow, top, left in window_corners(x.shape, window, stride, padding):
        last_h = min(top + window[0], padding[0] + x.shape[2]) - 1
        last_w = min(left + window[1], padding[1] + x.shape[3]) - 1
        assert argmax[0, 0, oh, ow] == last_h * (x.shape[3] + 2 * padding[1]) + last_w


@pytest.mark.parametrize("pooling", POOLINGS, ids=["kernels", "reference"])
@given(cfg=pool_configs(), dtype=DTYPES, share=st.sampled_from([0.6, 1.0]), seed=st.integers(0, 99))
def test_max_pool2d_gradient_of_minus_inf_windows_stays_in_the_image(pooling, cfg, dtype, share, seed):
    """Padding never wins, even against -inf: a window whose real pixels are all -inf outputs
    -inf and picks its first real pixel, so the cotangent is conserved (none is lost in the
    padding)."""
    rng = np.random.default_rng(seed)
    x = np.where(rng.random(cfg["x_shape"]) < share, -np.inf, rng.standard_normal(cfg["x_shape"])).astype(dtype)
    window, stride, padding = cfg["window"], cfg["stride"], cfg["padding"]
    y, argmax = pooling.max_pool2d(x, window, stride, padding)
    np.testing.assert_array_equal(y, window_maxima(x, window, stride, padding))
    for oh, ow, top, left in window_corners(x.shape, window, stride, padding):
        first_real = max(top, padding[0]) * (x.shape[3] + 2 * padding[1]) + max(left, padding[1])
        all_minus_inf = y[:, :, oh, ow] == -np.inf
        assert (argmax[:, :, oh, ow][all_minus_inf] == first_real).all()
    g = rng.integers(-5, 6, y.shape).astype(dtype)  # small integers: the sums below are exact
    assert pooling.max_pool2d_vjp(g, argmax, x.shape, padding).sum() == g.sum()


@pytest.mark.parametrize("pooling", POOLINGS, ids=["kernels", "reference"])
@pytest.mark.parametrize("x_shape, y_shape", [((0, 3, 5, 8), (0, 3, 3, 4)), ((2, 0, 5, 8), (2, 0, 3, 4))])
def test_pooling_an_empty_batch_gives_empty_arrays(pooling, x_shape, y_shape):
    window, stride, padding = (3, 3), (2, 2), (1, 1)  # OH = (5 + 2 - 3) // 2 + 1, OW = (8 + 2 - 3) // 2 + 1
    x, g = np.zeros(x_shape, np.float32), np.zeros(y_shape, np.float32)
    y, argmax = pooling.max_pool2d(x, window, stride, padding)
    assert y.shape == argmax.shape == y_shape
    assert pooling.max_pool2d_vjp(g, argmax, x_shape, padding).shape == x_shape
    assert pooling.avg_pool2d(x, window, stride, padding).shape == y_shape
    assert pooling.avg_pool2d_vjp(g, x_shape, window, stride, padding).shape == x_shape


def test_max_pool2d_refuses_padding_over_half_the_window():
    with pytest.raises(ValueError, match="at most half the window"):
        kernels.max_pool2d(np.zeros((1, 1, 4, 4)), (2, 2), (1, 1), (2, 0))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the mean of inf and -inf
@given(pool_configs(), DTYPES, st.booleans())
def test_avg_pool2d_matches_reference(cfg, dtype, specials):
    x = with_specials(normal(0, cfg["x_shape"], dtype), 1) if specials else normal(0, cfg["x_shape"], dtype)
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


# ----------------------------------------------------------------------------- GELU and the vectorised transcendentals


def _ulps(found, exact, floor=1e-30):
    """|found - exact| in units in the last place of the float32 nearest ``exact`` (at least
    that of ``floor``)."""
    scale = np.maximum(np.abs(exact), floor).astype(np.float32)
    return np.abs(found.astype(np.float64) - exact) / np.spacing(scale).astype(np.float64)


@pytest.mark.parametrize("approximate", [False, True])
def test_gelu_kernel_in_float32_is_within_a_few_ulps_of_the_formula(approximate):
    from tinyfn.kernels import gelu

    x = np.concatenate([np.linspace(-12, 12, 48_001), np.geomspace(1e-8, 12, 2_001), -np.geomspace(1e-8, 12, 2_001)])
    x = x.astype(np.float32)
    y, d = gelu.gelu(x, approximate)
    y_exact, d_exact = reference.gelu(x, approximate)
    assert y.dtype == d.dtype == np.float32 and y.shape == d.shape == x.shape
    assert _ulps(y, y_exact).max() <= 8
    # the derivative is a sum of two terms, Phi(x) and x Phi'(x), each known to float32
    # precision: its error is measured in units of the last place of the larger one
    cdf = y_exact / np.where(x == 0, 1, x)
    larger = np.maximum(np.abs(cdf), np.abs(d_exact - cdf))
    moderate = np.abs(x) <= 5
    error_in_ulps = np.abs(d - d_exact) / np.spacing(larger.astype(np.float32)).astype(np.float64)
    assert error_in_ulps[moderate].max() <= 8
    assert np.abs(d - d_exact).max() <= 3e-7


@given(st.sampled_from([(7,), (3, 5), (2, 3, 40_000)]), st.booleans())
def test_gelu_kernel_in_float64_is_the_formula(shape, approximate):
    from tinyfn.kernels import gelu

    x = normal(0, shape, np.float64) * 3
    y, d = gelu.gelu(x, approximate)
    y_exact, d_exact = reference.gelu(x, approximate)
    np.testing.assert_allclose(y, y_exact, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(d, d_exact, rtol=1e-13, atol=1e-14)


def test_gelu_kernel_keeps_nan_and_the_limits_at_infinity():
    from tinyfn.kernels import gelu

    for dtype in (np.float32, np.float64):
        x = np.array([np.nan, np.inf, 30.0, -30.0, 0.0], dtype)
        y, d = gelu.gelu(x)
        assert np.isnan(y[0]) and np.isnan(d[0])
        assert y[1] == np.inf and y[2] == 30 and y[3] == 0 and y[4] == 0
        np.testing.assert_allclose(d[2:], [1, 0, 0.5], rtol=0, atol=1e-30)


def test_vectorised_tanh_sigmoid_and_exp_agree_with_math():
    from numba import njit

    from tinyfn.kernels.transcendental import exp_minus_f32, sigmoid, tanh

    @njit
    def apply(x, t, s, e):
        for i in range(x.shape[0]):
            t[i], s[i] = tanh(x[i]), sigmoid(x[i])
            e[i] = exp_minus_f32(abs(np.float64(x[i])))

    x = np.concatenate([np.linspace(-90, 90, 20_001), np.linspace(-3, 3, 20_001)]).astype(np.float32)
    t, s, e = (np.empty_like(x) for _ in range(3))
    apply(x, t, s, e)
    xs = x.astype(np.float64).tolist()
    t_exact = np.array([np.tanh(v) for v in xs])
    s_exact = np.array([1 / (1 + np.exp(-v)) for v in xs])
    e_exact = np.exp(-np.abs(x.astype(np.float64)))
    assert np.abs(t - t_exact).max() <= 1.5e-7 and np.abs(s - s_exact).max() <= 1e-7
    normal_range = e_exact >= 1.2e-38
    assert _ulps(e, e_exact)[normal_range].max() <= 2  # relative accuracy wherever float32 is normal
    assert np.all(e[~normal_range] <= 1.2e-38)
    # compiled for float64, tanh and sigmoid are math's
    x64 = x.astype(np.float64)
    t64, s64, e64 = (np.empty_like(x64) for _ in range(3))
    apply(x64, t64, s64, e64)
    np.testing.assert_array_equal(t64, [math.tanh(v) for v in x64.tolist()])
    np.testing.assert_array_equal(s64, [1 / (1 + math.exp(-v)) for v in x64.tolist()])


@covers("gelu", order=2)
@settings(max_examples=25)
@given(arrays(shapes(min_dims=1, max_dims=3), low=-5, high=5), st.booleans())
def test_gelu_primitive_first_and_second_derivatives(x, approximate):
    from tinyfn.layers.activations import gelu

    check_grads(lambda x: gelu(x, approximate), (x,), order=2)


def test_gelu_primitive_third_derivative_and_float32_route():
    from tinyfn.layers.activations import gelu

    x = np.linspace(-4, 4, 9) + 0.013
    for approximate in (False, True):
        check_grads(lambda x: gelu(x, approximate), (x,), order=3)
        # float32 through the kernel: value and gradient agree with the float64 formula
        value, grad = tinyfn.value_and_grad(lambda x: gelu(x, approximate).sum())(x.astype(np.float32))
        y_exact, d_exact = reference.gelu(x.astype(np.float32), approximate)
        assert grad.dtype == np.float32
        np.testing.assert_allclose(value, y_exact.sum(), rtol=1e-6)
        np.testing.assert_allclose(grad, d_exact, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- numpy's BLAS from Numba


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_into_calls_numpys_blas_on_strided_rows(dtype):
    from numba import njit

    from tinyfn.kernels import blas

    address = blas.gemm_address(dtype)
    assert address is not None  # numpy's wheels bundle scipy-openblas64

    @njit
    def product(a, b, c, beta):
        blas.matmul_into(address, a, b, c, beta)

    for rows, depth, cols in [(1, 1, 1), (1, 3, 4), (5, 1, 2), (4, 7, 6)]:
        a = normal(0, (rows, 3, depth + 2), dtype)[:, 1, 1 : depth + 1]  # strided rows, as states[:, t, :H]
        b = np.ascontiguousarray(normal(1, (cols, depth), dtype).T)  # (1, n) arrays may report any row stride
        out = normal(2, (rows, 2, cols + 1), dtype)
        c = out[:, 1, :cols]
        expected = a @ b + dtype(0.5) * c
        product(a, b, c, dtype(0.5))
        np.testing.assert_allclose(c, expected, **TOLERANCE[dtype])
        np.testing.assert_array_equal(out[:, 0], normal(2, (rows, 2, cols + 1), dtype)[:, 0])  # nothing else written
