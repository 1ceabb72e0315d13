"""Per-layer activation statistics and dead (exactly zero) fractions on a batch.

    alexnet-jax activations --workdir runs/alexnet_cifar10 [--split validation --limit 64 --seed 0]
    alexnet-jax activations --workdir runs/alexnet_cifar10 --synthetic [--limit 16]
    alexnet-jax activations --workdir runs/alexnet_imagenet --images ../shared/data/imagenet_samples

Runs the model in evaluation mode and reads the layers' outputs from the model's own taps (every
layer's output after its activation (AlexNet2012: conv1..conv5, fc6, fc7 per column, and the fc8 logits;
one-column nets: their conv and fc layers; LeNet: C1..F6 and OUT).  Per layer (and per column):
mean, std, min, max, the *dead fraction* = fraction of values that are exactly 0 after the ReLU
(sparsity), and *dead units* = fraction of channels (conv) or features (fc) that are 0 for every
image and position of the batch.  LeNet-5's squashing layers (tanh) are almost never exactly 0, and
a linear output layer's zeros mean nothing; their kind is reported so the numbers can be read.
Inputs: `--limit` examples of a dataset split (default: the checkpoint's dataset and eval split), picked
from every class in equal shares with `--seed` (the same examples for the same seed), image files, or
`--synthetic` Gaussian images at the scale of the preprocessed inputs (std 60 for augment=alexnet
and cifar, whose inputs are centred raw RGB; 0.5 otherwise).  Table on stdout, full report in JSON (default
<workdir>/analysis/activations.json); the last stdout line is a JSON summary.
"""

from __future__ import annotations

import numpy as np

from alexnet_jax.tools import _cli, _images

SYNTHETIC_STD = {"alexnet": 60.0, "cifar": 60.0}   # centred raw RGB, 0..255 units


def add_arguments(p) -> None:
    _cli.add_checkpoint_args(p, "report JSON (default <workdir>/analysis/activations.json)")
    _cli.add_input_args(p, limit=64)
    p.add_argument("--synthetic", action="store_true", help="random Gaussian inputs instead of images (drawn "
                                                            "with --seed)")


def activation_stats(a: np.ndarray) -> dict[str, float]:
    """Statistics of one layer's output (batch first, units on the last axis)."""
    a = np.asarray(a)
    zeros = a == 0
    flat_units = zeros.reshape(-1, a.shape[-1])
    af = a.astype(np.float64)
    return {"mean": float(af.mean()), "std": float(af.std()), "min": float(af.min()), "max": float(af.max()),
            "dead_fraction": float(zeros.mean()), "dead_units": float(flat_units.all(axis=0).mean()),
            "units": int(a.shape[-1]), "zeros": int(zeros.sum()), "size": int(a.size)}


def synthetic_inputs(config, n: int, seed: int) -> np.ndarray:
    channels = 1 if config.model.startswith("lenet") else 3
    std = SYNTHETIC_STD.get(config.augment, 0.5)
    rng = np.random.default_rng(seed)
    return (rng.normal(0.0, std, (n, config.input_size, config.input_size, channels))).astype(np.float32)


def layer_report(layers: dict[str, list[np.ndarray]], kinds: dict[str, str], columns: int = 1) -> list[dict]:
    """One row per layer and column; a layer with one output in a two-column net (fc8) is "shared"."""
    rows = []
    for name, per_column in layers.items():
        for c, a in enumerate(per_column):
            col = c if len(per_column) > 1 else ("shared" if columns > 1 else 0)
            rows.append({"layer": name, "column": col, "kind": kinds.get(name, "?"),
                         "shape": list(np.shape(a)[1:]), **activation_stats(a)})
    return rows


def activation_table(rows: list[dict]) -> str:
    head = (f"{'layer':<7} {'col':>5} {'kind':<7} {'shape':<16} {'mean':>9} {'std':>9} {'max':>9} "
            f"{'dead frac':>9} {'dead units':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['layer']:<7} {str(r['column']):>5} {r['kind']:<7} {str(tuple(r['shape'])):<16} "
                     f"{r['mean']:>9.3g} {r['std']:>9.3g} {r['max']:>9.3g} {r['dead_fraction']:>9.3f} "
                     f"{r['dead_units']:>10.3f}")
    return "\n".join(lines)


def run(args) -> int:
    r = _cli.restore_from_args(args)
    if args.synthetic:
        x, mean = synthetic_inputs(r.config, args.limit, args.seed), None
        source, pick = f"synthetic, seed {args.seed}", f"{args.limit} Gaussian images"
    else:
        inputs = _images.load_inputs(r, images=args.images, dataset=args.dataset, split=args.split,
                                     limit=args.limit, data_dir=args.data_dir, seed=args.seed)
        x, source, mean, pick = inputs.x, inputs.source, inputs.mean, inputs.pick
    _, layers = _cli.run_model(r, x, args.batch_size)
    rows = layer_report(layers, r.model.layer_kinds, r.model.columns)
    print(f"{len(x)} inputs from {source}: {pick}")
    print(activation_table(rows))
    out = _cli.out_path(args, r.workdir, "activations.json")
    keys = ("layer", "column", "kind", "dead_fraction", "dead_units")
    summary = {"tool": "activations", "workdir": r.workdir, "step": r.step, "inputs": int(len(x)),
               "source": source, "pick": pick, "mean": mean, "out": out,
               "layers": [{k: row[k] for k in keys} for row in rows]}
    _cli.write_json(out, dict(summary, layers=rows))
    _cli.emit(summary)
    return 0

