"""PyTorch peers for `alexnet-jax bench`, run in a subprocess (torch is the optional extra `peer`).

    python -m alexnet_jax.bench_torch cifar [--batch 128] [--steps 10] [--threads 2] [--device cpu]
    python -m alexnet_jax.bench_torch alexnet --peer-dir ../shared/peers [--batch 512] [--steps 30]
                                                                          [--no-compile]

`cifar`: the CIFAR-size paper AlexNet (`alexnet` at input 32, width 1.0, 10 classes) written in torch,
mirroring `alexnet_jax.models.alexnet.AlexNet2012` layer for layer:

    conv1 3->96 5x5 stride 1 pad 2 (the small stem; both columns read the image: one conv, groups=1)
    ReLU, LRN per column, max-pool 3/2
    conv2 96->256 5x5 pad 2 groups=2, ReLU, LRN per column, max-pool 3/2
    conv3 256->384 3x3 pad 1 (reads both columns), ReLU
    conv4 384->384 3x3 pad 1 groups=2, ReLU
    conv5 384->256 3x3 pad 1 groups=2, ReLU, max-pool 3/2
    fc6 2304->4096 (each column's 2048 units read both columns: one full Linear), ReLU, dropout 0.5
    fc7 4096->4096, ReLU, dropout 0.5
    fc8 4096->10

LRN per column = torch's LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2) applied to each half of
the channels separately (torch divides alpha by size, so 5e-4 is our 1e-4 per element).  Init as K12 §5
(N(0, 0.01), biases 1 in conv2/4/5 and fc6/7).  SGD momentum 0.9, weight decay 5e-4 on kernels only (our
paper_sgd's default mask; for a constant rate torch's v = m v + g, w -= lr v is the same update).  Same
parameter count as ours (tests/test_bench.py).  Timed like ours: median of per-step times after warm-up,
synthetic data already in memory.

`alexnet`: runs ../shared/peers/torch_alexnet.py's `measure` for its variants.  That script needs
torchvision only for torchvision's net; without torchvision only the two-column 2012 net runs and the
skipped variant is listed.  The last line printed is always one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time


def _torch():
    import torch
    return torch


def cifar_two_column_alexnet(num_classes: int = 10, width: float = 1.0):
    """The torch mirror of our `alexnet` at input 32 (see the module docstring)."""
    torch = _torch()
    nn = torch.nn

    def w(n):
        return max(1, int(round(n * width)))

    c1, c2, c3, c4, c5, f = (2 * w(n) for n in (48, 128, 192, 192, 128, 2048))

    class ColumnLRN(nn.Module):
        def __init__(self, columns=2):
            super().__init__()
            self.columns = columns
            self.lrn = nn.LocalResponseNorm(5, alpha=1e-4 * 5, beta=0.75, k=2.0)

        def forward(self, x):
            return torch.cat([self.lrn(h) for h in torch.chunk(x, self.columns, dim=1)], dim=1)

    net = nn.Sequential(
        nn.Conv2d(3, c1, 5, 1, 2), nn.ReLU(), ColumnLRN(), nn.MaxPool2d(3, 2),          # 32 -> 15
        nn.Conv2d(c1, c2, 5, padding=2, groups=2), nn.ReLU(), ColumnLRN(), nn.MaxPool2d(3, 2),  # -> 7
        nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c3, c4, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(c4, c5, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2),       # -> 3
        nn.Flatten(),
        nn.Linear(3 * 3 * c5, f), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(f, f), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(f, num_classes))
    ones = {4, 10, 12, 16, 19}  # Sequential indices of conv2, conv4, conv5, fc6, fc7
    with torch.no_grad():
        for i, m in enumerate(net):
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.normal_(0.0, 0.01)
                m.bias.fill_(1.0 if i in ones else 0.0)
    return net


def num_params(net) -> int:
    return sum(p.numel() for p in net.parameters())


def paper_sgd_torch(net, lr=0.01, momentum=0.9, weight_decay=5e-4):
    torch = _torch()
    decay = [p for p in net.parameters() if p.ndim > 1]
    rest = [p for p in net.parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                            {"params": rest, "weight_decay": 0.0}], lr=lr, momentum=momentum)


def time_cifar(batch: int = 128, steps: int = 10, warmup: int = 2, device: str = "cpu",
               channels_last: bool = False, compile_: bool = False, num_classes: int = 10,
               amp: bool = False) -> dict:
    torch = _torch()
    torch.manual_seed(0)
    net = cifar_two_column_alexnet(num_classes).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    opt = paper_sgd_torch(net)
    x = torch.randn(batch, 3, 32, 32, device=device).to(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()
    net.train()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return loss

    fn = torch.compile(step) if compile_ else step
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        fn()
    sync()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"peer": "torch_cifar_two_column_alexnet", "device": device, "threads": torch.get_num_threads(),
            "channels_last": channels_last, "compiled": compile_, "amp_bf16": amp, "batch": batch,
            "steps": steps,
            "first_step_seconds": round(first, 4), "step_seconds_median": med,
            "step_seconds_min": min(times), "images_per_second": batch / med, "params": num_params(net),
            "torch": torch.__version__}


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
    torch = _torch()
    peer = load_peer_module(peer_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    amp = device == "cuda"
    args = argparse.Namespace(batch=batch, steps=steps, warmup=warmup, device=device)
    try:
        import torchvision
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
    p = argparse.ArgumentParser(prog="python -m alexnet_jax.bench_torch")
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cifar")
    c.add_argument("--batch", type=int, default=128)
    c.add_argument("--steps", type=int, default=10)
    c.add_argument("--warmup", type=int, default=2)
    c.add_argument("--device", default="cpu")
    c.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    c.add_argument("--layouts", default="contiguous,channels_last",
                   help="comma list of contiguous / channels_last (each is timed; the fastest is the peer)")
    c.add_argument("--compile", action="store_true", help="also time torch.compile")
    c.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only; ignored on a CPU)")
    a = sub.add_parser("alexnet")
    a.add_argument("--peer-dir", required=True)
    a.add_argument("--batch", type=int, default=512)
    a.add_argument("--steps", type=int, default=30)
    a.add_argument("--warmup", type=int, default=8)
    a.add_argument("--device")
    a.add_argument("--threads", type=int, default=0)
    a.add_argument("--no-compile", action="store_true")
    a.add_argument("--variants", help="comma list: torchvision_alexnet, alexnet_2012_two_column")
    args = p.parse_args(argv)
    torch = _torch()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "cifar":
        runs = []
        for layout in args.layouts.split(","):
            for comp in ((False, True) if args.compile else (False,)):
                try:
                    r = time_cifar(args.batch, args.steps, args.warmup, args.device,
                                   channels_last=layout.strip() == "channels_last", compile_=comp,
                                   amp=args.amp and args.device == "cuda")
                except Exception as e:  # noqa: BLE001
                    r = {"channels_last": layout.strip() == "channels_last", "compiled": comp,
                         "error": f"{type(e).__name__}: {e}"[:400]}
                runs.append(r)
                if "error" not in r:
                    print(f"torch cifar alexnet  {layout:14s} compiled={comp!s:5s} "
                          f"{r['step_seconds_median'] * 1e3:9.1f} ms/step "
                          f"{r['images_per_second']:9.1f} img/s",
                          flush=True)
        ok = [r for r in runs if "error" not in r]
        best = min(ok, key=lambda r: r["step_seconds_median"]) if ok else None
        print(json.dumps({"peer": "torch_cifar_two_column_alexnet", "best": best, "runs": runs}))
        return 0 if ok else 1
    res = run_alexnet_peer(args.peer_dir, args.batch, args.steps, args.warmup, args.device,
                           not args.no_compile,
                           [v.strip() for v in args.variants.split(",")] if args.variants else None)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
