"""The one-column AlexNets, each described as data (a conv stack, then a classifier) on one shared module:

* `AlexNetHalf` ("alexnet_half") — the paper's one-GPU comparison net (K12 §3.2, footnote 2).
* `AlexNetOWT` ("alexnet_owt") — torchvision's one-column net (torchvision).
* `AlexNetKeras` ("alexnet_keras") — a Keras-style net, kept as written (four conv layers).
* `AlexNetBN` ("alexnet_bn") — the PyTorch-style net with BatchNorm after every conv.

They share the 2012 net's input sizes and small stem (alexnet.stem) and its init rules (init.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from alexnet_jax.models.alexnet import _w, stem
from alexnet_jax.models.init import TORCH_KERNEL, Init, torch_bias
from alexnet_jax.models.layers import Tap, adaptive_avg_pool, channels_last, conv_out, dropout, lrn, max_pool, no_tap


class _OneColumn(nnx.Module):
    """Shared machinery: a conv stack described as data, then a classifier."""

    # convs: (name, out_channels, kernel, stride, padding, lrn_after, pool_after)
    # fcs:   (name, out_features, dropout_before)
    @staticmethod
    def _dims(convs, fcs, input_size: int, width: float, adaptive_pool) -> list[tuple]:
        """[(name, in, out, fan_in)] of every layer, and checks that the input is large enough."""
        in_ch, hw, out = 3, input_size, []
        for name, ch, k, s, pad, _, pool_after in convs:
            ch = _w(ch, width)
            out.append((name, in_ch, ch, k * k * in_ch))
            hw = -(-hw // s) if pad == "SAME" else conv_out(hw, k, s, *pad[0])
            if pool_after:
                hw = conv_out(hw, 3, 2, 0, 0)
            in_ch = ch
        if hw < 1:
            raise ValueError(f"input_size {input_size} is too small for this network")
        features = (adaptive_pool[0] * adaptive_pool[1] if adaptive_pool else hw * hw) * in_ch
        for name, n, _ in fcs:
            n = n if name == fcs[-1][0] else _w(n, width)
            out.append((name, features, n, features))
            features = n
        return out

    def _build(self, convs, fcs, *, input_size, width, dtype, rngs, init: str, paper_convs, native_kernel=None,
               native_bias=None, batchnorm=False, adaptive_pool=None):
        """`paper_convs`: the conv list at the published input size (the reference fan-ins of Init)."""
        self.dtype = dtype
        reference = {n: f for n, _, _, f in self._dims(paper_convs, fcs, self.PAPER_INPUT, 1.0, adaptive_pool)}
        rule = Init(init, reference, native_kernel, native_bias)
        self.input_std = rule.input_std
        dims = self._dims(convs, fcs, input_size, width, adaptive_pool)
        self.conv_names, self.fc_names = [], []
        for (name, _, ch, k, s, pad, lrn_after, pool_after), (_, in_ch, _, fan_in) in zip(
                [(c[0], None, *c[1:]) for c in convs], dims, strict=False):
            conv = nnx.Conv(in_ch, _w(ch, width), (k, k), strides=(s, s), padding=pad,
                            kernel_init=rule.kernel(name, fan_in), bias_init=rule.bias_init(name, fan_in), dtype=dtype,
                            param_dtype=jnp.float32, rngs=rngs)
            setattr(self, name, conv)
            if batchnorm:
                setattr(self, f"bn_{name}", nnx.BatchNorm(_w(ch, width), momentum=0.9, epsilon=1e-5, dtype=dtype,
                                                          param_dtype=jnp.float32, rngs=rngs))
            self.conv_names.append((name, lrn_after, pool_after))
        self.adaptive_pool = adaptive_pool
        for (name, _, drop_before), (_, features, out, fan_in) in zip(fcs, dims[len(convs):], strict=True):
            setattr(self, name, nnx.Linear(features, out, kernel_init=rule.kernel(name, fan_in),
                                           bias_init=rule.bias_init(name, fan_in), dtype=dtype,
                                           param_dtype=jnp.float32, rngs=rngs))
            self.fc_names.append((name, drop_before))
        self.flat_features = dims[len(convs)][1]
        self.batchnorm = batchnorm

    columns = 1

    @property
    def layer_kinds(self) -> dict[str, str]:
        kinds = {name: "relu" for name, _, _ in self.conv_names}
        kinds.update({name: "relu" for name, _ in self.fc_names[:-1]})
        kinds[self.fc_names[-1][0]] = "linear"
        return kinds

    @property
    def feature_layer(self) -> str:
        """The classifier's input: the last hidden fc layer (or the flattened conv maps when only one fc)."""
        return self.fc_names[-2][0]

    def __call__(self, x_BHWC: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None,
                 dropout_rate: float = 0.5, tap: Tap = no_tap) -> jax.Array:
        h = x_BHWC.astype(self.dtype)
        if self.input_std is not None:  # centred raw RGB -> unit scale, as torchvision's Normalize
            h = h / channels_last(jnp.asarray(self.input_std, self.dtype), h.ndim)
        for name, lrn_after, pool_after in self.conv_names:
            with jax.named_scope(name):
                h = getattr(self, name)(h)
                if self.batchnorm:
                    h = getattr(self, f"bn_{name}")(h, use_running_average=not train)
                h = tap(name, 0, jax.nn.relu(h))
                if lrn_after:
                    h = lrn(h)
                if pool_after:
                    h = max_pool(h)
        if self.adaptive_pool:
            h = adaptive_avg_pool(h, self.adaptive_pool)
        h = h.reshape(h.shape[0], -1)
        keys = list(jax.random.split(dropout_key, len(self.fc_names))) if dropout_key is not None else None
        last = len(self.fc_names) - 1
        for i, (name, drop_before) in enumerate(self.fc_names):
            with jax.named_scope(name):
                if drop_before:
                    h = dropout(h, dropout_rate, keys[i] if keys else None, train)
                h = getattr(self, name)(h)
                h = tap(name, 0, jax.nn.relu(h) if i < last else h)
        return h.astype(jnp.float32)


