"""torchvision's `alexnet` state_dict <-> our `alexnet_owt`.

torchvision.models.alexnet (the one-column net of Krizhevsky 2014) names its layers by position:

    features.0   conv1 64@11x11/4 pad 2      classifier.1  fc6 9216 -> 4096 (after Dropout)
    features.3   conv2 192@5x5 pad 2         classifier.4  fc7 4096 -> 4096 (after Dropout)
    features.6   conv3 384@3x3 pad 1         classifier.6  fc8 4096 -> num_classes
    features.8   conv4 256@3x3 pad 1         (ReLUs, max-pools 3/2 and AdaptiveAvgPool2d(6) hold no weights)
    features.10  conv5 256@3x3 pad 1

Layouts: a conv weight is (out, in, kh, kw), ours (kh, kw, in, out); a Linear weight is (out, in), ours
(in, out); fc6 reads the pooled maps flattened channel-major (c, h, w), ours flattened (h, w, c), so its
columns are permuted accordingly.  Every other number is the same, so import and export are exact
(export then import gives back the same bits).  A state_dict whose channel counts are torchvision's
times one factor (ours `width`) is read too; num_classes is fc8's row count.

Inputs: torchvision feeds Normalize((x/255 - mean) / std) of a Resize(256) + CenterCrop(224) photo;
the imported workdir records `preprocess=torchvision` (data/augment.py: the same mean in 0..255 units;
tools/_images.py: the same resize and crop arithmetic), and alexnet_owt divides by 255 * std itself
(models/init.py IMAGENET_STD), so no weight is rescaled.
"""

from __future__ import annotations

import collections
import os
from typing import Any

import jax
import numpy as np
from flax import nnx

from alexnet_jax.configs import get_config
from alexnet_jax.models.init import IMAGENET_STD
from alexnet_jax.restore import restore_workdir
from alexnet_jax.trainer import abstract_model_of
from alexnet_jax.workdir import check_writable
from alexnet_jax.zoo import ZooError, check_target, file_record, write_workdir
from alexnet_jax.zoo.pth import read_state_dict

# our layer -> torchvision's module
MODULES = {"conv1": "features.0", "conv2": "features.3", "conv3": "features.6", "conv4": "features.8",
           "conv5": "features.10", "fc6": "classifier.1", "fc7": "classifier.4", "fc8": "classifier.6"}
CONV1_KERNELS = 64          # torchvision's conv1: the width factor of a state_dict is its conv1 count / 64
INPUT_SIZE = 224
POOL_HW = 6                 # AdaptiveAvgPool2d((6, 6)): fc6 reads 6 x 6 x conv5 maps


def state_dict_keys() -> list[str]:
    """torchvision's alexnet state_dict keys, in its order."""
    return [f"{MODULES[layer]}.{p}" for layer in MODULES for p in ("weight", "bias")]


