"""Offline preparation of the datasets as TFDS ``array_record`` datasets (no TensorFlow needed).

``prepare(dataset, source, data_dir)`` converts local source files into a TFDS dataset directory
``<data_dir>/<name>/<version>/`` that ``tfds.builder_from_directory(...)`` and
``tfds.data_source(name, data_dir=...)`` read with no TensorFlow.  The builders use the TFDS catalog
names and versions (``mnist`` 3.0.1, ``cifar10`` 3.0.2, ``imagenet2012`` 5.1.0) and the same features
as the stock builders, so a data_dir filled by ``tfds build NAME --file_format=array_record`` (with TF
and internet) is read the same way.  ``digits`` (scikit-learn's 8x8 digits, upscaled to 28x28) is
our own dataset and is prepared automatically on first use.

Images are fed to ``tfds.features.Image`` as encoded bytes (PNG we encode with PIL, or the original
JPEG bytes), never as numpy arrays: encoding arrays goes through TensorFlow.

Sources
  mnist         a directory holding the four IDX ``.gz`` files (no checksum check).
  cifar10       ``cifar-10-python.tar.gz`` (or its extracted ``cifar-10-batches-py`` dir), or a
                class-per-folder image tree ``train/<class>/*`` (+ optional ``test/``) given as a
                directory or a ``.tar``/``.tar.gz`` of such a tree (read into memory).
  imagenet2012  a directory with ``ILSVRC2012_img_train.tar`` (tar of per-class tars) and/or
                ``ILSVRC2012_img_val.tar`` (labels from TFDS' ``validation_labels.txt``), or a
                class-per-folder tree ``train/<wnid>/*.JPEG`` (+ optional ``val/<wnid>/*``).
  digits        ignored (``sklearn.datasets.load_digits``).

Validation splits carved out of a training set (cifar10; a source without its own validation)
are stratified: per class, the last ``round(0.1 * n_class)`` items of a fixed-seed permutation of the
sorted keys (500 per class for CIFAR-10; at least one and not all when a class has 2+ items).
Corrupt images are reported (logged with their path) and skipped; the count and paths are written
to ``prepare_report.json`` in the dataset directory.
"""

from __future__ import annotations

import gzip
import inspect
import io
import json
import logging
import os
import pickle
import re
import shutil
import struct
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from alexnet_jax.errors import AlexnetJaxError

log = logging.getLogger(__name__)

if __name__ == "__main__":
    # `python -m alexnet_jax.data.prepare`: runpy has already imported this module through the package, and
    # defining the builders a second time here would register `digits` twice; run the package's copy.
    from alexnet_jax.data.prepare import main as _main

    raise SystemExit(_main())

DATASETS = ("digits", "mnist", "cifar10", "imagenet2012")
VERSIONS = {"digits": "1.0.0", "mnist": "3.0.1", "cifar10": "3.0.2", "imagenet2012": "5.1.0"}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLIT_SEED = 0                 # seed of every deterministic split we carve
VALIDATION_FRACTION = 0.1      # per class, of the training items, when carving a validation split
DIGITS_TEST_SIZE = 360         # 20% of 1797
REPORT_FILE = "prepare_report.json"
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".webp", ".tif", ".tiff")
_WNID_RE = re.compile(r"^n\d{8}$")


class DatasetNotPreparedError(AlexnetJaxError, FileNotFoundError):
    """The dataset is not in the data directory; the message says how to prepare it."""


# ----------------------------------------------------------------------------------------------------
# data_dir resolution
# ----------------------------------------------------------------------------------------------------
def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    d = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return Path(os.path.expanduser(str(d))).resolve()


