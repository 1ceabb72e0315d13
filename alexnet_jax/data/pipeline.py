"""grain input pipeline over the prepared TFDS array_record datasets (no TensorFlow).

Records are read with ``tfds.builder_from_directory(dir).as_data_source(split)`` with the image left
encoded (``SkipDecoding``) and decoded here with PIL, so that a corrupt image is reported (once per
worker, by file name / id, else record index) and skipped instead of crashing an epoch.

Preprocessing (``config.augment``; all outputs float32 NHWC, labels int32):

``none``          image / 255.  Fitted to ``input_size``: zero-padded (centred) when smaller, else the
                  shorter side is resized to ``input_size`` and the centre cropped.
``lenet``         (LC98 §II.B) 28x28 digits zero-padded (centred) to ``input_size`` (32 -> 2 px each side;
                  28 -> unchanged), then x * 1.275/255 - 0.1: background 0 -> -0.1, foreground 255 -> 1.175.
                  Same for train and eval.
``lenet_affine``  ``lenet`` plus, in training only, a random affine distortion of the padded image
                  (LC98 §III: translation, scaling, squeezing, horizontal shear) about the image centre,
                  bilinear, background fill: per-axis scale U(0.85, 1.15) (independent -> squeezing),
                  horizontal shear U(-0.3, 0.3) (column shift per row), translation U(-2, 2) px per axis.
``cifar``         base size S = max(input_size, 32) (images resized bilinearly when S != stored size);
                  x = (image - mean) / 255 where mean is the per-pixel mean image of the training split
                  (computed once and cached next to the dataset) when input_size == 32, else the fixed
                  CIFAR-10 per-channel mean (125.3, 123.0, 113.9).  Train: zero-pad 4 px (zero = the mean
                  after centring), random input_size crop, horizontal flip p=0.5.  Eval: centre crop.
``alexnet``       (K12 §2, §4.1) decode (JPEG DCT-domain downscale via PIL draft, never below the target),
                  resize the shorter side to 256 (PIL bilinear, antialiased), centre crop 256x256, subtract
                  the per-pixel 256x256x3 mean image of the training split (computed at first use from up to
                  10,000 fixed-seed random training images and cached next to the dataset; a crop subtracts
                  the mean window at the same offset, i.e. the mean is subtracted before cropping).
                  Outputs stay in 0..255 units ("centred raw RGB", K12 §2).  Train: random input_size crop
                  (offsets uniform over 0..256-input_size), horizontal flip p=0.5, PCA lighting noise
                  255 * eigvec @ (alpha * eigval), alpha ~ N(0, 0.1^2) per image (fb.resnet eigen-pairs on
                  the [0, 1] scale, hence the 255).  Eval: centre crop, or ten crops.

Ten-crop eval (K12 §4.1) gives (B, 10, H, W, C): crops at top-left, top-right, bottom-left, bottom-right,
centre, then the horizontal flips of those five in the same order.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from .prepare import ensure_prepared

log = logging.getLogger(__name__)

AUGMENTS = ("none", "lenet", "lenet_affine", "cifar", "alexnet")

# fb.resnet.torch datasets/imagenet.lua (paper_facts §1.7): columns of IMAGENET_EIGVEC are the eigenvectors
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
IMAGENET_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                            [-0.5808, -0.0045, -0.8140],
                            [-0.5836, -0.6948, 0.4203]], np.float32)
LIGHTING_STD = 0.1
LENET_BACKGROUND, LENET_FOREGROUND = -0.1, 1.175
AFFINE_SCALE = (0.85, 1.15)
AFFINE_SHEAR = 0.3
AFFINE_TRANSLATE = 2.0
CIFAR_PAD = 4
CIFAR_CHANNEL_MEAN = (125.3, 123.0, 113.9)
ALEXNET_STORE_SIZE = 256
MEAN_MAX_EXAMPLES = {"cifar": 50_000, "alexnet": 10_000}
MEAN_SEED = 0


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    splits: dict[str, int]
    image_shape: tuple[int, int, int]      # per-example model input (H, W, C) for this config
    path: str = ""


# ----------------------------------------------------------------------------------------------------
# preprocessing
# ----------------------------------------------------------------------------------------------------
def resize_shorter_center_crop(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def center_crop(x: np.ndarray, size: int) -> np.ndarray:
    h, w = x.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return x[top:top + size, left:left + size]


def ten_crops(x: np.ndarray, size: int) -> np.ndarray:
    """(10, size, size, C): TL, TR, BL, BR, centre crops, then their horizontal flips."""
    h, w = x.shape[:2]
    offs = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), ((h - size) // 2, (w - size) // 2)]
    crops = [x[t:t + size, l:l + size] for t, l in offs]
    return np.stack(crops + [c[:, ::-1] for c in crops])


def lighting_offset(rng: np.random.Generator, std: float = LIGHTING_STD) -> np.ndarray:
    """RGB offset on the 0..255 scale: 255 * eigvec @ (alpha * eigval), alpha ~ N(0, std^2)."""
    alpha = rng.normal(0.0, std, 3)
    return (255.0 * IMAGENET_EIGVEC.astype(np.float64) @ (alpha * IMAGENET_EIGVAL)).astype(np.float32)


def fit_to(x: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad (centred) to size x size when smaller; centre-crop when larger."""
    h, w = x.shape[:2]
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        x = np.pad(x, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    return center_crop(x, size)


def random_affine(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """LC98-style distortion of a (H, W, C) float image about its centre (ranges: module docstring)."""
    from scipy import ndimage

    sy, sx = rng.uniform(*AFFINE_SCALE, size=2)
    sh = rng.uniform(-AFFINE_SHEAR, AFFINE_SHEAR)
    t = rng.uniform(-AFFINE_TRANSLATE, AFFINE_TRANSLATE, size=2)
    fwd = np.array([[sy, 0.0], [sh, sx]])          # (row, col) centred: row' = sy row; col' = sh row + sx col
    inv = np.linalg.inv(fwd)
    ctr = (np.array(x.shape[:2], np.float64) - 1) / 2
    offset = ctr - inv @ (ctr + t)
    out = np.empty_like(x)
    for c in range(x.shape[2]):
        out[..., c] = ndimage.affine_transform(x[..., c], inv, offset=offset, order=1, mode="constant",
                                               cval=0.0)
    return out


@dataclasses.dataclass
class Preprocessor:
    """Decode + per-example transforms for one ``augment`` mode (picklable, for grain workers)."""

    augment: str
    input_size: int
    channels: int = 3
    mean: np.ndarray | None = None      # 0..255 scale: per-pixel image of the base size, or per-channel (C,)
    lighting_std: float = LIGHTING_STD

    def __post_init__(self):
        if self.augment not in AUGMENTS:
            raise ValueError(f"unknown augment {self.augment!r}; choose from {', '.join(AUGMENTS)}")

    @property
    def base_size(self) -> int | None:
        if self.augment == "alexnet":
            return ALEXNET_STORE_SIZE
        if self.augment == "cifar":
            return max(self.input_size, 32)
        return None

    def output_shape(self, ten_crop: bool = False) -> tuple[int, ...]:
        s = (self.input_size, self.input_size, self.channels)
        return (10, *s) if ten_crop else s

    # -- decode --------------------------------------------------------------------------------------
    def decode(self, data: bytes) -> np.ndarray:
        """Encoded bytes -> uint8 (H, W, C); alexnet/cifar images are brought to the base size here."""
        mode = "L" if self.channels == 1 else "RGB"
        with Image.open(io.BytesIO(data)) as im:
            base = self.base_size
            if self.augment == "alexnet" and im.format == "JPEG" and min(im.size) > base:
                w, h = im.size
                s = base / min(w, h)
                im.draft(im.mode, (math.ceil(w * s), math.ceil(h * s)))
            im = im.convert(mode)
            if self.augment == "alexnet":
                im = resize_shorter_center_crop(im, base)
            elif self.augment == "cifar" and im.size != (base, base):
                im = im.resize((base, base), Image.BILINEAR)
            elif self.augment == "none" and (im.size[0] > self.input_size or im.size[1] > self.input_size):
                im = resize_shorter_center_crop(im, self.input_size)
            arr = np.asarray(im, np.uint8)
        return arr[..., None] if arr.ndim == 2 else arr

    # -- transforms ------------------------------------------------------------------------------------
    def _lenet_scale(self, x: np.ndarray) -> np.ndarray:
        return (x * np.float32((LENET_FOREGROUND - LENET_BACKGROUND) / 255.0)
                + np.float32(LENET_BACKGROUND)).astype(np.float32)

    def base(self, img: np.ndarray) -> np.ndarray:
        """Deterministic part: uint8 (H, W, C) -> float32 base image (before any crop)."""
        x = img.astype(np.float32)
        a = self.augment
        if a in ("lenet", "lenet_affine"):
            return self._lenet_scale(fit_to(x, self.input_size))
        if a == "none":
            return fit_to(x, self.input_size) / np.float32(255.0)
        if self.mean is not None:
            x = x - self.mean
        if a == "cifar":
            x = x / np.float32(255.0)
        return x.astype(np.float32)

    def train(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        a, s = self.augment, self.input_size
        if a == "lenet_affine":
            return self._lenet_scale(random_affine(fit_to(img.astype(np.float32), s), rng))
        x = self.base(img)
        if a in ("cifar", "alexnet"):
            if a == "cifar":
                x = np.pad(x, ((CIFAR_PAD, CIFAR_PAD), (CIFAR_PAD, CIFAR_PAD), (0, 0)))
            h, w = x.shape[:2]
            top, left = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            x = x[top:top + s, left:left + s]
            if rng.random() < 0.5:
                x = x[:, ::-1]
            if a == "alexnet" and self.lighting_std > 0 and x.shape[-1] == 3:
                x = x + lighting_offset(rng, self.lighting_std)
        return np.ascontiguousarray(x, np.float32)

    def eval(self, img: np.ndarray, ten_crop: bool = False) -> np.ndarray:
        x = self.base(img)
        out = ten_crops(x, self.input_size) if ten_crop else center_crop(x, self.input_size)
        return np.ascontiguousarray(out, np.float32)


# ----------------------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------------------
def _to_str(v) -> str:
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return _to_str(v.item())
    return str(v)


class RecordSource:
    """Wraps a TFDS data source (image left encoded): records {"image": bytes, "label": int, "name": str}."""

    def __init__(self, path: str | os.PathLike, split: str):
        self.path, self.split = str(path), split
        builder = tfds.builder_from_directory(self.path)
        self._src = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
        feats = builder.info.features
        self._name_key = next((k for k in ("file_name", "id") if k in feats), None)

    def __len__(self) -> int:
        return len(self._src)

    def __repr__(self) -> str:   # grain validates restored states against repr(data_source)
        return f"RecordSource(path={self.path!r}, split={self.split!r})"

    def _record(self, i: int, ex: dict) -> dict:
        name = _to_str(ex[self._name_key]) if self._name_key else f"{self.split}#{i}"
        return {"image": ex["image"], "label": int(ex["label"]), "name": name}

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        return self._record(i, self._src[i])

    def __getitems__(self, idx) -> list[dict]:
        idx = [int(i) for i in idx]
        return [self._record(i, ex) for i, ex in zip(idx, self._src.__getitems__(idx), strict=True)]


def _safe_decode(pre: Preprocessor, rec: dict, reported: set) -> np.ndarray | None:
    try:
        return pre.decode(rec["image"])
    except Exception as e:  # noqa: BLE001 - any decoder failure: report once and skip
        if rec["name"] not in reported:
            reported.add(rec["name"])
            log.warning("skipping undecodable image %s: %s: %s", rec["name"], type(e).__name__, e)
        return None


class _TrainMap(grain.transforms.RandomMap):
    def __init__(self, pre: Preprocessor):
        self.pre = pre
        self.reported: set = set()

    def random_map(self, rec, rng: np.random.Generator):
        img = _safe_decode(self.pre, rec, self.reported)
        if img is None:
            return {"image": None, "label": np.int32(rec["label"])}
        return {"image": self.pre.train(img, rng), "label": np.int32(rec["label"])}


class _DropBad(grain.transforms.Filter):
    def filter(self, ex) -> bool:
        return ex["image"] is not None


# ----------------------------------------------------------------------------------------------------
# mean image
# ----------------------------------------------------------------------------------------------------
def _cache_dir(path: Path) -> Path:
    if os.access(path, os.W_OK):
        return path
    d = Path(os.path.expanduser("~/.cache/alexnet_jax")) / path.parent.name / path.name
    d.mkdir(parents=True, exist_ok=True)
    return d


def compute_mean_image(source: RecordSource, pre: Preprocessor, max_examples: int | None = None,
                       seed: int = MEAN_SEED) -> np.ndarray:
    """Per-pixel mean (float32, 0..255) of ``pre.decode`` over the source (a fixed-seed random subset
    of ``max_examples`` when the source is larger); undecodable images are skipped."""
    n = len(source)
    idx = np.arange(n)
    if max_examples is not None and n > max_examples:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_examples, replace=False))
    total, count, reported = None, 0, set()
    for start in range(0, len(idx), 256):
        for rec in source.__getitems__(idx[start:start + 256]):
            img = _safe_decode(pre, rec, reported)
            if img is None:
                continue
            total = img.astype(np.float64) if total is None else total + img
            count += 1
    if not count:
        raise ValueError(f"no decodable images in {source.path} [{source.split}] to compute a mean from")
    return (total / count).astype(np.float32)


def mean_image(path: Path, split: str, pre: Preprocessor) -> np.ndarray:
    """Cached per-pixel mean image of ``split`` at ``pre``'s base size (``<dataset dir>/mean_*.npy``)."""
    b = pre.base_size
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", split)
    fname = f"mean_{pre.augment}_{tag}_{b}x{b}x{pre.channels}.npy"
    for d in (path, _cache_dir(path)):
        if (d / fname).is_file():
            return np.load(d / fname)
    nomean = dataclasses.replace(pre, mean=None)
    mean = compute_mean_image(RecordSource(path, split), nomean, MEAN_MAX_EXAMPLES.get(pre.augment))
    d = _cache_dir(path)
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".npy.tmp")
    with os.fdopen(fd, "wb") as f:
        np.save(f, mean)
    os.replace(tmp, d / fname)
    return mean


