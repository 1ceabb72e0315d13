"""Offline preparation of the datasets as TFDS ``array_record`` datasets (no TensorFlow, no network).

``prepare(name, source, data_dir)`` converts local source files into ``<data_dir>/<dataset>[/<store>]/
<version>/``, which ``tfds.builder_from_directory`` reads (and, for the stock layouts, ``tfds.data_source``).
The datasets keep the TFDS catalog names, versions and features (``mnist`` 3.0.1, ``cifar10`` 3.0.2,
``imagenet2012`` 5.1.0), so a data_dir filled by ``tfds build NAME --file_format=array_record`` (with TF
and internet) is read the same way.  ``digits`` (scikit-learn's 8x8 digits, upscaled to 28x28) is ours
and is prepared automatically on first use.  Stores of ImageNet (``imagenet2012/jpeg256``,
``imagenet2012/raw256``: see ``catalog``) are TFDS builder configs of ``imagenet2012``, prepared from the
same sources.

Sources (checked before anything is written; a wrong one raises ``SourceError`` and leaves nothing)
  mnist         a directory holding the four IDX ``.gz`` files (no checksum check).
  cifar10       ``cifar-10-python.tar.gz`` (or its extracted ``cifar-10-batches-py`` dir), or a
                class-per-folder image tree ``train/<class>/*`` (+ optional ``test/``) given as a
                directory or a ``.tar``/``.tar.gz`` of such a tree (a compressed tar is read into memory).
  imagenet2012  a directory with ``ILSVRC2012_img_train.tar`` (tar of per-class tars) and/or
                ``ILSVRC2012_img_val.tar`` (labels from TFDS' ``validation_labels.txt``), or a
                class-per-folder tree ``train/<wnid>/*.JPEG`` (+ optional ``val/<wnid>/*``), as a
                directory or a tar.  Uncompressed tars are read in place (members by offset), in parallel.
  digits        ignored (``sklearn.datasets.load_digits``).

How it runs
  * The source is listed first (a plan: per split, the examples in key order, cut into shards of
    ``shard_size`` records); nothing is written before the listing has succeeded.
  * Shards are written by a pool of processes (all cores by default: the decoding and re-encoding of the
    stores is the costly part) into a staging folder ``<final>.staging`` beside the final folder; each
    finished shard is renamed into place in the staging folder and marked done (``done/<split>-<shard>.json``
    with its example count, bytes and skipped files).  Progress is printed every few seconds.
  * At the end the TFDS metadata (``dataset_info.json``, ``features.json``) and ``prepare_report.json``
    (skipped files) are written and the staging folder is renamed to the final folder.
  * Resume: an interrupted prepare (Ctrl-C, a killed process, a full disk) keeps its staging folder.  The
    next ``prepare`` of the same dataset from the same source (same plan: same keys, labels, store settings
    and shard size, recorded in ``plan.json``) keeps every shard marked done and writes only the others; a
    different plan discards the staging folder and starts afresh.  A shard is the unit of work: one
    interrupted half-way is rewritten whole.  A staging folder with no finished shard is removed, so a
    failed prepare leaves no empty dataset folders behind.

Validation splits carved out of a training set (cifar10; a source without its own validation) are
stratified: per class, the last ``round(0.1 * n_class)`` items of a fixed-seed permutation of the sorted
keys (500 per class for CIFAR-10; at least one and not all when a class has 2+ items).  A CIFAR-10 folder
tree without a test split (the shared JPEG copy) also gets a ``test`` split carved the same way from what
is left (another seed; 500 per class, disjoint from validation), to be touched only by a final report:
train 40,000 / validation 5,000 / test 5,000.  Corrupt images are
reported (logged with their path) and skipped; the count and paths are in ``prepare_report.json``.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import fcntl
import hashlib
import inspect
import io
import json
import logging
import multiprocessing
import os
import pickle
import re
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from alexnet_jax.errors import AlexnetJaxError

from . import files
from .catalog import (
    DATASETS,
    JPEG256_QUALITY,
    STORE_SIZE,
    VERSIONS,
    dataset_names,
    split_name,
)
from .files import encode_png, read_idx  # noqa: F401  (re-exported: the one IDX reader)
from .sources import (
    DatasetNotPreparedError,  # noqa: F401
    dataset_dir,  # noqa: F401
    dataset_root,
    ensure_prepared,  # noqa: F401
    find_dataset_dir,
    prepare_command,
    resolve_data_dir,
)

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLIT_SEED = 0                 # seed of every deterministic split we carve
VALIDATION_FRACTION = 0.1      # per class, of the training items, when carving a validation split
DIGITS_TEST_SIZE = 360         # 20% of 1797
REPORT_FILE = "prepare_report.json"
PLAN_FILE = "plan.json"
LOCK_FILE = ".lock"
STAGING_SUFFIX = ".staging"
PROGRESS_SECONDS = 5.0
WRITER_OPTIONS = "group_size:1,uncompressed"   # random access; images do not compress further
SHARD_SIZES = {"raw256": 2048, "jpeg256": 8192, None: 4096}   # records a shard (~400 MB raw, ~200 MB jpeg)
MIN_SHARD = 256
_WNID_RE = re.compile(r"^n\d{8}$")


class SourceError(AlexnetJaxError, ValueError):
    """The ``--source`` is missing or has the wrong layout; nothing was written."""


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def check_image(data: bytes, what: str, *, force_jpeg: bool = False) -> bytes | None:
    """Return the (maybe re-encoded) image bytes, or None (logged) if they cannot be decoded.

    JPEGs are decoded at reduced DCT scale (Pillow draft), which still reads the whole entropy-coded
    stream.  With ``force_jpeg`` CMYK JPEGs and non-JPEG files are re-encoded as RGB JPEG (as the stock
    imagenet2012 builder does for its CMYK/PNG images)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            if fmt == "JPEG":
                im.draft(im.mode, (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
            im.load()
        if force_jpeg and (fmt != "JPEG" or im.mode not in ("RGB", "L")):
            with Image.open(io.BytesIO(data)) as im:
                buf = io.BytesIO()
                im.convert("RGB").save(buf, format="JPEG", quality=95)
                data = buf.getvalue()
        return data
    except Exception as e:  # noqa: BLE001 - any decoder failure means a bad file
        log.warning("skipping corrupt image %s: %s: %s", what, type(e).__name__, e)
        return None


def stratified_holdout(keys_by_class: dict[Any, list[str]], fraction: float = VALIDATION_FRACTION,
                       seed: int = SPLIT_SEED) -> set[str]:
    """Keys held out for validation: per class (in sorted class order) the last round(fraction*n) of a
    fixed-seed permutation of the sorted keys."""
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for cls in sorted(keys_by_class, key=str):
        keys = sorted(keys_by_class[cls])
        n_val = int(round(fraction * len(keys)))
        if len(keys) >= 2:
            n_val = min(max(n_val, 1), len(keys) - 1)
        perm = rng.permutation(len(keys))
        held.update(keys[i] for i in perm[len(keys) - n_val:])
    return held


def digits_to_28(img8: np.ndarray) -> np.ndarray:
    """8x8 float image with values 0..16 -> 28x28x1 uint8 0..255 (Pillow bilinear resize)."""
    from PIL import Image

    f = Image.fromarray(np.asarray(img8, np.float32) * (255.0 / 16.0), mode="F")
    up = np.asarray(f.resize((28, 28), Image.BILINEAR))
    return np.clip(np.rint(up), 0, 255).astype(np.uint8)[..., None]


def imagenet_synsets() -> list[str]:
    """The 1000 ILSVRC-2012 wnids in TFDS label order (labels.txt shipped inside tensorflow_datasets)."""
    import tensorflow_datasets as tfds

    p = tfds.core.tfds_path("datasets/imagenet2012/labels.txt")
    return Path(os.fspath(p)).read_text().strip().splitlines()


# ----------------------------------------------------------------------------------------------------
# the plan: what to write (payloads are picklable descriptions of where an image's bytes are)
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Item:
    key: str
    label: int
    payload: tuple            # ("bytes", b) | ("array", uint8) | ("file", path) | ("tar", path, offset, size)
    name: str | None = None   # file_name / id feature
    where: str = ""           # where the bytes come from, for reports


@dataclasses.dataclass
class Plan:
    dataset: str
    store: str | None
    class_names: list[str]
    splits: dict[str, list[Item]]
    source: str | None
    id_feature: str | None    # "id" | "file_name" | None


def _payload_bytes(payload: tuple) -> bytes:
    kind = payload[0]
    if kind == "bytes":
        return payload[1]
    if kind == "file":
        return Path(payload[1]).read_bytes()
    if kind == "tar":
        with open(payload[1], "rb") as f:
            f.seek(payload[2])
            return f.read(payload[3])
    raise ValueError(f"no bytes for payload {kind}")


def _payload_where(plan: Plan, item: Item) -> str:
    p = item.payload
    if p[0] == "file":
        return str(p[1])
    return f"{plan.source}:{item.key}"


def _tar_members(path: Path, split_dirs) -> list[tuple[tuple[str, ...], tuple]]:
    """[(path parts, payload)] of the image files in a tar: read in place (by offset) when uncompressed,
    else streamed into memory."""
    out = []
    try:
        with tarfile.open(path, "r:") as tar:                   # uncompressed only
            for m in tar.getmembers():
                if m.isfile() and files.is_image_name(m.name):
                    out.append((tuple(x for x in Path(m.name).parts if x not in (".", "")),
                                ("tar", str(path), m.offset_data, m.size)))
        return out
    except tarfile.ReadError:
        pass
    with tarfile.open(path, "r|*") as tar:
        for m in tar:
            if m.isfile() and files.is_image_name(m.name):
                parts = tuple(x for x in Path(m.name).parts if x not in (".", ""))
                if len(parts) >= 3 and parts[-3] in split_dirs:
                    out.append((parts, ("bytes", tar.extractfile(m).read())))
    return out


def _load_tree(src: Path, split_dirs: tuple[str, ...]) -> dict[str, dict[str, dict[str, tuple]]]:
    """{split: {class: {rel_key: payload}}} from a dir or a tar of ``<split>/<class>/<file>``; a tar may have
    one extra top-level folder."""
    tree: dict[str, dict[str, dict]] = {}

    def add(parts: tuple[str, ...], payload):
        if len(parts) < 3 or len(parts) > 4 or not files.is_image_name(parts[-1]):
            return
        split, cls = parts[-3], parts[-2]
        if split in split_dirs:
            tree.setdefault(split, {}).setdefault(cls, {})["/".join(parts[-3:])] = payload

    if src.is_dir():
        for split in split_dirs:
            d = src / split
            if d.is_dir():
                for p in sorted(d.glob("*/*")):
                    if p.is_file():
                        add((split, p.parent.name, p.name), ("file", str(p)))
    elif src.is_file() and tarfile.is_tarfile(src):
        for parts, payload in _tar_members(src, split_dirs):
            add(parts, payload)
    else:
        raise SourceError(f"{src}: neither a directory nor a tar archive")
    if "train" not in tree:
        raise SourceError(f"{src}: no {'|'.join(split_dirs)}/<class>/<image> files found (expected at least "
                          f"train/<class>/<image>)")
    return tree


def _tree_splits(name: str, src: Path, tree, split_names, class_names, *, id_feature: str,
                 carve_test: bool = False) -> dict[str, list[Item]]:
    """Items of a class-folder tree; carves ``validation`` out of ``train`` when absent, and with
    ``carve_test`` a ``test`` split too (disjoint from validation) when the source has none."""
    index = {c: i for i, c in enumerate(class_names)}
    for split, classes in tree.items():
        unknown = sorted(set(classes) - set(index))
        if unknown:
            raise SourceError(f"{name}: unknown class folder(s) {unknown[:5]} in {src}/{split}/ (expected names "
                              f"like {list(class_names[:3])})")
    splits: dict[str, dict[str, tuple[str, tuple]]] = {}
    for split in split_names:
        if split in tree:
            splits[split] = {k: (c, v) for c, fs in tree[split].items() for k, v in fs.items()}
    if "validation" not in splits:
        val = stratified_holdout({c: list(fs) for c, fs in tree["train"].items()})
        train = splits["train"]
        splits["validation"] = {k: train[k] for k in sorted(val)}
        splits["train"] = {k: v for k, v in train.items() if k not in val}
    if carve_test and "test" not in splits:
        left = {c: [k for k in fs if k in splits["train"]] for c, fs in tree["train"].items()}
        test = stratified_holdout(left, VALIDATION_FRACTION / (1 - VALIDATION_FRACTION), seed=SPLIT_SEED + 1)
        splits["test"] = {k: splits["train"][k] for k in sorted(test)}
        splits["train"] = {k: v for k, v in splits["train"].items() if k not in test}
    out = {}
    for split, items in splits.items():
        out[split] = [Item(k, index[c], p, Path(k).name if id_feature == "file_name" else k)
                      for k, (c, p) in sorted(items.items())]
    return out


def _find_cifar_batches(src: Path) -> dict[str, bytes] | None:
    """The pickled batches of the official python version (tarball or extracted dir), else None."""
    wanted = re.compile(r"^(data_batch_\d|test_batch)$")
    if src.is_dir():
        for d in (src, src / "cifar-10-batches-py"):
            fs = {p.name: p for p in d.glob("*") if wanted.match(p.name)} if d.is_dir() else {}
            if fs:
                return {n: p.read_bytes() for n, p in fs.items()}
        return None
    if tarfile.is_tarfile(src):
        with tarfile.open(src, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and wanted.match(Path(m.name).name)]
            if members:
                return {Path(m.name).name: tar.extractfile(m).read() for m in members}
    return None


def _need_source(name: str, source) -> Path:
    if not source:
        raise SourceError(f"{name}: a --source is needed ({prepare_command(name, '<data_dir>')})")
    src = Path(source).expanduser()
    if not src.exists():
        raise SourceError(f"{name}: source {src} does not exist")
    return src


def _plan_digits(store) -> Plan:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    idx = np.arange(len(d.target))
    tr, te = train_test_split(idx, test_size=DIGITS_TEST_SIZE, stratify=d.target, random_state=SPLIT_SEED)
    splits = {s: [Item(f"{i:04d}", int(d.target[i]), ("array", digits_to_28(d.images[i]))) for i in sorted(ix)]
              for s, ix in (("train", tr), ("test", te))}
    return Plan("digits", store, [str(i) for i in range(10)], splits, None, None)


MNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
               "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _plan_mnist(source, store) -> Plan:
    src = _need_source("mnist", source)
    if not src.is_dir():
        raise SourceError(f"mnist: source {src} must be a directory holding the IDX files "
                          f"({', '.join(f for p in MNIST_FILES.values() for f in p)})")
    splits = {}
    for split, names in MNIST_FILES.items():
        paths = [next((c for c in (src / n, src / n[:-3]) if c.is_file()), None) for n in names]
        if not all(paths):
            continue
        try:
            images, labels = read_idx(paths[0]), read_idx(paths[1])
        except (ValueError, OSError, EOFError) as e:
            raise SourceError(f"mnist: {e}") from e
        if len(images) != len(labels) or images.ndim != 3:
            raise SourceError(f"mnist: {paths[0]} holds {images.shape} images but {paths[1]} {len(labels)} labels")
        splits[split] = [Item(f"{i:05d}", int(labels[i]), ("array", images[i][..., None])) for i in range(len(images))]
    if not splits:
        raise SourceError(f"mnist: none of the IDX files ({', '.join(f for p in MNIST_FILES.values() for f in p)}) "
                          f"found in {src}")
    return Plan("mnist", store, [str(i) for i in range(10)], splits, str(src), None)


def _plan_cifar10(source, store) -> Plan:
    src = _need_source("cifar10", source)
    batches = _find_cifar_batches(src)
    names = list(CIFAR10_CLASSES)
    if batches is None:
        tree = _load_tree(src, ("train", "test"))
        return Plan("cifar10", store, names, _tree_splits("cifar10", src, tree, ("train", "test"), names,
                                                          id_feature="id", carve_test=True), str(src), "id")

    def load(n):
        d = pickle.loads(batches[n], encoding="bytes")
        x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, np.asarray(d[b"labels"], np.int64)

    items: dict[str, tuple] = {}
    for n in sorted(b for b in batches if b.startswith("data_batch_")):
        x, y = load(n)
        for i in range(len(y)):
            items[f"{n}_{i:05d}"] = (np.ascontiguousarray(x[i]), int(y[i]))
    by_class: dict[int, list[str]] = {}
    for k, (_, y) in items.items():
        by_class.setdefault(y, []).append(k)
    val = stratified_holdout(by_class)
    mk = lambda k: Item(k, items[k][1], ("array", items[k][0]), k)
    splits = {"train": [mk(k) for k in sorted(items) if k not in val], "validation": [mk(k) for k in sorted(val)]}
    if "test_batch" in batches:
        x, y = load("test_batch")
        splits["test"] = [Item(f"test_{i:05d}", int(y[i]), ("array", np.ascontiguousarray(x[i])), f"test_{i:05d}")
                          for i in range(len(y))]
    return Plan("cifar10", store, names, splits, str(src), "id")


def _ilsvrc_tars(src: Path) -> dict[str, Path]:
    if not src.is_dir():
        return {}
    out = {}
    for split, fname in (("train", "ILSVRC2012_img_train.tar"), ("validation", "ILSVRC2012_img_val.tar")):
        if (src / fname).is_file():
            out[split] = src / fname
    return out


def _plan_imagenet(source, store) -> Plan:
    src = _need_source("imagenet2012", source)
    synsets = imagenet_synsets()
    index = {w: i for i, w in enumerate(synsets)}
    tars = _ilsvrc_tars(src)
    if tars:
        splits = {}
        if "train" in tars:
            items = []
            with tarfile.open(tars["train"], "r:") as outer:
                for m in outer.getmembers():
                    if not m.isfile() or not m.name.endswith(".tar"):
                        continue
                    wnid = Path(m.name).name[:-4]
                    if wnid not in index:
                        raise SourceError(f"imagenet2012: {tars['train']} holds {m.name}, not an ILSVRC-2012 "
                                          f"class (<wnid>.tar)")
                    outer.fileobj.seek(m.offset_data)
                    with tarfile.open(fileobj=_Window(outer.fileobj, m.offset_data, m.size), mode="r:") as inner:
                        for im in inner.getmembers():
                            if im.isfile():
                                fname = Path(im.name).name
                                items.append(Item(fname, index[wnid], ("tar", str(tars["train"]),
                                                                      m.offset_data + im.offset_data, im.size),
                                                  fname))
            splits["train"] = sorted(items, key=lambda it: it.key)
        if "validation" in tars:
            import tensorflow_datasets as tfds

            labels_file = tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")
            labels = Path(os.fspath(labels_file)).read_text().strip().splitlines()
            with tarfile.open(tars["validation"], "r:") as tar:
                members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: Path(m.name).name)
            if len(members) > len(labels):
                raise SourceError(f"imagenet2012: {tars['validation']} holds {len(members)} files, more than the "
                                  f"{len(labels)} ILSVRC-2012 validation labels")
            splits["validation"] = [Item(Path(m.name).name, index[labels[i]],
                                         ("tar", str(tars["validation"]), m.offset_data, m.size), Path(m.name).name)
                                    for i, m in enumerate(members)]
        return Plan("imagenet2012", store, synsets, splits, str(src), "file_name")
    tree = _load_tree(src, ("train", "val", "validation"))
    if "val" in tree:
        tree["validation"] = tree.pop("val")
    folders = sorted({c for classes in tree.values() for c in classes})
    names = synsets if all(_WNID_RE.match(f) for f in folders) else folders
    return Plan("imagenet2012", store, names, _tree_splits("imagenet2012", src, tree, ("train", "validation"), names,
                                                           id_feature="file_name"), str(src), "file_name")


class _Window(io.RawIOBase):
    """A read-only window [offset, offset + size) of a seekable file (a tar member read in place)."""

    def __init__(self, f, offset: int, size: int):
        self.f, self.offset, self.size, self.pos = f, offset, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, pos, whence=0):
        self.pos = {0: pos, 1: self.pos + pos, 2: self.size + pos}[whence]
        return self.pos

    def readinto(self, b):
        n = max(0, min(len(b), self.size - self.pos))
        self.f.seek(self.offset + self.pos)
        data = self.f.read(n)
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)


