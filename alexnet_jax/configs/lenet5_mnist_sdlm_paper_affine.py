"""`lenet5_mnist_sdlm_paper` on LC98's distorted training set (§III: 0.8% test error): 9 affine
distortions of every training image made once, besides the originals (`augment=lenet_affine_fixed`)."""

from alexnet_jax.configs.lenet5_mnist_sdlm_paper import get_config as _base


def get_config():
    return _base().replace(augment="lenet_affine_fixed")
