"""The 2012 two-column AlexNet (`AlexNet2012`, "alexnet"), Krizhevsky, Sutskever & Hinton 2012 as trained
on two GPUs (K12 Fig. 2, §3.5): each column is written once and run per column; the columns meet only
at conv3, fc6, fc7 and fc8 through an `exchange` function.  On one device the exchange is a
concatenation; `alexnet_jax.parallel` supplies an all-gather over the mesh's `model` axis so that each
column lives on its own device, exactly as in 2012.  Its one-column relatives are in
alexnet_one_column.py, the init rules in init.py.

Numbers cite the papers; experiments/REPRODUCTION.md keeps the readings and derivations.

Input sizes.  The paper's "224" does not give 55x55 conv1 maps with an 11x11/4 valid conv; the
author's code (cuda-convnet) sizes outputs with a ceiling, i.e. it behaves like a 224 input with
3 pixels of zero padding on the bottom/right (K12 §3.5 and the author's code).  So `input_size=227` uses VALID
padding, and `input_size=224` pads conv1 with ((0, 3), (0, 3)); both give 55x55.  Small inputs
(CIFAR-sized tests and CPU experiments, `input_size < 100`) use a "small stem": conv1 5x5 with
stride 1 (<= 32 px) or 2 (otherwise), padding 2; everything after conv1 is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from alexnet_jax.models.init import Init
from alexnet_jax.models.layers import (
    CAFFE_LRN,
    COLUMN_AXIS,
    Tap,
    channels_last,
    constant,
    conv_out,
    lrn,
    max_pool,
    no_tap,
)

DN = ("NHWC", "HWIO", "NHWC")
COLUMNS = 2  # the two GPUs of 2012


def _w(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


def stem(input_size: int, paper_kernel: int = 11) -> tuple[int, int, tuple[tuple[int, int], tuple[int, int]]]:
    """(kernel, stride, padding) of conv1 for an input size (see the module docstring)."""
    if input_size >= 100:
        # cuda-convnet's ceil sizing: 1 + ceil((size - k) / 4) outputs, padding on the high side.
        out = 1 + math.ceil((input_size - paper_kernel) / 4)
        hi = (out - 1) * 4 + paper_kernel - input_size
        return paper_kernel, 4, ((0, hi), (0, hi))
    stride = 1 if input_size <= 32 else 2
    return 5, stride, ((2, 2), (2, 2))


# ------------------------------------------------------------------------------------------------
# Column layers: parameters of all columns stacked on a leading axis, computation per column.
# ------------------------------------------------------------------------------------------------
class ColumnConv(nnx.Module):
    """`columns` independent convolutions; kernel_CHWIO[c] belongs to column c.

    The leading column axis is the one `alexnet_jax.parallel` shards over the `model` mesh
    axis, so on a 2-device mesh each device holds exactly its column's kernels.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, padding="SAME",
                 bias: float = 0.0, kernel_init: Callable, columns: int = COLUMNS,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        self.stride, self.padding, self.dtype = stride, padding, dtype
        self.kernel = nnx.Param(kernel_init(rngs.params(), (columns, kernel, kernel, in_ch, out_ch)),
                                axes=(COLUMN_AXIS, None, None, None, None))
        self.bias = nnx.Param(constant(bias)(rngs.params(), (columns, out_ch)),
                              axes=(COLUMN_AXIS, None))

    def __call__(self, c: int, x_BHWC: jax.Array) -> jax.Array:
        kernel_HWIO = self.kernel[c].astype(self.dtype)
        y = jax.lax.conv_general_dilated(x_BHWC.astype(self.dtype), kernel_HWIO, (self.stride,) * 2,
                                         self.padding, dimension_numbers=DN)
        return y + channels_last(self.bias[c].astype(self.dtype), y.ndim)


