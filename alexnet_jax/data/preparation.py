"""Preparing a dataset offline as a TFDS ``array_record`` dataset (no TensorFlow, no network), and
``locate(config)``: a run's prepared dataset, found once (``digits`` is prepared on first use).

``prepare(name, source, data_dir)`` lists the source (``listing``) and writes ``<data_dir>/<dataset>[/<store>]
/<version>/`` (``shards``) with the TFDS catalog's names, versions and features, so ``tfds.builder_from_directory``
(and ``tfds.data_source`` for the stock layouts) reads it, and a data_dir filled by ``tfds build NAME
--file_format=array_record`` is read the same way.
  * Nothing is written before the listing has succeeded.  Shards are written by a pool of processes (all
    cores by default) into ``<final>.staging``; each finished shard is marked done (``done/*.json``).
  * One prepare of a dataset at a time: ``<staging>/.lock`` holds the writer's pid and host; a second
    prepare is refused naming them.
  * Checks: every split needs a readable image, and at most ``MAX_UNREADABLE`` (half) of a split's images
    may be unreadable; else the prepare is refused (``PreparationError`` naming the source and the splits)
    and the staging folder removed: nothing is left that looks prepared.  Then the TFDS metadata and
    ``prepare_report.json`` (unreadable and resized files) are written and the folder renamed into place.
  * Ctrl-C (SIGINT) stops after the shards being written (the workers ignore it), says in one line
    (``Interrupted``, exit 130) what was kept and how to resume.
  * Resume: an interrupted prepare keeps its staging folder; the next one from the same source and settings
    (``plan.json``) writes only the shards not done (another source starts afresh); a staging folder with no
    finished shard is removed.
  * A prepared dataset is reused unless ``overwrite``, or unless it fails the checks (one written before
    they existed): then it is rebuilt.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from alexnet_jax.errors import ConfigError, Interrupted, PreparationError

from .catalog import JPEG256_QUALITY, VERSIONS, split_name
from .datasets import Dataset, dataset_at, dataset_dir, dataset_root, find_dataset_dir, resolve_data_dir
from .listing import Listing, list_source
from .records import stored_shape_of
from .shards import shard_name, write_metadata, write_shard

log = logging.getLogger(__name__)

MAX_UNREADABLE = 0.5           # largest share of a split's images that may be unreadable
REPORT_FILE = "prepare_report.json"
PLAN_FILE = "plan.json"
LOCK_FILE = ".lock"
STAGING_SUFFIX = ".staging"
PROGRESS_SECONDS = 5.0
SHARD_SIZES = {"raw256": 2048, "jpeg256": 8192, None: 4096}   # records a shard (~400 MB raw, ~200 MB jpeg)


def _digest(listing: Listing, shard_size: int, quality: int) -> dict:
    """What decides a prepare's files (``plan.json``): a staging folder is resumed only when it matches."""
    h = hashlib.sha256()
    for split in sorted(listing.splits):
        h.update(split.encode())
        for it in listing.splits[split]:
            h.update(f"\0{it.key}\0{it.label}".encode())
    return {"dataset": listing.dataset if not listing.store else f"{listing.dataset}/{listing.store}",
            "source": listing.source, "shard_size": shard_size,
            "quality": quality if listing.store == "jpeg256" else None, "items_sha256": h.hexdigest(),
            "splits": {k: len(v) for k, v in listing.splits.items()}}


def _problems(written: dict[str, int], unreadable: dict[str, int]) -> list[str]:
    """What fails the checks (module docstring), one phrase per split."""
    out = [] if written else ["no split at all"]
    for split, n in written.items():
        bad = unreadable.get(split, 0)
        if n == 0:
            out.append(f"split {split!r} has no readable image ({bad} unreadable)" if bad else
                       f"split {split!r} is empty")
        elif bad > MAX_UNREADABLE * (n + bad):
            out.append(f"split {split!r} has {bad} unreadable images of {n + bad}")
    return out


def _existing_problems(path: Path) -> list[str]:
    """``_problems`` of a prepared dataset, from its metadata and report (a TFDS-built one has no report)."""
    info = json.loads((path / "dataset_info.json").read_text())
    written = {s["name"]: sum(int(n) for n in s.get("shardLengths", [])) for s in info.get("splits", [])}
    report = json.loads((path / REPORT_FILE).read_text()) if (path / REPORT_FILE).is_file() else {}
    return _problems(written, report.get("unreadable_by_split", {}))


def _discard(staging: Path, root: Path) -> None:
    """Remove the staging folder, and the folders above it up to ``root`` that it leaves empty."""
    shutil.rmtree(staging, ignore_errors=True)
    path = staging.parent
    while path != root and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent


