"""The analysis tools' inputs: image files, folders and tars, a dataset split, class names.

Kept import-light at module level (no JAX): `alexnet-jax --help` imports every tool module.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

log = logging.getLogger("alexnet_jax.tools")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".webp", ".tif", ".tiff")
# Used only when the checkpoint's training set is not prepared on this machine, so that its mean image
# cannot be computed: the usual ImageNet per-channel RGB mean (0..255), a close stand-in for the mean
# image that `augment=alexnet` subtracts.
IMAGENET_RGB_MEAN = (123.68, 116.78, 103.94)
_SAMPLE_NAME = re.compile(r"^(n\d{8})_(.+)$")


# ------------------------------------------------------------------------------------------------
# Images: files / folders / tars, and a dataset split
# ------------------------------------------------------------------------------------------------
def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS) and not os.path.basename(name).startswith(".")


def read_image_files(paths: Iterable[str], limit: int | None = None) -> list[tuple[str, bytes]]:
    """(name, encoded bytes) of every image among `paths` (files, folders searched recursively, tars)."""
    items: list[tuple[str, bytes]] = []
    for p in map(Path, paths):
        if p.is_dir():
            items += [(str(f.relative_to(p)), f.read_bytes()) for f in sorted(p.rglob("*"))
                      if f.is_file() and _is_image(f.name)]
        elif p.is_file() and _is_image(p.name):
            items.append((p.name, p.read_bytes()))
        elif p.is_file() and tarfile.is_tarfile(p):
            with tarfile.open(p, "r:*") as tar:
                members = sorted((m for m in tar.getmembers() if m.isfile() and _is_image(m.name)),
                                 key=lambda m: m.name)
                items += [(m.name, tar.extractfile(m).read()) for m in members]
        elif not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        else:
            raise ValueError(f"{p}: not an image, a folder or a tar archive")
    if not items:
        raise FileNotFoundError(f"no images found in {', '.join(map(str, paths))}")
    return items[:limit] if limit else items


def sample_label(name: str) -> tuple[str, str] | None:
    """(wnid, name) from a file named like the shared ImageNet samples, `<wnid>_<name>.JPEG`."""
    m = _SAMPLE_NAME.match(Path(name).stem)
    return (m.group(1), m.group(2).replace("_", " ")) if m else None


def preprocessor(config):
    """(Preprocessor, how the mean was obtained) matching the checkpoint's evaluation inputs.

    The training split's mean image needs the dataset; when it is not prepared here, the per-channel
    mean stands in (alexnet: IMAGENET_RGB_MEAN, cifar: the library's CIFAR-10 channel mean)."""
    from alexnet_jax import data as data_lib
    from alexnet_jax.data.pipeline import CIFAR_CHANNEL_MEAN, Preprocessor

    try:
        return data_lib.make_preprocessor(config), f"{config.dataset} training-split mean"
    except data_lib.DatasetNotPreparedError:
        channels = 1 if config.model.startswith("lenet") else 3
        mean, how = None, "none"
        if config.augment == "alexnet":
            mean, how = np.array(IMAGENET_RGB_MEAN, np.float32), "ImageNet per-channel mean"
        elif config.augment == "cifar":
            mean, how = np.array(CIFAR_CHANNEL_MEAN, np.float32), "CIFAR-10 per-channel mean"
        if mean is not None and channels == 1:
            mean = mean.mean(keepdims=True)
        log.warning("%s is not prepared: subtracting the %s instead of the training mean image",
                    config.dataset, how)
        how += " (dataset not prepared)"
        return Preprocessor(config.augment, int(config.input_size), channels, mean=mean), how


def decode_image(pre, data: bytes) -> np.ndarray:
    """Encoded image -> uint8 (H, W, C) as the pipeline decodes it, except that for `cifar` a
    non-square photo is resized on its shorter side and centre-cropped instead of squashed."""
    if pre.augment == "cifar":
        from PIL import Image

        from alexnet_jax.data.pipeline import resize_shorter_center_crop

        with Image.open(io.BytesIO(data)) as im:
            im = resize_shorter_center_crop(im.convert("L" if pre.channels == 1 else "RGB"), pre.base_size)
            arr = np.asarray(im, np.uint8)
        return arr[..., None] if arr.ndim == 2 else arr
    return pre.decode(data)


def display_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The centre `size` crop of a decoded image (what the model sees, before mean subtraction)."""
    h, w = img.shape[:2]
    if h <= size and w <= size:
        return img
    t, l = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[t:t + size, l:l + size]


@dataclasses.dataclass
class Inputs:
    x: np.ndarray                 # float32 (N, s, s, C): model inputs
    display: list[np.ndarray]     # uint8 (s, s, C) crops for figures
    names: list[str]
    labels: list[int | None]
    source: str
    mean: str


def load_inputs(config, *, images=None, dataset=None, split=None, limit=None, data_dir=None) -> Inputs:
    """Model inputs from image files (`images`) or from a prepared dataset split (default: the
    checkpoint's dataset and eval split), preprocessed exactly as evaluation batches are."""
    pre, how = preprocessor(config)
    if images:
        items = read_image_files(images, limit)
        decoded = [decode_image(pre, data) for _, data in items]
        names, labels, source = [n for n, _ in items], [None] * len(items), ", ".join(map(str, images))
    else:
        from alexnet_jax import data as data_lib
        from alexnet_jax.data.pipeline import RecordSource

        cfg = config.replace(dataset=dataset) if dataset else config
        cfg = cfg.replace(data_dir=data_dir) if data_dir else cfg
        split = split or cfg.eval_split
        src = RecordSource(data_lib.ensure_prepared(cfg), split)
        n = min(len(src), limit) if limit else len(src)
        recs = src.__getitems__(list(range(n))) if n else []
        decoded = [pre.decode(r["image"]) for r in recs]
        names, labels = [r["name"] for r in recs], [r["label"] for r in recs]
        source = f"{cfg.dataset}:{split}"
    if not decoded:
        raise ValueError(f"no images in {source}")
    shapes = {d.shape for d in decoded}
    if len(shapes) == 1:
        x = pre.eval_batch(np.stack(decoded))
    else:
        x = np.stack([pre.eval(d) for d in decoded])
    return Inputs(x=x, display=[display_crop(d, pre.input_size) for d in decoded], names=names, labels=labels,
                  source=source, mean=how)


# ------------------------------------------------------------------------------------------------
# Class names
# ------------------------------------------------------------------------------------------------
def imagenet_synsets() -> list[str]:
    """The 1000 ILSVRC-2012 wnids in TFDS label order (sorted), from tensorflow_datasets' labels.txt."""
    from alexnet_jax.data.prepare import imagenet_synsets as synsets

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


