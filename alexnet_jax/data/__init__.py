"""Datasets and input pipelines (TFDS array_record; numpy in memory or grain; TensorFlow is never imported).

prepare()          build a dataset offline from local source files (see prepare.py)
ensure_prepared()  locate a prepared dataset (auto-prepares `digits`) or raise DatasetNotPreparedError
dataset_info()     name, classes, split sizes, model input shape
make_train_iter()  infinite, resumable, per-process-sharded training batches (see pipeline.py: in-memory
                   numpy path for splits that fit, streaming grain path otherwise)
make_eval_iter()   one padded, masked pass over a split (optionally ten-crop)
"""

from .pipeline import (
    AUGMENTS,
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    ArrayEvalIterator,
    ArraySplit,
    ArrayTrainIterator,
    DatasetInfo,
    EvalIterator,
    Preprocessor,
    TrainIterator,
    dataset_info,
    load_array_split,
    make_eval_iter,
    make_preprocessor,
    make_train_iter,
)
from .prepare import (
    DATASETS,
    DatasetNotPreparedError,
    dataset_dir,
    ensure_prepared,
    prepare,
    resolve_data_dir,
)

__all__ = [
    "AUGMENTS", "DATASETS", "IMAGENET_EIGVAL", "IMAGENET_EIGVEC", "ArrayEvalIterator", "ArraySplit",
    "ArrayTrainIterator", "DatasetInfo", "DatasetNotPreparedError", "EvalIterator", "Preprocessor",
    "TrainIterator", "dataset_dir", "dataset_info", "ensure_prepared", "load_array_split", "make_eval_iter",
    "make_preprocessor", "make_train_iter", "prepare", "resolve_data_dir",
]
