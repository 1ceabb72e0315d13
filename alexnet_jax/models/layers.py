"""Layers shared by the model families: LRN, pooling, initialisers.

Tensors are NHWC throughout (`x_BHWC`); kernels are HWIO (`kernel_HWIO`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

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


def lrn(x_BHWC: jax.Array, *, k: float = LRN_K, n: int = LRN_N, alpha: float = LRN_ALPHA,
        beta: float = LRN_BETA) -> jax.Array:
    """Cross-channel LRN over the last axis, computed in float32 for stability.

    The windowed sum of squares is one `reduce_window` over the channel axis with zero padding
    of n//2 on both sides, which is exactly the clipped sum of the paper's formula.
    """
    dtype = x_BHWC.dtype
    x = x_BHWC.astype(jnp.float32)
    half = n // 2
    sq_sum = jax.lax.reduce_window(
        x * x, 0.0, jax.lax.add, window_dimensions=(1, 1, 1, n), window_strides=(1, 1, 1, 1),
        padding=((0, 0), (0, 0), (0, 0), (half, n - 1 - half)))
    if beta == 0.75:  # x / d**0.75 == x * rsqrt(d) * rsqrt(sqrt(d)): cheaper than pow
        d = k + alpha * sq_sum
        scale = jax.lax.rsqrt(d) * jax.lax.rsqrt(jnp.sqrt(d))
    else:
        scale = (k + alpha * sq_sum) ** (-beta)
    return (x * scale).astype(dtype)


# --------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------
def max_pool(x_BHWC: jax.Array, window: int = 3, stride: int = 2, padding="VALID") -> jax.Array:
    """Max-pool; window 3, stride 2 is AlexNet's overlapping pooling (K12 §3.4)."""
    return nnx.max_pool(x_BHWC, (window, window), (stride, stride), padding)


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
