"""Reading source files and decoding images on the host (numpy + Pillow; simplejpeg when installed).

One reader each, used by ``prepare``, the benchmark and the tools:

``read_idx(path)``             an IDX file (LC98's MNIST format), optionally gzipped -> numpy array.
``iter_image_files(paths)``    (relative name, bytes) of every image in files / folders (recursive) / tar
                               archives; names are full relative paths (folder-relative, or the tar member
                               name), never base names alone.
``decode_images(spec, data)``  encoded images -> uint8 (N, H, W, C) in the stored shape the device
                               augmentation expects (shorter side resized, centre kept).

JPEG decoding: simplejpeg (libjpeg-turbo, wheels for x86-64 and aarch64) when it is installed, else
Pillow (also libjpeg-turbo).  Both give bit-identical pixels, also for DCT-domain reduced decodes, because
``dct_scale`` picks the reduction factor itself and both libraries then run the same libjpeg-turbo code;
simplejpeg is 1.2-1.5x faster on 256x256 JPEGs (it skips Pillow's image-object and mode machinery).
Resizing uses Pillow's antialiased bilinear filter on either path.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import re
import struct
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from alexnet_jax.errors import InputFileError, InputNotFoundError

from .records import AUGMENT_STORED, STORED_SHAPES

try:  # optional fast JPEG decoder (same pixels as Pillow, see the module docstring)
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the install
    simplejpeg = None

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".webp", ".tif", ".tiff")
JPEG_MAGIC = b"\xff\xd8"


# ----------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST distribution format, optionally gzipped) into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: too short for an IDX file ({len(data)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if zero != 0 or dtype_code not in dtypes:
        raise ValueError(f"{path}: not an IDX file (bad magic {data[:4].hex()})")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtypes[dtype_code], offset=4 + 4 * ndim)
    if arr.size != math.prod(shape):
        raise ValueError(f"{path}: header says {shape} but holds {arr.size} values (truncated file?)")
    return arr.reshape(shape)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def _tar_images(path: Path, prefix: str = "") -> Iterator[tuple[str, bytes]]:
    with tarfile.open(path, "r|*") as tar:              # streamed: works for .tar.gz without seeking
        for m in tar:
            if m.isfile() and is_image_name(m.name):
                yield prefix + m.name.lstrip("./"), tar.extractfile(m).read()


def iter_image_files(paths: str | os.PathLike | Iterable[str | os.PathLike], *,
                     skip: Callable[[str, str], None] | None = None) -> Iterator[tuple[str, bytes]]:
    """(relative name, bytes) of every image under ``paths``: an image file (its name), a folder (searched
    recursively, names relative to it, sorted) or a tar archive, also compressed (member names, archive
    order).  A tar inside a folder is read too (names ``<tar path relative to the folder>/<member>``).

    A path that does not exist raises InputNotFoundError.  A named file that is neither an image nor a tar
    archive, or a file that cannot be read, raises InputFileError; with ``skip`` it is passed to
    ``skip(path, why)`` instead and the rest are still read."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]

    def unusable(path, why):
        if skip is None:
            raise InputFileError(f"{path}: {why}")
        skip(str(path), why)

    def read(f: Path) -> bytes | None:
        try:
            return f.read_bytes()
        except OSError as e:
            unusable(f, f"cannot be read ({e.strerror or e})")
            return None

    def tar_images(f: Path, prefix: str = "") -> Iterator[tuple[str, bytes]]:
        try:
            yield from _tar_images(f, prefix)
        except (OSError, tarfile.TarError, EOFError) as e:
            unusable(f, f"a damaged tar archive ({type(e).__name__}: {e})")

    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                rel = f.relative_to(p).as_posix()
                if is_image_name(f.name):
                    if (data := read(f)) is not None:
                        yield rel, data
                elif tarfile.is_tarfile(f):
                    yield from tar_images(f, rel + "/")
        elif p.is_file() and is_image_name(p.name):
            if (data := read(p)) is not None:
                yield p.name, data
        elif p.is_file() and tarfile.is_tarfile(p):
            yield from tar_images(p)
        elif not p.exists():
            raise InputNotFoundError(f"{p}: no such file or folder (give image files, folders of images or "
                                     f"tar archives)")
        else:
            unusable(p, f"not an image ({', '.join(IMAGE_EXTS)}), a folder or a tar archive")


def read_image_files(paths, limit: int | None = None, *, skip: Callable[[str, str], None] | None = None
                     ) -> list[tuple[str, bytes]]:
    """``iter_image_files`` as a list (the first ``limit``); raises InputNotFoundError when there is none."""
    out = []
    for item in iter_image_files(paths, skip=skip):
        out.append(item)
        if limit and len(out) >= limit:
            break
    if not out:
        named = ", ".join(map(str, [paths] if isinstance(paths, (str, os.PathLike)) else paths))
        raise InputNotFoundError(f"no readable images ({', '.join(IMAGE_EXTS)}) found in {named}")
    return out


