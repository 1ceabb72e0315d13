"""The PyTorch side of `alexnet-jax bench`, run in a subprocess (torch is the optional extra `peer`): the
twins of our models (torch_lenet.py, torch_cifar.py: the same function as our model, written the way a
careful torch user would write it, so that a ratio against it compares implementations, not models,
timed in every torch configuration of torch_configs.py), the machine's matmul rate and the shipped peer.

    python -m alexnet_jax.bench.torch_twins lenet MNIST_DIR [--batch 128] [--epochs 3] [--threads 2]
                                                            [--no-compile] [--amp] [--subsampling S]
    python -m alexnet_jax.bench.torch_twins cifar [--batch 128] [--steps 10] [--warmup 2] [--threads 2]
                                                  [--device cpu] [--no-compile] [--amp] [--profile]
    python -m alexnet_jax.bench.torch_twins matmul [--size 4096] [--threads 2]
    python -m alexnet_jax.bench.torch_twins subsampling [--batch 128] [--rounds 15] [--threads 2]
    python -m alexnet_jax.bench.torch_twins alexnet --peer-dir ../shared/peers [--batch 512] [--steps 30]
                                                                                 [--no-compile]

`matmul`: the achievable matmul rate of this machine through torch (float32 and bfloat16), the yardstick
for the FLOP/s the training steps reach.

`alexnet`: runs ../shared/peers/torch_alexnet.py's `measure` for its variants (a peer, not a twin).  That
script needs torchvision only for torchvision's net; without torchvision only the two-column 2012 net
runs and the skipped variant is listed.  The last line printed is always one JSON object.

These modules import neither jax nor the package's models (the subprocess stays light).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import torch

from alexnet_jax.bench.torch_cifar import profile_cifar, run_cifar
from alexnet_jax.bench.torch_configs import LAYOUTS
from alexnet_jax.bench.torch_lenet import FASTEST, SUBSAMPLING, compare_subsampling, run_lenet


def matmul_rate(size: int = 4096, dtype: str = "float32", reps: int = 5) -> dict:
    """FLOP/s of a (size x size) @ (size x size) torch.mm in `dtype`: one warm-up call, then the median of
    `reps` calls (2 size^3 FLOP each)."""
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(dt)
    b = torch.randn(size, size, generator=g).to(dt)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"framework": "torch", "dtype": dtype, "size": size, "reps": reps, "seconds_median": med,
            "flops_per_second": 2 * size ** 3 / med, "threads": torch.get_num_threads(), "torch": torch.__version__}


def load_peer_module(peer_dir: str, name: str = "torch_alexnet"):
    path = os.path.join(peer_dir, f"{name}.py")
    if not os.path.exists(path):
        raise FileNotFoundError(f"peer {path} not found (pass --peer-dir)")
    spec = importlib.util.spec_from_file_location(f"_peer_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_alexnet_peer(peer_dir: str, batch: int, steps: int, warmup: int, device: str | None,
                     compile_: bool, variants: list[str] | None) -> dict:
    """Run ../shared/peers/torch_alexnet.py's `measure` for what is available here."""
    peer = load_peer_module(peer_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    amp = device == "cuda"
    args = argparse.Namespace(batch=batch, steps=steps, warmup=warmup, device=device)
    try:
        import torchvision  # lazy: optional, not in the "peer" extra (torch only)
        tv = lambda: torchvision.models.alexnet()  # noqa: E731
    except ImportError:
        tv = None
    models = {"torchvision_alexnet": (tv, 224), "alexnet_2012_two_column": (peer.two_column_alexnet, 227)}
    results, skipped, errors = {}, {}, {}
    for name, (make, size) in models.items():
        if variants and name not in variants:
            continue
        if make is None:
            skipped[name] = "torchvision is not installed"
            continue
        for compiled in ((False, True) if compile_ else (False,)):
            key = f"{name}{'_compiled' if compiled else ''}{'_bf16' if amp else '_fp32'}"
            try:
                ips = peer.measure(make(), size, args, amp, compiled)
            except Exception as e:  # noqa: BLE001 - report and go on with the other variants
                errors[key] = f"{type(e).__name__}: {e}"[:400]
                continue
            results[key] = round(ips, 1)
            print(f"{key:48s} batch {batch:4d} {ips:10.0f} img/s", flush=True)
            if device == "cuda":
                torch.cuda.empty_cache()
    return {"peer": "torch_alexnet", "device": device, "threads": torch.get_num_threads(), "batch": batch,
            "steps": steps, "images_per_second": results, "skipped": skipped, "errors": errors,
            "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alexnet_jax.bench.torch_twins")
    sub = p.add_subparsers(dest="what", required=True)
    lp = sub.add_parser("lenet")
    lp.add_argument("mnist_dir")
    lp.add_argument("--batch", type=int, default=128)
    lp.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up epoch (best reported)")
    lp.add_argument("--subsampling", choices=(FASTEST, *SUBSAMPLING), default=FASTEST,
                    help="the trainable subsampling's torch idiom (default: the fastest per layout, measured first)")
    c = sub.add_parser("cifar")
    c.add_argument("--batch", type=int, default=128)
    c.add_argument("--steps", type=int, default=10)
    c.add_argument("--warmup", type=int, default=2)
    c.add_argument("--device", default="cpu")
    c.add_argument("--width", type=float, default=1.0)
    c.add_argument("--num-classes", type=int, default=10)
    c.add_argument("--layouts", default=",".join(LAYOUTS), help="comma list of contiguous / channels_last")
    c.add_argument("--profile", action="store_true", help="also torch.profiler the fastest configuration")
    for q in (lp, c):
        q.add_argument("--no-compile", action="store_true", help="eager configurations only")
        q.add_argument("--amp", action="store_true", help="every configuration under bf16 autocast")
    m = sub.add_parser("matmul")
    m.add_argument("--size", type=int, default=4096)
    m.add_argument("--reps", type=int, default=5)
    m.add_argument("--dtypes", default="float32,bfloat16")
    s = sub.add_parser("subsampling")
    s.add_argument("--batch", type=int, default=128)
    s.add_argument("--rounds", type=int, default=15)
    s.add_argument("--steps", type=int, default=5, help="steps of each idiom per round")
    s.add_argument("--amp", action="store_true", help="under bf16 autocast")
    a = sub.add_parser("alexnet")
    a.add_argument("--peer-dir", required=True)
    a.add_argument("--batch", type=int, default=512)
    a.add_argument("--steps", type=int, default=30)
    a.add_argument("--warmup", type=int, default=8)
    a.add_argument("--device")
    a.add_argument("--no-compile", action="store_true")
    a.add_argument("--variants", help="comma list: torchvision_alexnet, alexnet_2012_two_column")
    for q in (lp, c, m, s, a):
        q.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "lenet":
        res = run_lenet(args.mnist_dir, args.batch, args.epochs, compile_=not args.no_compile, amp=args.amp,
                        subsampling=args.subsampling)
    elif args.what == "cifar":
        res = run_cifar(args.batch, args.steps, args.warmup, args.device, compile_=not args.no_compile,
                        amp=args.amp, layouts=[v.strip() for v in args.layouts.split(",") if v.strip()],
                        width=args.width, num_classes=args.num_classes)
        if args.profile and res["fastest"]:
            best = next(r for r in res["runs"] if r.get("config") == res["fastest"])
            res["profile"] = profile_cifar(best, args.batch, device=args.device, width=args.width,
                                           num_classes=args.num_classes)
    elif args.what == "matmul":
        res = {"runs": [matmul_rate(args.size, d.strip(), args.reps) for d in args.dtypes.split(",") if d.strip()]}
    elif args.what == "subsampling":
        res = compare_subsampling(args.batch, args.rounds, args.steps, amp=args.amp)
    else:
        res = run_alexnet_peer(args.peer_dir, args.batch, args.steps, args.warmup, args.device,
                               not args.no_compile,
                               [v.strip() for v in args.variants.split(",")] if args.variants else None)
    print(json.dumps(res))
    runs = res.get("runs")
    return 0 if runs is None or any("error" not in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
