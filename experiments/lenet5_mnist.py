#!/usr/bin/env python3
"""LeNet-5 on MNIST (LeCun et al. 1998: 0.95% test error, 0.35% training error after 19 passes; 0.8% with
distortions).

    python experiments/lenet5_mnist.py --optimizer sdlm --seeds 0,1,2 --jobs 2   # LC98's training, 2 at a time
    python experiments/lenet5_mnist.py --optimizer sdlm --paper-rates ...        # ... at the published rates
    python experiments/lenet5_mnist.py --optimizer sgd --seeds 0                 # SGD with momentum
    python experiments/lenet5_mnist.py --batch1-steps 600                        # time batch 1, extrapolate
    python experiments/lenet5_mnist.py --diagnose                                # why the published rates fail
    python experiments/lenet5_mnist.py ... --publish NAME                        # copy the summary

The published net (sparse C3, trainable subsampling, fixed-code RBF output units) trained for 20 passes,
plain and distorted.  `--optimizer sdlm` runs `lenet5_mnist_sdlm[_affine]`: LC98's criterion (eq. 9),
stochastic diagonal Levenberg-Marquardt with the paper's curvature estimate on 500 patterns before each
pass, mu 0.02, batch 1, the published schedule's shape at a tenth of its rates, and LC98's fixed set of
540,000 distortions; `--paper-rates` runs `lenet5_mnist_sdlm_paper[_affine]`, the same at the published
rates.  `--optimizer sgd` is the paper-AlexNet SGD with momentum 0.9 at batch 32 (`lenet5_mnist[_affine]`).
Each (variant, seed) trains in --out/<optimizer>_<variant>_seed<s> (and leaves its row in <that name>.json:
a rerun with the same config reuses it, so several processes with different --variants/--seeds can share
one --out); `--jobs N` trains N of them at a time, each in its own process pinned to one core.  Every run
keeps a checkpoint per pass, from which the training error (the undistorted training set) is measured
after each pass.  The table gives, over seeds, the MNIST test error's mean and standard deviation, the
training error after 19 passes, and the first pass's effective rates lr / (mu + h) (LC98: 7e-5 to 0.016);
errors per pass in errors_<optimizer>.png (LC98 Fig. 5), results_<optimizer>.md/.json in --out.

`--batch1-steps N` instead times N updates at batch 1 with the paper's first rate and extrapolates the cost
of 20 passes.  `--curvature WORKDIR` reports the curvature estimate at initialisation and in a trained
SDLM run's checkpoint.  `--diagnose` measures, at the published first rate 0.0005, what the next
differences from the paper could be (diagnose.json): the first 1,000 updates with the shipped RBF codes
and with well-separated random codes; the same after 3,000 updates at a tenth of the rate and a new
estimate; and how often one update on one pattern raises that pattern's own loss.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import queue
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAPER = {"plain": 0.95, "affine": 0.80}  # LC98 §III.C-D test error, %
PAPER_TRAIN_ERROR_PASS19 = 0.35          # LC98 §III.C: training error after 19 passes (plain), %
PAPER_RATES = (7e-5, 0.016)              # LC98 App. C: the first pass's effective rates, smallest and largest
PAPER_MAX_RATE = PAPER_RATES[1]
PAPER_FIRST_LR = 0.0005                  # LC98 App. C: the global rate of the first two passes
RECIPES = {("sgd", "plain"): "lenet5_mnist", ("sgd", "affine"): "lenet5_mnist_affine",
           ("sdlm", "plain"): "lenet5_mnist_sdlm", ("sdlm", "affine"): "lenet5_mnist_sdlm_affine"}
PAPER_RATE_RECIPES = {("sdlm", "plain"): "lenet5_mnist_sdlm_paper",
                      ("sdlm", "affine"): "lenet5_mnist_sdlm_paper_affine"}
EVAL_BATCH = 1000                        # batch of the per-pass training-error evaluations


def recipe(args, variant: str) -> str:
    table = PAPER_RATE_RECIPES if args.paper_rates else RECIPES
    if (args.optimizer, variant) not in table:
        raise SystemExit("error: --paper-rates is for --optimizer sdlm")
    return table[(args.optimizer, variant)]


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
    """The distribution of the curvature estimate h_kk (the run's own estimator) at initialisation and in
    `workdir`'s checkpoint (the same 500 patterns), with the step sizes lr / (mu + h) at the paper's first
    rate 0.0005 and the share of them above the largest effective rate LC98 reports (0.016)."""
    import jax
    import numpy as np

    from alexnet_jax.optim import LENET_PAPER_LRS
    from alexnet_jax.restore import restore_workdir
    from alexnet_jax.run import curvature_patterns
    from alexnet_jax.sdlm import curvature_summary, get_curvature

    r = restore_workdir(workdir)
    trainer = r.trainer

    def stats(state):
        patterns = curvature_patterns(trainer.config)
        try:
            state = trainer.install_curvature(state, patterns, epoch=0)
        finally:
            patterns.close()
        h = np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(jax.device_get(
            get_curvature(state.opt_state)))])
        s = curvature_summary(state.opt_state, LENET_PAPER_LRS[0])
        return dict(s, share_step_above_paper_max=float(np.mean(s["lr"] / (s["mu"] + h) > PAPER_MAX_RATE)))

    return {"workdir": workdir, "step": r.step, "estimator": r.config.sdlm_curvature, "loss": r.config.loss,
            "patterns": r.config.sdlm_samples, "at_init": stats(trainer.init()), "trained": stats(r.state)}


# ------------------------------------------------------------------------------------------------
# --diagnose: the published first rate, measured piece by piece
# ------------------------------------------------------------------------------------------------
def well_separated_codes(seed: int = 0, tries: int = 2000):
    """10 random +-1 codes of 84 pixels, the draw with the largest smallest Hamming distance of `tries`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    best = (-1, None)
    for _ in range(tries):
        c = rng.choice([-1.0, 1.0], (10, 84)).astype(np.float32)
        d = (c[:, None] != c[None]).sum(-1)
        best = max(best, (int(d[~np.eye(10, dtype=bool)].min()), c), key=lambda t: t[0])
    return best


def diagnose(base) -> dict:
    from alexnet_jax.optim import LENET_PAPER_LRS
    from alexnet_jax.run import build_run

    cfg = base.replace(lr=LENET_PAPER_LRS[0], lr_schedule="constant", lr_boundaries=(), lr_factors=())
    with build_run(cfg, evaluation=False, prefetch=0) as run:
        return _diagnose(run)


def _diagnose(run, steps: int = 1000, warm: int = 3000) -> dict:
    """--diagnose on a built run of the published first rate (module docstring)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from alexnet_jax.models.lenet_layers import digit_codes
    from alexnet_jax.sdlm import get_curvature
    from alexnet_jax.trainer import Trainer, criterion

    cfg, trainer, loader, patterns = run.config, run.trainer, run.train_loader, run.patterns
    lr = cfg.lr

    def with_codes(state, codes):
        extra = jax.tree.map(lambda a: a, state.extra)
        extra["out"]["codes_KD"] = extra["out"]["codes_KD"].replace(jnp.asarray(codes))
        return state.replace(extra=extra)

    def run(state, n, first=0, window=100):
        losses = []
        for i in range(first, first + n):
            state, m = trainer.train_step(state, trainer.global_batch(loader.produce((0, i, i))[0]))
            losses.append(m["loss"])
        losses = np.asarray(jax.device_get(losses), np.float64)
        return state, [float(v) for v in losses.reshape(-1, window).mean(1)]

    def own_loss_rises(state, etas=(1e-4, 5e-4, 1e-3), n=200):
        """Share of patterns whose own loss is higher after one update on them, per rate."""
        h = nnx.to_pure_dict(get_curvature(state.opt_state))
        loss_of = criterion(cfg)

        def loss(p, x, y):
            return loss_of(nnx.merge(trainer.graphdef, p, state.extra)(x), y).mean()

        @jax.jit
        def after(params, x, y):
            l0, g = jax.value_and_grad(loss)(params, x, y)
            pure, gp = nnx.to_pure_dict(params), nnx.to_pure_dict(g)

            def one(eta):
                new = jax.tree.map(lambda w, gw, hw: w - eta / (cfg.sdlm_mu + hw) * gw, pure, gp, h)
                moved = jax.tree.map(lambda a: a, params)
                nnx.replace_by_pure_dict(moved, new)
                return loss(moved, x, y)

            return l0, jax.vmap(one)(jnp.asarray(etas, jnp.float32))

        rises = []
        for i in range(n):
            b = loader.produce((1, i, 0))[0]
            l0, ls = after(state.params, trainer.augment.eval(jnp.asarray(b["image"])), jnp.asarray(b["label"]))
            rises.append(np.asarray(ls) > float(l0))
        return {f"{e:g}": float(r) for e, r in zip(etas, np.mean(rises, 0), strict=True)}

    by_j = {}   # the first pass's rates at other constants j (the estimate's output term depends on j)
    for j in (8.0, cfg.lc98_j, 1000.0):
        other = Trainer.build(cfg.replace(lc98_j=j), steps_per_epoch=loader.steps_per_epoch,
                              augment=trainer.augment)
        by_j[f"{j:g}"] = other.curvature_summary(other.install_curvature(other.init(), patterns, epoch=0), 0)
    hamming, codes = well_separated_codes()
    shipped = digit_codes()
    shipped_min = int(min((shipped[i] != shipped[k]).sum() for i in range(10) for k in range(i)))
    fresh = trainer.install_curvature(trainer.init(), patterns, epoch=0)
    res = {"config": json.loads(json.dumps(cfg.to_dict())), "rate": lr, "window": 100,
           "first_pass_rates": trainer.curvature_summary(fresh, 0),
           "first_pass_rates_by_j": by_j, "own_loss_rises_at_init": own_loss_rises(fresh)}
    _, res["shipped_codes_loss"] = run(fresh, steps)
    res["shipped_codes_min_hamming"] = shipped_min
    other = trainer.install_curvature(with_codes(trainer.init(), codes), patterns, epoch=0)
    _, res["random_codes_loss"] = run(other, steps)
    res["random_codes_min_hamming"] = hamming
    warmed, res["warm_loss"] = run(trainer.with_lr(trainer.install_curvature(trainer.init(), patterns, epoch=0),
                                                    lr / 10), warm)
    warmed = trainer.with_lr(trainer.install_curvature(warmed, patterns, epoch=1), lr)
    res["after_warm_rates"] = trainer.curvature_summary(warmed, 0)
    res["own_loss_rises_after_warm"] = own_loss_rises(warmed)
    _, res["after_warm_loss"] = run(warmed, steps, first=warm)
    res["warm_updates"], res["warm_rate"] = warm, lr / 10
    return res


# ------------------------------------------------------------------------------------------------
# Training runs
# ------------------------------------------------------------------------------------------------
def train_errors(workdir: str, data_dir: str | None) -> dict[str, float]:
    """Training error (%, the undistorted training split) at every kept checkpoint, keyed by its pass."""
    from alexnet_jax import checkpoint as ckpt_lib
    from alexnet_jax import data as data_lib
    from alexnet_jax.restore import restore_workdir

    r = restore_workdir(workdir, batch_size=EVAL_BATCH, data_dir=data_dir)
    spe = int(r.meta["steps_per_epoch"])
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    out = {}
    try:
        for step in sorted(checkpointer.manager.all_steps()):
            state, _, _ = checkpointer.restore(r.trainer.abstract_state, step=step, config=r.config.to_dict())
            batches = data_lib.make_eval_loader(r.trainer.config, r.config.train_split, batch_size=EVAL_BATCH)
            out[f"{step / spe:g}"] = 100.0 * (1.0 - r.trainer.evaluate(state, batches)["top1"])
    finally:
        checkpointer.close()
    return out


def run_row(args, variant: str, seed: int, out: Path) -> dict:
    """Train one (variant, seed) (or reuse its finished row) and return its row."""
    from alexnet_jax.config import apply_overrides
    from alexnet_jax.configs import get_config
    from alexnet_jax.plotting import read_metrics
    from alexnet_jax.run import train_and_evaluate

    config = get_config(recipe(args, variant)).replace(num_epochs=args.epochs, seed=seed, data_dir=args.data_dir or "")
    config = apply_overrides(config, args.set)
    # a checkpoint per pass, all kept: the training error is measured after every pass
    config = config.replace(keep_checkpoints=max(config.keep_checkpoints, math.ceil(config.num_epochs) + 1))
    wd = out / f"{args.optimizer}_{variant}_seed{seed}"
    done = out / f"{wd.name}.json"   # a finished run's row: a rerun reuses it (and its wall time)
    as_json = json.loads(json.dumps(config.to_dict()))
    row = json.loads(done.read_text()) if done.exists() else {}
    if row.get("config") == as_json:
        return row
    t0 = time.time()
    res = train_and_evaluate(config, str(wd), progress=sys.stderr.isatty())
    wall = round(time.time() - t0, 1)
    recs = read_metrics(str(wd))
    curv = [r for r in recs if r["kind"] == "curvature"]
    train_err = train_errors(str(wd), args.data_dir)
    row = {"optimizer": args.optimizer, "variant": variant, "seed": seed, "recipe": recipe(args, variant),
           "test_error_percent": 100.0 * (1.0 - res["top1"]), "examples": res["examples"],
           "test_error_by_pass": {f"{r['epoch']:g}": 100.0 * (1.0 - r["top1"]) for r in recs if r["kind"] == "eval"},
           "train_error_by_pass": train_err, "train_error_pass19": train_err.get("19"),
           "first_pass_rates": curv[0] if curv else None,
           "epochs": config.num_epochs, "batch_size": config.batch_size, "lr": config.lr,
           "wall_seconds": wall, "resumed": bool(res.get("finished_before")),
           "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None, "config": as_json}
    if not row["resumed"]:
        done.write_text(json.dumps(row))
    return row


def run_parallel(args, todo: list[tuple[str, int]], out: Path) -> None:
    """Each (variant, seed) in its own process, `--jobs` at a time, each pinned to one core with XLA's
    Eigen thread pool off (one process per core)."""
    cores = queue.Queue()
    for c in sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(args.jobs):
        cores.put(c)
    flags = os.environ.get("XLA_FLAGS", "")
    env = dict(os.environ, XLA_FLAGS=(flags + " --xla_cpu_multi_thread_eigen=false").strip())
    common = ["--out", str(out), "--optimizer", args.optimizer, "--epochs", str(args.epochs), "--jobs", "1",
              "--mnist-source", args.mnist_source] + (["--paper-rates"] if args.paper_rates else [])
    common += ["--data-dir", args.data_dir] if args.data_dir else []
    common += [x for kv in args.set for x in ("--set", kv)]

    def one(task):
        variant, seed = task
        core = cores.get()
        try:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--variants", variant, "--seeds", str(seed),
                   "--no-summary", *common]
            pin = (lambda: os.sched_setaffinity(0, {core})) if hasattr(os, "sched_setaffinity") else None
            with open(out / f"{args.optimizer}_{variant}_seed{seed}.log", "w") as log:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=pin).returncode
        finally:
            cores.put(core)
        print(f"{variant} seed {seed}: " + ("done" if rc == 0 else f"failed (rc {rc}), see its .log"), flush=True)

    with concurrent.futures.ThreadPoolExecutor(min(args.jobs, cores.qsize())) as pool:
        list(pool.map(one, todo))


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(args, rows: list[dict], out: Path) -> list[dict]:
    summary = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        errs = [r["test_error_percent"] for r in mine]
        train19 = [r["train_error_pass19"] for r in mine if r.get("train_error_pass19") is not None]
        rates = [r["first_pass_rates"] for r in mine if r.get("first_pass_rates")]
        summary.append({"optimizer": args.optimizer, "variant": variant, "recipe": mine[0].get("recipe"),
                        "seeds": len(errs), "mean": _mean_sd(errs)[0], "std": _mean_sd(errs)[1], "runs": errs,
                        "paper": PAPER[variant],
                        "train_error_pass19_mean": _mean_sd(train19)[0] if train19 else None,
                        "train_error_pass19_std": _mean_sd(train19)[1] if train19 else None,
                        "train_error_pass19_runs": train19, "paper_train_error_pass19": PAPER_TRAIN_ERROR_PASS19,
                        "first_pass_rate_min": statistics.mean(r["rate_min"] for r in rates) if rates else None,
                        "first_pass_rate_median": statistics.mean(r["rate_median"] for r in rates) if rates else None,
                        "first_pass_rate_max": statistics.mean(r["rate_max"] for r in rates) if rates else None,
                        # the same estimates at the published first rate (rates fall as h grows)
                        "at_paper_rate": [statistics.mean(PAPER_FIRST_LR / (r["mu"] + r[h]) for r in rates)
                                          for h in ("h_max", "h_median", "h_min")] if rates else None,
                        "paper_first_pass_rates": PAPER_RATES,
                        "wall_seconds_per_run": statistics.mean(r["wall_seconds"] for r in mine)})
    lines = ["| optimizer | variant | test error (mean ± std) | runs | paper (LC98) | training error after 19 "
             "passes | paper | first-pass rates min / median / max | at lr 0.0005 | paper | wall per run (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        t19 = (f"{s['train_error_pass19_mean']:.2f}% ± {s['train_error_pass19_std']:.2f}"
               if s["train_error_pass19_mean"] is not None else "-")
        rates = (f"{s['first_pass_rate_min']:.2g} / {s['first_pass_rate_median']:.2g} / {s['first_pass_rate_max']:.2g}"
                 f" | " + " / ".join(f"{v:.2g}" for v in s["at_paper_rate"])
                 if s["first_pass_rate_min"] is not None else "- | -")
        lines.append(f"| {s['optimizer']} | {s['variant']} | {s['mean']:.2f}% ± {s['std']:.2f} | "
                     + ", ".join(f"{e:.2f}" for e in s["runs"]) + f" | {s['paper']:.2f}% | {t19} | "
                     f"{PAPER_TRAIN_ERROR_PASS19:.2f}% | {rates} | {PAPER_RATES[0]:g} .. {PAPER_RATES[1]:g} | "
                     f"{s['wall_seconds_per_run']:.0f} |")
    (out / f"results_{args.optimizer}.md").write_text("\n".join(lines) + "\n")
    (out / f"results_{args.optimizer}.json").write_text(json.dumps(
        {"summary": summary, "runs": rows, "machine_cpus": os.cpu_count(),
         "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None}, indent=2))
    print("\n".join(lines))
    return summary


def plot_errors(rows: list[dict], path: Path) -> None:
    """Test and training error per pass, every run (LC98 Fig. 5), with the paper's two end points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        label = f"{r['variant']} seed {r['seed']}"
        for key, style in (("test_error_by_pass", "o-"), ("train_error_by_pass", "s--")):
            pts = sorted((float(k), v) for k, v in (r.get(key) or {}).items())
            if pts:
                ax.plot(*zip(*pts, strict=True), style, ms=3, label=f"{label} {key.split('_')[0]}")
    ax.axhline(PAPER["plain"], color="k", lw=0.8, ls=":", label="LC98 test 0.95%")
    ax.plot([19], [PAPER_TRAIN_ERROR_PASS19], "k*", ms=10, label="LC98 training 0.35% (pass 19)")
    ax.set(xlabel="pass", ylabel="error (%)", yscale="log", title="LeNet-5 on MNIST: error per pass")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", default="runs/lenet5_mnist", help="output directory (default runs/lenet5_mnist)")
    p.add_argument("--publish", metavar="NAME", help="also copy the summary to experiments/results/NAME")
    p.add_argument("--data-dir", default=None, help="TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    p.add_argument("--mnist-source", default=str(HERE.parents[1] / "shared" / "data" / "mnist"))
    p.add_argument("--optimizer", default="sdlm", choices=["sgd", "sdlm"])
    p.add_argument("--paper-rates", action="store_true",
                   help="sdlm at the published rates (lenet5_mnist_sdlm_paper[_affine])")
    p.add_argument("--variants", default="plain,affine", help="comma list of plain, affine")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=float, default=20)
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process on one core")
    p.add_argument("--no-summary", action="store_true", help=argparse.SUPPRESS)   # what --jobs starts
    p.add_argument("--batch1-steps", type=int, default=0, help="time this many batch-1 SDLM updates instead")
    p.add_argument("--curvature", metavar="WORKDIR",
                   help="report the SDLM curvature estimate at init and in WORKDIR's checkpoint instead")
    p.add_argument("--diagnose", action="store_true",
                   help="measure the published first rate piece by piece instead (diagnose.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    args = p.parse_args(argv)
    if args.jobs < 1:
        print(f"error: --jobs must be at least 1, got {args.jobs}", file=sys.stderr)
        return 2
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in variants if v not in PAPER]:
        print(f"error: unknown variant(s) {', '.join(unknown)}: use plain and/or affine", file=sys.stderr)
        return 2

    from alexnet_jax import data as data_lib
    from alexnet_jax.config import apply_overrides
    from alexnet_jax.configs import get_config
    from alexnet_jax.plotting import plot_runs

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    first = get_config(recipe(args, "plain")).replace(data_dir=args.data_dir or "")
    try:
        data_lib.ensure_prepared(first)
    except data_lib.DatasetNotPreparedError:
        if not Path(args.mnist_source).exists():
            print(f"error: MNIST is not prepared and {args.mnist_source} does not exist; pass --mnist-source",
                  file=sys.stderr)
            return 2
        data_lib.prepare("mnist", args.mnist_source, args.data_dir)
    sdlm_plain = apply_overrides(get_config(RECIPES[("sdlm", "plain")]), args.set).replace(data_dir=args.data_dir or "")
    for flag, fn, name in ((args.batch1_steps, lambda: batch1(args, sdlm_plain), "batch1.json"),
                           (args.curvature, lambda: curvature(args.curvature), "curvature.json"),
                           (args.diagnose, lambda: diagnose(sdlm_plain), "diagnose.json")):
        if flag:
            res = fn()
            (out / name).write_text(json.dumps(res, indent=1))
            print(json.dumps(res))
            if args.publish:
                sys.path.insert(0, str(HERE))
                from _results import publish
                print(f"published to {publish(out, args.publish, [name])}")
            return 0

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    todo = [(v, s) for v in variants for s in seeds]
    if args.jobs > 1 and len(todo) > 1:
        run_parallel(args, todo, out)
        failed = [f"{v} seed {s}" for v, s in todo if not (out / f"{args.optimizer}_{v}_seed{s}.json").exists()]
        if failed:
            print(f"error: runs failed: {', '.join(failed)} (logs in {out})", file=sys.stderr)
            return 1
    rows = []
    for variant, seed in todo:
        rows.append(run_row(args, variant, seed, out))
        print(json.dumps({k: rows[-1][k] for k in ("variant", "seed", "test_error_percent", "train_error_pass19",
                                                   "wall_seconds")}), flush=True)
    if args.no_summary:
        return 0
    summary = summarise(args, rows, out)
    workdirs = [str(out / f"{args.optimizer}_{r['variant']}_seed{r['seed']}") for r in rows]
    plot_runs(workdirs, str(out / f"curves_{args.optimizer}.png"), labels=[Path(w).name for w in workdirs])
    plot_errors(rows, out / f"errors_{args.optimizer}.png")
    if args.publish:
        sys.path.insert(0, str(HERE))
        from _results import publish
        files = [f"results_{args.optimizer}.md", f"results_{args.optimizer}.json", f"curves_{args.optimizer}.png",
                 f"errors_{args.optimizer}.png"] + [f"{Path(w).name}/{f}" for w in workdirs
                                                    for f in ("config.json", "metrics.jsonl")]
        print(f"published to {publish(out, args.publish, files)}")
    print(json.dumps({"summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
