#!/usr/bin/env python
"""Train one model on the same data with different device splits and compare what each costs.

    python experiments/compare_splits.py [--out runs/compare_splits] [--publish compare_splits_cpu] \\
        [--model alexnet] [--input-size 64] [--width 0.25] [--batch 32] [--steps 30] [--devices 4]

Splits (mesh data x model, see alexnet_jax/parallel.py):
  1x1  one device
  1x2  the 2012 two-column split: column m of conv1..fc7 on device m (one-column nets: data-parallel)
  2x1  two-way data parallel: every device holds the whole net and half the batch
  2x2  both (only with >= 4 devices)

Every split starts from the same parameters and sees the same batches (synthetic, fixed seed; or the
first --steps batches of --dataset), so their loss curves must coincide.  Written to --out (default
runs/compare_splits): table.md, compare.png (loss curves + costs) and results.json (every number);
--publish NAME also copies them to experiments/results/NAME.

On CPU the script forces --devices host devices itself (XLA_FLAGS, set before JAX starts): those
"devices" share the same CPU cores, so timing on forced host devices is not GPU timing.  On GPU/TPU
the real devices are used.
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

SPLITS = [("1x1", 1, 1, "one device"), ("1x2", 1, 2, "column split (2012)"),
          ("2x1", 2, 1, "data parallel"), ("2x2", 2, 2, "data x column")]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", default="runs/compare_splits", help="output directory (default runs/compare_splits)")
    p.add_argument("--publish", metavar="NAME", help="also copy the results to experiments/results/NAME")
    p.add_argument("--model", default="alexnet", help="model name (alexnet_jax.models.MODELS)")
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--width", type=float, default=0.25, help="channel width multiplier")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=32, help="global batch size")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--devices", type=int, default=4, help="forced host devices on CPU (default 4)")
    p.add_argument("--dataset", help="train on the first --steps batches of this prepared dataset instead")
    p.add_argument("--data-dir", default="", help="TFDS data dir for --dataset")
    return p.parse_args(argv)


def synthetic_batches(args, channels: int = 3):
    """A learnable task: each class is a fixed random pattern plus noise.  Same seed, same batches."""
    import numpy as np
    rng = np.random.default_rng(args.seed)
    s = args.input_size
    protos = rng.normal(size=(args.num_classes, s, s, channels)).astype(np.float32)
    out = []
    for _ in range(args.steps):
        y = rng.integers(0, args.num_classes, args.batch).astype(np.int32)
        x = 0.5 * protos[y] + rng.normal(size=(args.batch, s, s, channels)).astype(np.float32)
        out.append({"image": x, "label": y})
    return out


def split_trainer(config, mesh, steps: int, synthetic):
    """The Trainer of one split and the batches it steps through: `synthetic` ones on a Trainer without data,
    or (None) the first `steps` uint8 batches of the run builder's loader (the loader's own order for this
    seed, the same on every split), scaled on the device inside the step."""
    import itertools

    from alexnet_jax.run import build_run
    from alexnet_jax.trainer import Trainer

    if synthetic is not None:
        return Trainer.build(config, mesh, steps_per_epoch=max(1, len(synthetic))), synthetic
    with build_run(config, mesh, evaluation=False, prefetch=0) as run:
        if run.steps_per_epoch < steps:
            raise SystemExit(f"{config.dataset}[{config.train_split}] has {run.steps_per_epoch} batches of "
                             f"{config.batch_size}; lower --steps or --batch")
        return run.trainer, list(itertools.islice(run.train_loader, steps))


def run_split(config, d: int, m: int, steps: int, synthetic=None):
    import jax
    import numpy as np

    from alexnet_jax import comms, parallel

    trainer, batches = split_trainer(config, parallel.make_mesh(d, m), steps, synthetic)
    mesh, state = trainer.mesh, trainer.init()

    dev0 = mesh.devices.flat[0]

    def bytes_on_dev0(tree) -> int:
        return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
                   if s.device == dev0)

    param_bytes, opt_bytes = bytes_on_dev0(state.params), bytes_on_dev0(state.opt_state)
    t = time.perf_counter()
    compiled = trainer.train_step.lower(state, trainer.global_batch(batches[0])).compile()
    compile_s = time.perf_counter() - t
    mem = compiled.memory_analysis()
    mem_d = {k: int(getattr(mem, k, 0) or 0) for k in ("temp_size_in_bytes", "argument_size_in_bytes",
                                                       "output_size_in_bytes", "alias_size_in_bytes",
                                                       "generated_code_size_in_bytes")} if mem else {}
    report = comms.analyze(compiled, mesh)
    losses, times = [], []
    for b in batches:    # not the run loop: every split steps through the same batches, each step timed
        gb = trainer.global_batch(b)
        jax.block_until_ready(gb)
        t = time.perf_counter()
        state, metrics = compiled(state, gb)
        loss = float(metrics["loss"])                      # waits for the step
        times.append(time.perf_counter() - t)
        losses.append(loss)
    step_s = statistics.median(times[1:] if len(times) > 1 else times)
    sent = report.sent_by_axis()
    return {
        "mesh": {"data": d, "model": m}, "devices": d * m, "losses": losses, "step_seconds": times,
        "median_step_s": step_s, "images_per_s": config.batch_size / step_s, "compile_s": compile_s,
        "param_bytes_device0": param_bytes, "opt_state_bytes_device0": opt_bytes,
        "memory_analysis": mem_d,
        "mem_temp_arg_out": sum(mem_d.get(k, 0) for k in ("temp_size_in_bytes", "argument_size_in_bytes",
                                                          "output_size_in_bytes")) if mem_d else None,
        "comm_sent_per_step": {"model": sent.get("model", 0.0), "data": sent.get("data", 0.0),
                               "data+model": sent.get("data+model", 0.0)},
        "comm_per_image": {f"{a}|{layer}|{op}": v for (a, layer, op), v in sorted(
            comms.bytes_per_image(report, config.batch_size).items(),
            key=lambda kv: (kv[0][0], "bwd" in kv[0][2], comms.LAYERS.index(kv[0][1])
                            if kv[0][1] in comms.LAYERS else 99)) if v},
        "comms_table": comms.traffic_table(report, config.batch_size),
        "final_params_sum": float(np.sum([np.sum(np.asarray(jax.device_get(x), np.float64))
                                          for x in jax.tree.leaves(state.params)])),
    }


def mb(x) -> str:
    return "-" if x is None else f"{x / 2**20:.2f}"


def kb(x) -> str:
    return f"{x / 1024:.1f}" if x else "0"


def write_table(res: dict, path: Path) -> str:
    lines = [f"# Device splits: {res['model']} (input {res['input_size']}, width {res['width']}), "
             f"batch {res['batch']}, {res['steps']} steps, {res['data']}", "",
             f"Backend: **{res['backend']}** ({res['device_kind']}), {res['device_count']} devices.", ""]
    lines += [f"> {w}" for w in res["warnings"]] + [""]
    lines += ["| split | devices | median step (ms) | img/s | compile (s) | params/device (MB) | "
              "XLA mem/device (MB): temp+arg+out | comm/step, model axis (KB) | comm/step, data axis (KB) | "
              "max loss diff vs 1x1 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["splits"].items():
        c = r["comm_sent_per_step"]
        lines.append(f"| {name} {r['label']} | {r['devices']} | {1000 * r['median_step_s']:.1f} | "
                     f"{r['images_per_s']:.0f} | {r['compile_s']:.1f} | {mb(r['param_bytes_device0'])} | "
                     f"{mb(r['mem_temp_arg_out'])} | {kb(c['model'])} | {kb(c['data'] + c['data+model'])} | "
                     f"{r['max_rel_loss_diff_vs_1x1']:.1e} |")
    lines += ["", "Columns: median wall time of one train step after compilation (the first step excluded); "
              "img/s = batch / median step; compile = lower + compile of the train step; params/device = "
              "bytes of parameter shards on device 0 (the momentum buffers take the same again); XLA mem = "
              "`compiled.memory_analysis()` temp + argument + output bytes of the per-device program, a "
              "compile-time estimate, not a measured peak (the donated state is counted in both argument "
              "and output: see alias bytes in results.json); comm/step = bytes each device sends (= "
              "receives) per step along that mesh axis, from the compiled HLO (alexnet_jax/comms.py, ring "
              "accounting); data-axis traffic of one-column nets on 2x2 runs over both axes and is counted "
              "there.  Loss diff = max over steps of |loss - loss(1x1)| / loss(1x1).", ""]
    final = res["splits"]["1x1"]["losses"][-1]
    if final > 0.9 * math.log(res.get("num_classes", 10)):
        lines += [f"The loss is still near chance (ln {res.get('num_classes', 10)} = "
                  f"{math.log(res.get('num_classes', 10)):.2f}) after {res['steps']} steps: with the paper's "
                  "N(0, 0.01) init and biases of 1 the outputs barely depend on the input at first.  What "
                  "matters here is that every split gives the same curve.", ""]
    col = res["splits"].get("1x2")
    if col and col["comm_per_image"]:
        lines += ["Column-split traffic per image (bytes each device sends, 1x2):", "",
                  "| axis | layer | op | bytes/image | floats/image |", "|---|---|---|---|---|"]
        for k, v in col["comm_per_image"].items():
            a, layer, op = k.split("|")
            lines.append(f"| {a} | {layer} | {op} | {v:,.0f} | {v / 4:,.0f} |")
        lines.append("")
    text = "\n".join(lines)
    path.write_text(text)
    return text


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(res["splits"])
    rs = [res["splits"][n] for n in names]
    fig = plt.figure(figsize=(15, 8))
    ax = fig.add_subplot(2, 3, 1)
    styles = ["-", "--", ":", "-."]
    for i, (n, r) in enumerate(zip(names, rs, strict=True)):
        ax.plot(range(1, len(r["losses"]) + 1), r["losses"], styles[i % 4], lw=2.5 - 0.5 * i,
                label=f"{n} {r['label']}")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("loss: the same on every split")
    ax.legend(fontsize=8)
    bars = [("median step (ms)", [1000 * r["median_step_s"] for r in rs]),
            ("compile (s)", [r["compile_s"] for r in rs]),
            ("params / device (MB)", [r["param_bytes_device0"] / 2**20 for r in rs]),
            ("XLA mem / device (MB)\ntemp+arg+out", [(r["mem_temp_arg_out"] or 0) / 2**20 for r in rs])]
    for k, (title, vals) in enumerate(bars):
        a = fig.add_subplot(2, 3, 2 + k)
        a.bar(names, vals, color=["C0", "C1", "C2", "C3"][:len(names)])
        a.set_title(title)
    a = fig.add_subplot(2, 3, 6)
    model = [r["comm_sent_per_step"]["model"] / 1024 for r in rs]
    data = [(r["comm_sent_per_step"]["data"] + r["comm_sent_per_step"]["data+model"]) / 1024 for r in rs]
    a.bar(names, model, label="model axis (column exchange)")
    a.bar(names, data, bottom=model, label="data axis (gradient all-reduce)")
    a.set_title("sent per device per step (KB)")
    a.legend(fontsize=8)
    note = " (forced host devices: not GPU timing)" if res["forced_host_devices"] else ""
    fig.suptitle(f"{res['model']} input {res['input_size']} width {res['width']} batch {res['batch']} on "
                 f"{res['backend']}{note}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:   # must precede JAX's backend start
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()
    import jax
    import numpy as np

    from alexnet_jax.config import Config

    backend = jax.default_backend()
    forced = backend == "cpu"
    warnings = []
    if forced:
        warnings.append(f"CPU backend: {jax.device_count()} forced host devices (XLA_FLAGS="
                        f"{os.environ['XLA_FLAGS']}) share the same CPU cores; timing on forced host devices "
                        f"is not GPU timing.")
        warnings.append("The CPU was shared with other jobs while this ran: step and compile times are "
                        "indicative only; bytes, memory estimates and losses are exact.")
    config = Config(model=args.model, num_classes=args.num_classes, input_size=args.input_size,
                    width=args.width, batch_size=args.batch, lr=args.lr, seed=args.seed,
                    dataset=args.dataset or "digits", data_dir=args.data_dir, augment="none")
    if args.dataset:
        synthetic, data = None, f"first {args.steps} batches of {args.dataset}"
    else:
        channels = 1 if args.model.startswith("lenet") else 3
        synthetic, data = synthetic_batches(args, channels), f"synthetic batches (seed {args.seed})"
    splits = [s for s in SPLITS if s[1] * s[2] <= jax.device_count()]
    res = {"model": args.model, "input_size": args.input_size, "width": args.width, "batch": args.batch,
           "num_classes": args.num_classes,
           "steps": args.steps, "lr": args.lr, "data": data, "backend": backend,
           "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
           "forced_host_devices": forced, "xla_flags": os.environ.get("XLA_FLAGS", ""), "warnings": warnings,
           "jax_version": jax.__version__, "splits": {}}
    for w in warnings:
        print("NOTE:", w, flush=True)
    for name, d, m, label in splits:
        print(f"[{name}] {label} ...", flush=True)
        r = run_split(config, d, m, args.steps, synthetic)
        r["label"] = label
        res["splits"][name] = r
        print(f"[{name}] median step {1000 * r['median_step_s']:.1f} ms, compile {r['compile_s']:.1f} s, "
              f"final loss {r['losses'][-1]:.4f}", flush=True)
    ref = np.array(res["splits"]["1x1"]["losses"])
    for r in res["splits"].values():
        r["max_rel_loss_diff_vs_1x1"] = float(np.max(np.abs(np.array(r["losses"]) - ref) / np.abs(ref)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    text = write_table(res, out / "table.md")
    plot(res, out / "compare.png")
    print(text)
    print(f"wrote {out / 'table.md'}, {out / 'compare.png'}, {out / 'results.json'}")
    if args.publish:
        from _results import publish
        print(f"published to {publish(out, args.publish, ['table.md', 'compare.png', 'results.json'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
