#!/usr/bin/env python3
"""K12 §3.2 and Figure 3 at CIFAR-10 scale, decided by rules fixed before the run.

    python experiments/alexnet_columns_cifar10.py pilot  [--width W --epochs E --seeds 0,1]   # noise -> seeds
    python experiments/alexnet_columns_cifar10.py main   [--width W --epochs E --seeds 0,...,N-1]
    python experiments/alexnet_columns_cifar10.py report [--out runs/alexnet_columns_cifar10] [--publish NAME]

`--jobs N` trains N (net, seed) runs at a time, each in its own process (on one GPU: several small
programs keep it busier than one; each process gets 0.9 / N of its memory).

The claims (Krizhevsky, Sutskever & Hinton 2012):
  (A) §3.2, footnote 2: the two-column net beats "a net with half as many kernels in each convolutional
      layer trained on one GPU" (whose last conv layer and FC layers are not halved): by 1.7 points top-1.
  (B) Figure 3 / §6.1: one column's conv1 kernels are largely colour-agnostic, the other's colour-specific,
      whatever the initialisation.

The nets (same init rule `--init`, same fixed schedule, same augmentation, same data order per seed):
  alexnet       the 2012 two-column net (columns meet only at conv3, fc6, fc7, fc8)
  alexnet_half  the paper's one-GPU comparison net (48-128-192-192-256, fc 4096)
  alexnet_owt   torchvision's one-column net (64-192-384-256-256), for reference and for claim B's null

Data: CIFAR-10 from ../shared/data/cifar10 (50,000 JPEGs, no test split) prepared into three disjoint,
class-balanced splits: train 40,000, validation 5,000 (every choice: the pilot, the curves) and test
5,000, the report split, evaluated once per run at the end and by nothing else.  Schedule: SGD momentum
0.9, weight decay 5e-4, batch 128, `--lr` reached by a linear warm-up over the first `--warmup-epochs`
(default 1) and divided by 10 after 75% of the fixed `--epochs` (no plateau rule: it would read the split
it decides on), random crops + flips, per-pixel mean subtraction.

Amendment (2026-11-29, after the first CPU plumbing run and before any GPU run): the warm-up was added
because without it `alexnet_owt` (no LRN) at width 0.25 blew up in its first 50 steps and stayed at chance
for the whole run in 2 of 4 seeds (loss 2.3026 from step 100 on); with a one-epoch warm-up the same seed
reaches 37.5% validation top-1 after one epoch.  The rule is the same for every net.

Pre-registered rules (written before the main run; `report` applies them to the test-split numbers):

  Seeds.  The pilot trains every net for the pilot seeds and measures sd, the standard deviation of the
  paired per-seed difference d_s = err(alexnet_half, s) - err(alexnet, s) on the validation split.  The
  main run uses n seeds, the smallest n >= 3 with t(0.975, n-1) * sd / sqrt(n) <= 0.85 points (half the
  paper's 1.7: a 1.7-point difference then excludes 0 with high probability), capped by `--max-seeds`.
  The pilot's runs are runs of the main experiment (same seed, same settings, so the same run: `main`
  reuses them); the pilot reads only their validation errors.
  Claim A.  On the test split, d_s (in points) per seed, their mean and 95% t-interval: "supports" if the
  interval lies above 0 (two columns better), "contradicts" if it lies below 0, "cannot decide" otherwise.
  Claim B (first rule; superseded by Amendment 2 below, still computed and reported as `claim_B_first_rule`).
  For each seed of `alexnet`, D = |colour specificity of column 0 - column 1| (the mean over each
  column's conv1 kernels; alexnet_jax/tools/filters.py).  Null: 2,000 random splits of the pooled conv1
  kernels of every `alexnet_owt` seed into two disjoint groups of the two-column net's per-column size,
  |difference of group means|.  A seed shows the split if D exceeds the null's 95th percentile; claim B
  "supports" if at least k of n seeds do, where k is the smallest count with P(Binomial(n, 0.05) >= k) <
  0.05, "contradicts" otherwise.

Amendment 2 (2026-12-02, after the 4-seed CPU plumbing run, before the main CPU run at the rule's seed count).
The first claim-B rule drew its null from another net (alexnet_owt: no LRN, other kernels, seeds pooled) and
read a non-rejection by 4 seeds as "contradicts"; independent random kernels score about as the trained ones
do, so a reader could not see whether conv1 had learned colour structure at all.  From this amendment on:

  Seeds.  The rule above is unchanged.  The first CPU run capped it at 4 (`--max-seeds 4`, a plumbing check);
  the pilot's sd 1.07 gives 9, and the main run uses the rule's count (default cap 10).  The report states the
  rule's count beside the seeds it found and says so when fewer ran.
  Claim B.  Score: colour specificity of each conv1 kernel, exactly what `alexnet-jax filters` reports
  (alexnet_jax/tools/filters.py `colour_specificity`: the share of a mean-removed kernel's energy off the grey
  axis).  For seed s of `alexnet` with k kernels per column: Delta_s = mean score of column 0 - mean score of
  column 1.  Null: B = 100,000 random re-assignments of the same net's 2k conv1 kernels to two columns of k
  each (numpy default_rng((2012, s))), Delta* of each.  Two-sided: the column index carries no meaning (the net
  is the same net with its columns swapped; K12 §6.1: "modulo a renumbering of the GPUs"), so a one-sided test
  would ask which column a seed happened to call 0.  p_s = (1 + #{|Delta*| >= |Delta_s|}) / (1 + B); with equal
  column sizes the null of Delta is symmetric, so this is the upper tail of |Delta|.  Monte Carlo sd of p_s at
  0.05: 0.0007.
  Direction.  Per seed the sign of Delta is the arbitrary column order, and relative to the higher-scoring
  column every difference is positive: neither says anything.  What a label-free statistic can say is whether
  the columns lie further apart than random re-assignments of the same kernels put them: seed s "separates" if
  |Delta_s| > the median of |Delta*| (p_s below about 1/2), else it lies "in the null's central half" (Delta_s between
  the 25th and 75th percentiles of the symmetric null of Delta).  Each seed is one or the other, each with
  probability 1/2 under the null.  "Most seeds": more than half (5 of 9, 3 of 4).
  Combination.  Stouffer: Z = sum_s Phi^-1(1 - p_s) / sqrt(n), p_s clipped to [1/(1+B), B/(1+B)]; combined
  p = 1 - Phi(Z).  Not Fisher's: the claim is a split "during every run", an effect in each seed, which
  Stouffer weighs equally (a seed whose columns are closer than chance counts against it), while Fisher's
  sum can be carried by one seed.
  Baselines, reported beside the trained nets (they enter only the gate):
    random  independent random 5x5x3 kernels, i.i.d. normal (the He init's distribution; the score does not
            depend on scale): 20,000 groups of k kernels (240,000 at k = 12; default_rng(2012)): the
            per-kernel mean and its 2.5-97.5 percentiles, and the central 95% range of a group's mean (the
            k-kernel mean a column of an untrained net would show).
    init    the same net at initialisation (each seed's saved config, the trainer's init): its column means
            and its own permutation p (a draw from the null).
  Per seed the report also places the higher- and the lower-scoring column's means against the random range
  (descriptive: greyer or more colourful than random kernels).
  Gate, "conv1 demonstrably learned colour structure": in most seeds at least one column's mean score lies
  outside the random-kernel 95% range of a k-kernel mean.
  Verdicts.  "supports": combined p < 0.05 and most seeds separate.  "contradicts": the gate passes and most
  seeds lie in the null's central half.  "cannot decide": otherwise.  ("contradicts" is the absence of a
  split where conv1 learned enough for one to show, not a test that rejects the claim: under the null about
  half of all runs of an odd number of seeds meet its second condition.)
  Second CPU point (only if the gate passes at width 0.25; run or not by a decision recorded with it): width
  0.5 (24 kernels per column), `--schedule recipe` (alexnet_cifar10's own: 20 epochs, lr 0.01, /10 after
  epochs 12 and 17), the two-column net only, seeds 0-3 (four runs of about half an hour of 2 cores: the two
  hours it may take), claim B by the same rules.

Where it runs: a GPU host (`experiments/gpu_run.sh` runs the full-width version, input 32, in one call);
on 2 CPU cores, at width 0.25 and the rule's seed count, it decides the claims for "CIFAR-10 at width 0.25
on 2 CPU cores", not for the paper's nets.
Runs write to --out (default runs/alexnet_columns_cifar10); `report --publish NAME` copies the summary
to experiments/results/NAME.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CIFAR = HERE.parents[1] / "shared" / "data" / "cifar10" / "cifar10_train_jpeg.tar.gz"
NETS = ("alexnet", "alexnet_half", "alexnet_owt")
TRAIN_IMAGES = 40_000      # the carved training split
HALF_WIDTH = 0.85          # points: the largest 95% half-width the seed count aims for (1.7 / 2)
NULL_SPLITS = 2000
PAPER_GAIN = 1.7           # K12 footnote 2: top-1 points


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (scipy when present, else a table)."""
    try:
        from scipy.stats import t
        return float(t.ppf(0.975, df))
    except ImportError:   # pragma: no cover
        table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
                 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}
        return table[min((k for k in table if k >= df), default=30)]