# ----------------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------------
def decode_error(e: BaseException) -> str:
    """A decoder's exception in one line, without Pillow's in-memory file object (``<_io.BytesIO ...>``)."""
    return f"{type(e).__name__}: {re.sub(r' ?<_io.BytesIO object at 0x[0-9a-f]+>', '', str(e))}"


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header."""
    if simplejpeg is not None and data[:2] == JPEG_MAGIC:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        return w, h
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def dct_scale(w: int, h: int, min_w: int, min_h: int) -> int:
    """Largest JPEG DCT reduction d in (8, 4, 2, 1) whose decode, ceil(w/d) x ceil(h/d), still covers
    min_w x min_h (a reduced decode skips most of the inverse DCT and the colour conversion)."""
    for d in (8, 4, 2):
        if -(-w // d) >= min_w and -(-h // d) >= min_h:
            return d
    return 1


def decode(data: bytes, channels: int = 3, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Encoded image -> uint8 (H, W, channels).  With ``min_size`` (w, h) a JPEG is decoded at the largest
    DCT reduction that still covers it (both decoders give the same pixels)."""
    jpeg = data[:2] == JPEG_MAGIC
    if jpeg and simplejpeg is not None:
        try:
            h, w, space, _ = simplejpeg.decode_jpeg_header(data)
            # grey output only from a grey JPEG: Pillow's RGB -> L luma differs from the JPEG's Y channel
            if channels == 3 or space == "Gray":
                d = dct_scale(w, h, *min_size) if min_size else 1
                arr = simplejpeg.decode_jpeg(data, colorspace="GRAY" if channels == 1 else "RGB",
                                             min_width=-(-w // d), min_height=-(-h // d))
                return arr.reshape(arr.shape[0], arr.shape[1], channels)
        except ValueError:
            pass                   # e.g. CMYK or a damaged file: Pillow decides (and names the error)
    with Image.open(io.BytesIO(data)) as im:
        if jpeg and min_size:
            w, h = im.size
            d = dct_scale(w, h, *min_size)
            if d > 1:              # Pillow picks the largest d with size // request >= d: request floor(size/d)
                im.draft(im.mode, (w // d, h // d))
        arr = np.asarray(im.convert("L" if channels == 1 else "RGB"), np.uint8)
    return arr.reshape(arr.shape[0], arr.shape[1], channels)


def resize_shorter_center_crop(arr: np.ndarray, size: int, height: int | None = None) -> np.ndarray:
    """uint8 (H, W, C): resize (Pillow bilinear, antialiased) so that the image covers size x height
    (height defaults to size) with the aspect ratio kept, then keep the centre."""
    height = height or size
    h, w, c = arr.shape
    s = max(size / w, height / h)
    nw, nh = max(size, round(w * s)), max(height, round(h * s))
    if (nw, nh) != (w, h):
        im = Image.fromarray(arr[..., 0] if c == 1 else arr)
        arr = np.asarray(im.resize((nw, nh), Image.BILINEAR), np.uint8).reshape(nh, nw, c)
    top, left = (nh - height) // 2, (nw - size) // 2
    return arr[top:top + height, left:left + size]


def decode_fit(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """Encoded image -> uint8 ``shape`` (H, W, C): decoded (reduced-size where a JPEG allows), the
    shorter side resized to cover (H, W), the centre kept (K12 §2 with H = W = 256)."""
    h, w, c = shape
    arr = decode(data, c, (w, h))
    if arr.shape != (h, w, c):
        arr = resize_shorter_center_crop(arr, w, h)
    return np.ascontiguousarray(arr)


def _spec_shape(spec, input_size=None, channels=None) -> tuple[int, int, int]:
    """The stored shape of an Augment, an augment name (``records.AUGMENT_STORED``) or a Config."""
    if getattr(spec, "stored_shape", None) is not None:
        return tuple(int(v) for v in spec.stored_shape)
    kind = spec if isinstance(spec, str) else spec.augment
    if not isinstance(spec, str):
        input_size, channels = input_size or spec.input_size, channels or (1 if spec.model.startswith("lenet") else 3)
    if kind == "none" and not input_size:
        raise ValueError("augment 'none' needs input_size to know the stored shape")
    if kind != "none" and kind not in AUGMENT_STORED:
        raise ValueError(f"unknown augment {kind!r}")
    h, w, c = (input_size, input_size, 3) if kind == "none" else STORED_SHAPES[AUGMENT_STORED[kind]]
    return (int(h), int(w), channels or c)


def decode_images(spec, images: Iterable[bytes], *, input_size: int | None = None,
                  channels: int | None = None) -> np.ndarray:
    """Encoded images (e.g. arbitrary photos) -> uint8 (N, H, W, C) in the stored shape of ``spec``: an
    ``Augment`` (its ``stored_shape``), a Config (its augment; 1 channel for LeNet models) or an augment
    name (``records.AUGMENT_STORED``).  Each image is fitted by resizing its shorter side and keeping
    the centre, so a non-square photo is cropped, never squashed.  Raises ValueError naming the image
    (by position) that cannot be decoded."""
    shape = _spec_shape(spec, input_size, channels)
    out = []
    for i, data in enumerate(images):
        try:
            out.append(decode_fit(data, shape))
        except Exception as e:  # noqa: BLE001 - any decoder error: say which image
            raise ValueError(f"image {i} cannot be decoded: {decode_error(e)}") from e
    if not out:
        return np.zeros((0, *shape), np.uint8)
    return np.stack(out)


def encode_png(arr: np.ndarray) -> bytes:
    """uint8 (H, W) / (H, W, 1) / (H, W, 3) -> PNG bytes (Pillow; no TensorFlow)."""
    arr = np.asarray(arr, np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def encode_jpeg(arr: np.ndarray, quality: int) -> bytes:
    """uint8 (H, W, C) -> baseline JPEG bytes (Pillow, 4:2:0 chroma subsampling; always Pillow, so that a
    prepared store does not depend on which decoders are installed)."""
    arr = np.ascontiguousarray(arr, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()