def _lock(staging: Path, dataset: str) -> int:
    """An exclusive ``flock`` on ``<staging>/.lock`` naming its holder (pid, host); PreparationError if held."""
    fd = os.open(staging / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = (staging / LOCK_FILE).read_text(errors="replace").strip() or "a process"
        raise PreparationError(f"another prepare of {dataset} ({holder}) is writing {staging} (it holds "
                               f"{staging / LOCK_FILE}): wait for it to finish, or stop it and run this command "
                               f"again (it resumes from the shards already written)") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
    return fd


class _PrepareProgress:
    def __init__(self, name: str, total: int, done: int):
        self.name, self.total, self.done, self.start_done = name, total, done, done
        self.t0 = self.last = time.perf_counter()

    def update(self, n: int, force: bool = False) -> None:
        self.done += n
        now = time.perf_counter()
        if force or now - self.last >= PROGRESS_SECONDS:
            self.last = now
            rate = (self.done - self.start_done) / max(now - self.t0, 1e-9)
            eta = f"{(self.total - self.done) / rate / 60:.1f} min" if rate > 0 else "?"
            pct = 100 * self.done / max(self.total, 1)
            print(f"prepare {self.name}: {self.done:,}/{self.total:,} images ({pct:.0f}%), {rate:,.0f} img/s, "
                  f"ETA {eta}", file=sys.stderr, flush=True)


def prepare(dataset: str, source: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
            *, overwrite: bool = False, workers: int | None = None, shard_size: int | None = None,
            quality: int = JPEG256_QUALITY) -> Path:
    """Build ``dataset`` (a name of ``dataset_names()``, e.g. ``imagenet2012/raw256``) from ``source`` into
    ``data_dir`` (array_record); returns the dataset dir.  An existing prepared dataset is reused unless
    ``overwrite`` or it fails the checks.  ``workers``: processes writing shards (default: all cores; 0: in
    this process).  Module docstring: staging, lock, checks, resume, progress."""
    base, store = split_name(dataset)          # raises for unknown names and stores, listing the valid ones
    if not 1 <= int(quality) <= 100:
        raise ConfigError(f"JPEG quality {quality} is not allowed: it must be 1..100")
    root = resolve_data_dir(data_dir)
    final = dataset_root(dataset, root) / VERSIONS[base]
    existing = find_dataset_dir(dataset, root)
    if existing is not None and existing.name == VERSIONS[base] and not overwrite:
        problems = _existing_problems(existing)
        if not problems:
            log.info("%s already prepared at %s", dataset, existing)
            return existing
        log.warning("%s at %s fails the checks (%s): preparing it again", dataset, existing, "; ".join(problems))
    t0 = time.perf_counter()
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    try:
        listing = list_source(dataset, source)     # checks the source: nothing is written before this succeeds
    except KeyboardInterrupt:
        raise Interrupted(f"prepare {dataset} stopped by SIGINT (Ctrl-C) while listing its source: nothing was "
                          f"written", signal.SIGINT) from None
    shard_size = int(shard_size or SHARD_SIZES.get(store, SHARD_SIZES[None]))
    staging = final.parent / (final.name + STAGING_SUFFIX)
    new_staging = not staging.is_dir()
    staging.mkdir(parents=True, exist_ok=True)
    fd = _lock(staging, dataset)
    try:
        return _prepare_locked(dataset, listing, _digest(listing, shard_size, quality), staging, final, root,
                               shard_size, quality, workers, new_staging, t0)
    finally:
        os.close(fd)


def _prepare_locked(dataset, listing: Listing, digest, staging: Path, final: Path, root: Path, shard_size: int,
                    quality: int, workers: int, new_staging: bool, t0: float) -> Path:
    base, store = split_name(dataset)
    done_dir = staging / "done"
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
    tasks, done, total, num_shards = [], {}, 0, {}
    for split, items in listing.splits.items():
        num_shards[split] = max(1, -(-len(items) // shard_size))
        for s in range(num_shards[split]):
            chunk = items[s * shard_size:(s + 1) * shard_size]
            for it in chunk:
                it.where = listing.where(it)
            name = shard_name(dataset, split, s, num_shards[split])
            marker = done_dir / f"{split}-{s:05d}.json"
            total += len(chunk)
            if marker.is_file() and (staging / name).is_file():
                done[(split, s)] = json.loads(marker.read_text())
                continue
            tasks.append({"dataset": dataset, "class_names": listing.class_names, "id_feature": listing.id_feature,
                          "meta": meta, "items": chunk, "split": split, "shard": s, "path": str(staging / name),
                          "marker": str(marker)})
    if done:
        log.warning("resuming %s: %d of %d shards already written in %s", dataset, len(done), len(done) + len(tasks),
                    staging)
    progress = _PrepareProgress(dataset, total, sum(len(listing.splits[sp][s * shard_size:(s + 1) * shard_size])
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
            # the workers never see Ctrl-C (a terminal sends it to all of them): they are started with SIGINT
            # ignored, which an exec keeps and Python leaves so (a Ctrl-C while they are started is lost)
            handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
            with cf.ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as pool:
                try:
                    futures = {pool.submit(write_shard, t): t for t in tasks}
                finally:
                    signal.signal(signal.SIGINT, handler)
                try:
                    for fut in cf.as_completed(futures):
                        finish(futures[fut], fut.result())
                except KeyboardInterrupt:       # Ctrl-C: the shards being written are finished and kept
                    pool.shutdown(wait=True, cancel_futures=True)
                    for fut, t in futures.items():
                        if fut.done() and not fut.cancelled() and fut.exception() is None \
                                and (t["split"], t["shard"]) not in done:
                            finish(t, fut.result())
                    raise
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    except BaseException as e:
        kept = any(done_dir.iterdir())
        if not kept:
            _discard(staging, root)
        shards = f"{len(done)} of {sum(num_shards.values())} shards are kept in {staging}; run the same command " \
                 f"again to resume"
        if isinstance(e, KeyboardInterrupt):
            raise Interrupted(f"prepare {dataset} stopped by SIGINT (Ctrl-C): " + (shards if kept else
                              "no shard was finished, nothing was kept"), signal.SIGINT) from None
        if kept:
            log.warning("prepare %s stopped (%s): %s", dataset, type(e).__name__, shards)
        raise
    progress.update(0, force=True)

    results = {split: [done[(split, s)] for s in range(num_shards[split])] for split in listing.splits}
    written = {split: sum(r["n"] for r in res) for split, res in results.items()}
    unreadable = {split: sum(len(r["skipped"]) for r in res) for split, res in results.items()}
    skipped = [w for res in results.values() for r in res for w in r["skipped"]]
    resized = [w for res in results.values() for r in res for w in r.get("resized", [])]
    problems = _problems(written, unreadable)
    if problems:
        _discard(staging, root)
        raise PreparationError(
            f"{dataset} from {listing.source or 'its bundled source'} was not prepared: {'; '.join(problems)}"
            + (f" (e.g. {', '.join(skipped[:3])})" if skipped else "") + f"; every split needs readable images and "
            f"at most {MAX_UNREADABLE:.0%} unreadable ones: check the source (nothing was written)")
    write_metadata(dataset, listing.class_names, staging,
                   {split: ([r["n"] for r in res], sum(r["bytes"] for r in res)) for split, res in results.items()})
    report = {"dataset": dataset, "source": listing.source, "num_skipped": len(skipped), "skipped": skipped,
              "unreadable_by_split": unreadable, "num_resized": len(resized),
              "resized": resized, "splits": written, "store": store,
              "jpeg_quality": quality if store == "jpeg256" else None, "seconds": round(time.perf_counter() - t0, 1)}
    (staging / REPORT_FILE).write_text(json.dumps(report, indent=2))
    shutil.rmtree(done_dir)
    (staging / PLAN_FILE).unlink()
    (staging / LOCK_FILE).unlink()
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    if skipped:
        log.warning("%s: skipped %d unreadable image(s); see %s", dataset, len(skipped), final / REPORT_FILE)
    if resized:
        h, w, _ = stored_shape_of(dataset)
        log.warning("%s: %d image(s) were not %dx%d and were resized (shorter side, centre kept); see %s",
                    dataset, len(resized), h, w, final / REPORT_FILE)
    return final


# ----------------------------------------------------------------------------------------------------
# the prepared dataset of a run
# ----------------------------------------------------------------------------------------------------
def locate(config, *, auto: bool = True) -> Dataset:
    """The prepared dataset of ``config`` (``dataset``, ``data_dir``; ``image_shape`` from ``input_size``),
    read once: pass it on as ``dataset=`` to the loaders and ``make_augment``.  ``digits`` (offline, a few
    seconds) is prepared when missing and ``auto``: in this process, by process 0 while the others wait.
    Raises DatasetNotPreparedError (naming the prepare command) for any other missing dataset."""
    name, data_dir = config.dataset, config.data_dir or None
    if auto and name == "digits" and find_dataset_dir(name, data_dir) is None:
        import jax  # lazy: ~1.3 s to import; preparation, the loaders and the tools' photo path run without it

        if jax.process_index() == 0:
            prepare("digits", None, data_dir, workers=0)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # lazy: as jax above
            multihost_utils.sync_global_devices("alexnet_jax: digits prepared")
    ds = dataset_at(dataset_dir(name, data_dir), name)
    s = int(config.input_size)
    return dataclasses.replace(ds, image_shape=(s, s, ds.stored_shape[-1]))


def ensure_prepared(config, *, auto: bool = True) -> Path:
    """The folder of ``locate(config)``."""
    return locate(config, auto=auto).path


dataset_info = locate   # the name the run and the tools have used
