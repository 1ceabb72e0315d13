"""LRN and pooling layers against float64 numpy references written from the papers' formulas, and the
fast formulations of layers.py (batch-minor convolution, 2x2 window sums) against the straightforward
`lax.conv_general_dilated` / `reduce_window` ones, forward and gradients.

References: K12 §3.3 (K12 §3.3 LRN formula and constants; PyTorch's convention),
§1.5 (overlapping 3/2 max-pooling), §3.1 / §5.2 (torch AdaptiveAvgPool2d semantics).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.models.layers import (
    adaptive_avg_pool,
    conv_batch_minor,
    conv_out,
    from_batch_minor,
    lrn,
    max_pool,
    patches_batch_minor,
    sum_pool_2x2_batch_minor,
    to_batch_minor,
)


# ---------------------------------------------------------------------------------------------
# numpy references (float64, explicit loops over channels)
# ---------------------------------------------------------------------------------------------
def np_lrn_paper(a: np.ndarray, *, k: float, n: int, alpha: float, beta: float) -> np.ndarray:
    """K12 §3.3: b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta."""
    a = np.asarray(a, np.float64)
    N = a.shape[-1]
    b = np.empty_like(a)
    for i in range(N):
        lo, hi = max(0, i - n // 2), min(N - 1, i + n // 2)
        s = np.zeros(a.shape[:-1], np.float64)
        for j in range(lo, hi + 1):
            s += a[..., j] ** 2
        b[..., i] = a[..., i] / (k + alpha * s) ** beta
    return b


def np_lrn_torch(a: np.ndarray, *, size: int, alpha: float, beta: float, k: float) -> np.ndarray:
    """torch.nn.LocalResponseNorm: b_c = a_c / (k + alpha/n * sum_{c'=c-n//2}^{c+(n-1)//2} a_c'^2)^beta."""
    a = np.asarray(a, np.float64)
    N = a.shape[-1]
    b = np.empty_like(a)
    for c in range(N):
        s = np.zeros(a.shape[:-1], np.float64)
        for j in range(c - size // 2, c + (size - 1) // 2 + 1):
            if 0 <= j < N:
                s += a[..., j] ** 2
        b[..., c] = a[..., c] / (k + alpha / size * s) ** beta
    return b


def np_adaptive_avg_pool(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """torch AdaptiveAvgPool2d: bin i spans [floor(i*H/o), ceil((i+1)*H/o))."""
    x = np.asarray(x, np.float64)
    B, H, W, C = x.shape
    out = np.zeros((B, oh, ow, C))
    for i in range(oh):
        h0, h1 = int(np.floor(i * H / oh)), int(np.ceil((i + 1) * H / oh))
        for j in range(ow):
            w0, w1 = int(np.floor(j * W / ow)), int(np.ceil((j + 1) * W / ow))
            out[:, i, j, :] = x[:, h0:h1, w0:w1, :].mean(axis=(1, 2))
    return out


def np_max_pool(x: np.ndarray, z: int = 3, s: int = 2) -> np.ndarray:
    x = np.asarray(x, np.float64)
    B, H, W, C = x.shape
    oh, ow = (H - z) // s + 1, (W - z) // s + 1
    out = np.empty((B, oh, ow, C))
    for i in range(oh):
        for j in range(ow):
            out[:, i, j, :] = x[:, i * s:i * s + z, j * s:j * s + z, :].max(axis=(1, 2))
    return out


def _rel_close(got, want, rtol):
    got = np.asarray(got, np.float64)
    err = np.abs(got - want) / np.maximum(np.abs(want), 1e-30)
    assert err.max() <= rtol, f"max relative error {err.max():.3g} > {rtol}"


def _large(shape, seed):
    # values large enough that alpha * sum(a^2) is comparable to k = 2 (so the denominator matters)
    return np.random.default_rng(seed).normal(0.0, 60.0, shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# LRN
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("N", [7, 48])
@pytest.mark.parametrize("beta", [0.75, 0.5])
def test_lrn_matches_paper_formula(N, beta):
    x = _large((2, 3, 4, N), seed=N)
    want = np_lrn_paper(x, k=2.0, n=5, alpha=1e-4, beta=beta)
    # the denominator is far from k**beta, i.e. the normalisation is doing real work
    denom = x.astype(np.float64) / want
    assert denom.max() > 1.5 * 2.0 ** beta
    got = lrn(jnp.asarray(x), k=2.0, n=5, alpha=1e-4, beta=beta)
    assert got.dtype == jnp.float32 and got.shape == x.shape
    _rel_close(got, want, 1e-6)


def test_lrn_defaults_are_the_paper_constants():
    x = _large((1, 2, 2, 11), seed=3)
    _rel_close(lrn(jnp.asarray(x)), np_lrn_paper(x, k=2.0, n=5, alpha=1e-4, beta=0.75), 1e-6)


@pytest.mark.parametrize("n", [3, 7])
def test_lrn_other_window_sizes(n):
    x = _large((2, 2, 2, 12), seed=n)
    _rel_close(lrn(jnp.asarray(x), n=n), np_lrn_paper(x, k=2.0, n=n, alpha=1e-4, beta=0.75), 1e-6)


def test_lrn_alpha_over_n_is_pytorch_convention():
    """PyTorch divides alpha by the window size: our alpha=1e-4/5 == torch LRN(5, 1e-4, 0.75, k=2)."""
    x = _large((2, 3, 3, 48), seed=7)
    torch_ref = np_lrn_torch(x, size=5, alpha=1e-4, beta=0.75, k=2.0)
    _rel_close(lrn(jnp.asarray(x), alpha=1e-4 / 5), torch_ref, 1e-6)
    # ... and the printed formula (our default) is torch's with alpha = 5e-4
    _rel_close(lrn(jnp.asarray(x)), np_lrn_torch(x, size=5, alpha=5e-4, beta=0.75, k=2.0), 1e-6)
    # the two conventions really differ on these inputs
    assert np.abs(np_lrn_paper(x, k=2.0, n=5, alpha=1e-4, beta=0.75) - torch_ref).max() > 1e-2


def test_lrn_bfloat16_keeps_dtype():
    x = _large((1, 2, 2, 9), seed=11)
    got = lrn(jnp.asarray(x, jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    xb = np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64)
    want = np_lrn_paper(xb, k=2.0, n=5, alpha=1e-4, beta=0.75)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-2)


def test_lrn_is_channelwise_local():
    """Changing channel j only affects channels within n//2 of j."""
    x = _large((1, 1, 1, 16), seed=5)
    y0 = np.asarray(lrn(jnp.asarray(x)))
    x2 = x.copy()
    x2[..., 8] *= 3.0
    y1 = np.asarray(lrn(jnp.asarray(x2)))
    changed = np.nonzero(np.abs(y1 - y0)[0, 0, 0] > 0)[0]
    assert changed.tolist() == [6, 7, 8, 9, 10]


# ---------------------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw_in, hw_out", [((13, 13), (6, 6)), ((5, 5), (6, 6)), ((1, 1), (6, 6)),
                                           ((6, 6), (6, 6)), ((13, 5), (6, 6)), ((7, 9), (3, 4))])