# ------------------------------------------------------------------------------------------------
# Layouts
# ------------------------------------------------------------------------------------------------
def to_params(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torchvision state_dict (numpy) -> {"conv1.kernel": HWIO, ..., "fc8.bias": ...} in our layouts."""
    out = {}
    for layer, mod in MODULES.items():
        w, b = sd[f"{mod}.weight"], sd[f"{mod}.bias"]
        if layer.startswith("conv"):
            kernel = np.transpose(w, (2, 3, 1, 0))                               # OIHW -> HWIO
        elif layer == "fc6":
            o, i = w.shape
            c = i // (POOL_HW * POOL_HW)
            kernel = w.reshape(o, c, POOL_HW, POOL_HW).transpose(2, 3, 1, 0).reshape(i, o)   # (c,h,w) -> (h,w,c)
        else:
            kernel = w.T
        out[f"{layer}.kernel"], out[f"{layer}.bias"] = np.ascontiguousarray(kernel), np.ascontiguousarray(b)
    return out


def from_params(params: dict[str, np.ndarray]) -> collections.OrderedDict:
    """The inverse of `to_params`: our parameters -> torchvision's state_dict (numpy), in its key order."""
    sd = collections.OrderedDict()
    for layer, mod in MODULES.items():
        k, b = params[f"{layer}.kernel"], params[f"{layer}.bias"]
        if layer.startswith("conv"):
            w = np.transpose(k, (3, 2, 0, 1))                                     # HWIO -> OIHW
        elif layer == "fc6":
            i, o = k.shape
            c = i // (POOL_HW * POOL_HW)
            w = k.reshape(POOL_HW, POOL_HW, c, o).transpose(3, 2, 0, 1).reshape(o, i)
        else:
            w = k.T
        sd[f"{mod}.weight"], sd[f"{mod}.bias"] = np.ascontiguousarray(w), np.ascontiguousarray(b)
    return sd


def torch_shapes(params_shapes: dict[str, tuple]) -> dict[str, tuple]:
    """torchvision's shape of every state_dict entry, given ours (to name what a file should hold)."""
    out = {}
    for layer, mod in MODULES.items():
        k = params_shapes[f"{layer}.kernel"]
        out[f"{mod}.weight"] = (k[3], k[2], k[0], k[1]) if layer.startswith("conv") else (k[1], k[0])
        out[f"{mod}.bias"] = tuple(params_shapes[f"{layer}.bias"])
    return out


# ------------------------------------------------------------------------------------------------
# Import
# ------------------------------------------------------------------------------------------------
def config_for(width: float, num_classes: int):
    """The workdir config of an imported torchvision net: alexnet_owt at 224 with torchvision's
    preprocessing, the 2012 recipe's optimiser settings for fine-tuning, centre-crop evaluation."""
    return get_config("alexnet_imagenet").replace(
        model="alexnet_owt", num_classes=int(num_classes), input_size=INPUT_SIZE, width=float(width), init="native",
        preprocess="torchvision", ten_crop=False)


def check_state_dict(sd: dict[str, np.ndarray], path: str):
    """(config, our parameters) of a torchvision alexnet state_dict, or a ZooError naming what is wrong."""
    want = state_dict_keys()
    missing, extra = [k for k in want if k not in sd], sorted(set(sd) - set(want))
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"has keys torchvision's alexnet does not: {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}"]
            if extra else [])
        raise ZooError(f"{path} is not a state_dict of torchvision's alexnet ({'; '.join(parts)}); it needs "
                       f"exactly {', '.join(want)}")
    for k in want:
        if not np.issubdtype(sd[k].dtype, np.floating) and sd[k].dtype.name != "bfloat16":
            raise ZooError(f"{path}: {k} holds {sd[k].dtype} values, not floating point weights")
    w1 = sd["features.0.weight"]
    if w1.ndim != 4 or sd["classifier.6.weight"].ndim != 2:
        raise ZooError(f"{path}: features.0.weight has shape {w1.shape} and classifier.6.weight "
                       f"{sd['classifier.6.weight'].shape}: not torchvision's alexnet layout")
    config = config_for(w1.shape[0] / CONV1_KERNELS, sd["classifier.6.weight"].shape[0])
    try:
        abstract = abstract_model_of(config)
    except Exception as e:  # noqa: BLE001 - a width or class count no model takes
        raise ZooError(f"{path}: features.0.weight has shape {w1.shape}: no alexnet_owt fits it ({e})") from None
    ours = {".".join(map(str, p)): tuple(v.shape) for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
    expect = torch_shapes(ours)
    bad = [f"{k} has shape {tuple(sd[k].shape)}, expected {expect[k]}" for k in want if tuple(sd[k].shape) != expect[k]]
    if bad:
        raise ZooError(f"{path}: shapes do not match torchvision's alexnet (width {config.width:g}, "
                       f"{config.num_classes} classes, from features.0 and classifier.6): {'; '.join(bad)}")
    return config, to_params({k: np.asarray(sd[k], np.float32) for k in want})


def import_torchvision(path: str, workdir: str) -> dict[str, Any]:
    """Import a torchvision alexnet .pth (state_dict) as an alexnet_owt workdir; returns a summary."""
    check_target(workdir)
    sd, fmt = read_state_dict(path)
    config, params = check_state_dict(sd, path)
    dtypes = sorted({str(v.dtype) for v in sd.values()})
    imported = dict(file_record(path, f"torch.save {fmt}"), source="torchvision", dtypes=dtypes)
    out = write_workdir(workdir, config, params, imported)
    return {"imported": "torchvision", "workdir": out, "model": config.model, "width": config.width,
            "num_classes": config.num_classes, "input_size": config.input_size, "preprocess": config.preprocess,
            "pth_format": fmt, "dtypes": dtypes, "parameters": int(sum(v.size for v in params.values()))}


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------
def export_params(restored) -> tuple[collections.OrderedDict, list[str]]:
    """(torchvision state_dict as numpy, notes) of a restored alexnet_owt workdir."""
    config, model = restored.config, restored.model
    if config.model != "alexnet_owt":
        raise ZooError(f"{restored.workdir} holds model={config.model}; torchvision's alexnet is model=alexnet_owt")
    if config.input_size < 100:
        raise ZooError(f"{restored.workdir} was built for {config.input_size} px inputs (a small conv1 stem, not "
                       f"torchvision's 11x11/4): only alexnet_owt with input_size >= 100 exports to torchvision")
    params = {".".join(map(str, p)): np.asarray(jax.device_get(v[...]), np.float32)
              for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    notes = []
    if model.input_std is None:      # the net reads centred raw pixels: torchvision feeds them / (255 std)
        scale = np.asarray(IMAGENET_STD, np.float32)
        params["conv1.kernel"] = params["conv1.kernel"] * scale.reshape(1, 1, 3, 1)
        notes.append(f"init={config.init}: the net reads unscaled pixels, so conv1's weights were multiplied by "
                     f"255 * torchvision's std per input channel")
    if config.preprocess != "torchvision":
        notes.append(f"the run centred its inputs with preprocess={config.preprocess} (its dataset's mean); "
                     f"torchvision's transform subtracts its own per-channel mean instead")
    if config.width != 1.0:
        notes.append(f"width {config.width:g}: torchvision.models.alexnet() has width 1; load this state_dict into "
                     f"the same structure with {int(params['conv1.kernel'].shape[-1])} conv1 kernels")
    return from_params(params), notes


def export_torchvision(workdir: str, path: str, step: int | None = None) -> dict[str, Any]:
    """Write an alexnet_owt workdir's parameters as a torchvision alexnet state_dict (torch.save)."""
    try:
        import torch  # lazy: optional (the "peer" extra)
    except ImportError:
        raise ZooError("export writes the file with torch.save: install torch (pip install 'alexnet-jax[peer]', "
                       "or a CPU build of torch)") from None

    r = restore_workdir(workdir, step=step)
    sd, notes = export_params(r)
    path = os.path.abspath(path)
    check_writable(os.path.dirname(path), "output folder")
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(collections.OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in sd.items()), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"exported": "torchvision", "workdir": r.workdir, "step": r.step, "out": path,
            "num_classes": int(sd["classifier.6.weight"].shape[0]), "keys": len(sd), "notes": notes}
