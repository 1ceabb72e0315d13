"""The full 2012 recipe (Krizhevsky et al. 2012; K12 §5; K12 §6).

    alexnet-jax prepare imagenet2012 --source /path/to/ILSVRC2012_tars --data-dir $TFDS_DATA_DIR
    alexnet-jax train --config alexnet_imagenet --workdir runs/alexnet_imagenet   # 2 devices: columns split

Batch 128, 90 epochs, SGD momentum 0.9, weight decay 5e-4, lr 0.01 divided by 10 when the
validation error stops improving (three times), 224 crops (+3 px conv1 padding, as cuda-convnet)
with flips and PCA lighting noise, per-pixel mean subtraction, 10-view testing.
Published: 1 CNN 40.7% top-1 / 18.2% top-5 validation error on ILSVRC-2012 (K12 Table 2).
"""

from alexnet_jax.config import Config


def get_config() -> Config:
    return Config(model="alexnet", num_classes=1000, input_size=224, dataset="imagenet2012",
                  augment="alexnet", eval_split="validation", batch_size=128, num_epochs=90, lr=0.01,
                  momentum=0.9, weight_decay=5e-4, lr_schedule="plateau", plateau_patience=2,
                  plateau_max_drops=3, eval_every_epochs=1, ten_crop=True, num_workers=8,
                  checkpoint_every_steps=2000, log_every_steps=100, init="paper")
