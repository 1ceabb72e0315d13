"""Preprocessing and augmentation on the device (pure JAX: jittable, batched, no Python loop over examples).

Loaders deliver uint8 (B, H, W, C) images in their stored shape (``Augment.stored_shape``); everything
random or arithmetic happens here, inside the jitted step.  ``Augment.train(images, positions, key)`` draws
every random parameter of example i from ``fold_in(key, positions[i])``, its position in the global
training stream (step * global_batch + row), so the draws are deterministic, resume exactly, differ
between epochs, and do not depend on the batch composition or on the mesh / process layout: each data
shard transforms only its own rows and nothing is gathered.

Kinds (``config.augment``; outputs float32 (B, s, s, C), s = ``input_size``):

``none``          x / 255, fitted to s: zero-padded (centred) when smaller, else the shorter side resized
                  to s (bilinear, antialiased) and the centre kept.  Train = eval.
``lenet``         (LC98 §II.B) the 28x28 digit zero-padded (centred) to s (32: 2 px each side), then
                  x * 1.275/255 - 0.1: background 0 -> -0.1, foreground 255 -> 1.175 (mean ~0, variance
                  ~1 on MNIST, as the paper's input normalisation intends).  Train = eval.
``lenet_affine``  ``lenet`` plus, in training, a random affine distortion of the padded digit about its
                  centre (LC98 §III: translation, scaling, squeezing, horizontal shear): per-axis scale
                  U(0.85, 1.15) (independent axes -> squeezing), horizontal shear U(-0.3, 0.3) (a column
                  shift proportional to the row), translation U(-2, 2) px per axis; bilinear, background
                  fill outside the image.
``lenet_affine_fixed``  ``lenet`` plus, in training, LC98's fixed set (§III): for each training image, 9
                  distortions drawn once (540,000 for MNIST) besides the original, 10 versions in all.  Each
                  pass shows every image once, in version (pass + r) mod 10 with r an offset drawn per image,
                  so any 10 consecutive passes show each of the 600,000 patterns exactly once.  Version
                  k >= 1 of record i is the ``lenet_affine`` warp with parameters drawn from
                  fold_in(fold_in(key, i), k) (r from fold_in(fold_in(key, i), 0)): a pure function of
                  (seed, image, version) evaluated on the device, the same patterns on every use, resume
                  and mesh, without the ~0.42 GB a stored uint8 copy would take per process.  Batches carry
                  "record" and "epoch" (loader.TrainLoader).
``cifar``         base size S = max(s, 32) (the stored 32x32 image resized bilinearly when S != 32), minus
                  the mean: the per-pixel mean image of the training split when S == 32, else the
                  per-channel mean; the result stays in 0..255 units ("centred raw RGB", as K12 §2 feeds
                  AlexNet, whose N(0, 0.01) initialisation assumes that scale).  Train: zero-pad 4 px
                  (zero = the mean after centring), random s crop (offsets uniform over 0..S+8-s), flip
                  p=0.5.  Eval: centre crop.
``alexnet``       (K12 §2, §4.1) stored 256x256 (shorter side 256, centre crop; done at prepare time or by
                  the loader), minus the per-pixel mean image of the training split at the crop's offset
                  (the mean is subtracted before cropping).  Train: random s crop, offsets uniform over
                  0..256-s, horizontal flip p=0.5, PCA lighting noise 255 * eigvec @ (alpha * eigval),
                  alpha ~ N(0, 0.1^2) per image per use (eigen-pairs of fb.resnet.torch, on the [0, 1]
                  scale, hence the 255; the paper gives none).  Eval: centre crop, or ten crops (K12 §4.1):
                  top-left, top-right, bottom-left, bottom-right, centre, then their horizontal flips in the
                  same order -> (B, 10, s, s, C).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.errors import ConfigError, WorkdirError

from .cache import mean_image
from .catalog import AUGMENTS, RECORD_KEYED_AUGMENTS
from .datasets import Dataset
from .preparation import locate
from .records import STORED_SHAPES, stored_shape_of

# fb.resnet.torch datasets/imagenet.lua: columns of IMAGENET_EIGVEC are the eigenvectors of IMAGENET_EIGVAL
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
IMAGENET_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                            [-0.5808, -0.0045, -0.8140],
                            [-0.5836, -0.6948, 0.4203]], np.float32)
LIGHTING_STD = 0.1
LENET_BACKGROUND, LENET_FOREGROUND = -0.1, 1.175
AFFINE_SCALE = (0.85, 1.15)
AFFINE_SHEAR = 0.3
AFFINE_TRANSLATE = 2.0
FIXED_VERSIONS = 10        # lenet_affine_fixed: the original and 9 distortions per image (LC98 §III: 540,000)
CIFAR_PAD = 4
CIFAR_SIZE = STORED_SHAPES["cifar10"][0]
CIFAR_CHANNEL_MEAN = (125.3, 123.0, 113.9)
# The usual ImageNet per-channel RGB mean (0..255): stands in for the training mean image where the
# dataset is not prepared (tools running a checkpoint on photos).
IMAGENET_RGB_MEAN = (123.68, 116.78, 103.94)
# torchvision's ImageNet Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) in 0..255 units: the
# mean of config.preprocess=torchvision (its std, 255 * (0.229, 0.224, 0.225), is alexnet_owt's input scale,
# models/init.py IMAGENET_STD)
TORCHVISION_MEAN = (123.675, 116.28, 103.53)
# config.preprocess=caffe: the imported net's mean image, float32 (H, W, 3) RGB in 0..255, in the workdir
CAFFE_MEAN_FILE = "input_mean.npy"

_LENET_SCALE = (LENET_FOREGROUND - LENET_BACKGROUND) / 255.0


def lighting_offsets(alpha):
    """(..., 3) alphas -> (..., 3) RGB offsets in 0..255 units: 255 * eigvec @ (alpha * eigval)."""
    return 255.0 * jnp.einsum("ij,...j,j->...i", jnp.asarray(IMAGENET_EIGVEC), alpha, jnp.asarray(IMAGENET_EIGVAL))


def _fit(x_BHWC, size: int, resize: bool):
    """Zero-pad (centred) to size x size where smaller; where larger, resize the shorter side to size
    (``resize``) and/or keep the centre.  Static shapes: decided at trace time."""
    b, h, w, c = x_BHWC.shape
    if resize and min(h, w) > size:
        k = size / min(h, w)
        h, w = max(size, round(h * k)), max(size, round(w * k))
        x_BHWC = jax.image.resize(x_BHWC, (b, h, w, c), "linear", antialias=True)
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        x_BHWC = jnp.pad(x_BHWC, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
        h, w = h + ph, w + pw
    t, l = (h - size) // 2, (w - size) // 2
    return x_BHWC[:, t:t + size, l:l + size]


def _crop_flip(x_HWC, top, left, flip, size: int):
    """One example: the size x size window at (top, left), mirrored left-right where ``flip``."""
    v = jax.lax.dynamic_slice(x_HWC, (top, left, 0), (size, size, x_HWC.shape[-1]))
    return jnp.where(flip, v[:, ::-1], v)


def _affine_params(key):
    """(sy, sx, shear, ty, tx) uniform in the ``lenet_affine`` ranges."""
    lo = jnp.array([AFFINE_SCALE[0], AFFINE_SCALE[0], -AFFINE_SHEAR, -AFFINE_TRANSLATE, -AFFINE_TRANSLATE],
                   jnp.float32)
    hi = jnp.array([AFFINE_SCALE[1], AFFINE_SCALE[1], AFFINE_SHEAR, AFFINE_TRANSLATE, AFFINE_TRANSLATE], jnp.float32)
    return jax.random.uniform(key, (5,), jnp.float32, lo, hi)


def warp_affine(x_HWC, params):
    """One example: warp about the image centre by (sy, sx, shear, ty, tx): the output pixel at centred
    (row, col) takes the input at the inverse of row' = sy row + ty, col' = shear row + sx col + tx.
    Bilinear; 0 outside the image (scipy.ndimage.affine_transform with order=1, mode="constant")."""
    h, w, _ = x_HWC.shape
    sy, sx, sh, ty, tx = (params[k] for k in range(5))
    cr, cc = (h - 1) / 2, (w - 1) / 2
    dr = jnp.arange(h, dtype=jnp.float32)[:, None] - cr - ty
    dc = jnp.arange(w, dtype=jnp.float32)[None, :] - cc - tx
    r = jnp.broadcast_to(dr / sy + cr, (h, w))
    c = dc / sx - dr * (sh / (sy * sx)) + cc
    inside = (r >= 0) & (r <= h - 1) & (c >= 0) & (c <= w - 1)
    r0 = jnp.clip(jnp.floor(r), 0, max(h - 2, 0)).astype(jnp.int32)
    c0 = jnp.clip(jnp.floor(c), 0, max(w - 2, 0)).astype(jnp.int32)
    fr, fc = (r - r0)[..., None], (c - c0)[..., None]
    r1, c1 = jnp.minimum(r0 + 1, h - 1), jnp.minimum(c0 + 1, w - 1)
    v00, v01, v10, v11 = x_HWC[r0, c0], x_HWC[r0, c1], x_HWC[r1, c0], x_HWC[r1, c1]
    out = (v00 * (1 - fc) + v01 * fc) * (1 - fr) + (v10 * (1 - fc) + v11 * fc) * fr
    return jnp.where(inside[..., None], out, 0.0)


@dataclasses.dataclass(frozen=True, eq=False)
class Augment:
    """The preprocessing of one run (module docstring), built once from the config and the dataset.

    ``train(images_u8, positions, key)`` and ``eval(images_u8, ten_crop)`` are pure JAX functions of
    batched uint8 images (B, *stored_shape): call them inside jit.  ``draw(positions, key)`` gives the
    random parameters ``train`` uses (for tests and inspection).
    """

    kind: str
    input_size: int
    stored_shape: tuple[int, int, int]          # (H, W, C) of the uint8 images the loaders deliver
    mean: np.ndarray | None = None              # float32, 0..255: per-pixel (base H, W, C) or per-channel (C,)
    lighting_std: float = LIGHTING_STD

    def __post_init__(self):
        if self.kind not in AUGMENTS:
            raise ValueError(f"unknown augment {self.kind!r}; choose from {', '.join(AUGMENTS)}")
        object.__setattr__(self, "stored_shape", tuple(int(v) for v in self.stored_shape))
        object.__setattr__(self, "input_size", int(self.input_size))
        if len(self.stored_shape) != 3:
            raise ValueError(f"stored_shape must be (H, W, C), got {self.stored_shape}")
        h, w, c = self.stored_shape
        s = self.input_size
        if self.kind == "alexnet" and (h < s or w < s):
            raise ConfigError(f"augment 'alexnet' crops {s}x{s} windows from the stored images, which are only "
                             f"{h}x{w}: use a 256x256 store (e.g. dataset=imagenet2012/raw256) or a smaller "
                             f"input_size")
        if self.mean is not None:
            m = np.asarray(self.mean, np.float32)
            if m.shape not in ((c,), (*self.base_shape, c)):
                raise ValueError(f"augment {self.kind!r}: mean of shape {m.shape}; expected per-channel ({c},) "
                                 f"or per-pixel {(*self.base_shape, c)}")
            object.__setattr__(self, "mean", m)
        elif self.kind in ("cifar", "alexnet"):
            pass   # allowed: no mean subtraction (tools without the training set)

    # -- shapes ----------------------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        return self.stored_shape[-1]

    @property
    def base_shape(self) -> tuple[int, int]:
        """(H, W) of the image from which crops are taken (the mean image's shape)."""
        if self.kind == "cifar":
            b = max(self.input_size, CIFAR_SIZE)
            return (b, b)
        if self.kind == "alexnet":
            return self.stored_shape[:2]
        return (self.input_size, self.input_size)

    @property
    def crop_span(self) -> tuple[int, int]:
        """Largest random-crop offsets (rows, cols): offsets are uniform over 0..span."""
        pad = 2 * CIFAR_PAD if self.kind == "cifar" else 0
        return tuple(b + pad - self.input_size for b in self.base_shape)

    def output_shape(self, ten_crop: bool = False) -> tuple[int, ...]:
        s = (self.input_size, self.input_size, self.channels)
        return (10, *s) if ten_crop else s

    # -- deterministic part ----------------------------------------------------------------------------
    def _check(self, images):
        if images.shape[1:] != self.stored_shape:
            raise ValueError(f"augment {self.kind!r} expects uint8 images of shape (B, *{self.stored_shape}), "
                             f"got {images.shape}")

    def base(self, images_u8):
        """uint8 (B, *stored) -> float32 (B, *base, C): fitted/resized and centred, before any crop."""
        self._check(images_u8)
        x = images_u8.astype(jnp.float32)
        k = self.kind
        if k in ("lenet", "lenet_affine", "lenet_affine_fixed"):
            return _fit(x, self.input_size, resize=False) * _LENET_SCALE + LENET_BACKGROUND
        if k == "none":
            return _fit(x, self.input_size, resize=True) / 255.0
        if k == "cifar" and x.shape[1:3] != self.base_shape:
            b = x.shape[0]
            x = jax.image.resize(x, (b, *self.base_shape, self.channels), "linear", antialias=True)
        if self.mean is not None:
            m = jnp.asarray(self.mean)
            x = x - m.reshape((1,) * (x.ndim - m.ndim) + m.shape)
        return x

    # -- random parameters -----------------------------------------------------------------------------
    def draw(self, positions, key) -> dict[str, jax.Array]:
        """Per-example random parameters from ``fold_in(key, position)``: {"top", "left", "flip",
        "alpha"} (cifar / alexnet; alpha only for alexnet), {"affine": (B, 5) = sy, sx, shear, ty, tx}
        (lenet_affine), {} otherwise."""
        positions = jnp.asarray(positions, jnp.int32)

        def one(pos):
            k_crop_t, k_crop_l, k_flip, k_light, k_affine = jax.random.split(jax.random.fold_in(key, pos), 5)
            if self.kind == "lenet_affine":
                return {"affine": _affine_params(k_affine)}
            if self.kind not in ("cifar", "alexnet"):
                return {}
            span_h, span_w = self.crop_span
            out = {"top": jax.random.randint(k_crop_t, (), 0, span_h + 1),
                   "left": jax.random.randint(k_crop_l, (), 0, span_w + 1),
                   "flip": jax.random.bernoulli(k_flip, 0.5)}
            if self.kind == "alexnet":
                out["alpha"] = self.lighting_std * jax.random.normal(k_light, (3,), jnp.float32)
            return out

        return jax.vmap(one)(positions)

    def draw_fixed(self, records, epochs, key) -> dict[str, jax.Array]:
        """``lenet_affine_fixed``: {"version": (B,) in 0..9 (0: the original), "affine": (B, 5)} for the
        rows' records in their passes: version (epoch + r) mod 10, r and each version's parameters drawn
        once per (record, version) from ``key`` (module docstring)."""

        def one(record, epoch):
            pattern = jax.random.fold_in(key, record)
            offset = jax.random.randint(jax.random.fold_in(pattern, 0), (), 0, FIXED_VERSIONS)
            version = (epoch + offset) % FIXED_VERSIONS
            return {"version": version, "affine": _affine_params(jax.random.fold_in(pattern, version))}

        return jax.vmap(one)(jnp.asarray(records, jnp.int32), jnp.asarray(epochs, jnp.int32))

    # -- train / eval ----------------------------------------------------------------------------------
    def apply(self, images_u8, params: dict[str, Any]):
        """The training transform with given random parameters (``draw``, ``draw_fixed``): uint8
        (B, *stored) -> float32."""
        k, s = self.kind, self.input_size
        if k in ("none", "lenet"):
            return self.base(images_u8)
        if k in ("lenet_affine", "lenet_affine_fixed"):
            self._check(images_u8)
            x = _fit(images_u8.astype(jnp.float32), s, resize=False)
            warped = jax.vmap(warp_affine)(x, params["affine"])
            if k == "lenet_affine_fixed":   # version 0 is the original
                warped = jnp.where((params["version"] > 0)[:, None, None, None], warped, x)
            return warped * _LENET_SCALE + LENET_BACKGROUND
        x = self.base(images_u8)
        if k == "cifar":
            x = jnp.pad(x, ((0, 0), (CIFAR_PAD, CIFAR_PAD), (CIFAR_PAD, CIFAR_PAD), (0, 0)))
        out = jax.vmap(functools.partial(_crop_flip, size=s))(x, params["top"], params["left"], params["flip"])
        if k == "alexnet" and self.channels == 3 and self.lighting_std > 0:
            out = out + lighting_offsets(params["alpha"])[:, None, None, :]
        return out

    def train(self, images_u8, positions, key, *, records=None, epochs=None):
        """uint8 (B, *stored) + int32 (B,) stream positions + a PRNG key -> float32 (B, s, s, C).
        ``lenet_affine_fixed`` reads the rows' ``records`` and ``epochs`` instead of their positions."""
        if self.kind in RECORD_KEYED_AUGMENTS:
            if records is None or epochs is None:
                raise ValueError(f"augment {self.kind!r} needs each row's record and epoch (a loader built for "
                                 f"this config delivers them)")
            return self.apply(images_u8, self.draw_fixed(records, epochs, key))
        return self.apply(images_u8, self.draw(positions, key))

    def eval(self, images_u8, ten_crop: bool = False):
        """uint8 (B, *stored) -> float32 (B, s, s, C), or (B, 10, s, s, C) with ``ten_crop`` (module
        docstring: TL, TR, BL, BR, centre, then their flips)."""
        x = self.base(images_u8)
        s = self.input_size
        h, w = x.shape[1:3]
        if not ten_crop:
            t, l = (h - s) // 2, (w - s) // 2
            return x[:, t:t + s, l:l + s]
        offs = [(0, 0), (0, w - s), (h - s, 0), (h - s, w - s), ((h - s) // 2, (w - s) // 2)]
        crops = [x[:, t:t + s, l:l + s] for t, l in offs]
        return jnp.stack(crops + [c[:, :, ::-1] for c in crops], axis=1)


def channel_mean(channels: int) -> np.ndarray:
    """CIFAR-10's per-channel mean (0..255), or its average for one channel."""
    m = np.array(CIFAR_CHANNEL_MEAN, np.float32)
    return m if channels == 3 else m.mean(keepdims=True).repeat(channels)


def stand_in_mean(kind: str, channels: int) -> np.ndarray | None:
    """The per-channel mean that replaces the training mean image where the dataset is not at hand."""
    if kind == "alexnet":
        m = np.array(IMAGENET_RGB_MEAN, np.float32)
        return m if channels == 3 else m.mean(keepdims=True).repeat(channels)
    return channel_mean(channels) if kind == "cifar" else None


def preprocess_mean(config, workdir: str | None) -> np.ndarray:
    """The mean an imported net's inputs are centred with (``config.preprocess`` torchvision or caffe)."""
    if config.preprocess == "torchvision":
        return np.array(TORCHVISION_MEAN, np.float32)

    path = os.path.join(workdir or "<workdir>", CAFFE_MEAN_FILE)
    try:
        mean = np.load(path)
    except (OSError, ValueError) as e:
        raise WorkdirError(f"preprocess=caffe centres inputs with the mean image in {path}, which cannot be read "
                           f"({type(e).__name__}); import the net again (alexnet-jax import caffe ... --mean FILE)"
                           ) from None
    return np.asarray(mean, np.float32)


def make_augment(config, *, stored_shape: tuple[int, int, int] | None = None, mean: Any = "dataset",
                 dataset: Dataset | None = None, workdir: str | None = None) -> Augment:
    """The ``Augment`` of ``config`` (augment, input_size) for its prepared dataset.

    ``config.preprocess`` other than "dataset" (an imported net) fixes the mean (``preprocess_mean``; the caffe
    mean image is read from ``workdir``) and needs no dataset: the stored shape is the dataset's catalog shape.

    ``stored_shape`` defaults to the shape the dataset's loaders deliver.  ``mean="dataset"`` loads (or
    computes once and caches next to the dataset) the per-pixel mean image of ``config.train_split`` for
    ``alexnet``, and for ``cifar`` at input_size 32 (else CIFAR-10's per-channel mean); ``mean="stand-in"``
    uses a per-channel mean instead (`stand_in_mean`: tools running a checkpoint without its dataset);
    or pass an array, or None.  ``dataset``: ``locate(config)`` where already located.  Never prepares a
    dataset."""
    kind, s = config.augment, int(config.input_size)
    if getattr(config, "preprocess", "dataset") != "dataset":
        shape = tuple(stored_shape or stored_shape_of(config.dataset))
        return Augment(kind, s, shape, preprocess_mean(config, workdir))
    if stored_shape is None or (isinstance(mean, str) and mean == "dataset" and kind in ("cifar", "alexnet")):
        dataset = dataset or locate(config, auto=False)
        stored_shape = stored_shape or dataset.stored_shape
    if isinstance(mean, str):
        if mean == "stand-in":
            mean = stand_in_mean(kind, stored_shape[-1])
        elif mean != "dataset":
            raise ValueError(f"mean must be 'dataset', 'stand-in', an array or None, not {mean!r}")
        elif kind == "alexnet" or (kind == "cifar" and max(s, CIFAR_SIZE) == CIFAR_SIZE
                                   and tuple(stored_shape[:2]) == (CIFAR_SIZE, CIFAR_SIZE)):
            mean = mean_image(dataset, config.train_split)
        else:
            mean = channel_mean(stored_shape[-1]) if kind == "cifar" else None
    return Augment(kind, s, tuple(stored_shape), mean)
