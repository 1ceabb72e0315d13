"""Datasets and input pipelines (TFDS array_record read without TensorFlow; augmentation on the device).

Import-light: ``import alexnet_jax.data`` (and ``.catalog``) imports neither tensorflow_datasets nor jax;
the names below load on first use.  Modules, each importing only those above it:

catalog, records  the accepted names; what a stored record is (STORED_SHAPES, features, tf.Example parser)
files             source files and photos: read_idx (the one IDX reader), iter_image_files, decode_images
datasets          where datasets live: data dirs, a dataset's folder and TFDS metadata, ``Dataset``
sources, cache    RecordSource: the one reader, with the one bad-image rule; decoded splits, mean images
listing, shards, preparation  prepare(name, source, data_dir): the source listed, the shards and metadata
                  written, staging, lock, checks, resume; locate(config) -> Dataset
loader, augment   make_train_loader / make_eval_loader: uint8 batches; make_augment: JAX, in the step
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
