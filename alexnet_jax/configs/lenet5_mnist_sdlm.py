"""LeNet-5 on MNIST trained as LC98 trained it: stochastic diagonal Levenberg-Marquardt (App. C).

    alexnet-jax prepare mnist --source ../shared/data/mnist
    alexnet-jax train --config lenet5_mnist_sdlm --workdir runs/lenet5_mnist_sdlm

The published net (sparse C3, trainable subsampling, fixed-code RBF output units), 20 passes, no
momentum or weight decay; each parameter steps by lr / (mu + h_kk), mu = 0.02, with h_kk the diagonal
Gauss-Newton estimate recomputed on 500 training patterns before each pass (alexnet_jax/sdlm.py).  Updated after
every pattern (batch 1), as the paper did.  The global rate follows the published schedule's shape (x1
for 2 passes, x0.4 for 3, x0.2 for 3, x0.1 for 4, then x0.02) from 0.00005, a tenth of the paper's
0.0005: with the exact Gauss-Newton diagonal of our loss (softmax cross-entropy on the RBF penalties) the
curvature estimate is far below mu for most parameters (90% of them at initialisation, 99% after one
pass), so most steps run at the cap eta / mu; over one pass at batch 1, eta = 0.0005 and 0.0002 leave
the net at chance, 0.0001 learns with loss bursts (11.7% test error), 0.00005 learns steadily (3.2%).
0.00005 is the largest of {0.0005, 0.0002, 0.0001, 0.00005} whose first-pass training loss never rises
above its first window (chosen on training loss only; README, experiments/lenet5_mnist.py --curvature).
About 40 s a pass on one CPU core (20 passes: ~14 min).
"""

from alexnet_jax.config import Config
from alexnet_jax.optim import LENET_PAPER_EPOCH_BOUNDARIES, LENET_PAPER_FACTORS


def get_config() -> Config:
    return Config(model="lenet5", head="rbf", num_classes=10, input_size=32, dataset="mnist", augment="lenet",
                  optimizer="sdlm", sdlm_mu=0.02, sdlm_samples=500, momentum=0.0, weight_decay=0.0,
                  batch_size=1, num_epochs=20, lr=0.00005, lr_schedule="steps",
                  lr_boundaries=tuple(float(b) for b in LENET_PAPER_EPOCH_BOUNDARIES),
                  lr_factors=LENET_PAPER_FACTORS, eval_every_epochs=1, checkpoint_every_steps=60000,
                  log_every_steps=6000)
