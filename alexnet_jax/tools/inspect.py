"""Show a workdir's checkpoint: config, step, eval history and every parameter with its column.

    alexnet-jax inspect --workdir runs/alexnet_cifar10 [--stats] [--step N] [--out FILE.json]

Each parameter is listed with its path, shape, dtype, size and the column it belongs to: the 2012
AlexNet stores the two columns' (GPUs') conv1..conv5, fc6 and fc7 parameters stacked on a leading
axis, so each such array is listed as one row per column (`conv1.kernel[0]` -> column 0); fc8 and
every parameter of the one-column nets are "shared".  `--stats` adds per-row weight statistics: mean,
std, min, max and the fraction with |w| < 1e-3.  The eval history comes from the checkpoint's
metadata (else from metrics.jsonl).  The full report is written as JSON (default
<workdir>/analysis/inspect.json); the last stdout line is a JSON summary.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from flax import nnx

from alexnet_jax.models.layers import COLUMN_AXIS
from alexnet_jax.tools import _cli

SMALL = 1e-3


def add_arguments(p) -> None:
    _cli.add_checkpoint_args(p, "report JSON (default <workdir>/analysis/inspect.json)")
    p.add_argument("--stats", action="store_true", help="per-layer weight statistics")


def _path_str(path) -> str:
    return ".".join(str(getattr(k, "key", k)) for k in path)


def column_paths(model) -> set[str]:
    """Paths ("conv1.kernel", ...) of the parameters stacked by column: their logical axes start with
    the column axis (layers.COLUMN_AXIS)."""
    return {_path_str(path) for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))
            if (var.get_metadata().get("axes") or (None,))[0] == COLUMN_AXIS}


def weight_stats(w: np.ndarray) -> dict[str, float]:
    w = np.asarray(w, np.float64)
    return {"mean": float(w.mean()), "std": float(w.std()), "min": float(w.min()), "max": float(w.max()),
            "frac_small": float(np.mean(np.abs(w) < SMALL))}


def parameter_table(model, stats: bool = False) -> list[dict]:
    """One row per parameter (per column for column layers): path, shape, dtype, size, column."""
    cols = column_paths(model)
    rows = []
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = _path_str(path)
        value = var[...] if hasattr(var, "__getitem__") else var.value
        arr = np.asarray(jax.device_get(value))
        if name in cols:
            parts = [(f"{name}[{c}]", c, arr[c]) for c in range(arr.shape[0])]
        else:
            parts = [(name, "shared", arr)]
        for label, column, a in parts:
            row = {"path": label, "shape": list(a.shape), "dtype": str(a.dtype), "size": int(a.size),
                   "column": column}
            if stats:
                row.update(weight_stats(a))
            rows.append(row)
    return rows


def other_variables(model) -> int:
    """Number of values in non-trainable variables (BatchNorm statistics, LeNet's RBF codes)."""
    return int(sum(np.size(x) for x in jax.tree.leaves(nnx.state(model, nnx.Not(nnx.Param)))))


def eval_history(workdir: str, meta: dict) -> list[dict]:
    hist = list(meta.get("evals") or [])
    if hist:
        return hist
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            return [r for r in (json.loads(line) for line in f if line.strip()) if r.get("kind") == "eval"]
    return []


def checkpoint_steps(workdir: str) -> dict[str, list]:
    """The checkpoint steps present, and the damaged ones moved aside (`<step>.corrupt-<time>`)."""
    d = os.path.join(workdir, "checkpoints")
    names = os.listdir(d) if os.path.isdir(d) else []
    return {"usable_or_unchecked": sorted(int(n) for n in names if n.isdigit()),
            "moved_aside": sorted(n for n in names if ".corrupt-" in n)}


def parameter_table_text(rows: list[dict], stats: bool) -> str:
    head = f"{'parameter':<22} {'column':>6} {'shape':<22} {'dtype':<8} {'size':>11}"
    if stats:
        head += f" {'mean':>10} {'std':>9} {'min':>9} {'max':>9} {'|w|<1e-3':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = (f"{r['path']:<22} {str(r['column']):>6} {str(tuple(r['shape'])):<22} {r['dtype']:<8} "
                f"{r['size']:>11,}")
        if stats:
            line += (f" {r['mean']:>10.3g} {r['std']:>9.3g} {r['min']:>9.3g} {r['max']:>9.3g} "
                     f"{r['frac_small']:>8.3f}")
        lines.append(line)
    return "\n".join(lines)


def run(args) -> int:
    r = _cli.restore_from_args(args)
    rows = parameter_table(r.model, stats=args.stats)
    total = sum(row["size"] for row in rows)
    by_column: dict[str, int] = {}
    for row in rows:
        by_column[str(row["column"])] = by_column.get(str(row["column"]), 0) + row["size"]
    history = eval_history(r.workdir, r.meta)
    steps = checkpoint_steps(r.workdir)
    report = {"workdir": r.workdir, "step": r.step, "checkpoint_steps": steps, "config": r.config.to_dict(),
              "format": r.meta.get("format"), "provenance": r.meta.get("provenance"),
              "model": type(r.model).__name__, "columns": r.model.columns, "params": total,
              "params_by_column": by_column,
              "other_variables": other_variables(r.model), "evals": history, "parameters": rows}
    out = _cli.write_json(_cli.out_path(args, r.workdir, "inspect.json"), report)

    cfg = r.config
    print(f"workdir {r.workdir}  step {r.step}  model {cfg.model} ({type(r.model).__name__}, "
          f"{report['columns']} column{'s' if report['columns'] > 1 else ''})  dataset {cfg.dataset}  "
          f"input {cfg.input_size}  width {cfg.width}  classes {cfg.num_classes}")
    print(f"checkpoints: steps {steps['usable_or_unchecked']}" +
          (f"; moved aside as damaged: {', '.join(steps['moved_aside'])}" if steps["moved_aside"] else ""))
    print("config: " + ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items()))
    if history:
        nan = float("nan")
        print("evals:  " + "; ".join(
            f"step {h.get('step')}: top1 {h.get('top1', nan):.4f} top5 {h.get('top5', nan):.4f} "
            f"loss {h.get('loss', nan):.4f}" for h in history))
    print(parameter_table_text(rows, args.stats))
    print(f"total {total:,} parameters (" + ", ".join(
        f"{'column ' + k if k != 'shared' else k} {v:,}" for k, v in by_column.items()) + ")")
    last = history[-1] if history else {}
    _cli.emit({"tool": "inspect", "workdir": r.workdir, "step": r.step, "checkpoint_steps": steps,
               "model": cfg.model,
                  "columns": report["columns"], "params": total, "params_by_column": by_column,
                  "num_param_rows": len(rows), "evals": len(history),
                  "last_eval": {k: last[k] for k in ("step", "top1", "top5", "loss") if k in last},
                  "out": out})
    return 0

