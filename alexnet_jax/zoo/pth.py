"""PyTorch `.pth` state_dicts read without torch.

Two formats, both as `torch.save` writes them:

zip     (torch >= 1.6, the default since): a zip archive `<name>/data.pkl` (the pickled object),
        `<name>/data/<key>` (each storage's raw bytes), `<name>/byteorder` ("little" or "big"; absent means
        little), `<name>/version`.
legacy  (`_use_new_zipfile_serialization=False`, and every file saved before torch 1.6): consecutive
        pickles in one stream: the magic number 0x1950a86a20f9469cfc6c, the protocol version 1001, a
        sys_info dict (byte order), the object, the list of storage keys in the order their data follow;
        then, per key, the storage's element count (int64) and its raw bytes.

In both, the pickle names each tensor as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
requires_grad, hooks[, metadata])` and each storage by a persistent id ("storage", torch.<Type>Storage, key,
location, element count[, view]).  The unpickler here resolves only those names, `collections.OrderedDict`
and `torch._utils._rebuild_parameter` (a state_dict needs no others): anything else in the file (a pickled
module, arbitrary code) is refused by name and never executed, as torch.load(weights_only=True) does.
Tensors come back as numpy arrays of their stored dtype (bfloat16 through ml_dtypes).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from alexnet_jax.zoo import ZooError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


def _bfloat16():
    return np.dtype(ml_dtypes.bfloat16)


# torch.<name> storage classes -> element dtype (little-endian; a big-endian file swaps them)
STORAGE_DTYPES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": None,
                  "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
                  "ByteStorage": "u1", "BoolStorage": "?", "UntypedStorage": "u1"}


class PthError(ZooError):
    """A file that is not a readable PyTorch state_dict; the message names the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    name: str

    def dtype(self, byteorder: str) -> np.dtype:
        code = STORAGE_DTYPES[self.name]
        if code is None:
            return _bfloat16()
        return np.dtype(("<" if byteorder == "little" else ">") + code)


@dataclasses.dataclass
class _Storage:
    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None     # filled once the bytes are read (after the pickle, in legacy files)


