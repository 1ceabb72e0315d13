"""Benchmark the real training step (and the LeNet MNIST epoch, the input pipeline) against PyTorch peers.

    alexnet-jax bench [--model M ...] [--batch B] [--dtype float32|bfloat16] [--mesh data=..,model=..]
                      [--steps N] [--warmup W] [--peer] [--matmul-peak] [--profile] [--force-host-devices N]
    alexnet-jax bench --lenet-epoch [--peer] [--epochs N] [--dtype ...] [--mnist-dir ../shared/data/mnist]
                      [--chunks 1,12,468]
    alexnet-jax bench --input-pipeline [--store raw256|jpeg256|jpeg] [--threads N] [--records N]
                      [--images ../shared/data/imagenet_samples/imagenet_samples_100.tar]

Models: presets alexnet (227), alexnet_owt (224), lenet5 (32), alexnet_cifar (alexnet at 32, width 1.0,
10 classes), or any registry model (--input-size / --width / --num-classes override).  Prints a table,
then ONE JSON object as the last line (keys: alexnet_jax/bench/step.py; with one model its numbers are also at
the top level: compile_seconds, step_seconds_median, images_per_second, mfu, peak_memory_bytes,
macs_per_image, device).  Several models run one per subprocess (clean memory high-water marks).

--peer times PyTorch in the same invocation, on the same number of threads (the cores XLA:CPU uses):
for `alexnet_cifar` and `--lenet-epoch` the exact torch twins (alexnet_jax/bench/torch_*.py) in
every configuration, eager and torch.compile, contiguous and channels_last, float32, or under bf16
autocast with --dtype bfloat16; ours and theirs follow the same protocol (alexnet_jax/bench/protocol.py:
the same warm-up, timed repetitions and statistic, recorded on both sides in the JSON), and the ratios
are ours / torch against the fastest configuration and against each.  --matmul-peak measures this
machine's achievable matmul rate in both frameworks and reports every step's FLOP/s as a share of it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from alexnet_jax.bench import lenet, peak, peers, profile, step
from alexnet_jax.bench.peak import share_of_peak
from alexnet_jax.errors import UsageError
from alexnet_jax.workdir import check_writable


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", nargs="+", default=["alexnet"], metavar="M",
                   help="presets alexnet, alexnet_owt, lenet5, alexnet_cifar, or registry models")
    p.add_argument("--input-size", type=int, help="override the input size (all models)")
    p.add_argument("--width", type=float, help="override the width multiplier (all models)")
    p.add_argument("--num-classes", type=int, help="override the number of classes (all models)")
    p.add_argument("--batch", type=int, default=128, help="global batch (default 128)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="compute dtype")
    p.add_argument("--mesh", default="", help="data=N,model=M (default: data over every device, model=1)")
    p.add_argument("--steps", type=int, default=10, help="timed steps after warm-up (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling (default 2)")
    p.add_argument("--peak-tflops", type=float, help="peak TFLOP/s per device for MFU (default: PEAKS table)")
    p.add_argument("--peer", action="store_true",
                   help="also time PyTorch (the exact twins in every configuration, the shipped peers) and print "
                        "ours/torch")
    p.add_argument("--peer-dir", help="PyTorch peers (default: <repo>/../shared/peers)")
    p.add_argument("--peer-device", choices=["cpu", "cuda"],
                   help="device for the peers (default: torch's choice)")
    p.add_argument("--peer-no-compile", action="store_true",
                   help="eager PyTorch only (skip every torch.compile configuration)")
    p.add_argument("--matmul-peak", action="store_true",
                   help="measure the achievable matmul FLOP/s (jax and torch, float32 and bfloat16) and report "
                        "each step's FLOP/s as a share of it")
    p.add_argument("--matmul-size", type=int, default=4096,
                   help="--matmul-peak: the square matmul's size (default 4096)")
    p.add_argument("--threads", type=int,
                   help="threads for the peers (OMP_NUM_THREADS / torch.set_num_threads; default: the CPU "
                        "cores available to this process, which is what XLA:CPU uses)")
    p.add_argument("--no-isolate", action="store_true", help="run several models in this process")
    p.add_argument("--lenet-epoch", action="store_true",
                   help="time one MNIST epoch of lenet5 vs the peer and vs its torch twin")
    p.add_argument("--mnist-dir", help="MNIST IDX files (default: <repo>/../shared/data/mnist)")
    p.add_argument("--epochs", type=int, default=3,
                   help="--lenet-epoch: timed epochs after one warm-up epoch, ours and each torch configuration; "
                        "the best of each is compared (default 3; the shipped peer runs this many processes)")
    p.add_argument("--chunks", default="", help="--lenet-epoch: steps per dispatch K, comma list (default 1; "
                                                "K <= 16 is one unrolled lax.scan, more is a while loop)")
    p.add_argument("--lr", type=float, help="learning rate (default 0.01; --lenet-epoch 0.05 like the peer)")
    p.add_argument("--input-pipeline", action="store_true",
                   help="the ImageNet loader's img/s per host core for a store, and the device augmentation's cost")
    p.add_argument("--store", default="raw256", choices=["raw256", "jpeg256", "jpeg"],
                   help="--input-pipeline: imagenet2012/raw256, imagenet2012/jpeg256 or the original JPEGs")
    p.add_argument("--records", type=int, default=3000, help="--input-pipeline: records built from the photos")
    p.add_argument("--end-to-end", action="store_true",
                   help="--input-pipeline: train --model from the store vs from one batch already on the device")
    p.add_argument("--step-seconds", type=float,
                   help="--input-pipeline: a train step's time, to report the augmentation's share of it")
    p.add_argument("--images", help="JPEGs: a tar or a folder (default: imagenet_samples_100.tar)")
    p.add_argument("--profile", action="store_true",
                   help="also trace each model's step (jax.profiler) and print the top ops and per-layer shares; "
                        "with --peer, torch.profiler on the fastest torch configuration of alexnet_cifar too")
    p.add_argument("--out", help="also write the final JSON object to this file")


def _threads(args) -> int:
    if args.threads:
        return args.threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


LOAD_WARNING = 1.5   # 1-minute load average above which timings (and the torch peers above all) mislead


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _emit(obj: dict, args, table: str | None = None) -> int:
    if table:
        print(table, flush=True)
    obj["load_average"] = _load()
    if obj["load_average"] and obj["load_average"][0] > LOAD_WARNING:
        print(f"warning: load average {obj['load_average'][0]} > {LOAD_WARNING}: other work shares this machine, "
              f"so these timings (and PyTorch's above all) are unreliable; rerun on a quiet machine",
              file=sys.stderr, flush=True)
    line = json.dumps(obj, default=float)
    if args.out:
        with open(args.out, "w") as f:
            f.write(line + "\n")
    print(line, flush=True)
    return 0


def _child_argv(args, model: str) -> list[str]:
    argv = ["bench", "--model", model, "--no-isolate", "--batch", str(args.batch), "--dtype", args.dtype,
            "--steps", str(args.steps), "--warmup", str(args.warmup)]
    for flag, v in (("--input-size", args.input_size), ("--width", args.width),
                    ("--num-classes", args.num_classes),
                    ("--mesh", args.mesh or None), ("--peak-tflops", args.peak_tflops),
                    ("--force-host-devices", getattr(args, "force_host_devices", None)), ("--lr", args.lr)):
        if v is not None:
            argv += [flag, str(v)]
    return argv


def parse_mesh(text: str | None) -> tuple[int, int]:
    """'data=1,model=2' (either may be omitted; data=-1 takes every device) -> (data, model)."""
    if not text:
        return -1, 1
    out = {"data": -1, "model": 1}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise UsageError(f"bad --mesh {text!r}: expected data=N,model=M")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in out:
            raise UsageError(f"bad --mesh axis {k!r}: the axes are data and model")
        try:
            out[k] = int(v)
        except ValueError:
            raise UsageError(f"bad --mesh {text!r}: {k}={v!r} is not a whole number of devices") from None
    return out["data"], out["model"]


def _twin_lines(label: str, twin: dict | None, vs: dict | None, unit: str) -> list[str]:
    """One line per torch configuration (its figure and ours / it), the fastest marked."""
    if not twin:
        return []
    if twin.get("skipped") or (twin.get("error") and not twin.get("runs")):
        return [f"{label} not run: {twin.get('skipped') or twin.get('error')}"]
    lines = []
    for r in twin.get("runs", []):
        if "error" in r:
            lines.append(f"  {r['config']:<34} error: {r['error'][:160]}")
            continue
        secs = r["epoch_seconds"] if unit == "epoch" else r["step_seconds_median"]
        mark = "  <- fastest torch" if r["config"] == twin.get("fastest") else ""
        ratio = f"{vs['ratio_vs_each'][r['config']]:6.2f}x" if vs else ""
        shown = f"{secs:>10.3f} s" if unit == "epoch" else f"{secs * 1e3:>9.1f} ms"
        lines.append(f"  {label + ' ' + r['config']:<44}{shown}{r['images_per_second']:>11.1f} img/s  "
                     f"ours/it {ratio}{mark}")
    return lines


def _peaks(args, threads: int) -> dict | None:
    """The achievable matmul rate in this run's precision (--matmul-peak), jax and (with --peer) torch."""
    if not args.matmul_peak:
        return None
    return peak.measure_peaks(threads, size=args.matmul_size, dtypes=(args.dtype,), torch_too=args.peer)


