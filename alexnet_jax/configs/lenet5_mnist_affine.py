"""LeNet-5 on MNIST with random affine distortions (LC98 §III: 0.8% test error)."""

from alexnet_jax.configs.lenet5_mnist import get_config as _base


def get_config():
    return _base().replace(augment="lenet_affine")