@dataclasses.dataclass
class _TensorRef:
    """A tensor named by the pickle, built into an array once its storage's bytes are known."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, path: str, storages: dict[str, _Storage], byteorder: str):
        super().__init__(f, encoding="utf-8")
        self.path, self.storages, self.byteorder = path, storages, byteorder

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise PthError(f"{self.path} refers to {module}.{name}, which a state_dict does not need (it is not "
                       f"loaded or run): save the weights alone with torch.save(model.state_dict(), FILE)")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or _text(pid[0]) != "storage" or len(pid) < 5:
            raise PthError(f"{self.path}: an unknown persistent id {pid!r:.80} (not a tensor storage)")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise PthError(f"{self.path}: storage of unknown type {storage_type!r:.80}")
        key = _text(key)
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type.dtype(self.byteorder), int(numel))
        root = self.storages[key]
        view = pid[5] if len(pid) > 5 else None
        if view is None:
            return root
        view_key, offset, view_size = _text(view[0]), int(view[1]), int(view[2])   # legacy storage views
        if view_key not in self.storages:
            self.storages[view_key] = _Storage(view_key, root.dtype, view_size)
            self.storages[view_key].data = ("view", root, offset)   # resolved with the root's bytes
        return self.storages[view_key]


def _text(v) -> str:
    return v.decode("ascii") if isinstance(v, bytes) else str(v)


def _resolve(storage: _Storage, path: str) -> np.ndarray:
    if isinstance(storage.data, tuple):                           # a legacy view into a root storage
        _, root, offset = storage.data
        storage.data = _resolve(root, path)[offset:offset + storage.numel]
    if storage.data is None:
        raise PthError(f"{path}: the data of storage {storage.key} are missing (the file is cut short?)")
    return storage.data


def _array(ref: _TensorRef, path: str) -> np.ndarray:
    data = _resolve(ref.storage, path)
    if any(s == 0 for s in ref.size):
        return np.zeros(ref.size, data.dtype)
    last = ref.offset + sum((s - 1) * st for s, st in zip(ref.size, ref.stride, strict=True))
    if ref.offset < 0 or min(ref.stride, default=0) < 0 or last >= len(data):
        raise PthError(f"{path}: a tensor of shape {ref.size} reaches past its storage's {len(data)} elements "
                       f"(the file is damaged)")
    item = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(data[ref.offset:], ref.size, tuple(st * item for st in ref.stride),
                                           writeable=False)
    return np.array(view, dtype=data.dtype.newbyteorder("=") if data.dtype.byteorder == ">" else data.dtype)


def _materialise(obj, path: str):
    if isinstance(obj, _TensorRef):
        return _array(obj, path)
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v, path)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, path) for v in obj)
    return obj


def _storage_bytes(raw: bytes, storage: _Storage, path: str) -> np.ndarray:
    need = storage.numel * storage.dtype.itemsize
    if len(raw) < need:
        raise PthError(f"{path}: storage {storage.key} holds {len(raw)} bytes of the {need} it needs (the file is "
                       f"cut short)")
    return np.frombuffer(raw, storage.dtype, storage.numel)


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl")]
        if not pkl:
            raise PthError(f"{path} is a zip archive without data.pkl: not a file written by torch.save")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise PthError(f"{path}: unknown byte order {byteorder!r}")
        storages: dict[str, _Storage] = {}
        obj = _Unpickler(io.BytesIO(zf.read(pkl[0])), path, storages, byteorder).load()
        for key, s in storages.items():
            if s.data is None:
                name = f"{prefix}data/{key}"
                if name not in names:
                    raise PthError(f"{path}: the data of storage {key} ({name}) are missing from the archive")
                s.data = _storage_bytes(zf.read(name), s, path)
    return _materialise(obj, path)


def _load_legacy(path: str) -> Any:
    class _PlainValues(pickle.Unpickler):   # the header pickles hold plain values only
        def find_class(self, module, name):
            raise PthError(f"{path}: unexpected {module}.{name} in a legacy torch.save header")

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        def load():
            return _PlainValues(f, encoding="utf-8").load()

        if load() != LEGACY_MAGIC:
            raise PthError(f"{path} is neither a zip archive nor a legacy torch.save stream (no magic number)")
        version = load()
        if version != LEGACY_PROTOCOL:
            raise PthError(f"{path}: legacy torch.save protocol {version}; this reader knows {LEGACY_PROTOCOL}")
        sys_info = load()
        byteorder = "little" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else "big"
        storages: dict[str, _Storage] = {}
        obj = _Unpickler(f, path, storages, byteorder).load()
        keys = [_text(k) for k in load()]
        for key in keys:
            s = storages.get(key)
            if s is None:
                raise PthError(f"{path}: data for storage {key}, which no tensor uses (the file is damaged)")
            head = f.read(8)
            if len(head) < 8:
                raise PthError(f"{path}: the data of storage {key} are missing (the file is cut short)")
            (numel,) = struct.unpack("<q" if byteorder == "little" else ">q", head)
            if numel != s.numel:
                raise PthError(f"{path}: storage {key} has {numel} elements where the pickle says {s.numel}")
            if numel * s.dtype.itemsize > size - f.tell():
                raise PthError(f"{path}: storage {key} needs {numel * s.dtype.itemsize} bytes, the file has "
                               f"{size - f.tell()} left (it is cut short)")
            s.data = _storage_bytes(f.read(numel * s.dtype.itemsize), s, path)
    return _materialise(obj, path)


def read_pth(path: str | os.PathLike) -> tuple[Any, str]:
    """(the unpickled object with tensors as numpy arrays, "zip" or "legacy") of a torch.save file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head == b"PK\x03\x04" or zipfile.is_zipfile(path):   # a zip's first local header, or its directory
            return _load_zip(path), "zip"
        return _load_legacy(path), "legacy"
    except PthError:
        raise
    except FileNotFoundError:
        raise PthError(f"{path}: no such file") from None
    except (OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError,
            TypeError, IndexError, KeyError, struct.error, UnicodeDecodeError) as e:
        why = " ".join(str(e).split())[:120]
        raise PthError(f"{path} cannot be read as a torch.save file, it is cut short or damaged "
                       f"({type(e).__name__}: {why})") from None


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str]:
    """({name: array}, format) of a state_dict file: the dict itself, or the `state_dict` / `model` entry of
    a training checkpoint; "module." segments of nn.DataParallel are dropped from the names."""
    obj, fmt = read_pth(path)
    if isinstance(obj, dict) and not any(isinstance(v, np.ndarray) for v in obj.values()):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, np.ndarray) for v in obj.values()):
        what = type(obj).__name__ if not isinstance(obj, dict) else f"dict with keys {list(obj)[:6]}"
        raise PthError(f"{os.fspath(path)} holds a {what}, not a state_dict of tensors: save it with "
                       f"torch.save(model.state_dict(), FILE)")
    out = {}
    for k, v in obj.items():
        name = ".".join(p for p in str(k).split(".") if p != "module")
        out[name] = v
    return out, fmt
