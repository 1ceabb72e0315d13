"""Named recipes: `get_config(name) -> Config`, one small module per recipe."""

from __future__ import annotations

import importlib

from alexnet_jax.config import Config, ConfigError

CONFIGS = ("lenet5_digits", "lenet5_mnist", "lenet5_mnist_affine", "lenet5_mnist_sdlm", "lenet5_mnist_sdlm_affine",
           "lenet5_mnist_sdlm_paper", "lenet5_mnist_sdlm_paper_affine", "alexnet_cifar10", "alexnet_imagenet")
DEFAULT = "lenet5_digits"


def get_config(name: str = DEFAULT) -> Config:
    if name not in CONFIGS:
        raise ConfigError(f"unknown config {name!r}; valid configs: {', '.join(CONFIGS)}")
    return importlib.import_module(f"alexnet_jax.configs.{name}").get_config()