def seeds_needed(sd: float, max_seeds: int) -> int:
    """The pre-registered seed count: smallest n >= 3 with t(0.975, n-1) * sd / sqrt(n) <= HALF_WIDTH."""
    for n in range(3, max_seeds + 1):
        if t975(n - 1) * sd / math.sqrt(n) <= HALF_WIDTH:
            return n
    return max_seeds


def interval(ds: list[float]) -> dict:
    n = len(ds)
    mean = statistics.mean(ds)
    sd = statistics.stdev(ds) if n > 1 else float("nan")
    half = t975(n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
    return {"n": n, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half]}


def verdict_a(ci: list[float]) -> str:
    if ci[0] > 0:
        return "supports"
    if ci[1] < 0:
        return "contradicts"
    return "cannot decide"


def k_needed(n: int, alpha: float = 0.05) -> int:
    """Smallest k with P(Binomial(n, alpha) >= k) < alpha."""
    for k in range(n + 1):
        tail = sum(math.comb(n, j) * alpha ** j * (1 - alpha) ** (n - j) for j in range(k, n + 1))
        if tail < alpha:
            return k
    return n + 1


def base_config(args):
    from alexnet_jax.config import apply_overrides
    from alexnet_jax.configs import get_config

    cfg = get_config("alexnet_cifar10").replace(
        width=args.width, num_epochs=args.epochs, lr=args.lr, lr_schedule="steps",
        lr_boundaries=(0.75 * args.epochs,), lr_factors=(0.1,), eval_split="validation", init=args.init,
        dtype=args.dtype, checkpoint_every_steps=10**6, keep_checkpoints=1, data_dir=args.data_dir or "",
        mesh_model=1)
    cfg = apply_overrides(cfg, args.set)
    per_epoch = TRAIN_IMAGES // cfg.batch_size    # the warm-up ends at the latest where the lr drop begins
    return cfg.replace(warmup_steps=min(round(args.warmup_epochs * per_epoch), int(0.75 * args.epochs * per_epoch)))