_SAME1 = ((1, 1), (1, 1))
_SAME2 = ((2, 2), (2, 2))
_VALID = ((0, 0), (0, 0))


class AlexNetHalf(_OneColumn):
    """The one-GPU comparison net of K12 §3.2 and footnote 2.

    "A net with half as many kernels in each convolutional layer trained on one GPU", except that
    the last conv layer keeps all 256 kernels and the FC layers are not halved, so the two nets
    have roughly the same number of parameters: conv 48-128-192-192-256, fc 4096-4096-1000, one
    column with full connectivity, LRN over all maps, the paper's init (native: N(0, 0.01); biases 1
    in conv2/4/5 and fc6/7) and dropout on the outputs of fc6 and fc7 as in `AlexNet2012`.
    """

    PAPER_INPUT = 227

    @staticmethod
    def _convs(input_size: int) -> list[tuple]:
        k, s, pad = stem(input_size)
        return [("conv1", 48, k, s, pad, True, True), ("conv2", 128, 5, 1, _SAME2, True, True),
                ("conv3", 192, 3, 1, _SAME1, False, False), ("conv4", 192, 3, 1, _SAME1, False, False),
                ("conv5", 256, 3, 1, _SAME1, False, True)]

    def __init__(self, *, num_classes: int = 1000, input_size: int = 227, width: float = 1.0,
                 dtype=jnp.float32, init: str = "native", rngs: nnx.Rngs):
        self.num_classes, self.input_size = num_classes, input_size
        # dropout on the outputs of fc6 and fc7 == before fc7 and fc8
        fcs = [("fc6", 4096, False), ("fc7", 4096, True), ("fc8", num_classes, True)]
        self._build(self._convs(input_size), fcs, input_size=input_size, width=width, dtype=dtype, rngs=rngs,
                    init=init, paper_convs=self._convs(self.PAPER_INPUT))


