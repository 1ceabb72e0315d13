"""Prepared datasets on disk: locating them, reading their records, decoded in-memory splits, mean images.

Records are read straight from the TFDS ``array_record`` shards (the shard list comes from the TFDS
metadata): one ``ArrayRecordReader`` per shard and thread, opened for random access, and a small parser of
the ``tf.train.Example`` wire format that returns the image bytes without copying them into Python
objects (TFDS' own numpy parser costs about as much as the read itself for a 196 KB raw record).

What a loader delivers for a dataset (``stored_shape``): the images' own static shape where the dataset
has one (digits/mnist 28x28x1, cifar10 32x32x3, the 256 stores 256x256x3), else (imagenet2012 originals,
variable size) 256x256x3: decoded and brought to 256x256 on the host (shorter side 256, centre crop; K12
§2).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from alexnet_jax.errors import AlexnetJaxError
from alexnet_jax.protowire import read_varint as _varint

from . import files
from .catalog import STORE_SIZE, VERSIONS, dataset_names, split_name

log = logging.getLogger(__name__)

IN_MEMORY_MAX_BYTES = 2 * 1024**3          # decoded uint8 bytes of one split
IN_MEMORY_ENV = "ALEXNET_JAX_IN_MEMORY_MAX_BYTES"
DISK_CACHE = True                           # cache decoded splits as <dataset dir>/cache/*.npz
MEMORY_CACHE_ENTRIES = 4                    # decoded splits kept in this process (LRU)
ARRAY_CACHE_VERSION = 2
MEAN_MAX_EXAMPLES = 10_000                  # the mean image is computed from at most this many images
MEAN_SEED = 0
READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"   # random access (array_record's advice)


class DatasetNotPreparedError(AlexnetJaxError, FileNotFoundError):
    """The dataset is not in the data directory; the message says how to prepare it."""


# ----------------------------------------------------------------------------------------------------
# locating prepared datasets
# ----------------------------------------------------------------------------------------------------
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


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


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
    v = ours if ours in versions else max(versions, key=_version_key)
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


def ensure_prepared(config: Any, *, auto: bool = True) -> Path:
    """Dataset directory for ``config.dataset``.  ``digits`` (offline, a few seconds) is prepared when
    missing and ``auto``: in this process (no worker pool), by process 0 while the others wait."""
    name = config.dataset
    if auto and name == "digits" and find_dataset_dir(name, config.data_dir or None) is None:
        import jax

        if jax.process_index() == 0:
            from .preparation import prepare

            prepare("digits", None, config.data_dir or None, workers=0)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("alexnet_jax: digits prepared")
    return dataset_dir(name, config.data_dir or None)


# ----------------------------------------------------------------------------------------------------
# metadata
# ----------------------------------------------------------------------------------------------------
_INFO: dict = {}


def builder_info(path: str | os.PathLike):
    """TFDS DatasetInfo of a prepared dataset dir (cached per dataset_info.json mtime)."""
    import tensorflow_datasets as tfds

    path = Path(path)
    f = path / "dataset_info.json"
    key = (str(path.resolve()), f.stat().st_mtime_ns if f.exists() else None)
    if key not in _INFO:
        _INFO[key] = tfds.builder_from_directory(str(path)).info
    return _INFO[key]


def _image_feature(path) -> tuple[str, tuple]:
    """("raw", shape) for a uint8 Tensor stored as bytes, ("encoded", shape or ()) for an Image."""
    import tensorflow_datasets as tfds

    feat = builder_info(path).features["image"]
    shape = tuple(feat.shape or ())
    if isinstance(feat, tfds.features.Image):
        return "encoded", shape
    if isinstance(feat, tfds.features.Tensor):
        if np.dtype(feat.np_dtype) != np.uint8 or feat._encoding != tfds.features.Encoding.BYTES:
            raise ValueError(f"{path}: image feature {feat!r} is not a uint8 tensor stored as bytes")
        return "raw", shape
    raise ValueError(f"{path}: unsupported image feature {type(feat).__name__}")


def stored_shape(path: str | os.PathLike) -> tuple[int, int, int]:
    """(H, W, C) of the uint8 images the loaders deliver for this dataset (module docstring)."""
    _, shape = _image_feature(path)
    if len(shape) == 3 and all(isinstance(d, int) for d in shape):
        return tuple(int(d) for d in shape)
    c = shape[-1] if len(shape) == 3 and isinstance(shape[-1], int) else 3
    return (STORE_SIZE, STORE_SIZE, int(c))


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    splits: dict[str, int]
    stored_shape: tuple[int, int, int]     # (H, W, C) uint8 images the loaders deliver
    image_shape: tuple[int, int, int]      # per-example model input (s, s, C) for this config
    path: str = ""


def dataset_info(config) -> DatasetInfo:
    path = ensure_prepared(config)
    info = builder_info(path)
    label = info.features["label"]
    shape = stored_shape(path)
    return DatasetInfo(name=config.dataset, num_classes=int(label.num_classes), class_names=tuple(label.names),
                       splits={k: int(v.num_examples) for k, v in info.splits.items()}, stored_shape=shape,
                       image_shape=(config.input_size, config.input_size, shape[-1]), path=str(path))


# ----------------------------------------------------------------------------------------------------
# tf.train.Example wire format (proto3: Example{features=1}, Features{map<string, Feature> feature=1},
# Feature{bytes_list=1 | float_list=2 | int64_list=3}, *List{repeated value=1})
# ----------------------------------------------------------------------------------------------------
def parse_example(record: bytes) -> dict[str, list]:
    """{feature name: [values]} of a serialized tf.train.Example: memoryviews into ``record`` for bytes
    lists, Python ints for int64 lists (packed or not), floats for float lists."""
    mv = memoryview(record)
    out: dict[str, list] = {}
    n = len(mv)
    i = 0
    while i < n:
        tag, i = _varint(mv, i)
        ln, i = _varint(mv, i)
        if tag != 0x0A:                     # not Example.features: skip it
            i += ln
            continue
        end = i + ln
        while i < end:                      # Features: map entries
            tag, i = _varint(mv, i)
            ln, i = _varint(mv, i)
            e_end, key, val = i + ln, None, None
            if tag != 0x0A:
                i = e_end
                continue
            while i < e_end:
                tag, i = _varint(mv, i)
                ln, i = _varint(mv, i)
                if tag == 0x0A:
                    key = bytes(mv[i:i + ln]).decode()
                elif tag == 0x12:
                    val = (i, i + ln)
                i += ln
            if key is None or val is None:
                continue
            out[key] = _parse_feature(mv, *val)
    return out


def _parse_feature(mv, i: int, end: int) -> list:
    vals: list = []
    while i < end:                          # Feature: one of the lists
        tag, i = _varint(mv, i)
        ln, i = _varint(mv, i)
        kind, l_end = tag >> 3, i + ln
        while i < l_end:                    # the list: repeated field 1
            t2, i = _varint(mv, i)
            wire = t2 & 7
            if wire == 0:                   # unpacked int64
                v, i = _varint(mv, i)
                vals.append(v - (1 << 64) if v >= 1 << 63 else v)
            elif wire == 5:                 # unpacked float
                vals.append(float(np.frombuffer(mv[i:i + 4], "<f4")[0]))
                i += 4
            else:
                l2, i = _varint(mv, i)
                if kind == 1:
                    vals.append(mv[i:i + l2])
                elif kind == 3:
                    j = i
                    while j < i + l2:
                        v, j = _varint(mv, j)
                        vals.append(v - (1 << 64) if v >= 1 << 63 else v)
                elif kind == 2:
                    vals.extend(np.frombuffer(mv[i:i + l2], "<f4").tolist())
                i += l2
    return vals


def _to_str(v) -> str:
    if isinstance(v, (bytes, bytearray, memoryview, np.bytes_)):
        return bytes(v).decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return _to_str(v.item())
    return str(v)


# ----------------------------------------------------------------------------------------------------
# records
# ----------------------------------------------------------------------------------------------------
class RecordSource:
    """Random access to one split: ``len``, ``record(i)`` -> {"image": bytes-like, "label": int,
    "name": str} and ``image(i)`` -> uint8 ``stored_shape`` (decoded / fitted where needed).  Thread-safe
    (one reader per shard and thread)."""

    def __init__(self, path: str | os.PathLike, split: str):
        self.path, self.split = str(path), split
        info = builder_info(path)
        if split not in info.splits:
            raise ValueError(f"{path}: no split {split!r}; it has {', '.join(info.splits.keys())}")
        si = info.splits[split]
        self.files = [os.fspath(f) for f in si.filepaths]
        lengths = [int(n) for n in si.shard_lengths]
        self.starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.kind, _ = _image_feature(path)
        self.shape = stored_shape(path)
        feats = info.features
        self._name_key = next((k for k in ("file_name", "id") if k in feats), None)
        self._local = threading.local()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __repr__(self) -> str:
        return f"RecordSource(path={self.path!r}, split={self.split!r})"

    def __getstate__(self):
        d = dict(self.__dict__)
        d.pop("_local")
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._local = threading.local()

    def _reader(self, shard: int):
        from array_record.python import array_record_module

        readers = getattr(self._local, "readers", None)
        if readers is None:
            readers = self._local.readers = {}
        r = readers.get(shard)
        if r is None:
            r = readers[shard] = array_record_module.ArrayRecordReader(self.files[shard], READER_OPTIONS)
        return r

    def close(self) -> None:
        for r in (getattr(self._local, "readers", None) or {}).values():
            r.close()
        self._local = threading.local()

    def read(self, i: int) -> bytes:
        """The serialized record ``i``."""
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} out of range [0, {len(self)}) in {self}")
        shard = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self._reader(shard).read([i - int(self.starts[shard])])[0]

    def _fields(self, i: int, rec: bytes) -> dict:
        ex = parse_example(rec)
        name = _to_str(ex[self._name_key][0]) if self._name_key and ex.get(self._name_key) else f"{self.split}#{i}"
        return {"image": ex["image"][0], "label": int(ex["label"][0]) if ex.get("label") else 0, "name": name}

    def record(self, i: int) -> dict:
        return self._fields(i, self.read(i))

    def decode(self, rec: dict) -> np.ndarray:
        """The image of a ``record`` as uint8 ``self.shape``."""
        if self.kind == "raw":
            data = rec["image"]
            if len(data) != math.prod(self.shape):
                raise ValueError(f"raw record of {len(data)} bytes, expected {math.prod(self.shape)}")
            return np.frombuffer(data, np.uint8).reshape(self.shape)
        return files.decode_fit(bytes(rec["image"]), self.shape)

    def image_into(self, i: int, out: np.ndarray) -> dict:
        """Read record ``i``, write its image into ``out`` (uint8 ``shape``), return {"label", "name"}.
        Raises on an undecodable image."""
        rec = self.record(i)
        out[...] = self.decode(rec)
        return {"label": rec["label"], "name": rec["name"]}

    def fadvise_dontneed(self) -> bool:
        """Drop the shard files from the page cache (cold-read benchmarks); False where unsupported."""
        if not hasattr(os, "posix_fadvise"):
            return False
        for f in self.files:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return True


# ----------------------------------------------------------------------------------------------------
# in-memory decoded splits
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ArraySplit:
    """A whole split decoded once: ``images[i]`` is record i in the stored shape (zeros where the image
    could not be decoded: ``valid[i]`` False, its name in ``bad``)."""

    images: np.ndarray                  # uint8 (N, H, W, C)
    labels: np.ndarray                  # int32 (N,)
    valid: np.ndarray                   # bool (N,)
    bad: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)


_ARRAY_SPLITS: collections.OrderedDict = collections.OrderedDict()   # key -> (fingerprint, ArraySplit)


def split_tag(split: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", split)


def atomic_save(dest: Path, write) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)                  # mkstemp's 0600 would hide a shared dataset's cache
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_dir(path: Path) -> Path:
    """``path`` where writable, else ``~/.cache/alexnet_jax/<name>/<version>``."""
    path = Path(path)
    if os.access(path, os.W_OK):
        return path
    d = Path(os.path.expanduser("~/.cache/alexnet_jax")) / path.parent.name / path.name
    d.mkdir(parents=True, exist_ok=True)
    return d


def in_memory_max_bytes() -> int:
    """Largest decoded split (bytes) the in-memory path takes: ``$ALEXNET_JAX_IN_MEMORY_MAX_BYTES``, else
    ``IN_MEMORY_MAX_BYTES``; 0 means always stream."""
    v = os.environ.get(IN_MEMORY_ENV, "").strip()
    return int(float(v)) if v else IN_MEMORY_MAX_BYTES


def fingerprint(path: Path) -> str:
    fs = sorted(p for p in Path(path).iterdir() if p.is_file() and (
        ".array_record" in p.name or p.name in ("dataset_info.json", "features.json")))
    stats = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in fs]
    return json.dumps([str(Path(path).resolve()), *stats])


def report_bad(name: str, err: BaseException, reported: set) -> None:
    if name not in reported:
        reported.add(name)
        log.warning("skipping undecodable image %s: %s: %s", name, type(err).__name__, err)


def decode_split(source: RecordSource) -> ArraySplit:
    n = len(source)
    t0 = time.perf_counter()
    images = np.zeros((n, *source.shape), np.uint8)
    labels = np.zeros((n,), np.int32)
    valid = np.zeros((n,), bool)
    reported: set = set()
    bad: list[str] = []
    for j in range(n):
        rec = source.record(j)
        labels[j] = rec["label"]
        try:
            images[j] = source.decode(rec)
            valid[j] = True
        except Exception as e:  # noqa: BLE001 - any decoder failure: report once and skip
            report_bad(rec["name"], e, reported)
            bad.append(rec["name"])
    log.info("decoded %s [%s]: %d images %s in %.1f s", source.path, source.split, n, source.shape,
             time.perf_counter() - t0)
    return ArraySplit(images, labels, valid, tuple(bad))


def _load_npz(file: Path, fp: str, shape: tuple) -> ArraySplit | None:
    try:
        with np.load(file, allow_pickle=False) as z:
            if int(z["version"]) != ARRAY_CACHE_VERSION or str(z["fingerprint"]) != fp:
                return None
            arrays = ArraySplit(z["images"], z["labels"], z["valid"], tuple(str(b) for b in z["bad"]))
    except Exception as e:  # noqa: BLE001 - an unreadable cache is rebuilt
        log.warning("ignoring unreadable cache %s: %s: %s", file, type(e).__name__, e)
        return None
    if arrays.images.shape[1:] != shape or arrays.images.dtype != np.uint8:
        return None
    return arrays


def load_array_split(path: str | os.PathLike, split: str) -> ArraySplit | None:
    """``split`` decoded once into memory (uint8, stored shape), or None where it does not fit: images of
    variable size, or more than ``in_memory_max_bytes()`` decoded.  Loaded from / saved to
    ``<dataset dir>/cache/`` and kept for the process (``MEMORY_CACHE_ENTRIES`` splits)."""
    path = Path(path)
    limit = in_memory_max_bytes()
    kind, shape_feat = _image_feature(path)
    if limit <= 0 or len(shape_feat) != 3 or any(not isinstance(d, int) for d in shape_feat):
        return None
    source = RecordSource(path, split)
    shape = source.shape
    if len(source) * math.prod(shape) > limit:
        return None
    key = (str(path), split, shape)
    fp = fingerprint(path)
    hit = _ARRAY_SPLITS.get(key)
    if hit is not None and hit[0] == fp:
        _ARRAY_SPLITS.move_to_end(key)
        return hit[1]
    file = cache_dir(path) / "cache" / f"{split_tag(split)}_{'x'.join(map(str, shape))}.npz"
    arrays = _load_npz(file, fp, shape) if DISK_CACHE and file.is_file() else None
    if arrays is None:
        arrays = decode_split(source)
        if DISK_CACHE:
            atomic_save(file, lambda f: np.savez(
                f, images=arrays.images, labels=arrays.labels, valid=arrays.valid,
                bad=np.array(arrays.bad, dtype=str), fingerprint=np.array(fp),
                version=np.array(ARRAY_CACHE_VERSION)))
    elif arrays.bad:
        log.warning("%s [%s]: %d undecodable image(s) skipped: %s", path, split, len(arrays.bad),
                    ", ".join(arrays.bad[:20]) + (" ..." if len(arrays.bad) > 20 else ""))
    source.close()
    _ARRAY_SPLITS[key] = (fp, arrays)
    while len(_ARRAY_SPLITS) > MEMORY_CACHE_ENTRIES:
        _ARRAY_SPLITS.popitem(last=False)
    return arrays


def clear_array_cache() -> None:
    """Forget the decoded splits held in memory (the disk cache stays)."""
    _ARRAY_SPLITS.clear()


# ----------------------------------------------------------------------------------------------------
# mean image
# ----------------------------------------------------------------------------------------------------
def mean_subset(n: int, max_examples: int | None = MEAN_MAX_EXAMPLES, seed: int = MEAN_SEED) -> np.ndarray:
    """Indices the mean is computed from: all, or a fixed-seed sorted random subset of ``max_examples``."""
    idx = np.arange(n)
    if max_examples is not None and n > max_examples:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_examples, replace=False))
    return idx


def compute_mean_image(path: str | os.PathLike, split: str, max_examples: int | None = MEAN_MAX_EXAMPLES,
                       seed: int = MEAN_SEED) -> np.ndarray:
    """Per-pixel mean (float32, 0..255 units, stored shape) of the split's images (a fixed-seed random
    subset of ``max_examples`` when larger); undecodable images are left out.  Integer sums in float64:
    exact, so the result does not depend on the order or on the in-memory vs streaming path."""
    arrays = load_array_split(path, split)
    source = RecordSource(path, split)
    n = len(arrays) if arrays is not None else len(source)
    idx = mean_subset(n, max_examples, seed)
    total = np.zeros(source.shape, np.float64)
    count, reported = 0, set()
    if arrays is not None:
        idx = idx[arrays.valid[idx]]
        for start in range(0, len(idx), 4096):
            total += arrays.images[idx[start:start + 4096]].sum(0, dtype=np.float64)
        count = len(idx)
    else:
        for i in idx:
            rec = source.record(int(i))
            try:
                img = source.decode(rec)
            except Exception as e:  # noqa: BLE001
                report_bad(rec["name"], e, reported)
                continue
            total += img
            count += 1
    source.close()
    if not count:
        raise ValueError(f"no decodable images in {path} [{split}] to compute a mean from")
    return (total / count).astype(np.float32)


def mean_image(path: str | os.PathLike, split: str) -> np.ndarray:
    """Cached per-pixel mean image of ``split`` (``<dataset dir>/mean_<split>_<H>x<W>x<C>.npy``)."""
    path = Path(path)
    shape = stored_shape(path)
    fname = f"mean_{split_tag(split)}_{'x'.join(map(str, shape))}.npy"
    for d in (path, cache_dir(path)):
        if (d / fname).is_file():
            m = np.load(d / fname)
            if m.shape == shape:
                return m
    t0 = time.perf_counter()
    mean = compute_mean_image(path, split)
    log.info("mean image of %s [%s] computed in %.1f s", path, split, time.perf_counter() - t0)
    atomic_save(cache_dir(path) / fname, lambda f: np.save(f, mean))
    return mean
