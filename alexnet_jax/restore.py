"""A workdir's checkpoint restored onto the devices present, for evaluation and analysis
(`restore_workdir`, `evaluate_workdir`: `alexnet-jax eval`, the tools, the experiments' analyses).

Restoring needs no dataset: the Trainer carries the run's device augmentation when the dataset is
prepared here, else a per-channel mean stands in for the training mean image.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import data as data_lib
from alexnet_jax import parallel
from alexnet_jax.config import Config
from alexnet_jax.data.records import stored_shape_of
from alexnet_jax.trainer import Trainer, TrainState
from alexnet_jax.workdir import StopFlag, load_config

log = logging.getLogger("alexnet_jax")


@dataclasses.dataclass
class Restored:
    """A workdir's checkpoint restored onto the devices present (`restore_workdir`)."""

    workdir: str
    config: Config             # as trained (trainer.config has the mesh it was restored onto)
    trainer: Trainer
    state: TrainState
    meta: dict[str, Any]
    step: int

    @property
    def model(self) -> nnx.Module:
        return self.trainer.model(self.state)


def restore_workdir(workdir: str, *, mesh: Mesh | None = None, step: int | None = None,
                    batch_size: int | None = None, data_dir: str | None = None) -> Restored:
    """The newest usable checkpoint of `workdir` (or `step`), restored onto `mesh` (default: every
    device present; the columns of a two-column net split over 2 devices when there are 2+; one
    device is fine, so a checkpoint saved on two devices opens on one CPU for analysis).

    Its Trainer carries the run's device augmentation when the dataset is prepared here (for `eval`);
    without the dataset, the per-channel mean stands in for the training mean image (for the tools'
    photos), with a warning.  Its learning-rate schedule is the run's: boundaries in epochs of the
    steps per epoch the checkpoint records."""
    workdir = os.path.abspath(workdir)
    config = load_config(workdir)
    mesh = mesh if mesh is not None else parallel.make_mesh(-1, -1)
    if batch_size is None:   # the training batch, rounded up to what this mesh splits evenly
        n = mesh.devices.size
        batch_size = -(-config.batch_size // n) * n
    here = config.replace(mesh_data=mesh.shape["data"], mesh_model=mesh.shape["model"],
                          **({"data_dir": data_dir} if data_dir else {}))
    trainer = Trainer.build(here, mesh, batch_size=batch_size, augment=_augment_or_stand_in(here, workdir))
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    try:
        restored = checkpointer.restore(trainer.abstract_state, step=step, config=config.to_dict())
    finally:
        checkpointer.close()
    if restored is None:
        raise ckpt_lib.CheckpointError(f"no checkpoint under {os.path.join(workdir, 'checkpoints')}: train first "
                                       f"(alexnet-jax train --workdir {workdir})")
    state, meta, got = restored
    trainer = trainer.with_steps_per_epoch(_steps_per_epoch(meta, here))
    return Restored(workdir=workdir, config=config, trainer=trainer, state=state, meta=meta, step=int(got))


def _steps_per_epoch(meta: dict[str, Any], config: Config) -> int:
    """The run's steps per epoch as its checkpoint records them; a checkpoint of format 1 does not: then the
    dataset's training examples // batch (the loader's rule on one process) when it is prepared here."""
    if meta.get("steps_per_epoch"):
        return int(meta["steps_per_epoch"])
    if "imported" in meta:   # a published net brought in by alexnet_jax.zoo: no schedule of its own ran here
        return 1
    try:
        return max(1, data_lib.dataset_info(config).splits[config.train_split] // config.batch_size)
    except data_lib.DatasetNotPreparedError:
        log.warning("the checkpoint does not record its steps per epoch and %s is not prepared here: the restored "
                    "Trainer's learning-rate boundaries (lr_boundaries, in epochs) are not the run's", config.dataset)
        return 1


def _augment_or_stand_in(config: Config, workdir: str | None = None):
    """The run's device augmentation; where its dataset is not prepared here, a per-channel mean stands in
    for the training mean image (the tools' photos), with a warning.  An imported net's preprocessing
    (config.preprocess) needs no dataset (its mean image, for caffe, is in `workdir`)."""
    try:
        return data_lib.make_augment(config, workdir=workdir)
    except data_lib.DatasetNotPreparedError:
        if config.augment in ("alexnet", "cifar"):
            log.warning("%s is not prepared here: subtracting a per-channel mean instead of the training mean "
                        "image", config.dataset)
        return data_lib.make_augment(config, stored_shape=stored_shape_of(config.dataset), mean="stand-in")


def evaluate_workdir(workdir: str, *, split: str | None = None, ten_crop: bool | None = None,
                     mesh: Mesh | None = None, data_dir: str | None = None) -> dict[str, Any]:
    """Evaluate a workdir's newest usable checkpoint on every device present.  A signal (Ctrl-C) stops it
    at the next batch (Interrupted; nothing is written)."""
    r = restore_workdir(workdir, mesh=mesh, data_dir=data_dir)
    config = r.trainer.config
    ten_crop = config.ten_crop if ten_crop is None else ten_crop
    split = split or config.eval_split
    plan = r.trainer.plan
    batches = data_lib.make_eval_loader(config, split, batch_size=plan.per_process_batch,
                                        process_index=plan.feed_index, process_count=plan.feed_count)
    with StopFlag() as stop:
        if jax.process_count() == 1:      # several processes must agree to stop: they evaluate to the end
            batches = stop.interruptible(batches, f"the evaluation of {r.workdir} (step {r.step}, {split})")
        metrics = r.trainer.evaluate(r.state, batches, ten_crop=ten_crop)
    return dict(metrics, split=split, step=r.step, ten_crop=ten_crop, devices=int(r.trainer.mesh.devices.size))
