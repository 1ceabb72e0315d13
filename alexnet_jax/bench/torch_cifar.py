"""The PyTorch twin of our CIFAR-size two-column AlexNet, timed in every torch configuration
(torch_configs.py) and profiled (`python -m alexnet_jax.bench.torch_twins cifar`).

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
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from alexnet_jax.bench.protocol import step_protocol
from alexnet_jax.bench.torch_configs import LAYOUTS, config_name, configurations, memory_format, num_params, summary


def cifar_two_column_alexnet(num_classes: int = 10, width: float = 1.0):
    """The torch mirror of our `alexnet` at input 32 (see the module docstring)."""
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


def paper_sgd_torch(net, lr=0.01, momentum=0.9, weight_decay=5e-4):
    decay = [p for p in net.parameters() if p.ndim > 1]
    rest = [p for p in net.parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                            {"params": rest, "weight_decay": 0.0}], lr=lr, momentum=momentum)


def _cifar_step(batch: int, device: str, layout: str, compiled: bool, amp: bool, num_classes: int = 10,
                width: float = 1.0):
    torch.manual_seed(0)
    fmt = memory_format(layout)
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
    return summary("torch_cifar_two_column_alexnet", runs, amp, step_protocol(warmup, steps),
                   device=device, width=width, num_classes=num_classes)


def profile_cifar(config: dict, batch: int = 128, steps: int = 3, device: str = "cpu", top: int = 20,
                  width: float = 1.0, num_classes: int = 10) -> dict:
    """torch.profiler over `steps` training steps of the CIFAR twin in `config` (a run's dict: layout,
    compiled, amp_bf16), after two warm-up calls: the `top` ops by self CPU time per step."""
    _, fn = _cifar_step(batch, device, config["layout"], config["compiled"], config["amp_bf16"], num_classes,
                        width)
    for _ in range(2):
        fn()
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

