"""LeNet-5 on MNIST set up exactly as LC98 trained it (§III, App. C): its criterion, its curvature
estimate, its rates.

    alexnet-jax prepare mnist --source ../shared/data/mnist
    alexnet-jax train --config lenet5_mnist_sdlm_paper --workdir runs/lenet5_mnist_sdlm_paper

The published net (sparse C3, trainable subsampling, fixed-code RBF output units) trained on LC98's
criterion, eq. 9 with the constant j = 84 (loss=lc98; experiments/REPRODUCTION.md says why 84), by
stochastic diagonal Levenberg-Marquardt: each parameter steps by lr / (mu + h_kk), mu = 0.02, h_kk the
paper's layer-by-layer estimate (sdlm_curvature=paper) on 500 training patterns before each pass, one
pattern per update, 20 passes at the published rates 0.0005 (2 passes), 0.0002 (3), 0.0001 (3),
0.00005 (4), 0.00001 (the rest).  Measured here, these rates do not train: the loss leaves its starting
value within the first hundred patterns and the net stays at chance (README).  `lenet5_mnist_sdlm` is this
setting at a tenth of the rates.
"""

from alexnet_jax.config import LC98_J, Config
from alexnet_jax.optim import LENET_PAPER_EPOCH_BOUNDARIES, LENET_PAPER_FACTORS, LENET_PAPER_LRS


def get_config() -> Config:
    return Config(model="lenet5", head="rbf", num_classes=10, input_size=32, dataset="mnist", augment="lenet",
                  loss="lc98", lc98_j=LC98_J, optimizer="sdlm", sdlm_curvature="paper", sdlm_mu=0.02,
                  sdlm_samples=500, momentum=0.0, weight_decay=0.0, batch_size=1, num_epochs=20,
                  lr=LENET_PAPER_LRS[0], lr_schedule="steps",
                  lr_boundaries=tuple(float(b) for b in LENET_PAPER_EPOCH_BOUNDARIES),
                  lr_factors=LENET_PAPER_FACTORS, eval_every_epochs=1, checkpoint_every_steps=60000,
                  log_every_steps=6000)
