"""The analysis tools' inputs: image files, folders and tars, a dataset split, class names.

`alexnet-jax --help` imports every tool module: tensorflow_datasets is imported where it is used (alexnet_jax/cli.py).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import logging
import os
import re
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from alexnet_jax import data as data_lib
from alexnet_jax.data.files import decode, decode_error, decode_fit
from alexnet_jax.errors import InputFileError

log = logging.getLogger("alexnet_jax.tools")

_SAMPLE_NAME = re.compile(r"^(n\d{8})_(.+)$")


# ------------------------------------------------------------------------------------------------
# Images: files / folders / tars, and a dataset split
# ------------------------------------------------------------------------------------------------
def _skipping(path: str, why: str) -> None:
    log.warning("skipping %s: %s", path, why)


def read_image_files(paths, limit: int | None = None) -> list[tuple[str, bytes]]:
    """(full relative name, encoded bytes) of every image among `paths` (files, folders, tars).  A named
    file that is not an image or cannot be read is skipped with one warning naming it; a missing path,
    or no image at all, is an error (InputNotFoundError)."""
    return data_lib.read_image_files(paths, limit, skip=_skipping)


def sample_label(name: str) -> tuple[str, str] | None:
    """(wnid, name) from a file named like the shared ImageNet samples, `<wnid>_<name>.JPEG`."""
    m = _SAMPLE_NAME.match(Path(name).stem)
    return (m.group(1), m.group(2).replace("_", " ")) if m else None


def torchvision_fit(data: bytes, size: int) -> np.ndarray:
    """An encoded photo as torchvision's ImageNet transform sees it before its centre crop: decoded whole,
    Resize(size) (shorter side to `size`, the longer to int(size * long / short), Pillow bilinear with its
    antialiasing, as torchvision's resize of a PIL image), then the centre size x size kept with
    torchvision's CenterCrop offsets (round((h - size) / 2)).  The device's centre crop of this
    (Augment.eval: offset (size - s) // 2, an even difference for s = 224) is then exactly CenterCrop(s)."""
    arr = decode(data, 3)
    h, w, _ = arr.shape
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    nw, nh = (size, new_long) if w <= h else (new_long, size)
    if (nw, nh) != (w, h):
        arr = np.asarray(Image.fromarray(arr).resize((nw, nh), Image.BILINEAR), np.uint8)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return np.ascontiguousarray(arr[top:top + size, left:left + size])


def display_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The centre `size` crop of a stored image (what the model sees, before mean subtraction)."""
    h, w = img.shape[:2]
    if h <= size and w <= size:
        return img
    t, l = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[t:t + size, l:l + size]


def decode_files(items: list[tuple[str, bytes]], fit, source: str) -> tuple[list[str], np.ndarray]:
    """(names, stored images) of the (name, bytes) `items` that `fit(bytes)` decodes; each one it cannot
    is skipped with one warning naming the file.  None decodable: InputFileError."""
    names, stored = [], []
    for name, data in items:
        try:
            stored.append(fit(data))
        except Exception as e:  # noqa: BLE001 - any decoder error: name the file, keep the others
            _skipping(name, f"cannot be decoded ({decode_error(e) if data else 'an empty file'})")
            continue
        names.append(name)
    if not stored:
        raise InputFileError(f"none of the {len(items)} image file(s) in {source} can be decoded (see the warnings "
                             f"above): give JPEG, PNG or other image files Pillow reads")
    return names, np.stack(stored)


@dataclasses.dataclass
class Inputs:
    x: np.ndarray                 # float32 (N, s, s, C): model inputs (the run's evaluation preprocessing)
    display: list[np.ndarray]     # uint8 (s, s, C) crops for figures
    names: list[str]
    labels: list[int | None]
    source: str
    mean: str                     # what was subtracted: the training mean image, or what stood in for it
    pick: str = ""                # which examples of the source, and how they were chosen


# ------------------------------------------------------------------------------------------------
# Which examples of a split: a fixed, seeded, class-balanced pick
# ------------------------------------------------------------------------------------------------
PICK_SEED = 0                 # the default seed of balanced_pick (tools' --seed)
PICK_SCAN_MAX = 100_000       # a larger split is picked from this many records drawn at random


def _priority(seed: int, key) -> int:
    """A fixed pseudo-random 64-bit rank of one example, from the seed and the example's own key."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest(), "little")


def balanced_pick(labels, n: int, *, seed: int = PICK_SEED, keys=None) -> np.ndarray:
    """Indices of `n` examples (all of them if there are fewer) taken from every class in turn.

    Each example gets a fixed pseudo-random rank from (`seed`, its key); within a class the examples
    are taken in rank order, and the classes take turns in a seeded order of their labels.  So any
    prefix of the pick holds every class in equal shares, give or take one (until a class runs out of
    examples), and the first examples are of different classes.  With `keys` (e.g. record names) the
    pick is the same examples in the same order however the split is stored; without them the keys are
    the storage positions.
    """
    labels = np.asarray(labels).reshape(-1)
    keys = range(len(labels)) if keys is None else list(keys)
    if len(keys) != len(labels):
        raise ValueError(f"{len(keys)} keys for {len(labels)} labels")
    rank = np.array([_priority(seed, k) for k in keys], np.uint64)
    by_class = np.lexsort((rank, labels))                              # label, then rank within it
    sorted_labels = labels[by_class]
    first = np.searchsorted(sorted_labels, sorted_labels, side="left")
    within = np.arange(len(labels)) - first                            # position within its class
    classes = np.unique(labels)
    turn = np.empty(len(classes), np.int64)
    turn[np.random.default_rng(seed).permutation(len(classes))] = np.arange(len(classes))
    class_turn = turn[np.searchsorted(classes, sorted_labels)]
    order = by_class[np.lexsort((class_turn, within))]                 # round by round, classes in turn
    return order[:max(0, min(int(n), len(labels)))]


def pick_from_split(source, n: int | None, seed: int = PICK_SEED) -> tuple[np.ndarray, str]:
    """(record indices, how they were chosen) of `n` examples of a split (`RecordSource`), chosen by
    `balanced_pick` on the records' labels and names: a split is stored sorted by class, so its first
    records are one class.  A split of more than `PICK_SCAN_MAX` records is picked from that many of
    its records drawn with the seed (reading every label of a large split would take long)."""
    total = len(source)
    n = total if n is None else min(int(n), total)
    scan = np.arange(total)
    if total > PICK_SCAN_MAX:
        scan = np.sort(np.random.default_rng(seed).choice(total, PICK_SCAN_MAX, replace=False))
    labels, names = [], []
    for i in scan:                  # keep each record's label and name only, not its image
        rec = source.record(int(i))
        labels.append(rec["label"])
        names.append(rec["name"])
    picked = scan[balanced_pick(labels, n, seed=seed, keys=names)]
    classes = len(set(labels))
    how = f"{n} of {total:,}, class-balanced over {classes} classes, seed {seed}"
    if total > PICK_SCAN_MAX:
        how += f", from {PICK_SCAN_MAX:,} records drawn at random"
    return picked, how


def describe_mean(augment, preprocess: str = "dataset") -> str:
    m = augment.mean
    if m is None:
        return "none"
    if preprocess != "dataset":
        what = "mean image" if np.ndim(m) == 3 else f"per-channel mean {np.round(np.float64(m), 3).tolist()}"
        return f"the imported net's ({preprocess}) {what}"
    return "training-split mean image" if np.ndim(m) == 3 else f"per-channel mean {np.round(m, 2).tolist()}"


def load_inputs(restored, *, images=None, dataset=None, split=None, limit=None, data_dir=None,
                seed: int = PICK_SEED) -> Inputs:
    """Model inputs from image files (`images`: each photo's shorter side resized and its centre kept,
    to the run's stored shape, with torchvision's own arithmetic for `preprocess=torchvision`,
    `torchvision_fit`; the first `limit`) or from a prepared dataset split (default: the checkpoint's dataset
    and eval split; `limit` examples picked by `pick_from_split` with `seed`), then the run's own evaluation
    preprocessing on the device (Trainer.augment.eval)."""
    augment = restored.trainer.augment
    if images:
        items = read_image_files(images, limit)
        source = ", ".join(map(str, images))
        if restored.config.preprocess == "torchvision":
            names, stored = decode_files(items, lambda b: torchvision_fit(b, augment.stored_shape[0]), source)
        else:
            names, stored = decode_files(items, lambda b: decode_fit(b, augment.stored_shape), source)  # decode_images'
        labels = [None] * len(names)
        how = f"{len(names)} image files in the order given (inside folders and tars by name)"
        if len(names) < len(items):
            how += f", {len(items) - len(names)} undecodable skipped"
    else:
        cfg = restored.config.replace(dataset=dataset) if dataset else restored.config
        cfg = cfg.replace(data_dir=data_dir) if data_dir else cfg
        split = split or cfg.eval_split
        src = data_lib.RecordSource(data_lib.locate(cfg), split)
        picked, how = pick_from_split(src, limit, seed)
        n = len(picked)
        stored, labels, names = np.zeros((n, *src.shape), np.uint8), np.zeros(n, int), [""] * n
        ok = src.read_into(picked, stored, labels, names)    # undecodable images: reported, left out
        stored, names, labels = stored[ok], [m for m, k in zip(names, ok) if k], labels[ok].tolist()
        source = f"{cfg.dataset}:{split}"
    if not len(stored):
        raise InputFileError(f"no decodable images in {source} (see the warnings above)")
    x = np.asarray(jax.jit(augment.eval)(stored))
    return Inputs(x=x, display=[display_crop(d, augment.input_size) for d in stored], names=names,
                  labels=labels, source=source, mean=describe_mean(augment, restored.config.preprocess), pick=how)


# ------------------------------------------------------------------------------------------------
# Class names
# ------------------------------------------------------------------------------------------------
def imagenet_synsets() -> list[str]:
    """The 1000 ILSVRC-2012 wnids in TFDS label order (sorted), from tensorflow_datasets' labels.txt."""
    from alexnet_jax.data.datasets import imagenet_synsets as synsets  # lazy (--help): tensorflow_datasets

    return synsets()


def imagenet_readable_names() -> dict[str, str]:
    """{wnid: human-readable name} for the 1000 ILSVRC-2012 classes, offline, or {} if unavailable.

    tensorflow_datasets ships no wnid->name table for imagenet2012, but its SI-Score module carries
    the standard 1000 ImageNet class names in label order (`IMAGENET_LABELS_LIST`, the same order as
    labels.txt: sorted wnids).  It is read as text (not imported); the first synonym is kept.
    """
    try:
        import tensorflow_datasets as tfds  # lazy (--help)

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


