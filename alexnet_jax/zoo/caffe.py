"""Caffe's bvlc_alexnet -> our two-column `alexnet` (the files read by zoo/caffe_proto.py).

Mapping (bvlc_alexnet: conv1 96, conv2 256 group 2, conv3 384, conv4 384 group 2, conv5 256 group 2,
fc6 4096, fc7 4096, fc8 1000; a uniform width factor is accepted, as our `width`):

* Columns.  Caffe's grouped convolutions split their inputs and outputs in halves: group g of conv2 reads
  conv1's maps [48g, 48g + 48) and writes conv2's [128g, 128g + 128).  Our column g is group g: it holds
  conv1's kernels 48g.., conv2's 128g.., conv4's 192g.., conv5's 128g.., and the output halves of conv3,
  fc6 and fc7 (which read both columns, in the same order as our exchange concatenates them).
* Layouts.  Conv weights (out, in, kh, kw) -> (kh, kw, in, out).  InnerProduct weights are (out, in); fc6's
  input is pool5 flattened channel-major (c, h, w) over both columns' 256 maps, ours (h, w, c): its columns
  are permuted to match.  Biases as they are.
* Colours.  Caffe's net reads BGR; ours reads RGB: conv1's input channels are reversed, an exact change.
* Mean.  The mean image is stored in the workdir (`input_mean.npy`, RGB, H x W x 3) and subtracted before
  the centre 227 crop (Caffe's data layer at test time: offset (256 - 227) / 2 = 14, as ours).
* LRN.  Caffe's LRN (k = 1, alpha / 5 per element, across all 96 / 256 maps of a layer, across the column
  boundary) is the model option lrn="caffe" (config `lrn`), so the import is exact.
* Pooling.  Caffe rounds pooled sizes up (ceil((55 - 3) / 2) + 1); at 227 every pooling's size equals our
  floor rounding (55 -> 27, 27 -> 13, 13 -> 6), checked here for the file's input size.
* Classes.  Caffe's ILSVRC-2012 label i is line i of its synset_words.txt, the wnids sorted, which is
  TFDS' imagenet2012 label order: fc8's rows are taken in order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from alexnet_jax.configs import get_config
from alexnet_jax.data.augment import CAFFE_MEAN_FILE
from alexnet_jax.data.records import STORE_SIZE
from alexnet_jax.models.alexnet import COLUMNS, _w
from alexnet_jax.zoo import check_target, file_record, write_workdir
from alexnet_jax.zoo.caffe_proto import CaffeError, Layer, read_caffemodel, read_mean, read_prototxt

INPUT_SIZE = 227
MEAN_FILE = "input_mean.npy"      # data/augment.py CAFFE_MEAN_FILE
# layers that do nothing to a deploy net's test-time forward pass, or only feed / read it
PASSIVE = {"Input", "Data", "ImageData", "MemoryData", "DummyData", "HDF5Data", "WindowData", "Dropout", "Softmax",
           "SoftmaxWithLoss", "Accuracy", "Silence", "Split"}


def bvlc_plan(width: float, num_classes: int) -> list[tuple[str, dict[str, Any]]]:
    """The layers of bvlc_alexnet's forward pass at a width (Dropout, Softmax and inputs left out):
    [(type, expected parameters)], each learnable layer tagged with our layer name."""
    c1, c2, c3, c4, c5, f = (2 * _w(n, width) for n in (48, 128, 192, 192, 128, 2048))

    def conv(ours, n, k, pad, group, stride=1):
        return ("Convolution", dict(ours=ours, num_output=n, kernel=k, stride=stride, pad=pad, group=group))

    relu, lrn, pool = ("ReLU", {}), ("LRN", {}), ("Pooling", {})
    return [conv("conv1", c1, 11, 0, 1, stride=4), relu, lrn, pool, conv("conv2", c2, 5, 2, 2), relu, lrn, pool,
            conv("conv3", c3, 3, 1, 1), relu, conv("conv4", c4, 3, 1, 2), relu, conv("conv5", c5, 3, 1, 2), relu,
            pool, ("InnerProduct", dict(ours="fc6", num_output=f)), relu,
            ("InnerProduct", dict(ours="fc7", num_output=f)), relu,
            ("InnerProduct", dict(ours="fc8", num_output=num_classes))]


def _ints(params: dict, key: str, default: int) -> int:
    v = params.get(key)
    return int(v[-1]) if v else default


def _check_layer(layer: Layer, typ: str, want: dict[str, Any], path: str) -> None:
    p = layer.params
    where = f"{path}: layer {layer.name!r} ({layer.type})"
    if typ == "Convolution":
        got = dict(num_output=_ints(p, "num_output", 0), group=_ints(p, "group", 1))
        for key, default in (("kernel", 0), ("stride", 1), ("pad", 0)):   # kernel_size / stride / pad, or _h and _w
            both = [int(v) for v in p.get("kernel_size" if key == "kernel" else key, [])] or [default]
            h, w = both[0], both[-1]
            got[key] = (_ints(p, f"{key}_h", h), _ints(p, f"{key}_w", w))
        bias = p.get("bias_term", ["true"])[-1] in ("true", "True", "1")
        want = dict(num_output=want["num_output"], group=want["group"],
                    **{k: (want[k], want[k]) for k in ("kernel", "stride", "pad")})
        if got != want or not bias or _ints(p, "dilation", 1) != 1:
            raise CaffeError(f"{where} has {got}{'' if bias else ', no bias'}; bvlc_alexnet has {want}, with a "
                             f"bias: this is not the bvlc_alexnet architecture")
    elif typ == "InnerProduct":
        n = _ints(p, "num_output", 0)
        if n != want["num_output"] or p.get("transpose", ["false"])[-1] in ("true", "1"):
            raise CaffeError(f"{where} has num_output {n}; bvlc_alexnet has {want['num_output']} here")
    elif typ == "LRN":
        got = dict(local_size=_ints(p, "local_size", 5), alpha=float(p.get("alpha", ["1"])[-1]),
                   beta=float(p.get("beta", ["0.75"])[-1]), k=float(p.get("k", ["1"])[-1]),
                   norm_region=p.get("norm_region", ["ACROSS_CHANNELS"])[-1])
        want = dict(local_size=5, alpha=1e-4, beta=0.75, k=1.0, norm_region="ACROSS_CHANNELS")
        if got["local_size"] != 5 or got["norm_region"] not in ("ACROSS_CHANNELS", "0") or not all(
                math.isclose(got[k], want[k], rel_tol=1e-6) for k in ("alpha", "beta", "k")):
            raise CaffeError(f"{where} has {got}; bvlc_alexnet's (and lrn=caffe's) LRN is {want}")
    elif typ == "Pooling":
        got = dict(pool=p.get("pool", ["MAX"])[-1], kernel=_ints(p, "kernel_size", _ints(p, "kernel_h", 0)),
                   stride=_ints(p, "stride", 1), pad=_ints(p, "pad", 0),
                   global_pooling=p.get("global_pooling", ["false"])[-1])
        if (got["pool"] not in ("MAX", "0") or got["kernel"] != 3 or got["stride"] != 2 or got["pad"] != 0
                or got["global_pooling"] not in ("false", "0")):
            raise CaffeError(f"{where} has {got}; bvlc_alexnet pools MAX over 3 x 3 windows with stride 2, no pad")


def caffe_pooled(size: int, kernel: int = 3, stride: int = 2) -> int:
    """Caffe's pooled size (pooling_layer.cpp, round_mode CEIL): ceil((size - kernel) / stride) + 1."""
    return int(math.ceil((size - kernel) / stride)) + 1