# ----------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------
def _ensure_absl_flags():
    """grain 0.2.18 workers read an absl flag; outside absl.app.run flags are unparsed (grain#1355)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _channels(path: Path) -> int:
    shape = tfds.builder_from_directory(str(path)).info.features["image"].shape
    return int(shape[-1]) if shape and shape[-1] else 3


def dataset_info(config) -> DatasetInfo:
    path = ensure_prepared(config)
    info = tfds.builder_from_directory(str(path)).info
    label = info.features["label"]
    c = _channels(path)
    return DatasetInfo(name=config.dataset, num_classes=int(label.num_classes),
                       class_names=tuple(label.names),
                       splits={k: int(v.num_examples) for k, v in info.splits.items()},
                       image_shape=(config.input_size, config.input_size, c), path=str(path))


def make_preprocessor(config, path: Path | None = None) -> Preprocessor:
    """The Preprocessor for ``config`` (computes/loads the training-split mean image where needed)."""
    path = Path(path) if path is not None else ensure_prepared(config)
    c = _channels(path)
    pre = Preprocessor(config.augment, int(config.input_size), c)
    if config.augment == "alexnet" or (config.augment == "cifar" and config.input_size == 32):
        pre = dataclasses.replace(pre, mean=mean_image(path, config.train_split, pre))
    elif config.augment == "cifar":
        m = np.array(CIFAR_CHANNEL_MEAN, np.float32)
        pre = dataclasses.replace(pre, mean=m if c == 3 else m.mean(keepdims=True))
    return pre


class TrainIterator:
    """Infinite iterator of {"image": float32 (B, H, W, C), "label": int32 (B,)} training batches.

    Each epoch is a fresh shuffle of this process's shard (grain derives it from (seed, epoch)); batches
    run across epoch boundaries.  ``get_state()``/``set_state()`` resume exactly.
    """

    def __init__(self, config, *, batch_size: int, process_index: int = 0, process_count: int = 1,
                 seed: int | None = None, preprocessor: Preprocessor | None = None):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        path = ensure_prepared(config)
        self.config = config
        self.batch_size = int(batch_size)
        self.seed = int(config.seed if seed is None else seed)
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.preprocessor = preprocessor or make_preprocessor(config, path)
        self.source = RecordSource(path, config.train_split)
        self.num_examples = len(self.source) // self.process_count
        self.steps_per_epoch = self.num_examples // self.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{config.dataset}[{config.train_split}]: shard of {self.num_examples} "
                             f"examples is smaller than the per-process batch size {self.batch_size}")
        sampler = grain.samplers.IndexSampler(
            num_records=len(self.source),
            shard_options=grain.sharding.ShardOptions(self.process_index, self.process_count,
                                                      drop_remainder=True),
            shuffle=True, num_epochs=None, seed=self.seed % (2**32))
        if config.num_workers > 0:
            _ensure_absl_flags()
        self._loader = grain.DataLoader(
            data_source=self.source, sampler=sampler,
            operations=[_TrainMap(self.preprocessor), _DropBad(),
                        grain.transforms.Batch(self.batch_size, drop_remainder=True)],
            worker_count=int(config.num_workers))
        self._it = None

    def _iterator(self):
        if self._it is None:
            self._it = iter(self._loader)
        return self._it

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        b = next(self._iterator())
        return {"image": np.asarray(b["image"], np.float32), "label": np.asarray(b["label"], np.int32)}

    def _meta(self) -> dict[str, Any]:
        return {"dataset": self.config.dataset, "split": self.config.train_split,
                "augment": self.config.augment, "batch_size": self.batch_size, "seed": self.seed,
                "process_index": self.process_index,
                "process_count": self.process_count, "num_workers": int(self.config.num_workers)}

    def get_state(self) -> bytes:
        """JSON bytes: grain's iterator state plus the settings it is only valid for."""
        g = self._iterator().get_state()
        g = json.loads(g.decode() if isinstance(g, bytes) else g)
        return json.dumps({"format": 1, "meta": self._meta(), "grain": g}).encode()

    def set_state(self, state: bytes | str | dict) -> None:
        if isinstance(state, (bytes, bytearray)):
            state = state.decode()
        if isinstance(state, str):
            state = json.loads(state)
        saved = state["meta"]
        mismatch = {k: (v, saved.get(k)) for k, v in self._meta().items() if saved.get(k) != v}
        if mismatch:
            raise ValueError(f"iterator state was saved with different settings (now, saved): {mismatch}")
        self._iterator().set_state(json.dumps(state["grain"]).encode())

    def close(self) -> None:
        self._it = None