def _peak_lines(peaks: dict | None, dtype: str, achieved: list[tuple[str, float]]) -> list[str]:
    if not peaks or dtype not in peaks:
        return []
    e = peaks[dtype]
    fr = ", ".join(f"{k} {e[k]['flops_per_second'] / 1e9:.0f}" for k in ("jax", "jax_float32_result", "torch")
                   if k in e)
    lines = [f"achievable {dtype} matmul peak: {e['peak_flops_per_second'] / 1e9:.0f} GFLOP/s ({e['source']}; {fr})"]
    for name, fl in achieved:
        lines.append(f"  {name}: {fl / 1e9:.1f} GFLOP/s = {100 * share_of_peak(fl, peaks, dtype):.0f}% of it")
    return lines


def _lenet(args, threads: int, peer_dir: str) -> int:
    mnist = args.mnist_dir or str(peers.default_data_dir("mnist"))
    chunks = [int(c) for c in args.chunks.split(",") if c.strip()] or None
    amp = args.dtype == "bfloat16"
    peer = twin = load_before = None
    if args.peer:   # before ours, each in its own process
        load_before = _load()
        twin = peers.run_lenet_twin(mnist, threads, batch=args.batch, epochs=args.epochs,
                                    compile_=not args.peer_no_compile, amp=amp)
        peer = ({"skipped": "the shipped peer trains in float32 only"} if amp else
                {"skipped": f"the shipped peer's batch is 128 (asked {args.batch})"} if args.batch != 128 else
                peers.run_lenet_peer(mnist, peer_dir, threads, runs=args.epochs))
    ours = lenet.lenet_epoch(mnist, batch=args.batch, chunks=chunks, lr=args.lr or 0.05, dtype=args.dtype,
                             epochs=args.epochs)
    vs = peers.vs_torch(ours["images_per_second"], twin)
    ours.update(peer=peer, twin=twin, vs_torch=vs, ratio_vs_twin=vs["ratio_vs_fastest"] if vs else None,
                load_average_before=load_before)
    ok = peer is not None and (peer.get("images_per_second") or 0) > 0 and "error" not in peer
    ours["ratio_vs_peer"] = ours["images_per_second"] / peer["images_per_second"] if ok else None
    peaks = _peaks(args, threads)
    achieved = [("ours", ours["achieved_flops_per_second"])]
    if peaks:
        ours["peaks"] = peaks
        ours["share_of_peak"] = share_of_peak(ours["achieved_flops_per_second"], peaks, args.dtype)
        for r in (twin or {}).get("runs", []):
            if "error" not in r:
                r["achieved_flops_per_second"] = ours["model_flops_per_image"] * r["images_per_second"]
                r["share_of_peak"] = share_of_peak(r["achieved_flops_per_second"], peaks, args.dtype)
                achieved.append((f"torch {r['config']}", r["achieved_flops_per_second"]))
    lines = [f"{'lenet5 epoch (' + args.dtype + ')':<46}{'epoch':>12}{'img/s':>17}   "
             f"({ours['protocol']['statistic']} after {ours['protocol']['warmup']} warm-up)"]
    for r in ours["runs"]:
        lines.append(f"  {'ours (jax), K=' + str(r['steps_per_dispatch']) + ' per dispatch':<44}"
                     f"{r['epoch_seconds']:>10.3f} s{r['images_per_second']:>11.1f} img/s  {r['how']}")
    lines += _twin_lines("torch twin", twin, vs, "epoch")
    if ok:
        lines.append(f"  {'shipped peer torch_lenet_cpu.py':<44}{peer['epoch_seconds']:>10.3f} s"
                     f"{peer['images_per_second']:>11.1f} img/s  ours/it {ours['ratio_vs_peer']:6.2f}x "
                     f"(a simplified LeNet: less work per image)")
    elif peer is not None:
        lines.append(f"shipped peer not run: {peer.get('skipped') or peer.get('error')}")
    if vs:
        lines.append(f"ours / fastest torch ({vs['fastest_torch']}): {vs['ratio_vs_fastest']:.2f}x  (threads: ours "
                     f"{ours['threads']} cores, torch {twin.get('threads')})")
    lines += _peak_lines(peaks, args.dtype, achieved)
    return _emit(ours, args, "\n".join(lines))