def check_deploy(layers: list[Layer], shape: list[int] | None, path: str) -> tuple[float, int, list[Layer]]:
    """(width, num_classes, the learnable layers in order) of a bvlc_alexnet deploy definition, or a
    CaffeError naming the first layer that differs."""
    active = [layer for layer in layers if layer.type not in PASSIVE]
    for prev, layer in zip(active, active[1:]):
        if layer.bottom[:1] != prev.top[:1]:
            raise CaffeError(f"{path}: layer {layer.name!r} reads {layer.bottom} where the previous layer "
                             f"{prev.name!r} writes {prev.top}: bvlc_alexnet is one chain of layers")
    if shape is not None and (len(shape) != 4 or shape[1] != 3 or shape[2:] != [INPUT_SIZE, INPUT_SIZE]):
        raise CaffeError(f"{path}: input shape {shape}; bvlc_alexnet reads N x 3 x {INPUT_SIZE} x {INPUT_SIZE}")
    convs = [layer for layer in active if layer.type == "Convolution"]
    ips = [layer for layer in active if layer.type == "InnerProduct"]
    if not convs or not ips:
        raise CaffeError(f"{path}: no convolution or no inner product layer: not bvlc_alexnet")
    width = _ints(convs[0].params, "num_output", 0) / 96
    plan = bvlc_plan(width, _ints(ips[-1].params, "num_output", 0))
    if len(active) != len(plan):
        kinds = [layer.type for layer in active]
        raise CaffeError(f"{path} has {len(active)} compute layers ({', '.join(kinds)}); bvlc_alexnet has "
                         f"{len(plan)} ({', '.join(t for t, _ in plan)}): not the bvlc_alexnet architecture")
    for layer, (typ, want) in zip(active, plan, strict=True):
        if layer.type != typ:
            raise CaffeError(f"{path}: layer {layer.name!r} is {layer.type} where bvlc_alexnet has {typ} "
                             f"(CaffeNet, bvlc_reference_caffenet, pools before it normalises): not the bvlc_alexnet "
                             f"architecture")
        _check_layer(layer, typ, want, path)
    size = 1 + (INPUT_SIZE - 11) // 4
    for _ in range(3):                     # Caffe's ceil rounding equals our floor at 227 (55, 27, 13 -> 27, 13, 6)
        if caffe_pooled(size) != (size - 3) // 2 + 1:
            raise CaffeError(f"{path}: Caffe pools {size} to {caffe_pooled(size)}, ours to {(size - 3) // 2 + 1}")
        size = caffe_pooled(size)
    learnable = [layer for layer in active if layer.type in ("Convolution", "InnerProduct")]
    return width, int(plan[-1][1]["num_output"]), learnable


