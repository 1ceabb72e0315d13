"""Caffe's files read without Caffe or a protobuf library (zoo/caffe.py maps bvlc_alexnet onto our net).

Files (field numbers from BVLC caffe's src/caffe/proto/caffe.proto):

.caffemodel    a binary NetParameter: `layer` (100, LayerParameter: name 1, type 2 as text, blobs 7) or, in
               files written before 2015 such as the published bvlc_alexnet.caffemodel, the legacy `layers`
               (2, V1LayerParameter: name 4, type 5 as an enum, blobs 6).  BlobProto: shape 7 (BlobShape dim 1)
               or the legacy num 1, channels 2, height 3, width 4; data 5 (float, packed or not), double_data 8.
deploy.prototxt the net in protobuf's text format, V2 (`layer { type: "Convolution" }`) or V1
               (`layers { type: CONVOLUTION }`); the input from an Input layer, `input_shape` or `input_dim`.
.binaryproto   one BlobProto: the training set's mean image, (1,) 3 x 256 x 256, BGR.  Caffe's python
               ilsvrc_2012_mean.npy (the same image as a (3, 256, 256) array) is read too.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from alexnet_jax import protowire as pw
from alexnet_jax.zoo import ZooError


class CaffeError(ZooError):
    """A Caffe file that is not a readable bvlc_alexnet; the message names the file and what is wrong."""


# V1LayerParameter.LayerType (caffe.proto): number -> (enum name, as a V1 prototxt writes it; V2 type name)
V1_LAYERS = {0: ("NONE", "None"), 1: ("ACCURACY", "Accuracy"), 2: ("BNLL", "BNLL"), 3: ("CONCAT", "Concat"),
             4: ("CONVOLUTION", "Convolution"), 5: ("DATA", "Data"), 6: ("DROPOUT", "Dropout"),
             7: ("EUCLIDEAN_LOSS", "EuclideanLoss"), 8: ("FLATTEN", "Flatten"), 9: ("HDF5_DATA", "HDF5Data"),
             10: ("HDF5_OUTPUT", "HDF5Output"), 11: ("IM2COL", "Im2col"), 12: ("IMAGE_DATA", "ImageData"),
             13: ("INFOGAIN_LOSS", "InfogainLoss"), 14: ("INNER_PRODUCT", "InnerProduct"), 15: ("LRN", "LRN"),
             16: ("MULTINOMIAL_LOGISTIC_LOSS", "MultinomialLogisticLoss"), 17: ("POOLING", "Pooling"),
             18: ("RELU", "ReLU"), 19: ("SIGMOID", "Sigmoid"), 20: ("SOFTMAX", "Softmax"),
             21: ("SOFTMAX_LOSS", "SoftmaxWithLoss"), 22: ("SPLIT", "Split"), 23: ("TANH", "TanH"),
             24: ("WINDOW_DATA", "WindowData"), 25: ("ELTWISE", "Eltwise"), 26: ("POWER", "Power"),
             27: ("SIGMOID_CROSS_ENTROPY_LOSS", "SigmoidCrossEntropyLoss"), 28: ("HINGE_LOSS", "HingeLoss"),
             29: ("MEMORY_DATA", "MemoryData"), 30: ("ARGMAX", "ArgMax"), 31: ("THRESHOLD", "Threshold"),
             32: ("DUMMY_DATA", "DummyData"), 33: ("SLICE", "Slice"), 34: ("MVN", "MVN"), 35: ("ABSVAL", "AbsVal"),
             36: ("SILENCE", "Silence"), 37: ("CONTRASTIVE_LOSS", "ContrastiveLoss"), 38: ("EXP", "Exp"),
             39: ("DECONVOLUTION", "Deconvolution")}
V1_TYPES = {n: t for n, (_, t) in V1_LAYERS.items()}
V1_NAMES = {name: t for name, t in V1_LAYERS.values()}


# ------------------------------------------------------------------------------------------------
# protobuf text format (.prototxt)
# ------------------------------------------------------------------------------------------------
_TOKEN = re.compile(r"""\s+|\#[^\n]*|(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')|(?P<punct>[{}<>:\[\],;])"""
                    r"""|(?P<word>[^\s{}<>:\[\],;"'\#]+)""")