def make_plan(dataset: str, source=None) -> Plan:
    """List the source (checks it: SourceError when missing or of the wrong layout)."""
    base, store = split_name(dataset)
    if base == "digits":
        return _plan_digits(store)
    if base == "mnist":
        return _plan_mnist(source, store)
    if base == "cifar10":
        return _plan_cifar10(source, store)
    return _plan_imagenet(source, store)


# ----------------------------------------------------------------------------------------------------
# features and TFDS metadata
# ----------------------------------------------------------------------------------------------------
def features_spec(dataset: str, class_names: list[str]):
    """The TFDS FeaturesDict of ``dataset`` (with its store)."""
    import tensorflow_datasets as tfds

    base, store = split_name(dataset)
    label = tfds.features.ClassLabel(names=list(class_names))
    if base in ("digits", "mnist"):
        return tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(28, 28, 1)), "label": label})
    if base == "cifar10":
        return tfds.features.FeaturesDict({"id": tfds.features.Text(),
                                           "image": tfds.features.Image(shape=(32, 32, 3)), "label": label})
    s = STORE_SIZE
    if store == "raw256":
        image = tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES)
    elif store == "jpeg256":
        image = tfds.features.Image(shape=(s, s, 3), encoding_format="jpeg")
    else:
        image = tfds.features.Image(encoding_format="jpeg")
    return tfds.features.FeaturesDict({"image": image, "label": label, "file_name": tfds.features.Text()})


