"""The model zoo, selected by name from configs.

Every model is a Flax NNX module built as `Model(num_classes=, input_size=, width=, dtype=, rngs=)`
and called as `model(x_BHWC, train=bool, dropout_key=key_or_None) -> logits_BK`.
Parameters are float32; `dtype` is the compute dtype (float32 or bfloat16).
"""

from __future__ import annotations

import importlib

import jax.numpy as jnp
from flax import nnx

# name -> (module, class, description, source)
MODELS: dict[str, tuple[str, str, str, str]] = {
    "lenet5": ("lenet", "LeNet5", "LeNet-5 as published: sparse C3, trainable subsampling, RBF head",
               "LeCun et al. 1998"),
    "lenet5_modern": ("lenet", "LeNet5Modern", "ReLU + max-pool, fully connected C3", "common variant"),
    "alexnet": ("alexnet", "AlexNet2012", "the 2012 two-column net (48+48 ... 2048+2048)",
                "Krizhevsky et al. 2012"),
    "alexnet_half": ("alexnet_one_column", "AlexNetHalf", "the paper's one-GPU comparison net (§3.2, fn. 2)",
                     "Krizhevsky et al. 2012"),
    "alexnet_owt": ("alexnet_one_column", "AlexNetOWT", "torchvision's one-column net (64-192-384-256-256)",
                    "torchvision / Krizhevsky 2014"),
    "alexnet_keras": ("alexnet_one_column", "AlexNetKeras", "Keras-style one-column net (four conv layers)",
                      "user-supplied Keras layout"),
    "alexnet_bn": ("alexnet_one_column", "AlexNetBN", "PyTorch-style net with BatchNorm after every conv",
                   "user-supplied PyTorch layout"),
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_class(name: str):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    module, cls, _, _ = MODELS[name]
    return getattr(importlib.import_module(f"alexnet_jax.models.{module}"), cls)


def create_model(name: str, *, num_classes: int | None = None, input_size: int | None = None,
                 width: float = 1.0, dtype: str = "float32", seed: int = 0, rngs: nnx.Rngs | None = None,
                 **kwargs) -> nnx.Module:
    """Build model `name`; `None` arguments take the model's published defaults."""
    cls = model_class(name)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    kw = dict(width=width, dtype=DTYPES[dtype], rngs=rngs if rngs is not None else nnx.Rngs(seed), **kwargs)
    if num_classes is not None:
        kw["num_classes"] = num_classes
    if input_size is not None:
        kw["input_size"] = input_size
    return cls(**kw)
