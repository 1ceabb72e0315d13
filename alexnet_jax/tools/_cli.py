"""What every analysis tool shares: its arguments, where it writes, its last JSON line, and running a
restored checkpoint over inputs with the model's own taps.

`alexnet-jax --help` imports every tool module: what it would not import otherwise (orbax, tensorflow_datasets,
matplotlib) is imported where it is used (alexnet_jax/cli.py says what it costs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from alexnet_jax.workdir import check_writable


def add_checkpoint_args(p: argparse.ArgumentParser, out_help: str) -> None:
    p.add_argument("--workdir", required=True, help="a workdir written by `alexnet-jax train`")
    p.add_argument("--step", type=int, help="checkpoint step (default: the newest usable one)")
    p.add_argument("--out", help=out_help)


def add_input_args(p: argparse.ArgumentParser, *, limit: int) -> None:
    g = p.add_argument_group("inputs (default: the checkpoint's dataset, its eval split, a class-balanced pick)")
    g.add_argument("--images", nargs="+", metavar="PATH",
                   help="image files, folders of images, or tar archives")
    g.add_argument("--dataset", help="a prepared dataset (default: the checkpoint's)")
    g.add_argument("--split", help="dataset split (default: the config's eval_split)")
    g.add_argument("--data-dir", help="TFDS data dir (default $TFDS_DATA_DIR, else ~/tensorflow_datasets)")
    g.add_argument("--limit", type=int, default=limit, help=f"at most this many images (default {limit})")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the pick from a split: every class in equal shares, the same examples for the "
                        "same seed (default 0)")
    g.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")


def out_path(args, workdir: str, name: str) -> str:
    """`--out`, else `<workdir>/analysis/<name>`; its folder is created and must be writable."""
    if getattr(args, "out", None):
        check_writable(os.path.dirname(os.path.abspath(args.out)), "output folder")
        return args.out
    return os.path.join(check_writable(os.path.join(workdir, "analysis"), "output folder"), name)


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def write_json(path: str, obj) -> str:
    with open(path, "w") as f:
        f.write(json.dumps(obj, default=_jsonable, indent=1))
    return path


def emit(summary: dict[str, Any]) -> None:
    """The final line on stdout: one JSON object."""
    sys.stdout.flush()
    print(json.dumps(summary, default=_jsonable), flush=True)


def restore_from_args(args):
    """The checkpoint of `--workdir` (`--step`), restored onto every device present (restore_workdir)."""
    from alexnet_jax.restore import restore_workdir  # lazy (--help): orbax, tensorflow_datasets

    return restore_workdir(args.workdir, step=getattr(args, "step", None), data_dir=getattr(args, "data_dir", None))


def run_model(restored, x: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, dict[str, list[np.ndarray]]]:
    """(logits, taps) of a restored checkpoint over `x` in evaluation mode, in batches padded to the
    mesh's batch split (one compilation).  taps[layer] holds one array per column (Tap, layers.py): the
    layer's output after its activation, exactly as the model's forward pass computed it; the layers
    in network order."""
    trainer, state = restored.trainer, restored.state
    n = len(x)
    div = trainer.plan.batch_divisor
    bs = -(-max(1, min(batch_size, n)) // div) * div
    fn = jax.jit(lambda params, extra, xb: trainer.forward(params, extra, xb, taps=True))
    logits, taps = [], []
    for i in range(0, n, bs):
        chunk = x[i:i + bs]
        keep = len(chunk)
        if keep < bs:
            chunk = np.concatenate([chunk, np.zeros((bs - keep,) + chunk.shape[1:], chunk.dtype)])
        out = jax.device_get(fn(state.params, state.extra, trainer.plan.global_batch({"x": chunk})["x"]))
        logits.append(np.asarray(out[0])[:keep])
        taps.append({k: [np.asarray(v)[:keep] for v in vs] for k, vs in out[1].items()})
    joined = {k: [np.concatenate([t[k][c] for t in taps]) for c in range(len(taps[0][k]))] for k in taps[0]}
    return np.concatenate(logits), in_network_order(joined, restored.model)


def in_network_order(layers: dict, model) -> dict:
    """`layers` (by layer name) in the order the model computes them (its `layer_kinds`), not by name
    (what a dict becomes after passing through jit: LeNet's C1, C3, C5, F6, OUT, S2, S4)."""
    order = [k for k in model.layer_kinds if k in layers]
    return {k: layers[k] for k in order + [k for k in layers if k not in order]}


def features(restored, taps: dict[str, list[np.ndarray]]) -> np.ndarray:
    """What the classifier reads: the feature layer's columns side by side, flattened per image."""
    cols = taps[restored.model.feature_layer]
    return np.concatenate([c.reshape(len(c), -1) for c in cols], axis=-1)


def grid_shape(n: int, cols: int | None = None) -> tuple[int, int]:
    cols = cols or max(1, math.ceil(math.sqrt(n)))
    return math.ceil(n / cols), cols