def settings(args) -> dict:
    """What makes two runs of one (net, seed) the same run."""
    return {"width": args.width, "epochs": args.epochs, "lr": args.lr, "init": args.init, "dtype": args.dtype,
            "warmup_epochs": args.warmup_epochs, "set": list(args.set)}


def run_one(config, workdir: Path) -> dict:
    """Train one (net, seed) on train, then evaluate its checkpoint once on the report split (test)."""
    from alexnet_jax.tools.filters import analyse
    from alexnet_jax.train import evaluate_workdir, restore, train_and_evaluate

    t0 = time.time()
    val = train_and_evaluate(config, str(workdir), progress=False)
    test = evaluate_workdir(str(workdir), split="test")
    r = restore(str(workdir))
    a = analyse(r.model)
    return {"model": config.model, "seed": config.seed, "width": config.width, "dtype": config.dtype,
            "val_error": 100 * (1 - val["top1"]), "test_error": 100 * (1 - test["top1"]),
            "test_top5_error": 100 * (1 - test["top5"]), "wall_seconds": time.time() - t0,
            "conv1_per_kernel": a["per_kernel"], "conv1_per_column": a["per_column"]}


def train_all(args, seeds: list[int], tag: str) -> list[dict]:
    """Every (net, seed) of `seeds` not yet done, in this process, or `--jobs` at a time in subprocesses
    (several small programs share one GPU better than one runs alone: at input 32 a step leaves most of it
    idle).  A finished run leaves <net>_seed<s>.json; a rerun skips it."""
    out = Path(args.out) / tag
    out.mkdir(parents=True, exist_ok=True)
    todo = [(net, seed) for seed in seeds for net in [n.strip() for n in args.nets.split(",") if n.strip()]]
    for n, s in todo:   # a pilot run with the same settings is the same run (same seed, same data order)
        mine, pilot = out / f"{n}_seed{s}.json", Path(args.out) / "pilot" / f"{n}_seed{s}.json"
        if tag == "main" and not mine.exists() and pilot.exists() and \
                json.loads(pilot.read_text()).get("settings") == settings(args):
            mine.write_text(pilot.read_text())
    pending = [(n, s) for n, s in todo if not (out / f"{n}_seed{s}.json").exists()]
    if args.jobs > 1 and len(pending) > 1:
        _run_parallel(args, pending, tag)
    else:
        base = base_config(args)
        for net, seed in pending:
            row = dict(run_one(base.replace(model=net, seed=seed), out / f"{net}_seed{seed}"), settings=settings(args),
                       workdir=f"{tag}/{net}_seed{seed}")   # relative to --out: a reused pilot run stays in pilot/
            (out / f"{net}_seed{seed}.json").write_text(json.dumps(row))
            print(json.dumps({k: row[k] for k in ("model", "seed", "val_error", "test_error", "wall_seconds")}),
                  flush=True)
    missing = [f"{n}_seed{s}" for n, s in todo if not (out / f"{n}_seed{s}.json").exists()]
    if missing:
        raise SystemExit(f"runs failed: {', '.join(missing)} (logs in {out})")
    return [json.loads((out / f"{n}_seed{s}.json").read_text()) for n, s in todo]