def _shaped(blob: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A blob in the expected shape: legacy 4-D blobs of fully connected layers (1, 1, out, in) and biases
    (1, 1, 1, n) lose their leading ones."""
    b = blob
    while b.ndim > len(shape) and b.shape[0] == 1:
        b = b.reshape(b.shape[1:])
    if b.shape != shape:
        raise CaffeError(f"{where} has shape {blob.shape}; bvlc_alexnet needs {shape} here")
    return b


def to_params(blobs: dict[str, list[np.ndarray]], width: float, num_classes: int, path: str) -> dict[str, np.ndarray]:
    """bvlc_alexnet's blobs ({our layer: [weight, bias]}, Caffe layouts, BGR) -> our alexnet parameters."""
    c1, c2, c3, c4, c5, f = (_w(n, width) for n in (48, 128, 192, 192, 128, 2048))
    cin = {"conv1": 3, "conv2": c1, "conv3": 2 * c2, "conv4": c3, "conv5": c4}     # per group
    cout = {"conv1": c1, "conv2": c2, "conv3": c3, "conv4": c4, "conv5": c5, "fc6": f, "fc7": f}
    ksize = {"conv1": 11, "conv2": 5, "conv3": 3, "conv4": 3, "conv5": 3}
    fin = {"fc6": 36 * 2 * c5, "fc7": 2 * f, "fc8": 2 * f}
    out = {}
    for layer, bl in blobs.items():
        where = f"{path}: layer {layer}"
        if len(bl) != 2:
            raise CaffeError(f"{where} holds {len(bl)} blobs; bvlc_alexnet's layers hold a weight and a bias")
        n_out = num_classes if layer == "fc8" else COLUMNS * cout[layer]
        if layer.startswith("conv"):
            w = _shaped(bl[0], (n_out, cin[layer], ksize[layer], ksize[layer]), f"{where} weights")
            if layer == "conv1":
                w = w[:, ::-1]                                    # BGR -> RGB input channels
            kernel = w.reshape(COLUMNS, cout[layer], *w.shape[1:]).transpose(0, 3, 4, 2, 1)   # (C, kh, kw, in, out)
        else:
            w = _shaped(bl[0], (n_out, fin[layer]), f"{where} weights")
            if layer == "fc6":                                    # inputs (c, h, w) -> ours (h, w, c)
                c = fin[layer] // 36
                w = w.reshape(n_out, c, 6, 6).transpose(0, 2, 3, 1).reshape(n_out, fin[layer])
            kernel = w.T if layer == "fc8" else w.reshape(COLUMNS, cout[layer], fin[layer]).transpose(0, 2, 1)
        b = _shaped(bl[1], (n_out,), f"{where} bias")
        out[f"{layer}.kernel"] = np.ascontiguousarray(kernel, np.float32)
        out[f"{layer}.bias"] = np.ascontiguousarray(b if layer == "fc8" else b.reshape(COLUMNS, -1), np.float32)
    return out


def config_for(width: float, num_classes: int, lrn: str = "caffe"):
    """The workdir config of an imported bvlc net: the two-column alexnet at 227 with Caffe's LRN and mean
    image, the 2012 recipe's optimiser settings for fine-tuning, centre-crop evaluation."""
    return get_config("alexnet_imagenet").replace(
        model="alexnet", num_classes=int(num_classes), input_size=INPUT_SIZE, width=float(width), init="paper",
        lrn=lrn, preprocess="caffe", ten_crop=False)


def import_caffe(path: str, deploy: str, mean: str, workdir: str, lrn: str = "caffe") -> dict[str, Any]:
    """Import bvlc_alexnet (.caffemodel + deploy .prototxt + mean image) as an alexnet workdir."""
    assert CAFFE_MEAN_FILE == MEAN_FILE
    check_target(workdir)
    layers, shape = read_prototxt(deploy)
    width, num_classes, learnable = check_deploy(layers, shape, deploy)
    mean_rgb = read_mean(mean)
    if mean_rgb.shape[:2] != (STORE_SIZE, STORE_SIZE):
        raise CaffeError(f"{mean}: a {mean_rgb.shape[0]} x {mean_rgb.shape[1]} mean image; ImageNet images are "
                         f"stored at {STORE_SIZE} x {STORE_SIZE} here (Caffe's ilsvrc_2012_mean is 256 x 256)")
    stored, fmt = read_caffemodel(path)
    ours = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
    missing = [layer.name for layer in learnable if layer.name not in stored]
    if missing:
        raise CaffeError(f"{path} holds no weights for layer(s) {', '.join(missing)} of {deploy} (it has "
                         f"{', '.join(stored)}): the .caffemodel and the deploy definition do not belong together")
    for layer in learnable:
        if stored[layer.name][0] != layer.type:
            raise CaffeError(f"{path}: layer {layer.name!r} is {stored[layer.name][0]} there and {layer.type} in "
                             f"{deploy}")
    params = to_params({o: stored[layer.name][1] for o, layer in zip(ours, learnable, strict=True)}, width,
                       num_classes, path)
    config = config_for(width, num_classes, lrn)
    imported = dict(file_record(path, f"caffemodel {fmt}"), source="caffe", deploy=file_record(deploy, "prototxt"),
                    mean=file_record(mean, "npy" if mean.endswith(".npy") else "binaryproto"),
                    layers=dict(zip(ours, [layer.name for layer in learnable], strict=True)))
    out = write_workdir(workdir, config, params, imported, files={MEAN_FILE: mean_rgb})
    return {"imported": "caffe", "workdir": out, "model": config.model, "width": config.width,
            "num_classes": config.num_classes, "input_size": config.input_size, "lrn": config.lrn,
            "preprocess": config.preprocess, "caffemodel_format": fmt,
            "mean_rgb": [round(float(v), 3) for v in mean_rgb.mean(axis=(0, 1), dtype=np.float64)],
            "parameters": int(sum(v.size for v in params.values()))}
