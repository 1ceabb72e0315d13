"""LeNet-5's layers as LeCun, Bottou, Bengio & Haffner 1998 ("LC98", §II) draw them; models/lenet.py assembles
them.  Hidden units squash their weighted sum a with f(a) = 1.7159 tanh(2/3 a) (`squash`), and every weight and
bias starts uniform in (-2.4/F, 2.4/F), F = the unit's fan-in (App. A).  The layers: 5x5 convolution
(`SquashConv`), trainable subsampling (`Subsampling`, S2/S4), C3 with exactly LC98 Table I's connections
(`SparseC3`), fully connected (`Dense`) and the output's 10 Euclidean RBF units with fixed +-1 codes (`RBFOutput`).

Each layer has `weighted_sum(x)` (the units' total input a, before f) and `__call__` (f(a)).  For XLA:CPU
the squashing layers (`SquashingLayer`) compute in batch-minor (C, H, W, B) layout (layers.conv_batch_minor and
layers.sum_pool_2x2_batch_minor; see layers.py for why) and take and return NHWC like every model here;
XLA removes the transposes between consecutive layers.  For any other compiler (layers.cpu_tuned() is
False) they are NHWC convolutions and a 2x2 sum pool: the same functions.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alexnet_jax.models.layers import (
    channels_last,
    conv_batch_minor,
    cpu_tuned,
    from_batch_minor,
    sum_pool_2x2,
    sum_pool_2x2_batch_minor,
    to_batch_minor,
)

SQUASH_A, SQUASH_S = 1.7159, 2.0 / 3.0   # f(a) = A tanh(S a), LC98 App. A
INIT_SCALE = 2.4                          # U(-2.4/F, 2.4/F), LC98 App. A

# LC98 Table I: the S2 maps (0-indexed) read by each of the 16 C3 maps.
C3_TABLE: list[tuple[int, ...]] = [
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
]

# Stylised 7x12 bitmaps of the digits ('#' = +1, '.' = -1), the fixed RBF centres of the output
# layer (LC98 §II.B, Fig. 3).  Drawn by hand here; the paper's exact bitmaps are not reproduced.
DIGIT_BITMAPS: tuple[tuple[str, ...], ...] = (
    (".......", "..###..", ".##.##.", "##...##", "##...##", "##...##",
     "##...##", "##...##", ".##.##.", "..###..", ".......", "......."),   # 0
    (".......", "...##..", "..###..", ".####..", "...##..", "...##..",
     "...##..", "...##..", "...##..", ".######", ".......", "......."),   # 1
    (".......", ".#####.", "##...##", ".....##", "....##.", "...##..",
     "..##...", ".##....", "##.....", "#######", ".......", "......."),   # 2
    (".......", "#######", ".....##", "....##.", "...##..", "..####.",
     ".....##", ".....##", "##...##", ".#####.", ".......", "......."),   # 3
    (".......", "....##.", "...###.", "..####.", ".##.##.", "##..##.",
     "#######", "....##.", "....##.", "....##.", ".......", "......."),   # 4
    (".......", "#######", "##.....", "##.....", "######.", ".....##",
     ".....##", ".....##", "##...##", ".#####.", ".......", "......."),   # 5
    (".......", "..####.", ".##....", "##.....", "######.", "##...##",
     "##...##", "##...##", "##...##", ".#####.", ".......", "......."),   # 6
    (".......", "#######", ".....##", "....##.", "...##..", "..##...",
     "..##...", ".##....", ".##....", ".##....", ".......", "......."),   # 7
    (".......", ".#####.", "##...##", "##...##", ".#####.", "##...##",
     "##...##", "##...##", "##...##", ".#####.", ".......", "......."),   # 8
    (".......", ".#####.", "##...##", "##...##", "##...##", ".######",
     ".....##", ".....##", "....##.", ".####..", ".......", "......."),   # 9
)


def digit_codes() -> np.ndarray:
    """The (10, 84) float32 +-1 RBF centres, row-major over each 12x7 bitmap."""
    return np.array([[1.0 if ch == "#" else -1.0 for row in bm for ch in row] for bm in DIGIT_BITMAPS],
                    dtype=np.float32)


def squash(a: jax.Array) -> jax.Array:
    """LC98's sigmoid f(a) = 1.7159 tanh(2/3 a); f(+-1) = +-1."""
    return SQUASH_A * jnp.tanh(SQUASH_S * a)