def prepare_command(dataset: str, data_dir: str | os.PathLike) -> str:
    src = " --source PATH" if dataset != "digits" else ""
    return f"alexnet-jax prepare {dataset}{src} --data-dir {data_dir}"


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def find_dataset_dir(dataset: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The prepared ``<data_dir>/<dataset>/<version>`` dir (our version preferred, else the newest)."""
    root = resolve_data_dir(data_dir) / dataset
    if not root.is_dir():
        return None
    versions = [p.name for p in root.iterdir()
                if re.fullmatch(r"\d+\.\d+\.\d+", p.name) and (p / "dataset_info.json").is_file()]
    if not versions:
        return None
    ours = VERSIONS.get(dataset)
    v = ours if ours in versions else max(versions, key=_version_key)
    return root / v


def dataset_dir(dataset: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Path of the prepared dataset; raises DatasetNotPreparedError (with the prepare command) if absent."""
    root = resolve_data_dir(data_dir)
    path = find_dataset_dir(dataset, root)
    if path is None:
        hint = ""
        if dataset in ("mnist", "cifar10", "imagenet2012"):
            hint = (f" (or, with TensorFlow and internet: `tfds build {dataset} --file_format=array_record "
                    f"--data_dir {root}`)")
        raise DatasetNotPreparedError(
            f"dataset {dataset!r} is not prepared: no {root / dataset}/<version>/dataset_info.json "
            f"(searched data_dir {root}). Prepare it with:\n  {prepare_command(dataset, root)}{hint}")
    info = json.loads((path / "dataset_info.json").read_text())
    fmts = {info.get("fileFormat", "")} | set(info.get("alternativeFileFormats", []) or [])
    if not fmts & {"array_record", "parquet"}:
        raise DatasetNotPreparedError(
            f"dataset {dataset!r} at {path} is stored as {sorted(f for f in fmts if f) or 'tfrecord'}, "
            f"which has no random access and needs TensorFlow. Re-prepare it in array_record format:\n"
            f"  {prepare_command(dataset, root)}")
    return path


def ensure_prepared(config: Any) -> Path:
    """Dataset directory for ``config.dataset``; ``digits`` is prepared automatically (it is offline)."""
    name = config.dataset
    if name == "digits" and find_dataset_dir(name, config.data_dir or None) is None:
        prepare("digits", None, config.data_dir or None)
    return dataset_dir(name, config.data_dir or None)


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def encode_png(arr: np.ndarray) -> bytes:
    """uint8 (H, W) / (H, W, 1) / (H, W, 3) -> PNG bytes (PIL, no TF)."""
    arr = np.asarray(arr, np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def check_image(data: bytes, what: str, *, force_jpeg: bool = False) -> bytes | None:
    """Return the (maybe re-encoded) image bytes, or None (logged) if they cannot be decoded.

    JPEGs are decoded at reduced DCT scale (PIL draft), which still reads the whole entropy-coded stream.
    With ``force_jpeg`` CMYK JPEGs and non-JPEG files are re-encoded as RGB JPEG (as the stock
    imagenet2012 builder does for its CMYK/PNG images).
    """
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


def _is_image(name: str) -> bool:
    return name.lower().endswith(_IMAGE_EXTS)


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


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise ValueError(f"{path}: not an IDX file")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtypes[dtype_code], offset=4 + 4 * ndim)
    return arr.reshape(shape)


class _Report:
    def __init__(self):
        self.skipped: list[str] = []

    def check(self, data: bytes, what: str, **kw) -> bytes | None:
        out = check_image(data, what, **kw)
        if out is None:
            self.skipped.append(what)
        return out


# ----------------------------------------------------------------------------------------------------
# builders
# ----------------------------------------------------------------------------------------------------
class _Base(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Common plumbing: the source path and the skipped-image report live on the instance."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, source: str | os.PathLike | None = None, **kwargs):
        self._source = Path(source).expanduser() if source else None
        self.report = _Report()
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # The stock code_path needs the `importlib_resources` backport for classes defined in a package;
        # the plain file path is what it would return anyway.
        return epath.Path(inspect.getfile(cls))

    def _generate_examples(self, **kwargs):   # our _split_generators return generators directly
        raise NotImplementedError

    def _need_source(self) -> Path:
        if self._source is None or not self._source.exists():
            raise FileNotFoundError(f"{self.name}: source {self._source} does not exist")
        return self._source


class Digits(_Base):
    """scikit-learn's 1797 8x8 digits, bilinearly upscaled to 28x28 uint8 (MNIST-like field)."""

    name = "digits"
    VERSION = tfds.core.Version(VERSIONS["digits"])

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="sklearn.datasets.load_digits 8x8 images (0..16) upscaled bilinearly to 28x28 uint8; "
                        f"stratified split test={DIGITS_TEST_SIZE} / train=rest (seed {SPLIT_SEED}).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(28, 28, 1)),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
        )

    def _split_generators(self, dl_manager):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        idx = np.arange(len(d.target))
        tr, te = train_test_split(idx, test_size=DIGITS_TEST_SIZE, stratify=d.target, random_state=SPLIT_SEED)
        return {"train": self._generate(d, sorted(tr)), "test": self._generate(d, sorted(te))}

    def _generate(self, d, indices):
        for i in indices:
            yield f"{i:04d}", {"image": encode_png(digits_to_28(d.images[i])), "label": int(d.target[i])}


def digits_to_28(img8: np.ndarray) -> np.ndarray:
    """8x8 float image with values 0..16 -> 28x28x1 uint8 0..255 (PIL bilinear resize)."""
    f = Image.fromarray(np.asarray(img8, np.float32) * (255.0 / 16.0), mode="F")
    up = np.asarray(f.resize((28, 28), Image.BILINEAR))
    return np.clip(np.rint(up), 0, 255).astype(np.uint8)[..., None]


with tfds.core.registered.skip_registration():

    class Mnist(_Base):
        """MNIST from the four IDX .gz files (same name/version/features as the TFDS catalog builder)."""

        name = "mnist"
        VERSION = tfds.core.Version(VERSIONS["mnist"])
        FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="The MNIST database of handwritten digits (prepared offline from the IDX files).",
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(28, 28, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }),
                supervised_keys=("image", "label"),
                homepage="http://yann.lecun.com/exdb/mnist/",
            )

        def _split_generators(self, dl_manager):
            src = self._need_source()
            out = {}
            for split, (im_f, lb_f) in self.FILES.items():
                paths = [_find_file(src, f) for f in (im_f, lb_f)]
                if all(paths):
                    out[split] = self._generate(*paths)
            if not out:
                raise FileNotFoundError(f"mnist: none of the IDX files found in {src}")
            return out

        def _generate(self, images_path, labels_path):
            images, labels = read_idx(images_path), read_idx(labels_path)
            if len(images) != len(labels):
                raise ValueError(f"{images_path}: {len(images)} images but {len(labels)} labels")
            for i, (im, lb) in enumerate(zip(images, labels, strict=True)):
                yield i, {"image": encode_png(im), "label": int(lb)}

    class Cifar10(_Base):
        """CIFAR-10 from the python tarball or from a class-per-folder image tree (dir or tarball)."""

        name = "cifar10"
        VERSION = tfds.core.Version(VERSIONS["cifar10"])

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="CIFAR-10 (prepared offline). `validation` is carved from the training set: "
                            f"{VALIDATION_FRACTION:.0%} per class, fixed seed {SPLIT_SEED}.",
                features=tfds.features.FeaturesDict({
                    "id": tfds.features.Text(),
                    "image": tfds.features.Image(shape=(32, 32, 3)),
                    "label": tfds.features.ClassLabel(names=list(CIFAR10_CLASSES)),
                }),
                supervised_keys=("image", "label"),
                homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
            )

        def _split_generators(self, dl_manager):
            src = self._need_source()
            batches = _find_cifar_batches(src)
            if batches is not None:
                return self._from_pickles(batches)
            tree = _load_tree(src, ("train", "test"))
            return _tree_splits(self, tree, ("train", "test"), list(CIFAR10_CLASSES))

        def _from_pickles(self, batches: dict[str, bytes]):
            def load(name):
                d = pickle.loads(batches[name], encoding="bytes")
                x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                return x, np.asarray(d[b"labels"], np.int64)

            train_names = sorted(n for n in batches if n.startswith("data_batch_"))
            items = {}   # key -> (image, label)
            for n in train_names:
                x, y = load(n)
                for i in range(len(y)):
                    items[f"{n}_{i:05d}"] = (x[i], int(y[i]))
            by_class: dict[int, list[str]] = {}
            for k, (_, y) in items.items():
                by_class.setdefault(y, []).append(k)
            val = stratified_holdout(by_class)

            def gen(keys):
                for k in keys:
                    x, y = items[k]
                    yield k, {"id": k, "image": encode_png(x), "label": y}

            out = {"train": gen(sorted(k for k in items if k not in val)), "validation": gen(sorted(val))}
            if "test_batch" in batches:
                x, y = load("test_batch")
                out["test"] = ((f"test_{i:05d}", {"id": f"test_{i:05d}", "image": encode_png(x[i]),
                                                  "label": int(y[i])}) for i in range(len(y)))
            return out

    class Imagenet2012(_Base):
        """ILSVRC-2012 from the official tars or from a class-per-folder JPEG tree."""

        name = "imagenet2012"
        VERSION = tfds.core.Version(VERSIONS["imagenet2012"])
        MANUAL_DOWNLOAD_INSTRUCTIONS = "source dir: ILSVRC2012_img_train.tar / ILSVRC2012_img_val.tar"

        def _class_names(self) -> list[str]:
            synsets = imagenet_synsets()
            src = self._source
            if src is not None and src.is_dir() and not _ilsvrc_tars(src):
                folders = sorted({p.name for sub in ("train", "val", "validation") if (src / sub).is_dir()
                                  for p in (src / sub).iterdir() if p.is_dir()})
                if folders and not all(_WNID_RE.match(f) for f in folders):
                    return folders
            return synsets

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="ILSVRC-2012 (prepared offline).",
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=self._class_names()),
                    "file_name": tfds.features.Text(),
                }),
                supervised_keys=("image", "label"),
                homepage="https://image-net.org/",
            )

        def _split_generators(self, dl_manager):
            src = self._need_source()
            tars = _ilsvrc_tars(src)
            if tars:
                out = {}
                if "train" in tars:
                    out["train"] = self._from_train_tar(tars["train"])
                if "validation" in tars:
                    out["validation"] = self._from_val_tar(tars["validation"])
                return out
            tree = _load_tree(src, ("train", "val", "validation"), lazy=True)
            if "val" in tree:
                tree["validation"] = tree.pop("val")
            return _tree_splits(self, tree, ("train", "validation"), self._class_names(),
                                file_name=True, force_jpeg=True)

        def _from_train_tar(self, path: Path):
            with tarfile.open(path, "r|*") as outer:
                for m in outer:
                    if not m.isfile() or not m.name.endswith(".tar"):
                        continue
                    wnid = Path(m.name).name[:-4]
                    inner_bytes = outer.extractfile(m).read()
                    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:*") as inner:
                        for im in inner:
                            if not im.isfile():
                                continue
                            fname = Path(im.name).name
                            data = self.report.check(inner.extractfile(im).read(), f"{path}:{m.name}:{fname}",
                                                     force_jpeg=True)
                            if data is not None:
                                yield fname, {"image": data, "label": wnid, "file_name": fname}

        def _from_val_tar(self, path: Path):
            labels_file = tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")
            labels = Path(os.fspath(labels_file)).read_text().strip().splitlines()
            with tarfile.open(path, "r:*") as tar:
                names = sorted(Path(m.name).name for m in tar.getmembers() if m.isfile())
            label_of = dict(zip(names, labels, strict=False))   # labels cover all 50,000
            with tarfile.open(path, "r|*") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    fname = Path(m.name).name
                    data = self.report.check(tar.extractfile(m).read(), f"{path}:{fname}", force_jpeg=True)
                    if data is not None:
                        yield fname, {"image": data, "label": label_of[fname], "file_name": fname}


