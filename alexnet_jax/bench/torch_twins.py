"""PyTorch twins of our models, and the peer runner, for `alexnet-jax bench` (run in a subprocess; torch is
the optional extra `peer`).  A twin computes the same function as our model, written the way a careful
torch user would write it, so that a ratio against it compares implementations, not models.

    python -m alexnet_jax.bench.torch_twins lenet MNIST_DIR [--batch 128] [--epochs 3] [--threads 2]
    python -m alexnet_jax.bench.torch_twins cifar [--batch 128] [--steps 10] [--threads 2] [--device cpu]
    python -m alexnet_jax.bench.torch_twins alexnet --peer-dir ../shared/peers [--batch 512] [--steps 30]
                                                                                 [--no-compile]

`lenet`: one MNIST epoch (60,000 // 128 = 468 steps, images zero-padded to 32x32 like
`alexnet_jax.bench.load_mnist_train`) of the twin of our `lenet5` with the softmax head, the model
`alexnet-jax bench --lenet-epoch` trains (alexnet_jax.models.lenet.LeNet5):

    C1 conv 1->6 5x5, f = 1.7159 tanh(2/3 a)
    S2 trainable subsampling: f(coef_c * (2x2 window sum) + bias_c), a depthwise 2x2 stride-2 conv
       whose four taps are the one coefficient of the map (`Subsampling`)
    C3 conv 6->16 5x5 whose dense kernel is multiplied by the LC98 Table I 0/1 mask, f
    S4 trainable subsampling, f
    C5 conv 16->120 5x5 (1x1 maps), f
    F6 linear 120->84, f
    OUT linear 84->10, softmax cross-entropy

Init U(-2.4/F, 2.4/F) with F the unit's fan-in, for weights and biases (C3: 25 x the map's inputs;
subsampling: 4).  torch.optim.SGD(lr 0.05, momentum 0.9), no weight decay: our paper_sgd with a constant
rate is the same update.  The epoch feeds batches sliced from one in-memory tensor (as the shipped peer
../shared/peers/torch_lenet_cpu.py does); after one warm-up step every epoch is timed and the best is
reported.  The shipped peer is a *simplified* LeNet (full C3, average pooling, plain tanh, torch init).

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

`alexnet`: runs ../shared/peers/torch_alexnet.py's `measure` for its variants (a peer, not a twin).  That
script needs torchvision only for torchvision's net; without torchvision only the two-column 2012 net
runs and the skipped variant is listed.  The last line printed is always one JSON object.

This module imports neither jax nor the rest of the package's models (the subprocess stays light);
tests/test_bench.py checks the twins against our models.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import statistics
import sys
import time


def _torch():
    import torch
    return torch


# ------------------------------------------------------------------------------------------------
# LeNet-5 (LC98), the twin of alexnet_jax.models.lenet.LeNet5(head="softmax")
# ------------------------------------------------------------------------------------------------
SQUASH_A, SQUASH_S = 1.7159, 2.0 / 3.0
# LC98 Table I, as alexnet_jax.models.lenet.C3_TABLE (tests/test_bench.py checks they are equal)
C3_TABLE = [
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
]


def lenet5_twin(num_classes: int = 10):
    """The torch twin of our `lenet5` (softmax head) at 32x32 inputs (see the module docstring)."""
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional

    def uniform_(t, fan_in):
        bound = 2.4 / fan_in
        return t.uniform_(-bound, bound)

    class Squash(nn.Module):
        def forward(self, x):
            return SQUASH_A * torch.tanh(SQUASH_S * x)

    class Subsampling(nn.Module):
        """f-less LC98 subsampling: coef_c * (2x2 window sum) + bias_c, as one depthwise conv."""

        def __init__(self, channels):
            super().__init__()
            self.coef = nn.Parameter(uniform_(torch.empty(channels), 4))
            self.bias = nn.Parameter(uniform_(torch.empty(channels), 4))

        def forward(self, x):
            w = self.coef.view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
            return F.conv2d(x, w, self.bias, stride=2, groups=x.shape[1])

    class MaskedC3(nn.Conv2d):
        """6 -> 16 5x5 conv whose kernel is multiplied by the Table I mask (a buffer)."""

        def __init__(self):
            super().__init__(6, 16, 5)
            mask = torch.zeros(16, 6, 1, 1)
            for m, inputs in enumerate(C3_TABLE):
                mask[m, list(inputs), 0, 0] = 1.0
            self.register_buffer("mask", mask)
            with torch.no_grad():
                for m, inputs in enumerate(C3_TABLE):
                    uniform_(self.weight[m], 25 * len(inputs))
                    uniform_(self.bias[m:m + 1], 25 * len(inputs))

        def forward(self, x):
            return F.conv2d(x, self.weight * self.mask, self.bias)

    def conv(i, o, fan_in):
        c = nn.Conv2d(i, o, 5)
        with torch.no_grad():
            uniform_(c.weight, fan_in)
            uniform_(c.bias, fan_in)
        return c

    def linear(i, o):
        lin = nn.Linear(i, o)
        with torch.no_grad():
            uniform_(lin.weight, i)
            uniform_(lin.bias, i)
        return lin

    return nn.Sequential(
        conv(1, 6, 25), Squash(),                  # C1 32 -> 28
        Subsampling(6), Squash(),                  # S2 -> 14
        MaskedC3(), Squash(),                      # C3 -> 10
        Subsampling(16), Squash(),                 # S4 -> 5
        conv(16, 120, 400), Squash(),              # C5 -> 1
        nn.Flatten(),
        linear(120, 84), Squash(),                 # F6
        linear(84, num_classes))                   # OUT (softmax in the loss)


def load_mnist_nchw(mnist_dir: str):
    """MNIST training images (N, 1, 32, 32) float32 in [0, 1], zero-padded 2 px, and int64 labels."""
    import numpy as np
    torch = _torch()

    def idx(name):
        for f in (f"{name}.gz", name):
            path = os.path.join(mnist_dir, f)
            if os.path.exists(path):
                raw = gzip.open(path).read() if f.endswith(".gz") else open(path, "rb").read()
                nd = raw[3]
                dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
                return np.frombuffer(raw, np.uint8, offset=4 + 4 * nd).reshape(dims)
        raise FileNotFoundError(f"no {name}[.gz] in {mnist_dir}")

    x = idx("train-images-idx3-ubyte").astype(np.float32) / np.float32(255.0)
    x = np.pad(x, ((0, 0), (2, 2), (2, 2)))[:, None]
    y = idx("train-labels-idx1-ubyte").astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)


def time_lenet_epoch(mnist_dir: str, batch: int = 128, epochs: int = 3, lr: float = 0.05) -> dict:
    """Epochs of the LeNet-5 twin on MNIST (the remainder batch dropped), each timed; the best is reported."""
    torch = _torch()
    torch.manual_seed(0)
    x, y = load_mnist_nchw(mnist_dir)
    net = lenet5_twin(10)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    n = len(x) // batch * batch

    def step(i):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x[i:i + batch]), y[i:i + batch])
        loss.backward()
        opt.step()
        return loss

    step(0)
    times, loss = [], None
    for _ in range(max(1, epochs)):
        t = time.perf_counter()
        for i in range(0, n, batch):
            loss = step(i)
        times.append(time.perf_counter() - t)
    best = min(times)
    return {"peer": "torch_lenet5_twin", "threads": torch.get_num_threads(), "batch": batch, "images": n,
            "epoch_seconds": best, "epoch_seconds_all": times, "images_per_second": n / best,
            "final_loss": float(loss), "params": num_params(net), "torch": torch.__version__}


# ------------------------------------------------------------------------------------------------
# CIFAR-size two-column AlexNet
# ------------------------------------------------------------------------------------------------
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
    p = argparse.ArgumentParser(prog="python -m alexnet_jax.bench.torch_twins")
    sub = p.add_subparsers(dest="what", required=True)
    lp = sub.add_parser("lenet")
    lp.add_argument("mnist_dir")
    lp.add_argument("--batch", type=int, default=128)
    lp.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up step (best reported)")
    lp.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
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
    if args.what == "lenet":
        print(json.dumps(time_lenet_epoch(args.mnist_dir, args.batch, args.epochs)))
        return 0
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
