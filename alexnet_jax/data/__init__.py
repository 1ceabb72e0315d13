"""Datasets and input pipelines (TFDS array_record read without TensorFlow; augmentation on the device).

Import-light: ``import alexnet_jax.data`` (and ``alexnet_jax.data.catalog``) imports neither
tensorflow_datasets nor jax; the names below are loaded on first use.  Modules, each importing only
those above it:

catalog      DATASETS, AUGMENTS, STORES, dataset_names(): the accepted names (``imagenet2012/raw256``, ...)
records      what a stored record is: STORED_SHAPES (the one stored-shape table), the TFDS features,
             the tf.Example parser
files        source files and photos: read_idx (the one IDX reader), iter_image_files, decode_images
datasets     where datasets live: data dirs, a dataset's folder and TFDS metadata, ``Dataset``
sources      RecordSource: the one reader of a prepared split, with the one bad-image rule
cache        decoded splits (.npz) and mean images cached beside a dataset
listing      prepare, 1: the source listed per dataset (tar walkers, carved splits)
shards       prepare, 2: the array_record shards and the TFDS metadata written
preparation  prepare(name, source, data_dir): staging, lock, checks, resume; locate(config) -> Dataset
loader       make_train_loader (infinite, resumable, per-process uint8 batches with stream positions),
             make_eval_loader (one padded, masked pass)
augment      Augment / make_augment: preprocessing + augmentation in JAX, inside the jitted step
"""

from __future__ import annotations

import importlib

from alexnet_jax.errors import DatasetNotPreparedError, PreparationError, SourceError

from .catalog import AUGMENTS, DATASETS, STORES, dataset_names

_LAZY = {
    "Augment": "augment", "make_augment": "augment", "IMAGENET_EIGVAL": "augment", "IMAGENET_EIGVEC": "augment",
    "CIFAR_CHANNEL_MEAN": "augment",
    "TrainLoader": "loader", "EvalLoader": "loader", "make_train_loader": "loader", "make_eval_loader": "loader",
    "STORED_SHAPES": "records", "stored_shape_of": "records",
    "Dataset": "datasets", "dataset_at": "datasets", "dataset_dir": "datasets", "resolve_data_dir": "datasets",
    "RecordSource": "sources", "ArraySplit": "cache", "load_array_split": "cache", "mean_image": "cache",
    "clear_disk_cache": "cache",
    "prepare": "preparation", "locate": "preparation", "ensure_prepared": "preparation",
    "dataset_info": "preparation",
    "read_idx": "files", "iter_image_files": "files", "read_image_files": "files", "decode_images": "files",
}

__all__ = ["AUGMENTS", "DATASETS", "STORES", "DatasetNotPreparedError", "PreparationError", "SourceError",
           "dataset_names", *sorted(_LAZY)]


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value
