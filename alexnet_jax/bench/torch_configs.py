"""The torch configurations every twin is timed in (torch_lenet.py, torch_cifar.py), and their summary.

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
"""

from __future__ import annotations

import os

import torch

LAYOUTS = ("contiguous", "channels_last")


def configurations(compile_: bool = True, layouts=LAYOUTS) -> list[tuple[bool, str]]:
    """(compiled, layout) for every configuration timed: eager first, then torch.compile."""
    return [(comp, layout) for comp in ((False, True) if compile_ else (False,)) for layout in layouts]


def config_name(compiled: bool, layout: str, amp: bool) -> str:
    return f"{'compiled' if compiled else 'eager'} {layout}{' bf16 autocast' if amp else ''}"


def memory_format(layout: str):
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def num_params(net) -> int:
    return sum(p.numel() for p in net.parameters())


def summary(twin: str, runs: list[dict], amp: bool, protocol: dict, **extra) -> dict:
    """A twin's result: every configuration's run, and the fastest."""
    ok = [r for r in runs if "error" not in r]
    fastest = max(ok, key=lambda r: r["images_per_second"]) if ok else None
    return {"twin": twin, **extra, "precision": "bfloat16 autocast" if amp else "float32",
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")},
            "protocol": protocol, "runs": runs,
            "fastest": fastest["config"] if fastest else None,
            "images_per_second": fastest["images_per_second"] if fastest else None}
