#!/usr/bin/env python3
"""The 2012 net compiled for TPU chips and NVIDIA GPUs on a CPU host (`alexnet-jax compile`): what the
split costs and what fits, found by XLA itself.  Needs libtpu (pip install -e ".[tpu]") and, for `gpu`,
JAX's CUDA plugin (pip install --no-deps jax-cuda13-plugin jax-cuda13-pjrt, the installed jax's version);
nothing runs on a device.

    python experiments/tpu_compile.py split    [--out runs/tpu_compile]   # 1x1, 1x2, 2x1, 2x2 on v5e
    python experiments/tpu_compile.py fit      [--out runs/tpu_compile]   # largest batch per chip
    python experiments/tpu_compile.py recipe   [--out runs/tpu_compile]   # alexnet_imagenet on 1 and 2 chips
    python experiments/tpu_compile.py gpu      [--out runs/tpu_compile]   # the split on four H100s
    python experiments/tpu_compile.py report   [--out runs/tpu_compile] [--publish NAME]

split   The two-column net at input 227, bfloat16, batch 128 per data replica, on meshes data x model =
        1x1, 1x2, 2x1, 2x2 of a v5e:2x2 topology: memory per chip, bytes each chip sends per step on each
        mesh axis, XLA's FLOPs per chip, the roofline's step time (exchange not overlapped / overlapped),
        the exchange's share and images per second per chip.
fit     The largest global batch one chip takes (mesh 1x1) for the same net in bfloat16 and float32, on
        v5e and v4: powers of two until XLA:TPU refuses one (RESOURCE_EXHAUSTED: it does not fit the
        chip's HBM), then one refining step halfway between the last that fits and the first that does
        not.  Batch 128 is compiled first; the powers of two start at the largest its memory predicts to
        fit (linear in the batch), and go down or up from there as the compiles answer.
recipe  `alexnet_imagenet` as shipped (float32, batch 128, input 224) on one v5e chip and on two.
gpu     split's four meshes compiled by XLA:GPU for four H100 SXM GPUs of one host (h100:4).

Each compile takes minutes on a 2-core CPU; every result is appended to <out>/<part>.jsonl as it comes,
and a rerun skips what is there.  `report` writes <out>/tables.md; --publish NAME copies the results and
the tables to experiments/results/NAME.  Times are a roofline prediction from Google's published chip
figures, not a measurement; memory, FLOPs and collectives are XLA:TPU's own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

SPLITS = [(1, 1), (1, 2), (2, 1), (2, 2)]
FIT = [("v5e", "v5e:2x2"), ("v4", "v4:2x2x1")]
NET = ["input_size=227", "init=paper"]             # the 2012 net at the paper's geometry (alexnet_imagenet's model)


def _config(sets: list[str]):
    from alexnet_jax.config import apply_overrides
    from alexnet_jax.configs import get_config

    return apply_overrides(get_config("alexnet_imagenet"), sets)


def _done(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["key"]: r for r in rows}


def _append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _row(key: str, config, topology: str) -> dict:
    """One compile of the train step: the report's figures, or that it does not fit and XLA's words."""
    from alexnet_jax import compile as compile_lib

    t0 = time.perf_counter()
    try:
        r = compile_lib.compile_report(config, topology)
    except compile_lib.DoesNotFit as e:
        m = re.search(r"available HBM \(([\d.]+)G\)", str(e))
        return {"key": key, "topology": topology, "model": config.model, "input_size": config.input_size,
                "dtype": config.dtype, "global_batch": config.batch_size,
                "mesh": {"data": config.mesh_data, "model": config.mesh_model}, "fits": False,
                "xla_hbm_gib": float(m.group(1)) if m else None, "error": str(e),
                "seconds": round(time.perf_counter() - t0, 1)}
    axes: dict[str, float] = {}
    for c in r["collectives"]:
        axes[c["axis"]] = axes.get(c["axis"], 0.0) + c["sent_bytes_per_device"]
    keep = ("label", "topology", "device_kind", "mesh", "mesh_chips", "plan", "model", "input_size", "width", "dtype",
            "global_batch", "batch_per_data_replica", "macs_per_image", "formulation", "compile_seconds",
            "memory_per_device", "flops_per_device", "bytes_accessed_per_device", "sent_bytes_per_device",
            "collectives", "predicted", "chip")
    return {"key": key, "fits": True, **{k: r[k] for k in keep}, "sent_bytes_per_device_by_axis": axes,
            "seconds": round(time.perf_counter() - t0, 1)}


def _same(row: dict) -> tuple:
    """What a compile depends on here (rows of different parts can share it: split 1x1 is fit's 128)."""
    return (row["topology"], row.get("model"), row.get("input_size"), row["dtype"], row["global_batch"],
            row["mesh"]["data"], row["mesh"]["model"])


def _run(path: Path, key: str, config, topology: str) -> dict:
    done = _done(path)
    if key in done:
        return done[key]
    want = (topology, config.model, config.input_size, config.dtype, config.batch_size, config.mesh_data,
            config.mesh_model)
    for other in path.parent.glob("*.jsonl"):
        for row in _done(other).values():
            if _same(row) == want:
                row = dict(row, key=key, reused_from=f"{other.name}: {row['key']}")
                _append(path, row)
                return row
    print(f"[{key}] compiling ...", flush=True)
    row = _row(key, config, topology)
    _append(path, row)
    print(f"[{key}] {'fits' if row['fits'] else 'does not fit'} ({row['seconds']:.0f} s)", flush=True)
    return row


def run_split(out: Path, file: str = "split.jsonl", chip: str = "v5e", topology: str = "v5e:2x2") -> None:
    for d, m in SPLITS:
        config = _config(NET + ["dtype=bfloat16", f"batch_size={128 * d}", f"mesh_data={d}", f"mesh_model={m}"])
        _run(out / file, f"{chip} {d}x{m}", config, topology)


def _fits(out: Path, chip: str, topology: str, dtype: str, b: int) -> dict:
    config = _config(NET + [f"dtype={dtype}", f"batch_size={b}", "mesh_data=1", "mesh_model=1"])
    return _run(out / "fit.jsonl", f"{chip} {dtype} {b}", config, topology)


def _first_power(row: dict) -> int:
    """Where the powers of two start: the largest one that the compile at 128 predicts to fit the published
    HBM, with the memory linear in the batch (the state fixed, the rest per image).  Only a start: every
    batch reported is compiled."""
    m = row["memory_per_device"]
    fixed = m["arguments"] - 128 * (256 * 256 * 3 + 8)            # the state: arguments less the uint8 batch
    per_image = (m["total"] - fixed) / 128
    b = 128
    while fixed + 2 * b * per_image <= m["hbm"]:
        b *= 2
    return b


def run_fit(out: Path, chips: list[str], dtypes: list[str]) -> None:
    for chip, topology in FIT:
        if chip not in chips:
            continue
        for dtype in dtypes:
            first = _fits(out, chip, topology, dtype, 128)
            if not first["fits"]:
                print(f"{chip} {dtype}: batch 128 does not fit one chip", flush=True)
                continue
            b = _first_power(first)
            while b > 128 and not _fits(out, chip, topology, dtype, b)["fits"]:
                b //= 2
            while _fits(out, chip, topology, dtype, 2 * b)["fits"]:
                b *= 2
            _fits(out, chip, topology, dtype, (b + 2 * b) // 2)   # one refining step: b fits, 2b does not


def run_recipe(out: Path) -> None:
    for m in (1, 2):
        config = _config(["mesh_data=1", f"mesh_model={m}"])
        _run(out / "recipe.jsonl", f"alexnet_imagenet v5e 1x{m}", config, "v5e:2x2")


# ------------------------------------------------------------------------------------------------
def _mib(v) -> str:
    return f"{v / 2**20:,.0f}"


def tables(out: Path) -> str:
    label = "compiled for TPU v5e on a CPU host; times are a roofline prediction, not a measurement"
    lines = []
    for file, name, topology in (("split.jsonl", "TPU v5e", "v5e:2x2"), ("gpu_split.jsonl", "NVIDIA H100", "h100:4")):
        split = list(_done(out / file).values())
        if not split:
            continue
        link = "ICI" if "TPU" in name else "NVLink"
        lines += [f"### One chip vs the two-chip split (compiled for {name} on a CPU host; times are a roofline "
                  f"prediction, not a measurement)", "",
                  f"The 2012 net at 227, bfloat16, batch 128 per data replica; `{topology}` topology, {link}.", "",
                  "| mesh (data x model) | chips | global batch | memory per chip (MiB) | sent per chip per step, "
                  "`model` axis (MB) | `data` axis (MB) | GFLOP per chip (XLA) | predicted step (ms), exchange not "
                  "overlapped / overlapped | exchange share | predicted img/s per chip | compile (s) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in split:
            p, ax = r["predicted"], r["sent_bytes_per_device_by_axis"]
            lines.append(
                f"| {r['mesh']['data']}x{r['mesh']['model']} | {r['mesh_chips']} | {r['global_batch']} | "
                f"{_mib(r['memory_per_device']['total'])} | {ax.get('model', 0) / 1e6:.2f} | "
                f"{ax.get('data', 0) / 1e6:.2f} | {r['flops_per_device']['xla'] / 1e9:,.1f} | "
                f"{p['step_seconds_not_overlapped'] * 1e3:.2f} / {p['step_seconds_overlapped'] * 1e3:.2f} | "
                f"{100 * p['exchange_share']:.1f}% | {p['images_per_second_per_chip_not_overlapped']:,.0f} | "
                f"{r['compile_seconds']:.0f} |")
        if "H100" in name:
            lines.append("\nXLA's GPU cost analysis does not see inside cuDNN convolutions: its GFLOP column counts "
                         "the rest; the predicted step computes with the model's FLOPs (6 x multiply-adds).")
        lines.append("")
    fit = list(_done(out / "fit.jsonl").values())
    if fit:
        lines += [f"### What fits one chip ({label.replace(' v5e', '')})", "",
                  "The 2012 net at 227, one chip (mesh 1x1): the largest global batch XLA:TPU compiles, searched "
                  "over powers of two from 128 and one step between the last that fits and the first that does "
                  "not.", "",
                  "| chip | dtype | largest batch that fits | memory at it (MiB) | smallest refused | HBM: published / "
                  "XLA's limit | batches tried |", "|---|---|---|---|---|---|---|"]
        groups: dict[tuple[str, str], list[dict]] = {}
        for r in fit:
            chip, dtype, _ = r["key"].split()
            groups.setdefault((chip, dtype), []).append(r)
        for (chip, dtype), rows in groups.items():
            ok = [r for r in rows if r["fits"]]
            no = [r for r in rows if not r["fits"]]
            best = max(ok, key=lambda r: r["global_batch"]) if ok else None
            refused = min((r["global_batch"] for r in no), default=None)
            limit = next((r["xla_hbm_gib"] for r in no if r.get("xla_hbm_gib")), None)
            published = (best or rows[0]).get("chip", {}).get("hbm_published", "")
            tried = ", ".join(f"{r['global_batch']}{'' if r['fits'] else ' (no)'}"
                              for r in sorted(rows, key=lambda r: r["global_batch"]))
            lines.append(f"| {chip} | {dtype} | {best['global_batch'] if best else '< 128'} | "
                         f"{_mib(best['memory_per_device']['total']) if best else '-'} | {refused or '-'} | "
                         f"{published} / {f'{limit:g} GiB' if limit else '-'} | {tried} |")
        lines.append("")
    recipe = list(_done(out / "recipe.jsonl").values())
    if recipe:
        lines += [f"### `alexnet_imagenet` as shipped ({label})", "",
                  "float32, batch 128, input 224 (+3 px conv1 padding).", "",
                  "| mesh | fits | memory per chip (MiB) | headroom of 16 GB (MiB) | predicted step (ms, not "
                  "overlapped) |",
                  "|---|---|---|---|---|"]
        for r in recipe:
            if r["fits"]:
                m = r["memory_per_device"]
                lines.append(f"| {r['mesh']['data']}x{r['mesh']['model']} | yes | {_mib(m['total'])} | "
                             f"{_mib(m['headroom'])} | {r['predicted']['step_seconds_not_overlapped'] * 1e3:.2f} |")
            else:
                lines.append(f"| {r['mesh']['data']}x{r['mesh']['model']} | no: {r['error']} | - | - | - |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("part", choices=["split", "fit", "recipe", "gpu", "report", "all"])
    p.add_argument("--out", default="runs/tpu_compile")
    p.add_argument("--chips", default="v5e,v4", help="fit: chips to search (v5e, v4)")
    p.add_argument("--dtypes", default="bfloat16,float32", help="fit: dtypes to search")
    p.add_argument("--publish", metavar="NAME", help="copy the results and tables.md to experiments/results/NAME")
    args = p.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")          # nothing runs on a device: only the host backend
    out = Path(args.out)
    from alexnet_jax.cli import setup_logging
    setup_logging()
    if args.part in ("split", "all"):
        run_split(out)
    if args.part in ("recipe", "all"):
        run_recipe(out)
    if args.part in ("fit", "all"):
        run_fit(out, args.chips.split(","), args.dtypes.split(","))
    if args.part == "gpu":
        run_split(out, "gpu_split.jsonl", "h100", "h100:4")
    text = tables(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.md").write_text(text)
    print(text)
    if args.publish:
        from _results import publish
        files = [f for f in ("split.jsonl", "gpu_split.jsonl", "fit.jsonl", "recipe.jsonl", "tables.md")
                 if (out / f).exists()]
        print(f"published to {publish(out, args.publish, files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
