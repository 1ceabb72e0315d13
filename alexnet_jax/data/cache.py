"""Arrays derived from a prepared dataset and cached beside it: whole splits decoded once (the in-memory
loaders) and the per-pixel mean image (the ``cifar`` / ``alexnet`` augmentations).

In the dataset's folder where writable, else ``~/.cache/alexnet_jax/<name>/<version>``: ``cache/<split>_
<H>x<W>x<C>.npz`` (N x H x W x C bytes: CIFAR-10's 40,000 training images 123 MB) and ``mean_*.npy``;
rebuilt when the dataset's files change, deleted by ``alexnet-jax prepare DATASET --clear-cache``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .datasets import Dataset, dataset_at
from .sources import RecordSource

log = logging.getLogger(__name__)

IN_MEMORY_MAX_BYTES = 2 * 1024**3          # decoded uint8 bytes of one split
IN_MEMORY_ENV = "ALEXNET_JAX_IN_MEMORY_MAX_BYTES"
DISK_CACHE = True                           # cache decoded splits as <dataset dir>/cache/*.npz
MEMORY_CACHE_ENTRIES = 4                    # decoded splits kept in this process (LRU)
ARRAY_CACHE_VERSION = 2
MEAN_MAX_EXAMPLES = 10_000                  # the mean image is computed from at most this many images
MEAN_SEED = 0
READ_CHUNK = 256                            # records decoded at a time where a split is streamed


@dataclasses.dataclass
class ArraySplit:
    """A whole split decoded once: ``images[i]`` is record i in the stored shape (zeros where the image
    could not be decoded: ``valid[i]`` False, its name in ``bad``)."""

    images: np.ndarray                  # uint8 (N, H, W, C)
    labels: np.ndarray                  # int32 (N,)
    valid: np.ndarray                   # bool (N,)
    bad: tuple[str, ...] = ()


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
    d = _home_cache(path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _home_cache(path: Path) -> Path:
    return Path(os.path.expanduser("~/.cache/alexnet_jax")) / path.parent.name / path.name


def clear_disk_cache(path: str | os.PathLike) -> int:
    """Delete the cached arrays of the dataset at ``path`` (both places); returns the bytes freed."""
    dirs = {Path(path), _home_cache(Path(path))}
    files = [f for d in dirs for f in [*d.glob("cache/*"), *d.glob("mean_*.npy")]]
    freed = sum(f.stat().st_size for f in files)
    for f in files:
        f.unlink()
    for d in dirs:
        shutil.rmtree(d / "cache", ignore_errors=True)
    clear_array_cache()
    return freed


def in_memory_max_bytes() -> int:
    """Largest decoded split (bytes) the in-memory path takes: ``$ALEXNET_JAX_IN_MEMORY_MAX_BYTES``, else
    ``IN_MEMORY_MAX_BYTES``; 0 means always stream."""
    v = os.environ.get(IN_MEMORY_ENV, "").strip()
    return int(float(v)) if v else IN_MEMORY_MAX_BYTES


def dataset_fingerprint(path: Path) -> str:
    """The dataset's files (names, sizes, mtimes): a cached array is valid while this is unchanged."""
    fs = sorted(p for p in Path(path).iterdir() if p.is_file() and (
        ".array_record" in p.name or p.name in ("dataset_info.json", "features.json")))
    stats = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in fs]
    return json.dumps([str(Path(path).resolve()), *stats])


def decode_split(source: RecordSource) -> ArraySplit:
    n = len(source)
    t0 = time.perf_counter()
    images = np.zeros((n, *source.shape), np.uint8)
    labels = np.zeros((n,), np.int32)
    valid = source.read_into(np.arange(n), images, labels)
    bad = tuple(source.record(int(i))["name"] for i in np.flatnonzero(~valid))
    log.info("decoded %s [%s]: %d images %s in %.1f s", source.path, source.split, n, source.shape,
             time.perf_counter() - t0)
    return ArraySplit(images, labels, valid, bad)


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


