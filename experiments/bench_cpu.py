#!/usr/bin/env python
"""Every CPU speed figure README states, against the fastest PyTorch, in one invocation.

    python experiments/bench_cpu.py [--out runs/bench_cpu] [--publish] [--epochs 5] [--steps 20]
    python experiments/bench_cpu.py --report runs/bench_cpu/results.json [--publish]   # tables again

Runs, one after the other, each as its own `alexnet-jax bench` process (a fresh process per
measurement; torch and ours on the same threads, the cores available to this process):

  lenet_float32     one MNIST epoch of our LeNet-5 against its exact torch twin in every configuration
                    (eager / torch.compile x contiguous / channels_last) and the shipped simplified peer,
                    best of --epochs epochs after one warm-up epoch, and the matmul peak; the twin's
                    trainable subsampling in the torch idiom measured fastest for each layout first
  lenet_bfloat16    the same in bfloat16, the twin under torch.autocast(cpu, bfloat16)
  cifar_float32     the CIFAR-size two-column AlexNet's train step at batch 128 against its exact twin in
                    every configuration, median of --steps steps after --warmup, both sides profiled
                    (jax.profiler with the compiled program's arithmetic types; torch.profiler)
  cifar_bfloat16    the same in bfloat16 / bf16 autocast
  cifar_float32_ynnpack
                    our CIFAR step again with XLA:CPU's YNNPACK convolutions (the jaxlib default, which
                    alexnet_jax's XLA flag turns off: alexnet_jax/__init__.py), same protocol, ours only
  alexnet_float32   the full-size two-column AlexNet (227) step, ours only

and writes --out/results.json (every part's JSON, command, wall time and load average before and after)
and --out/report.md (the tables).  --publish copies them to experiments/results/<name>.json / .md (--name,
default bench_cpu_<date>; a published file of another machine is never overwritten) and rewrites README's
CPU performance table (between the `bench_cpu` markers) from them (not with --no-readme), so every
number README states about CPU speed comes from that file.  Expected wall time on the 2-core
development machine: about 30 minutes (torch.compile compiles for about a minute per configuration,
eight times).
Run it on a quiet machine: the load average is recorded with every part, and PyTorch's OpenMP threads
lose most of their speed when other work shares the cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
README = ROOT / "README.md"
BEGIN, END = "<!-- bench_cpu:begin -->", "<!-- bench_cpu:end -->"
ORDER = ("eager contiguous", "eager channels_last", "compiled contiguous", "compiled channels_last")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", default="runs/bench_cpu", help="output directory (default runs/bench_cpu)")
    p.add_argument("--publish", action="store_true",
                   help="copy the results to experiments/results/bench_cpu_<date>.{json,md} and rewrite README's table")
    p.add_argument("--name", help="published file name, without .json/.md (default bench_cpu_<date>)")
    p.add_argument("--no-readme", action="store_true",
                   help="publish the files only; leave README's table (e.g. a second machine's run)")
    p.add_argument("--report", metavar="RESULTS_JSON", help="only (re)write the tables from a results.json")
    p.add_argument("--parts", help="comma list of parts to run (default: all)")
    p.add_argument("--epochs", type=int, default=5, help="timed LeNet epochs per side (default 5)")
    p.add_argument("--steps", type=int, default=20, help="timed CIFAR steps per side (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed CIFAR steps per side (default 3)")
    p.add_argument("--mnist-dir", help="MNIST IDX files (default: ../shared/data/mnist)")
    p.add_argument("--peer-dir", help="the shipped PyTorch peers (default: ../shared/peers)")
    p.add_argument("--threads", type=int, help="threads for torch (default: the cores available)")
    p.add_argument("--smoke", action="store_true",
                   help="plumbing only: tiny nets, one step / epoch, eager torch (tests use it; not a measurement)")
    return p.parse_args(argv)


def parts(args) -> dict[str, list[str]]:
    bench = [sys.executable, "-m", "alexnet_jax.cli", "bench"]
    common = []
    for flag, v in (("--mnist-dir", args.mnist_dir), ("--peer-dir", args.peer_dir), ("--threads", args.threads)):
        if v:
            common += [flag, str(v)]
    lenet = [*bench, "--lenet-epoch", "--peer", "--matmul-peak", "--epochs", str(args.epochs), *common]
    cifar = [*bench, "--model", "alexnet_cifar", "--batch", "128", "--peer", "--matmul-peak", "--profile",
             "--steps", str(args.steps), "--warmup", str(args.warmup), *common]
    full = [*bench, "--model", "alexnet", "--batch", "128", "--steps", "3", "--warmup", "1"]
    if args.smoke:
        args.epochs, args.steps, args.warmup = 1, 1, 1
        lenet = [*bench, "--lenet-epoch", "--peer", "--matmul-peak", "--epochs", "1", *common]
        cifar = [*bench, "--model", "alexnet_cifar", "--batch", "128", "--peer", "--matmul-peak", "--profile",
                 "--steps", "1", "--warmup", "1", *common]
        tiny = ["--width", "0.0625", "--batch", "8"]
        lenet = [*lenet, "--batch", "32", "--peer-no-compile", "--matmul-size", "256"]
        cifar = [*cifar[:cifar.index("--batch")], *tiny, *cifar[cifar.index("--batch") + 2:], "--peer-no-compile",
                 "--matmul-size", "256"]
        full = [*full[:full.index("--model")], "--model", "alexnet", "--input-size", "67", *tiny, "--steps", "1"]
    ours_only = [a for a in cifar if a not in ("--peer", "--matmul-peak", "--profile", "--peer-no-compile")]
    if "--matmul-size" in ours_only:
        i = ours_only.index("--matmul-size")
        del ours_only[i:i + 2]
    return {"lenet_float32": lenet, "lenet_bfloat16": [*lenet, "--dtype", "bfloat16"],
            "cifar_float32": cifar, "cifar_bfloat16": [*cifar, "--dtype", "bfloat16"],
            "cifar_float32_ynnpack": ours_only, "alexnet_float32": full}


# Parts run with extra environment: YNNPACK convolutions back on (a value set in XLA_FLAGS wins over the
# package's default flag, alexnet_jax._merge_xla_flags).
YNNPACK_CONVOLUTIONS = "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"
PART_ENV = {"cifar_float32_ynnpack": {"XLA_FLAGS": YNNPACK_CONVOLUTIONS}}


def load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict:
    info: dict = {"cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["cpu"] = re.search(r"^model name\s*:\s*(.*)$", text, re.M).group(1)
        flags = set(re.search(r"^flags\s*:\s*(.*)$", text, re.M).group(1).split())
        info["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
        mhz = re.search(r"^cpu MHz\s*:\s*(.*)$", text, re.M)
        info["cpu_mhz"] = float(mhz.group(1)) if mhz else None
    except (OSError, AttributeError):
        pass
    for mod in ("jax", "jaxlib", "torch"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    return info


def run_part(name: str, cmd: list[str], out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               **PART_ENV.get(name, {}))
    before, t = load(), time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall, after = time.perf_counter() - t, load()
    (out / f"{name}.log").write_text(p.stdout + p.stderr)
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"error": f"exit {p.returncode}: {p.stderr[-600:]}"}
    if p.returncode and "error" not in result:
        result["error"] = f"exit {p.returncode}: {p.stderr[-600:]}"
    print(f"== {name}: {wall:.0f} s, load {before} -> {after}" + (f"  ERROR {result['error'][:200]}"
                                                                   if "error" in result else ""), flush=True)
    prefix = [f"{k}={v}" for k, v in PART_ENV.get(name, {}).items()]
    shown = ["python", *cmd[1:]] if cmd[0] == sys.executable else cmd
    return {"cmd": " ".join(prefix + shown), "wall_seconds": round(wall, 1),
            "load_before": before, "load_after": after, "result": result}


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------
def _torch_side(part: dict) -> dict | None:
    r = part["result"]
    return r.get("twin") if r.get("mode") == "lenet_epoch" else (r.get("peers") or {}).get("torch_cifar")


def _vs(part: dict) -> dict | None:
    r = part["result"]
    return r.get("vs_torch") if r.get("mode") == "lenet_epoch" else (r.get("ratios") or {}).get("alexnet_cifar")


def _fmt(v, spec=",.0f"):
    return "-" if v is None else format(v, spec)


def comparison_rows(res: dict) -> list[dict]:
    """One row per benchmark x precision: ours, every torch configuration, the ratios, the load."""
    rows = []
    for name, label in (("lenet_float32", "LeNet-5 MNIST epoch"), ("lenet_bfloat16", "LeNet-5 MNIST epoch"),
                        ("cifar_float32", "CIFAR two-column AlexNet train step"),
                        ("cifar_bfloat16", "CIFAR two-column AlexNet train step")):
        part = res["parts"].get(name)
        if not part or "error" in part["result"]:
            continue
        r, twin, vs = part["result"], _torch_side(part), _vs(part)
        label = f"{label}, batch {r['batch']}" + (f", width {r['width']}" if r.get("width", 1.0) != 1.0 else "")
        torch_runs = {t["config"].replace(" bf16 autocast", ""): t for t in (twin or {}).get("runs", [])
                      if "error" not in t}
        rows.append({"part": name, "label": label, "precision": r["dtype"], "ours": r["images_per_second"],
                     "protocol": r["protocol"], "torch": {k: v["images_per_second"] for k, v in torch_runs.items()},
                     "fastest": (vs or {}).get("fastest_torch", "").replace(" bf16 autocast", "") or None,
                     "ratio_vs_fastest": (vs or {}).get("ratio_vs_fastest"),
                     "threads": (r.get("threads"), (twin or {}).get("threads")),
                     "load": (part["load_before"], part["load_after"]),
                     "achieved": r.get("achieved_flops_per_second"), "share_of_peak": r.get("share_of_peak"),
                     "torch_share_of_peak": {k: v.get("share_of_peak") for k, v in torch_runs.items()},
                     "peaks": r.get("peaks")})
    return rows


def comparison_table(rows: list[dict]) -> str:
    head = ("| benchmark | precision | ours img/s | " + " | ".join(f"torch {c}" for c in ORDER)
            + " | ours / fastest torch | statistic (both sides) | threads | load 1 min (before, after) |")
    lines = [head, "|" + "---|" * (7 + len(ORDER))]
    for row in rows:
        cells = []
        for c in ORDER:
            v = row["torch"].get(c)
            cell = _fmt(v)
            if v is not None and c == row["fastest"]:
                cell = f"**{cell}**"
            cells.append(cell)
        p = row["protocol"]
        plural = "s" if p["warmup"] > 1 else ""
        stat = f"{p['statistic']} ({p['timed']} after {p['warmup']} warm-up {p['unit']}{plural})"
        before, after = (v[0] if v else "-" for v in row["load"])
        ratio = f"**{row['ratio_vs_fastest']:.2f}x**" if row["ratio_vs_fastest"] else "-"
        lines.append(f"| {row['label']} | {row['precision']} | {_fmt(row['ours'])} | " + " | ".join(cells)
                     + f" | {ratio} | {stat} | {row['threads'][0]} / {row['threads'][1]} | {before}, {after} |")
    return "\n".join(lines)


def peak_table(rows: list[dict]) -> str:
    lines = ["| benchmark | precision | ours GFLOP/s (share of peak) | fastest torch GFLOP/s (share) | "
             "measured matmul peak GFLOP/s (source) |", "|---|---|---|---|---|"]
    for row in rows:
        peak = (row["peaks"] or {}).get(row["precision"]) or {}
        if not peak:
            continue
        share = row["share_of_peak"]
        fastest = row["fastest"]
        t_share = row["torch_share_of_peak"].get(fastest) if fastest else None
        t_flops = t_share * peak["peak_flops_per_second"] if t_share else None
        lines.append(f"| {row['label']} | {row['precision']} | {_fmt(row['achieved'] and row['achieved'] / 1e9)} "
                     f"({_fmt(share and 100 * share, '.0f')}%) | {_fmt(t_flops and t_flops / 1e9)} "
                     f"({_fmt(t_share and 100 * t_share, '.0f')}%) | {peak['peak_flops_per_second'] / 1e9:,.0f} "
                     f"({peak['source']}) |")
    return "\n".join(lines)


def matmul_table(rows: list[dict]) -> str:
    lines = ["| precision | size | jax | jax, float32 result | torch |", "|---|---|---|---|---|"]
    seen = set()
    for row in rows:
        peak = (row["peaks"] or {}).get(row["precision"])
        if not peak or row["precision"] in seen:
            continue
        seen.add(row["precision"])
        cells = [_fmt(peak[k]["flops_per_second"] / 1e9) if k in peak else "-"
                 for k in ("jax", "jax_float32_result", "torch")]
        lines.append(f"| {row['precision']} | {peak['jax']['size']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def profile_section(res: dict) -> str:
    out = []
    for name in ("cifar_float32", "cifar_bfloat16"):
        part = res["parts"].get(name)
        if not part or "error" in part["result"]:
            continue
        r = part["result"]
        for prof in r.get("profiles") or []:
            if "error" in prof:
                continue
            out.append(f"**{name}, ours** (jax.profiler, op time {prof['op_ms_total_per_step']:.0f} ms/step summed "
                       f"over threads; the compiled step's arithmetic: "
                       + ", ".join(f"{n} x {k}" for k, n in prof.get("arithmetic_dtypes", {}).items()) + ")\n")
            out += [f"- {o['share'] * 100:.1f}% {o['layer']}" for o in prof["per_layer"][:10]]
        tp = (_torch_side(part) or {}).get("profile")
        if tp:
            out.append(f"\n**{name}, torch {tp['config']}** (torch.profiler, self CPU "
                       f"{tp['self_cpu_ms_total_per_step']:.0f} ms/step)\n")
            out += [f"- {o['share'] * 100:.1f}% {o['op']}" for o in tp["top_ops"][:10]]
        out.append("")
    return "\n".join(out)


def ynnpack_section(res: dict) -> str:
    """Our CIFAR float32 step with the package's flag (Eigen convolutions) and with YNNPACK's (jaxlib's default)."""
    base, ynn = (res["parts"].get(n) for n in ("cifar_float32", "cifar_float32_ynnpack"))
    if not base or not ynn or "error" in base["result"] or "error" in ynn["result"]:
        return "(not run)"
    a, b = base["result"]["images_per_second"], ynn["result"]["images_per_second"]
    return (f"Our CIFAR two-column step, float32, batch {base['result']['batch']}: {a:,.1f} img/s with alexnet_jax's "
            f"default flag (XLA's own convolutions), {b:,.1f} img/s with `XLA_FLAGS={YNNPACK_CONVOLUTIONS}` "
            f"(YNNPACK's, jaxlib's default): the flag is {a / b:.2f}x (loads {base['load_before'][0]}, "
            f"{ynn['load_before'][0]}).")


def subsampling_table(res: dict) -> str:
    out = []
    for name in ("lenet_float32", "lenet_bfloat16"):
        part = res["parts"].get(name)
        cmp = ((part or {}).get("result", {}).get("twin") or {}).get("subsampling_comparison")
        if not cmp:
            continue
        out += [f"{name} (eager{', bf16 autocast' if cmp.get('amp_bf16') else ''}, batch {cmp['batch']}, "
                f"{cmp['threads']} threads; {cmp['statistic']}, {cmp['rounds']} rounds of {cmp['steps_per_round']} "
                f"steps; load before the part {part['load_before']}):", "",
                "| layout | " + " | ".join(f"`{s}` ms/step" for s in ("depthwise", "avgpool", "reshape"))
                + " | used by the twin |", "|---|---|---|---|---|"]
        for layout, v in cmp["layouts"].items():
            med = v["step_seconds_median"]
            out.append(f"| {layout} | " + " | ".join(f"{1e3 * med[s]:.2f}" for s in ("depthwise", "avgpool", "reshape"))
                       + f" | `{v['fastest']}` |")
        out.append("")
    return "\n".join(out) or "(not run)"


def readme_block(res: dict, published: str) -> str:
    rows = comparison_rows(res)
    m = res["machine"]
    full = res["parts"].get("alexnet_float32", {}).get("result", {})
    text = [BEGIN,
            f"Measured {res['date']} on {m.get('cpu', 'a CPU')} ({m['cores']} cores; torch {m.get('torch')}, jax "
            f"{m.get('jax')}) by `python experiments/bench_cpu.py --publish`, every row one invocation with ours "
            f"and every torch configuration on the same {m['cores']} threads "
            f"([`{published}`](experiments/results/{published})):", "",
            comparison_table(rows), "",
            "Each torch column is the exact twin of our net (same function, proven in float64 by "
            "tests/test_bench.py), written the way a careful torch user would; **bold** marks the fastest torch "
            "configuration, the one the ratio is against (the results file has the ratio against each). "
            "bfloat16: ours with `--dtype bfloat16`, torch under `torch.autocast(\"cpu\", torch.bfloat16)`.", "",
            "Achieved FLOP/s (3 x forward multiply-adds x 2 per image) against this machine's measured matmul "
            "peak:", "", peak_table(rows), ""]
    if full and "images_per_second" in full:
        text.append(f"The full-size two-column `alexnet` (227) train step at batch 128, float32, ours: "
                    f"{full['images_per_second']:.1f} img/s (load {res['parts']['alexnet_float32']['load_before']}).")
    text.append(END)
    return "\n".join(text)


def report(res: dict, published: str = "") -> str:
    rows = comparison_rows(res)
    m = res["machine"]
    lines = [f"# CPU benchmarks, {res['date']}", "",
             f"Machine: {m.get('cpu')} ({m['cores']} cores available, {m.get('cpu_mhz')} MHz; flags "
             f"{', '.join(m.get('cpu_flags', []))}); jax {m.get('jax')}, torch {m.get('torch')}. "
             f"Produced by `python experiments/bench_cpu.py` (every command below); raw JSON: "
             f"`{published or 'results.json'}`. Ratios are ours / torch within one invocation.", "",
             "## Ours against every torch configuration", "", comparison_table(rows), "",
             "## Achieved FLOP/s against the measured matmul peak", "", peak_table(rows), "",
             "Matmul rates (size x size times size x size, GFLOP/s, median of 5 after one warm-up):", "",
             matmul_table(rows), "",
             "## XLA:CPU's YNNPACK convolutions", "", ynnpack_section(res), "",
             "## Where the time goes (CIFAR step)", "", profile_section(res),
             "## LeNet twin: the trainable subsampling's torch idioms", "", subsampling_table(res), "",
             "## Commands, wall time and load", ""]
    if res.get("notes"):     # written by hand into a results.json (e.g. parts merged from two invocations)
        lines[-2:-2] = ["## Notes", "", *[f"- {n}" for n in res["notes"]], ""]
    for name, part in res["parts"].items():
        lines.append(f"- `{name}`: `{part['cmd']}` ({part['wall_seconds']:.0f} s, load {part['load_before']} -> "
                     f"{part['load_after']})" + (f" ERROR: {part['result']['error'][:200]}"
                                                 if "error" in part["result"] else ""))
    return "\n".join(lines) + "\n"


def rewrite_readme(block: str, readme: Path = README) -> bool:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        return False
    start, end = text.index(BEGIN), text.index(END) + len(END)
    readme.write_text(text[:start] + block + text[end:])
    return True


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        res = json.loads(Path(args.report).read_text())
        out = Path(args.report).parent
    else:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        todo = parts(args)
        if args.parts:
            unknown = set(args.parts.split(",")) - set(todo)
            if unknown:
                print(f"error: unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(todo)}",
                      file=sys.stderr)
                return 2
            todo = {k: v for k, v in todo.items() if k in args.parts.split(",")}
        res = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "machine": machine(),
               "smoke": args.smoke, "parts": {}}
        for name, cmd in todo.items():
            res["parts"][name] = run_part(name, cmd, out)
            (out / "results.json").write_text(json.dumps(res, indent=1, default=float))
    published = f"{args.name or 'bench_cpu_' + res['date']}.json"
    (out / "report.md").write_text(report(res, published if args.publish else ""))
    print((out / "report.md").read_text())
    if args.publish:
        if res.get("smoke"):
            print("error: a --smoke run is plumbing, not a measurement: not published", file=sys.stderr)
            return 2
        RESULTS.mkdir(parents=True, exist_ok=True)
        if (RESULTS / published).exists():
            cpu = json.loads((RESULTS / published).read_text()).get("machine", {}).get("cpu")
            if cpu != res["machine"].get("cpu"):
                print(f"error: experiments/results/{published} holds a run on {cpu}, this one is on "
                      f"{res['machine'].get('cpu')}: not overwritten; pass --name for this machine's file",
                      file=sys.stderr)
                return 2
        (RESULTS / published).write_text(json.dumps(res, indent=1, default=float) + "\n")
        (RESULTS / published.replace(".json", ".md")).write_text(report(res, published))
        if args.no_readme:
            print(f"published experiments/results/{published} (+ .md); README table left as it is (--no-readme)")
        else:
            ok = rewrite_readme(readme_block(res, published.replace(".json", ".md")))
            print(f"published experiments/results/{published} (+ .md); README table "
                  f"{'rewritten' if ok else 'NOT rewritten: markers not found'}")
    return 0 if all("error" not in p["result"] for p in res["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
