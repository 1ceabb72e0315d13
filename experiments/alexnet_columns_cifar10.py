#!/usr/bin/env python3
"""K12 §3.2 at CIFAR-10 scale: do two columns beat the one-GPU half-kernel net?

    python experiments/alexnet_columns_cifar10.py --out experiments/results/alexnet_columns_cifar10
    python experiments/alexnet_columns_cifar10.py --width 1.0 --epochs 30 --seeds 0,1,2   # on a GPU

The paper: the two-GPU net "reduces our top-1 and top-5 error rates by 1.7% and 1.2%" against "a
net with half as many kernels in each convolutional layer trained on one GPU" whose last conv layer
and FC layers are not halved (footnote 2; paper_facts.md §1.9).  Here the three nets
  alexnet       the 2012 two-column net (columns meet only at conv3, fc6, fc7, fc8)
  alexnet_half  the paper's one-GPU comparison net (48-128-192-192-256, fc 4096)
  alexnet_owt   torchvision's one-column net (64-192-384-256-256), for reference
train with the same budget, data, augmentation (random crops + flips, per-pixel mean subtraction)
and schedule (SGD momentum 0.9, weight decay 5e-4, lr divided by 10 for the last quarter of the
epochs) for several seeds, on CIFAR-10 prepared from ../shared/data/cifar10 (45,000 train /
5,000 held-out validation images; the shared copy has no test split).  Writes results.md,
results.json (mean +- std of validation error per net, and whether the paper's direction holds)
and curves.png to --out.  Small width and 32x32 input keep it feasible on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    here = Path(__file__).resolve()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", default=str(here.parent / "results" / "alexnet_columns_cifar10"))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cifar-source", default=str(here.parents[2] / "shared/data/cifar10/cifar10_train_jpeg.tar.gz"))
    p.add_argument("--models", default="alexnet,alexnet_half,alexnet_owt")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs", type=float, default=6)
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--mesh-model", type=int, default=1, help="2: run the two-column net split over 2 devices")
    p.add_argument("--init", default="he", choices=["paper", "he"],
                   help="paper: N(0,0.01), biases 1 (full width); he: He-normal (narrow nets; default here)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)

    from alexnet_jax.config import apply_overrides
    from alexnet_jax.configs import get_config
    from alexnet_jax.data import DatasetNotPreparedError, ensure_prepared, prepare
    from alexnet_jax.plotting import plot_runs
    from alexnet_jax.train import train_and_evaluate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = get_config("alexnet_cifar10").replace(
        width=args.width, input_size=args.input_size, batch_size=args.batch, num_epochs=args.epochs, lr=args.lr,
        lr_schedule="steps", lr_boundaries=(0.75 * args.epochs,), lr_factors=(0.1,), eval_every_epochs=1.0,
        init=args.init,
        data_dir=args.data_dir or "", checkpoint_every_steps=10**9)
    base = apply_overrides(base, args.set)
    try:
        ensure_prepared(base)
    except DatasetNotPreparedError:
        if not Path(args.cifar_source).exists():
            print(f"error: CIFAR-10 is not prepared and {args.cifar_source} is missing; pass --cifar-source",
                  file=sys.stderr)
            return 2
        print(f"preparing CIFAR-10 from {args.cifar_source}", flush=True)
        prepare("cifar10", args.cifar_source, args.data_dir)

    runs, workdirs, labels = [], [], []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
            config = base.replace(model=model, seed=seed,
                                  mesh_model=args.mesh_model if model == "alexnet" else 1)
            wd = out / f"{model}_seed{seed}"
            t0 = time.time()
            res = train_and_evaluate(config, str(wd), progress=sys.stderr.isatty())
            from alexnet_jax.summary import summarize
            params = summarize(model, input_size=args.input_size, width=args.width, num_classes=10)["params"]
            runs.append({"model": model, "seed": seed, "val_error": 1 - res["top1"],
                         "val_top5_error": 1 - res["top5"], "val_loss": res["loss"], "params": params,
                         "wall_seconds": round(time.time() - t0, 1)})
            workdirs.append(str(wd))
            labels.append(f"{model} s{seed}")
            print(json.dumps(runs[-1]), flush=True)

    summary = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        errs = [100 * r["val_error"] for r in runs if r["model"] == model]
        summary[model] = {"mean": statistics.mean(errs), "std": statistics.stdev(errs) if len(errs) > 1 else 0.0,
                          "n": len(errs), "params": next(r["params"] for r in runs if r["model"] == model),
                          "wall_seconds": sum(r["wall_seconds"] for r in runs if r["model"] == model)}
    verdict = None
    if "alexnet" in summary and "alexnet_half" in summary:
        d = summary["alexnet_half"]["mean"] - summary["alexnet"]["mean"]
        pooled = (summary["alexnet"]["std"] ** 2 + summary["alexnet_half"]["std"] ** 2) ** 0.5
        verdict = {"two_column_minus_half_error_points": -d, "paper_direction_holds": d > 0,
                   "difference_exceeds_pooled_std": abs(d) > pooled, "paper_top1_gain_points": 1.7}
    plot_runs(workdirs, str(out / "curves.png"), labels=labels)
    lines = [f"CIFAR-10 validation error (5,000 held-out images), input {args.input_size}, width {args.width}, "
             f"{args.epochs:g} epochs, batch {args.batch}, seeds {args.seeds}", "",
             "| net | params | val top-1 error (mean ± std) | runs | wall (s, all seeds) |", "|---|---|---|---|---|"]
    for m, s in summary.items():
        lines.append(f"| {m} | {s['params']:,} | {s['mean']:.2f}% ± {s['std']:.2f} | {s['n']} | "
                     f"{s['wall_seconds']:.0f} |")
    if verdict:
        lines += ["", f"two columns minus one-GPU half net: {verdict['two_column_minus_half_error_points']:+.2f} "
                  f"error points (paper, ImageNet: -1.7); paper's direction holds: {verdict['paper_direction_holds']}; "
                  f"difference larger than the seeds' spread: {verdict['difference_exceeds_pooled_std']}"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"runs": runs, "summary": summary, "verdict": verdict,
                                                  "args": vars(args)}, indent=2))
    print("\n".join(lines))
    print(json.dumps({"summary": summary, "verdict": verdict}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