def load_array_split(dataset: Dataset | str | os.PathLike, split: str) -> ArraySplit | None:
    """``split`` decoded once into memory (uint8, stored shape), or None where it does not fit: images of
    variable size, or more than ``in_memory_max_bytes()`` decoded.  Loaded from / saved to
    ``<dataset dir>/cache/`` and kept for the process (``MEMORY_CACHE_ENTRIES`` splits)."""
    ds = dataset if isinstance(dataset, Dataset) else dataset_at(dataset)
    path, shape, limit = ds.path, ds.stored_shape, in_memory_max_bytes()
    if limit <= 0 or not ds.static_shape:
        return None
    ds.split_shards(split)                                   # raises for a split the dataset does not have
    if ds.splits[split] * math.prod(shape) > limit:
        return None
    key = (str(path), split, shape)
    fp = dataset_fingerprint(path)
    hit = _ARRAY_SPLITS.get(key)
    if hit is not None and hit[0] == fp:
        _ARRAY_SPLITS.move_to_end(key)
        return hit[1]
    file = cache_dir(path) / "cache" / f"{split_tag(split)}_{'x'.join(map(str, shape))}.npz"
    arrays = _load_npz(file, fp, shape) if DISK_CACHE and file.is_file() else None
    if arrays is None:
        source = RecordSource(ds, split)
        arrays = decode_split(source)
        source.close()
        if DISK_CACHE:
            atomic_save(file, lambda f: np.savez(
                f, images=arrays.images, labels=arrays.labels, valid=arrays.valid,
                bad=np.array(arrays.bad, dtype=str), fingerprint=np.array(fp),
                version=np.array(ARRAY_CACHE_VERSION)))
    elif arrays.bad:
        log.warning("%s [%s]: %d undecodable image(s) skipped: %s", path, split, len(arrays.bad),
                    ", ".join(arrays.bad[:20]) + (" ..." if len(arrays.bad) > 20 else ""))
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
def compute_mean_image(dataset: Dataset | str | os.PathLike, split: str,
                       max_examples: int | None = MEAN_MAX_EXAMPLES, seed: int = MEAN_SEED) -> np.ndarray:
    """Per-pixel mean (float32, 0..255 units, stored shape) of the split's images (a fixed-seed random
    subset of ``max_examples`` when larger); undecodable images are left out.  Integer sums in float64:
    exact, so the result does not depend on the order or on the in-memory vs streaming path."""
    ds = dataset if isinstance(dataset, Dataset) else dataset_at(dataset)
    arrays = load_array_split(ds, split)
    n = ds.splits[split]
    idx = np.arange(n) if max_examples is None or n <= max_examples else np.sort(
        np.random.default_rng(seed).choice(n, max_examples, replace=False))
    total = np.zeros(ds.stored_shape, np.float64)
    count = 0
    if arrays is not None:
        idx = idx[arrays.valid[idx]]
        for start in range(0, len(idx), 4096):
            total += arrays.images[idx[start:start + 4096]].sum(0, dtype=np.float64)
        count = len(idx)
    else:
        source = RecordSource(ds, split)
        images = np.zeros((READ_CHUNK, *ds.stored_shape), np.uint8)
        labels = np.zeros((READ_CHUNK,), np.int32)
        for start in range(0, len(idx), READ_CHUNK):
            chunk = idx[start:start + READ_CHUNK]
            ok = source.read_into(chunk, images[:len(chunk)], labels[:len(chunk)])
            total += images[:len(chunk)][ok].sum(0, dtype=np.float64)
            count += int(ok.sum())
        source.close()
    if not count:
        raise ValueError(f"no decodable images in {ds.path} [{split}] to compute a mean from")
    return (total / count).astype(np.float32)


def mean_image(dataset: Dataset | str | os.PathLike, split: str) -> np.ndarray:
    """Cached per-pixel mean image of ``split`` (``<dataset dir>/mean_<split>_<H>x<W>x<C>.npy``)."""
    ds = dataset if isinstance(dataset, Dataset) else dataset_at(dataset)
    path, shape = ds.path, ds.stored_shape
    fname = f"mean_{split_tag(split)}_{'x'.join(map(str, shape))}.npy"
    for d in (path, cache_dir(path)):
        if (d / fname).is_file():
            m = np.load(d / fname)
            if m.shape == shape:
                return m
    t0 = time.perf_counter()
    mean = compute_mean_image(ds, split)
    log.info("mean image of %s [%s] computed in %.1f s", path, split, time.perf_counter() - t0)
    atomic_save(cache_dir(path) / fname, lambda f: np.save(f, mean))
    return mean