_BUILDERS = {"digits": Digits, "mnist": Mnist, "cifar10": Cifar10, "imagenet2012": Imagenet2012}


def imagenet_synsets() -> list[str]:
    """The 1000 ILSVRC-2012 wnids in TFDS label order (labels.txt shipped inside tensorflow_datasets)."""
    p = tfds.core.tfds_path("datasets/imagenet2012/labels.txt")
    return Path(os.fspath(p)).read_text().strip().splitlines()


def _find_file(src: Path, name: str) -> Path | None:
    for cand in (src / name, src / name[:-3]):
        if cand.is_file():
            return cand
    return None


def _ilsvrc_tars(src: Path) -> dict[str, Path]:
    if not src.is_dir():
        return {}
    out = {}
    for split, fname in (("train", "ILSVRC2012_img_train.tar"), ("validation", "ILSVRC2012_img_val.tar")):
        if (src / fname).is_file():
            out[split] = src / fname
    return out


def _find_cifar_batches(src: Path) -> dict[str, bytes] | None:
    """The pickled batches of the official python version (tarball or extracted dir), else None."""
    wanted = re.compile(r"^(data_batch_\d|test_batch)$")
    if src.is_dir():
        for d in (src, src / "cifar-10-batches-py"):
            files = {p.name: p for p in d.glob("*") if wanted.match(p.name)} if d.is_dir() else {}
            if files:
                return {n: p.read_bytes() for n, p in files.items()}
        return None
    if tarfile.is_tarfile(src):
        with tarfile.open(src, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and wanted.match(Path(m.name).name)]
            if members:
                return {Path(m.name).name: tar.extractfile(m).read() for m in members}
    return None