DESCRIPTIONS = {
    "digits": f"sklearn.datasets.load_digits 8x8 images (0..16) upscaled bilinearly to 28x28 uint8; stratified "
              f"split test={DIGITS_TEST_SIZE} / train=rest (seed {SPLIT_SEED}).",
    "mnist": "The MNIST database of handwritten digits (prepared offline from the IDX files).",
    "cifar10": f"CIFAR-10 (prepared offline). Without a test split in the source, `validation` is carved from the "
               f"training set: {VALIDATION_FRACTION:.0%} per class, fixed seed {SPLIT_SEED}.",
    "imagenet2012": "ILSVRC-2012 (prepared offline), original JPEGs.",
    "imagenet2012/jpeg256": f"ILSVRC-2012 (prepared offline): shorter side resized to {STORE_SIZE} (antialiased "
                            f"bilinear), centre {STORE_SIZE}x{STORE_SIZE} kept, re-encoded as JPEG quality "
                            f"{JPEG256_QUALITY}.",
    "imagenet2012/raw256": f"ILSVRC-2012 (prepared offline): shorter side resized to {STORE_SIZE} (antialiased "
                           f"bilinear), centre {STORE_SIZE}x{STORE_SIZE} kept, stored as raw uint8.",
}


def _builder(dataset: str, class_names: list[str], data_dir: str):
    """A TFDS builder that only carries the DatasetInfo (we write the records ourselves)."""
    import tensorflow_datasets as tfds
    from etils import epath

    base, store = split_name(dataset)

    class _Info(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = base
        VERSION = tfds.core.Version(VERSIONS[base])
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=store, description=DESCRIPTIONS[dataset])] if store else []

        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls):   # the stock one needs importlib_resources for a class defined in a package
            return epath.Path(inspect.getfile(cls))

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, description=DESCRIPTIONS[dataset],
                                         features=features_spec(dataset, class_names),
                                         supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):   # never called: prepare() writes the records
            raise NotImplementedError

        def _generate_examples(self, **kwargs):
            raise NotImplementedError

    return _Info(data_dir=data_dir, config=store, file_format="array_record")


