"""The analysis tools' inputs: image files, folders and tars, a dataset split, class names.

Kept import-light at module level (no JAX): `alexnet-jax --help` imports every tool module.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path

import numpy as np

log = logging.getLogger("alexnet_jax.tools")

_SAMPLE_NAME = re.compile(r"^(n\d{8})_(.+)$")


# ------------------------------------------------------------------------------------------------
# Images: files / folders / tars, and a dataset split
# ------------------------------------------------------------------------------------------------
def read_image_files(paths, limit: int | None = None) -> list[tuple[str, bytes]]:
    """(full relative name, encoded bytes) of every image among `paths` (files, folders, tars)."""
    from alexnet_jax.data import read_image_files as read

    return read(paths, limit)


def sample_label(name: str) -> tuple[str, str] | None:
    """(wnid, name) from a file named like the shared ImageNet samples, `<wnid>_<name>.JPEG`."""
    m = _SAMPLE_NAME.match(Path(name).stem)
    return (m.group(1), m.group(2).replace("_", " ")) if m else None


def display_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The centre `size` crop of a stored image (what the model sees, before mean subtraction)."""
    h, w = img.shape[:2]
    if h <= size and w <= size:
        return img
    t, l = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[t:t + size, l:l + size]


@dataclasses.dataclass
class Inputs:
    x: np.ndarray                 # float32 (N, s, s, C): model inputs (the run's evaluation preprocessing)
    display: list[np.ndarray]     # uint8 (s, s, C) crops for figures
    names: list[str]
    labels: list[int | None]
    source: str
    mean: str                     # what was subtracted: the training mean image, or what stood in for it


def describe_mean(augment) -> str:
    m = augment.mean
    if m is None:
        return "none"
    return "training-split mean image" if np.ndim(m) == 3 else f"per-channel mean {np.round(m, 2).tolist()}"


def load_inputs(restored, *, images=None, dataset=None, split=None, limit=None, data_dir=None) -> Inputs:
    """Model inputs from image files (`images`: each photo's shorter side resized and its centre kept,
    to the run's stored shape) or from a prepared dataset split (default: the checkpoint's dataset and
    eval split), then the run's own evaluation preprocessing on the device (Trainer.augment.eval)."""
    import jax

    from alexnet_jax import data as data_lib

    augment = restored.trainer.augment
    if images:
        items = read_image_files(images, limit)
        stored = data_lib.decode_images(augment, [b for _, b in items])
        names, labels, source = [n for n, _ in items], [None] * len(items), ", ".join(map(str, images))
    else:
        from alexnet_jax.data.sources import RecordSource

        cfg = restored.config.replace(dataset=dataset) if dataset else restored.config
        cfg = cfg.replace(data_dir=data_dir) if data_dir else cfg
        split = split or cfg.eval_split
        src = RecordSource(data_lib.ensure_prepared(cfg), split)
        n = min(len(src), limit) if limit else len(src)
        recs = [src.record(i) for i in range(n)]
        stored = np.stack([src.decode(r) for r in recs]) if recs else np.zeros((0, *src.shape), np.uint8)
        names, labels = [r["name"] for r in recs], [r["label"] for r in recs]
        source = f"{cfg.dataset}:{split}"
    if not len(stored):
        raise ValueError(f"no images in {source}")
    x = np.asarray(jax.jit(augment.eval)(stored))
    return Inputs(x=x, display=[display_crop(d, augment.input_size) for d in stored], names=names,
                  labels=labels, source=source, mean=describe_mean(augment))


# ------------------------------------------------------------------------------------------------
# Class names
# ------------------------------------------------------------------------------------------------
def imagenet_synsets() -> list[str]:
    """The 1000 ILSVRC-2012 wnids in TFDS label order (sorted), from tensorflow_datasets' labels.txt."""
    from alexnet_jax.data.preparation import imagenet_synsets as synsets

    return synsets()


def imagenet_readable_names() -> dict[str, str]:
    """{wnid: human-readable name} for the 1000 ILSVRC-2012 classes, offline, or {} if unavailable.

    tensorflow_datasets ships no wnid->name table for imagenet2012, but its SI-Score module carries
    the standard 1000 ImageNet class names in label order (`IMAGENET_LABELS_LIST`, the same order as
    labels.txt: sorted wnids).  It is read as text (not imported); the first synonym is kept.
    """
    import ast

    try:
        import tensorflow_datasets as tfds

        src = Path(os.fspath(tfds.core.tfds_path("datasets/siscore/labels.py"))).read_text()
        m = re.search(r"IMAGENET_LABELS_LIST\s*=\s*(\[.*?\])", src, re.S)
        names = ast.literal_eval(m.group(1)) if m else []
        wnids = imagenet_synsets()
    except (OSError, ValueError, SyntaxError, ImportError) as e:   # pragma: no cover - depends on the install
        log.warning("no ImageNet class names available offline: %s", e)
        return {}
    if len(names) != len(wnids):   # pragma: no cover
        return {}
    return {w: n.split(",")[0].strip() for w, n in zip(wnids, names, strict=True)}


@dataclasses.dataclass
class ClassNames:
    ids: list[str]       # the dataset's class names (wnids for ImageNet), or class_<i>
    names: list[str]     # human-readable where known, else the id
    source: str


def class_names(config) -> ClassNames:
    """Class names of a checkpoint: its dataset's (dataset_info(config).class_names) when the dataset
    is prepared here; else, for a 1000-way model, the ILSVRC-2012 wnids; else class_<index>.
    ImageNet wnids are given readable names from `imagenet_readable_names()`."""
    from alexnet_jax import data as data_lib

    k = int(config.num_classes)
    try:
        ids, source = list(data_lib.dataset_info(config).class_names), f"dataset {config.dataset}"
    except data_lib.DatasetNotPreparedError:
        if k == 1000:
            ids, source = imagenet_synsets(), "ILSVRC-2012 synsets (tensorflow_datasets labels.txt)"
        else:
            ids, source = [f"class_{i}" for i in range(k)], "index (dataset not prepared)"
    if len(ids) != k:
        ids, source = [f"class_{i}" for i in range(k)], f"index ({len(ids)} dataset names for {k} outputs)"
    readable = imagenet_readable_names() if any(_SAMPLE_NAME.match(f"{i}_x") for i in ids) else {}
    if readable:
        source += " + ImageNet names (tensorflow_datasets siscore/labels.py)"
    return ClassNames(ids=ids, names=[readable.get(i, i) for i in ids], source=source)