class _LazyFile:
    """A file in a directory tree, read when needed."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> bytes:
        return self.path.read_bytes()


def _load_tree(src: Path, split_dirs: tuple[str, ...], lazy: bool = False) -> dict[str, dict[str, dict]]:
    """{split: {class: {rel_path: bytes | _LazyFile}}} from a dir or a tarball of ``<split>/<class>/<file>``.

    A tarball may have one extra top-level folder.  Tarballs are read into memory.
    """
    tree: dict[str, dict[str, dict]] = {}

    def add(parts: tuple[str, ...], what):
        # parts: (..., split, class, file)
        if len(parts) < 3 or not _is_image(parts[-1]):
            return
        split, cls = parts[-3], parts[-2]
        if split not in split_dirs or len(parts) > 4:
            return
        tree.setdefault(split, {}).setdefault(cls, {})["/".join(parts[-3:])] = what

    if src.is_dir():
        for split in split_dirs:
            d = src / split
            if d.is_dir():
                for p in sorted(d.glob("*/*")):
                    if p.is_file():
                        add((split, p.parent.name, p.name), _LazyFile(p) if lazy else p.read_bytes())
    elif tarfile.is_tarfile(src):
        with tarfile.open(src, "r|*") as tar:
            for m in tar:
                if m.isfile():
                    parts = tuple(x for x in Path(m.name).parts if x not in (".", ""))
                    if len(parts) >= 3 and parts[-3] in split_dirs and _is_image(parts[-1]):
                        add(parts, tar.extractfile(m).read())
    else:
        raise ValueError(f"{src}: neither a directory nor a tar archive")
    if "train" not in tree:
        raise FileNotFoundError(f"{src}: no train/<class>/<image> files found")
    return tree


def _tree_splits(builder: _Base, tree, split_names, class_names, *, file_name=False, force_jpeg=False):
    """Split generators for a class-folder tree; carves `validation` out of `train` when absent."""
    known = set(class_names)
    for split, classes in tree.items():
        unknown = sorted(set(classes) - known)
        if unknown:
            raise ValueError(f"{builder.name}: unknown class folder(s) {unknown[:5]} in {split}/ "
                             f"(expected names like {class_names[:3]})")
    splits: dict[str, dict[str, tuple[str, Any]]] = {}   # split -> key -> (class, data)
    for split in split_names:
        if split in tree:
            splits[split] = {k: (c, v) for c, files in tree[split].items() for k, v in files.items()}
    if "validation" not in splits:
        by_class = {c: list(files) for c, files in tree["train"].items()}
        val = stratified_holdout(by_class)
        train = splits["train"]
        splits["validation"] = {k: train[k] for k in sorted(val)}
        splits["train"] = {k: v for k, v in train.items() if k not in val}

    def gen(items: dict[str, tuple[str, Any]]) -> Iterator:
        for key in sorted(items):
            cls, data = items[key]
            raw = data.read() if isinstance(data, _LazyFile) else data
            what = str(data.path) if isinstance(data, _LazyFile) else f"{builder._source}:{key}"
            checked = builder.report.check(raw, what, force_jpeg=force_jpeg)
            if checked is None:
                continue
            ex = {"image": checked, "label": cls}
            if file_name:
                ex["file_name"] = Path(key).name
            else:
                ex["id"] = key
            yield key, ex

    return {split: gen(items) for split, items in splits.items()}


# ----------------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------------
def prepare(dataset: str, source: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
            *, overwrite: bool = False) -> Path:
    """Build ``dataset`` from ``source`` into ``data_dir`` (array_record); returns the dataset dir.

    An existing prepared dataset is reused unless ``overwrite``.
    """
    if dataset not in _BUILDERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    root = resolve_data_dir(data_dir)
    existing = find_dataset_dir(dataset, root)
    if existing is not None and existing.name == VERSIONS[dataset]:
        if not overwrite:
            log.info("%s already prepared at %s", dataset, existing)
            return existing
        shutil.rmtree(existing)
    if dataset != "digits" and not source:
        raise ValueError(f"{dataset}: a --source is needed ({prepare_command(dataset, root)})")
    root.mkdir(parents=True, exist_ok=True)
    builder = _BUILDERS[dataset](source=source, data_dir=os.fspath(root), file_format="array_record")
    cfg = tfds.download.DownloadConfig(try_download_gcs=False,
                                       compute_stats=tfds.download.ComputeStatsMode.SKIP)
    try:
        builder.download_and_prepare(download_config=cfg)
    except Exception:
        done = find_dataset_dir(dataset, root)   # a concurrent process may have finished it
        if done is None:
            raise
        return done
    path = Path(os.fspath(builder.data_path))
    downloads = root / "downloads"
    if downloads.is_dir() and not any(downloads.iterdir()):
        downloads.rmdir()
    skipped = builder.report.skipped
    report = {"dataset": dataset, "source": str(source) if source else None, "num_skipped": len(skipped),
              "skipped": skipped, "splits": {k: v.num_examples for k, v in builder.info.splits.items()}}
    (path / REPORT_FILE).write_text(json.dumps(report, indent=2))
    if skipped:
        log.warning("%s: skipped %d corrupt image(s); see %s", dataset, len(skipped), path / REPORT_FILE)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m alexnet_jax.data.prepare NAME [--source PATH] [--data-dir DIR] [--overwrite]``."""
    import argparse

    p = argparse.ArgumentParser(description="Prepare a dataset offline as TFDS array_record.")
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--source", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    path = prepare(a.dataset, a.source, a.data_dir, overwrite=a.overwrite)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