def _shard_name(dataset: str, split: str, shard: int, num_shards: int) -> str:
    # TFDS' default template: {DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}
    return f"{split_name(dataset)[0]}-{split}.array_record-{shard:05d}-of-{num_shards:05d}"


# ----------------------------------------------------------------------------------------------------
# shard writing (runs in the worker processes)
# ----------------------------------------------------------------------------------------------------
_FEATURES: dict = {}


def _encode(plan_meta: dict, item: Item, where: str) -> Any:
    """The image feature value of ``item`` for the store, or None (reported) when the image is bad."""
    store, base = plan_meta["store"], plan_meta["base"]
    kind = item.payload[0]
    if kind == "array":                      # our own decoded arrays (mnist, digits, cifar pickles)
        return encode_png(item.payload[1])
    try:
        data = _payload_bytes(item.payload)
    except OSError as e:
        log.warning("skipping unreadable image %s: %s", where, e)
        return None
    if store is None:
        return check_image(data, where, force_jpeg=base == "imagenet2012")
    try:
        arr = files.decode_fit(data, (STORE_SIZE, STORE_SIZE, 3))
    except Exception as e:  # noqa: BLE001 - any decoder failure means a bad file
        log.warning("skipping corrupt image %s: %s: %s", where, type(e).__name__, e)
        return None
    return arr if store == "raw256" else files.encode_jpeg(arr, plan_meta["quality"])