def run(args) -> int:
    if args.out:                     # before the measurement, not after it
        check_writable(os.path.dirname(os.path.abspath(args.out)), "output folder")
    peer_dir = args.peer_dir or str(peers.default_peer_dir())
    threads = _threads(args)

    if args.lenet_epoch:
        return _lenet(args, threads, peer_dir)
    if args.input_pipeline:
        from alexnet_jax.bench import inputs  # lazy (--help); `bench` itself runs without tensorflow_datasets
        images = args.images or str(peers.default_data_dir("imagenet_samples") / "imagenet_samples_100.tar")
        if args.end_to_end:
            r = inputs.end_to_end(args.store, images, model=args.model[0], records=args.records,
                                  input_size=args.input_size or 224, width=args.width or 1.0, batch=args.batch,
                                  steps=args.steps, threads=args.threads or 0, dtype=args.dtype)
            table = (f"{r['model']} {r['input_size']} px width {r['width']} batch {r['batch']} {r['dtype']} on "
                     f"{r['device']}, {r['store']} records, {r['reader_threads']} reader threads:\n"
                     f"  fed by the loader   {r['loader_images_per_second']:10,.1f} img/s\n"
                     f"  batch on the device {r['on_device_images_per_second']:10,.1f} img/s\n"
                     f"  ratio {r['ratio']:.3f} (1.0: the step never waits for its input)")
            return _emit(r, args, table)
        r = inputs.input_pipeline(args.store, images, records=args.records, input_size=args.input_size or 224,
                                  batch=args.batch, threads=args.threads or 1, step_seconds=args.step_seconds)
        rows = [f"{r['dataset']}: {r['records']} records of {r['record_bytes_mean'] / 1024:.1f} KiB, batch "
                f"{r['batch']}, {r['threads']} reader thread(s)"]
        for kind in ("page_cache", "cold"):
            v = r[kind]
            rate = r["step_rate_images_per_second"]
            rows.append(f"  {kind.replace('_', ' '):<11} {v['images_per_second_per_core']:>10,.0f} img/s per core "
                        f"({v['images_per_second_wall']:,.0f} img/s wall); {rate:,.0f} img/s needs "
                        f"{r['cores_needed_' + kind]:.1f} cores" if v else f"  cold: {r['cold_note']}")
        if "augment" in r:
            a = r["augment"]
            share = f", {100 * a['train_share_of_step']:.1f}% of a {a['step_seconds']} s step" if "step_seconds" in a \
                else ""
            rows.append(f"  device augmentation ({a['device']}): train {1e3 * a['train_seconds_per_batch']:.1f} ms, "
                        f"eval {1e3 * a['eval_seconds_per_batch']:.1f} ms per batch{share}")
        return _emit(r, args, "\n".join(rows))

    mesh_shape = parse_mesh(args.mesh)
    configs = {m: step.bench_config(m, batch=args.batch, dtype=args.dtype, mesh=mesh_shape,
                                    input_size=args.input_size, width=args.width, num_classes=args.num_classes,
                                    lr=args.lr or 0.01) for m in args.model}
    peer_results = None
    if args.peer:  # before our models, so that JAX does not hold the GPU's memory while torch runs
        load_before = _load()
        peer_results = peers.run_peers([{"name": m, "input_size": c.input_size, "width": c.width,
                                         "num_classes": c.num_classes} for m, c in configs.items()],
                                       batch=args.batch, steps=args.steps, warmup=args.warmup, peer_dir=peer_dir,
                                       device=args.peer_device, threads=threads,
                                       compile_=not args.peer_no_compile, dtype=args.dtype, profile=args.profile)
        peer_results["load_average_before"] = load_before
    results = []
    if len(configs) > 1 and not args.no_isolate:
        for m in configs:
            cmd = [sys.executable, "-m", "alexnet_jax.cli"] + _child_argv(args, m)
            r = peers.run_json(cmd, env=peers.thread_env(None), timeout=3600)
            r.pop("cmd", None)
            results.append(r if "error" in r or "results" not in r else r["results"][0])
    else:
        for m, c in configs.items():
            results.append(step.bench_step(c, steps=args.steps, warmup=args.warmup, peak_tflops=args.peak_tflops,
                                           name=m))
    profiles = None
    if args.profile:
        profiles = [profile.profile_step(c, name=m) for m, c in configs.items()]
    ok = [r for r in results if "error" not in r]
    ratios = peers.peer_ratios(ok, peer_results) if peer_results else {}
    peaks = _peaks(args, threads)
    achieved = []
    if peaks:
        for r in ok:
            r["share_of_peak"] = share_of_peak(r["achieved_flops_per_second"], peaks, r["dtype"])
            achieved.append((f"ours {r['model']}", r["achieved_flops_per_second"]))
            twin = (peer_results or {}).get("torch_cifar") if r["model"] == "alexnet_cifar" else None
            for t in (twin or {}).get("runs", []):
                if "error" not in t:
                    t["achieved_flops_per_second"] = r["model_flops_per_step"] / t["step_seconds_median"]
                    t["share_of_peak"] = share_of_peak(t["achieved_flops_per_second"], peaks, r["dtype"])
                    achieved.append((f"torch {t['config']}", t["achieved_flops_per_second"]))
    out = {"mode": "step", "device": ok[0]["device"] if ok else None,
           "platform": ok[0]["platform"] if ok else None, "results": results, "peers": peer_results,
           "ratios": ratios, "peaks": peaks}
    if len(results) == 1 and ok:
        out = {**results[0], **out}
    if profiles:
        out["profiles"] = profiles
    lines = [step.step_table(results, ratios)]
    for r in ok:
        if r["model"] == "alexnet_cifar" and peer_results and peer_results.get("torch_cifar"):
            lines.append(f"alexnet_cifar ({r['dtype']}), {r['protocol']['statistic']} of {r['protocol']['timed']} "
                         f"after {r['protocol']['warmup']} warm-up; ours {r['step_seconds_median'] * 1e3:.1f} ms "
                         f"{r['images_per_second']:.1f} img/s")
            lines += _twin_lines("torch twin", peer_results["torch_cifar"], ratios.get("alexnet_cifar"), "step")
    if ok:
        lines += _peak_lines(peaks, ok[0]["dtype"], achieved)
    for prof in profiles or []:
        if "error" in prof:
            lines.append(f"profile: {prof['error']}")
            continue
        lines.append(f"profile of {prof['model']} (batch {prof['batch']}): op time {prof['op_ms_total_per_step']:.0f} "
                     f"ms/step summed over threads, wall {prof['step_seconds_wall_traced'] * 1e3:.0f} ms/step")
        for o in prof["per_layer"][:12]:
            lines.append(f"  {o['share'] * 100:5.1f}%  {o['ms_per_step']:8.1f} ms  {o['layer']}")
        lines.append("  convolutions and matrix products as compiled: "
                     + ", ".join(f"{n} x {k}" for k, n in prof["arithmetic_dtypes"].items()))
    tprof = ((peer_results or {}).get("torch_cifar") or {}).get("profile")
    if tprof:
        lines.append(f"torch.profiler of the twin, {tprof['config']}: self CPU "
                     f"{tprof['self_cpu_ms_total_per_step']:.0f} ms/step, wall "
                     f"{tprof['step_seconds_wall_traced'] * 1e3:.0f} ms/step")
        for o in tprof["top_ops"][:12]:
            lines.append(f"  {o['share'] * 100:5.1f}%  {o['ms_per_step']:8.1f} ms  {o['op']}")
    if peer_results:
        for k, v in peer_results.items():
            if k == "skipped":
                for name, why in v.items():
                    lines.append(f"peer skipped for {name}: {why}")
            elif isinstance(v, dict):
                if v.get("skipped"):
                    lines.append(f"{k}: skipped {v['skipped']}")
                if v.get("error") or v.get("errors"):
                    lines.append(f"{k}: {v.get('error') or v.get('errors')}")
    code = _emit(out, args, "\n".join(lines))
    return code if ok else 1
