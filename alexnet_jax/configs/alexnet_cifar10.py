"""A CIFAR-sized two-column AlexNet (32x32 input, small stem; see models/alexnet.py).

    alexnet-jax prepare cifar10 --source ../shared/data/cifar10/cifar10_train_jpeg.tar.gz
    alexnet-jax train --config alexnet_cifar10 --workdir runs/alexnet_cifar10 --set width=0.25

The paper's recipe scaled down: SGD momentum 0.9, weight decay 5e-4, lr 0.01 divided by 10 when the
validation error stops improving (at most 3 times), random crops + flips, per-pixel mean subtraction.
The shared CIFAR-10 copy has no test split, so evaluation uses the held-out `validation` split.
"""

from alexnet_jax.config import Config


def get_config() -> Config:
    return Config(model="alexnet", num_classes=10, input_size=32, width=0.5, dataset="cifar10",
                  augment="cifar", eval_split="validation", batch_size=128, num_epochs=30, lr=0.01,
                  lr_schedule="plateau", plateau_patience=2, plateau_max_drops=3, eval_every_epochs=1,
                  checkpoint_every_steps=500, log_every_steps=50, mesh_model=1)