def write_shard(task: dict) -> dict:
    """Write one shard (``task``: see ``_tasks``) to ``task['path']`` via a temporary file; returns
    {"n", "bytes", "skipped"}."""
    from array_record.python import array_record_module

    key = (task["dataset"], tuple(task["class_names"]))
    feats = _FEATURES.get(key)
    if feats is None:
        feats = _FEATURES[key] = features_spec(task["dataset"], task["class_names"])
    tmp = task["path"] + ".tmp"
    writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
    n = nbytes = 0
    skipped = []
    try:
        for item in task["items"]:
            image = _encode(task["meta"], item, item.where)
            if image is None:
                skipped.append(item.where)
                continue
            ex = {"image": image, "label": item.label}
            if task["id_feature"]:
                ex[task["id_feature"]] = item.name or item.key
            rec = feats.serialize_example(ex)
            writer.write(rec)
            n += 1
            nbytes += len(rec)
    finally:
        writer.close()
    os.replace(tmp, task["path"])
    return {"n": n, "bytes": nbytes, "skipped": skipped}


# ----------------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------------
def _plan_digest(plan: Plan, shard_size: int, quality: int) -> dict:
    h = hashlib.sha256()
    for split in sorted(plan.splits):
        h.update(split.encode())
        for it in plan.splits[split]:
            h.update(f"\0{it.key}\0{it.label}".encode())
    return {"dataset": plan.dataset if not plan.store else f"{plan.dataset}/{plan.store}", "source": plan.source,
            "shard_size": shard_size, "quality": quality if plan.store == "jpeg256" else None,
            "items_sha256": h.hexdigest(), "splits": {k: len(v) for k, v in plan.splits.items()}}


