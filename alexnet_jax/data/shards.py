"""Writing a prepared dataset's files: the ``array_record`` shards (``write_shard``, in the worker processes)
and the TFDS metadata (``write_metadata``), built on a bare ``DatasetIdentity``: a TFDS builder made before
its folder exists asks the TFDS bucket for metadata through a ``mkdtemp("tfds")`` folder it never removes.

A file whose image cannot be read or decoded is logged and left out (listed in ``prepare_report.json``).
Where records keep the source's encoded image (a CIFAR-10 folder tree), an image of another size than the
stored shape is fitted to it (shorter side resized, centre kept), stored as PNG and listed as resized.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds
from array_record.python import array_record_module
from PIL import Image

from . import files
from .catalog import JPEG256_QUALITY, VERSIONS, split_name
from .listing import DIGITS_TEST_SIZE, SPLIT_SEED, VALIDATION_FRACTION, Item, payload_bytes
from .records import STORE_SIZE, STORED_SHAPES, features_spec

log = logging.getLogger(__name__)

WRITER_OPTIONS = "group_size:1,uncompressed"   # random access; images do not compress further
DESCRIPTIONS = {
    "digits": f"sklearn.datasets.load_digits 8x8 images (0..16) upscaled bilinearly to 28x28 uint8; stratified "
              f"split test={DIGITS_TEST_SIZE} / train=rest (seed {SPLIT_SEED}).",
    "mnist": "The MNIST database of handwritten digits (prepared offline from the IDX files).",
    "cifar10": f"CIFAR-10 (prepared offline). Without a test split in the source, `validation` is carved from the "
               f"training set: {VALIDATION_FRACTION:.0%} per class, fixed seed {SPLIT_SEED}.",
    "imagenet2012": "ILSVRC-2012 (prepared offline), original JPEGs.",
    **{f"imagenet2012/{store}": f"ILSVRC-2012 (prepared offline): shorter side resized to {STORE_SIZE} "
                                f"(antialiased bilinear), centre {STORE_SIZE}x{STORE_SIZE} kept, {how}."
       for store, how in (("jpeg256", f"re-encoded as JPEG quality {JPEG256_QUALITY}"),
                          ("raw256", "stored as raw uint8"))},
}


def shard_name(dataset: str, split: str, shard: int, num_shards: int) -> str:
    # TFDS' default template: {DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}
    return f"{split_name(dataset)[0]}-{split}.array_record-{shard:05d}-of-{num_shards:05d}"


def write_metadata(dataset: str, class_names: list[str], folder: Path, splits: dict[str, tuple[list, int]]):
    """``dataset_info.json``, ``features.json`` of the shards in ``folder``; {split: (shard lengths, bytes)}."""
    base, store = split_name(dataset)
    identity = tfds.core.dataset_info.DatasetIdentity(
        name=base, version=tfds.core.Version(VERSIONS[base]), data_dir=os.fspath(folder), module_name=__name__,
        config_name=store, config_description=DESCRIPTIONS[dataset] if store else None, release_notes={})
    info = tfds.core.DatasetInfo(builder=identity, description=DESCRIPTIONS[dataset],
                                 features=features_spec(dataset, class_names), supervised_keys=("image", "label"))
    info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=nbytes,
                            filename_template=tfds.core.ShardedFileTemplate(
                                data_dir=folder, dataset_name=base, split=split, filetype_suffix="array_record"))
        for split, (lengths, nbytes) in splits.items()]))
    info.set_file_format("array_record")
    info.write_to_directory(folder)


def _keep_encoded(data: bytes, fit: tuple[int, int, int] | None, force_jpeg: bool) -> tuple[bytes, bool]:
    """(the source's bytes, checked by a decode (JPEGs at reduced DCT scale), False), or (a PNG at ``fit``,
    True) for an image of another size; ``force_jpeg``: CMYK JPEGs and other formats re-encoded as RGB JPEG
    (as the stock imagenet2012 builder does)."""
    with Image.open(io.BytesIO(data)) as im:
        fmt, (w, h) = im.format, im.size
        if fmt == "JPEG":
            im.draft(im.mode, (max(1, w // 8), max(1, h // 8)))
        im.load()
        mode = im.mode
    if fit is not None and (h, w) != fit[:2]:
        return files.encode_png(files.decode_fit(data, fit)), True
    if force_jpeg and (fmt != "JPEG" or mode not in ("RGB", "L")):
        with Image.open(io.BytesIO(data)) as im:
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="JPEG", quality=95)
            data = buf.getvalue()
    return data, False


def encode_item(meta: dict, item: Item) -> tuple[Any, bool] | None:
    """(the image feature value of ``item`` for the store, resized?), or None (logged) for a bad file."""
    store, base = meta["store"], meta["base"]
    if item.payload[0] == "array":           # our own decoded arrays (mnist, digits, cifar pickles)
        return files.encode_png(item.payload[1]), False
    try:
        data = payload_bytes(item.payload)
        if store is None:
            fit = None if base == "imagenet2012" else STORED_SHAPES[base]   # imagenet2012: any size
            return _keep_encoded(data, fit, force_jpeg=base == "imagenet2012")
        arr = files.decode_fit(data, STORED_SHAPES[base])               # the 256 stores: K12 §2 here
        return (arr if store == "raw256" else files.encode_jpeg(arr, meta["quality"])), False
    except Exception as e:  # noqa: BLE001 - any read or decoder failure means a bad file
        log.warning("skipping unreadable image %s: %s", item.where, files.decode_error(e))
        return None


_FEATURES: dict = {}


def write_shard(task: dict) -> dict:
    """Write one shard (``task``: see ``preparation``) to ``task['path']`` via a temporary file; returns
    {"n", "bytes", "skipped", "resized"} (the last two: where the files came from)."""
    key = (task["dataset"], tuple(task["class_names"]))
    feats = _FEATURES.get(key)
    if feats is None:
        feats = _FEATURES[key] = features_spec(task["dataset"], task["class_names"])
    tmp = task["path"] + ".tmp"
    writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
    n = nbytes = 0
    skipped, resized = [], []
    try:
        for item in task["items"]:
            encoded = encode_item(task["meta"], item)
            if encoded is None:
                skipped.append(item.where)
                continue
            if encoded[1]:
                resized.append(item.where)
            ex = {"image": encoded[0], "label": item.label}
            if task["id_feature"]:
                ex[task["id_feature"]] = item.name or item.key
            rec = feats.serialize_example(ex)
            writer.write(rec)
            n += 1
            nbytes += len(rec)
    finally:
        writer.close()
    os.replace(tmp, task["path"])
    return {"n": n, "bytes": nbytes, "skipped": skipped, "resized": resized}
