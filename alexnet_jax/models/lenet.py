"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, "LC98") and the common modern variant.

`LeNet5` is the network as published (LC98 §II):

    input 32x32 -> C1 6@28x28 -> S2 6@14x14 -> C3 16@10x10 -> S4 16@5x5 -> C5 120@1x1 -> F6 84 -> OUT 10

* every hidden layer up to F6 squashes its weighted sum with f(a) = 1.7159 tanh(2/3 a) (§4.2);
* S2/S4 are *trainable subsampling* layers: the four inputs of a 2x2 non-overlapping window are added,
  multiplied by one trainable coefficient per map, a trainable bias per map is added, then f (§4.1);
* C3 uses the partial connection table LC98 Table I (`C3_TABLE`), implemented with no dead weights as
  three grouped convolutions, so it has exactly 1,516 parameters and 150,000 MACs (§4.1, §5.3);
* every weight and bias starts uniform in (-2.4/F, 2.4/F), F = the unit's fan-in (§4.2);
* the output is either the paper's 10 Euclidean RBF units with fixed +-1 codes (`head="rbf"`) or a
  trainable linear softmax layer (`head="softmax"`, the default).

Parameter count with the RBF head: 156 + 12 + 1,516 + 32 + 48,120 + 10,164 = 60,000 (LC98 §II.A).

