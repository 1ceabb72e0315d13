"""Helpers shared by the analysis tools: restoring, per-layer forward taps, images, class names, output.

Kept import-light at module level (no JAX): `alexnet-jax --help` imports every tool module.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import math
import os
import re
import sys
import tarfile
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("alexnet_jax.tools")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".webp", ".tif", ".tiff")
# Used only when the checkpoint's training set is not prepared on this machine, so that its mean image
# cannot be computed: the usual ImageNet per-channel RGB mean (0..255), a close stand-in for the mean
# image that `augment=alexnet` subtracts.
IMAGENET_RGB_MEAN = (123.68, 116.78, 103.94)
_SAMPLE_NAME = re.compile(r"^(n\d{8})_(.+)$")


# ------------------------------------------------------------------------------------------------
# Command-line plumbing
# ------------------------------------------------------------------------------------------------
def add_checkpoint_args(p: argparse.ArgumentParser, out_help: str) -> None:
    p.add_argument("--workdir", required=True, help="a workdir written by `alexnet-jax train`")
    p.add_argument("--step", type=int, help="checkpoint step (default: the newest usable one)")
    p.add_argument("--out", help=out_help)


def add_input_args(p: argparse.ArgumentParser, *, limit: int) -> None:
    g = p.add_argument_group("inputs (default: the checkpoint's dataset, its eval split)")
    g.add_argument("--images", nargs="+", metavar="PATH",
                   help="image files, folders of images, or tar archives")
    g.add_argument("--dataset", help="a prepared dataset (default: the checkpoint's)")
    g.add_argument("--split", help="dataset split (default: the config's eval_split)")
    g.add_argument("--limit", type=int, default=limit, help=f"at most this many images (default {limit})")
    g.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")


def default_out(workdir: str, name: str) -> str:
    """`<workdir>/analysis/<name>` (the folder is created)."""
    d = os.path.join(workdir, "analysis")
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, name)


def out_path(args, workdir: str, name: str) -> str:
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        return args.out
    return default_out(workdir, name)


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def dumps(obj) -> str:
    return json.dumps(obj, default=_jsonable)


def write_json(path: str, obj) -> str:
    with open(path, "w") as f:
        f.write(json.dumps(obj, default=_jsonable, indent=1))
    return path


def emit(summary: dict[str, Any]) -> None:
    """The final line on stdout: one JSON object."""
    sys.stdout.flush()
    print(dumps(summary), flush=True)


def tool_main(doc: str, add_arguments: Callable, run: Callable, argv: list[str] | None = None) -> None:
    """Stand-alone entry point of a tool (the scripts in tools/); exits with run's status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("absl", "orbax", "jax._src", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        code = run(args) or 0
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        if os.environ.get("ALEXNET_JAX_TRACEBACK") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)


# ------------------------------------------------------------------------------------------------
# Restoring
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Restored:
    config: Any                   # the workdir's config.json as trained (its mesh too)
    model: Any
    meta: dict[str, Any]
    step: int
    mesh: Any
    workdir: str


def restore(workdir: str, step: int | None = None) -> Restored:
    """The newest usable checkpoint (or `step`) of `workdir`, on a one-device mesh.

    `alexnet_jax.train.restore_model` (abstract restore target, fingerprint check, fallback to the
    previous checkpoint), so a checkpoint written with the columns on two devices opens on one CPU.
    """
    from alexnet_jax.train import load_config, restore_model

    workdir = os.path.abspath(workdir)
    _, model, meta, got, _, _, mesh = restore_model(workdir, step=step)
    return Restored(load_config(workdir), model, meta, int(got), mesh, workdir)


def columns_of(model) -> int:
    """Number of columns (2 for the 2012 AlexNet, 1 otherwise)."""
    from alexnet_jax.models.alexnet import AlexNet2012

    return int(model.conv1.kernel.shape[0]) if isinstance(model, AlexNet2012) else 1


