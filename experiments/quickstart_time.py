#!/usr/bin/env python3
"""The quick start timed as a user meets it, with a record README can quote.

    python experiments/quickstart_time.py [--runs 3] [--out runs/quickstart_time] [--publish NAME]

Runs README's main job, `alexnet-jax train` (the default config, LeNet-5 on the bundled digits), each time
into a fresh workdir and as a new process, so every figure includes Python start-up, imports, compiling
and the evaluation:
  cold  with an empty XLA compilation cache (a new folder per run: a first run on a fresh machine);
  warm  with the cache the cold runs filled (every later run on the same machine).
It records each run's wall seconds, its final held-out top-1 (the last evaluation in metrics.jsonl) and the
1-minute load average before and after, and writes OUT/results.json and OUT/report.md; `--publish NAME`
copies those two to experiments/results/NAME.  Time it on a quiet machine: the figure is the machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _results import publish


def one(out: Path, name: str, cache: Path) -> dict:
    """One `alexnet-jax train` into a fresh workdir with the compilation cache in `cache`."""
    workdir = out / name
    shutil.rmtree(workdir, ignore_errors=True)
    exe = shutil.which("alexnet-jax")
    cmd = [exe] if exe else [sys.executable, "-m", "alexnet_jax.cli"]
    env = dict(os.environ, ALEXNET_JAX_COMPILATION_CACHE=str(cache))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)     # it would win over the folder chosen here
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run([*cmd, "train", "--workdir", str(workdir)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout)
        raise SystemExit(f"error: `alexnet-jax train --workdir {workdir}` exited {proc.returncode} (output above)")
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    evals = [r for r in rows if r.get("kind") == "eval"]
    if not evals:
        raise SystemExit(f"error: {workdir / 'metrics.jsonl'} has no evaluation: the run did not finish as expected")
    row = {"run": name, "wall_seconds": wall, "top1": evals[-1]["top1"], "step": evals[-1]["step"],
           "load_before": load_before, "load_after": os.getloadavg()[0]}
    print(json.dumps(row), flush=True)
    return row


def run(out: Path, runs: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    record = {"command": "alexnet-jax train --workdir <fresh>", "cores": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
              "load_before": os.getloadavg(), "cold": [], "warm": []}
    caches = out / "caches"
    shutil.rmtree(caches, ignore_errors=True)
    for i in range(runs):   # each cold run gets a cache folder of its own, empty
        record["cold"].append(one(out, f"cold{i}", caches / f"cold{i}"))
    for i in range(runs):   # the warm runs share the first cold run's filled cache
        record["warm"].append(one(out, f"warm{i}", caches / "cold0"))
    record["load_after"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(record, indent=1))
    return record


def report(out: Path) -> str:
    r = json.loads((out / "results.json").read_text())
    lines = [f"# Quick start timed: `{r['command']}` ({r['cores']} cores, Python {r['python']})", "",
             "| cache | runs | wall min-max (s) | median (s) | held-out top-1 | load before / after (1 min) |",
             "|---|---|---|---|---|---|"]
    for kind in ("cold", "warm"):
        rows = r[kind]
        walls = [x["wall_seconds"] for x in rows]
        tops = sorted({f"{100 * x['top1']:.1f}%" for x in rows})
        loads = f"{min(x['load_before'] for x in rows):.2f}-{max(x['load_before'] for x in rows):.2f} / " \
                f"{min(x['load_after'] for x in rows):.2f}-{max(x['load_after'] for x in rows):.2f}"
        lines.append(f"| {kind} | {len(rows)} | {min(walls):.1f}-{max(walls):.1f} | {statistics.median(walls):.1f} | "
                     f"{', '.join(tops)} | {loads} |")
    lines += ["", "cold: an empty compilation cache per run (a fresh machine); warm: the cache the first cold run "
              "filled. Each run is a new process into a fresh workdir (imports, compiling, training, evaluation, "
              "checkpoint and curves included)."]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="runs with a cold cache, then as many warm (default 3)")
    p.add_argument("--out", default="runs/quickstart_time")
    p.add_argument("--report", action="store_true", help="only rewrite report.md from OUT/results.json")
    p.add_argument("--publish", metavar="NAME", help="copy the record to experiments/results/NAME")
    a = p.parse_args(argv)
    if a.runs < 1:
        p.error(f"--runs must be at least 1, got {a.runs}")
    out = Path(a.out)
    if not a.report:
        run(out, a.runs)
    elif not (out / "results.json").exists():
        raise SystemExit(f"error: {out / 'results.json'} not found: run without --report first")
    print(report(out))
    if a.publish:
        print(f"published to {publish(out, a.publish, ['results.json', 'report.md'])}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("interrupted: nothing was published (the finished runs stay in --out)")