def make_train_iter(config, *, batch_size: int, process_index: int = 0, process_count: int = 1,
                    seed: int | None = None) -> TrainIterator:
    """Training batches for this process (``batch_size`` is per process); see TrainIterator."""
    return TrainIterator(config, batch_size=batch_size, process_index=process_index,
                         process_count=process_count, seed=seed)


class _EvalBatches:
    """Random-access source of whole, padded eval batches of one process's contiguous shard."""

    def __init__(self, source: RecordSource, start: int, stop: int, batch_size: int, num_batches: int,
                 pre: Preprocessor, ten_crop: bool):
        self.source, self.start, self.stop = source, start, stop
        self.batch_size, self.num_batches, self.pre, self.ten_crop = batch_size, num_batches, pre, ten_crop
        self.reported: set = set()

    def __len__(self) -> int:
        return self.num_batches

    def __repr__(self) -> str:
        return (f"_EvalBatches({self.source!r}, {self.start}:{self.stop}, batch_size={self.batch_size}, "
                f"ten_crop={self.ten_crop})")

    def __getitem__(self, b: int) -> dict[str, np.ndarray]:
        b = int(b)
        lo = self.start + b * self.batch_size
        hi = min(lo + self.batch_size, self.stop)
        shape = self.pre.output_shape(self.ten_crop)
        images = np.zeros((self.batch_size, *shape), np.float32)
        labels = np.zeros((self.batch_size,), np.int32)
        mask = np.zeros((self.batch_size,), bool)
        if hi > lo:
            for j, rec in enumerate(self.source.__getitems__(range(lo, hi))):
                labels[j] = rec["label"]
                img = _safe_decode(self.pre, rec, self.reported)
                if img is not None:
                    images[j] = self.pre.eval(img, self.ten_crop)
                    mask[j] = True
        return {"image": images, "label": labels, "mask": mask}