class ColumnDense(nnx.Module):
    """`columns` independent dense layers; kernel_CIO[c] belongs to column c."""

    def __init__(self, in_features: int, out_features: int, *, bias: float = 0.0,
                 kernel_init: Callable, columns: int = COLUMNS, dtype=jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.kernel = nnx.Param(kernel_init(rngs.params(), (columns, in_features, out_features)),
                                axes=(COLUMN_AXIS, None, None))
        self.bias = nnx.Param(constant(bias)(rngs.params(), (columns, out_features)),
                              axes=(COLUMN_AXIS, None))

    def __call__(self, c: int, x_BI: jax.Array) -> jax.Array:
        y = x_BI.astype(self.dtype) @ self.kernel[c].astype(self.dtype)
        return y + channels_last(self.bias[c].astype(self.dtype), y.ndim)


def _pool5_hw(input_size: int) -> int:
    k, s, pad = stem(input_size)
    hw = conv_out(input_size, k, s, *pad[0])
    for _ in range(3):  # the three overlapping 3/2 max-pools
        hw = conv_out(hw, 3, 2, 0, 0)
    if hw < 1:
        raise ValueError(f"input_size {input_size} is too small for AlexNet (pool5 would be empty)")
    return hw


def concat_columns(hs: Sequence[jax.Array], layer: str = "") -> jax.Array:
    """The one-device exchange: every column's maps side by side on the channel axis."""
    return jnp.concatenate(list(hs), axis=-1)


# exchange(per-column maps, name of the layer that reads them) -> all columns' maps side by side
Exchange = Callable[[Sequence[jax.Array], str], jax.Array]
LRN_KINDS = ("paper", "caffe")   # AlexNet2012(lrn=): the paper's LRN per column, or Caffe's across columns


class AlexNet2012(nnx.Module):
    """The 2012 two-column AlexNet (K12 §3.5, Fig. 2, §5).

    Per column (GPU)            conv1 48@11x11/4 -> ReLU -> LRN -> maxpool 3/2
                                conv2 128@5x5 (same column only) -> ReLU -> LRN -> maxpool 3/2
      == exchange ==            conv3 192@3x3 over BOTH columns' 256 maps -> ReLU
                                conv4 192@3x3 (same column) -> ReLU
                                conv5 128@3x3 (same column) -> ReLU -> maxpool 3/2
      == exchange ==            fc6 2048 over both columns' 9216 inputs -> ReLU -> dropout 0.5
      == exchange ==            fc7 2048 over both columns' 4096 -> ReLU -> dropout 0.5
      == exchange ==            fc8 1000 over 4096 (one layer, replicated on every column device)

    * LRN k=2, n=5, alpha=1e-4, beta=0.75 (K12 §3.3) after the ReLU of conv1 and conv2, each column
      normalising only its own 48 / 128 maps, as the two GPUs did (cuda-convnet2 rnorm1a/b with
      channels=48; cuda-convnet2's config).  alpha is applied per element as printed (see layers.lrn).
      `lrn="caffe"` is Caffe's LRN instead, as bvlc_alexnet was trained with it: k=1, alpha/5 per element,
      over all 96 / 256 maps of the layer, across the column boundary (layers.CAFFE_LRN); the columns'
      maps are exchanged for it at lrn1 and lrn2 (two all-gathers more on a column split).
    * Dropout 0.5 on the outputs of fc6 and fc7 — "the first two fully-connected layers" (K12 §4.2),
      i.e. on the inputs of fc7 and fc8, which is where cuda-convnet2 puts dropout1/dropout2
      (fc1000 inputs=dropout2a,dropout2b; cuda-convnet2's config).  torchvision instead drops *before* fc6/fc7.
    * Init (K12 §5): weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7 and 0 in conv1,
      conv3, fc8.
    * 60,965,224 parameters and 724,406,816 multiply-adds at 227x227 (derived layer by layer).
    * fc8 placement: cuda-convnet2 ran fc1000 on GPU 0 only; we keep one fc8 and replicate it on
      both column devices, so each computes the logits from the gathered fc7 (the same 2,048
      floats per image per direction as the paper) and no logits need gathering back; it costs
      4.1M redundant multiply-adds (0.6%) and a duplicate copy of fc8's 4.1M parameters.
    """

    def __init__(self, *, num_classes: int = 1000, input_size: int = 227, width: float = 1.0,
                 dtype=jnp.float32, dropout_rate: float = 0.5, init: str = "native", lrn: str = "paper",
                 rngs: nnx.Rngs):
        self.num_classes, self.input_size, self.dtype, self.dropout_rate = num_classes, input_size, dtype, dropout_rate
        if lrn not in LRN_KINDS:
            raise ValueError(f"unknown lrn {lrn!r}; valid: {', '.join(LRN_KINDS)}")
        self.lrn_kind = lrn
        c1, c2, c3, c4, c5, f = (_w(n, width) for n in (48, 128, 192, 192, 128, 2048))
        k, s, pad = stem(input_size)
        self.conv1_padding = pad
        fan_in = self.fan_ins(width, input_size)
        rule = Init(init, self.fan_ins(1.0, self.PAPER_INPUT))
        self.input_std = rule.input_std

        def col(layer):
            return dict(dtype=dtype, rngs=rngs, kernel_init=rule.kernel(layer, fan_in[layer]), bias=rule.bias(layer))

        self.conv1 = ColumnConv(3, c1, k, stride=s, padding=pad, **col("conv1"))
        self.conv2 = ColumnConv(c1, c2, 5, padding=((2, 2), (2, 2)), **col("conv2"))
        self.conv3 = ColumnConv(COLUMNS * c2, c3, 3, padding=((1, 1), (1, 1)), **col("conv3"))
        self.conv4 = ColumnConv(c3, c4, 3, padding=((1, 1), (1, 1)), **col("conv4"))
        self.conv5 = ColumnConv(c4, c5, 3, padding=((1, 1), (1, 1)), **col("conv5"))
        self.pool5_hw = _pool5_hw(input_size)
        self.fc6 = ColumnDense(self.pool5_hw ** 2 * COLUMNS * c5, f, **col("fc6"))
        self.fc7 = ColumnDense(COLUMNS * f, f, **col("fc7"))
        self.fc8 = nnx.Linear(COLUMNS * f, num_classes, kernel_init=rule.kernel("fc8", fan_in["fc8"]),
                              bias_init=constant(rule.bias("fc8")), dtype=dtype, param_dtype=jnp.float32,
                              rngs=rngs)

    PAPER_INPUT = 227

    @staticmethod
    def fan_ins(width: float, input_size: int) -> dict[str, int]:
        """Each layer's fan-in (inputs per output unit) at a width and input size."""
        c1, c2, c3, c4, c5, f = (_w(n, width) for n in (48, 128, 192, 192, 128, 2048))
        k = stem(input_size)[0]
        return {"conv1": k * k * 3, "conv2": 25 * c1, "conv3": 9 * COLUMNS * c2, "conv4": 9 * c3, "conv5": 9 * c4,
                "fc6": _pool5_hw(input_size) ** 2 * COLUMNS * c5, "fc7": COLUMNS * f, "fc8": COLUMNS * f}

    # --- what the tools and the sharding plan read ------------------------------------------------
    columns = COLUMNS
    layer_kinds = {**{n: "relu" for n in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")},
                   "fc8": "linear"}
    feature_layer = "fc7"       # what the classifier reads (both columns' fc7, joined)

    # --- the per-column halves of the network (one GPU's work between two exchanges) -----------
    def column_conv1(self, c: int, x_BHWC: jax.Array, tap: Tap = no_tap) -> jax.Array:
        with jax.named_scope("conv1"):
            return tap("conv1", c, jax.nn.relu(self.conv1(c, x_BHWC)))

    def column_conv2(self, c: int, pool1_BHWC: jax.Array, tap: Tap = no_tap) -> jax.Array:
        with jax.named_scope("conv2"):
            return tap("conv2", c, jax.nn.relu(self.conv2(c, pool1_BHWC)))

    def column_conv12(self, c: int, x_BHWC: jax.Array, tap: Tap = no_tap) -> jax.Array:
        """conv1 -> ReLU -> LRN -> pool -> conv2 -> ReLU -> LRN -> pool, column c only (the paper's LRN)."""
        h = self.column_conv1(c, x_BHWC, tap)
        with jax.named_scope("lrn1"):
            h = max_pool(lrn(h))
        h = self.column_conv2(c, h, tap)
        with jax.named_scope("lrn2"):
            return max_pool(lrn(h))

    def lrn_across_columns(self, hs: Sequence[jax.Array], layer: str, exchange: Exchange,
                           first_column) -> list[jax.Array]:
        """Caffe's LRN over every column's maps of one layer, then pooled: each present column's share.
        `first_column`: the index, among all columns, of the first one present (parallel.apply passes it)."""
        with jax.named_scope(layer):
            every = lrn(exchange(hs, layer), **CAFFE_LRN)
            n = hs[0].shape[-1]
            return [max_pool(jax.lax.dynamic_slice_in_dim(every, (first_column + c) * n, n, axis=-1))
                    for c in range(len(hs))]

    def column_conv345(self, c: int, pool2_all_BHWC: jax.Array, tap: Tap = no_tap) -> jax.Array:
        """conv3 (reads all columns) -> conv4 -> conv5 (own column) -> pool5, column c."""
        with jax.named_scope("conv3"):
            h = tap("conv3", c, jax.nn.relu(self.conv3(c, pool2_all_BHWC)))
        with jax.named_scope("conv4"):
            h = tap("conv4", c, jax.nn.relu(self.conv4(c, h)))
        with jax.named_scope("conv5"):
            h = tap("conv5", c, jax.nn.relu(self.conv5(c, h)))
        with jax.named_scope("pool5"):
            return max_pool(h)

    def dropout_masks(self, key: jax.Array, batch: int) -> tuple[jax.Array, jax.Array]:
        """Keep-masks for fc6 and fc7 outputs, shape (columns, batch, features), for all columns.

        Drawn for the whole network at once (not per device) so that every mesh layout draws the
        same masks from the same key.
        """
        f = self.fc6.kernel.shape[-1]
        k6, k7 = jax.random.split(key)
        p = 1.0 - self.dropout_rate
        return (jax.random.bernoulli(k6, p, (COLUMNS, batch, f)), jax.random.bernoulli(k7, p, (COLUMNS, batch, f)))

    def _drop(self, h: jax.Array, keep: jax.Array | None) -> jax.Array:
        if keep is None:
            return h
        return jnp.where(keep, h / (1.0 - self.dropout_rate), 0).astype(h.dtype)

    def __call__(self, x_BHWC: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None,
                 dropout_masks: tuple[jax.Array, jax.Array] | None = None,
                 exchange: Exchange = concat_columns, tap: Tap = no_tap, first_column=0) -> jax.Array:
        """Forward pass.  `exchange` joins the columns' maps (an all-gather on a mesh); `tap` sees
        every layer's output after its activation (see layers.Tap).

        The loop runs over the columns whose parameters are present: both on one device, one per
        device under `alexnet_jax.parallel` (which passes that device's dropout masks and, for Caffe's
        LRN, the index of its first column, `first_column`).
        """
        local = self.conv1.kernel.shape[0]
        keep6 = keep7 = None
        if train and self.dropout_rate > 0:
            if dropout_masks is None:
                if dropout_key is None:
                    raise ValueError("training mode needs a dropout_key (or dropout_masks)")
                dropout_masks = self.dropout_masks(dropout_key, x_BHWC.shape[0])
            keep6, keep7 = dropout_masks
        cols = range(local)
        x = x_BHWC.astype(self.dtype)
        if self.input_std is not None:  # unit-scale inputs (see Init.input_std)
            x = x / channels_last(jnp.asarray(self.input_std, self.dtype), x.ndim)
        if self.lrn_kind == "paper":
            h = [self.column_conv12(c, x, tap) for c in cols]      # GPU-local
        else:                                                      # Caffe's LRN reads every column's maps
            h = self.lrn_across_columns([self.column_conv1(c, x, tap) for c in cols], "lrn1", exchange, first_column)
            h = [self.column_conv2(c, v, tap) for c, v in zip(cols, h, strict=True)]
            h = self.lrn_across_columns(h, "lrn2", exchange, first_column)
        h = exchange(h, "conv3")                                   # conv3 sees both columns
        h = [self.column_conv345(c, h, tap) for c in cols]         # GPU-local
        h = exchange(h, "fc6").reshape(x.shape[0], -1)             # fc6 sees both columns
        with jax.named_scope("fc6"):
            h = [self._drop(tap("fc6", c, jax.nn.relu(self.fc6(c, h))), None if keep6 is None else keep6[c])
                 for c in cols]
        h = exchange(h, "fc7")                                     # fc7 sees both columns
        with jax.named_scope("fc7"):
            h = [self._drop(tap("fc7", c, jax.nn.relu(self.fc7(c, h))), None if keep7 is None else keep7[c])
                 for c in cols]
        h = exchange(h, "fc8")                                     # fc8 sees both columns
        with jax.named_scope("fc8"):
            return tap("fc8", None, self.fc8(h).astype(jnp.float32))


