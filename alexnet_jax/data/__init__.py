"""Datasets and input pipelines (TFDS array_record read without TensorFlow; augmentation on the device).

Import-light: ``import alexnet_jax.data`` (and ``alexnet_jax.data.catalog``) imports neither
tensorflow_datasets nor jax; the names below are loaded on first use.

catalog      DATASETS, AUGMENTS, STORES, dataset_names(): the accepted names (``imagenet2012/raw256``, ...)
preparation prepare(name, source, data_dir): build a dataset offline (staging, resume, process pool)
sources      ensure_prepared / dataset_dir / dataset_info / RecordSource / load_array_split / mean_image
loader       make_train_loader (infinite, resumable, per-process uint8 batches with stream positions),
             make_eval_loader (one padded, masked pass)
augment      Augment / make_augment: preprocessing + augmentation in JAX, inside the jitted step
files        read_idx, iter_image_files / read_image_files, decode_images (photos -> stored shape)
"""

from __future__ import annotations

import importlib

from .catalog import AUGMENTS, DATASETS, STORES, dataset_names

_LAZY = {
    "Augment": "augment", "make_augment": "augment", "IMAGENET_EIGVAL": "augment", "IMAGENET_EIGVEC": "augment",
    "CIFAR_CHANNEL_MEAN": "augment",
    "TrainLoader": "loader", "EvalLoader": "loader", "make_train_loader": "loader", "make_eval_loader": "loader",
    "DatasetInfo": "sources", "DatasetNotPreparedError": "sources", "RecordSource": "sources",
    "ArraySplit": "sources", "dataset_dir": "sources", "dataset_info": "sources", "ensure_prepared": "sources",
    "load_array_split": "sources", "mean_image": "sources", "resolve_data_dir": "sources",
    "stored_shape": "sources",
    "prepare": "preparation", "SourceError": "preparation",
    "read_idx": "files", "iter_image_files": "files", "read_image_files": "files", "decode_images": "files",
}

__all__ = ["AUGMENTS", "DATASETS", "STORES", "dataset_names", *sorted(_LAZY)]


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value
