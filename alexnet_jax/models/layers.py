"""Layers shared by the model families: LRN, pooling, initialisers.

Tensors are NHWC throughout (`x_BHWC`); kernels are HWIO (`kernel_HWIO`).

Two formulations of some layers.  Where XLA:CPU runs a layer's straightforward form slowly, the layer
has a second, CPU-tuned formulation of the same function: the written-out max-pool and LRN gradients
(`_max_pool_valid`, `_lrn_f32`), LeNet's batch-minor convolutions and pooling (`conv_batch_minor`, ...)
and the layout constraints they carry.  Which one a trace uses follows the compiler the program is for
(`cpu_tuned()`), never the devices this host happens to have: `parallel.apply` traces every model under
`compiling_for(<platform of the mesh's devices>)`, so a step compiled for a TPU topology on a CPU host
holds the plain formulation a TPU run executes (`alexnet-jax compile`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental.layout import Layout, with_layout_constraint

# --------------------------------------------------------------------------------------------
# What every model shares with the sharding plan and the analysis tools
# --------------------------------------------------------------------------------------------
# The logical axis of the 2012 net's column-stacked parameters.  Models name only logical axes
# (in each parameter's `axes` metadata); alexnet_jax.parallel maps them onto mesh axes.
COLUMN_AXIS = "columns"

# tap(layer, column, value) -> value: called by every model on each layer's output after its
# activation (ReLU / squash; the logits for the last layer).  `column` is the column's index among
# the columns present (0 for one-column nets), None for a layer every column shares (the 2012
# net's fc8).  The default passes values through; the tools record them (see parallel.apply).
Tap = Callable[[str, "int | None", jax.Array], jax.Array]


def no_tap(name: str, column: int | None, value: jax.Array) -> jax.Array:
    return value


# --------------------------------------------------------------------------------------------
# The compiler a trace is for: CPU-tuned or plain formulations
# --------------------------------------------------------------------------------------------
_TARGET_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("alexnet_jax_target_platform",
                                                                             default=None)
FORMULATIONS = {
    "cpu-tuned": "written-out max-pool and LRN gradients, LeNet's layers as batch-minor patch matmuls",
    "plain": "XLA's reduce_window max-pool and its select-and-scatter gradient, the LRN formula differentiated by "
             "JAX, LeNet's layers as NHWC convolutions",
}


@contextlib.contextmanager
def compiling_for(platform: str | None) -> Iterator[None]:
    """Trace the models inside for `platform`'s compiler ("cpu", "tpu", "gpu", ...; None: the default
    backend's).  Only traces are affected: wrap the code that traces, inside the jitted function (a jit
    cache keyed on arguments must not be shared between platforms)."""
    token = _TARGET_PLATFORM.set(platform)
    try:
        yield
    finally:
        _TARGET_PLATFORM.reset(token)


def target_platform() -> str:
    """The platform the program being traced is for (see `compiling_for`)."""
    return _TARGET_PLATFORM.get() or jax.default_backend()


def cpu_tuned() -> bool:
    """True when the program being traced is for XLA:CPU: layers then use their CPU-tuned formulations.

    The one switch for every CPU-only formulation: a layer with a faster form for XLA:CPU writes
    `if cpu_tuned(): <CPU form> else: <plain form>`, both the same function (tests compare them)."""
    return target_platform() == "cpu"


def formulation(platform: str | None = None) -> str:
    """"cpu-tuned" or "plain": which formulation a trace for `platform` (default: the current target) uses."""
    return "cpu-tuned" if (platform or target_platform()) == "cpu" else "plain"


def channels_last(v: jax.Array, ndim: int) -> jax.Array:
    """A per-channel vector (C,) shaped to broadcast against an `ndim`-D channels-last tensor: (1, ..., C).
    Broadcasting is written out everywhere (the tests run with jax_numpy_rank_promotion="raise")."""
    return jnp.reshape(v, (1,) * (ndim - 1) + (-1,))

# --------------------------------------------------------------------------------------------
# Local response normalisation (Krizhevsky et al. 2012, §3.3; K12 §3.3)
# --------------------------------------------------------------------------------------------
#   b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2) ** beta
# Convention: `alpha` is applied to each squared element exactly as the formula is printed
# (alpha = 1e-4, no division by n).  The author's code (cuda-convnet) divides `scale` by `size`,
# i.e. an effective per-element 2e-5; pass `alpha=1e-4 / 5` for that convention.  PyTorch's
# nn.LocalResponseNorm(size=5, alpha=5e-4, k=2) is the printed formula, which is what the
# PyTorch peer in ../shared/peers uses, so our default and the peer compute the same function.
LRN_K, LRN_N, LRN_ALPHA, LRN_BETA = 2.0, 5, 1e-4, 0.75
# Caffe's LRN layer (ACROSS_CHANNELS; lrn_layer.cpp) computes x * (k + alpha / n * window_sum(x^2)) ** -beta
# with its defaults k = 1 and the bvlc_alexnet definition's local_size 5, alpha 1e-4, beta 0.75: in this
# function's convention k = 1, alpha = 1e-4 / 5.  (The 2012 net's "caffe" LRN option, models/alexnet.py.)
CAFFE_LRN = dict(k=1.0, n=5, alpha=1e-4 / 5, beta=0.75)


def lrn(x_BHWC: jax.Array, *, k: float = LRN_K, n: int = LRN_N, alpha: float = LRN_ALPHA,
        beta: float = LRN_BETA) -> jax.Array:
    """Cross-channel LRN over the last axis, computed in float32 for stability.

    The windowed sum of squares is the clipped sum of the paper's formula: channels outside
    [0, N) count as zero.  For XLA:CPU the gradient is written out (`_lrn_f32`), forward and gradient
    each one or two elementwise passes; elsewhere JAX differentiates the formula.
    """
    dtype = x_BHWC.dtype
    x, k, n, alpha, beta = x_BHWC.astype(jnp.float32), float(k), int(n), float(alpha), float(beta)
    if cpu_tuned():
        return _lrn_f32(x, k, n, alpha, beta).astype(dtype)
    return (x * _lrn_scale(x, k, n, alpha, beta)[1]).astype(dtype)


def _channel_window_sum(v: jax.Array, n: int, lo: int) -> jax.Array:
    """sum_{j=c-lo}^{c-lo+n-1} v[..., j] over the last axis, zero outside: n shifted slices of one
    zero-padded array, added in one elementwise fusion."""
    c = v.shape[-1]
    p = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(lo, n - 1 - lo)])
    out = p[..., 0:c]
    for j in range(1, n):
        out = out + p[..., j:j + c]
    return out


def _lrn_scale(x: jax.Array, k: float, n: int, alpha: float, beta: float) -> tuple[jax.Array, jax.Array]:
    """(d, d**-beta) with d = k + alpha * window_sum(x^2)."""
    d = k + alpha * _channel_window_sum(x * x, n, n // 2)
    if beta == 0.75:  # d**-0.75 == rsqrt(d) * rsqrt(sqrt(d)): cheaper than pow
        return d, jax.lax.rsqrt(d) * jax.lax.rsqrt(jnp.sqrt(d))
    return d, d ** (-beta)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _lrn_f32(x: jax.Array, k: float, n: int, alpha: float, beta: float) -> jax.Array:
    """b = x * d**-beta, d = k + alpha * window_sum(x^2).

    Gradient, written out (autodiff of the same formula gives the same function but XLA:CPU runs it
    as many more passes over memory, materialising each intermediate):
      dx_j = g_j s_j - 2 alpha beta x_j * sum_{c : j in window(c)} t_c,   s = d**-beta,
      t_c = g_c x_c s_c / d_c,
    where the sum over the windows that contain j is the window sum with the window mirrored.  Only
    x is kept for the backward pass; d and s are recomputed there (cheaper than storing them)."""
    return x * _lrn_scale(x, k, n, alpha, beta)[1]


def _lrn_fwd(x, k, n, alpha, beta):
    return _lrn_f32(x, k, n, alpha, beta), x


def _lrn_bwd(k, n, alpha, beta, x, g):
    d, s = _lrn_scale(x, k, n, alpha, beta)
    t = g * x * s / d
    return (g * s - (2.0 * alpha * beta) * x * _channel_window_sum(t, n, n - 1 - n // 2),)


_lrn_f32.defvjp(_lrn_fwd, _lrn_bwd)


# --------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------
def max_pool(x_BHWC: jax.Array, window: int = 3, stride: int = 2, padding="VALID") -> jax.Array:
    """Max-pool; window 3, stride 2 is AlexNet's overlapping pooling (K12 §3.4).

    `nnx.max_pool` (XLA's `reduce_window` max, whose gradient is a select-and-scatter); for XLA:CPU,
    VALID pooling runs as `_max_pool_valid` instead (the same function and the same gradient, written
    out: the select-and-scatter was a third of the CIFAR AlexNet's step on XLA:CPU)."""
    if cpu_tuned() and isinstance(padding, str) and padding.upper() == "VALID":
        return _max_pool_valid(x_BHWC, window, stride)
    return nnx.max_pool(x_BHWC, (window, window), (stride, stride), padding)


def _window_slices(x_BHWC: jax.Array, window: int, stride: int, oh: int, ow: int):
    """The window x window strided views x[:, i + stride * p, j + stride * q] (p < oh, q < ow), in
    row-major window order (i, j)."""
    return [((i, j), jax.lax.slice(x_BHWC, (0, i, j, 0),
                                   (x_BHWC.shape[0], i + stride * (oh - 1) + 1, j + stride * (ow - 1) + 1,
                                    x_BHWC.shape[3]), (1, stride, stride, 1)))
            for i in range(window) for j in range(window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_valid(x_BHWC: jax.Array, window: int, stride: int) -> jax.Array:
    """VALID max-pool as the maximum of window*window strided slices (one elementwise fusion).

    Gradient: each output's cotangent goes to the first position of its window, in row-major order,
    that holds the window's maximum, exactly what XLA's select-and-scatter (the gradient of a
    `reduce_window` max) does, and the contributions of overlapping windows are added.  The
    scatter is done per stride phase: the window offsets (i, j) that share (i % stride, j % stride)
    land on one phase plane of the input, shifted by (i // stride, j // stride), and the planes are
    interleaved by one reshape, so no strided scatter or interior padding is needed."""
    _, h, w, _ = x_BHWC.shape
    oh, ow = (h - window) // stride + 1, (w - window) // stride + 1
    y = None
    for _, v in _window_slices(x_BHWC, window, stride, oh, ow):
        y = v if y is None else jnp.maximum(y, v)
    return y


def _max_pool_fwd(x_BHWC, window, stride):
    y = _max_pool_valid(x_BHWC, window, stride)
    return y, (x_BHWC, y)


def _max_pool_bwd(window, stride, res, g):
    x, y = res
    b, h, w, c = x.shape
    _, oh, ow, _ = y.shape
    taken = jnp.zeros(y.shape, bool)
    planes: dict[tuple[int, int], jax.Array] = {}
    ph, pw = oh + (window - 1) // stride, ow + (window - 1) // stride    # phase-plane extent
    zero = jnp.zeros((), g.dtype)
    for (i, j), v in _window_slices(x, window, stride, oh, ow):
        first = (v == y) & ~taken
        taken = taken | first
        contrib = jnp.where(first, g, zero)
        di, dj = i // stride, j // stride
        contrib = jnp.pad(contrib, ((0, 0), (di, ph - oh - di), (dj, pw - ow - dj), (0, 0)))
        key = (i % stride, j % stride)
        planes[key] = contrib if key not in planes else planes[key] + contrib
    zeros = jnp.zeros((b, ph, pw, c), g.dtype)
    grid = jnp.stack([jnp.stack([planes.get((a, q), zeros) for q in range(stride)], axis=3)
                      for a in range(stride)], axis=2)                      # (B, ph, s, pw, s, C)
    dx = grid.reshape(b, ph * stride, pw * stride, c)
    dx = dx[:, :min(h, ph * stride), :min(w, pw * stride)]
    return (jnp.pad(dx, ((0, 0), (0, h - dx.shape[1]), (0, w - dx.shape[2]), (0, 0))),)


_max_pool_valid.defvjp(_max_pool_fwd, _max_pool_bwd)


def adaptive_avg_pool(x_BHWC: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """torch.nn.AdaptiveAvgPool2d semantics: bin i spans [floor(i*H/o), ceil((i+1)*H/o))."""
    _, h, w, _ = x_BHWC.shape
    oh, ow = out_hw
    if (h, w) == (oh, ow):
        return x_BHWC
    rows = []
    for i in range(oh):
        h0, h1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        cols = []
        for j in range(ow):
            w0, w1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            cols.append(x_BHWC[:, h0:h1, w0:w1, :].mean(axis=(1, 2)))
        rows.append(jnp.stack(cols, axis=1))
    return jnp.stack(rows, axis=1)


# --------------------------------------------------------------------------------------------
# Batch-minor convolution (LeNet's small convolutions on XLA:CPU)
# --------------------------------------------------------------------------------------------
# A stride-1 convolution with few channels (LeNet: 1, 6 and 16 input maps) is one matmul over
# patches when the batch is the minor (contiguous) axis: in (C, H, W, B) layout every row of the
# patch matrix is a shifted (H, W) window of one map, i.e. runs of whole contiguous batch vectors,
# so building the patches is a plain strided copy, and the transposed slices of the backward pass
# (col2im) are a vectorised sum of shifted rows.  XLA:CPU's own convolutions at these sizes, and
# above all their kernel gradients (convolutions with the batch as the contraction), are several
# times slower (experiments/results/bench_cpu_2026-11-25.md).  Layers convert with
# `to_batch_minor` / `from_batch_minor` at their boundaries; XLA cancels the transpose pairs
# between consecutive layers, so a chain of such layers stays batch-minor.
# These are the CPU-tuned formulations (`cpu_tuned()`); other compilers get NHWC convolutions.
def _one_device() -> bool:
    """True when this process sees a single device, so no computation here can be split over devices
    (then the batch-minor layers use forms that XLA's SPMD partitioner would turn into gathers).  Read
    only by the CPU-tuned formulations, i.e. in traces for XLA:CPU, whose devices are this host's."""
    return jax.device_count() == 1


def to_batch_minor(x_BHWC: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (C, H, W, B), materialised in row-major order.

    The layout constraint makes XLA write the transposed array once (a cheap tiled copy) instead of
    fusing the transpose into the consumer, which then gathers the NHWC input with a stride of H*W*C
    (measured: LeNet's C1 patches 1.46 -> 0.53 ms at batch 128; the train step 1.2x faster with the
    constraint on every layer boundary than without).  Only in a process with one device: XLA's SPMD
    partitioner treats the constraint as needing the whole array, so with a batch split over devices
    it would all-gather it (tests/test_parallel.py checks data parallelism needs only all-reduces)."""
    x_CHWB = jnp.transpose(x_BHWC, (3, 1, 2, 0))
    if _one_device():
        x_CHWB = with_layout_constraint(x_CHWB, Layout(major_to_minor=(0, 1, 2, 3)))
    return x_CHWB


def from_batch_minor(x_CHWB: jax.Array) -> jax.Array:
    """(C, H, W, B) -> (B, H, W, C)."""
    return jnp.transpose(x_CHWB, (3, 1, 2, 0))


def _explicit_padding(padding, in_hw, kernel_hw) -> tuple[tuple[int, int], tuple[int, int]]:
    if isinstance(padding, str):
        return tuple(jax.lax.padtype_to_pads(in_hw, kernel_hw, (1, 1), padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def patches_batch_minor(x_CHWB: jax.Array, kh: int, kw: int) -> jax.Array:
    """(kh*kw*C, Ho, Wo, B) patches of a VALID stride-1 window, rows ordered (i, j, c) like an HWIO
    kernel reshaped to (kh*kw*C, O).

    Built in two stages (the kh row windows, then the kw column shifts of those), 2x faster on XLA:CPU
    than stacking the kh*kw windows at once.  The gradient (col2im: each patch row added back at its
    window) is a chain of in-place slice additions, which XLA:CPU runs faster than the sum of padded
    windows that autodiff of the slices gives (that materialises every pad)."""
    c, h, w, b = x_CHWB.shape
    oh, ow = h - kh + 1, w - kw + 1
    rows = jnp.stack([x_CHWB[:, i:i + oh] for i in range(kh)], axis=0)              # (kh, C, Ho, W, B)
    p = jnp.stack([rows[:, :, :, j:j + ow] for j in range(kw)], axis=1)             # (kh, kw, C, Ho, Wo, B)
    return p.reshape(kh * kw * c, oh, ow, b)


def _patches_fwd(x_CHWB, kh, kw):
    return patches_batch_minor(x_CHWB, kh, kw), None


def _patches_bwd(kh, kw, _, g):
    k_c, oh, ow, b = g.shape
    c = k_c // (kh * kw)
    w = ow + kw - 1
    g = g.reshape(kh, kw, c, oh, ow, b)
    # the transpose of each stage, kw + kh in-place slice additions (25 single additions compile slower
    # and run no faster)
    rows = jnp.zeros((kh, c, oh, w, b), g.dtype)
    for j in range(kw):
        rows = rows.at[:, :, :, j:j + ow, :].add(g[:, j])
    dx = jnp.zeros((c, oh + kh - 1, w, b), g.dtype)
    for i in range(kh):
        dx = dx.at[:, i:i + oh].add(rows[i])
    return (dx,)


patches_batch_minor.defvjp(_patches_fwd, _patches_bwd)


def conv_batch_minor(x_CHWB: jax.Array, kernel_HWIO: jax.Array, padding="VALID") -> jax.Array:
    """Stride-1 cross-correlation (what `lax.conv_general_dilated` computes for NHWC / HWIO) on a
    batch-minor input: (C, H, W, B) -> (O, Ho, Wo, B), as one (O, kh*kw*C) x (kh*kw*C, Ho*Wo*B)
    matmul over `patches_batch_minor`.  Its gradients are matmuls too (the kernel gradient
    contracts over Ho*Wo*B) plus, for the input, the transposed slices of the patches."""
    kh, kw, ci, co = kernel_HWIO.shape
    if x_CHWB.shape[0] != ci:
        raise ValueError(f"input has {x_CHWB.shape[0]} channels, kernel expects {ci}")
    (pt, pb), (pl, pr) = _explicit_padding(padding, x_CHWB.shape[1:3], (kh, kw))
    if pt or pb or pl or pr:
        x_CHWB = jnp.pad(x_CHWB, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    if x_CHWB.shape[1:3] == (kh, kw):   # one output position (LeNet's C5): the patch is the whole map
        b = x_CHWB.shape[-1]
        oh = ow = 1
        p = jnp.transpose(x_CHWB, (1, 2, 0, 3))
    else:
        p = patches_batch_minor(x_CHWB, kh, kw)
        _, oh, ow, b = p.shape
    k_OK = kernel_HWIO.reshape(kh * kw * ci, co).T
    if _one_device():   # one (O, K) x (K, Ho*Wo*B) matmul
        return jnp.dot(k_OK, p.reshape(kh * kw * ci, oh * ow * b)).reshape(co, oh, ow, b)
    # Several devices: the batch axis may be split over them, and merging it with Ho, Wo would make
    # XLA all-gather the patches; the 4-D contraction keeps it separate (3x slower on one device,
    # where XLA:CPU copies the operands for it, so only here).
    return jax.lax.dot_general(k_OK, p.reshape(kh * kw * ci, oh, ow, b), (((1,), (0,)), ((), ())))


def sum_pool_2x2_batch_minor(x_CHWB: jax.Array) -> jax.Array:
    """Sums of non-overlapping 2x2 windows, (C, H, W, B) -> (C, H//2, W//2, B) (an odd last row /
    column is dropped, like VALID pooling).  Four strided slices added (one elementwise fusion; a
    reduce over window axes is a separate, slower XLA:CPU op); the gradient copies each output's
    cotangent to its four inputs (one broadcast) instead of adding four interior-padded arrays."""
    _, h, w, _ = x_CHWB.shape
    if h % 2 or w % 2:
        x_CHWB = x_CHWB[:, :h - h % 2, :w - w % 2]
    return _sum_pool_2x2_even(x_CHWB)


@jax.custom_vjp
def _sum_pool_2x2_even(x):
    return x[:, 0::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 0::2] + x[:, 1::2, 1::2]


def _sum_pool_fwd(x):
    return _sum_pool_2x2_even(x), None


def _sum_pool_bwd(_, g):
    c, h2, w2, b = g.shape
    return (jnp.broadcast_to(g[:, :, None, :, None, :], (c, h2, 2, w2, 2, b)).reshape(c, 2 * h2, 2 * w2, b),)


_sum_pool_2x2_even.defvjp(_sum_pool_fwd, _sum_pool_bwd)


def sum_pool_2x2(x_BHWC: jax.Array) -> jax.Array:
    """Sums of non-overlapping 2x2 windows, (B, H, W, C) -> (B, H//2, W//2, C) (an odd last row / column
    is dropped, like VALID pooling): the plain formulation of `sum_pool_2x2_batch_minor`."""
    b, h, w, c = x_BHWC.shape
    x = x_BHWC[:, :h - h % 2, :w - w % 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).sum(axis=(2, 4))


def conv_out(size: int, kernel: int, stride: int, pad_lo: int, pad_hi: int) -> int:
    """Output length of a convolution / pooling window (floor convention)."""
    return (size + pad_lo + pad_hi - kernel) // stride + 1


# --------------------------------------------------------------------------------------------
# Initialisers
# --------------------------------------------------------------------------------------------
def normal(std: float):
    """Zero-mean Gaussian with the given standard deviation (AlexNet: std 0.01, K12 §5)."""
    return jax.nn.initializers.normal(stddev=std)


def constant(value: float):
    return jax.nn.initializers.constant(value)


def dropout(x: jax.Array, rate: float, key: jax.Array | None, train: bool) -> jax.Array:
    """Inverted dropout (scale kept units by 1/(1-rate) in training; identity at test time).

    The paper multiplies test-time outputs by 0.5 instead (K12 §4.2); the two are equivalent in
    expectation and inverted dropout keeps eval cheap.
    """
    if not train or rate == 0.0:
        return x
    if key is None:
        raise ValueError("dropout in training mode needs a `dropout_key`")
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)
