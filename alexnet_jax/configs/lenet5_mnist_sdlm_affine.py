"""`lenet5_mnist_sdlm` with random affine distortions drawn on the fly (LC98 §III: 0.8% test error; the
paper trained on 540,000 distortions generated once, here each pattern is distorted anew each pass)."""

from alexnet_jax.configs.lenet5_mnist_sdlm import get_config as _base


def get_config():
    return _base().replace(augment="lenet_affine")
