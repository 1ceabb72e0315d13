"""Independent references for the model zoo's imports (tests/test_zoo.py; experiments/zoo_fidelity.py):

* `TorchvisionAlexNet`: torchvision.models.alexnet's exact structure and module names (so the same
  state_dict keys, features.0.weight ... classifier.6.bias), written here because torchvision from the
  package index does not import beside this machine's CPU-only torch ("operator torchvision::nms does not
  exist"); `width` multiplies its channel counts for small test nets (1: torchvision's net).
* `torchvision_input`: torchvision's ImageNet eval transform written out on PIL (Resize(256),
  CenterCrop(224), ToTensor, Normalize), as torchvision's functional code computes it.
* `caffe_forward`: bvlc_alexnet's test-time forward pass in float64 numpy with Caffe's semantics (grouped
  convolutions, LRN k + alpha/n * window sum across all maps, max-pooling with ceil rounding,
  InnerProduct over the channel-major flattening), from Caffe-layout blobs and a BGR input.
* `caffe_pb`: the protobuf messages of caffe.proto that a .caffemodel / .binaryproto holds, built with the
  protobuf runtime (not the project's reader), to write test files in the V2 and legacy V1 formats;
  `bvlc_deploy`: deploy.prototxt text in the published file's style (V2, or V1 with input_dim).
"""

from __future__ import annotations

import io
import math

import numpy as np

# ------------------------------------------------------------------------------------------------
# torchvision
# ------------------------------------------------------------------------------------------------
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
# module index in torchvision's Sequentials of each ReLU output / the logits, by our layer name
TORCHVISION_TAPS = {"conv1": ("features", 1), "conv2": ("features", 4), "conv3": ("features", 7),
                    "conv4": ("features", 9), "conv5": ("features", 11), "fc6": ("classifier", 2),
                    "fc7": ("classifier", 5), "fc8": ("classifier", 6)}


def _c(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


def torchvision_alexnet(width: float = 1.0, num_classes: int = 1000):
    """torchvision.models.alexnet(num_classes=...) as torchvision 0.2x defines it (width 1)."""
    import torch
    from torch import nn

    c = lambda n: _c(n, width)   # noqa: E731

    class AlexNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, c(64), kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.Conv2d(c(64), c(192), kernel_size=5, padding=2), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.Conv2d(c(192), c(384), kernel_size=3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(c(384), c(256), kernel_size=3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(c(256), c(256), kernel_size=3, padding=1), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2))
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(p=0.5), nn.Linear(c(256) * 6 * 6, c(4096)), nn.ReLU(inplace=True),
                nn.Dropout(p=0.5), nn.Linear(c(4096), c(4096)), nn.ReLU(inplace=True),
                nn.Linear(c(4096), num_classes))

        def forward(self, x):
            x = self.features(x)
            x = self.avgpool(x)
            x = torch.flatten(x, 1)
            return self.classifier(x)

    return AlexNet()


def torchvision_taps(model, x_NCHW):
    """(logits, {layer: output after its ReLU (the logits for fc8)}) of the reference, NCHW numpy."""
    import torch

    out = {}
    hooks = []
    for name, (seq, idx) in TORCHVISION_TAPS.items():
        mod = getattr(model, seq)[idx]
        hooks.append(mod.register_forward_hook(lambda m, i, o, name=name: out.__setitem__(name, o.detach().clone())))
    try:
        with torch.no_grad():
            logits = model(torch.as_tensor(x_NCHW))
    finally:
        for h in hooks:
            h.remove()
    return logits.numpy(), {k: v.numpy() for k, v in out.items()}


def separate_classes(model, x_NCHW) -> None:
    """Set fc8's bias to -W m, m the mean fc7 output over the inputs x, so the logits are W (h - m): the part
    of each image's features that is its own.  With random weights fc7 is mostly common to every image (its
    biases dominate), and every photo would get the same classes; this makes the top-5 check meaningful."""
    import torch

    _, taps = torchvision_taps(model, x_NCHW)
    mean = taps["fc7"].astype(np.float64).mean(axis=0)
    fc8 = model.classifier[6]
    with torch.no_grad():
        fc8.bias.copy_(torch.from_numpy(-(fc8.weight.numpy().astype(np.float64) @ mean)).float())


