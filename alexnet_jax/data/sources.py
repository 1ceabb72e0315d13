"""The one reader of a prepared split, with the one bad-image rule, used by the loaders, the decoded-split
cache, the mean image and the tools.

``RecordSource(dataset, split)`` reads the TFDS ``array_record`` shards (one reader per shard and thread,
random access); ``read_into`` decodes records into uint8 rows of the stored shape (the original ImageNet
JPEGs fitted: shorter side, centre; K12 §2).  The bad-image rule: an image that cannot be decoded is
reported once by name, its row left zeros and marked not ok, and the callers leave it out.
"""

from __future__ import annotations

import logging
import math
import os
import threading

import numpy as np
from array_record.python import array_record_module

from . import files
from .datasets import Dataset, dataset_at
from .records import parse_example, to_str

log = logging.getLogger(__name__)

READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"   # random access (array_record's advice)


class RecordSource:
    """Random access to one split: ``len``, ``record(i)`` -> {"image": bytes-like, "label": int, "name": str},
    ``decode(record)`` -> uint8 ``shape`` and ``read_into`` (the bad-image rule).  Thread-safe (one reader
    per shard and thread).  ``dataset``: a ``Dataset`` or the path of a prepared version folder."""

    def __init__(self, dataset: Dataset | str | os.PathLike, split: str):
        ds = dataset if isinstance(dataset, Dataset) else dataset_at(dataset)
        self.dataset, self.path, self.split = ds, str(ds.path), split
        shard_files, lengths = ds.split_shards(split)
        self.files = list(shard_files)
        self.starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.shape = ds.stored_shape
        self.reported: set[str] = set()
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

    def record(self, i: int) -> dict:
        ex = parse_example(self.read(i))
        key = self.dataset.name_feature
        name = to_str(ex[key][0]) if key and ex.get(key) else f"{self.split}#{i}"
        return {"image": ex["image"][0], "label": int(ex["label"][0]) if ex.get("label") else 0, "name": name}

    def decode(self, rec: dict) -> np.ndarray:
        """The image of a ``record`` as uint8 ``self.shape`` (raises on an undecodable image)."""
        if self.dataset.encoding == "raw":
            data = rec["image"]
            if len(data) != math.prod(self.shape):
                raise ValueError(f"raw record of {len(data)} bytes, expected {math.prod(self.shape)}")
            return np.frombuffer(data, np.uint8).reshape(self.shape)
        return files.decode_fit(bytes(rec["image"]), self.shape)

    def read_into(self, indices, images: np.ndarray, labels: np.ndarray, names: list | None = None) -> np.ndarray:
        """Records ``indices`` into ``images[j]`` (uint8 ``shape``), ``labels[j]`` (and ``names[j]``); returns
        the bool mask of the rows whose image was decoded (the others are zeros, reported once by name)."""
        ok = np.zeros(len(indices), bool)
        for j, i in enumerate(indices):
            rec = self.record(int(i))
            labels[j] = rec["label"]
            if names is not None:
                names[j] = rec["name"]
            try:
                images[j] = self.decode(rec)
                ok[j] = True
            except Exception as e:  # noqa: BLE001 - any decoder failure means a bad image
                images[j] = 0
                if rec["name"] not in self.reported:
                    self.reported.add(rec["name"])
                    log.warning("skipping undecodable image %s: %s", rec["name"], files.decode_error(e))
        return ok

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
