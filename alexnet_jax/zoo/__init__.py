"""The published AlexNets brought in as workdirs, and ours taken out.

    alexnet-jax import torchvision FILE.pth --workdir DIR                  torchvision's alexnet -> alexnet_owt
    alexnet-jax import caffe FILE.caffemodel --deploy deploy.prototxt --mean MEAN.binaryproto --workdir DIR
                                                                           Caffe's bvlc_alexnet -> alexnet
    alexnet-jax export torchvision --workdir DIR FILE.pth                  alexnet_owt -> torchvision's state_dict

An import writes an ordinary workdir: config.json (the model, and the net's own preprocessing in
`preprocess`, plus `lrn=caffe` for the Caffe net) and an orbax checkpoint at step 0 saved through
`checkpoint.Checkpointer` (parameters, a zero SGD velocity, the RNG), so `eval`, `predict`, `filters`,
`neighbours`, `activations`, `inspect` and `train` (fine-tuning) open it like a run of their own.  The
source file's name, size, sha256 and format are kept in the checkpoint's metadata and in
<workdir>/imported.json.  Everything is read and checked before anything is written; the workdir is
assembled in a sibling staging folder and renamed into place, so a bad file leaves no workdir behind.

pth.py          .pth files (zip and legacy torch.save formats) read without torch
torchvision.py  torchvision's state_dict <-> alexnet_owt parameters; import and export
caffe_proto.py  .caffemodel (V2 `layer` and V1 `layers`), .prototxt and .binaryproto read without Caffe
caffe.py        bvlc_alexnet -> alexnet (two columns, Caffe's LRN); import
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any

import jax
import numpy as np
from flax import nnx

from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import parallel
from alexnet_jax.errors import AlexnetJaxError
from alexnet_jax.trainer import Trainer, TrainState
from alexnet_jax.workdir import check_writable


class ZooError(AlexnetJaxError, ValueError):
    """A file that cannot be imported or a workdir that cannot be exported; the message says why."""


def file_record(path: str, fmt: str) -> dict[str, Any]:
    """What an import keeps about its source file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"file": os.path.abspath(path), "bytes": os.path.getsize(path), "sha256": h.hexdigest(), "format": fmt}


def check_target(workdir: str) -> str:
    """The absolute workdir path, refused when it already holds files (an import never mixes with a run)."""
    workdir = os.path.abspath(workdir)
    if os.path.isfile(workdir) or (os.path.isdir(workdir) and os.listdir(workdir)):
        raise ZooError(f"{workdir} already exists and is not empty: import into a new or empty --workdir")
    return workdir


def write_workdir(workdir: str, config, params: dict[str, np.ndarray], imported: dict[str, Any],
                  files: dict[str, np.ndarray] | None = None) -> str:
    """Write `config` and a step-0 checkpoint of `params` ({"conv1.kernel": array, ...}, every parameter of
    the config's model, float32, in the model's shapes) to `workdir`, plus `files` ({name: array} saved as
    .npy beside config.json).  Assembled in a staging folder and renamed into place."""
    config.validate()
    workdir = check_target(workdir)
    check_writable(os.path.dirname(workdir), "folder of the workdir")
    mesh = parallel.make_mesh(1, 1)
    trainer = Trainer.build(config, mesh)
    flat = nnx.to_flat_state(trainer.abstract_state.params)
    names = {".".join(map(str, path)) for path, _ in flat}
    if names != set(params):
        raise ZooError(f"internal: parameters {sorted(set(params) ^ names)} do not match model {config.model}")
    values = []
    for path, var in flat:
        a = np.asarray(params[".".join(map(str, path))], np.float32)
        if a.shape != tuple(var.shape):
            raise ZooError(f"internal: {'.'.join(map(str, path))} has shape {a.shape}, the model {tuple(var.shape)}")
        values.append((path, var.replace(a)))

    def assemble(params):
        return TrainState(step=jax.numpy.int32(0), params=params, extra=nnx.State({}),
                          opt_state=trainer.tx.init(params), rng=jax.random.key_data(jax.random.key(config.seed + 1)))

    state = jax.jit(assemble, out_shardings=trainer.shardings)(nnx.from_flat_state(values))
    staging = f"{workdir}.importing-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        os.makedirs(staging)
        checkpointer = ckpt_lib.Checkpointer(os.path.join(staging, "checkpoints"), keep=config.keep_checkpoints,
                                             async_save=False)
        try:
            checkpointer.save(0, state, {"config": config.to_dict(), "evals": [], "imported": imported,
                                         "provenance": ckpt_lib.provenance(mesh)})
        finally:
            checkpointer.close()
        with open(os.path.join(staging, "config.json"), "w") as f:
            f.write(config.to_json())
        with open(os.path.join(staging, "imported.json"), "w") as f:
            json.dump(imported, f, indent=1)
        for name, arr in (files or {}).items():
            np.save(os.path.join(staging, name), arr)
        if os.path.isdir(workdir):
            os.rmdir(workdir)        # empty (check_target)
        os.rename(staging, workdir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return workdir
