"""The two-column AlexNet at CIFAR-10 scale: 32x32 inputs (small stem, see models/alexnet.py), width 0.5.

    alexnet-jax prepare cifar10 --source ../shared/data/cifar10/cifar10_train_jpeg.tar.gz
    alexnet-jax train --config alexnet_cifar10 --workdir runs/alexnet_cifar10

The paper's recipe scaled down: SGD momentum 0.9, weight decay 5e-4, batch 128, random crops + flips,
per-pixel mean subtraction; a fixed schedule of 20 epochs (lr 0.01, divided by 10 after epochs 12 and
17) so that the run ends in about an hour on 2 CPU cores.  He initialisation, not the paper's N(0, 0.01):
at this width and input size the paper's rule leaves an input-dependent logit spread of 3e-4 and the
net sits at chance (`alexnet-jax init-stats`; README, "Why the paper's init starves narrow nets").  The
columns split over two devices when two are present (mesh_model follows the devices).  The shared
CIFAR-10 copy has no test split: `validation` (5,000 images) is for choices, `test` (5,000) for reports.
"""

from alexnet_jax.config import Config


def get_config() -> Config:
    return Config(model="alexnet", num_classes=10, input_size=32, width=0.5, init="he", dataset="cifar10",
                  augment="cifar", eval_split="validation", batch_size=128, num_epochs=20, lr=0.01,
                  lr_schedule="steps", lr_boundaries=(12.0, 17.0), lr_factors=(0.1, 0.01), eval_every_epochs=1,
                  checkpoint_every_steps=500, log_every_steps=50)