def _remove_empty_parents(path: Path, stop: Path) -> None:
    path = path.parent
    while path != stop and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent


class _Progress:
    def __init__(self, name: str, total: int, done: int, stream=None):
        self.name, self.total, self.done, self.start_done = name, total, done, done
        self.t0 = self.last = time.perf_counter()
        self.stream = stream or sys.stderr

    def update(self, n: int, force: bool = False) -> None:
        self.done += n
        now = time.perf_counter()
        if force or now - self.last >= PROGRESS_SECONDS:
            self.last = now
            rate = (self.done - self.start_done) / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta_s = f"{eta / 60:.1f} min" if np.isfinite(eta) else "?"
            pct = 100 * self.done / max(self.total, 1)
            print(f"prepare {self.name}: {self.done:,}/{self.total:,} images ({pct:.0f}%), {rate:,.0f} img/s, "
                  f"ETA {eta_s}", file=self.stream, flush=True)


def prepare(dataset: str, source: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
            *, overwrite: bool = False, workers: int | None = None, shard_size: int | None = None,
            quality: int = JPEG256_QUALITY) -> Path:
    """Build ``dataset`` (a name of ``dataset_names()``, e.g. ``imagenet2012/raw256``) from ``source`` into
    ``data_dir`` (array_record); returns the dataset dir.  An existing prepared dataset is reused unless
    ``overwrite``.  ``workers``: processes writing shards (default: all cores; 0: in this process).
    Module docstring: staging, resume, progress."""
    base, store = split_name(dataset)          # raises for unknown names, listing the valid ones
    root = resolve_data_dir(data_dir)
    final = dataset_root(dataset, root) / VERSIONS[base]
    existing = find_dataset_dir(dataset, root)
    if existing is not None and existing.name == VERSIONS[base]:
        if not overwrite:
            log.info("%s already prepared at %s", dataset, existing)
            return existing
    if store is not None and base != "imagenet2012":
        raise ValueError(f"stores exist only for imagenet2012; valid dataset names: {', '.join(dataset_names())}")
    t0 = time.perf_counter()
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    plan = make_plan(dataset, source)          # checks the source: nothing is written before this succeeds
    shard_size = int(shard_size or SHARD_SIZES.get(store, SHARD_SIZES[None]))
    digest = _plan_digest(plan, shard_size, quality)
    staging = final.parent / (final.name + STAGING_SUFFIX)
    done_dir = staging / "done"
    new_staging = not staging.is_dir()
    staging.mkdir(parents=True, exist_ok=True)
    lock = open(staging / LOCK_FILE, "w")          # noqa: SIM115 - held until the end of prepare
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise RuntimeError(f"another prepare of {dataset} is writing {staging}; wait for it to finish") from None
    try:
        return _prepare_locked(dataset, plan, digest, staging, done_dir, final, root, shard_size, quality, workers,
                               new_staging, t0)
    finally:
        lock.close()


