"""Benchmark the real training step (and the LeNet MNIST epoch, the input pipeline) against PyTorch peers.

    alexnet-jax bench [--model M ...] [--batch B] [--dtype float32|bfloat16] [--mesh data=..,model=..]
                      [--steps N] [--peer] [--force-host-devices N]
    alexnet-jax bench --lenet-epoch [--mnist-dir ../shared/data/mnist] [--chunks 1,12,468]
    alexnet-jax bench --input-pipeline [--images ../shared/data/imagenet_samples/imagenet_samples_100.tar]
    alexnet-jax bench --lrn

Models: presets alexnet (227), alexnet_owt (224), lenet5 (32), alexnet_cifar (alexnet at 32, width 1.0,
10 classes), or any registry model (--input-size / --width / --num-classes override).  Prints a table,
then ONE JSON object as the last line (keys: alexnet_jax/bench.py; with one model its numbers are also at
the top level: compile_seconds, step_seconds_median, images_per_second, mfu, peak_memory_bytes,
macs_per_image, device).  Several models run one per subprocess (clean memory high-water marks).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


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
    p.add_argument("--force-host-devices", type=int, metavar="N",
                   help="set XLA_FLAGS=--xla_force_host_platform_device_count=N before JAX starts (CPU)")
    p.add_argument("--peer", action="store_true", help="also run the PyTorch peers and print ours/peer")
    p.add_argument("--no-peer", action="store_true", help="--lenet-epoch: run neither the peer nor the twin")
    p.add_argument("--peer-dir", help="PyTorch peers (default: <repo>/../shared/peers)")
    p.add_argument("--peer-device", choices=["cpu", "cuda"],
                   help="device for the peers (default: torch's choice)")
    p.add_argument("--peer-no-compile", action="store_true",
                   help="skip the torch.compile variants of torch_alexnet")
    p.add_argument("--threads", type=int,
                   help="threads for the peers (OMP_NUM_THREADS / torch.set_num_threads; default: the CPU "
                        "cores available to this process, which is what XLA:CPU uses)")
    p.add_argument("--no-isolate", action="store_true", help="run several models in this process")
    p.add_argument("--lenet-epoch", action="store_true",
                   help="time one MNIST epoch of lenet5 vs the peer and vs its torch twin")
    p.add_argument("--mnist-dir", help="MNIST IDX files (default: <repo>/../shared/data/mnist)")
    p.add_argument("--chunks", default="", help="--lenet-epoch: steps per dispatch K, comma list (default 1; "
                                                "K <= 16 is one unrolled lax.scan, more is a while loop)")
    p.add_argument("--lr", type=float, help="learning rate (default 0.01; --lenet-epoch 0.05 like the peer)")
    p.add_argument("--input-pipeline", action="store_true", help="decode + augment img/s per CPU core")
    p.add_argument("--images", help="JPEGs: a tar or a folder (default: imagenet_samples_100.tar)")
    p.add_argument("--lrn", action="store_true", help="compare LRN formulations (speed, exactness)")
    p.add_argument("--profile", action="store_true",
                   help="also trace each model's step (jax.profiler) and print the top ops and per-layer shares")
    p.add_argument("--out", help="also write the final JSON object to this file")


def _threads(args) -> int:
    if args.threads:
        return args.threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _emit(obj: dict, args, table: str | None = None) -> int:
    if table:
        print(table, flush=True)
    obj["load_average"] = _load()
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
                    ("--force-host-devices", args.force_host_devices), ("--lr", args.lr)):
        if v is not None:
            argv += [flag, str(v)]
    return argv


def run(args) -> int:
    if args.force_host_devices:
        from alexnet_jax.bench import force_host_devices
        force_host_devices(args.force_host_devices)
    from alexnet_jax import bench

    peer_dir = args.peer_dir or str(bench.default_peer_dir())
    threads = _threads(args)

    if args.lenet_epoch:
        mnist = args.mnist_dir or str(bench.default_data_dir("mnist"))
        chunks = [int(c) for c in args.chunks.split(",") if c.strip()] or None
        peer = twin = None
        if not args.no_peer:   # both before ours, each in its own process
            load_before = _load()
            peer = bench.run_lenet_peer(mnist, peer_dir, threads)
            twin = bench.run_lenet_twin(mnist, threads, batch=args.batch)
        ours = bench.lenet_epoch(mnist, batch=args.batch, chunks=chunks, lr=args.lr or 0.05, dtype=args.dtype)
        ours["peer"], ours["twin"] = peer, twin
        if not args.no_peer:
            ours["load_average_before"] = load_before
        lines = [f"{'lenet5 epoch':<28}{'K/dispatch':>11}{'epoch s':>10}{'img/s':>11}"]
        for r in ours["runs"]:
            lines.append(f"{'ours (jax)':<28}{r['steps_per_dispatch']:>11}{r['epoch_seconds']:>10.3f}"
                         f"{r['images_per_second']:>11.1f}  {r['how']}")
        for key, label, other in (("peer", "peer torch_lenet_cpu.py", peer),
                                  ("twin", "twin of lenet5 (torch)", twin)):
            ok = other is not None and "images_per_second" in other
            ours[f"ratio_vs_{key}"] = ours["images_per_second"] / other["images_per_second"] if ok else None
            if ok:
                lines.append(f"{label:<28}{'1':>11}{other['epoch_seconds']:>10.3f}"
                             f"{other['images_per_second']:>11.1f}")
            elif other is not None:
                lines.append(f"{key} not run: {other.get('skipped') or other.get('error')}")
        for key in ("peer", "twin"):
            if ours[f"ratio_vs_{key}"] is not None:
                lines.append(f"ours/{key}: {ours[f'ratio_vs_{key}']:.2f}x  (threads: ours {ours['threads']} cores, "
                             f"{key} {ours[key].get('threads')})")
        return _emit(ours, args, "\n".join(lines))

    if args.input_pipeline:
        images = args.images or str(bench.default_data_dir("imagenet_samples") / "imagenet_samples_100.tar")
        r = bench.input_pipeline(images, input_size=args.input_size or 224)
        table = (f"alexnet preprocessing of {r['images']} JPEGs (median {r['median_source_size'][0]}x"
                 f"{r['median_source_size'][1]}) on one core:\n"
                 f"  decode+resize+centre crop 256: {r['decode_images_per_second']:8.1f} img/s\n"
                 f"  mean, crop, flip, lighting:    {r['augment_images_per_second']:8.1f} img/s\n"
                 f"  together:                      {r['images_per_second_per_core']:8.1f} img/s per core\n"
                 f"  a GPU step at {r['needed_images_per_second']:.0f} img/s needs "
                 f"{r['cores_needed']:.0f} cores")
        return _emit(r, args, table)

    if args.lrn:
        r = bench.compare_lrn()
        lines = [f"{'shape':<20}{'variant':<28}{'fwd ms':>9}{'fwd+bwd ms':>12}{'rel err':>10}"
                 f"{'grad diff':>11}"]
        for shape, row in r.items():
            for name, v in row.items():
                lines.append(f"{shape:<20}{name:<28}{v['forward_ms']:>9.2f}{v['backward_ms']:>12.2f}"
                             f"{v['max_rel_err_vs_float64']:>10.1e}{v['grad_max_rel_diff_vs_layers_lrn']:>11.1e}")
        return _emit({"mode": "lrn", "results": r}, args, "\n".join(lines))

    specs = [bench.resolve_model(m, input_size=args.input_size, width=args.width,
                                 num_classes=args.num_classes) for m in args.model]
    mesh_shape = bench.parse_mesh(args.mesh)
    peers = None
    if args.peer:  # before our models, so that JAX does not hold the GPU's memory while torch runs
        peers = bench.run_peers(specs, batch=args.batch, steps=args.steps, peer_dir=peer_dir,
                                device=args.peer_device, threads=threads, compile_=not args.peer_no_compile,
                                dtype=args.dtype)
    results = []
    if len(specs) > 1 and not args.no_isolate:
        for s in specs:
            cmd = [sys.executable, "-m", "alexnet_jax.cli"] + _child_argv(args, s.name)
            r = bench._run_json(cmd, env=bench._thread_env(None), timeout=3600)
            r.pop("cmd", None)
            results.append(r if "error" in r or "results" not in r else r["results"][0])
    else:
        for s in specs:
            results.append(bench.bench_step(s, batch=args.batch, dtype=args.dtype, mesh_shape=mesh_shape,
                                            steps=args.steps, warmup=args.warmup,
                                            peak_tflops=args.peak_tflops, lr=args.lr or 0.01))
    profiles = None
    if args.profile:
        profiles = [bench.profile_step(s, batch=args.batch, dtype=args.dtype, mesh_shape=mesh_shape)
                    for s in specs]
    ok = [r for r in results if "error" not in r]
    ratios = bench.peer_ratios(ok, peers) if peers else {}
    out = {"mode": "step", "device": ok[0]["device"] if ok else None,
           "platform": ok[0]["platform"] if ok else None, "results": results, "peers": peers,
           "ratios": ratios}
    if len(results) == 1 and ok:
        out = {**results[0], **out}
    if profiles:
        out["profiles"] = profiles
    lines = [bench.format_step_table(results, ratios)]
    for prof in profiles or []:
        if "error" in prof:
            lines.append(f"profile: {prof['error']}")
            continue
        lines.append(f"profile of {prof['model']} (batch {prof['batch']}): op time {prof['op_ms_total_per_step']:.0f} "
                     f"ms/step summed over threads, wall {prof['step_seconds_wall_traced'] * 1e3:.0f} ms/step")
        for o in prof["per_layer"][:12]:
            lines.append(f"  {o['share'] * 100:5.1f}%  {o['ms_per_step']:8.1f} ms  {o['layer']}")
    if peers:
        for k, v in peers.items():
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
