"""PyTorch twins of our models, and the peer runner, for `alexnet-jax bench` (run in a subprocess; torch is
the optional extra `peer`).  A twin computes the same function as our model, written the way a careful
torch user would write it, so that a ratio against it compares implementations, not models.

    python -m alexnet_jax.bench.torch_twins lenet MNIST_DIR [--batch 128] [--epochs 3] [--threads 2]
                                                            [--no-compile] [--amp] [--subsampling S]
    python -m alexnet_jax.bench.torch_twins cifar [--batch 128] [--steps 10] [--warmup 2] [--threads 2]
                                                  [--device cpu] [--no-compile] [--amp] [--profile]
    python -m alexnet_jax.bench.torch_twins matmul [--size 4096] [--threads 2]
    python -m alexnet_jax.bench.torch_twins subsampling [--batch 128] [--rounds 15] [--threads 2]
    python -m alexnet_jax.bench.torch_twins alexnet --peer-dir ../shared/peers [--batch 512] [--steps 30]
                                                                                 [--no-compile]

Configurations.  `lenet` and `cifar` time every torch configuration a user who cares about speed would
try, in one process on the same threads: eager and `torch.compile` (inductor: generated C++/OpenMP
kernels on a CPU), each with the convolutions' inputs and weights contiguous (NCHW) and channels_last
(NHWC).  `--amp` runs them all under `torch.autocast(device, torch.bfloat16)` (on a CPU: oneDNN bf16
convolutions and matmuls), the peer of our `--dtype bfloat16`; without it everything is float32.  The
fastest configuration is named in the output; `alexnet-jax bench` reports ours against it and against
each one.

Protocol (the same as ours, recorded in each result's `protocol`): steps: the first call (in which
torch.compile compiles) and the following warm-up steps are untimed, `warmup` calls in all; then `steps`
calls, each synchronised, and the median is reported; the first call's time is reported apart.  Epochs:
one untimed warm-up epoch (its first step compiles), then `epochs` timed epochs, and the best is
reported.

`lenet`: MNIST epochs (60,000 // 128 = 468 steps, images zero-padded to 32x32 like
`alexnet_jax.bench.load_mnist_train`) of the twin of our `lenet5` with the softmax head, the model
`alexnet-jax bench --lenet-epoch` trains (alexnet_jax.models.lenet.LeNet5):

    C1 conv 1->6 5x5, f = 1.7159 tanh(2/3 a)
    S2 trainable subsampling: f(coef_c * (2x2 window sum) + bias_c)
    C3 conv 6->16 5x5 whose dense kernel is multiplied by the LC98 Table I 0/1 mask, f
    S4 trainable subsampling, f
    C5 conv 16->120 5x5 (1x1 maps), f
    F6 linear 120->84, f
    OUT linear 84->10, softmax cross-entropy

Init U(-2.4/F, 2.4/F) with F the unit's fan-in, for weights and biases (C3: 25 x the map's inputs;
subsampling: 4).  torch.optim.SGD(lr 0.05, momentum 0.9), no weight decay: our paper_sgd with a constant
rate is the same update.  The epoch feeds batches sliced from one in-memory tensor (as the shipped peer
../shared/peers/torch_lenet_cpu.py does).  The shipped peer is a *simplified* LeNet (full C3, average
pooling, plain tanh, torch init).

The trainable subsampling has three faithful torch idioms (`SUBSAMPLING`): a depthwise 2x2 stride-2
conv whose four taps are the map's coefficient (`depthwise`), `avg_pool2d` x 4 coef + bias (`avgpool`),
and a reshape of the 2x2 windows summed (`reshape`); all three compute our function (tests/test_bench.py).
Which is fastest depends on the layout and the machine, so by default (`--subsampling fastest`) `lenet`
first times the three against each other in the whole eager training step, interleaved, for each
layout (`compare_subsampling`; the `subsampling` command alone), and every configuration of that layout
uses the fastest; the measurement is in the result.

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
paper_sgd's default mask; for a constant rate torch's v = m v + g, w -= lr v is the same update).
tests/test_bench.py proves it computes our net's function: the same weights copied across give our
logits and every gradient in float64.  Synthetic data already in memory, like ours.

`matmul`: the achievable matmul rate of this machine through torch (float32 and bfloat16), the yardstick
for the FLOP/s the training steps reach.

`alexnet`: runs ../shared/peers/torch_alexnet.py's `measure` for its variants (a peer, not a twin).  That
script needs torchvision only for torchvision's net; without torchvision only the two-column 2012 net
runs and the skipped variant is listed.  The last line printed is always one JSON object.

This module imports neither jax nor the package's models (the subprocess stays light);
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

from alexnet_jax.bench.protocol import epoch_protocol, step_protocol


def _torch():
    import torch
    return torch


LAYOUTS = ("contiguous", "channels_last")


def configurations(compile_: bool = True, layouts=LAYOUTS) -> list[tuple[bool, str]]:
    """(compiled, layout) for every configuration timed: eager first, then torch.compile."""
    return [(comp, layout) for comp in ((False, True) if compile_ else (False,)) for layout in layouts]


def config_name(compiled: bool, layout: str, amp: bool) -> str:
    return f"{'compiled' if compiled else 'eager'} {layout}{' bf16 autocast' if amp else ''}"


def _format(layout: str):
    torch = _torch()
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


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
SUBSAMPLING = ("depthwise", "avgpool", "reshape")
FASTEST = "fastest"


def lenet5_twin(num_classes: int = 10, subsampling: str = "depthwise"):
    """The torch twin of our `lenet5` (softmax head) at 32x32 inputs (see the module docstring)."""
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional
    if subsampling not in SUBSAMPLING:
        raise ValueError(f"unknown subsampling idiom {subsampling!r}; choose from {', '.join(SUBSAMPLING)}")

    def uniform_(t, fan_in):
        bound = 2.4 / fan_in
        return t.uniform_(-bound, bound)

    class Squash(nn.Module):
        def forward(self, x):
            return SQUASH_A * torch.tanh(SQUASH_S * x)

    class Subsampling(nn.Module):
        """f-less LC98 subsampling: coef_c * (2x2 window sum) + bias_c, in the idiom `subsampling`."""

        def __init__(self, channels):
            super().__init__()
            self.coef = nn.Parameter(uniform_(torch.empty(channels), 4))
            self.bias = nn.Parameter(uniform_(torch.empty(channels), 4))

        def forward(self, x):
            c = x.shape[1]
            if subsampling == "depthwise":          # one grouped conv, the four taps = the coefficient
                w = self.coef.view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
                return F.conv2d(x, w, self.bias, stride=2, groups=c)
            if subsampling == "avgpool":            # the window mean x 4 coef + bias
                return F.avg_pool2d(x, 2) * (4.0 * self.coef).view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
            b, _, h, w = x.shape                   # the 2x2 windows as two axes, summed
            s = x.reshape(b, c, h // 2, 2, w // 2, 2).sum(dim=(3, 5))
            return s * self.coef.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

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


def _lenet_step(net, lr: float, amp: bool, compiled: bool):
    """One SGD-momentum training step of `net` on (x, y), in the configuration asked."""
    torch = _torch()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(net(xb), yb)
        loss.backward()
        opt.step()
        return loss

    return torch.compile(step) if compiled else step


def time_lenet_epoch(mnist_dir: str, batch: int = 128, epochs: int = 3, lr: float = 0.05, *,
                     compiled: bool = False, layout: str = "contiguous", amp: bool = False,
                     subsampling: str = "depthwise", data=None) -> dict:
    """One warm-up epoch, then `epochs` timed epochs of the LeNet-5 twin on MNIST (the remainder batch
    dropped) in one configuration; the best is reported."""
    torch = _torch()
    torch.manual_seed(0)
    x, y = data if data is not None else load_mnist_nchw(mnist_dir)
    fmt = _format(layout)
    x = x.contiguous(memory_format=fmt)
    net = lenet5_twin(10, subsampling).to(memory_format=fmt)
    step = _lenet_step(net, lr, amp, compiled)
    n = len(x) // batch * batch
    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]

    t = time.perf_counter()
    loss = step(*batches[0])
    first = time.perf_counter() - t
    times = []
    for _ in range(1 + max(1, epochs)):           # the first epoch is the warm-up
        t = time.perf_counter()
        for xb, yb in batches:
            loss = step(xb, yb)
        times.append(time.perf_counter() - t)
    best = min(times[1:])
    return {"config": config_name(compiled, layout, amp), "compiled": compiled, "layout": layout,
            "amp_bf16": amp, "subsampling": subsampling, "threads": torch.get_num_threads(), "batch": batch,
            "images": n, "protocol": epoch_protocol(epochs), "first_step_seconds": round(first, 4),
            "warmup_epoch_seconds": times[0], "epoch_seconds": best, "epoch_seconds_all": times[1:],
            "images_per_second": n / best, "final_loss": loss.item(), "params": num_params(net),
            "torch": torch.__version__}


def run_lenet(mnist_dir: str, batch: int = 128, epochs: int = 3, *, compile_: bool = True, amp: bool = False,
              subsampling: str = FASTEST, lr: float = 0.05, rounds: int = 10) -> dict:
    """Every configuration of the LeNet-5 twin (eager / compiled x layouts), and the fastest; with
    `subsampling="fastest"` each layout uses the idiom `compare_subsampling` finds fastest for it here."""
    torch = _torch()
    data = load_mnist_nchw(mnist_dir)
    choice = None
    if subsampling == FASTEST:
        choice = compare_subsampling(batch, rounds=rounds, amp=amp)
        idiom = {layout: v["fastest"] for layout, v in choice["layouts"].items()}
    else:
        idiom = dict.fromkeys(LAYOUTS, subsampling)
    runs = []
    for compiled, layout in configurations(compile_):
        try:
            r = time_lenet_epoch(mnist_dir, batch, epochs, lr, compiled=compiled, layout=layout, amp=amp,
                                 subsampling=idiom[layout], data=data)
        except Exception as e:  # noqa: BLE001 - report and go on with the other configurations
            r = {"config": config_name(compiled, layout, amp), "error": f"{type(e).__name__}: {e}"[:400]}
        runs.append(r)
        if "error" not in r:
            print(f"torch lenet5 twin  {r['config']:34s} {r['epoch_seconds']:8.3f} s/epoch "
                  f"{r['images_per_second']:10.1f} img/s", flush=True)
    return _summary("torch_lenet5_twin", runs, amp, torch, epoch_protocol(epochs), subsampling=idiom,
                    subsampling_comparison=choice)


def _summary(twin: str, runs: list[dict], amp: bool, torch, protocol: dict, **extra) -> dict:
    ok = [r for r in runs if "error" not in r]
    fastest = max(ok, key=lambda r: r["images_per_second"]) if ok else None
    return {"twin": twin, **extra, "precision": "bfloat16 autocast" if amp else "float32",
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")},
            "protocol": protocol, "runs": runs,
            "fastest": fastest["config"] if fastest else None,
            "images_per_second": fastest["images_per_second"] if fastest else None}


def compare_subsampling(batch: int = 128, rounds: int = 15, steps: int = 5, layouts=LAYOUTS,
                        seed: int = 0, amp: bool = False) -> dict:
    """The three subsampling idioms (`SUBSAMPLING`) in the whole LeNet-5 twin's training step (eager),
    interleaved: each round runs `steps` steps of every idiom in turn; per idiom the median over rounds of
    the per-step time.  Synthetic inputs of MNIST's shape; the same initial weights for every idiom."""
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    out: dict = {"batch": batch, "rounds": rounds, "steps_per_round": steps, "threads": torch.get_num_threads(),
                 "amp_bf16": amp,
                 "torch": torch.__version__, "statistic": "median over rounds of the mean step time in a round",
                 "layouts": {}}
    for layout in layouts:
        fmt = _format(layout)
        xl = x.contiguous(memory_format=fmt)
        steps_by = {}
        for s in SUBSAMPLING:
            torch.manual_seed(seed)
            net = lenet5_twin(10, s).to(memory_format=fmt)
            steps_by[s] = _lenet_step(net, 0.05, amp, False)
            for _ in range(3):
                steps_by[s](xl, y)
        times = {s: [] for s in SUBSAMPLING}
        for _ in range(rounds):
            for s, fn in steps_by.items():
                t = time.perf_counter()
                for _ in range(steps):
                    fn(xl, y)
                times[s].append((time.perf_counter() - t) / steps)
        med = {s: statistics.median(v) for s, v in times.items()}
        fastest = min(med, key=med.get)
        out["layouts"][layout] = {"step_seconds_median": med, "fastest": fastest,
                                  "relative_to_fastest": {s: v / med[fastest] for s, v in med.items()}}
        print(f"subsampling idioms, {layout}: " + ", ".join(f"{s} {1e3 * v:.3f} ms" for s, v in med.items())
              + f"; fastest {fastest}", flush=True)
    overall = min(((lay, s) for lay in out["layouts"] for s in SUBSAMPLING),
                  key=lambda ls: out["layouts"][ls[0]]["step_seconds_median"][ls[1]])
    out["fastest"] = {"layout": overall[0], "subsampling": overall[1]}
    return out


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
    with torch.no_grad():
        for i, m in enumerate(net):
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.normal_(0.0, 0.01)
                m.bias.fill_(1.0 if i in CIFAR_BIAS_ONE else 0.0)
    return net