def _tokens(text: str, path: str) -> list[tuple[str, str, int]]:
    out, i, line = [], 0, 1
    while i < len(text):
        m = _TOKEN.match(text, i)
        if not m:
            raise CaffeError(f"{path}: line {line}: cannot read {text[i:i + 20]!r} (not protobuf text format)")
        kind = m.lastgroup
        if kind == "str":
            s = m.group()[1:-1]
            out.append(("str", s.encode("latin-1", "backslashreplace").decode("unicode_escape"), line))
        elif kind:
            out.append((kind, m.group(), line))
        line += m.group().count("\n")
        i = m.end()
    return out


def parse_text(text: str, path: str = "<text>") -> dict[str, list]:
    """A protobuf text-format message -> {field name: [values]}: nested messages as dicts, scalars as their
    text (numbers, enum names and strings alike; the reader converts what it uses)."""
    toks = _tokens(text, path)
    pos = 0

    def fail(msg: str) -> CaffeError:
        line = toks[min(pos, len(toks) - 1)][2] if toks else 1
        return CaffeError(f"{path}: line {line}: {msg} (not protobuf text format, or cut short)")

    def scalar():
        nonlocal pos
        if pos >= len(toks) or toks[pos][0] == "punct":
            raise fail("a value is missing")
        value = toks[pos][1]
        pos += 1
        while pos < len(toks) and toks[pos][0] == "str" and toks[pos - 1][0] == "str":   # "a" "b" -> "ab"
            value += toks[pos][1]
            pos += 1
        return value

    def msg(close: str | None) -> dict[str, list]:
        nonlocal pos
        out: dict[str, list] = {}
        while True:
            if pos >= len(toks):
                if close is None:
                    return out
                raise fail(f"'{close}' expected before the end of the file")
            kind, tok, _ = toks[pos]
            if kind == "punct" and tok == close:
                pos += 1
                return out
            if kind != "word":
                raise fail(f"a field name expected, found {tok!r}")
            name = tok
            pos += 1
            colon = pos < len(toks) and toks[pos][1] == ":"
            if colon:
                pos += 1
            if pos < len(toks) and toks[pos][1] in ("{", "<"):
                end = "}" if toks[pos][1] == "{" else ">"
                pos += 1
                out.setdefault(name, []).append(msg(end))
            elif colon and pos < len(toks) and toks[pos][1] == "[":
                pos += 1
                while pos < len(toks) and toks[pos][1] != "]":
                    out.setdefault(name, []).append(scalar())
                    if pos < len(toks) and toks[pos][1] == ",":
                        pos += 1
                if pos >= len(toks):
                    raise fail("']' expected")
                pos += 1
            elif colon:
                out.setdefault(name, []).append(scalar())
            else:
                raise fail(f"':' or '{{' expected after {name!r}")
            if pos < len(toks) and toks[pos][1] in (",", ";"):
                pos += 1

    return msg(None)


# ------------------------------------------------------------------------------------------------
# the net definition, from a prototxt
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Layer:
    name: str
    type: str                      # V2 type name ("Convolution", ...)
    bottom: list[str]
    top: list[str]
    params: dict[str, list]        # the layer's *_param message (text form), {} when absent


_PARAMS = {"Convolution": "convolution_param", "Pooling": "pooling_param", "LRN": "lrn_param",
           "InnerProduct": "inner_product_param", "Input": "input_param"}


def _one(d: dict, key: str, default=None):
    v = d.get(key)
    return v[-1] if v else default


