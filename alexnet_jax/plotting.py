"""Curves from one or several workdirs' metrics.jsonl, overlaid in one PNG (matplotlib, Agg)."""

from __future__ import annotations

import json
import os


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: train in {workdir} first")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_runs(workdirs: list[str], out_png: str, labels: list[str] | None = None) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for i, wd in enumerate(workdirs):
        label = labels[i] if labels else os.path.basename(os.path.normpath(wd))
        recs = read_metrics(wd)
        tr = [r for r in recs if r["kind"] == "train"]
        ev = [r for r in recs if r["kind"] == "eval"]
        line, = ax_loss.plot([r["step"] for r in tr], [r["loss"] for r in tr], label=f"{label} train")
        if ev:   # markers too: a single evaluation is a point, not an invisible one-point line
            ax_loss.plot([r["step"] for r in ev], [r["loss"] for r in ev], "o--", color=line.get_color(),
                         label=f"{label} eval")
            ax_acc.plot([r["step"] for r in ev], [100 * (1 - r["top1"]) for r in ev], "o-",
                        color=line.get_color(), label=f"{label} top-1 error")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="loss")
    ax_loss.set_yscale("log")
    ax_acc.set(xlabel="step", ylabel="error (%)", title="evaluation top-1 error")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