class EvalIterator:
    """One deterministic pass per ``iter()``: {"image", "label", "mask"} batches, the last padded.

    Every example of the split is in exactly one process's batches with mask True (an undecodable image
    is reported and masked out).  All processes yield the same number of batches.
    """

    def __init__(self, config, split: str, *, batch_size: int, process_index: int = 0, process_count: int = 1,
                 ten_crop: bool = False, preprocessor: Preprocessor | None = None):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        path = ensure_prepared(config)
        self.config, self.split, self.ten_crop = config, split, bool(ten_crop)
        self.batch_size = int(batch_size)
        self.preprocessor = preprocessor or make_preprocessor(config, path)
        self.source = RecordSource(path, split)
        n = len(self.source)
        self.total_examples = n
        start, stop = process_index * n // process_count, (process_index + 1) * n // process_count
        self.num_examples = stop - start
        self.num_batches = math.ceil(math.ceil(n / process_count) / self.batch_size)
        self._batches = _EvalBatches(self.source, start, stop, self.batch_size, self.num_batches,
                                     self.preprocessor, self.ten_crop)

    def __len__(self) -> int:
        return self.num_batches

    def __repr__(self) -> str:
        return (f"_EvalBatches({self.source!r}, {self.start}:{self.stop}, batch_size={self.batch_size}, "
                f"ten_crop={self.ten_crop})")

    def __iter__(self):
        workers = int(self.config.num_workers)
        if workers > 0:
            _ensure_absl_flags()
        loader = grain.DataLoader(
            data_source=self._batches,
            sampler=grain.samplers.IndexSampler(self.num_batches, shard_options=grain.sharding.NoSharding(),
                                                shuffle=False, num_epochs=1),
            worker_count=workers)
        for b in loader:
            yield {"image": np.asarray(b["image"], np.float32), "label": np.asarray(b["label"], np.int32),
                   "mask": np.asarray(b["mask"], bool)}


def make_eval_iter(config, split: str, *, batch_size: int, process_index: int = 0, process_count: int = 1,
                   ten_crop: bool = False) -> EvalIterator:
    """Evaluation batches of ``split`` for this process; see EvalIterator."""
    return EvalIterator(config, split, batch_size=batch_size, process_index=process_index,
                        process_count=process_count, ten_crop=ten_crop)