def squash_derivative(x: jax.Array) -> jax.Array:
    """f'(a) from the unit's output x = f(a): A S (1 - tanh(S a)^2) = S (A^2 - x^2) / A."""
    return SQUASH_S * (SQUASH_A * SQUASH_A - x * x) / SQUASH_A


def _uniform_fanin(key: jax.Array, shape, fan_in: float) -> jax.Array:
    """U(-2.4/F, 2.4/F) in float32.  Drawn flat and reshaped: XLA:CPU compiles a 1-D threefry draw
    about 3x faster than a 4-D one, which dominates model construction time on CPU."""
    bound = INIT_SCALE / fan_in
    return jax.random.uniform(key, (math.prod(shape),), jnp.float32, -bound, bound).reshape(shape)


def _per_map(v_C: jax.Array, like_CHWB: jax.Array) -> jax.Array:
    """A float32 per-map parameter broadcast over a batch-minor (C, H, W, B) array, then cast to its
    dtype: the same values as casting first, but the gradient (the sum over H, W, B) is accumulated in
    float32, which matters when the compute dtype is bfloat16."""
    return jnp.broadcast_to(v_C[:, None, None, None], like_CHWB.shape).astype(like_CHWB.dtype)


def _per_channel(v_C: jax.Array, like_BHWC: jax.Array) -> jax.Array:
    """`_per_map` for a channels-last (B, H, W, C) array."""
    return jnp.broadcast_to(channels_last(v_C, like_BHWC.ndim), like_BHWC.shape).astype(like_BHWC.dtype)