# Sequential indices of the CIFAR twin's layers (tests copy our weights into them)
CIFAR_LAYERS = {"conv1": 0, "conv2": 4, "conv3": 8, "conv4": 10, "conv5": 12, "fc6": 16, "fc7": 19, "fc8": 22}
CIFAR_DROPOUT = {"fc6": 18, "fc7": 21}
CIFAR_BIAS_ONE = {CIFAR_LAYERS[k] for k in ("conv2", "conv4", "conv5", "fc6", "fc7")}


def num_params(net) -> int:
    return sum(p.numel() for p in net.parameters())


def paper_sgd_torch(net, lr=0.01, momentum=0.9, weight_decay=5e-4):
    torch = _torch()
    decay = [p for p in net.parameters() if p.ndim > 1]
    rest = [p for p in net.parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                            {"params": rest, "weight_decay": 0.0}], lr=lr, momentum=momentum)


def _cifar_step(batch: int, device: str, layout: str, compiled: bool, amp: bool, num_classes: int = 10,
                width: float = 1.0):
    torch = _torch()
    torch.manual_seed(0)
    fmt = _format(layout)
    net = cifar_two_column_alexnet(num_classes, width).to(device).to(memory_format=fmt)
    opt = paper_sgd_torch(net)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
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

    return net, (torch.compile(step) if compiled else step)