def test_adaptive_avg_pool_torch_semantics(hw_in, hw_out):
    x = np.random.default_rng(sum(hw_in)).normal(size=(2, *hw_in, 3)).astype(np.float32)
    got = adaptive_avg_pool(jnp.asarray(x), hw_out)
    assert got.shape == (2, *hw_out, 3)
    np.testing.assert_allclose(np.asarray(got, np.float64), np_adaptive_avg_pool(x, *hw_out),
                               rtol=1e-6, atol=1e-6)


def test_adaptive_avg_pool_identity_at_6x6():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 6, 6, 4)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(adaptive_avg_pool(x, (6, 6))), np.asarray(x))


def test_max_pool_overlapping_sizes():
    """K12 §3.4: z=3, s=2 everywhere; AlexNet's maps go 55 -> 27 -> 13 -> 6 (K12 Fig. 2, §3.5)."""
    sizes = [55]
    for _ in range(3):
        sizes.append((sizes[-1] - 3) // 2 + 1)
    assert sizes == [55, 27, 13, 6]
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        y = jax.eval_shape(max_pool, jax.ShapeDtypeStruct((2, a, a, 5), jnp.float32))
        assert y.shape == (2, b, b, 5)
        assert conv_out(a, 3, 2, 0, 0) == b


def test_max_pool_values_overlap():
    x = np.random.default_rng(1).normal(size=(2, 13, 13, 3)).astype(np.float32)
    got = max_pool(jnp.asarray(x))
    want = np_max_pool(x)
    assert got.shape == want.shape == (2, 6, 6, 3)
    np.testing.assert_array_equal(np.asarray(got, np.float64), want)
    # the windows overlap: a maximum on a shared row/column shows up in two neighbouring outputs
    x2 = np.zeros((1, 5, 5, 1), np.float32)
    x2[0, 2, 2, 0] = 1.0
    np.testing.assert_array_equal(np.asarray(max_pool(jnp.asarray(x2)))[0, :, :, 0], np.ones((2, 2)))


# ---------------------------------------------------------------------------------------------
# fast formulations against the straightforward ones (kept here as the references)
# ---------------------------------------------------------------------------------------------
def ref_conv(x_BHWC, kernel_HWIO, padding="VALID"):
    """The reference: XLA's convolution, NHWC / HWIO, stride 1."""
    return jax.lax.conv_general_dilated(x_BHWC, kernel_HWIO, (1, 1), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_bm_nhwc(x_BHWC, kernel_HWIO, padding="VALID"):
    return from_batch_minor(conv_batch_minor(to_batch_minor(x_BHWC), kernel_HWIO, padding))


def ref_sum_pool_2x2(x_BHWC):
    """The reference: a VALID 2x2 / 2 `reduce_window` sum."""
    return jax.lax.reduce_window(x_BHWC, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def _vjp_all(f, args, g):
    y, vjp = jax.vjp(f, *args)
    return [y, *vjp(g)]


def _assert_close_all(got, want, tol):
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if b.size == 0:
            continue
        scale = max(np.abs(b).max(), 1e-30)
        assert np.abs(a - b).max() <= tol * scale, f"max error {np.abs(a - b).max() / scale:.3g} > {tol}"


CONV_CASES = [  # (batch, h, w, in, out, kh, kw, padding)
    (4, 32, 32, 1, 6, 5, 5, "VALID"),                  # LeNet C1
    (3, 28, 28, 1, 6, 5, 5, ((2, 2), (2, 2))),         # C1 on 28x28 (padding 2)
    (4, 14, 14, 6, 16, 5, 5, "VALID"),                 # C3
    (5, 5, 5, 16, 120, 5, 5, "VALID"),                 # C5: a 5x5 conv over a 5x5 map
    (2, 9, 11, 3, 4, 3, 5, "VALID"),                   # odd, non-square maps and kernels
    (3, 7, 6, 2, 5, 3, 3, "SAME"),
    (1, 10, 9, 4, 3, 4, 2, ((1, 3), (0, 2))),          # asymmetric padding, even kernel
    (2, 6, 8, 9, 24, 5, 5, ((2, 2), (2, 2))),          # the widths LeNet's C3 has at width 1.5
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_batch_minor_matches_lax_conv(case):
    """Output, input gradient and kernel gradient equal lax.conv_general_dilated's to float32 rounding."""
    b, h, w, ci, co, kh, kw, pad = case
    rng = np.random.default_rng(sum(case[:7]))
    x = jnp.asarray(rng.normal(size=(b, h, w, ci)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(kh, kw, ci, co)) / np.sqrt(kh * kw * ci), jnp.float32)
    y_shape = jax.eval_shape(lambda x, k: ref_conv(x, k, pad), x, k).shape
    g = jnp.asarray(rng.normal(size=y_shape), jnp.float32)
    want = jax.jit(lambda x, k, g: _vjp_all(lambda x, k: ref_conv(x, k, pad), (x, k), g))(x, k, g)
    got = jax.jit(lambda x, k, g: _vjp_all(lambda x, k: conv_bm_nhwc(x, k, pad), (x, k), g))(x, k, g)
    _assert_close_all(got, want, 2e-6)


@pytest.mark.parametrize("case", [CONV_CASES[2], CONV_CASES[3], CONV_CASES[4]])
def test_conv_batch_minor_multi_device_form(case, monkeypatch):
    """The form used when several devices may split the batch (4-D contraction, no layout constraint)
    computes the same."""
    from alexnet_jax.models import layers
    monkeypatch.setattr(layers, "_one_device", lambda: False)
    test_conv_batch_minor_matches_lax_conv(case)


def test_conv_batch_minor_bfloat16():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 14, 14, 6)), jnp.bfloat16)
    k = jnp.asarray(rng.normal(size=(5, 5, 6, 16)) / np.sqrt(150), jnp.bfloat16)
    g = jnp.asarray(rng.normal(size=(4, 10, 10, 16)), jnp.bfloat16)
    want = jax.jit(lambda x, k, g: _vjp_all(ref_conv, (x, k), g))(x, k, g)
    got = jax.jit(lambda x, k, g: _vjp_all(conv_bm_nhwc, (x, k), g))(x, k, g)
    assert got[0].dtype == jnp.bfloat16
    _assert_close_all(got, want, 2e-2)


@pytest.mark.parametrize("shape,kh,kw", [((1, 32, 32, 3), 5, 5), ((6, 14, 14, 2), 5, 5), ((3, 7, 9, 4), 3, 2)])
def test_patches_gradient_is_col2im(shape, kh, kw):
    """The custom gradient of the patches (in-place slice additions) equals autodiff of the slices."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)

    def plain(x):
        c, h, w, b = x.shape
        oh, ow = h - kh + 1, w - kw + 1
        return jnp.stack([x[:, i:i + oh, j:j + ow] for i in range(kh) for j in range(kw)]).reshape(-1, oh, ow, b)

    p = patches_batch_minor(x, kh, kw)
    np.testing.assert_array_equal(np.asarray(p), np.asarray(plain(x)))
    g = jnp.asarray(rng.normal(size=p.shape), jnp.float32)
    got = jax.vjp(lambda x: patches_batch_minor(x, kh, kw), x)[1](g)[0]
    want = jax.vjp(plain, x)[1](g)[0]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("shape", [(4, 28, 28, 6), (3, 10, 10, 16), (2, 9, 7, 3), (1, 1, 5, 2)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_sum_pool_2x2_matches_reduce_window(shape, dtype):
    """Forward and gradient equal a VALID 2x2/2 reduce_window sum (odd last rows/columns dropped)."""
    rng = np.random.default_rng(shape[1])
    x = jnp.asarray(rng.normal(size=shape), dtype)
    out_shape = jax.eval_shape(ref_sum_pool_2x2, x).shape
    g = jnp.asarray(rng.normal(size=out_shape), dtype)
    fast = lambda x: from_batch_minor(sum_pool_2x2_batch_minor(to_batch_minor(x)))  # noqa: E731
    want = jax.jit(lambda x, g: _vjp_all(ref_sum_pool_2x2, (x,), g))(x, g)
    got = jax.jit(lambda x, g: _vjp_all(fast, (x,), g))(x, g)
    _assert_close_all(got, want, 1e-6 if dtype == jnp.float32 else 1e-2)
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))   # the gradient is a copy: exact


def ref_max_pool(x_BHWC, window=3, stride=2):
    """The reference: a VALID `reduce_window` max (nnx.max_pool), whose gradient is select-and-scatter."""
    from flax import nnx
    return nnx.max_pool(x_BHWC, (window, window), (stride, stride), "VALID")


POOL_CASES = [((4, 32, 32, 48), 3, 2), ((3, 15, 15, 16), 3, 2), ((2, 7, 7, 5), 3, 2), ((2, 14, 13, 3), 3, 2),
              ((2, 9, 9, 4), 2, 2), ((2, 11, 10, 3), 3, 3), ((1, 8, 8, 2), 3, 1), ((2, 3, 3, 2), 3, 2)]


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_matches_reduce_window_exactly(case, ties):
    """Forward bitwise equal; the gradient goes to the same position as select-and-scatter's (the first
    maximum of each window in row-major order, also with ties), so with integer cotangents (exact sums
    of overlapping windows) the gradients are bitwise equal."""
    shape, window, stride = case
    rng = np.random.default_rng(shape[1] * 10 + window)
    x = rng.normal(size=shape).astype(np.float32)
    if ties:
        x = np.round(x)                   # many equal values in a window, zeros from a "ReLU"
        x[x < 0] = 0.0
    x = jnp.asarray(x)
    y_shape = jax.eval_shape(lambda x: ref_max_pool(x, window, stride), x).shape
    g = jnp.asarray(rng.integers(-4, 5, size=y_shape).astype(np.float32))
    want = jax.jit(lambda x, g: _vjp_all(lambda x: ref_max_pool(x, window, stride), (x,), g))(x, g)
    got = jax.jit(lambda x, g: _vjp_all(lambda x: max_pool(x, window, stride), (x,), g))(x, g)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_max_pool_random_cotangent(dtype):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(4, 15, 15, 128)), dtype)
    g = jnp.asarray(rng.normal(size=(4, 7, 7, 128)), dtype)
    want = jax.jit(lambda x, g: _vjp_all(ref_max_pool, (x,), g))(x, g)
    got = jax.jit(lambda x, g: _vjp_all(max_pool, (x,), g))(x, g)
    _assert_close_all(got, want, 1e-6 if dtype == jnp.float32 else 1e-2)


def test_max_pool_other_padding_falls_back_to_reduce_window():
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 6, 6, 3)), jnp.float32)
    from flax import nnx
    np.testing.assert_array_equal(np.asarray(max_pool(x, 3, 2, "SAME")),
                                  np.asarray(nnx.max_pool(x, (3, 3), (2, 2), "SAME")))


def ref_lrn(x_BHWC, *, k=2.0, n=5, alpha=1e-4, beta=0.75):
    """The reference: LRN as first written, the window sum as one `reduce_window` (autodiff gradient)."""
    dtype = x_BHWC.dtype
    x = x_BHWC.astype(jnp.float32)
    half = n // 2
    sq = jax.lax.reduce_window(x * x, 0.0, jax.lax.add, (1, 1, 1, n), (1, 1, 1, 1),
                               ((0, 0), (0, 0), (0, 0), (half, n - 1 - half)))
    return (x * (k + alpha * sq) ** (-beta)).astype(dtype)


@pytest.mark.parametrize("shape", [(2, 3, 4, 48), (2, 5, 5, 7), (1, 2, 3, 3), (1, 2, 2, 1)])
@pytest.mark.parametrize("n,beta", [(5, 0.75), (3, 0.5), (4, 0.75), (7, 1.0)])
def test_lrn_gradient_matches_autodiff_of_reduce_window(shape, n, beta):
    """lrn's written-out gradient (custom VJP) equals autodiff of the reduce_window formulation, for odd and
    even windows, windows wider than the channel count, and other betas."""
    x = jnp.asarray(_large(shape, seed=n + shape[-1]))
    g = jnp.asarray(np.random.default_rng(n).normal(size=shape), jnp.float32)
    kw = dict(k=2.0, n=n, alpha=1e-4, beta=beta)
    want = jax.jit(lambda x, g: _vjp_all(lambda x: ref_lrn(x, **kw), (x,), g))(x, g)
    got = jax.jit(lambda x, g: _vjp_all(lambda x: lrn(x, **kw), (x,), g))(x, g)
    _assert_close_all(got, want, 2e-6)


@pytest.mark.parametrize("shape", [(8, 32, 32, 48), (8, 15, 15, 128)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lrn_gradient_alexnet_shapes(shape, dtype):
    x = jnp.asarray(np.maximum(_large(shape, seed=5), 0), dtype)     # post-ReLU, 0..255-scale activations
    g = jnp.asarray(np.random.default_rng(6).normal(size=shape), dtype)
    want = jax.jit(lambda x, g: _vjp_all(ref_lrn, (x,), g))(x, g)
    got = jax.jit(lambda x, g: _vjp_all(lrn, (x,), g))(x, g)
    _assert_close_all(got, want, 2e-6 if dtype == jnp.float32 else 1e-2)
