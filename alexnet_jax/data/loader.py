"""Host-side loaders: they only read records and stack uint8 batches (all arithmetic and randomness is done
on the device by ``augment.Augment``).

Training (``make_train_loader`` -> ``TrainLoader``): an infinite iterator of
``{"image": uint8 (B, H, W, C), "label": int32 (B,), "index": int32 (B,)}`` for this process, where B is
the per-process batch and ``index`` holds each row's position in the global training stream,
``step * B * process_count + process_index * B + row``: the key of its random augmentation draws.

* Order: epoch e is a permutation of the split drawn from (seed, e), the same on every process; process p
  takes the p-th of ``process_count`` equal slices (disjoint; the remainder is dropped).  Batches run
  across epoch boundaries; ``steps_per_epoch`` = share // B.
* State: (epoch, cursor into this process's slice, step).  ``get_state()`` -> JSON bytes of the state
  after the last batch returned; ``set_state`` on a loader built with the same settings resumes exactly.
* Bad images (``RecordSource.read_into``'s rule): skipped, the batch takes the next records of the slice,
  so the stream of good records (and the state) is still a pure function of the settings.
* Prefetch: a background thread builds the next ``prefetch`` batches while the step runs.

Two ways to read, chosen per split (same batches, same states, same API; ``dataset=locate(config)``, else
located here):

in-memory  splits whose images have one static shape and fit in ``cache.in_memory_max_bytes()``
           (digits, mnist, cifar10): decoded once to uint8 (cached on disk as .npz) and gathered with
           ``np.take``; undecodable images are left out of the permutation up front.
streaming  everything else (ImageNet and its stores): records read with one array_record reader per shard
           and thread, decoded where the store is JPEG, by a pool of ``num_threads`` threads (array_record
           reads, simplejpeg/Pillow decoding and the copies all release the GIL; measured faster than
           worker processes, which must copy each image back through shared memory - see
           ``alexnet_jax/bench/inputs.py``).

Evaluation (``make_eval_loader`` -> ``EvalLoader``): one pass per ``iter()`` of
``{"image": uint8, "label": int32, "mask": bool}`` batches of B; process p reads the contiguous p-th
share of the split, the last batch is padded (mask False, zeros), an undecodable image is reported and
masked out; every example is in exactly one process's batches and every process yields the same number of
batches.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import json
import logging
import math
import os
import queue
import threading
import weakref
from typing import Any

import numpy as np

from alexnet_jax.errors import ConfigError

from .cache import load_array_split
from .datasets import Dataset, prepare_command
from .preparation import locate
from .sources import RecordSource

log = logging.getLogger(__name__)

STATE_FORMAT = 3
PREFETCH = 2                      # batches built ahead by the background thread
_PERM_STREAM = 1                  # first SeedSequence word of the epoch permutations


def _open(config, split, batch_size, process_index, process_count, num_threads, arrays, dataset):
    """(dataset, _Reader, batch size) of a loader of ``split``, its settings checked."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if int(batch_size) <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    ds = dataset or locate(config)
    if isinstance(arrays, str) and arrays == "auto":
        arrays = load_array_split(ds, split)
    n = int(getattr(config, "num_workers", 0) or 0)
    threads = num_threads if num_threads is not None else (n if n > 0 else os.cpu_count() or 1)
    return ds, _Reader(RecordSource(ds, split), arrays, threads), int(batch_size)