def time_cifar(batch: int = 128, steps: int = 10, warmup: int = 2, device: str = "cpu",
               layout: str = "contiguous", compiled: bool = False, amp: bool = False,
               num_classes: int = 10, width: float = 1.0) -> dict:
    """The CIFAR twin's training step in one configuration: `warmup` untimed calls (the first compiles
    under torch.compile), then `steps` timed ones, each synchronised; the median is reported."""
    torch = _torch()
    net, fn = _cifar_step(batch, device, layout, compiled, amp, num_classes, width)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t0
    for _ in range(max(1, warmup) - 1):
        fn()
    sync()
    times = []
    loss = None
    for _ in range(steps):
        t = time.perf_counter()
        loss = fn()
        sync()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"config": config_name(compiled, layout, amp), "device": device, "threads": torch.get_num_threads(),
            "layout": layout, "compiled": compiled, "amp_bf16": amp, "batch": batch, "width": width,
            "num_classes": num_classes, "protocol": step_protocol(warmup, steps), "first_step_seconds": round(first, 4),
            "step_seconds_median": med, "step_seconds_min": min(times), "step_seconds_all": times,
            "images_per_second": batch / med, "final_loss": loss.item(), "params": num_params(net),
            "torch": torch.__version__}


def run_cifar(batch: int = 128, steps: int = 10, warmup: int = 2, device: str = "cpu", *, compile_: bool = True,
              amp: bool = False, layouts=LAYOUTS, width: float = 1.0, num_classes: int = 10) -> dict:
    """Every configuration of the CIFAR twin (eager / compiled x layouts), and the fastest."""
    torch = _torch()
    runs = []
    for compiled, layout in configurations(compile_, layouts):
        try:
            r = time_cifar(batch, steps, warmup, device, layout=layout, compiled=compiled, amp=amp,
                           num_classes=num_classes, width=width)
        except Exception as e:  # noqa: BLE001
            r = {"config": config_name(compiled, layout, amp), "error": f"{type(e).__name__}: {e}"[:400]}
        runs.append(r)
        if "error" not in r:
            print(f"torch cifar alexnet twin  {r['config']:34s} {r['step_seconds_median'] * 1e3:9.1f} ms/step "
                  f"{r['images_per_second']:9.1f} img/s", flush=True)
    return _summary("torch_cifar_two_column_alexnet", runs, amp, torch, step_protocol(warmup, steps),
                    device=device, width=width, num_classes=num_classes)


