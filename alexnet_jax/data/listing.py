"""What a prepare will write: the source listed per dataset (``list_source``), checked before anything is
written (a wrong source raises ``SourceError``).

Sources
  mnist         a directory holding the four IDX ``.gz`` files (no checksum check).
  cifar10       ``cifar-10-python.tar.gz`` (or its extracted ``cifar-10-batches-py`` dir), or a
                class-per-folder image tree ``train/<class>/*`` (+ optional ``test/``) given as a
                directory or a ``.tar``/``.tar.gz`` of such a tree (a compressed tar is read into memory).
  imagenet2012  a directory with ``ILSVRC2012_img_train.tar`` (tar of per-class tars) and/or
                ``ILSVRC2012_img_val.tar`` (labels from TFDS' ``validation_labels.txt``), or a
                class-per-folder tree ``train/<wnid>/*.JPEG`` (+ optional ``val/<wnid>/*``), as a
                directory or a tar.  Uncompressed tars are read in place (members by offset).
  digits        ignored (``sklearn.datasets.load_digits``; test split: sklearn's stratified split).

Splits carved from a training set (``carve``: cifar10, a source without validation) are stratified: per
class, the last ``round(0.1 * n_class)`` items of a fixed-seed permutation of the sorted keys (at least one,
not all, of a class of 2+).  A CIFAR-10 folder tree without a test split (the shared JPEG copy) also gets a
``test`` split carved from what is left (another seed), for a final report only: 40,000 / 5,000 / 5,000.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from alexnet_jax.errors import SourceError

from . import files
from .catalog import split_name
from .datasets import imagenet_synsets, prepare_command, tfds_lines
from .records import ID_FEATURES, STORED_SHAPES

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLIT_SEED = 0                 # seed of every split we carve
VALIDATION_FRACTION = 0.1      # per class, of the training items, when carving a validation split
DIGITS_TEST_SIZE = 360         # 20% of 1797
MNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
               "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
_WNID_RE = re.compile(r"^n\d{8}$")


@dataclasses.dataclass
class Item:
    key: str
    label: int
    payload: tuple            # ("bytes", b) | ("array", uint8) | ("file", path) | ("tar", path, offset, size)
    name: str | None = None   # file_name / id feature
    where: str = ""           # where the bytes come from, for reports


@dataclasses.dataclass
class Listing:
    """A source, listed: per split, the examples in key order."""

    dataset: str
    store: str | None
    class_names: list[str]
    splits: dict[str, list[Item]]
    source: str | None

    @property
    def id_feature(self) -> str | None:
        return ID_FEATURES.get(self.dataset)

    def where(self, item: Item) -> str:
        return str(item.payload[1]) if item.payload[0] == "file" else f"{self.source}:{item.key}"


def payload_bytes(payload: tuple) -> bytes:
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


def stratified_holdout(keys_by_class: dict[Any, list[str]], fraction: float = VALIDATION_FRACTION,
                       seed: int = SPLIT_SEED) -> set[str]:
    """Keys held out: per class (in sorted class order) the last round(fraction*n) of a fixed-seed
    permutation of the sorted keys."""
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


def carve(train: list[str], label: Callable[[str], Any], *, validation: bool = True,
          test: bool = False) -> dict[str, list[str]]:
    """{split: sorted keys}: ``train`` with a ``validation`` split (and with ``test`` a ``test`` split,
    disjoint from it: 10% of the original each) held out (module docstring); a carved split that would
    be empty is left out."""
    out = {"train": sorted(train)}
    for split, fraction, seed, wanted in (
            ("validation", VALIDATION_FRACTION, SPLIT_SEED, validation),
            ("test", VALIDATION_FRACTION / (1 - VALIDATION_FRACTION), SPLIT_SEED + 1, test)):
        if wanted:
            by_class: dict[Any, list[str]] = {}
            for k in out["train"]:
                by_class.setdefault(label(k), []).append(k)
            held = stratified_holdout(by_class, fraction, seed)
            if held:                         # none where every class has a single item
                out[split] = sorted(held)
                out["train"] = [k for k in out["train"] if k not in held]
    return out


def digits_to_28(img8: np.ndarray) -> np.ndarray:
    """8x8 float image with values 0..16 -> the stored 28x28x1 uint8 0..255 (Pillow bilinear resize)."""
    h, w, _ = STORED_SHAPES["digits"]
    f = Image.fromarray(np.asarray(img8, np.float32) * (255.0 / 16.0), mode="F")
    up = np.asarray(f.resize((w, h), Image.BILINEAR))
    return np.clip(np.rint(up), 0, 255).astype(np.uint8)[..., None]


# ----------------------------------------------------------------------------------------------------
# folder trees and tars
# ----------------------------------------------------------------------------------------------------
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


def _tree_splits(name: str, src: Path, tree, split_names, class_names, *, carve_test: bool = False
                 ) -> dict[str, list[Item]]:
    """Items of a class-folder tree; carves ``validation`` out of ``train`` when absent, and with
    ``carve_test`` a ``test`` split too (disjoint from validation) when the source has none."""
    index = {c: i for i, c in enumerate(class_names)}
    for split, classes in tree.items():
        unknown = sorted(set(classes) - set(index))
        if unknown:
            raise SourceError(f"{name}: unknown class folder(s) {unknown[:5]} in {src}/{split}/ (expected names "
                              f"like {list(class_names[:3])})")
    entries = {k: (c, v) for classes in tree.values() for c, fs in classes.items() for k, v in fs.items()}
    keys = {split: [k for fs in tree[split].values() for k in fs] for split in split_names if split in tree}
    keys.update(carve(keys["train"], lambda k: entries[k][0], validation="validation" not in keys,
                      test=carve_test and "test" not in keys))
    named = (lambda k: Path(k).name) if ID_FEATURES[name] == "file_name" else (lambda k: k)
    return {split: [Item(k, index[entries[k][0]], entries[k][1], named(k)) for k in sorted(ks)]
            for split, ks in keys.items()}


def _need_source(name: str, source) -> Path:
    if not source:
        raise SourceError(f"{name}: a --source is needed ({prepare_command(name, '<data_dir>')})")
    src = Path(source).expanduser()
    if not src.exists():
        raise SourceError(f"{name}: source {src} does not exist")
    return src


# ----------------------------------------------------------------------------------------------------
# the datasets
# ----------------------------------------------------------------------------------------------------
def _list_digits(store) -> Listing:
    from sklearn.datasets import load_digits  # lazy: sklearn takes ~1 s to import, digits only
    from sklearn.model_selection import train_test_split  # lazy: as load_digits

    d = load_digits()
    idx = np.arange(len(d.target))
    tr, te = train_test_split(idx, test_size=DIGITS_TEST_SIZE, stratify=d.target, random_state=SPLIT_SEED)
    splits = {s: [Item(f"{i:04d}", int(d.target[i]), ("array", digits_to_28(d.images[i]))) for i in sorted(ix)]
              for s, ix in (("train", tr), ("test", te))}
    return Listing("digits", store, [str(i) for i in range(10)], splits, None)


def _list_mnist(source, store) -> Listing:
    src = _need_source("mnist", source)
    all_files = ", ".join(f for p in MNIST_FILES.values() for f in p)
    if not src.is_dir():
        raise SourceError(f"mnist: source {src} must be a directory holding the IDX files ({all_files})")
    splits = {}
    for split, names in MNIST_FILES.items():
        paths = [next((c for c in (src / n, src / n[:-3]) if c.is_file()), None) for n in names]
        if not all(paths):
            continue
        try:
            images, labels = files.read_idx(paths[0]), files.read_idx(paths[1])
        except (ValueError, OSError, EOFError) as e:
            raise SourceError(f"mnist: {e}") from e
        if len(images) != len(labels) or images.shape[1:] != STORED_SHAPES["mnist"][:2]:
            raise SourceError(f"mnist: {paths[0]} holds images of shape {images.shape} (expected N x 28 x 28) "
                              f"and {paths[1]} {len(labels)} labels")
        splits[split] = [Item(f"{i:05d}", int(labels[i]), ("array", images[i][..., None])) for i in range(len(images))]
    if not splits:
        raise SourceError(f"mnist: none of the IDX files ({all_files}) found in {src}")
    return Listing("mnist", store, [str(i) for i in range(10)], splits, str(src))


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


def _list_cifar10(source, store) -> Listing:
    src = _need_source("cifar10", source)
    batches = _find_cifar_batches(src)
    names = list(CIFAR10_CLASSES)
    if batches is None:
        tree = _load_tree(src, ("train", "test"))
        return Listing("cifar10", store, names, _tree_splits("cifar10", src, tree, ("train", "test"), names,
                                                             carve_test=True), str(src))

    def load(n):   # the python pickles: rows of 3 x 32 x 32 (channel-major) bytes
        d = pickle.loads(batches[n], encoding="bytes")
        x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, np.asarray(d[b"labels"], np.int64)

    items: dict[str, tuple] = {}
    for n in sorted(b for b in batches if b.startswith("data_batch_")):
        x, y = load(n)
        for i in range(len(y)):
            items[f"{n}_{i:05d}"] = (np.ascontiguousarray(x[i]), int(y[i]))
    mk = lambda k: Item(k, items[k][1], ("array", items[k][0]), k)
    splits = {s: [mk(k) for k in ks] for s, ks in carve(list(items), lambda k: items[k][1]).items()}
    if "test_batch" in batches:
        x, y = load("test_batch")
        splits["test"] = [Item(f"test_{i:05d}", int(y[i]), ("array", np.ascontiguousarray(x[i])), f"test_{i:05d}")
                          for i in range(len(y))]
    return Listing("cifar10", store, names, splits, str(src))


def _list_ilsvrc_train(tar_path: Path, index: dict[str, int]) -> list[Item]:
    items = []
    with tarfile.open(tar_path, "r:") as outer:
        for m in outer.getmembers():
            if not m.isfile() or not m.name.endswith(".tar"):
                continue
            wnid = Path(m.name).name[:-4]
            if wnid not in index:
                raise SourceError(f"imagenet2012: {tar_path} holds {m.name}, not an ILSVRC-2012 class (<wnid>.tar)")
            with tarfile.open(fileobj=outer.extractfile(m), mode="r:") as inner:     # read in place (seekable)
                for im in inner.getmembers():
                    if im.isfile():
                        fname = Path(im.name).name
                        items.append(Item(fname, index[wnid], ("tar", str(tar_path), m.offset_data + im.offset_data,
                                                               im.size), fname))
    return sorted(items, key=lambda it: it.key)


def _list_imagenet(source, store) -> Listing:
    src = _need_source("imagenet2012", source)
    synsets = imagenet_synsets()
    index = {w: i for i, w in enumerate(synsets)}
    tars = {split: src / f for split, f in (("train", "ILSVRC2012_img_train.tar"),
                                            ("validation", "ILSVRC2012_img_val.tar")) if (src / f).is_file()}
    if tars:
        splits = {"train": _list_ilsvrc_train(tars["train"], index)} if "train" in tars else {}
        if "validation" in tars:
            labels = tfds_lines("datasets/imagenet2012/validation_labels.txt")
            with tarfile.open(tars["validation"], "r:") as tar:
                members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: Path(m.name).name)
            if len(members) > len(labels):
                raise SourceError(f"imagenet2012: {tars['validation']} holds {len(members)} files, more than the "
                                  f"{len(labels)} ILSVRC-2012 validation labels")
            splits["validation"] = [Item(Path(m.name).name, index[labels[i]],
                                         ("tar", str(tars["validation"]), m.offset_data, m.size), Path(m.name).name)
                                    for i, m in enumerate(members)]
        return Listing("imagenet2012", store, synsets, splits, str(src))
    tree = _load_tree(src, ("train", "val", "validation"))
    if "val" in tree:
        tree["validation"] = tree.pop("val")
    folders = sorted({c for classes in tree.values() for c in classes})
    names = synsets if all(_WNID_RE.match(f) for f in folders) else folders
    return Listing("imagenet2012", store, names, _tree_splits("imagenet2012", src, tree, ("train", "validation"),
                                                              names), str(src))


def list_source(dataset: str, source=None) -> Listing:
    """List the source (checks it: SourceError when missing or of the wrong layout)."""
    base, store = split_name(dataset)
    if base == "digits":
        return _list_digits(store)
    if base == "mnist":
        return _list_mnist(source, store)
    if base == "cifar10":
        return _list_cifar10(source, store)
    return _list_imagenet(source, store)