class AlexNetOWT(_OneColumn):
    """torchvision's `alexnet` (torchvision): the "one weird trick" one-column net.

    conv 64@11x11/4 pad 2 -> pool -> 192@5x5 pad 2 -> pool -> 384, 256, 256 @3x3 pad 1 -> pool ->
    adaptive average pool 6x6 -> dropout -> fc 4096 -> dropout -> fc 4096 -> fc num_classes.
    No LRN, no groups; 61,100,840 parameters and 714,188,480 multiply-adds at 224 (derived layer by layer).
    """

    PAPER_INPUT = 224

    @staticmethod
    def _convs(input_size: int) -> list[tuple]:
        k, s, pad = (11, 4, _SAME2) if input_size >= 100 else stem(input_size)
        return [("conv1", 64, k, s, pad, False, True), ("conv2", 192, 5, 1, _SAME2, False, True),
                ("conv3", 384, 3, 1, _SAME1, False, False), ("conv4", 256, 3, 1, _SAME1, False, False),
                ("conv5", 256, 3, 1, _SAME1, False, True)]

    def __init__(self, *, num_classes: int = 1000, input_size: int = 224, width: float = 1.0,
                 dtype=jnp.float32, init: str = "native", rngs: nnx.Rngs):
        self.num_classes, self.input_size = num_classes, input_size
        fcs = [("fc6", 4096, True), ("fc7", 4096, True), ("fc8", num_classes, False)]
        self._build(self._convs(input_size), fcs, input_size=input_size, width=width, dtype=dtype, rngs=rngs,
                    init=init, paper_convs=self._convs(self.PAPER_INPUT),
                    native_kernel=TORCH_KERNEL, native_bias=torch_bias, adaptive_pool=(6, 6))


class AlexNetKeras(_OneColumn):
    """A Keras-style one-column net, kept exactly as written.

    conv 64@11x11/4 valid on 224 -> max-pool 3/2 -> 192@5x5 same -> max-pool -> 384@3x3 same ->
    256@3x3 same -> max-pool -> dense 4096 -> dense 4096 -> dense 1000 (softmax in the loss).
    As written it has only FOUR conv layers (AlexNet has five) and no dropout: we keep it faithful.
    """

    PAPER_INPUT = 224

    @staticmethod
    def _convs(input_size: int) -> list[tuple]:
        k, s, pad = (11, 4, _VALID) if input_size >= 100 else stem(input_size)
        return [("conv1", 64, k, s, pad, False, True), ("conv2", 192, 5, 1, "SAME", False, True),
                ("conv3", 384, 3, 1, "SAME", False, False), ("conv4", 256, 3, 1, "SAME", False, True)]

    def __init__(self, *, num_classes: int = 1000, input_size: int = 224, width: float = 1.0,
                 dtype=jnp.float32, init: str = "native", rngs: nnx.Rngs):
        self.num_classes, self.input_size = num_classes, input_size
        fcs = [("fc5", 4096, False), ("fc6", 4096, False), ("fc7", num_classes, False)]
        self._build(self._convs(input_size), fcs, input_size=input_size, width=width, dtype=dtype, rngs=rngs,
                    init=init, paper_convs=self._convs(self.PAPER_INPUT),
                    native_kernel=nnx.initializers.glorot_uniform())   # Keras' default


class AlexNetBN(_OneColumn):
    """The PyTorch-style AlexNet with BatchNorm after every conv (conv -> BN -> ReLU -> pool).

    96@11x11/4 valid on 227 -> pool -> 256@5x5 pad 2 -> pool -> 384, 384, 256 @3x3 pad 1 -> pool
    -> dropout -> 9216->4096 -> dropout -> 4096->4096 -> 4096->num_classes (default 10).
    BatchNorm uses batch statistics in training and running averages (momentum 0.9, i.e. torch's
    0.1) in evaluation.
    """

    PAPER_INPUT = 227

    @staticmethod
    def _convs(input_size: int) -> list[tuple]:
        k, s, pad = (11, 4, _VALID) if input_size >= 100 else stem(input_size)
        return [("conv1", 96, k, s, pad, False, True), ("conv2", 256, 5, 1, _SAME2, False, True),
                ("conv3", 384, 3, 1, _SAME1, False, False), ("conv4", 384, 3, 1, _SAME1, False, False),
                ("conv5", 256, 3, 1, _SAME1, False, True)]

    def __init__(self, *, num_classes: int = 10, input_size: int = 227, width: float = 1.0,
                 dtype=jnp.float32, init: str = "native", rngs: nnx.Rngs):
        self.num_classes, self.input_size = num_classes, input_size
        fcs = [("fc6", 4096, True), ("fc7", 4096, True), ("fc8", num_classes, False)]
        self._build(self._convs(input_size), fcs, input_size=input_size, width=width, dtype=dtype, rngs=rngs,
                    init=init, paper_convs=self._convs(self.PAPER_INPUT),
                    native_kernel=TORCH_KERNEL, native_bias=torch_bias, batchnorm=True)
