"""Benchmark the real training step (and the LeNet MNIST epoch, the input pipeline) against PyTorch peers.

    alexnet-jax bench [--model M ...] [--batch B] [--dtype float32|bfloat16] [--mesh data=..,model=..]
                      [--steps N] [--peer] [--force-host-devices N]
    alexnet-jax bench --lenet-epoch [--mnist-dir ../shared/data/mnist] [--chunks 1,12,468]
    alexnet-jax bench --input-pipeline [--store raw256|jpeg256|jpeg] [--threads N] [--records N]
                      [--images ../shared/data/imagenet_samples/imagenet_samples_100.tar]

Models: presets alexnet (227), alexnet_owt (224), lenet5 (32), alexnet_cifar (alexnet at 32, width 1.0,
10 classes), or any registry model (--input-size / --width / --num-classes override).  Prints a table,
then ONE JSON object as the last line (keys: alexnet_jax/bench/step.py; with one model its numbers are also at
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
    p.add_argument("--epochs", type=int, default=3,
                   help="--lenet-epoch: timed epochs of ours (after one warm-up epoch) and of the twin (after one "
                        "warm-up step); the best of each is compared (default 3; the shipped peer times one)")
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
                   help="also trace each model's step (jax.profiler) and print the top ops and per-layer shares")
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
            raise ValueError(f"bad --mesh {text!r}: expected data=N,model=M")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in out:
            raise ValueError(f"bad --mesh axis {k!r}: the axes are data and model")
        out[k] = int(v)
    return out["data"], out["model"]


def run(args) -> int:
    from alexnet_jax.bench import lenet, peers, step

    peer_dir = args.peer_dir or str(peers.default_peer_dir())
    threads = _threads(args)

    if args.lenet_epoch:
        mnist = args.mnist_dir or str(peers.default_data_dir("mnist"))
        chunks = [int(c) for c in args.chunks.split(",") if c.strip()] or None
        peer = twin = None
        if not args.no_peer:   # both before ours, each in its own process
            load_before = _load()
            peer = peers.run_lenet_peer(mnist, peer_dir, threads)
            twin = peers.run_lenet_twin(mnist, threads, batch=args.batch, epochs=args.epochs)
        ours = lenet.lenet_epoch(mnist, batch=args.batch, chunks=chunks, lr=args.lr or 0.05, dtype=args.dtype,
                                 epochs=args.epochs + 1)
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
        from alexnet_jax.bench import inputs
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
        peer_results = peers.run_peers([{"name": m, "input_size": c.input_size} for m, c in configs.items()],
                                       batch=args.batch, steps=args.steps, peer_dir=peer_dir,
                                       device=args.peer_device, threads=threads,
                                       compile_=not args.peer_no_compile, dtype=args.dtype)
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
        from alexnet_jax.bench import profile
        profiles = [profile.profile_step(c, name=m) for m, c in configs.items()]
    ok = [r for r in results if "error" not in r]
    ratios = peers.peer_ratios(ok, peer_results) if peer_results else {}
    out = {"mode": "step", "device": ok[0]["device"] if ok else None,
           "platform": ok[0]["platform"] if ok else None, "results": results, "peers": peer_results,
           "ratios": ratios}
    if len(results) == 1 and ok:
        out = {**results[0], **out}
    if profiles:
        out["profiles"] = profiles
    lines = [step.step_table(results, ratios)]
    for prof in profiles or []:
        if "error" in prof:
            lines.append(f"profile: {prof['error']}")
            continue
        lines.append(f"profile of {prof['model']} (batch {prof['batch']}): op time {prof['op_ms_total_per_step']:.0f} "
                     f"ms/step summed over threads, wall {prof['step_seconds_wall_traced'] * 1e3:.0f} ms/step")
        for o in prof["per_layer"][:12]:
            lines.append(f"  {o['share'] * 100:5.1f}%  {o['ms_per_step']:8.1f} ms  {o['layer']}")
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