def profile_cifar(config: dict, batch: int = 128, steps: int = 3, device: str = "cpu", top: int = 20,
                  width: float = 1.0, num_classes: int = 10) -> dict:
    """torch.profiler over `steps` training steps of the CIFAR twin in `config` (a run's dict: layout,
    compiled, amp_bf16), after two warm-up calls: the `top` ops by self CPU time per step."""
    _, fn = _cifar_step(batch, device, config["layout"], config["compiled"], config["amp_bf16"], num_classes,
                        width)
    for _ in range(2):
        fn()
    from torch.profiler import ProfilerActivity, profile
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    wall = (time.perf_counter() - t) / steps
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return {"config": config["config"], "batch": batch, "steps": steps, "step_seconds_wall_traced": wall,
            "self_cpu_ms_total_per_step": total / 1e3 / steps,
            "note": "self CPU time of each op on the calling thread (intra-op threads run inside it)",
            "top_ops": [{"op": e.key, "ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                         "share": e.self_cpu_time_total / total, "calls_per_step": e.count / steps}
                        for e in events[:top]]}


# ------------------------------------------------------------------------------------------------
# The machine's matmul rate through torch
# ------------------------------------------------------------------------------------------------
def matmul_rate(size: int = 4096, dtype: str = "float32", reps: int = 5) -> dict:
    """FLOP/s of a (size x size) @ (size x size) torch.mm in `dtype`: one warm-up call, then the median of
    `reps` calls (2 size^3 FLOP each)."""
    torch = _torch()
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


# ------------------------------------------------------------------------------------------------
# The shipped full-size peer
# ------------------------------------------------------------------------------------------------
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
        q.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
        q.add_argument("--no-compile", action="store_true", help="eager configurations only")
        q.add_argument("--amp", action="store_true", help="every configuration under bf16 autocast")
    m = sub.add_parser("matmul")
    m.add_argument("--size", type=int, default=4096)
    m.add_argument("--reps", type=int, default=5)
    m.add_argument("--dtypes", default="float32,bfloat16")
    m.add_argument("--threads", type=int, default=0)
    s = sub.add_parser("subsampling")
    s.add_argument("--batch", type=int, default=128)
    s.add_argument("--rounds", type=int, default=15)
    s.add_argument("--steps", type=int, default=5, help="steps of each idiom per round")
    s.add_argument("--threads", type=int, default=0)
    s.add_argument("--amp", action="store_true", help="under bf16 autocast")
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