def torchvision_input(data: bytes):
    """torchvision's ImageNet eval transform of one encoded photo -> float32 (3, 224, 224), written out:
    Resize(256) (shorter side 256, longer int(256 * long / short), PIL bilinear), CenterCrop(224)
    (offsets int(round((size - 224) / 2.0))), ToTensor (/255), Normalize(mean, std)."""
    import torch
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = 256, int(256 * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    top, left = int(round((new_h - 224) / 2.0)), int(round((new_w - 224) / 2.0))
    img = img.crop((left, top, left + 224, top + 224))
    t = torch.from_numpy(np.array(img, np.uint8)).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    mean = torch.as_tensor(TORCHVISION_MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(TORCHVISION_STD, dtype=torch.float32).view(-1, 1, 1)
    return t.sub_(mean).div_(std).numpy()


# ------------------------------------------------------------------------------------------------
# Caffe's semantics, float64
# ------------------------------------------------------------------------------------------------
def _conv(x_NCHW, w_OIHW, b, stride=1, pad=0, group=1):
    n, c, h, wd = x_NCHW.shape
    o, ci, kh, kw = w_OIHW.shape
    assert c == ci * group and o % group == 0
    x = np.pad(x_NCHW, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    cols = np.stack([x[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
                     for i in range(kh) for j in range(kw)], axis=2)               # (N, C, kh*kw, oh, ow)
    og = o // group
    outs = [np.einsum("ncpyx,ocp->noyx", cols[:, g * ci:(g + 1) * ci],
                      w_OIHW[g * og:(g + 1) * og].reshape(og, ci, kh * kw)) for g in range(group)]
    return np.concatenate(outs, axis=1) + b.reshape(1, -1, 1, 1)


def caffe_lrn(x_NCHW, size=5, alpha=1e-4, beta=0.75, k=1.0):
    """Caffe's LRNLayer, ACROSS_CHANNELS: scale_c = k + alpha/size * sum_{j=c-(size-1)/2}^{c+(size-1)/2} x_j^2."""
    pre = (size - 1) // 2
    sq = np.pad(x_NCHW ** 2, ((0, 0), (pre, size - 1 - pre), (0, 0), (0, 0)))
    c = x_NCHW.shape[1]
    scale = k + alpha / size * sum(sq[:, j:j + c] for j in range(size))
    return x_NCHW * scale ** -beta


def paper_lrn_per_column(x_NCHW, columns=2, n=5, alpha=1e-4, beta=0.75, k=2.0):
    """K12 §3.3's LRN (alpha per element) within each column's half of the maps."""
    return np.concatenate([caffe_lrn(h, size=n, alpha=alpha * n, beta=beta, k=k)
                           for h in np.split(x_NCHW, columns, axis=1)], axis=1)


def caffe_pooled(size: int, kernel: int = 3, stride: int = 2, pad: int = 0) -> int:
    """pooling_layer.cpp: ceil((size + 2 pad - kernel) / stride) + 1 (less one if the last window starts
    in the padding)."""
    p = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad and (p - 1) * stride >= size + pad:
        p -= 1
    return p


def caffe_max_pool(x_NCHW, kernel=3, stride=2, pad=0):
    """Caffe's MAX pooling: windows clipped to the map, output size with ceil rounding."""
    n, c, h, w = x_NCHW.shape
    oh, ow = caffe_pooled(h, kernel, stride, pad), caffe_pooled(w, kernel, stride, pad)
    out = np.full((n, c, oh, ow), -np.inf)
    for i in range(oh):
        h0, h1 = max(i * stride - pad, 0), min(i * stride - pad + kernel, h)
        for j in range(ow):
            w0, w1 = max(j * stride - pad, 0), min(j * stride - pad + kernel, w)
            out[:, :, i, j] = x_NCHW[:, :, h0:h1, w0:w1].max(axis=(2, 3))
    return out


def caffe_forward(blobs: dict[str, tuple[np.ndarray, np.ndarray]], x_bgr_NCHW, lrn: str = "caffe"):
    """bvlc_alexnet's deploy forward pass (test time: Dropout is the identity) in float64.  `blobs`:
    {conv1..fc8: (weight, bias)} in Caffe's layouts; `x_bgr_NCHW`: the mean-subtracted BGR crop.
    Returns {layer: top after its ReLU (fc8: the logits), NCHW / NC}."""
    f64 = {k: (np.asarray(w, np.float64), np.asarray(b, np.float64)) for k, (w, b) in blobs.items()}
    norm = caffe_lrn if lrn == "caffe" else paper_lrn_per_column
    relu = lambda v: np.maximum(v, 0.0)   # noqa: E731
    tops = {}
    h = tops["conv1"] = relu(_conv(np.asarray(x_bgr_NCHW, np.float64), *f64["conv1"], stride=4))
    h = caffe_max_pool(norm(h))
    h = tops["conv2"] = relu(_conv(h, *f64["conv2"], pad=2, group=2))
    h = caffe_max_pool(norm(h))
    h = tops["conv3"] = relu(_conv(h, *f64["conv3"], pad=1))
    h = tops["conv4"] = relu(_conv(h, *f64["conv4"], pad=1, group=2))
    h = tops["conv5"] = relu(_conv(h, *f64["conv5"], pad=1, group=2))
    h = caffe_max_pool(h).reshape(h.shape[0], -1)                 # InnerProduct flattens C x H x W
    for name in ("fc6", "fc7"):
        w, b = f64[name]
        h = tops[name] = relu(h @ w.T + b)
    w, b = f64["fc8"]
    tops["fc8"] = h @ w.T + b
    return tops


# ------------------------------------------------------------------------------------------------
# Caffe's files, written with the protobuf runtime
# ------------------------------------------------------------------------------------------------
def caffe_pb():
    """{message name: class} for NetParameter, LayerParameter, V1LayerParameter, BlobProto, BlobShape and
    ConvolutionParameter, with caffe.proto's field numbers (the fields a trained net's file uses)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    fdp = descriptor_pb2.FileDescriptorProto(name="caffe_subset.proto", package="caffe", syntax="proto2")

    def message(name, fields):
        m = fdp.message_type.add(name=name)
        for fname, number, label, ftype, type_name, packed in fields:
            f = m.field.add(name=fname, number=number, label=label, type=ftype)
            if type_name:
                f.type_name = f".caffe.{type_name}"
            if packed:
                f.options.packed = True

    message("BlobShape", [("dim", 1, rep, F.TYPE_INT64, None, True)])
    message("BlobProto", [("shape", 7, opt, F.TYPE_MESSAGE, "BlobShape", False),
                          ("data", 5, rep, F.TYPE_FLOAT, None, True),
                          ("double_data", 8, rep, F.TYPE_DOUBLE, None, True),
                          ("num", 1, opt, F.TYPE_INT32, None, False), ("channels", 2, opt, F.TYPE_INT32, None, False),
                          ("height", 3, opt, F.TYPE_INT32, None, False), ("width", 4, opt, F.TYPE_INT32, None, False)])
    message("ConvolutionParameter", [("num_output", 1, opt, F.TYPE_UINT32, None, False),
                                     ("kernel_size", 4, rep, F.TYPE_UINT32, None, False),
                                     ("group", 5, opt, F.TYPE_UINT32, None, False)])
    message("LayerParameter", [("name", 1, opt, F.TYPE_STRING, None, False),
                               ("type", 2, opt, F.TYPE_STRING, None, False),
                               ("bottom", 3, rep, F.TYPE_STRING, None, False),
                               ("top", 4, rep, F.TYPE_STRING, None, False),
                               ("blobs", 7, rep, F.TYPE_MESSAGE, "BlobProto", False),
                               ("convolution_param", 106, opt, F.TYPE_MESSAGE, "ConvolutionParameter", False)])
    message("V1LayerParameter", [("bottom", 2, rep, F.TYPE_STRING, None, False),
                                 ("top", 3, rep, F.TYPE_STRING, None, False),
                                 ("name", 4, opt, F.TYPE_STRING, None, False),
                                 ("type", 5, opt, F.TYPE_INT32, None, False),   # the LayerType enum's numbers
                                 ("blobs", 6, rep, F.TYPE_MESSAGE, "BlobProto", False),
                                 ("blobs_lr", 7, rep, F.TYPE_FLOAT, None, False),
                                 ("convolution_param", 10, opt, F.TYPE_MESSAGE, "ConvolutionParameter", False)])
    message("NetParameter", [("name", 1, opt, F.TYPE_STRING, None, False),
                             ("layers", 2, rep, F.TYPE_MESSAGE, "V1LayerParameter", False),
                             ("layer", 100, rep, F.TYPE_MESSAGE, "LayerParameter", False)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    names = ("BlobShape", "BlobProto", "ConvolutionParameter", "LayerParameter", "V1LayerParameter", "NetParameter")
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{n}")) for n in names}


V1_TYPE = {"Data": 5, "Convolution": 4, "ReLU": 18, "LRN": 15, "Pooling": 17, "InnerProduct": 14, "Dropout": 6,
           "SoftmaxWithLoss": 21, "Accuracy": 1}
TRAIN_VAL = [("data", "Data"), ("conv1", "Convolution"), ("relu1", "ReLU"), ("norm1", "LRN"), ("pool1", "Pooling"),
             ("conv2", "Convolution"), ("relu2", "ReLU"), ("norm2", "LRN"), ("pool2", "Pooling"),
             ("conv3", "Convolution"), ("relu3", "ReLU"), ("conv4", "Convolution"), ("relu4", "ReLU"),
             ("conv5", "Convolution"), ("relu5", "ReLU"), ("pool5", "Pooling"), ("fc6", "InnerProduct"),
             ("relu6", "ReLU"), ("drop6", "Dropout"), ("fc7", "InnerProduct"), ("relu7", "ReLU"), ("drop7", "Dropout"),
             ("fc8", "InnerProduct"), ("loss", "SoftmaxWithLoss")]


def _fill_blob(blob, arr, legacy: bool):
    arr = np.asarray(arr, np.float32)
    if legacy:   # 4-D num/channels/height/width, ones in front (as Caffe wrote fc weights (1, 1, out, in))
        dims = (1,) * (4 - arr.ndim) + arr.shape
        blob.num, blob.channels, blob.height, blob.width = dims
    else:
        blob.shape.dim.extend(arr.shape)
    blob.data.extend(arr.ravel().tolist())


def caffemodel_bytes(blobs: dict[str, tuple[np.ndarray, np.ndarray]], fmt: str = "V2") -> bytes:
    """A trained bvlc_alexnet NetParameter (train_val layers, weights on the learnable ones), serialized by
    the protobuf runtime: V2 `layer` with BlobShape, or V1 `layers` with the enum types and 4-D blobs."""
    pb = caffe_pb()
    net = pb["NetParameter"](name="AlexNet")
    prev = "data"
    for name, typ in TRAIN_VAL:
        layer = net.layer.add() if fmt == "V2" else net.layers.add()
        layer.name = name
        if fmt == "V2":
            layer.type = typ
        else:
            layer.type = V1_TYPE[typ]
        if typ != "Data":
            layer.bottom.append(prev)
        top = prev if typ in ("ReLU", "Dropout") else name
        layer.top.append(top)
        prev = top
        if name in blobs:
            if typ == "Convolution":
                layer.convolution_param.num_output = blobs[name][0].shape[0]
                layer.convolution_param.kernel_size.append(blobs[name][0].shape[-1])
            if fmt == "V1":
                layer.blobs_lr.extend([1.0, 2.0])
            for arr in blobs[name]:
                _fill_blob(layer.blobs.add(), arr, legacy=fmt == "V1")
    return net.SerializeToString()


def binaryproto_bytes(mean_bgr_CHW: np.ndarray) -> bytes:
    """A mean image as Caffe's convert/compute_image_mean writes it: one BlobProto, 1 x 3 x H x W."""
    blob = caffe_pb()["BlobProto"]()
    _fill_blob(blob, np.asarray(mean_bgr_CHW)[None], legacy=True)
    return blob.SerializeToString()


def bvlc_deploy(width: float = 1.0, num_classes: int = 1000, v1: bool = False, caffenet: bool = False) -> str:
    """bvlc_alexnet's deploy.prototxt (models/bvlc_alexnet/deploy.prototxt's layout) at a width; `v1`: the
    legacy `layers` / `input_dim` form; `caffenet`: pool before norm, as bvlc_reference_caffenet."""
    c = lambda n: 2 * _c(n, width)   # noqa: E731

    def conv(name, bottom, n, k, pad=0, group=1, stride=1):
        extra = (f"    pad: {pad}\n" if pad else "") + (f"    stride: {stride}\n" if stride != 1 else "") + (
            f"    group: {group}\n" if group != 1 else "")
        return _layer(name, "Convolution", bottom, name, v1, lr=True,
                      param=f"  convolution_param {{\n    num_output: {n}\n    kernel_size: {k}\n{extra}  }}\n")

    def relu(name, blob):
        return _layer(name, "ReLU", blob, blob, v1)

    def norm(name, bottom):
        return _layer(name, "LRN", bottom, name, v1,
                      param="  lrn_param {\n    local_size: 5\n    alpha: 0.0001\n    beta: 0.75\n  }\n")

    def pool(name, bottom):
        method = "MAX"
        return _layer(name, "Pooling", bottom, name, v1,
                      param=f"  pooling_param {{\n    pool: {method}\n    kernel_size: 3\n    stride: 2\n  }}\n")

    def fc(name, bottom, n):
        return _layer(name, "InnerProduct", bottom, name, v1, lr=True,
                      param=f"  inner_product_param {{\n    num_output: {n}\n  }}\n")

    def drop(name, blob):
        return _layer(name, "Dropout", blob, blob, v1, param="  dropout_param {\n    dropout_ratio: 0.5\n  }\n")

    head = 'name: "AlexNet"\n'
    if v1:
        head += 'input: "data"\ninput_dim: 10\ninput_dim: 3\ninput_dim: 227\ninput_dim: 227\n'
    else:
        head += ('layer {\n  name: "data"\n  type: "Input"\n  top: "data"\n'
                 '  input_param { shape: { dim: 10 dim: 3 dim: 227 dim: 227 } }\n}\n')
    if caffenet:
        stage1 = pool("pool1", "conv1") + norm("norm1", "pool1")
        stage2 = pool("pool2", "conv2") + norm("norm2", "pool2")
        after1, after2 = "norm1", "norm2"
    else:
        stage1 = norm("norm1", "conv1") + pool("pool1", "norm1")
        stage2 = norm("norm2", "conv2") + pool("pool2", "norm2")
        after1, after2 = "pool1", "pool2"
    return (head + conv("conv1", "data", c(48), 11, stride=4) + relu("relu1", "conv1") + stage1
            + conv("conv2", after1, c(128), 5, pad=2, group=2) + relu("relu2", "conv2") + stage2
            + conv("conv3", after2, c(192), 3, pad=1) + relu("relu3", "conv3")
            + conv("conv4", "conv3", c(192), 3, pad=1, group=2) + relu("relu4", "conv4")
            + conv("conv5", "conv4", c(128), 3, pad=1, group=2) + relu("relu5", "conv5") + pool("pool5", "conv5")
            + fc("fc6", "pool5", c(2048)) + relu("relu6", "fc6") + drop("drop6", "fc6")
            + fc("fc7", "fc6", c(2048)) + relu("relu7", "fc7") + drop("drop7", "fc7")
            + fc("fc8", "fc7", num_classes)
            + _layer("prob", "Softmax", "fc8", "prob", v1))


def _layer(name, typ, bottom, top, v1, param="", lr=False) -> str:
    v1_names = {"Convolution": "CONVOLUTION", "ReLU": "RELU", "LRN": "LRN", "Pooling": "POOLING",
                "InnerProduct": "INNER_PRODUCT", "Dropout": "DROPOUT", "Softmax": "SOFTMAX"}
    if v1:
        lrs = "  blobs_lr: 1\n  blobs_lr: 2\n  weight_decay: 1\n  weight_decay: 0\n" if lr else ""
        return (f'layers {{\n  name: "{name}"\n  type: {v1_names[typ]}\n  bottom: "{bottom}"\n  top: "{top}"\n'
                f"{lrs}{param}}}\n")
    lrs = ("  param {\n    lr_mult: 1\n    decay_mult: 1\n  }\n  param {\n    lr_mult: 2\n    decay_mult: 0\n  }\n"
           if lr else "")
    return f'layer {{\n  name: "{name}"\n  type: "{typ}"\n  bottom: "{bottom}"\n  top: "{top}"\n{lrs}{param}}}\n'


def bvlc_blobs(width: float = 1.0, num_classes: int = 1000, seed: int = 0, fc8_scale: float = 1.0):
    """Random bvlc_alexnet blobs {layer: (weight, bias)} in Caffe's layouts, scaled so that a centred raw-pixel
    input keeps its spread through every layer (He-normal on the per-group fan-in) and Caffe's LRN acts
    (conv1's maps are large enough that alpha/5 * window sum is about 1); fc8 scaled by `fc8_scale`."""
    rng = np.random.default_rng(seed)
    c = lambda n: 2 * _c(n, width)   # noqa: E731
    shapes = {"conv1": (c(48), 3, 11, 11), "conv2": (c(128), c(48) // 2, 5, 5), "conv3": (c(192), c(128), 3, 3),
              "conv4": (c(192), c(192) // 2, 3, 3), "conv5": (c(128), c(192) // 2, 3, 3),
              "fc6": (c(2048), c(128) * 36), "fc7": (c(2048), c(2048)), "fc8": (num_classes, c(2048))}
    blobs = {}
    for name, shape in shapes.items():
        fan_in = int(np.prod(shape[1:]))
        std = math.sqrt(2.0 / fan_in) * (fc8_scale if name == "fc8" else 1.0)
        blobs[name] = ((rng.standard_normal(shape) * std).astype(np.float32),
                       (rng.standard_normal(shape[0]) * 0.1).astype(np.float32))
    return blobs