def _workdir(row: dict) -> str:
    """A run's workdir relative to --out (rows written before this was recorded lived in main/)."""
    return row.get("workdir") or f"main/{row['model']}_seed{row['seed']}"


def _run_parallel(args, pending: list[tuple[str, int]], tag: str) -> None:
    import concurrent.futures
    import subprocess

    out = Path(args.out) / tag
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false",
               XLA_PYTHON_CLIENT_MEM_FRACTION=f"{0.9 / args.jobs:.3f}")
    common = ["--out", args.out, "--width", str(args.width), "--epochs", str(args.epochs), "--lr", str(args.lr),
              "--warmup-epochs", str(args.warmup_epochs),
              "--init", args.init, "--dtype", args.dtype, "--cifar-source", args.cifar_source]
    common += ["--data-dir", args.data_dir] if args.data_dir else []
    common += [x for kv in args.set for x in ("--set", kv)]

    def one(task):
        net, seed = task
        cmd = [sys.executable, str(Path(__file__).resolve()), "one", "--tag", tag, "--nets", net,
               "--seeds", str(seed), *common]
        with open(out / f"{net}_seed{seed}.log", "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        done = out / f"{net}_seed{seed}.json"
        row = json.loads(done.read_text()) if rc == 0 and done.exists() else None
        print(json.dumps({k: row[k] for k in ("model", "seed", "val_error", "test_error", "wall_seconds")}) if row
              else f"{net} seed {seed} failed (rc {rc}): see {out / f'{net}_seed{seed}.log'}", flush=True)

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, pending))


