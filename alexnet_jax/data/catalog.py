"""The names the data layer accepts (no heavy imports: the config checks them before anything runs)."""

from __future__ import annotations

DATASETS = ("digits", "mnist", "cifar10", "imagenet2012")
AUGMENTS = ("none", "lenet", "lenet_affine", "cifar", "alexnet")


def dataset_names() -> tuple[str, ...]:
    return DATASETS
