#!/usr/bin/env python3
"""LeNet-5 on MNIST (LeCun et al. 1998: 0.95% test error; 0.8% with affine distortions).

    python experiments/lenet5_mnist.py --optimizer sdlm --seeds 0,1,2            # the paper's optimiser
    python experiments/lenet5_mnist.py --optimizer sgd --seeds 0                 # SGD with momentum
    python experiments/lenet5_mnist.py --batch1-steps 600                        # time batch 1, extrapolate
    python experiments/lenet5_mnist.py ... --publish lenet5_mnist                # copy the summary

The published net (sparse C3, trainable subsampling, fixed-code RBF output units) trained for 20 passes
with the published schedule's shape, plain (`lenet5_mnist[_sdlm]`) and with random affine distortions
drawn anew each pass (`..._affine`; the paper made 540,000 once).  `--optimizer sdlm` is LC98's
stochastic diagonal Levenberg-Marquardt (alexnet_jax/sdlm.py): global rate / (mu + h_kk), mu 0.02, h_kk
the Gauss-Newton diagonal on 500 training patterns before each pass.  `--optimizer sgd` is the paper-
AlexNet SGD with momentum 0.9 at batch 32 (recipe `lenet5_mnist`).  Each (variant, seed) trains in
--out/<optimizer>_<variant>_seed<s> (and leaves its row in <that name>.json: a rerun with the same
config reuses it, so several processes with different --variants/--seeds can share one --out and a last
call with all of them writes the combined table); the table gives the MNIST test error's mean and standard deviation
over seeds and the wall time (results.md, results.json, curves.png in --out).

`--batch1-steps N` instead times N updates at batch 1 (the paper's setting) with the paper's first rate
and extrapolates the cost of 20 passes (60,000 updates each), without running them.  `--curvature WORKDIR`
reports the curvature estimate h_kk at initialisation and in a trained SDLM run's checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAPER = {"plain": 0.95, "affine": 0.80}  # LC98 §III.C-D test error, %
PAPER_MAX_RATE = 0.016                   # LC98 App. C: the largest effective rate of the first pass
RECIPES = {("sgd", "plain"): "lenet5_mnist", ("sgd", "affine"): "lenet5_mnist_affine",
           ("sdlm", "plain"): "lenet5_mnist_sdlm", ("sdlm", "affine"): "lenet5_mnist_sdlm_affine"}


def batch1(args, base) -> dict:
    """Steps/s of SDLM at batch 1 with the paper's first rate, and the loss before and after."""
    import itertools

    import jax

    from alexnet_jax.run import build_run

    with build_run(base.replace(batch_size=1, lr=0.0005), evaluation=False) as run:
        cfg, trainer, loader = run.config, run.trainer, run.train_loader
        state = trainer.install_curvature(trainer.init(), run.patterns, epoch=0)
        state, m = trainer.train_step(state, trainer.global_batch(next(loader)))
        jax.block_until_ready(m)
        losses, t = [], time.perf_counter()
        for b in itertools.islice(loader, args.batch1_steps):   # the timed region: the bare step, not the run loop
            state, m = trainer.train_step(state, trainer.global_batch(b))
            losses.append(m["loss"])
        losses = [float(v) for v in jax.device_get(losses)]
        dt = time.perf_counter() - t
    per_step = dt / args.batch1_steps
    window = max(1, len(losses) // 5)
    return {"batch": 1, "lr": cfg.lr, "steps": args.batch1_steps, "seconds": dt, "steps_per_second": 1 / per_step,
            "loss_first_window": statistics.mean(losses[:window]),
            "loss_last_window": statistics.mean(losses[-window:]),
            "extrapolated_20_passes_hours": per_step * 60_000 * 20 / 3600,
            "note": "step time of the trainer's jitted step fed by the loader (no evaluation, no checkpoints)"}


def curvature(workdir: str) -> dict:
    """The distribution of the curvature estimate h_kk at initialisation and in `workdir`'s checkpoint
    (the same 500 patterns), and the share of parameters whose step eta / (mu + h_kk) would exceed the
    largest effective rate LC98 reports for its first pass (0.016) at the paper's eta = 0.0005."""
    import jax
    import numpy as np

    from alexnet_jax.optim import LENET_PAPER_LRS
    from alexnet_jax.restore import restore_workdir
    from alexnet_jax.run import curvature_patterns
    from alexnet_jax.sdlm import get_curvature

    r = restore_workdir(workdir)
    trainer = r.trainer
    cfg = r.config

    def stats(state, epoch):
        patterns = curvature_patterns(trainer.config)
        try:
            h = get_curvature(trainer.install_curvature(state, patterns, epoch=epoch).opt_state)
        finally:
            patterns.close()
        h = np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(jax.device_get(h))])
        q = np.quantile(h, [0.1, 0.5, 0.9])
        return {"h_p10": float(q[0]), "h_median": float(q[1]), "h_p90": float(q[2]),
                "share_step_above_paper_max": float(np.mean(LENET_PAPER_LRS[0] / (cfg.sdlm_mu + h) > PAPER_MAX_RATE)),
                "share_h_below_mu": float(np.mean(h < cfg.sdlm_mu))}

    res = {"workdir": workdir, "step": r.step, "mu": cfg.sdlm_mu, "patterns": cfg.sdlm_samples,
           "at_init": stats(trainer.init(), 0), "trained": stats(r.state, 0)}
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", default="runs/lenet5_mnist", help="output directory (default runs/lenet5_mnist)")
    p.add_argument("--publish", metavar="NAME", help="also copy the summary to experiments/results/NAME")
    p.add_argument("--data-dir", default=None, help="TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    p.add_argument("--mnist-source", default=str(HERE.parents[1] / "shared" / "data" / "mnist"))
    p.add_argument("--optimizer", default="sdlm", choices=["sgd", "sdlm"])
    p.add_argument("--variants", default="plain,affine", help="comma list of plain, affine")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=float, default=20)
    p.add_argument("--batch1-steps", type=int, default=0, help="time this many batch-1 SDLM updates instead")
    p.add_argument("--curvature", metavar="WORKDIR",
                   help="report the SDLM curvature estimate at init and in WORKDIR's checkpoint instead")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    args = p.parse_args(argv)

    from alexnet_jax import data as data_lib
    from alexnet_jax.config import apply_overrides
    from alexnet_jax.configs import get_config
    from alexnet_jax.plotting import plot_runs
    from alexnet_jax.run import train_and_evaluate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    first = get_config(RECIPES[(args.optimizer, "plain")]).replace(data_dir=args.data_dir or "")
    try:
        data_lib.ensure_prepared(first)
    except data_lib.DatasetNotPreparedError:
        if not Path(args.mnist_source).exists():
            print(f"error: MNIST is not prepared and {args.mnist_source} does not exist; pass --mnist-source",
                  file=sys.stderr)
            return 2
        data_lib.prepare("mnist", args.mnist_source, args.data_dir)
    if args.batch1_steps:
        res = batch1(args, apply_overrides(get_config(RECIPES[("sdlm", "plain")]), args.set).replace(
            data_dir=args.data_dir or ""))
        (out / "batch1.json").write_text(json.dumps(res, indent=1))
        print(json.dumps(res))
        return 0

    if args.curvature:
        res = curvature(args.curvature)
        (out / "curvature.json").write_text(json.dumps(res, indent=1))
        print(json.dumps(res))
        return 0

    rows, workdirs = [], []
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if variant not in PAPER:
            raise SystemExit(f"unknown variant {variant!r}: use plain and/or affine")
        for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
            config = get_config(RECIPES[(args.optimizer, variant)]).replace(
                num_epochs=args.epochs, seed=seed, data_dir=args.data_dir or "")
            config = apply_overrides(config, args.set)
            wd = out / f"{args.optimizer}_{variant}_seed{seed}"
            done = out / f"{wd.name}.json"   # a finished run's row: a rerun reuses it (and its wall time)
            as_json = json.loads(json.dumps(config.to_dict()))
            row = json.loads(done.read_text()) if done.exists() else {}
            if row.get("config") == as_json:
                rows.append(row)
                workdirs.append(str(wd))
                print(json.dumps(rows[-1]), flush=True)
                continue
            t0 = time.time()
            res = train_and_evaluate(config, str(wd), progress=sys.stderr.isatty())
            rows.append({"optimizer": args.optimizer, "variant": variant, "seed": seed,
                         "test_error_percent": 100.0 * (1.0 - res["top1"]), "examples": res["examples"],
                         "epochs": config.num_epochs, "batch_size": config.batch_size, "lr": config.lr,
                         "wall_seconds": round(time.time() - t0, 1),
                         "resumed": bool(res.get("finished_before")),
                         "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
                         "config": as_json})
            if not rows[-1]["resumed"]:
                done.write_text(json.dumps(rows[-1]))
            workdirs.append(str(wd))
            print(json.dumps(rows[-1]), flush=True)

    summary = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        errs = [r["test_error_percent"] for r in rows if r["variant"] == variant]
        summary.append({"optimizer": args.optimizer, "variant": variant, "seeds": len(errs),
                        "mean": statistics.mean(errs), "std": statistics.stdev(errs) if len(errs) > 1 else 0.0,
                        "runs": errs, "paper": PAPER[variant],
                        "wall_seconds_per_run": statistics.mean(r["wall_seconds"] for r in rows
                                                                if r["variant"] == variant)})
    plot_runs(workdirs, str(out / f"curves_{args.optimizer}.png"), labels=[Path(w).name for w in workdirs])
    lines = ["| optimizer | variant | test error (mean ± std) | seeds | runs | paper (LC98) | wall per run (s) |",
             "|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['optimizer']} | {s['variant']} | {s['mean']:.2f}% ± {s['std']:.2f} | {s['seeds']} | "
                     + ", ".join(f"{e:.2f}" for e in s["runs"]) + f" | {s['paper']:.2f}% | "
                     f"{s['wall_seconds_per_run']:.0f} |")
    (out / f"results_{args.optimizer}.md").write_text("\n".join(lines) + "\n")
    (out / f"results_{args.optimizer}.json").write_text(json.dumps(
        {"summary": summary, "runs": rows, "machine_cpus": os.cpu_count(),
         "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None}, indent=2))
    print("\n".join(lines))
    if args.publish:
        sys.path.insert(0, str(HERE))
        from _results import publish
        files = [f"results_{args.optimizer}.md", f"results_{args.optimizer}.json", f"curves_{args.optimizer}.png",
                 "batch1.json"] + [f"{Path(w).name}/{f}" for w in workdirs for f in ("config.json", "metrics.jsonl")]
        print(f"published to {publish(out, args.publish, files)}")
    print(json.dumps({"summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
