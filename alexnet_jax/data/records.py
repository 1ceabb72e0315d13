"""What a stored record is: the stored image shape of every dataset, the TFDS features it is written with,
and a parser of the ``tf.train.Example`` wire format it is read back with.

``STORED_SHAPES``: the (H, W, C) of the uint8 images the loaders deliver: the images' own for digits/mnist
and cifar10, 256x256x3 for every imagenet2012 store (K12 §2).  The parser returns image bytes as memoryviews
into the record (TFDS' numpy parser costs about as much as the read of a 196 KB raw record).  No TFDS at
import (~0.3-0.5 s): the tools' photo decoding reads the shape table without it.
"""

from __future__ import annotations

import numpy as np

from alexnet_jax.protowire import read_varint, signed64

from .catalog import split_name

STORE_SIZE = 256              # K12 §2: ImageNet images stored at 256x256
STORED_SHAPES = {"digits": (28, 28, 1), "mnist": (28, 28, 1), "cifar10": (32, 32, 3),
                 "imagenet2012": (STORE_SIZE, STORE_SIZE, 3)}
# the dataset whose stored shape an augmentation expects (``none`` fits any: input_size x input_size)
AUGMENT_STORED = {"lenet": "mnist", "lenet_affine": "mnist", "cifar": "cifar10", "alexnet": "imagenet2012"}
ID_FEATURES = {"cifar10": "id", "imagenet2012": "file_name"}     # the text feature naming each example


def stored_shape_of(name: str) -> tuple[int, int, int]:
    """The stored shape of a dataset name (``imagenet2012/raw256`` too), without the prepared dataset."""
    return STORED_SHAPES[split_name(name)[0]]


def features_spec(dataset: str, class_names: list[str]):
    """The TFDS FeaturesDict the records of ``dataset`` (with its store) are written with."""
    import tensorflow_datasets as tfds  # lazy: see the module docstring

    base, store = split_name(dataset)
    label = tfds.features.ClassLabel(names=list(class_names))
    shape = STORED_SHAPES[base]
    if base in ("digits", "mnist"):
        return tfds.features.FeaturesDict({"image": tfds.features.Image(shape=shape), "label": label})
    if base == "cifar10":
        return tfds.features.FeaturesDict({"id": tfds.features.Text(), "image": tfds.features.Image(shape=shape),
                                           "label": label})
    if store == "raw256":
        image = tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES)
    elif store == "jpeg256":
        image = tfds.features.Image(shape=shape, encoding_format="jpeg")
    else:                                    # the original JPEGs, any size
        image = tfds.features.Image(encoding_format="jpeg")
    return tfds.features.FeaturesDict({"image": image, "label": label, "file_name": tfds.features.Text()})


# ----------------------------------------------------------------------------------------------------
# tf.train.Example wire format (proto3: Example{features=1}, Features{map<string, Feature> feature=1},
# Feature{bytes_list=1 | float_list=2 | int64_list=3}, *List{repeated value=1})
# ----------------------------------------------------------------------------------------------------
def parse_example(record: bytes) -> dict[str, list]:
    """{feature name: [values]} of a serialized tf.train.Example: memoryviews into ``record`` for bytes
    lists, Python ints for int64 lists (packed or not), floats for float lists."""
    mv = memoryview(record)
    out: dict[str, list] = {}
    n = len(mv)
    i = 0
    while i < n:
        tag, i = read_varint(mv, i)
        ln, i = read_varint(mv, i)
        if tag != 0x0A:                     # not Example.features: skip it
            i += ln
            continue
        end = i + ln
        while i < end:                      # Features: map entries
            tag, i = read_varint(mv, i)
            ln, i = read_varint(mv, i)
            e_end, key, val = i + ln, None, None
            if tag != 0x0A:
                i = e_end
                continue
            while i < e_end:
                tag, i = read_varint(mv, i)
                ln, i = read_varint(mv, i)
                if tag == 0x0A:
                    key = bytes(mv[i:i + ln]).decode()
                elif tag == 0x12:
                    val = (i, i + ln)
                i += ln
            if key is None or val is None:
                continue
            out[key] = _parse_feature(mv, *val)
    return out


def _parse_feature(mv, i: int, end: int) -> list:
    vals: list = []
    while i < end:                          # Feature: one of the lists
        tag, i = read_varint(mv, i)
        ln, i = read_varint(mv, i)
        kind, l_end = tag >> 3, i + ln
        while i < l_end:                    # the list: repeated field 1
            t2, i = read_varint(mv, i)
            wire = t2 & 7
            if wire == 0:                   # unpacked int64
                v, i = read_varint(mv, i)
                vals.append(signed64(v))
            elif wire == 5:                 # unpacked float
                vals.append(float(np.frombuffer(mv[i:i + 4], "<f4")[0]))
                i += 4
            else:
                l2, i = read_varint(mv, i)
                if kind == 1:
                    vals.append(mv[i:i + l2])
                elif kind == 3:
                    j = i
                    while j < i + l2:
                        v, j = read_varint(mv, j)
                        vals.append(signed64(v))
                elif kind == 2:
                    vals.extend(np.frombuffer(mv[i:i + l2], "<f4").tolist())
                i += l2
    return vals


def to_str(v) -> str:
    """A text feature's value (bytes, a memoryview, a numpy scalar) as str."""
    if isinstance(v, (bytes, bytearray, memoryview, np.bytes_)):
        return bytes(v).decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return to_str(v.item())
    return str(v)
