#!/usr/bin/env python3
"""A shipped recipe end to end, as a user runs it, with a record README can quote.

    python experiments/recipe_run.py CONFIG [--out runs/recipe_CONFIG] [--data-dir DIR] [--publish NAME]
    python experiments/recipe_run.py CONFIG --out DIR --report [--publish NAME]   # the record again

Runs `alexnet-jax train --config CONFIG --workdir OUT/workdir` (resuming a run left there), then
`alexnet-jax eval` on the validation split and, once, on the held-out test split (`--splits`), each with the centre crop
and with ten crops, and writes OUT/results.json (the commands, wall times, load average before and after,
every evaluation's JSON line, the validation curve and the training throughput) and OUT/report.md.
`--publish NAME` copies those two with the workdir's config.json, provenance.json and metrics.jsonl to
experiments/results/NAME.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _results import publish


def _cli(args: list[str]) -> tuple[dict | None, float]:
    """Run `alexnet-jax ARGS`, streaming its output; its last line's JSON (if any) and the wall seconds."""
    cmd = [sys.executable, "-m", "alexnet_jax.cli", *args]
    print("+ alexnet-jax " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"error: `alexnet-jax {' '.join(args)}` exited {proc.returncode}")
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    try:
        return json.loads(last), wall
    except json.JSONDecodeError:
        return None, wall


def run(config: str, out: Path, data_dir: str | None, splits: list[str]) -> dict:
    workdir = out / "workdir"
    extra = ["--data-dir", data_dir] if data_dir else []
    record = {"config": config, "splits": splits, "load_before": os.getloadavg(), "cores": os.cpu_count()}
    _, record["train_wall_seconds"] = _cli(["train", "--config", config, "--workdir", str(workdir), *extra])
    record["load_after_train"] = os.getloadavg()
    record["evals"] = {}
    for split in splits:
        for ten in (False, True):
            name = f"{split}{'_ten_crop' if ten else ''}"
            res, wall = _cli(["eval", "--workdir", str(workdir), "--split", split, *(["--ten-crop"] if ten else []),
                              *extra])
            record["evals"][name] = {"result": res, "wall_seconds": wall}
    record["load_after"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(record, indent=1))
    return record


def _metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def report(out: Path) -> str:
    record = json.loads((out / "results.json").read_text())
    rows = _metrics(out / "workdir")
    evals = [r for r in rows if r.get("kind") == "eval"]
    train = [r["images_per_second"] for r in rows if r.get("kind") == "train" and "images_per_second" in r]
    acc = {k: v["result"] for k, v in record["evals"].items()}

    lines = [f"# `{record['config']}` end to end ({record['cores']} cores)", "",
             f"Training: {record['train_wall_seconds']:.1f} s wall ({record['train_wall_seconds'] / 60:.1f} min), "
             f"median {statistics.median(train):.1f} img/s over the logged intervals; load average before "
             f"{record['load_before'][0]:.2f}, after training {record['load_after_train'][0]:.2f}.", "",
             "| split | centre crop top-1 | ten-crop top-1 |", "|---|---|---|"]
    for split in record["splits"]:
        lines.append(f"| {split} | {100 * acc[split]['top1']:.2f}% | {100 * acc[split + '_ten_crop']['top1']:.2f}% |")
    lines += ["", "Top-1 on the config's eval split at each evaluation during training:", "",
              "| step | top-1 |", "|---|---|"]
    lines += [f"| {r['step']} | {100 * r['top1']:.2f}% |" for r in evals]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--out", help="output directory (default runs/recipe_CONFIG)")
    p.add_argument("--data-dir", help="TFDS data dir (default $TFDS_DATA_DIR, else ~/tensorflow_datasets)")
    p.add_argument("--splits", default="validation,test",
                   help="splits evaluated after training, each with the centre crop and ten crops (default "
                        "validation,test: the test split last and only here)")
    p.add_argument("--report", action="store_true", help="only rewrite report.md from OUT/results.json")
    p.add_argument("--publish", metavar="NAME", help="copy the record to experiments/results/NAME")
    a = p.parse_args(argv)
    out = Path(a.out or f"runs/recipe_{a.config}")
    out.mkdir(parents=True, exist_ok=True)
    if not a.report:
        run(a.config, out, a.data_dir, a.splits.split(","))
    print(report(out))
    if a.publish:
        record = ("config.json", "provenance.json", "metrics.jsonl")
        for f in record:
            (out / f).write_bytes((out / "workdir" / f).read_bytes())
        print(f"published to {publish(out, a.publish, ['results.json', 'report.md', *record])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