Input sizes other than 32: an input smaller than 32 is zero-padded inside C1 up to 32 (for 28x28 MNIST
that is padding 2 on every side, the usual "padding=2" LeNet), because with a 28x28 input the valid
5x5 C5 would have no room (28 -> 24 -> 12 -> 8 -> 4 < 5).  Larger inputs give C5 maps larger than 1x1,
which are flattened before F6 (the paper's reason for calling C5 a convolution).  Subsampling of an odd
map drops the last row/column (floor, like VALID pooling).

For XLA:CPU the layers C1-C5 compute in batch-minor (C, H, W, B) layout (layers.conv_batch_minor and
layers.sum_pool_2x2_batch_minor; see layers.py for why) and take and return NHWC like every model here;
XLA removes the transposes between consecutive layers.  For any other compiler (layers.cpu_tuned() is
False) they are NHWC convolutions and a 2x2 sum pool: the same functions.

Layer calls are wrapped in `jax.named_scope("C1")`, ..., `"OUT"` so that a jaxpr walk can attribute
each layer's arithmetic to it.  Parameters are float32; inputs and parameters are cast to the compute
`dtype`; logits are returned as float32.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alexnet_jax.models.layers import (
    Tap,
    channels_last,
    conv_batch_minor,
    cpu_tuned,
    from_batch_minor,
    no_tap,
    sum_pool_2x2,
    sum_pool_2x2_batch_minor,
    to_batch_minor,
)

# --------------------------------------------------------------------------------------------
# Constants from the paper (LC98 §II)
# --------------------------------------------------------------------------------------------
SQUASH_A, SQUASH_S = 1.7159, 2.0 / 3.0   # f(a) = A tanh(S a), LC98 App. A
INIT_SCALE = 2.4                          # U(-2.4/F, 2.4/F), LC98 App. A
PAPER_INPUT = 32

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


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
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


def _lecun_normal(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """Flax's default kernel init (lecun normal, fan_in = prod(shape[:-1]) for HWIO and IO kernels),
    drawn as a 2-D (fan_in, fan_out) matrix and reshaped, which XLA:CPU compiles faster than 4-D."""
    fan_in = math.prod(shape[:-1])
    return jax.nn.initializers.lecun_normal()(key, (fan_in, shape[-1]), dtype).reshape(shape)


def _width(n: int, width: float) -> int:
    return max(1, int(round(width * n)))


def _per_map(v_C: jax.Array, like_CHWB: jax.Array) -> jax.Array:
    """A float32 per-map parameter broadcast over a batch-minor (C, H, W, B) array, then cast to its
    dtype: the same values as casting first, but the gradient (the sum over H, W, B) is accumulated in
    float32, which matters when the compute dtype is bfloat16."""
    return jnp.broadcast_to(v_C[:, None, None, None], like_CHWB.shape).astype(like_CHWB.dtype)


def _per_channel(v_C: jax.Array, like_BHWC: jax.Array) -> jax.Array:
    """`_per_map` for a channels-last (B, H, W, C) array."""
    return jnp.broadcast_to(channels_last(v_C, like_BHWC.ndim), like_BHWC.shape).astype(like_BHWC.dtype)


def c1_padding(input_size: int) -> tuple[int, int]:
    """(low, high) zero padding of C1 so that the padded input is at least 32 (paper size)."""
    total = max(0, PAPER_INPUT - input_size)
    return total // 2, total - total // 2


def _conv(x_BHWC: jax.Array, kernel_HWIO: jax.Array, *, groups: int = 1, padding="VALID") -> jax.Array:
    return jax.lax.conv_general_dilated(
        x_BHWC, kernel_HWIO, window_strides=(1, 1), padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


# --------------------------------------------------------------------------------------------
# LeNet-5 layers (each computes x = f(a) for its units, except the output layers)
# --------------------------------------------------------------------------------------------
class SquashConv(nnx.Module):
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

    def weighted_sum(self, x_BHWC: jax.Array) -> jax.Array:
        """a = kernel * x + bias, the units' total input before f (LC98's a_i)."""
        if cpu_tuned():
            return from_batch_minor(self._weighted_sum_CHWB(x_BHWC))
        return self._weighted_sum_BHWC(x_BHWC)

    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        if cpu_tuned():   # f applied before leaving the batch-minor layout
            return from_batch_minor(squash(self._weighted_sum_CHWB(x_BHWC)))
        return squash(self._weighted_sum_BHWC(x_BHWC))


class Subsampling(nnx.Module):
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

    def weighted_sum(self, x_BHWC: jax.Array) -> jax.Array:
        """a = coef * (sum of the 2x2 window) + bias, before f."""
        if cpu_tuned():
            return from_batch_minor(self._weighted_sum_CHWB(x_BHWC))
        return self._weighted_sum_BHWC(x_BHWC)

    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        if cpu_tuned():
            return from_batch_minor(squash(self._weighted_sum_CHWB(x_BHWC)))
        return squash(self._weighted_sum_BHWC(x_BHWC))


class SparseC3(nnx.Module):
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

    def weighted_sum(self, x_BHWC: jax.Array) -> jax.Array:
        """a = (Table I kernel) * x + bias, before f."""
        if cpu_tuned():
            return from_batch_minor(self._weighted_sum_CHWB(x_BHWC))
        return self._weighted_sum_BHWC(x_BHWC)

    def __call__(self, x_BHWC: jax.Array) -> jax.Array:
        if cpu_tuned():
            return from_batch_minor(squash(self._weighted_sum_CHWB(x_BHWC)))
        return squash(self._weighted_sum_BHWC(x_BHWC))


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

    def lc98_output_curvature(self, x_BD: jax.Array, logits_BK: jax.Array, j: float) -> jax.Array:
        """The boundary term of LC98's curvature estimate: d2E/dx_d^2 for every F6 output x_d (B, D),
        E = LC98 eq. 9 with constant j (``lc98_criterion``; j = inf is softmax cross-entropy on the
        logits, j = -inf the squared distance to the correct code alone):

            2 + sum_i 4 (x_d - w_id)^2 q_i (1 - q_i),    q_i = e^{-y_i} / (e^{-j} + sum_k e^{-y_k})

        2 is the squared-distance term's own second derivative; the sum is the log term's, carried
        through the RBF units with LC98's two simplifications (no cross terms between units, no
        second derivative of a unit times the loss's first derivative).  Derived in
        experiments/REPRODUCTION.md.  Independent of the label."""
        x = x_BD.astype(jnp.float32)
        w_KD = jax.lax.stop_gradient(self.codes_KD[...])
        z = logits_BK.astype(jnp.float32)
        q = jnp.exp(z - jnp.logaddexp(-j, jax.nn.logsumexp(z, axis=-1, keepdims=True)))
        diff = x[:, None, :] - w_KD[None, :, :]
        return 2.0 + 4.0 * jnp.einsum("bk,bkd->bd", q * (1.0 - q), diff * diff)


def lc98_criterion(logits_BK: jax.Array, labels_B: jax.Array, j: float) -> jax.Array:
    """LC98 eq. 9 per pattern, on the RBF head's logits = -penalties y:

        E = y_label + log(e^{-j} + sum_i e^{-y_i})

    The first term pulls F6's output onto the correct code (the squared-distance criterion, eq. 8); the
    second is LC98's competitive term, whose constant e^{-j} keeps penalties already above about j from
    being pushed further up.  j = inf gives softmax cross-entropy on the logits.  E >= 0."""
    z = logits_BK.astype(jnp.float32)
    y_label = -jnp.take_along_axis(z, labels_B[:, None], axis=-1)[:, 0]
    return y_label + jnp.logaddexp(-j, jax.nn.logsumexp(z, axis=-1))


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
class LeNet5(nnx.Module):
    """LeNet-5 as published (LC98; LC98 §II).

    Args:
      num_classes: 10 for the paper; the RBF head requires 10.
      input_size: 32 is the paper.  Smaller inputs are zero-padded in C1 up to 32 (28 -> padding 2);
        larger ones give C5 maps > 1x1 that are flattened before F6.
      width: multiplies the number of maps of every hidden layer (C1 6, C3 16, C5 120, F6 84) as
        max(1, round(width * n)).  The C3 connection table (Table I) is kept only for width == 1;
        for any other width C3 is a *fully connected* 5x5 convolution (the table is defined for
        exactly 6 -> 16 maps).
      dtype: compute dtype (params stay float32; logits are float32).
      head: "softmax" (trainable linear F6 -> num_classes) or "rbf" (the paper's 10 fixed Euclidean
        RBF units, logits = -penalty).

    Layers are attributes c1, s2, c3, s4, c5, f6, out.  `features_to_s2(x)` returns the S2 maps and
    `model.c3(s2)` applies C3, for inspection and tests.
    """

    def __init__(self, *, num_classes: int = 10, input_size: int = PAPER_INPUT, width: float = 1.0,
                 dtype=jnp.float32, head: str = "softmax", rngs: nnx.Rngs):
        if head not in ("softmax", "rbf"):
            raise ValueError(f"unknown head {head!r}; valid: softmax, rbf")
        if head == "rbf" and num_classes != 10:
            raise ValueError(f"head='rbf' uses the paper's 10 fixed digit codes, so num_classes must be "
                             f"10 (got {num_classes})")
        self.num_classes, self.input_size, self.width = num_classes, input_size, width
        self.in_channels = 1   # greyscale digits
        self.dtype, self.head = dtype, head
        c1, c3, c5, f6 = (_width(n, width) for n in (6, 16, 120, 84))
        if head == "rbf" and f6 != 84:
            raise ValueError(f"head='rbf' needs F6 = 84 units (7x12 codes); width={width} gives {f6}")
        self.sparse_c3 = width == 1.0
        self.c1_padding = c1_padding(input_size)
        # spatial sizes through the net
        s = input_size + sum(self.c1_padding) - 4   # C1
        s = s // 2 - 4                               # S2, C3
        s = s // 2 - 4                               # S4, C5
        if s < 1:
            raise ValueError(f"input_size {input_size} too small for LeNet-5")
        self.c5_hw = s
        pad = (self.c1_padding, self.c1_padding)
        self.c1 = SquashConv(1, c1, padding=pad, dtype=dtype, rngs=rngs)
        self.s2 = Subsampling(c1, dtype=dtype, rngs=rngs)
        self.c3 = SparseC3(dtype=dtype, rngs=rngs) if self.sparse_c3 else SquashConv(
            c1, c3, dtype=dtype, rngs=rngs)
        self.s4 = Subsampling(c3, dtype=dtype, rngs=rngs)
        self.c5 = SquashConv(c3, c5, dtype=dtype, rngs=rngs)
        self.f6 = Dense(c5 * s * s, f6, activate=True, dtype=dtype, rngs=rngs)
        if head == "rbf":
            self.out = RBFOutput(num_classes)
        else:
            self.out = Dense(f6, num_classes, activate=False, dtype=dtype, rngs=rngs)

    columns = 1
    layer_kinds = {**{n: "squash" for n in ("C1", "S2", "C3", "S4", "C5", "F6")}, "OUT": "linear"}
    feature_layer = "F6"

    def features_to_s2(self, x_BHWC: jax.Array, tap: Tap = no_tap) -> jax.Array:
        """Input -> C1 -> S2 maps (B, 14, 14, 6) at 32x32, in the compute dtype."""
        with jax.named_scope("C1"):
            x = tap("C1", 0, self.c1(x_BHWC.astype(self.dtype)))
        with jax.named_scope("S2"):
            return tap("S2", 0, self.s2(x))

    def __call__(self, x_BHWC: jax.Array, *, train: bool = False, dropout_key=None, tap: Tap = no_tap) -> jax.Array:
        del train, dropout_key  # LeNet-5 has no dropout or batch statistics
        x = self.features_to_s2(x_BHWC, tap)
        with jax.named_scope("C3"):
            x = tap("C3", 0, self.c3(x))
        with jax.named_scope("S4"):
            x = tap("S4", 0, self.s4(x))
        with jax.named_scope("C5"):
            x = tap("C5", 0, self.c5(x))
        with jax.named_scope("F6"):
            x = tap("F6", 0, self.f6(x.reshape(x.shape[0], -1)))
        with jax.named_scope("OUT"):
            return tap("OUT", 0, self.out(x).astype(jnp.float32))

    # LC98 App. C: the curvature estimate, back-propagated through these layers with squared weights
    CURVATURE_LAYERS = ("C1", "S2", "C3", "S4", "C5", "F6")

    def lc98_curvature(self, x_BHWC: jax.Array, taps: dict[str, list[jax.Array]], *, j: float) -> nnx.State:
        """LC98 App. C's estimate h_kk of d2E/dw_k^2, averaged over the B patterns ``x_BHWC``: a State
        shaped like the model's Params (experiments/REPRODUCTION.md derives it).

        ``taps`` are this model's layer outputs on ``x_BHWC`` (``parallel.apply(..., taps=True)``): the
        units' outputs x, from which f'(a) = S (A^2 - x^2) / A.  From the output term at F6
        (``RBFOutput.lc98_output_curvature``, criterion ``lc98_criterion`` with constant j) the
        recursion runs down the layers, each unit's d2E/da^2 = f'(a)^2 d2E/dx^2 and each input's
        d2E/dx^2 = sum over its connections of (weight^2 * d2E/da^2): the layer's own ``weighted_sum``
        with every parameter squared, transposed (a VJP of a linear map).  A parameter's h is the sum over
        the connections that share it of (input^2 * d2E/da^2) (a bias connection's input is 1): the
        transpose of ``weighted_sum`` taken with respect to the parameters at the squared inputs."""
        if self.head != "rbf":
            raise ValueError("lc98_curvature starts from the RBF head's criterion (LC98 eq. 9): head='rbf'")
        b = x_BHWC.shape[0]
        graphdef, params, rest = nnx.split(self, nnx.Param, ...)
        squared = nnx.merge(graphdef, jax.tree.map(jnp.square, params), rest)
        names = self.CURVATURE_LAYERS
        outs = {n: taps[n][0].astype(jnp.float32) for n in names}
        ins = dict(zip(names, [x_BHWC.astype(jnp.float32)] + [outs[n] for n in names[:-1]], strict=True))
        ins["F6"] = ins["F6"].reshape(b, -1)
        d_x = self.out.lc98_output_curvature(outs["F6"], taps["OUT"][0], j)
        d_a = {}
        for n in reversed(names):
            d_a[n] = jnp.square(squash_derivative(outs[n])) * d_x.reshape(outs[n].shape)
            if n != "C1":
                _, transpose = jax.vjp(getattr(squared, n.lower()).weighted_sum, ins[n])
                (d_x,) = transpose(d_a[n].astype(ins[n].dtype))

        def paired(p):
            model = nnx.merge(graphdef, p, rest)
            return sum(jnp.vdot(d_a[n], getattr(model, n.lower()).weighted_sum(jnp.square(ins[n]))
                                .astype(jnp.float32)) for n in names)

        return jax.tree.map(lambda h: h / b, jax.grad(paired)(params))


class LeNet5Modern(nnx.Module):
    """The common modern LeNet-5 variant (for comparison with `LeNet5`):

    C1 6@5x5 + ReLU, 2x2 max-pool (S2), C3 16@5x5 fully connected + ReLU, 2x2 max-pool (S4),
    C5 120@5x5 conv + ReLU (flattened; 1x1 at 32x32), F6 84 + ReLU, linear head.  Flax's default
    initialisers (lecun normal kernels, zero biases).  Inputs smaller than 32 are zero-padded in C1
    up to 32, as in `LeNet5`.  `width` scales the hidden layers as in `LeNet5`.  Only
    head="softmax" exists; anything else raises.
    """

    def __init__(self, *, num_classes: int = 10, input_size: int = PAPER_INPUT, width: float = 1.0,
                 dtype=jnp.float32, head: str = "softmax", rngs: nnx.Rngs):
        if head != "softmax":
            raise ValueError(f"LeNet5Modern has only a linear softmax head (got head={head!r})")
        self.num_classes, self.input_size, self.width, self.dtype = num_classes, input_size, width, dtype
        self.in_channels = 1
        c1, c3, c5, f6 = (_width(n, width) for n in (6, 16, 120, 84))
        pad = c1_padding(input_size)
        s = input_size + sum(pad) - 4
        s = s // 2 - 4
        s = s // 2 - 4
        if s < 1:
            raise ValueError(f"input_size {input_size} too small for LeNet-5")
        self.c5_hw = s
        kw = dict(dtype=dtype, param_dtype=jnp.float32, kernel_init=_lecun_normal, rngs=rngs)
        self.c1 = nnx.Conv(1, c1, (5, 5), padding=(pad, pad), **kw)
        self.c3 = nnx.Conv(c1, c3, (5, 5), padding="VALID", **kw)
        self.c5 = nnx.Conv(c3, c5, (5, 5), padding="VALID", **kw)
        self.f6 = nnx.Linear(c5 * s * s, f6, **kw)
        self.out = nnx.Linear(f6, num_classes, **kw)

    columns = 1
    layer_kinds = {"C1": "relu", "C3": "relu", "C5": "relu", "F6": "relu", "OUT": "linear"}
    feature_layer = "F6"

    def __call__(self, x_BHWC: jax.Array, *, train: bool = False, dropout_key=None, tap: Tap = no_tap) -> jax.Array:
        del train, dropout_key
        x = x_BHWC.astype(self.dtype)
        with jax.named_scope("C1"):
            x = tap("C1", 0, jax.nn.relu(self.c1(x)))
        with jax.named_scope("S2"):
            x = nnx.max_pool(x, (2, 2), (2, 2), "VALID")
        with jax.named_scope("C3"):
            x = tap("C3", 0, jax.nn.relu(self.c3(x)))
        with jax.named_scope("S4"):
            x = nnx.max_pool(x, (2, 2), (2, 2), "VALID")
        with jax.named_scope("C5"):
            x = tap("C5", 0, jax.nn.relu(self.c5(x)))
        with jax.named_scope("F6"):
            x = tap("F6", 0, jax.nn.relu(self.f6(x.reshape(x.shape[0], -1))))
        with jax.named_scope("OUT"):
            return tap("OUT", 0, self.out(x).astype(jnp.float32))
