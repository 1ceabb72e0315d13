"""LeNet-5 on MNIST trained as LC98 trained it: stochastic diagonal Levenberg-Marquardt (App. C).

    alexnet-jax prepare mnist --source ../shared/data/mnist
    alexnet-jax train --config lenet5_mnist_sdlm --workdir runs/lenet5_mnist_sdlm

The published net (sparse C3, trainable subsampling, fixed-code RBF output units), 20 passes, no
momentum or weight decay; each parameter steps by lr / (mu + h_kk), mu = 0.02, with h_kk the diagonal
Gauss-Newton estimate recomputed on 500 training patterns before each pass (alexnet_jax/sdlm.py).  The
global rate follows the published schedule's shape (x1 for 2 passes, x0.4 for 3, x0.2 for 3, x0.1 for 4,
then x0.02) from 0.0002 instead of the paper's 0.0005: with the exact Gauss-Newton diagonal of our loss
(softmax cross-entropy on the RBF penalties) the paper's first rate makes the training loss rise from
2.3 to ~15 in the first pass at batch 32, and 0.0002 is the largest of {0.0005, 0.0002, 0.0001} whose
first-pass training loss never rises (chosen on training loss only; README).  The paper updated after
every pattern; this recipe updates after 32 (experiments/lenet5_mnist.py --batch1-steps measures batch 1).
"""

from alexnet_jax.config import Config
from alexnet_jax.optim import LENET_PAPER_EPOCH_BOUNDARIES, LENET_PAPER_FACTORS


def get_config() -> Config:
    return Config(model="lenet5", head="rbf", num_classes=10, input_size=32, dataset="mnist", augment="lenet",
                  optimizer="sdlm", sdlm_mu=0.02, sdlm_samples=500, momentum=0.0, weight_decay=0.0,
                  batch_size=32, num_epochs=20, lr=0.0002, lr_schedule="steps",
                  lr_boundaries=tuple(float(b) for b in LENET_PAPER_EPOCH_BOUNDARIES),
                  lr_factors=LENET_PAPER_FACTORS, eval_every_epochs=1, checkpoint_every_steps=2000,
                  log_every_steps=200)
