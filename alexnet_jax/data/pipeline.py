"""Input pipelines over the prepared TFDS array_record datasets (no TensorFlow).

Two paths, chosen per split by ``make_train_iter`` / ``make_eval_iter`` (same batches, same API):

in-memory  (digits, mnist, cifar10: any split whose decoded images have a static shape and fit in
           ``IN_MEMORY_MAX_BYTES``, 2 GiB, overridable with ``$ALEXNET_JAX_IN_MEMORY_MAX_BYTES``; 0 turns
           it off).  The split is decoded ONCE into a uint8 (N, H, W, C) array + int32 labels, cached in
           ``<dataset dir>/cache/<split>_*.npz`` (written atomically, keyed by the dataset files, so reruns
           load it in well under a second) and kept in memory for the process.  Batches are then built with
           numpy over the whole batch: a gather by index, the lenet/none scaling as one 256-entry lookup
           table, the cifar/alexnet centring as one array op, crops/flips as per-example slices of that
           array (measured faster than a fancy-index gather), the lenet_affine warp as one vectorised
           bilinear gather.  grain is not used here: its per-record path (record read, PNG decode, Python
           transforms, collation) costs ~1 ms per 28x28 image on 2 cores (~900 img/s, while a LeNet train
           step takes ~6,000 img/s), against a few microseconds per image for the batched path (mnist/lenet
           ~200,000 img/s, cifar10/cifar ~65,000 img/s; ``tools/bench_input.py``).  ``config.num_workers``
           is not used.  ``ArrayTrainIterator`` / ``ArrayEvalIterator``.
streaming  (imagenet2012, variable-size images or splits too large for memory): grain over the records,
           decoding each image on the fly (``config.num_workers`` worker processes).  Records are read with
           ``tfds.builder_from_directory(dir).as_data_source(split)`` with the image left encoded
           (``SkipDecoding``) and decoded here with PIL.  ``TrainIterator`` / ``EvalIterator``.

On both paths a corrupt image is reported (once, by file name / id, else record index) and skipped instead
of crashing an epoch (masked out in eval batches).

Training order (both paths): every epoch is a fresh shuffle; each process gets a disjoint equal share
(the remainder is dropped); batches run across epoch boundaries; ``steps_per_epoch`` = share // batch.
Streaming: grain's ``IndexSampler`` (contiguous record shards, shuffled per epoch from (seed, epoch)).
In-memory: a permutation of all decodable examples drawn from (seed, epoch), shared by the processes,
process p taking slice p of it; the random augmentation draws of batch ``step`` come from
(seed, process_index, step) (``step`` counts batches across epochs, so it encodes (epoch, position)), and
the iterator state is just that step: ``set_state`` resumes exactly.

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
                  x = image - mean, centred raw RGB in 0..255 units like ``alexnet`` (K12 §2: the paper's
                  init, N(0, 0.01) weights, assumes raw pixel scale), where mean is the per-pixel mean
                  image of the training split
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

import collections
import dataclasses
import io
import json
import logging
import math
import os
import re
import tempfile
import time
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

# in-memory path (module docstring)
IN_MEMORY_MAX_BYTES = 2 * 1024**3          # decoded uint8 bytes of one split
IN_MEMORY_ENV = "ALEXNET_JAX_IN_MEMORY_MAX_BYTES"
DISK_CACHE = True                           # cache decoded splits as <dataset dir>/cache/*.npz
MEMORY_CACHE_ENTRIES = 4                    # decoded splits kept in this process (LRU)
ARRAY_CACHE_VERSION = 1
_PERM_STREAM, _AUGMENT_STREAM = 1, 2        # first SeedSequence word of the two random streams

_LENET_SCALE = np.float32((LENET_FOREGROUND - LENET_BACKGROUND) / 255.0)
# uint8 -> float32 tables: the same float32 ops as the per-pixel formulas, so results are bit-identical
_LENET_LUT = np.arange(256, dtype=np.float32) * _LENET_SCALE + np.float32(LENET_BACKGROUND)
_UNIT_LUT = np.arange(256, dtype=np.float32) / np.float32(255.0)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    splits: dict[str, int]
    image_shape: tuple[int, int, int]      # per-example model input (H, W, C) for this config
    path: str = ""


# ----------------------------------------------------------------------------------------------------
# preprocessing (batched: (N, H, W, C); the per-example functions are the N = 1 case)
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


def ten_crops_batch(x: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, C) -> (N, 10, size, size, C): TL, TR, BL, BR, centre crops, then their horizontal flips."""
    h, w = x.shape[1:3]
    offs = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), ((h - size) // 2, (w - size) // 2)]
    crops = [x[:, t:t + size, l:l + size] for t, l in offs]
    return np.stack(crops + [c[:, :, ::-1] for c in crops], axis=1)


def ten_crops(x: np.ndarray, size: int) -> np.ndarray:
    """(10, size, size, C): TL, TR, BL, BR, centre crops, then their horizontal flips."""
    return ten_crops_batch(x[None], size)[0]


def lighting_offsets(alpha: np.ndarray) -> np.ndarray:
    """(N, 3) alphas -> (N, 3) float32 RGB offsets on the 0..255 scale: 255 * eigvec @ (alpha * eigval)."""
    v = np.asarray(alpha, np.float64) * IMAGENET_EIGVAL.astype(np.float64)
    return (255.0 * (IMAGENET_EIGVEC.astype(np.float64)[None] * v[:, None, :]).sum(-1)).astype(np.float32)


def lighting_offset(rng: np.random.Generator, std: float = LIGHTING_STD) -> np.ndarray:
    """RGB offset on the 0..255 scale: 255 * eigvec @ (alpha * eigval), alpha ~ N(0, std^2)."""
    return lighting_offsets(rng.normal(0.0, std, (1, 3)))[0]


def fit_batch(x: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, C): zero-pad (centred) to size x size when smaller; centre-crop when larger."""
    n, h, w, c = x.shape
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        out = np.zeros((n, h + ph, w + pw, c), x.dtype)
        out[:, ph // 2:ph // 2 + h, pw // 2:pw // 2 + w] = x
        x, h, w = out, h + ph, w + pw
    top, left = (h - size) // 2, (w - size) // 2
    return x[:, top:top + size, left:left + size]


def fit_to(x: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad (centred) to size x size when smaller; centre-crop when larger."""
    return fit_batch(x[None], size)[0]


def affine_params(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 5) LC98 distortions (sy, sx, shear, ty, tx); ranges: module docstring."""
    scale = rng.uniform(*AFFINE_SCALE, size=(n, 2))
    shear = rng.uniform(-AFFINE_SHEAR, AFFINE_SHEAR, size=n)
    t = rng.uniform(-AFFINE_TRANSLATE, AFFINE_TRANSLATE, size=(n, 2))
    return np.column_stack([scale, shear, t])


def warp_affine_batch(x: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Warp each (H, W, C) float image of ``x`` (N, H, W, C) about its centre by its row of ``params``
    (``affine_params``): bilinear, 0 outside the image (what scipy.ndimage.affine_transform does with
    order=1, mode="constant"), vectorised over the batch."""
    n, h, w, _ = x.shape
    p = np.asarray(params, np.float64).reshape(n, 5)
    sy, sx, sh, ty, tx = (p[:, k, None, None] for k in range(5))
    cr, cc = (h - 1) / 2, (w - 1) / 2
    # forward map of centred (row, col): row' = sy row + ty; col' = sh row + sx col + tx; sample its inverse
    dr = np.arange(h, dtype=np.float64)[None, :, None] - cr - ty
    dc = np.arange(w, dtype=np.float64)[None, None, :] - cc - tx
    c = dc / sx - dr * (sh / (sy * sx)) + cc                   # (N, H, W)
    r = dr / sy + cr                                          # (N, H, 1): constant along a row
    inside = (r >= 0) & (r <= h - 1) & (c >= 0) & (c <= w - 1)
    r0 = np.clip(np.floor(r), 0, max(h - 2, 0)).astype(np.intp)
    c0 = np.clip(np.floor(c), 0, max(w - 2, 0)).astype(np.intp)
    fr, fc = (r - r0)[..., None], (c - c0)[..., None]
    dy, dx = (w if h > 1 else 0), (1 if w > 1 else 0)   # to the next row / column
    flat = x.reshape(n * h * w, -1)
    i00 = (np.arange(n)[:, None, None] * (h * w) + r0 * w + c0).ravel()   # (N, H, W) flat
    v = [flat[i].reshape(n, h, w, -1) for i in (i00, i00 + dx, i00 + dy, i00 + dy + dx)]
    out = (v[0] * (1 - fc) + v[1] * fc) * (1 - fr) + (v[2] * (1 - fc) + v[3] * fc) * fr
    return np.where(inside[..., None], out, 0.0).astype(x.dtype)


def apply_affine(x: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Warp a (H, W, C) float image about its centre by one row of ``affine_params`` (bilinear, 0 fill)."""
    return warp_affine_batch(x[None], np.asarray(params)[None])[0]


def random_affine(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """LC98-style distortion of a (H, W, C) float image about its centre (ranges: module docstring)."""
    return apply_affine(x, affine_params(rng, 1)[0])


@dataclasses.dataclass
class Preprocessor:
    """Decode + transforms for one ``augment`` mode (picklable, for grain workers).

    The transforms work on batches (``base_batch``, ``train_batch``, ``eval_batch``; the random draws of
    ``train_batch`` are made by ``draw`` beforehand); ``base``/``train``/``eval`` are the one-image case.
    """

    augment: str
    input_size: int
    channels: int = 3
    mean: np.ndarray | None = None      # 0..255 scale: per-pixel image of the base size, or per-channel (C,)
    lighting_std: float = LIGHTING_STD

    def __post_init__(self):
        if self.augment not in AUGMENTS:
            raise ValueError(f"unknown augment {self.augment!r}; choose from {', '.join(AUGMENTS)}")
        if self.mean is not None:
            self.mean = np.asarray(self.mean, np.float32)

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

    def decoded_hw(self, h: int, w: int) -> tuple[int, int]:
        """(H, W) that ``decode`` gives for a stored h x w image."""
        if self.augment in ("alexnet", "cifar"):
            return self.base_size, self.base_size
        if self.augment == "none" and (h > self.input_size or w > self.input_size):
            return self.input_size, self.input_size
        return h, w

    # -- transforms ------------------------------------------------------------------------------------
    def _lenet_scale(self, x: np.ndarray) -> np.ndarray:
        return (x * _LENET_SCALE + np.float32(LENET_BACKGROUND)).astype(np.float32)

    def base_batch(self, imgs: np.ndarray) -> np.ndarray:
        """Deterministic part: uint8 (N, H, W, C) -> float32 base images (before any crop)."""
        a = self.augment
        if a in ("lenet", "lenet_affine"):
            return _LENET_LUT[fit_batch(imgs, self.input_size)]
        if a == "none":
            return _UNIT_LUT[fit_batch(imgs, self.input_size)]
        x = imgs.astype(np.float32)
        if self.mean is not None:
            x -= self.mean
        return x

    def base(self, img: np.ndarray) -> np.ndarray:
        """Deterministic part: uint8 (H, W, C) -> float32 base image (before any crop)."""
        return self.base_batch(img[None])[0]

    def _crop_span(self) -> int:
        """Largest random-crop offset (cifar / alexnet)."""
        pad = CIFAR_PAD if self.augment == "cifar" else 0
        return self.base_size + 2 * pad - self.input_size

    def draw(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """The random draws of ``train_batch`` for ``n`` images (empty for the deterministic modes)."""
        a = self.augment
        if a == "lenet_affine":
            return {"affine": affine_params(rng, n)}
        if a not in ("cifar", "alexnet"):
            return {}
        span = self._crop_span()
        out = {"top": rng.integers(0, span + 1, n), "left": rng.integers(0, span + 1, n),
               "flip": rng.random(n) < 0.5}
        if a == "alexnet" and self.lighting_std > 0 and self.channels == 3:
            out["lighting"] = lighting_offsets(rng.normal(0.0, self.lighting_std, (n, 3)))
        return out

    def train_batch(self, imgs: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
        """uint8 (N, H, W, C) decoded images + ``draw(rng, N)`` -> float32 (N, s, s, C) training inputs."""
        a, s, n = self.augment, self.input_size, len(imgs)
        if a == "lenet_affine":
            x = fit_batch(imgs, s).astype(np.float32)
            return self._lenet_scale(warp_affine_batch(x, params["affine"]))
        x = self.base_batch(imgs)
        if a not in ("cifar", "alexnet"):
            return np.ascontiguousarray(x, np.float32)
        if a == "cifar":
            h, w, c = x.shape[1:]
            xp = np.zeros((n, h + 2 * CIFAR_PAD, w + 2 * CIFAR_PAD, c), np.float32)
            xp[:, CIFAR_PAD:CIFAR_PAD + h, CIFAR_PAD:CIFAR_PAD + w] = x
            x = xp
        span = self._crop_span()
        if x.shape[1:3] != (s + span, s + span):
            raise ValueError(f"{a}: expected {s + span}x{s + span} base images, got {x.shape[1:3]}")
        out = np.empty((n, s, s, x.shape[-1]), np.float32)
        for i, (t, l, f) in enumerate(zip(params["top"].tolist(), params["left"].tolist(),
                                          params["flip"].tolist(), strict=True)):
            v = x[i, t:t + s, l:l + s]
            out[i] = v[:, ::-1] if f else v
        if "lighting" in params:
            out += params["lighting"][:, None, None, :]
        return out

    def train(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.train_batch(img[None], self.draw(rng, 1))[0]

    def eval_batch(self, imgs: np.ndarray, ten_crop: bool = False) -> np.ndarray:
        """uint8 (N, H, W, C) -> float32 (N, s, s, C), or (N, 10, s, s, C) with ``ten_crop``."""
        x = self.base_batch(imgs)
        s = self.input_size
        if ten_crop:
            out = ten_crops_batch(x, s)
        else:
            h, w = x.shape[1:3]
            top, left = (h - s) // 2, (w - s) // 2
            out = x[:, top:top + s, left:left + s]
        return np.ascontiguousarray(out, np.float32)

    def eval(self, img: np.ndarray, ten_crop: bool = False) -> np.ndarray:
        return self.eval_batch(img[None], ten_crop)[0]


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
    idx = _mean_subset(n, max_examples, seed)
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


def _mean_subset(n: int, max_examples: int | None, seed: int) -> np.ndarray:
    idx = np.arange(n)
    if max_examples is not None and n > max_examples:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_examples, replace=False))
    return idx


def mean_from_arrays(arrays: ArraySplit, max_examples: int | None = None,
                     seed: int = MEAN_SEED) -> np.ndarray:
    """``compute_mean_image`` over a decoded split: the same subset, the same result (integer sums are
    exact in float64, so the summation order does not matter)."""
    idx = _mean_subset(len(arrays), max_examples, seed)
    idx = idx[arrays.valid[idx]]
    if not len(idx):
        raise ValueError("no decodable images to compute a mean from")
    total = np.zeros(arrays.images.shape[1:], np.float64)
    for start in range(0, len(idx), 4096):
        total += arrays.images[idx[start:start + 4096]].sum(0, dtype=np.float64)
    return (total / len(idx)).astype(np.float32)


def mean_image(path: Path, split: str, pre: Preprocessor) -> np.ndarray:
    """Cached per-pixel mean image of ``split`` at ``pre``'s base size (``<dataset dir>/mean_*.npy``)."""
    b = pre.base_size
    fname = f"mean_{pre.augment}_{_split_tag(split)}_{b}x{b}x{pre.channels}.npy"
    for d in (path, _cache_dir(path)):
        if (d / fname).is_file():
            return np.load(d / fname)
    nomean = dataclasses.replace(pre, mean=None)
    max_examples = MEAN_MAX_EXAMPLES.get(pre.augment)
    arrays = load_array_split(path, split, nomean)
    if arrays is not None:
        mean = mean_from_arrays(arrays, max_examples)
    else:
        mean = compute_mean_image(RecordSource(path, split), nomean, max_examples)
    _atomic_save(_cache_dir(path) / fname, lambda f: np.save(f, mean))
    return mean


# ----------------------------------------------------------------------------------------------------
# in-memory decoded splits
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ArraySplit:
    """A whole split decoded once: ``images[i]`` is ``Preprocessor.decode`` of record i (zeros where the
    image could not be decoded: ``valid[i]`` False, its name in ``bad``)."""

    images: np.ndarray                  # uint8 (N, H, W, C)
    labels: np.ndarray                  # int32 (N,)
    valid: np.ndarray                   # bool (N,)
    bad: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)


_ARRAY_SPLITS: collections.OrderedDict = collections.OrderedDict()   # key -> (fingerprint, ArraySplit)
_SHAPES: dict = {}


def _split_tag(split: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", split)


def _atomic_save(dest: Path, write) -> None:
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


def _image_shape(path: Path) -> tuple:
    """Stored image shape from the dataset's features (None entries: variable)."""
    info = path / "dataset_info.json"
    key = (str(path), info.stat().st_mtime_ns if info.exists() else None)
    if key not in _SHAPES:
        _SHAPES[key] = tuple(tfds.builder_from_directory(str(path)).info.features["image"].shape or ())
    return _SHAPES[key]


def in_memory_max_bytes() -> int:
    """Largest decoded split (bytes) the in-memory path takes: ``$ALEXNET_JAX_IN_MEMORY_MAX_BYTES``, else
    ``IN_MEMORY_MAX_BYTES``; 0 means always stream."""
    v = os.environ.get(IN_MEMORY_ENV, "").strip()
    return int(float(v)) if v else IN_MEMORY_MAX_BYTES


def _fingerprint(path: Path) -> str:
    files = sorted(p for p in path.iterdir() if p.is_file() and (
        ".array_record" in p.name or p.name in ("dataset_info.json", "features.json")))
    stats = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return json.dumps([str(path.resolve()), *stats])


def _decode_split(source: RecordSource, pre: Preprocessor, shape: tuple[int, int, int]) -> ArraySplit:
    n = len(source)
    t0 = time.perf_counter()
    images = np.zeros((n, *shape), np.uint8)
    labels = np.zeros((n,), np.int32)
    valid = np.zeros((n,), bool)
    reported: set = set()
    bad: list[str] = []
    for start in range(0, n, 1024):
        for j, rec in enumerate(source.__getitems__(range(start, min(n, start + 1024))), start):
            labels[j] = rec["label"]
            img = _safe_decode(pre, rec, reported)
            if img is not None and img.shape != shape:
                log.warning("skipping image %s: shape %s, expected %s", rec["name"], img.shape, shape)
                img = None
            if img is None:
                bad.append(rec["name"])
                continue
            images[j] = img
            valid[j] = True
    log.info("decoded %s [%s]: %d images %s in %.1f s", source.path, source.split, n, shape,
             time.perf_counter() - t0)
    return ArraySplit(images, labels, valid, tuple(bad))


def _load_npz(file: Path, fingerprint: str, shape: tuple) -> ArraySplit | None:
    try:
        with np.load(file, allow_pickle=False) as z:
            if int(z["version"]) != ARRAY_CACHE_VERSION or str(z["fingerprint"]) != fingerprint:
                return None
            arrays = ArraySplit(z["images"], z["labels"], z["valid"], tuple(str(b) for b in z["bad"]))
    except Exception as e:  # noqa: BLE001 - an unreadable cache is rebuilt
        log.warning("ignoring unreadable cache %s: %s: %s", file, type(e).__name__, e)
        return None
    if arrays.images.shape[1:] != shape or arrays.images.dtype != np.uint8:
        return None
    return arrays


def load_array_split(path: str | os.PathLike, split: str, pre: Preprocessor) -> ArraySplit | None:
    """``split`` decoded once into memory for the in-memory path, or None where it does not apply (images
    of variable size, or more than ``in_memory_max_bytes()`` decoded).  Loaded from / saved to
    ``<dataset dir>/cache/`` and kept for the process (``MEMORY_CACHE_ENTRIES`` splits)."""
    path = Path(path)
    limit = in_memory_max_bytes()
    stored = _image_shape(path)
    if limit <= 0 or len(stored) != 3 or any(d is None for d in stored):
        return None
    h, w = pre.decoded_hw(int(stored[0]), int(stored[1]))
    shape = (h, w, pre.channels)
    source = RecordSource(path, split)
    if len(source) * h * w * pre.channels > limit:
        return None
    how = "native" if (h, w) == tuple(stored[:2]) else pre.augment   # decode brings images to (h, w) so
    key = (str(path), split, how, shape)
    fingerprint = _fingerprint(path)
    hit = _ARRAY_SPLITS.get(key)
    if hit is not None and hit[0] == fingerprint:
        _ARRAY_SPLITS.move_to_end(key)
        return hit[1]
    file = _cache_dir(path) / "cache" / f"{_split_tag(split)}_{how}_{h}x{w}x{pre.channels}.npz"
    arrays = _load_npz(file, fingerprint, shape) if DISK_CACHE and file.is_file() else None
    if arrays is None:
        arrays = _decode_split(source, pre, shape)
        if DISK_CACHE:
            _atomic_save(file, lambda f: np.savez(
                f, images=arrays.images, labels=arrays.labels, valid=arrays.valid,
                bad=np.array(arrays.bad, dtype=str), fingerprint=np.array(fingerprint),
                version=np.array(ARRAY_CACHE_VERSION)))
    elif arrays.bad:
        log.warning("%s [%s]: %d undecodable image(s) skipped: %s", path, split, len(arrays.bad),
                    ", ".join(arrays.bad[:20]) + (" ..." if len(arrays.bad) > 20 else ""))
    _ARRAY_SPLITS[key] = (fingerprint, arrays)
    while len(_ARRAY_SPLITS) > MEMORY_CACHE_ENTRIES:
        _ARRAY_SPLITS.popitem(last=False)
    return arrays


def clear_array_cache() -> None:
    """Forget the decoded splits held in memory (the disk cache stays)."""
    _ARRAY_SPLITS.clear()


# ----------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------
def _ensure_absl_flags():
    """grain 0.2.18 workers read an absl flag; outside absl.app.run flags are unparsed (grain#1355)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _channels(path: Path) -> int:
    shape = _image_shape(Path(path))
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


def _check_process(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")


def _parse_state(state: bytes | str | dict) -> dict:
    if isinstance(state, (bytes, bytearray)):
        state = state.decode()
    if isinstance(state, str):
        state = json.loads(state)
    return state


def _check_meta(now: dict, saved: dict) -> None:
    mismatch = {k: (v, saved.get(k)) for k, v in now.items() if saved.get(k) != v}
    if mismatch:
        raise ValueError(f"iterator state was saved with different settings (now, saved): {mismatch}")


def _too_small(config, n: int, batch_size: int) -> ValueError:
    return ValueError(f"{config.dataset}[{config.train_split}]: shard of {n} examples is smaller than the "
                      f"per-process batch size {batch_size}")


class TrainIterator:
    """Streaming (grain) infinite iterator of {"image": float32 (B, H, W, C), "label": int32 (B,)} batches.

    Each epoch is a fresh shuffle of this process's shard (grain derives it from (seed, epoch)); batches
    run across epoch boundaries.  ``get_state()``/``set_state()`` resume exactly.
    """

    pipeline = "stream"

    def __init__(self, config, *, batch_size: int, process_index: int = 0, process_count: int = 1,
                 seed: int | None = None, preprocessor: Preprocessor | None = None):
        _check_process(process_index, process_count)
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
            raise _too_small(config, self.num_examples, self.batch_size)
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
        state = _parse_state(state)
        if "grain" not in state:
            raise ValueError(f"iterator state was saved by the {state.get('pipeline', '?')!r} pipeline; it "
                             f"cannot be restored on the streaming pipeline")
        _check_meta(self._meta(), state["meta"])
        self._iterator().set_state(json.dumps(state["grain"]).encode())

    def close(self) -> None:
        self._it = None


class ArrayTrainIterator:
    """In-memory infinite iterator of {"image": float32 (B, H, W, C), "label": int32 (B,)} batches.

    Epoch e is a permutation of the split's decodable examples drawn from (seed, e), identical on every
    process; process p takes the p-th of ``process_count`` equal slices (the remainder is dropped).
    Batches run across epoch boundaries; batch ``step`` (counted from 0 across epochs) holds stream
    positions [step * B, (step + 1) * B) and its augmentation draws come from (seed, process_index, step),
    so the state is the step alone and ``set_state`` resumes exactly.
    """

    pipeline = "memory"

    def __init__(self, config, *, batch_size: int, process_index: int = 0, process_count: int = 1,
                 seed: int | None = None, preprocessor: Preprocessor | None = None,
                 arrays: ArraySplit | None = None):
        _check_process(process_index, process_count)
        path = ensure_prepared(config)
        self.config = config
        self.batch_size = int(batch_size)
        self.seed = int(config.seed if seed is None else seed)
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.preprocessor = preprocessor or make_preprocessor(config, path)
        if arrays is None:
            arrays = load_array_split(path, config.train_split, self.preprocessor)
            if arrays is None:
                raise ValueError(f"{config.dataset}[{config.train_split}] does not fit the in-memory path "
                                 f"(variable image size or over {in_memory_max_bytes()} bytes decoded)")
        self.arrays = arrays
        self._pool = np.flatnonzero(arrays.valid)
        self.num_examples = len(self._pool) // self.process_count
        self.steps_per_epoch = self.num_examples // self.batch_size
        if self.steps_per_epoch == 0:
            raise _too_small(config, self.num_examples, self.batch_size)
        self._step = 0
        self._epochs: collections.OrderedDict = collections.OrderedDict()

    def _words(self, stream: int, *rest: int) -> list[int]:
        return [stream, self.seed % 2**64, *rest]

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Indices (into the split) of this process's examples in epoch ``epoch``, in order."""
        if epoch not in self._epochs:
            perm = np.random.default_rng(self._words(_PERM_STREAM, epoch)).permutation(len(self._pool))
            n, p = self.num_examples, self.process_index
            self._epochs[epoch] = self._pool[perm[p * n:(p + 1) * n]]
            while len(self._epochs) > 2:
                self._epochs.popitem(last=False)
        return self._epochs[epoch]

    def batch_indices(self, step: int) -> np.ndarray:
        b, n = self.batch_size, self.num_examples
        epoch, offset = divmod(step * b, n)
        idx = self.epoch_indices(epoch)[offset:offset + b]
        if len(idx) < b:
            idx = np.concatenate([idx, self.epoch_indices(epoch + 1)[:b - len(idx)]])
        return idx

    def batch_params(self, step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self._words(_AUGMENT_STREAM, self.process_index, step))
        return self.preprocessor.draw(rng, self.batch_size)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """Batch number ``step`` (a pure function of the settings and ``step``)."""
        idx = self.batch_indices(step)
        images = self.preprocessor.train_batch(self.arrays.images[idx], self.batch_params(step))
        return {"image": images, "label": self.arrays.labels[idx]}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        b = self.batch(self._step)
        self._step += 1
        return b

    @property
    def step(self) -> int:
        return self._step

    def _meta(self) -> dict[str, Any]:
        return {"dataset": self.config.dataset, "split": self.config.train_split,
                "augment": self.config.augment, "batch_size": self.batch_size, "seed": self.seed,
                "process_index": self.process_index, "process_count": self.process_count}

    def get_state(self) -> bytes:
        """JSON bytes: the number of batches produced (also as epoch / position) and the settings."""
        epoch, position = divmod(self._step * self.batch_size, self.num_examples)
        return json.dumps({"format": 2, "pipeline": self.pipeline, "meta": self._meta(), "step": self._step,
                           "epoch": epoch, "position": position}).encode()

    def set_state(self, state: bytes | str | dict) -> None:
        state = _parse_state(state)
        _check_meta(self._meta(), state["meta"])
        if "step" in state:
            self._step = int(state["step"])
            return
        # a state of the streaming (grain) pipeline, e.g. a checkpoint from before the in-memory path:
        # continue after as many examples as it had consumed (not the same order)
        seen = state.get("grain", {}).get("last_seen_indices", {})
        consumed = (max(int(v) for v in seen.values()) // self.process_count + 1) if seen else 0
        self._step = consumed // self.batch_size
        log.warning("restoring a streaming-pipeline iterator state on the in-memory pipeline: continuing "
                    "at step %d (epoch %.2f) in a different example order", self._step,
                    self._step / self.steps_per_epoch)

    def close(self) -> None:
        pass


def make_train_iter(config, *, batch_size: int, process_index: int = 0, process_count: int = 1,
                    seed: int | None = None) -> TrainIterator | ArrayTrainIterator:
    """Training batches for this process (``batch_size`` is per process); the in-memory path
    (ArrayTrainIterator) where the training split fits, else streaming (TrainIterator)."""
    _check_process(process_index, process_count)
    path = ensure_prepared(config)
    pre = make_preprocessor(config, path)
    arrays = load_array_split(path, config.train_split, pre)
    kw = dict(batch_size=batch_size, process_index=process_index, process_count=process_count, seed=seed,
              preprocessor=pre)
    if arrays is not None:
        return ArrayTrainIterator(config, arrays=arrays, **kw)
    return TrainIterator(config, **kw)


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


class _EvalBase:
    """One process's contiguous shard of a split: [start, stop), in ``num_batches`` padded batches."""

    def _shard(self, n: int, batch_size: int, process_index: int, process_count: int) -> None:
        _check_process(process_index, process_count)
        self.batch_size = int(batch_size)
        self.total_examples = n
        self.start, self.stop = process_index * n // process_count, (process_index + 1) * n // process_count
        self.num_examples = self.stop - self.start
        self.num_batches = math.ceil(math.ceil(n / process_count) / self.batch_size)

    def __len__(self) -> int:
        return self.num_batches


class EvalIterator(_EvalBase):
    """Streaming (grain): one deterministic pass per ``iter()``: {"image", "label", "mask"} batches, the
    last padded.

    Every example of the split is in exactly one process's batches with mask True (an undecodable image
    is reported and masked out).  All processes yield the same number of batches.
    """

    pipeline = "stream"

    def __init__(self, config, split: str, *, batch_size: int, process_index: int = 0, process_count: int = 1,
                 ten_crop: bool = False, preprocessor: Preprocessor | None = None):
        _check_process(process_index, process_count)
        path = ensure_prepared(config)
        self.config, self.split, self.ten_crop = config, split, bool(ten_crop)
        self.preprocessor = preprocessor or make_preprocessor(config, path)
        self.source = RecordSource(path, split)
        self._shard(len(self.source), batch_size, process_index, process_count)
        self._batches = _EvalBatches(self.source, self.start, self.stop, self.batch_size, self.num_batches,
                                     self.preprocessor, self.ten_crop)

    def __repr__(self) -> str:
        return f"EvalIterator({self._batches!r})"

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


class ArrayEvalIterator(_EvalBase):
    """In-memory: the same batches as EvalIterator (same shards, padding, masks), built with numpy."""

    pipeline = "memory"

    def __init__(self, config, split: str, *, batch_size: int, process_index: int = 0, process_count: int = 1,
                 ten_crop: bool = False, preprocessor: Preprocessor | None = None,
                 arrays: ArraySplit | None = None):
        _check_process(process_index, process_count)
        path = ensure_prepared(config)
        self.config, self.split, self.ten_crop = config, split, bool(ten_crop)
        self.preprocessor = preprocessor or make_preprocessor(config, path)
        if arrays is None:
            arrays = load_array_split(path, split, self.preprocessor)
            if arrays is None:
                raise ValueError(f"{config.dataset}[{split}] does not fit the in-memory path")
        self.arrays = arrays
        self._shard(len(arrays), batch_size, process_index, process_count)

    def __repr__(self) -> str:
        return (f"ArrayEvalIterator({self.config.dataset}[{self.split}], {self.start}:{self.stop}, "
                f"batch_size={self.batch_size}, ten_crop={self.ten_crop})")

    def batch(self, b: int) -> dict[str, np.ndarray]:
        lo = self.start + b * self.batch_size
        hi = max(lo, min(lo + self.batch_size, self.stop))
        images = np.zeros((self.batch_size, *self.preprocessor.output_shape(self.ten_crop)), np.float32)
        labels = np.zeros((self.batch_size,), np.int32)
        mask = np.zeros((self.batch_size,), bool)
        if hi > lo:
            k = hi - lo
            images[:k] = self.preprocessor.eval_batch(self.arrays.images[lo:hi], self.ten_crop)
            labels[:k] = self.arrays.labels[lo:hi]
            mask[:k] = self.arrays.valid[lo:hi]
            images[:k][~mask[:k]] = 0.0
        return {"image": images, "label": labels, "mask": mask}

    def __iter__(self):
        for b in range(self.num_batches):
            yield self.batch(b)


def make_eval_iter(config, split: str, *, batch_size: int, process_index: int = 0, process_count: int = 1,
                   ten_crop: bool = False) -> EvalIterator | ArrayEvalIterator:
    """Evaluation batches of ``split`` for this process (in-memory where the split fits, else streaming);
    see EvalIterator."""
    _check_process(process_index, process_count)
    path = ensure_prepared(config)
    pre = make_preprocessor(config, path)
    arrays = load_array_split(path, split, pre)
    kw = dict(batch_size=batch_size, process_index=process_index, process_count=process_count,
              ten_crop=ten_crop, preprocessor=pre)
    if arrays is not None:
        return ArrayEvalIterator(config, split, arrays=arrays, **kw)
    return EvalIterator(config, split, **kw)