def _prepare_locked(dataset, plan, digest, staging, done_dir, final, root, shard_size, quality, workers,
                    new_staging, t0) -> Path:
    base, store = split_name(dataset)
    if not new_staging:
        try:
            old = json.loads((staging / PLAN_FILE).read_text())
        except (OSError, ValueError):
            old = None
        if old != digest:
            log.warning("discarding %s: it was started from a different source or settings", staging)
            for p in staging.iterdir():
                if p.name != LOCK_FILE:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
    done_dir.mkdir(parents=True, exist_ok=True)
    (staging / PLAN_FILE).write_text(json.dumps(digest, indent=1))

    meta = {"store": store, "base": base, "quality": int(quality)}
    tasks, done, total = [], {}, 0
    for split, items in plan.splits.items():
        num_shards = max(1, -(-len(items) // shard_size))
        for s in range(num_shards):
            chunk = items[s * shard_size:(s + 1) * shard_size]
            for it in chunk:
                it.where = _payload_where(plan, it)
            name = _shard_name(dataset, split, s, num_shards)
            marker = done_dir / f"{split}-{s:05d}.json"
            total += len(chunk)
            if marker.is_file() and (staging / name).is_file():
                done[(split, s)] = json.loads(marker.read_text())
                continue
            tasks.append({"dataset": dataset, "class_names": plan.class_names, "id_feature": plan.id_feature,
                          "meta": meta, "items": chunk, "split": split, "shard": s, "num_shards": num_shards,
                          "path": str(staging / name), "marker": str(marker)})
    total_shards = len(done) + len(tasks)
    if done:
        log.warning("resuming %s: %d of %d shards already written in %s", dataset, len(done), len(done) + len(tasks),
                    staging)
    progress = _Progress(dataset, total, sum(len(plan.splits[sp][s * shard_size:(s + 1) * shard_size])
                                             for sp, s in done))

    def finish(task, res):
        Path(task["marker"]).write_text(json.dumps(res))
        done[(task["split"], task["shard"])] = res
        progress.update(len(task["items"]))

    try:
        if workers <= 0 or len(tasks) <= 1:
            for task in tasks:
                finish(task, write_shard(task))
        else:
            ctx = multiprocessing.get_context("spawn")   # the parent may hold JAX / threads: no fork
            with cf.ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as pool:
                futures = {pool.submit(write_shard, t): t for t in tasks}
                try:
                    for fut in cf.as_completed(futures):
                        finish(futures[fut], fut.result())
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    except BaseException as e:
        if not any(done_dir.iterdir()):
            shutil.rmtree(staging, ignore_errors=True)
            _remove_empty_parents(staging, root)
        else:
            log.warning("prepare %s stopped (%s): %d of %d shards are kept in %s; run the same command again to "
                        "resume", dataset, type(e).__name__, len(done), total_shards, staging)
        raise
    progress.update(0, force=True)

    # metadata, report, rename into place
    import tensorflow_datasets as tfds

    builder = _builder(dataset, plan.class_names, os.fspath(root))
    split_infos = []
    for split, items in plan.splits.items():
        num_shards = max(1, -(-len(items) // shard_size))
        res = [done[(split, s)] for s in range(num_shards)]
        tmpl = tfds.core.ShardedFileTemplate(data_dir=staging, dataset_name=base, split=split,
                                             filetype_suffix="array_record")
        split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[r["n"] for r in res],
                                               num_bytes=sum(r["bytes"] for r in res), filename_template=tmpl))
    builder.info.set_splits(tfds.core.SplitDict(split_infos))
    builder.info.set_file_format("array_record")
    builder.info.write_to_directory(staging)
    skipped = [w for r in done.values() for w in r["skipped"]]
    report = {"dataset": dataset, "source": plan.source, "num_skipped": len(skipped), "skipped": skipped,
              "splits": {si.name: si.num_examples for si in split_infos}, "store": store,
              "jpeg_quality": quality if store == "jpeg256" else None, "seconds": round(time.perf_counter() - t0, 1)}
    (staging / REPORT_FILE).write_text(json.dumps(report, indent=2))
    shutil.rmtree(done_dir)
    (staging / PLAN_FILE).unlink()
    (staging / LOCK_FILE).unlink()
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    if skipped:
        log.warning("%s: skipped %d corrupt image(s); see %s", dataset, len(skipped), final / REPORT_FILE)
    return final


def main(argv: list[str] | None = None) -> int:
    """``python -m alexnet_jax.data.preparation NAME [--source PATH] [--data-dir DIR] [--overwrite] [--workers N]``."""
    import argparse

    p = argparse.ArgumentParser(description="Prepare a dataset offline as TFDS array_record.")
    p.add_argument("dataset", choices=dataset_names())
    p.add_argument("--source", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores; 0: no pool)")
    p.add_argument("--quality", type=int, default=JPEG256_QUALITY, help="JPEG quality of the jpeg256 store")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        path = prepare(a.dataset, a.source, a.data_dir, overwrite=a.overwrite, workers=a.workers, quality=a.quality)
    except SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


__all__ = ["DATASETS", "SourceError", "prepare", "make_plan", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
