"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, "LC98") and the common modern variant.

`LeNet5` is the network as published (LC98 §II) of LC98's layers (models/lenet_layers.py), with the paper's
10 Euclidean RBF units as output (`head="rbf"`) or a trainable linear softmax layer (`head="softmax"`,
the default); its criterion and curvature estimate are in alexnet_jax/lc98.py:

    input 32x32 -> C1 6@28x28 -> S2 6@14x14 -> C3 16@10x10 -> S4 16@5x5 -> C5 120@1x1 -> F6 84 -> OUT 10

Parameter count with the RBF head: 156 + 12 + 1,516 + 32 + 48,120 + 10,164 = 60,000 (LC98 §II.A).

Input sizes other than 32: an input smaller than 32 is zero-padded inside C1 up to 32 (for 28x28 MNIST
that is padding 2 on every side, the usual "padding=2" LeNet), because with a 28x28 input the valid
5x5 C5 would have no room (28 -> 24 -> 12 -> 8 -> 4 < 5).  Larger inputs give C5 maps larger than 1x1,
which are flattened before F6 (the paper's reason for calling C5 a convolution).  Subsampling of an odd
map drops the last row/column (floor, like VALID pooling).

Layer calls are wrapped in `jax.named_scope("C1")`, ..., `"OUT"` so that a jaxpr walk can attribute
each layer's arithmetic to it.  Parameters are float32; inputs and parameters are cast to the compute
`dtype`; logits are returned as float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from alexnet_jax.models.layers import Tap, no_tap
from alexnet_jax.models.lenet_layers import Dense, RBFOutput, SparseC3, SquashConv, Subsampling

PAPER_INPUT = 32


def _lecun_normal(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """Flax's default kernel init (lecun normal, fan_in = prod(shape[:-1]) for HWIO and IO kernels),
    drawn as a 2-D (fan_in, fan_out) matrix and reshaped, which XLA:CPU compiles faster than 4-D."""
    fan_in = math.prod(shape[:-1])
    return jax.nn.initializers.lecun_normal()(key, (fan_in, shape[-1]), dtype).reshape(shape)


def _width(n: int, width: float) -> int:
    return max(1, int(round(width * n)))


def c1_padding(input_size: int) -> tuple[int, int]:
    """(low, high) zero padding of C1 so that the padded input is at least 32 (paper size)."""
    total = max(0, PAPER_INPUT - input_size)
    return total // 2, total - total // 2


def _c5_size(input_size: int) -> int:
    """The side of C5's maps (1 at 32): through C1 on the padded input, S2, C3, S4 and C5."""
    s = input_size + sum(c1_padding(input_size)) - 4   # C1
    s = s // 2 - 4                                     # S2, C3
    s = s // 2 - 4                                     # S4, C5
    if s < 1:
        raise ValueError(f"input_size {input_size} too small for LeNet-5")
    return s


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
        self.c5_hw = s = _c5_size(input_size)
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
        self.c5_hw = s = _c5_size(input_size)
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
