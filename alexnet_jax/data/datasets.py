"""Where prepared datasets live (TFDS' layout: ``<data_dir>/<name>[/<store>]/<version>/`` with
``dataset_info.json``, ``features.json``, the shards; ``data_dir``: ``--data-dir``, else ``$TFDS_DATA_DIR``,
else ``~/tensorflow_datasets``), their TFDS metadata, and ``Dataset``: what the loaders, the augmentation
and the run's checks read from it, read once."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from alexnet_jax.errors import ConfigError, DatasetNotPreparedError

from .catalog import VERSIONS, dataset_names, split_name
from .records import stored_shape_of


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    d = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return Path(os.path.expanduser(str(d))).resolve()


def prepare_command(dataset: str, data_dir: str | os.PathLike) -> str:
    src = " --source PATH" if dataset != "digits" else ""
    return f"alexnet-jax prepare {dataset}{src} --data-dir {data_dir}"


def dataset_root(dataset: str, data_dir: str | os.PathLike | None = None) -> Path:
    """``<data_dir>/<name>[/<store>]``: the folder holding the version folders (TFDS' layout)."""
    base, store = split_name(dataset)
    root = resolve_data_dir(data_dir) / base
    return root / store if store else root


def find_dataset_dir(dataset: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The prepared ``<data_dir>/<name>[/<store>]/<version>`` dir (our version preferred, else the newest)."""
    root = dataset_root(dataset, data_dir)
    if not root.is_dir():
        return None
    versions = [p.name for p in root.iterdir()
                if re.fullmatch(r"\d+\.\d+\.\d+", p.name) and (p / "dataset_info.json").is_file()]
    if not versions:
        return None
    ours = VERSIONS.get(split_name(dataset)[0])
    v = ours if ours in versions else max(versions, key=lambda v: tuple(map(int, v.split("."))))
    return root / v


def dataset_dir(dataset: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Path of the prepared dataset; raises DatasetNotPreparedError (with the prepare command) if absent."""
    if dataset not in dataset_names():
        split_name(dataset)                   # raises, naming the valid names
    root = resolve_data_dir(data_dir)
    path = find_dataset_dir(dataset, root)
    if path is None:
        hint = ""
        if dataset in ("mnist", "cifar10", "imagenet2012"):
            hint = (f" (or, with TensorFlow and internet: `tfds build {dataset} --file_format=array_record "
                    f"--data_dir {root}`)")
        raise DatasetNotPreparedError(
            f"dataset {dataset!r} is not prepared: no {dataset_root(dataset, root)}/<version>/dataset_info.json "
            f"(searched data_dir {root}). Prepare it with:\n  {prepare_command(dataset, root)}{hint}")
    info = json.loads((path / "dataset_info.json").read_text())
    fmts = {info.get("fileFormat", "")} | set(info.get("alternativeFileFormats", []) or [])
    if "array_record" not in fmts:
        raise DatasetNotPreparedError(
            f"dataset {dataset!r} at {path} is stored as {sorted(f for f in fmts if f) or 'tfrecord'}, "
            f"which has no random access and needs TensorFlow. Re-prepare it in array_record format:\n"
            f"  {prepare_command(dataset, root)}")
    return path


def tfds_lines(name: str) -> list[str]:
    """The lines of a text file shipped inside tensorflow_datasets (``datasets/imagenet2012/labels.txt``)."""
    return Path(os.fspath(tfds.core.tfds_path(name))).read_text().strip().splitlines()


def imagenet_synsets() -> list[str]:
    """The 1000 ILSVRC-2012 wnids in TFDS label order (labels.txt shipped inside tensorflow_datasets)."""
    return tfds_lines("datasets/imagenet2012/labels.txt")


# ----------------------------------------------------------------------------------------------------
# a prepared dataset, read once
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Dataset:
    """A prepared dataset: where it is and what its records hold (``locate(config)`` / ``dataset_at``)."""

    name: str                               # e.g. "imagenet2012/raw256"
    path: Path                              # <data_dir>/<name>/<version>
    num_classes: int
    class_names: tuple[str, ...]
    splits: dict[str, int]                  # examples per split
    stored_shape: tuple[int, int, int]      # (H, W, C) of the uint8 images the loaders deliver
    image_shape: tuple[int, int, int] | None = None   # model input (s, s, C) of the config it was located for
    encoding: str = "encoded"               # "raw": uint8 bytes of stored_shape; "encoded": PNG / JPEG
    static_shape: bool = True               # every record's image is stored_shape (else fitted when read)
    name_feature: str | None = None         # the text feature naming an example ("file_name" / "id")
    shards: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = dataclasses.field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.path.parents[1 if split_name(self.name)[1] is None else 2]

    def split_shards(self, split: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """(shard files, records per shard) of ``split``."""
        if split not in self.shards:
            raise ConfigError(f"{self.name} at {self.path} has no split {split!r}; it has {', '.join(self.shards)}")
        return self.shards[split]



_OPENED: dict = {}


def dataset_at(path: str | os.PathLike, name: str | None = None) -> Dataset:
    """The ``Dataset`` in a version folder (read once per metadata mtime; ValueError against STORED_SHAPES)."""
    path = Path(path)
    f = path / "dataset_info.json"
    key = (str(path.resolve()), name, f.stat().st_mtime_ns if f.exists() else None)
    if key not in _OPENED:
        _OPENED[key] = _read_dataset(path, name)
    return _OPENED[key]


def _read_dataset(path: Path, name: str | None) -> Dataset:
    info = tfds.builder_from_directory(str(path)).info
    name = name or (f"{info.name}/{info.config_name}" if info.config_name else info.name)
    shape = stored_shape_of(name)
    feat = info.features["image"]
    feat_shape = tuple(feat.shape or ())
    static = len(feat_shape) == 3 and all(isinstance(d, int) for d in feat_shape)
    if static and feat_shape != shape:
        raise ValueError(f"{path}: images of shape {feat_shape}, but {name} is stored as {shape}")
    if isinstance(feat, tfds.features.Image):
        encoding = "encoded"
    elif (isinstance(feat, tfds.features.Tensor) and np.dtype(feat.np_dtype) == np.uint8
          and feat._encoding == tfds.features.Encoding.BYTES and static):
        encoding = "raw"
    else:
        raise ValueError(f"{path}: image feature {feat!r} is neither an image nor uint8 bytes of a fixed shape")
    label = info.features["label"]
    return Dataset(name=name, path=path, num_classes=int(label.num_classes), class_names=tuple(label.names),
                   splits={k: int(v.num_examples) for k, v in info.splits.items()}, stored_shape=shape,
                   encoding=encoding, static_shape=static,
                   name_feature=next((k for k in ("file_name", "id") if k in info.features), None),
                   shards={k: (tuple(os.fspath(p) for p in v.filepaths), tuple(int(n) for n in v.shard_lengths))
                           for k, v in info.splits.items()})
