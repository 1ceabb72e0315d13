"""LeNet-5 on MNIST, the LC98 reproduction (paper: 0.95% test error; 0.8% with distortions).

    alexnet-jax prepare mnist --source ../shared/data/mnist
    alexnet-jax train --config lenet5_mnist --workdir runs/lenet5_mnist

20 passes with the published schedule's shape (rate x1 for 2 passes, x0.4 for 3, x0.2 for 3,
x0.1 for 4, then x0.02; LC98 App. C), trained with the paper-AlexNet SGD with momentum at batch 32
(alexnet_jax/optim.py) instead of the paper's stochastic diagonal Levenberg-Marquardt, which
`lenet5_mnist_sdlm` uses; the RBF output head with fixed codes is on.
"""

from alexnet_jax.config import Config
from alexnet_jax.optim import LENET_PAPER_EPOCH_BOUNDARIES, LENET_PAPER_FACTORS


def get_config() -> Config:
    return Config(model="lenet5", head="rbf", num_classes=10, input_size=32, dataset="mnist",
                  augment="lenet", batch_size=32, num_epochs=20, lr=0.005, lr_schedule="steps",
                  lr_boundaries=tuple(float(b) for b in LENET_PAPER_EPOCH_BOUNDARIES),
                  lr_factors=LENET_PAPER_FACTORS, weight_decay=0.0, eval_every_epochs=1,
                  checkpoint_every_steps=2000, log_every_steps=200)
