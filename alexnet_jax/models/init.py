"""How the AlexNets' weights, biases and input scale start (`Config.init`): the paper's rule (K12 §5), the
gain-matched `paper_scaled`, He, and each net's own published rule (`native`).  The models read an
`Init` per net; experiments/REPRODUCTION.md keeps the readings.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from alexnet_jax.models.layers import constant, normal

# Inputs.  Every pipeline feeds AlexNets centred raw RGB in 0..255 units (K12 §2; the paper's
# N(0, 0.01) init assumes that scale).  The nets built for unit-variance inputs (torchvision, Keras,
# the BatchNorm net: PyTorch's / Keras' default inits) divide by the ImageNet per-channel standard
# deviation first, which is exactly torchvision's Normalize(mean, std) given centred pixels.
IMAGENET_STD = (58.395, 57.12, 57.375)

PAPER_STD = 0.01                                              # K12 §5: every weight N(0, 0.01)
PAPER_BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")   # K12 §5: biases 1 there, 0 elsewhere
INIT_RULES = ("native", "paper", "paper_scaled", "he")
# PyTorch's default for Conv2d and Linear (reset_parameters): kaiming_uniform_(a=sqrt(5)) on the weight, i.e.
# U(-1/sqrt(F), 1/sqrt(F)) with F the fan-in, and the bias U(-1/sqrt(F), 1/sqrt(F))
TORCH_KERNEL = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias(fan_in: int) -> Callable:
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


@dataclasses.dataclass(frozen=True)
class Init:
    """How a net's weights, biases and input scale start (`Config.init`).

    paper         K12 §5: weights N(0, 0.01), biases 1 in conv2, conv4, conv5, fc6 and fc7 (0 elsewhere),
                  inputs centred raw RGB (0..255 units).
    paper_scaled  the paper's rule with each layer's gain kept: std 0.01 * sqrt(F_full / F), where F is the
                  layer's fan-in and F_full its fan-in in the same net at full width and its published input
                  size (`reference`), so that a narrow or CIFAR-sized net's layers scale their inputs by the
                  same factors as the full-size paper net's.  At full width and size it is the paper's rule.
    he            He-normal weights (std sqrt(2 / F)), zero biases, inputs divided by the ImageNet channel
                  std (the unit scale He init assumes).
    native        the net's own rule (`native_kernel`, `native_bias`), inputs at unit scale: `paper` for the
                  2012 nets; PyTorch's Conv2d / Linear default for torchvision's net and the BatchNorm net
                  (weights and biases U(-1/sqrt(F), 1/sqrt(F)), i.e. kaiming_uniform with a = sqrt(5));
                  Keras' default for the Keras net (Glorot-uniform weights, zero biases).
    """

    rule: str
    reference: dict[str, int]                  # layer -> fan-in at full width and the published input size
    native_kernel: Callable | None = None      # None: the net's native rule is the paper's
    native_bias: Callable[[int], Callable] | None = None   # fan-in -> bias initialiser (None: zeros)

    def __post_init__(self):
        if self.rule not in INIT_RULES:
            raise ValueError(f"unknown init {self.rule!r}; valid: {', '.join(INIT_RULES)}")

    @property
    def _effective(self) -> str:
        return "paper" if self.rule == "native" and self.native_kernel is None else self.rule

    def kernel(self, layer: str, fan_in: int) -> Callable:
        rule = self._effective
        if rule == "paper":
            return normal(PAPER_STD)
        if rule == "paper_scaled":
            return normal(PAPER_STD * math.sqrt(self.reference[layer] / fan_in))
        if rule == "he":
            return normal(math.sqrt(2.0 / fan_in))
        return self.native_kernel

    def bias(self, layer: str) -> float:
        return 1.0 if self._effective in ("paper", "paper_scaled") and layer in PAPER_BIAS_ONE else 0.0

    def bias_init(self, layer: str, fan_in: int) -> Callable:
        if self._effective == "native" and self.native_bias is not None:
            return self.native_bias(fan_in)
        return constant(self.bias(layer))

    @property
    def input_std(self) -> tuple[float, float, float] | None:
        """The per-channel std the inputs are divided by (None: centred raw RGB, as K12 §2)."""
        return None if self._effective in ("paper", "paper_scaled") else IMAGENET_STD