def paired(rows: list[dict], key: str) -> list[float]:
    by = {(r["model"], r["seed"]): r[key] for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    return [by[("alexnet_half", s)] - by[("alexnet", s)] for s in seeds
            if ("alexnet_half", s) in by and ("alexnet", s) in by]


def colour_test(rows: list[dict], seed: int = 0) -> dict:
    import numpy as np

    two = [r for r in rows if r["model"] == "alexnet"]
    pool = np.concatenate([np.asarray(r["conv1_per_kernel"][0], np.float64) for r in rows
                           if r["model"] == "alexnet_owt"]) if any(r["model"] == "alexnet_owt" for r in rows) else None
    if not two or pool is None:
        return {"verdict": "not run (needs alexnet and alexnet_owt runs)"}
    size = len(two[0]["conv1_per_kernel"][0])
    rng = np.random.default_rng(seed)
    if 2 * size > len(pool):
        return {"verdict": f"not run: {len(pool)} pooled one-column kernels, fewer than two groups of {size}"}
    null = []
    for _ in range(NULL_SPLITS):
        perm = rng.permutation(len(pool))
        null.append(abs(pool[perm[:size]].mean() - pool[perm[size:2 * size]].mean()))
    threshold = float(np.quantile(null, 0.95))
    per_seed = [{"seed": r["seed"], "columns": r["conv1_per_column"],
                 "D": abs(r["conv1_per_column"][0] - r["conv1_per_column"][1])} for r in two]
    for p in per_seed:
        p["exceeds_null_95"] = p["D"] > threshold
    n, hits = len(per_seed), sum(p["exceeds_null_95"] for p in per_seed)
    k = k_needed(n)
    return {"group_size": size, "pool": int(len(pool)), "null_95th_percentile": threshold, "per_seed": per_seed,
            "seeds_exceeding": hits, "seeds": n, "k_needed": k,
            "verdict": "supports" if hits >= k else "contradicts" if k <= n else
            f"cannot decide: {n} seeds are too few for any count to reach p < 0.05"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("phase", choices=["pilot", "main", "report", "one"],
                   help="one: a single (--nets, --seeds) run under --tag (what --jobs starts)")
    p.add_argument("--out", default="runs/alexnet_columns_cifar10")
    p.add_argument("--data-dir", default=None, help="TFDS data dir (default $TFDS_DATA_DIR)")
    p.add_argument("--cifar-source", default=str(CIFAR))
    p.add_argument("--nets", default=",".join(NETS))
    p.add_argument("--seeds", default="0,1", help="comma list (main: as many as the pilot's rule says)")
    p.add_argument("--max-seeds", type=int, default=10)
    p.add_argument("--epochs", type=float, default=30)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear lr warm-up (default 1 epoch)")
    p.add_argument("--init", default="he", choices=["paper", "paper_scaled", "he"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process (default 1)")
    p.add_argument("--tag", default="main", help=argparse.SUPPRESS)
    p.add_argument("--publish", metavar="NAME", help="report: also copy the summary to experiments/results/NAME")
    args = p.parse_args(argv)

    from alexnet_jax import data as data_lib

    try:
        data_lib.ensure_prepared(base_config(args))
    except data_lib.DatasetNotPreparedError:
        if not Path(args.cifar_source).exists():
            print(f"error: CIFAR-10 is not prepared and {args.cifar_source} is missing; pass --cifar-source",
                  file=sys.stderr)
            return 2
        data_lib.prepare("cifar10", args.cifar_source, args.data_dir)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out)
    if args.phase == "pilot":
        rows = train_all(args, seeds, "pilot")
        ds = paired(rows, "val_error")
        sd = statistics.stdev(ds) if len(ds) > 1 else float("nan")
        n = seeds_needed(sd, args.max_seeds) if sd == sd else args.max_seeds
        res = {"pilot_seeds": seeds, "val_differences": ds, "sd": sd, "seeds_for_main": n,
               "rule": f"smallest n >= 3 with t(0.975, n-1) * sd / sqrt(n) <= {HALF_WIDTH}, at most {args.max_seeds}",
               "settings": vars(args)}
        (out / "pilot.json").write_text(json.dumps(res, indent=1))
        print(json.dumps(res))
        return 0
    if args.phase in ("main", "one"):
        train_all(args, seeds, "main" if args.phase == "main" else args.tag)
        return 0
    rows = [json.loads(f.read_text()) for f in sorted((out / "main").glob("*.json"))]
    if not rows:
        print(f"error: no main runs in {out / 'main'}", file=sys.stderr)
        return 2
    ds = paired(rows, "test_error")
    a = dict(interval(ds), differences=ds, paper_points=PAPER_GAIN) if len(ds) > 1 else {"differences": ds}
    a["verdict"] = verdict_a(a["ci95"]) if "ci95" in a else "cannot decide: fewer than 2 paired seeds"
    summary = {}
    for net in dict.fromkeys(r["model"] for r in rows):
        errs = [r["test_error"] for r in rows if r["model"] == net]
        summary[net] = {"test_error_mean": statistics.mean(errs), "test_error_sd": statistics.stdev(errs)
                        if len(errs) > 1 else 0.0, "n": len(errs),
                        "wall_seconds": sum(r["wall_seconds"] for r in rows if r["model"] == net)}
    res = {"claim_A": a, "claim_B": colour_test(rows), "summary": summary,
           "settings": {k: rows[0][k] for k in ("width", "dtype")}, "runs": [
               {k: r[k] for k in ("model", "seed", "val_error", "test_error", "wall_seconds", "conv1_per_column")}
               for r in rows]}
    (out / "report.json").write_text(json.dumps(res, indent=1))
    lines = ["| net | test error (mean ± sd) | seeds | wall (s) |", "|---|---|---|---|"]
    for net, s in summary.items():
        lines.append(f"| {net} | {s['test_error_mean']:.2f}% ± {s['test_error_sd']:.2f} | {s['n']} | "
                     f"{s['wall_seconds']:.0f} |")
    if "ci95" in a:
        lines.append(f"\nClaim A (two columns better than the one-GPU net): d = {a['mean']:+.2f} points, 95% CI "
                     f"[{a['ci95'][0]:+.2f}, {a['ci95'][1]:+.2f}] over {a['n']} seeds: {a['verdict']}")
    b = res["claim_B"]
    lines.append(f"Claim B (one column colour-specific): {b['verdict']}" + (
        f" ({b['seeds_exceeding']} of {b['seeds']} seeds exceed the null's 95th percentile "
        f"{b['null_95th_percentile']:.4f}; {b['k_needed']} needed)" if "seeds" in b else ""))
    if "per_seed" in b:   # the filters picture (Figure 3) of the clearest seed, and the validation curves
        from alexnet_jax.plotting import plot_runs
        from alexnet_jax.tools.filters import analyse, draw
        from alexnet_jax.train import restore

        best = max(b["per_seed"], key=lambda q: q["D"])
        wd = next(out / _workdir(r) for r in rows if r["model"] == "alexnet" and r["seed"] == best["seed"])
        an = analyse(restore(str(wd)).model)
        draw(an["blocks"], an["per_column"], an["layer"], str(out / "filters_clearest_seed.png"),
             title=f"two-column net, seed {best['seed']} (D = {best['D']:.3f})")
        wds = sorted(str(out / _workdir(r)) for r in rows)
        plot_runs(wds, str(out / "curves.png"), labels=[Path(w).name for w in wds])
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.publish:
        sys.path.insert(0, str(HERE))
        from _results import publish
        files = ["report.json", "report.md", "pilot.json", "filters_clearest_seed.png", "curves.png"]
        print(f"published to {publish(out, args.publish, files)}")
    print(json.dumps({"claim_A": a["verdict"], "claim_B": b["verdict"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
