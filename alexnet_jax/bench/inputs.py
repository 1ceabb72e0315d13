"""Input pipeline benchmark: host-side images/s per core of the loaders for each ImageNet store, and the
device augmentation's own cost.

``input_pipeline(store, images_tar)`` builds, in a temporary data_dir, an ``imagenet2012`` dataset in the
given store (``raw256 | jpeg256 | jpeg``; ``jpeg`` = the original JPEGs) from the sample photos repeated
to ``records`` records, then times the training loader (reading records + stacking uint8 batches, +
decoding for jpeg256/jpeg; streaming path, no prefetch thread, ``threads`` reader threads):

* page cache: a second pass over records already read once;
* cold: after ``posix_fadvise(POSIX_FADV_DONTNEED)`` on every shard file (reported as unavailable where
  the OS has no posix_fadvise, or when the pages stay cached, e.g. on a tmpfs);

"per core" is images per CPU-second of this process (all its threads), so it does not depend on how
many other jobs share the machine.  ``cores_needed`` = ``step_rate`` / per-core rate (default 23,500
img/s: the plain Flax two-column AlexNet step on one H100 in bf16).  The device augmentation
(``Augment('alexnet').train``, jitted, synchronised) is timed apart, per batch, and as a share of
``step_seconds`` when given.  With ``compare_processes``, the same records are also read by grain worker
processes (``grain.DataLoader``, ``threads`` workers) for the threads-vs-processes comparison (wall time).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import flags

from alexnet_jax import data as data_lib
from alexnet_jax.config import Config
from alexnet_jax.data import files
from alexnet_jax.data.augment import Augment
from alexnet_jax.data.loader import TrainLoader
from alexnet_jax.data.preparation import prepare
from alexnet_jax.data.sources import RecordSource
from alexnet_jax.run import build_run

STORES = {"raw256": "imagenet2012/raw256", "jpeg256": "imagenet2012/jpeg256", "jpeg": "imagenet2012"}
STEP_RATE_IMG_S = 23_500.0
STEP_RATE_SOURCE = "plain Flax two-column AlexNet training step on one H100, bf16"


def _tree(images_tar, root: Path, records: int) -> int:
    """train/<wnid>/<name>_<k>.JPEG: the sample photos repeated (links) so that at least ``records`` remain
    for training after prepare holds round(10%) of each class (at least one) out for validation."""
    photos = files.read_image_files(images_tar)
    src = root / "photos"
    src.mkdir(parents=True)
    paths = []
    for i, (name, data) in enumerate(photos):
        p = src / f"{i:04d}.JPEG"
        p.write_bytes(data)
        paths.append((Path(name).name.split("_")[0], Path(name).stem, p))
    need = -(-records // len(paths))           # per class, after prepare holds round(10%) (at least 1) out
    per = next(k for k in range(2, 10 * need + 10) if k - max(1, round(0.1 * k)) >= need)
    for wnid, stem, p in paths:
        d = root / "tree" / "train" / wnid
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per):
            os.symlink(p, d / f"{stem}_{k:04d}.JPEG")
    return per * len(paths)


def _time_loader(loader, batches: int) -> dict[str, float]:
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    for _ in range(batches):
        next(loader)
    cpu, wall = time.process_time() - t_cpu, time.perf_counter() - t_wall
    n = batches * loader.batch_size
    return {"images": n, "cpu_seconds": cpu, "wall_seconds": wall, "images_per_second_per_core": n / cpu,
            "images_per_second_wall": n / wall}


try:  # grain is only needed for the threads-vs-processes comparison
    import grain as _grain
except ImportError:  # pragma: no cover
    _grain = None

if _grain is not None:
    class _ReadRecord(_grain.transforms.Map):
        """Read + decode one record (module level: picklable for grain's worker processes)."""

        def __init__(self, path: str, split: str):
            self.path, self.split, self._src = path, split, None

        def __getstate__(self):
            return {"path": self.path, "split": self.split, "_src": None}

        def map(self, i):
            if self._src is None:
                self._src = RecordSource(self.path, self.split)
            rec = self._src.record(int(i))
            return {"image": self._src.decode(rec), "label": np.int32(rec["label"])}


def _grain_processes(path, workers: int, batch: int, batches: int) -> dict[str, float]:
    """The same records read + decoded by grain worker processes (threads vs processes); grain is not a
    dependency of the project (the threaded loader measured faster): `pip install grain` to compare."""
    if _grain is None:
        return {"skipped": "grain is not installed (pip install grain)"}

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()          # grain 0.2.18 workers read an absl flag (google/grain#1355)
    n = len(RecordSource(path, "train"))
    loader = _grain.DataLoader(
        data_source=_grain.sources.RangeDataSource(0, n, 1),
        sampler=_grain.samplers.IndexSampler(n, shuffle=True, seed=0, num_epochs=None),
        operations=[_ReadRecord(str(path), "train"), _grain.transforms.Batch(batch, drop_remainder=True)],
        worker_count=workers)
    it = iter(loader)
    next(it)                                  # start-up (worker processes) not timed
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    wall = time.perf_counter() - t
    del it
    return {"workers": workers, "images_per_second_wall": batches * batch / wall}


def augment_cost(input_size: int = 224, batch: int = 128, repeats: int = 10, step_seconds: float | None = None,
                 seed: int = 0) -> dict[str, Any]:
    """Seconds per batch of the jitted ``alexnet`` training augmentation (and eval centre crop) on the
    default JAX device, from uint8 (batch, 256, 256, 3), synchronised."""
    rng = np.random.default_rng(seed)
    aug = Augment("alexnet", input_size, (256, 256, 3), rng.uniform(0, 255, (256, 256, 3)).astype(np.float32))
    x = jax.device_put(rng.integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8))
    pos = jax.device_put(np.arange(batch, dtype=np.int32))
    key = jax.random.key(seed)
    out = {}
    for name, fn, args in (("train", jax.jit(aug.train), (x, pos, key)), ("eval", jax.jit(aug.eval), (x,))):
        jax.block_until_ready(fn(*args))
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            best = min(best, time.perf_counter() - t)
        out[f"{name}_seconds_per_batch"] = best
    out.update(device=str(jax.devices()[0]), batch=batch, input_size=input_size)
    if step_seconds:
        out["step_seconds"] = step_seconds
        out["train_share_of_step"] = out["train_seconds_per_batch"] / step_seconds
    return out