# ------------------------------------------------------------------------------------------------
# Per-layer forward taps (evaluation mode), built from each model's own layers
# ------------------------------------------------------------------------------------------------
def layer_kinds(model) -> dict[str, str]:
    """{layer: activation applied to its recorded output}: relu | squash (LeNet's tanh) | linear."""
    from alexnet_jax.models.alexnet import AlexNet2012
    from alexnet_jax.models.lenet import LeNet5, LeNet5Modern

    if isinstance(model, AlexNet2012):
        names = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
        return {**{n: "relu" for n in names}, "fc8": "linear"}
    if isinstance(model, LeNet5):
        return {**{n: "squash" for n in ("C1", "S2", "C3", "S4", "C5", "F6")}, "OUT": "linear"}
    if isinstance(model, LeNet5Modern):
        return {"C1": "relu", "C3": "relu", "C5": "relu", "F6": "relu", "OUT": "linear"}
    if hasattr(model, "conv_names") and hasattr(model, "fc_names"):   # the one-column AlexNets
        kinds = {name: "relu" for name, _, _ in model.conv_names}
        fcs = [name for name, _ in model.fc_names]
        kinds.update({name: "relu" for name in fcs[:-1]})
        kinds[fcs[-1]] = "linear"
        return kinds
    raise ValueError(f"no layer taps for {type(model).__name__}")


def feature_layer(model) -> str:
    """The last hidden layer (fc7 for the AlexNets, F6 for LeNet): the input of the classifier."""
    kinds = layer_kinds(model)
    return [n for n, k in kinds.items() if k != "linear"][-1]


def forward_layers(model, x_BHWC):
    """Evaluation-mode forward pass that records every layer's output.

    Returns `(layers, features, logits)`: `layers[name]` is a list with one array per column (one
    element for one-column nets) holding the layer's output after its activation (ReLU / squash;
    logits for the last layer), `features` the input of the classifier (for AlexNet2012: fc7 of both
    columns after the exchange, i.e. what fc8 reads: 4096 floats per image at full width).  Built from
    the model's own submodules and layer functions, mirroring its `__call__`; tests/test_tools.py checks
    that the logits equal `model(x)`.
    """
    import jax
    import jax.numpy as jnp

    from alexnet_jax.models.alexnet import AlexNet2012, concat_columns
    from alexnet_jax.models.layers import adaptive_avg_pool, lrn, max_pool
    from alexnet_jax.models.lenet import LeNet5, LeNet5Modern

    relu = jax.nn.relu
    out: OrderedDict[str, list] = OrderedDict()   # a pytree that keeps the layer order through jit

    def rec(name, hs):
        out[name] = list(hs)
        return out[name]

    if isinstance(model, AlexNet2012):
        cols = range(model.conv1.kernel.shape[0])
        x = x_BHWC.astype(model.dtype)
        with jax.named_scope("conv1"):
            h = rec("conv1", [relu(model.conv1(c, x)) for c in cols])
        with jax.named_scope("conv2"):
            h = rec("conv2", [relu(model.conv2(c, max_pool(lrn(h[c])))) for c in cols])
        h = concat_columns([max_pool(lrn(a)) for a in h])                  # conv3 reads both columns
        with jax.named_scope("conv3"):
            h = rec("conv3", [relu(model.conv3(c, h)) for c in cols])
        with jax.named_scope("conv4"):
            h = rec("conv4", [relu(model.conv4(c, h[c])) for c in cols])
        with jax.named_scope("conv5"):
            h = rec("conv5", [relu(model.conv5(c, h[c])) for c in cols])
        h = concat_columns([max_pool(a) for a in h]).reshape(x.shape[0], -1)
        with jax.named_scope("fc6"):
            h = concat_columns(rec("fc6", [relu(model.fc6(c, h)) for c in cols]))
        with jax.named_scope("fc7"):
            feats = concat_columns(rec("fc7", [relu(model.fc7(c, h)) for c in cols]))
        with jax.named_scope("fc8"):
            logits = rec("fc8", [model.fc8(feats).astype(jnp.float32)])[0]
        return out, feats, logits

    if isinstance(model, LeNet5):
        with jax.named_scope("C1"):
            h = rec("C1", [model.c1(x_BHWC.astype(model.dtype))])[0]
        for name, layer in (("S2", model.s2), ("C3", model.c3), ("S4", model.s4), ("C5", model.c5)):
            with jax.named_scope(name):
                h = rec(name, [layer(h)])[0]
        with jax.named_scope("F6"):
            feats = rec("F6", [model.f6(h.reshape(h.shape[0], -1))])[0]
        with jax.named_scope("OUT"):
            logits = rec("OUT", [model.out(feats).astype(jnp.float32)])[0]
        return out, feats, logits

    if isinstance(model, LeNet5Modern):
        from flax import nnx

        pool = lambda a: nnx.max_pool(a, (2, 2), (2, 2), "VALID")
        h = x_BHWC.astype(model.dtype)
        with jax.named_scope("C1"):
            h = pool(rec("C1", [relu(model.c1(h))])[0])
        with jax.named_scope("C3"):
            h = pool(rec("C3", [relu(model.c3(h))])[0])
        with jax.named_scope("C5"):
            h = rec("C5", [relu(model.c5(h))])[0]
        with jax.named_scope("F6"):
            feats = rec("F6", [relu(model.f6(h.reshape(h.shape[0], -1)))])[0]
        with jax.named_scope("OUT"):
            logits = rec("OUT", [model.out(feats).astype(jnp.float32)])[0]
        return out, feats, logits

    if hasattr(model, "conv_names") and hasattr(model, "fc_names"):   # the one-column AlexNets
        h = x_BHWC.astype(model.dtype)
        if getattr(model, "input_std", None) is not None:   # centred raw RGB -> unit scale
            h = h / jnp.asarray(model.input_std, model.dtype)
        for name, lrn_after, pool_after in model.conv_names:
            with jax.named_scope(name):
                h = getattr(model, name)(h)
                if model.batchnorm:
                    h = getattr(model, f"bn_{name}")(h, use_running_average=True)
                h = rec(name, [relu(h)])[0]
                if lrn_after:
                    h = lrn(h)
                if pool_after:
                    h = max_pool(h)
        if model.adaptive_pool:
            h = adaptive_avg_pool(h, model.adaptive_pool)
        h = h.reshape(h.shape[0], -1)
        feats = h
        last = len(model.fc_names) - 1
        for i, (name, _) in enumerate(model.fc_names):
            with jax.named_scope(name):
                h = getattr(model, name)(h)
                if i < last:
                    h = relu(h)
                    feats = h
                h = rec(name, [h])[0]
        return out, feats, h.astype(jnp.float32)

    raise ValueError(f"no layer taps for {type(model).__name__}")


