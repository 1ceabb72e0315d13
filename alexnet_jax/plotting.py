"""Curves from one or several workdirs' metrics.jsonl, overlaid in one PNG (matplotlib, Agg)."""

from __future__ import annotations

import json
import os
import textwrap

from alexnet_jax.errors import InputNotFoundError


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        what = "no such folder" if not os.path.isdir(workdir) else "not found"
        raise InputNotFoundError(f"{path}: {what}; give a workdir written by `alexnet-jax train` (it writes "
                                 f"metrics.jsonl as it trains)")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _run_config(workdir: str) -> dict:
    """The workdir's config.json, or {} (the curves need only metrics.jsonl)."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def plain_log_ticks(ax) -> None:
    """Plain numbers (0.002, 0.5, not 2 x 10^-3) on a log y axis spanning under three decades: ticks
    at 1, 2 and 5 of each decade (every digit within one decade, evenly spaced within a narrower range)."""
    from matplotlib import ticker  # lazy (--help): matplotlib only where a figure is drawn (alexnet_jax/cli.py)

    lo, hi = ax.get_ylim()
    if not 0 < lo < hi or hi / lo > 1000:
        return
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0) if hi / lo > 10 else range(1, 10)))
    if sum(lo <= t <= hi for t in ax.yaxis.get_major_locator()()) < 2:
        ax.yaxis.set_major_locator(ticker.MaxNLocator(4))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def curves_figure(workdirs: list[str], labels: list[str] | None = None):
    """Loss (left: training, the mean over each logging interval, and evaluation) and evaluation top-1
    error (right) against the training step, one colour per workdir."""
    from matplotlib.figure import Figure  # lazy (--help), as plain_log_ticks

    fig = Figure(figsize=(11, 4.4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2, sharex=True)
    names, losses, splits, last = [], [], set(), 0
    for i, wd in enumerate(workdirs):
        label = labels[i] if labels else os.path.basename(os.path.normpath(wd))
        recs = read_metrics(wd)
        cfg = _run_config(wd)
        tr = [r for r in recs if r["kind"] == "train"]
        ev = [r for r in recs if r["kind"] == "eval"]
        line, = ax_loss.plot([r["step"] for r in tr], [r["loss"] for r in tr], label=f"{label} train")
        if ev:   # markers too: a single evaluation is a point, not an invisible one-point line
            ax_loss.plot([r["step"] for r in ev], [r["loss"] for r in ev], "o--", color=line.get_color(),
                         label=f"{label} eval")
            ax_acc.plot([r["step"] for r in ev], [100 * (1 - r["top1"]) for r in ev], "o-",
                        color=line.get_color(), label=f"{label} top-1 error" + (
                            f" ({cfg['eval_split']})" if "eval_split" in cfg else ""))
            splits.add(cfg.get("eval_split", "?"))
        losses += [r["loss"] for r in tr + ev if r["loss"] > 0]
        last = max([last] + [r["step"] for r in recs])
        what = ", ".join(str(cfg[k]) for k in ("model", "dataset") if k in cfg)
        names.append(f"{label} ({what})" if what else label)
    log = bool(losses) and max(losses) / min(losses) >= 5       # a narrow range reads better on a linear axis
    ax_loss.set(xlabel="training step", ylabel="cross-entropy" + (" (log scale)" if log else ""),
                yscale="log" if log else "linear",
                title="loss (training: mean over each logging interval)")
    if log:
        plain_log_ticks(ax_loss)
    split = f"the {splits.pop()} split" if len(splits) == 1 else "the evaluation split"
    ax_acc.set(xlabel="training step", ylabel="top-1 error (%)", title=f"top-1 error on {split}")
    ax_acc.set_xlim(left=0, right=max(1, last) * 1.03)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    fig.suptitle("\n".join(textwrap.wrap("training curves of " + "; ".join(names), 150)), fontsize=10)
    return fig


def plot_runs(workdirs: list[str], out_png: str, labels: list[str] | None = None) -> str:
    curves_figure(workdirs, labels).savefig(out_png, dpi=110)
    return out_png
