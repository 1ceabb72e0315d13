"""Datasets and input pipelines (TFDS array_record; numpy in memory or grain; TensorFlow is never imported).

prepare()          build a dataset offline from local source files (see prepare.py)
ensure_prepared()  locate a prepared dataset (auto-prepares `digits`) or raise DatasetNotPreparedError
dataset_info()     name, classes, split sizes, model input shape
make_train_iter()  infinite, resumable, per-process-sharded training batches (see pipeline.py: in-memory
                   numpy path for splits that fit, streaming grain path otherwise)
make_eval_iter()   one padded, masked pass over a split (optionally ten-crop)
"""

import importlib

_EXPORTS = {
    "pipeline": ("AUGMENTS", "IMAGENET_EIGVAL", "IMAGENET_EIGVEC", "ArrayEvalIterator", "ArraySplit",
                 "ArrayTrainIterator", "DatasetInfo", "EvalIterator", "Preprocessor", "TrainIterator",
                 "dataset_info", "load_array_split", "make_eval_iter", "make_preprocessor", "make_train_iter"),
    "prepare": ("DATASETS", "DatasetNotPreparedError", "dataset_dir", "ensure_prepared", "prepare",
                "resolve_data_dir"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    """Lazy: importing alexnet_jax.data (or its light catalog) does not import tensorflow_datasets."""
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