def compile_forward(model, what: str = "all") -> Callable[[np.ndarray], Any]:
    """A jitted `x -> forward_layers(model, x)` (what="all"), or only its "features" or "logits"."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(model)

    def fn(state, x):
        layers, feats, logits = forward_layers(nnx.merge(graphdef, state), x)
        return {"all": (layers, feats, logits), "features": feats, "logits": logits}[what]

    jitted = jax.jit(fn)
    return lambda x: jitted(state, x)


def run_batched(fn: Callable, x: np.ndarray, batch_size: int):
    """`fn` over `x` in batches of `batch_size` (the last one padded, so one compilation), as numpy."""
    import jax

    n = len(x)
    bs = max(1, min(batch_size, n))
    outs = []
    for i in range(0, n, bs):
        chunk = x[i:i + bs]
        pad = bs - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
        keep = len(chunk) - pad
        y = jax.device_get(fn(chunk))
        outs.append(jax.tree.map(lambda a, keep=keep: np.asarray(a)[:keep], y))
    return jax.tree.map(lambda *a: np.concatenate(a), *outs)


# ------------------------------------------------------------------------------------------------
# Images: files / folders / tars, and a dataset split
# ------------------------------------------------------------------------------------------------
def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS) and not os.path.basename(name).startswith(".")


def read_image_files(paths: Iterable[str], limit: int | None = None) -> list[tuple[str, bytes]]:
    """(name, encoded bytes) of every image among `paths` (files, folders searched recursively, tars)."""
    items: list[tuple[str, bytes]] = []
    for p in map(Path, paths):
        if p.is_dir():
            items += [(str(f.relative_to(p)), f.read_bytes()) for f in sorted(p.rglob("*"))
                      if f.is_file() and _is_image(f.name)]
        elif p.is_file() and _is_image(p.name):
            items.append((p.name, p.read_bytes()))
        elif p.is_file() and tarfile.is_tarfile(p):
            with tarfile.open(p, "r:*") as tar:
                members = sorted((m for m in tar.getmembers() if m.isfile() and _is_image(m.name)),
                                 key=lambda m: m.name)
                items += [(m.name, tar.extractfile(m).read()) for m in members]
        elif not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        else:
            raise ValueError(f"{p}: not an image, a folder or a tar archive")
    if not items:
        raise FileNotFoundError(f"no images found in {', '.join(map(str, paths))}")
    return items[:limit] if limit else items


def sample_label(name: str) -> tuple[str, str] | None:
    """(wnid, name) from a file named like the shared ImageNet samples, `<wnid>_<name>.JPEG`."""
    m = _SAMPLE_NAME.match(Path(name).stem)
    return (m.group(1), m.group(2).replace("_", " ")) if m else None


def preprocessor(config):
    """(Preprocessor, how the mean was obtained) matching the checkpoint's evaluation inputs.

    The training split's mean image needs the dataset; when it is not prepared here, the per-channel
    mean stands in (alexnet: IMAGENET_RGB_MEAN, cifar: the library's CIFAR-10 channel mean)."""
    from alexnet_jax import data as data_lib
    from alexnet_jax.data.pipeline import CIFAR_CHANNEL_MEAN, Preprocessor

    try:
        return data_lib.make_preprocessor(config), f"{config.dataset} training-split mean"
    except data_lib.DatasetNotPreparedError:
        channels = 1 if config.model.startswith("lenet") else 3
        mean, how = None, "none"
        if config.augment == "alexnet":
            mean, how = np.array(IMAGENET_RGB_MEAN, np.float32), "ImageNet per-channel mean"
        elif config.augment == "cifar":
            mean, how = np.array(CIFAR_CHANNEL_MEAN, np.float32), "CIFAR-10 per-channel mean"
        if mean is not None and channels == 1:
            mean = mean.mean(keepdims=True)
        log.warning("%s is not prepared: subtracting the %s instead of the training mean image",
                    config.dataset, how)
        how += " (dataset not prepared)"
        return Preprocessor(config.augment, int(config.input_size), channels, mean=mean), how


def decode_image(pre, data: bytes) -> np.ndarray:
    """Encoded image -> uint8 (H, W, C) as the pipeline decodes it, except that for `cifar` a
    non-square photo is resized on its shorter side and centre-cropped instead of squashed."""
    if pre.augment == "cifar":
        from PIL import Image

        from alexnet_jax.data.pipeline import resize_shorter_center_crop

        with Image.open(io.BytesIO(data)) as im:
            im = resize_shorter_center_crop(im.convert("L" if pre.channels == 1 else "RGB"), pre.base_size)
            arr = np.asarray(im, np.uint8)
        return arr[..., None] if arr.ndim == 2 else arr
    return pre.decode(data)


def display_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The centre `size` crop of a decoded image (what the model sees, before mean subtraction)."""
    h, w = img.shape[:2]
    if h <= size and w <= size:
        return img
    t, l = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[t:t + size, l:l + size]


@dataclasses.dataclass
class Inputs:
    x: np.ndarray                 # float32 (N, s, s, C): model inputs
    display: list[np.ndarray]     # uint8 (s, s, C) crops for figures
    names: list[str]
    labels: list[int | None]
    source: str
    mean: str


def load_inputs(config, *, images=None, dataset=None, split=None, limit=None) -> Inputs:
    """Model inputs from image files (`images`) or from a prepared dataset split (default: the
    checkpoint's dataset and eval split), preprocessed exactly as evaluation batches are."""
    pre, how = preprocessor(config)
    if images:
        items = read_image_files(images, limit)
        decoded = [decode_image(pre, data) for _, data in items]
        names, labels, source = [n for n, _ in items], [None] * len(items), ", ".join(map(str, images))
    else:
        from alexnet_jax import data as data_lib
        from alexnet_jax.data.pipeline import RecordSource

        cfg = config.replace(dataset=dataset) if dataset else config
        split = split or cfg.eval_split
        src = RecordSource(data_lib.ensure_prepared(cfg), split)
        n = min(len(src), limit) if limit else len(src)
        recs = src.__getitems__(list(range(n))) if n else []
        decoded = [pre.decode(r["image"]) for r in recs]
        names, labels = [r["name"] for r in recs], [r["label"] for r in recs]
        source = f"{cfg.dataset}:{split}"
    if not decoded:
        raise ValueError(f"no images in {source}")
    shapes = {d.shape for d in decoded}
    if len(shapes) == 1:
        x = pre.eval_batch(np.stack(decoded))
    else:
        x = np.stack([pre.eval(d) for d in decoded])
    return Inputs(x=x, display=[display_crop(d, pre.input_size) for d in decoded], names=names, labels=labels,
                  source=source, mean=how)


# ------------------------------------------------------------------------------------------------
# Class names
# ------------------------------------------------------------------------------------------------
def imagenet_synsets() -> list[str]:
    """The 1000 ILSVRC-2012 wnids in TFDS label order (sorted), from tensorflow_datasets' labels.txt."""
    from alexnet_jax.data.prepare import imagenet_synsets as synsets

    return synsets()


def imagenet_readable_names() -> dict[str, str]:
    """{wnid: human-readable name} for the 1000 ILSVRC-2012 classes, offline, or {} if unavailable.

    tensorflow_datasets ships no wnid->name table for imagenet2012, but its SI-Score module carries
    the standard 1000 ImageNet class names in label order (`IMAGENET_LABELS_LIST`, the same order as
    labels.txt: sorted wnids).  It is read as text (not imported); the first synonym is kept.
    """
    import ast

    try:
        import tensorflow_datasets as tfds

        src = Path(os.fspath(tfds.core.tfds_path("datasets/siscore/labels.py"))).read_text()
        m = re.search(r"IMAGENET_LABELS_LIST\s*=\s*(\[.*?\])", src, re.S)
        names = ast.literal_eval(m.group(1)) if m else []
        wnids = imagenet_synsets()
    except (OSError, ValueError, SyntaxError, ImportError) as e:   # pragma: no cover - depends on the install
        log.warning("no ImageNet class names available offline: %s", e)
        return {}
    if len(names) != len(wnids):   # pragma: no cover
        return {}
    return {w: n.split(",")[0].strip() for w, n in zip(wnids, names, strict=True)}


@dataclasses.dataclass
class ClassNames:
    ids: list[str]       # the dataset's class names (wnids for ImageNet), or class_<i>
    names: list[str]     # human-readable where known, else the id
    source: str


def class_names(config) -> ClassNames:
    """Class names of a checkpoint: its dataset's (dataset_info(config).class_names) when the dataset
    is prepared here; else, for a 1000-way model, the ILSVRC-2012 wnids; else class_<index>.
    ImageNet wnids are given readable names from `imagenet_readable_names()`."""
    from alexnet_jax import data as data_lib

    k = int(config.num_classes)
    try:
        ids, source = list(data_lib.dataset_info(config).class_names), f"dataset {config.dataset}"
    except data_lib.DatasetNotPreparedError:
        if k == 1000:
            ids, source = imagenet_synsets(), "ILSVRC-2012 synsets (tensorflow_datasets labels.txt)"
        else:
            ids, source = [f"class_{i}" for i in range(k)], "index (dataset not prepared)"
    if len(ids) != k:
        ids, source = [f"class_{i}" for i in range(k)], f"index ({len(ids)} dataset names for {k} outputs)"
    readable = imagenet_readable_names() if any(_SAMPLE_NAME.match(f"{i}_x") for i in ids) else {}
    if readable:
        source += " + ImageNet names (tensorflow_datasets siscore/labels.py)"
    return ClassNames(ids=ids, names=[readable.get(i, i) for i in ids], source=source)


def grid_shape(n: int, cols: int | None = None) -> tuple[int, int]:
    cols = cols or max(1, math.ceil(math.sqrt(n)))
    return math.ceil(n / cols), cols
