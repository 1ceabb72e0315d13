"""alexnet_jax: LeNet-5 and AlexNet, faithful and fast, in JAX/Flax NNX.

Layering (arrows point at what a part may import):
  cli / experiments / tools -> train, configs (and models, data, parallel for analysis)
  train -> models, parallel, data, optim, checkpoint
  parallel -> models
  models import none of train, data, cli.
"""

__version__ = "0.1.0"