def _conv(x_BHWC: jax.Array, kernel_HWIO: jax.Array, *, padding="VALID") -> jax.Array:
    return jax.lax.conv_general_dilated(x_BHWC, kernel_HWIO, window_strides=(1, 1), padding=padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class SquashingLayer(nnx.Module):
    """A layer of squashing units (C1, S2, C3, S4, C5) with its weighted sum in two forms: batch-minor for XLA:CPU
    (`_weighted_sum_CHWB`) and NHWC for other compilers (`_weighted_sum_BHWC`), chosen by cpu_tuned()."""

    def weighted_sum(self, x_BHWC: jax.Array) -> jax.Array:
        """a, the units' total input before f (LC98's a_i)."""
        if cpu_tuned():
            return from_batch_minor(self._weighted_sum_CHWB(x_BHWC))
        return self._weighted_sum_BHWC(x_BHWC)

    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        if cpu_tuned():   # f applied before leaving the batch-minor layout
            return from_batch_minor(squash(self._weighted_sum_CHWB(x_BHWC)))
        return squash(self._weighted_sum_BHWC(x_BHWC))


class SquashConv(SquashingLayer):
    """Fully connected 5x5 convolution + bias, then f (C1, C5, and C3 when width != 1).

    Init U(-2.4/F, 2.4/F) with F = k*k*C_in for both kernel and bias.  For XLA:CPU computed batch-minor,
    as one matmul over patches (`layers.conv_batch_minor`): the function of `lax.conv_general_dilated`,
    about 3x faster on XLA:CPU at LeNet's sizes, forward and backward (tests/test_lenet.py compares
    them); for other compilers the convolution itself.
    """

    def __init__(self, in_ch: int, out_ch: int, *, kernel: int = 5, padding="VALID", dtype=jnp.float32,
                 rngs: nnx.Rngs):
        fan_in = kernel * kernel * in_ch
        self.fan_in = fan_in
        self.padding = padding
        self.dtype = dtype
        self.kernel_HWIO = nnx.Param(_uniform_fanin(rngs.params(), (kernel, kernel, in_ch, out_ch), fan_in))
        self.bias_C = nnx.Param(_uniform_fanin(rngs.params(), (out_ch,), fan_in))

    def _weighted_sum_CHWB(self, x_BHWC: jax.Array) -> jax.Array:
        # batch-minor patches @ kernel: the same function as _conv, faster on XLA:CPU (layers.py)
        x = to_batch_minor(x_BHWC.astype(self.dtype))
        a = conv_batch_minor(x, self.kernel_HWIO[...].astype(self.dtype), padding=self.padding)
        return a + _per_map(self.bias_C[...], a)

    def _weighted_sum_BHWC(self, x_BHWC: jax.Array) -> jax.Array:
        a = _conv(x_BHWC.astype(self.dtype), self.kernel_HWIO[...].astype(self.dtype), padding=self.padding)
        return a + _per_channel(self.bias_C[...], a)


class Subsampling(SquashingLayer):
    """LC98 trainable subsampling (S2, S4): f(coef_c * sum_{2x2} x + bias_c), non-overlapping windows.

    Fan-in choice: F = 4.  Each subsampling unit has 4 input connections that all carry the same
    trainable coefficient (the paper counts 5 connections per unit, 4 + bias: 5,880 = 14*14*6*5), so
    coefficient and bias are both drawn from U(-2.4/4, 2.4/4) = U(-0.6, 0.6).
    """

    FAN_IN = 4

    def __init__(self, channels: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.coef_C = nnx.Param(_uniform_fanin(rngs.params(), (channels,), self.FAN_IN))
        self.bias_C = nnx.Param(_uniform_fanin(rngs.params(), (channels,), self.FAN_IN))

    def _weighted_sum_CHWB(self, x_BHWC: jax.Array) -> jax.Array:
        s = sum_pool_2x2_batch_minor(to_batch_minor(x_BHWC.astype(self.dtype)))   # layers.py
        return s * _per_map(self.coef_C[...], s) + _per_map(self.bias_C[...], s)

    def _weighted_sum_BHWC(self, x_BHWC: jax.Array) -> jax.Array:
        s = sum_pool_2x2(x_BHWC.astype(self.dtype))
        return s * _per_channel(self.coef_C[...], s) + _per_channel(self.bias_C[...], s)


class SparseC3(SquashingLayer):
    """C3 with LC98 Table I connectivity (`C3_TABLE`), exactly, with no dead trainable weights.

    Parameters are only the connections Table I has: kernels (5,5,3,6) for maps 0-5 (contiguous
    triples), (5,5,4,9) for maps 6-14 (quadruples) and (5,5,6,1) for map 15 (all six), plus 16
    biases: 25*(18+36+6) + 16 = 1,516.  The forward pass assembles them into the dense (5,5,6,16)
    kernel with structural zeros (one gather) and runs one ordinary convolution (for XLA:CPU as the
    matmul over batch-minor patches of `layers.conv_batch_minor`, like SquashConv): the 150,000 multiply-adds of
    the paper's connections plus 90,000 with zeros (240,000 executed).  That is 20x faster on
    XLA:CPU than the formulations that execute only the 150,000 (a grouped convolution over
    gathered maps, whose kernel gradient is ~60x slower, or per-group contractions), and the
    gradient reaching each structural zero goes nowhere.  Init U(-2.4/F, 2.4/F) with
    F = 25 * (inputs of that map), i.e. 75 / 100 / 150, for the kernel and for that map's bias.
    """

    def __init__(self, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        tri, quad, full = C3_TABLE[:6], C3_TABLE[6:15], C3_TABLE[15]
        assert all(len(t) == 3 for t in tri) and all(len(q) == 4 for q in quad) and len(full) == 6
        self.kernel_tri_HWIO = nnx.Param(_uniform_fanin(rngs.params(), (5, 5, 3, 6), 75))
        self.kernel_quad_HWIO = nnx.Param(_uniform_fanin(rngs.params(), (5, 5, 4, 9), 100))
        self.kernel_full_HWIO = nnx.Param(_uniform_fanin(rngs.params(), (5, 5, 6, 1), 150))
        u = jax.random.uniform(rngs.params(), (16,), jnp.float32, -1.0, 1.0)
        fan_in = np.array([25.0 * len(t) for t in C3_TABLE], np.float32)
        self.bias_C = nnx.Param(u * jnp.asarray(INIT_SCALE / fan_in))

    def dense_kernel_HWIO(self) -> jax.Array:
        """The (5, 5, 6, 16) kernel Table I implies: each map's own weights where it is connected,
        structural zeros elsewhere.  One gather from the three kernels (flattened, plus a zero) with
        a constant index (`_c3_dense_index`), so no gradient reaches a structural zero (it lands on
        the appended zero and is dropped)."""
        flat = jnp.concatenate([self.kernel_tri_HWIO[...].reshape(-1), self.kernel_quad_HWIO[...].reshape(-1),
                                self.kernel_full_HWIO[...].reshape(-1), jnp.zeros((1,), jnp.float32)])
        return flat[_c3_dense_index()]

    def _weighted_sum_CHWB(self, x_BHWC: jax.Array) -> jax.Array:
        if x_BHWC.shape[-1] != 6:
            raise ValueError(f"sparse C3 needs 6 S2 maps, got {x_BHWC.shape[-1]}")
        x = to_batch_minor(x_BHWC.astype(self.dtype))
        a = conv_batch_minor(x, self.dense_kernel_HWIO().astype(self.dtype))
        return a + _per_map(self.bias_C[...], a)

    def _weighted_sum_BHWC(self, x_BHWC: jax.Array) -> jax.Array:
        if x_BHWC.shape[-1] != 6:
            raise ValueError(f"sparse C3 needs 6 S2 maps, got {x_BHWC.shape[-1]}")
        a = _conv(x_BHWC.astype(self.dtype), self.dense_kernel_HWIO().astype(self.dtype))
        return a + _per_channel(self.bias_C[...], a)


@functools.cache
def _c3_dense_index() -> np.ndarray:
    """int32 (5, 5, 6, 16): for each entry of the dense C3 kernel, its position in
    concat(kernel_tri.ravel(), kernel_quad.ravel(), kernel_full.ravel(), [0]); structural zeros
    point at the final 0 (position 1500)."""
    idx = np.full((5, 5, 6, 16), 25 * (18 + 36 + 6), np.int32)
    h, w = np.meshgrid(np.arange(5), np.arange(5), indexing="ij")
    for m, inputs in enumerate(C3_TABLE):
        for k, j in enumerate(inputs):
            if m < 6:       # tri (5, 5, 3, 6)
                idx[h, w, j, m] = ((h * 5 + w) * 3 + k) * 6 + m
            elif m < 15:    # quad (5, 5, 4, 9), after the 450 tri weights
                idx[h, w, j, m] = 450 + ((h * 5 + w) * 4 + k) * 9 + (m - 6)
            else:           # full (5, 5, 6, 1), after the 900 quad weights
                idx[h, w, j, m] = 1350 + (h * 5 + w) * 6 + k
    return idx


class Dense(nnx.Module):
    """Fully connected layer, U(-2.4/F, 2.4/F) init with F = in_features; optional squash (F6)."""

    def __init__(self, in_features: int, out_features: int, *, activate: bool, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.dtype = dtype
        self.activate = activate
        self.kernel_IO = nnx.Param(_uniform_fanin(rngs.params(), (in_features, out_features), in_features))
        self.bias_O = nnx.Param(_uniform_fanin(rngs.params(), (out_features,), in_features))

    def weighted_sum(self, x_BI: jax.Array) -> jax.Array:
        """a = x @ kernel + bias (before f when the layer squashes)."""
        x = x_BI.astype(self.dtype)
        a = x @ self.kernel_IO[...].astype(self.dtype)
        return a + channels_last(self.bias_O[...].astype(self.dtype), a.ndim)

    def __call__(self, x_BI: jax.Array) -> jax.Array:
        a = self.weighted_sum(x_BI)
        return squash(a) if self.activate else a


class RBFCode(nnx.Variable):
    """Fixed (non-trainable) RBF centres: not an `nnx.Param`, so optimizers with `wrt=nnx.Param`
    never touch them."""


class RBFOutput(nnx.Module):
    """LC98 output layer: y_i = sum_j (x_j - w_ij)^2 with fixed +-1 centres w (`digit_codes()`).

    `penalties(x)` returns y (B, 10); `__call__` returns logits = -y, so argmax logit = smallest
    penalty.  Softmax cross-entropy on -y is the paper's MAP criterion, eq. (9), in the limit
    j -> infinity (exp(-j) -> 0).

    y is computed as |x|^2 - 2 x.w + |w|^2 (one 84x10 dot: 840 MACs), always
    in float32 regardless of the compute dtype, because the expansion cancels and bfloat16 would lose
    the small differences between penalties.  It is clipped at 0 against rounding.
    """

    def __init__(self, num_classes: int = 10):
        if num_classes != 10:
            raise ValueError(f"the RBF head has one fixed 7x12 bitmap code per digit, so it needs "
                             f"num_classes == 10 (got {num_classes}); use head='softmax'")
        self.codes_KD = RBFCode(jnp.asarray(digit_codes()))

    def penalties(self, x_BD: jax.Array) -> jax.Array:
        x = x_BD.astype(jnp.float32)
        w_KD = jax.lax.stop_gradient(self.codes_KD[...])
        y = (x * x).sum(-1, keepdims=True) - 2.0 * (x @ w_KD.T) + channels_last((w_KD * w_KD).sum(-1), 2)
        return jnp.maximum(y, 0.0)

    def __call__(self, x_BD: jax.Array) -> jax.Array:
        return -self.penalties(x_BD)