def read_prototxt(path: str) -> tuple[list[Layer], list[int] | None]:
    """(layers in order, input shape N C H W or None) of a deploy definition, V2 or V1."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            net = parse_text(f.read(), path)
    except OSError as e:
        raise CaffeError(f"{path}: {e.strerror or e}") from None
    v2, v1 = net.get("layer", []), net.get("layers", [])
    if v2 and v1:
        raise CaffeError(f"{path} mixes `layer` and legacy `layers` entries; Caffe reads one or the other")
    layers = []
    for entry in v2 or v1:
        raw = _one(entry, "type", "")
        typ = raw if v2 else V1_NAMES.get(raw, raw)
        params = _one(entry, _PARAMS.get(typ, ""), {}) or {}
        layers.append(Layer(name=_one(entry, "name", ""), type=typ, bottom=list(entry.get("bottom", [])),
                            top=list(entry.get("top", [])), params=params))
    shape = None
    if net.get("input_shape"):
        shape = [int(d) for d in net["input_shape"][0].get("dim", [])]
    elif net.get("input_dim"):
        shape = [int(d) for d in net["input_dim"][:4]]
    for layer in layers:
        if layer.type == "Input" and layer.params.get("shape"):
            shape = [int(d) for d in layer.params["shape"][0].get("dim", [])]
    if not layers:
        raise CaffeError(f"{path} defines no layers: is it a deploy.prototxt?")
    return layers, shape


# ------------------------------------------------------------------------------------------------
# binary files (.caffemodel, .binaryproto)
# ------------------------------------------------------------------------------------------------
def _blob(buf, where: str) -> np.ndarray:
    """A BlobProto as a float32 array of its declared shape (legacy num/channels/height/width kept 4-D)."""
    m = pw.message(buf)
    if 7 in m:
        shape = tuple(pw.signed64(d) for d in pw.varints(pw.message(m[7][-1]).get(1, [])))
    else:
        shape = tuple(m.get(k, [0])[-1] for k in (1, 2, 3, 4))
    data = pw.packed(m.get(5, []), "<f4")
    if not len(data) and 8 in m:
        data = pw.packed(m[8], "<f8")
    if any(d < 0 for d in shape) or len(data) != math.prod(shape):
        raise CaffeError(f"{where}: a blob of shape {shape} holds {len(data)} values (the file is cut short or "
                         f"damaged)")
    return np.asarray(data, np.float32).reshape(shape)


def read_caffemodel(path: str) -> tuple[dict[str, tuple[str, list[np.ndarray]]], str]:
    """({layer name: (type, [blobs])}, "V2" or "V1") of a .caffemodel: every layer that holds blobs."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CaffeError(f"{path}: {e.strerror or e}") from None
    try:
        net = pw.message(data)
        if 100 in net and 2 in net:
            raise CaffeError(f"{path} mixes `layer` and legacy `layers` entries")
        fmt, entries = ("V2", net.get(100, [])) if 100 in net else ("V1", net.get(2, []))
        name_f, type_f, blobs_f = (1, 2, 7) if fmt == "V2" else (4, 5, 6)
        out = {}
        for entry in entries:
            m = pw.message(entry)
            name = pw.string(m.get(name_f, [b""])[-1])
            t = m.get(type_f, [b"" if fmt == "V2" else 0])[-1]
            typ = pw.string(t) if fmt == "V2" else V1_TYPES.get(t, f"type {t}")
            blobs = [_blob(b, f"{path}: layer {name!r}") for b in m.get(blobs_f, [])]
            if blobs:
                out[name] = (typ, blobs)
    except pw.ProtobufError as e:
        raise CaffeError(f"{path} is not a readable .caffemodel, it is cut short or damaged ({e})") from None
    if not out:
        raise CaffeError(f"{path} holds no layer with weights: not a trained .caffemodel")
    return out, fmt


def read_mean(path: str) -> np.ndarray:
    """A Caffe mean image (BGR, C x H x W; a .binaryproto BlobProto or caffe's python .npy) as RGB H x W x C."""
    try:
        if path.endswith(".npy"):
            m = np.load(path, allow_pickle=False).astype(np.float32)
        else:
            with open(path, "rb") as f:
                m = _blob(f.read(), path)
    except pw.ProtobufError as e:
        raise CaffeError(f"{path} is not a readable .binaryproto mean, it is cut short or damaged ({e})") from None
    except (OSError, ValueError) as e:
        raise CaffeError(f"{path}: cannot read a mean image ({type(e).__name__}: {e})") from None
    if m.ndim == 4 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 3 or m.shape[0] != 3:
        raise CaffeError(f"{path}: a mean image of shape {m.shape}; expected 3 x H x W (BGR, as Caffe's "
                         f"ilsvrc_2012_mean.binaryproto)")
    return np.ascontiguousarray(m[::-1].transpose(1, 2, 0))
