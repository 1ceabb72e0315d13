"""Overlay the training curves of one or several workdirs in one PNG.

    alexnet-jax plot runs/a runs/b [--labels "2 columns" "1 column"] [--out compare.png]

Reads each workdir's metrics.jsonl (written by `alexnet-jax train`) and draws, with
`alexnet_jax.plotting.plot_runs`, the training and evaluation loss (left) and the evaluation top-1
error (right), one colour per workdir.  `--labels` names the runs in the legend (default: the
folder names; give one label per workdir, space- or comma-separated).  Default output:
<first workdir>/analysis/curves_overlay.png.  The last stdout line is a JSON summary.
"""

from __future__ import annotations

import os

from alexnet_jax.errors import UsageError
from alexnet_jax.plotting import plot_runs, read_metrics
from alexnet_jax.tools import _cli

USES_DEVICES = False


def add_arguments(p) -> None:
    p.add_argument("workdirs", nargs="*", metavar="WORKDIR", help="workdirs with a metrics.jsonl")
    p.add_argument("--workdir", action="append", default=[], help="another workdir (repeatable)")
    p.add_argument("--labels", nargs="+", help="one legend label per workdir (space- or comma-separated)")
    p.add_argument("--out", help="PNG (default <first workdir>/analysis/curves_overlay.png)")


def parse_labels(labels: list[str] | None, n: int) -> list[str] | None:
    if not labels:
        return None
    flat = [s.strip() for item in labels for s in (item.split(",") if len(labels) == 1 else [item])]
    if len(flat) != n:
        raise UsageError(f"--labels: {len(flat)} labels for {n} workdir(s): give one label per workdir")
    return flat


def run(args) -> int:
    workdirs = list(args.workdirs) + list(args.workdir)
    if not workdirs:
        raise UsageError("give at least one workdir (a folder with the metrics.jsonl `alexnet-jax train` writes)")
    labels = parse_labels(args.labels, len(workdirs))
    metrics = [read_metrics(wd) for wd in workdirs]     # every workdir checked before anything is written
    out = _cli.out_path(args, workdirs[0], "curves_overlay.png")
    plot_runs(workdirs, out, labels)
    runs = []
    for i, (wd, recs) in enumerate(zip(workdirs, metrics, strict=True)):
        train = [r for r in recs if r.get("kind") == "train"]
        evals = [r for r in recs if r.get("kind") == "eval"]
        last = evals[-1] if evals else {}
        runs.append({"workdir": os.path.abspath(wd), "label": labels[i] if labels else os.path.basename(
            os.path.normpath(wd)), "train_points": len(train), "eval_points": len(evals),
            "last_step": max((r["step"] for r in recs), default=0),
            "last_eval": {k: last[k] for k in ("step", "top1", "top5", "loss") if k in last}})
        top1 = f", last top-1 {last['top1']:.4f}" if "top1" in last else ""
        print(f"{runs[-1]['label']}: {len(train)} train points, {len(evals)} evals, "
              f"last step {runs[-1]['last_step']}{top1}")
    print(f"wrote {out}")
    _cli.emit({"tool": "plot", "out": out, "runs": runs})
    return 0