def input_pipeline(store: str, images_tar: str | os.PathLike, *, records: int = 3000, input_size: int = 224,
                   batch: int = 128, threads: int = 1, batches: int | None = None,
                   step_rate: float = STEP_RATE_IMG_S, step_seconds: float | None = None, augment: bool = True,
                   compare_processes: bool = False, workdir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Loader images/s per core for ``store`` (module docstring); returns a JSON-able dict."""
    if store not in STORES:
        raise ValueError(f"unknown store {store!r}; choose from {', '.join(STORES)}")
    tmp = Path(tempfile.mkdtemp(prefix="alexnet_jax_bench_", dir=workdir))
    try:
        made = _tree(images_tar, tmp, records)
        t = time.perf_counter()
        path = prepare(STORES[store], tmp / "tree", tmp / "tfds", workers=None)
        prepare_s = time.perf_counter() - t
        cfg = Config(dataset=STORES[store], data_dir=str(tmp / "tfds"), augment="alexnet", input_size=input_size,
                     num_workers=threads)
        src = RecordSource(path, "train")
        n = len(src)
        record_bytes = sum(os.path.getsize(f) for f in src.files) / n
        batches = batches or max(2, min(n // batch, 20))
        loader = TrainLoader(cfg, batch_size=batch, prefetch=0, num_threads=threads, arrays=None)
        _time_loader(loader, batches)                                   # first pass: fills the page cache
        warm = _time_loader(TrainLoader(cfg, batch_size=batch, prefetch=0, num_threads=threads, arrays=None),
                            batches)
        cold_ok = src.fadvise_dontneed()
        cold = _time_loader(TrainLoader(cfg, batch_size=batch, prefetch=0, num_threads=threads, arrays=None),
                            batches) if cold_ok else None
        result: dict[str, Any] = {
            "mode": "input_pipeline", "store": store, "dataset": STORES[store], "records": n, "files_made": made,
            "record_bytes_mean": record_bytes, "prepare_seconds": prepare_s, "batch": batch, "threads": threads,
            "page_cache": warm, "cold": cold,
            "cold_note": None if cold_ok else "posix_fadvise unavailable: cold reads not measured",
            "step_rate_images_per_second": step_rate, "step_rate_source": STEP_RATE_SOURCE,
            "cores_needed_page_cache": step_rate / warm["images_per_second_per_core"],
            "cores_needed_cold": step_rate / cold["images_per_second_per_core"] if cold else None,
            "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        }
        if compare_processes:
            result["grain_processes"] = _grain_processes(path, max(1, threads), batch, batches)
            th = TrainLoader(cfg, batch_size=batch, prefetch=0, num_threads=max(1, threads), arrays=None)
            result["threads_same_count"] = _time_loader(th, batches)
        if augment:
            result["augment"] = augment_cost(input_size, batch, step_seconds=step_seconds)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def end_to_end(store: str, images_tar: str | os.PathLike, *, model: str = "alexnet", records: int = 3000,
               input_size: int = 224, width: float = 1.0, batch: int = 128, steps: int = 20, threads: int = 0,
               dtype: str = "float32", workdir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The real train step fed by the real input path (records -> uint8 batch on the host -> device ->
    augmentation inside the step) against the same step on one batch already on the device: img/s of
    each and their ratio (1.0: the step never waits for its input).  `threads` reader threads (0: every
    core); the loader prefetches in the background, and dispatch is asynchronous, so the host reads the
    next batch while the device runs the step."""
    if store not in STORES:
        raise ValueError(f"unknown store {store!r}; choose from {', '.join(STORES)}")
    tmp = Path(tempfile.mkdtemp(prefix="alexnet_jax_e2e_", dir=workdir))
    try:
        _tree(images_tar, tmp, records)
        data_lib.prepare(STORES[store], tmp / "tree", tmp / "tfds", workers=None)
        cfg = Config(model=model, num_classes=1000, input_size=input_size, width=width, dtype=dtype,
                     dataset=STORES[store], data_dir=str(tmp / "tfds"), augment="alexnet", batch_size=batch,
                     num_workers=threads, init="paper")
        with build_run(cfg, evaluation=False) as run:
            trainer, loader = run.trainer, run.train_loader
            state = trainer.init()
            first = trainer.global_batch(next(loader))
            step = trainer.train_step.lower(state, first).compile()
            for _ in range(2):
                state, m = step(state, trainer.global_batch(next(loader)))
            jax.block_until_ready((state, m))

            def timed(feed) -> float:   # the benchmark's timed region: the bare step, not the run loop
                nonlocal state
                t = time.perf_counter()
                for _ in range(steps):
                    state, metrics = step(state, feed())
                jax.block_until_ready((state, metrics))
                return time.perf_counter() - t

            real = timed(lambda: trainer.global_batch(next(loader)))
            on_device = timed(lambda: first)
            return {"mode": "end_to_end", "store": store, "model": model, "input_size": input_size, "width": width,
                    "dtype": dtype, "batch": batch, "steps": steps, "reader_threads": threads or os.cpu_count(),
                    "device": str(jax.devices()[0].device_kind), "loader_images_per_second": steps * batch / real,
                    "on_device_images_per_second": steps * batch / on_device, "ratio": on_device / real,
                    "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