class _Reader:
    """Fills rows of a uint8 batch from a split: in memory (np.take) or streaming (thread pool)."""

    def __init__(self, source: RecordSource, arrays, num_threads: int):
        self.source, self.arrays = source, arrays
        self.num_threads = max(1, int(num_threads))
        self._pool: cf.ThreadPoolExecutor | None = None

    @property
    def pipeline(self) -> str:
        return "memory" if self.arrays is not None else "stream"

    def fill(self, idx: np.ndarray, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Write records ``idx`` into ``images``/``labels`` (same length); returns the bool mask of the
        records that could be decoded (the others are zeros)."""
        if self.arrays is not None:
            np.take(self.arrays.images, idx, axis=0, out=images)
            labels[:] = self.arrays.labels[idx]
            ok = self.arrays.valid[idx]
            images[~ok] = 0
            return ok
        ok = np.zeros(len(idx), bool)

        def work(lo: int, hi: int) -> None:
            ok[lo:hi] = self.source.read_into(idx[lo:hi], images[lo:hi], labels[lo:hi])

        n = len(idx)
        chunks = min(self.num_threads, n)
        if chunks <= 1:
            work(0, n)
            return ok
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(self.num_threads, thread_name_prefix="alexnet_jax-read")
        bounds = np.linspace(0, n, chunks + 1).astype(int)
        for f in [self._pool.submit(work, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]:
            f.result()
        return ok

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.source.close()


class _Prefetcher:
    """Runs ``produce(state) -> (item, next_state)`` in a background thread, ``depth`` items ahead."""

    def __init__(self, produce, state, depth: int):
        # a weak reference to a bound method: the thread does not keep an abandoned loader alive
        self._produce = weakref.WeakMethod(produce) if hasattr(produce, "__self__") else (lambda: produce)
        self._q = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(state,), daemon=True, name="alexnet_jax-prefetch")
        self._thread.start()

    def _run(self, state):
        try:
            while not self._stop.is_set():
                produce = self._produce()
                if produce is None:            # the loader was garbage-collected
                    return
                item = produce(state)
                del produce
                state = item[1]
                while not self._stop.is_set():
                    try:
                        self._q.put(("ok", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._q.put(("error", e))

    def get(self):
        kind, item = self._q.get()
        if kind == "error":
            raise item
        return item

    def stop(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


def _migrate_format_2(state: dict, meta: dict) -> dict:
    """A state of the in-memory loader of checkpoint format 1 (alexnet_jax up to 3e6cf36), in today's form.

    That loader drew epoch e's order from the same seed words and ran batches across epochs the same way,
    so (epoch, position, step) is today's (epoch, cursor, step); its augmentation ran on the host, so the
    continuation's random crops differ from the old run's, not its example order."""
    old = state.get("meta", {})
    same = {k: v for k, v in meta.items() if k in old}
    if any(old[k] != v for k, v in same.items()):
        raise ValueError(f"loader state was saved with different settings (now, saved): "
                         f"{ {k: (v, old[k]) for k, v in same.items() if old[k] != v} }")
    log.info("loader state of format 2 (in-memory, step %d) migrated to format %d", state["step"], STATE_FORMAT)
    return {"format": STATE_FORMAT, "meta": meta, "epoch": int(state["epoch"]), "cursor": int(state["position"]),
            "step": int(state["step"])}


class TrainLoader:
    """Infinite, resumable per-process training batches (module docstring)."""

    def __init__(self, config, *, batch_size: int, process_index: int = 0, process_count: int = 1,
                 seed: int | None = None, prefetch: int = PREFETCH, num_threads: int | None = None,
                 arrays: Any = "auto", dataset: Dataset | None = None):
        self.config, self.split = config, config.train_split
        ds, self._reader, self.batch_size = _open(config, self.split, batch_size, process_index, process_count,
                                                  num_threads, arrays, dataset)
        self.seed = int(config.seed if seed is None else seed)
        self.process_index, self.process_count = int(process_index), int(process_count)
        source, arrays = self._reader.source, self._reader.arrays
        self.stored_shape = source.shape
        self._pool = np.flatnonzero(arrays.valid) if arrays is not None else np.arange(len(source))
        self.num_examples = len(self._pool) // self.process_count          # this process's share an epoch
        self.steps_per_epoch = self.num_examples // self.batch_size
        if not len(self._pool):
            raise ConfigError(f"{ds.name} [{self.split}] at {ds.path} has no usable images ({len(source)} records, "
                              f"{len(source) - len(self._pool)} undecodable): prepare it again from a good source:\n  "
                              f"{prepare_command(ds.name, ds.data_dir)} --overwrite")
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{ds.name} [{self.split}] at {ds.path}: this process's share of {self.num_examples} "
                              f"usable examples is smaller than its batch of {self.batch_size}: lower batch_size")
        self.prefetch = int(prefetch)
        self._state = (0, 0, 0)                   # (epoch, cursor, step) of the next batch to return
        self._orders: collections.OrderedDict = collections.OrderedDict()
        self._orders_lock = threading.Lock()
        self._prefetcher: _Prefetcher | None = None

    @property
    def pipeline(self) -> str:
        return self._reader.pipeline

    @property
    def step(self) -> int:
        return self._state[2]

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Record indices of this process's share of epoch ``epoch``, in order."""
        with self._orders_lock:
            if epoch not in self._orders:
                rng = np.random.default_rng([_PERM_STREAM, self.seed % 2**63, int(epoch)])
                perm = rng.permutation(len(self._pool))
                n, p = self.num_examples, self.process_index
                self._orders[epoch] = self._pool[perm[p * n:(p + 1) * n]]
                while len(self._orders) > 3:
                    self._orders.popitem(last=False)
            return self._orders[epoch]

    def positions(self, step: int) -> np.ndarray:
        """Global stream positions of the rows of batch ``step`` of this process."""
        b = self.batch_size
        start = step * b * self.process_count + self.process_index * b
        if start + b > 2**31:
            raise OverflowError(f"stream position {start + b} does not fit int32")
        return np.arange(start, start + b, dtype=np.int32)

    def produce(self, state: tuple[int, int, int]) -> tuple[dict[str, np.ndarray], tuple[int, int, int]]:
        """The batch at ``state`` and the state after it (a pure function of the settings and ``state``)."""
        epoch, cursor, step = state
        b = self.batch_size
        images = np.empty((b, *self.stored_shape), np.uint8)
        labels = np.empty((b,), np.int32)
        filled = 0
        while filled < b:
            order = self.epoch_indices(epoch)
            take = order[cursor:cursor + b - filled]
            if not len(take):
                epoch, cursor = epoch + 1, 0
                continue
            k = len(take)
            ok = self._reader.fill(take, images[filled:filled + k], labels[filled:filled + k])
            if not ok.all():               # skip the bad ones: keep the good rows together
                good = np.flatnonzero(ok)
                images[filled:filled + len(good)] = images[filled:filled + k][good]
                labels[filled:filled + len(good)] = labels[filled:filled + k][good]
                k = len(good)
            filled += k
            cursor += len(take)
        batch = {"image": images, "label": labels, "index": self.positions(step)}
        return batch, (epoch, cursor, step + 1)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.prefetch <= 0:
            batch, self._state = self.produce(self._state)
            return batch
        if self._prefetcher is None:
            self._prefetcher = _Prefetcher(self.produce, self._state, self.prefetch)
        batch, self._state = self._prefetcher.get()
        return batch

    def _meta(self) -> dict[str, Any]:
        return {"dataset": self.config.dataset, "split": self.split, "batch_size": self.batch_size,
                "seed": self.seed, "process_index": self.process_index, "process_count": self.process_count,
                "num_examples": self.num_examples}

    def get_state(self) -> bytes:
        """JSON bytes: the position after the last batch returned (epoch, cursor, step) and the settings it
        is valid for."""
        epoch, cursor, step = self._state
        return json.dumps({"format": STATE_FORMAT, "meta": self._meta(), "epoch": epoch, "cursor": cursor,
                           "step": step}).encode()

    def set_state(self, state: bytes | str | dict) -> None:
        """Resume at a state from ``get_state`` of a loader with the same settings (else ValueError)."""
        if isinstance(state, (bytes, bytearray)):
            state = state.decode()
        if isinstance(state, str):
            state = json.loads(state)
        if state.get("format") == 2 and state.get("pipeline") == "memory":
            state = _migrate_format_2(state, self._meta())
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"loader state of format {state.get('format')!r} (this loader reads format "
                             f"{STATE_FORMAT}): it was saved by another version of the input pipeline")
        saved = state.get("meta", {})
        mismatch = {k: (v, saved.get(k)) for k, v in self._meta().items() if saved.get(k) != v}
        if mismatch:
            raise ValueError(f"loader state was saved with different settings (now, saved): {mismatch}")
        self._stop_prefetch()
        self._state = (int(state["epoch"]), int(state["cursor"]), int(state["step"]))

    def _stop_prefetch(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.stop()
            self._prefetcher = None

    def close(self) -> None:
        self._stop_prefetch()
        self._reader.close()

    def __del__(self):
        try:
            self._stop_prefetch()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class EvalLoader:
    """One deterministic pass per ``iter()`` over this process's share of a split (module docstring)."""

    def __init__(self, config, split: str, *, batch_size: int, process_index: int = 0, process_count: int = 1,
                 prefetch: int = PREFETCH, num_threads: int | None = None, arrays: Any = "auto",
                 dataset: Dataset | None = None):
        self.config, self.split = config, split
        _, self._reader, self.batch_size = _open(config, split, batch_size, process_index, process_count,
                                                 num_threads, arrays, dataset)
        self.stored_shape = self._reader.source.shape
        n = len(self._reader.source)
        self.total_examples = n
        self.start = process_index * n // process_count
        self.stop = (process_index + 1) * n // process_count
        self.num_examples = self.stop - self.start
        self.num_batches = math.ceil(math.ceil(n / process_count) / self.batch_size)
        self.prefetch = int(prefetch)

    @property
    def pipeline(self) -> str:
        return self._reader.pipeline

    def __len__(self) -> int:
        return self.num_batches

    def batch(self, b: int) -> dict[str, np.ndarray]:
        """Batch number ``b`` of this process's pass."""
        lo = self.start + b * self.batch_size
        hi = max(lo, min(lo + self.batch_size, self.stop))
        images = np.zeros((self.batch_size, *self.stored_shape), np.uint8)
        labels = np.zeros((self.batch_size,), np.int32)
        mask = np.zeros((self.batch_size,), bool)
        if hi > lo:
            k = hi - lo
            mask[:k] = self._reader.fill(np.arange(lo, hi), images[:k], labels[:k])
        return {"image": images, "label": labels, "mask": mask}

    def __iter__(self):
        if self.prefetch <= 0:
            for b in range(self.num_batches):
                yield self.batch(b)
            return
        pre = _Prefetcher(lambda b: (self.batch(b), b + 1), 0, self.prefetch)
        try:
            for _ in range(self.num_batches):
                yield pre.get()[0]
        finally:
            pre.stop()

    def close(self) -> None:
        self._reader.close()


def make_train_loader(config, *, batch_size: int, process_index: int = 0, process_count: int = 1,
                      seed: int | None = None, **kw) -> TrainLoader:
    """Training batches of ``config.train_split`` for this process (``batch_size`` per process)."""
    return TrainLoader(config, batch_size=batch_size, process_index=process_index, process_count=process_count,
                       seed=seed, **kw)


def make_eval_loader(config, split: str | None = None, *, batch_size: int, process_index: int = 0,
                     process_count: int = 1, **kw) -> EvalLoader:
    """One padded, masked pass over ``split`` (default ``config.eval_split``) for this process."""
    return EvalLoader(config, split or config.eval_split, batch_size=batch_size, process_index=process_index,
                      process_count=process_count, **kw)
