"""The PyTorch twin of our `lenet5` (LC98 LeNet-5, softmax head), timed on MNIST epochs in every torch
configuration (torch_configs.py), and its trainable subsampling's three torch idioms timed against each
other (`python -m alexnet_jax.bench.torch_twins lenet | subsampling`).

`lenet`: MNIST epochs (60,000 // 128 = 468 steps, images zero-padded to 32x32 by
`alexnet_jax.bench.lenet.load_mnist_train`) of the twin of our `lenet5` with the softmax head, the model
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
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from alexnet_jax.bench.lenet import load_mnist_train
from alexnet_jax.bench.protocol import epoch_protocol
from alexnet_jax.bench.torch_configs import LAYOUTS, config_name, configurations, memory_format, num_params, summary

SQUASH_A, SQUASH_S = 1.7159, 2.0 / 3.0
# LC98 Table I, as alexnet_jax.models.lenet_layers.C3_TABLE (tests/test_bench.py checks they are equal)
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
    x, y = load_mnist_train(mnist_dir)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y.astype(np.int64))


def _lenet_step(net, lr: float, amp: bool, compiled: bool):
    """One SGD-momentum training step of `net` on (x, y), in the configuration asked."""
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
    torch.manual_seed(0)
    x, y = data if data is not None else load_mnist_nchw(mnist_dir)
    fmt = memory_format(layout)
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
    return summary("torch_lenet5_twin", runs, amp, epoch_protocol(epochs), subsampling=idiom,
                   subsampling_comparison=choice)


def compare_subsampling(batch: int = 128, rounds: int = 15, steps: int = 5, layouts=LAYOUTS,
                        seed: int = 0, amp: bool = False) -> dict:
    """The three subsampling idioms (`SUBSAMPLING`) in the whole LeNet-5 twin's training step (eager),
    interleaved: each round runs `steps` steps of every idiom in turn; per idiom the median over rounds of
    the per-step time.  Synthetic inputs of MNIST's shape; the same initial weights for every idiom."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    out: dict = {"batch": batch, "rounds": rounds, "steps_per_round": steps, "threads": torch.get_num_threads(),
                 "amp_bf16": amp,
                 "torch": torch.__version__, "statistic": "median over rounds of the mean step time in a round",
                 "layouts": {}}
    for layout in layouts:
        fmt = memory_format(layout)
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

