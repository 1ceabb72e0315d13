"""One MNIST epoch of our LeNet-5 (the Trainer's step) against the PyTorch LeNet peers."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from alexnet_jax.bench.protocol import epoch_protocol
from alexnet_jax.data import read_idx


def load_mnist_train(mnist_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (N, 32, 32, 1) in [0, 1], zero-padded 2 px like the peer; labels int32 (N,))."""
    d = Path(mnist_dir)
    x = read_idx(_idx_file(d, "train-images-idx3-ubyte"))
    y = read_idx(_idx_file(d, "train-labels-idx1-ubyte")).astype(np.int32)
    x = np.pad(x.astype(np.float32) / np.float32(255.0), ((0, 0), (2, 2), (2, 2)))[..., None]
    return x, y


def _idx_file(d: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem, stem.replace("-idx", ".idx")):
        if (d / name).exists():
            return d / name
    raise FileNotFoundError(f"no {stem}[.gz] in {d} (pass --mnist-dir)")


MAX_UNROLL = 16


def lenet_epoch(mnist_dir: str | os.PathLike, *, batch: int = 128, chunks: list[int] | None = None,
                lr: float = 0.05, dtype: str = "float32", epochs: int = 3,
                max_unroll: int = MAX_UNROLL) -> dict[str, Any]:
    """Time epochs of our `lenet5` (softmax head, paper SGD, momentum 0.9, no weight decay like the peer)
    with K steps per dispatch for each K in `chunks` (default [1]).

    K = 1 calls the Trainer's jitted train step once per batch.  K > 1 runs K steps in one
    dispatch with `jax.lax.scan`, fully unrolled when K <= `max_unroll` (else a while loop).  Measured on
    XLA:CPU (jax 0.10.2, experiments/results/bench_cpu_2026-11-25.md): a train step inside a while loop
    runs ~4x slower than the same step unrolled or dispatched alone, and at ~30 ms per LeNet step the
    ~0.1 ms dispatch is noise, so K = 1 is as fast as any K here.

    The epoch (n // batch steps, the remainder dropped as the peer does) is put on the device once, as
    one array per dispatch.  After compiling, one untimed warm-up epoch, then `epochs` timed epochs; the
    best is reported (alexnet_jax.bench.protocol, as the torch twin does).  Training continues across
    the runs of different K."""
    # lazy (torch twin): bench/torch_lenet.py imports load_mnist_train from here, in a process kept free of jax
    import jax

    from alexnet_jax.bench.step import bench_config, device_info, macs_per_image
    from alexnet_jax.trainer import Trainer

    x, y = load_mnist_train(mnist_dir)
    n_steps = len(x) // batch
    if n_steps < 1:
        raise ValueError(f"{len(x)} images are fewer than one batch of {batch}")
    n = n_steps * batch
    config = bench_config("lenet5", batch=batch, dtype=dtype, mesh=(1, 1), lr=lr, weight_decay=0.0)
    trainer = Trainer.build(config)
    state = trainer.init()
    step = trainer.train_step
    inner = step.__wrapped__
    xs = x[:n].reshape(n_steps, batch, 32, 32, 1)
    ys = y[:n].reshape(n_steps, batch)

    def multi(k: int):
        def run_k(state, xk, yk):
            def body(s, b):
                s, m = inner(s, {"image": b[0], "label": b[1]})
                return s, m["loss"]
            return jax.lax.scan(body, state, (xk, yk), unroll=k if k <= max_unroll else 1)
        return jax.jit(run_k, donate_argnums=0)

    def single(state, xk, yk):
        state, m = step(state, {"image": xk, "label": yk})
        return state, m["loss"]

    results = []
    for k in chunks or [1]:
        k = max(1, min(int(k), n_steps))
        bounds = list(range(0, n_steps, k)) + [n_steps]
        if k == 1:
            parts = [(jax.device_put(xs[i]), jax.device_put(ys[i])) for i in range(n_steps)]
            how = "jitted train step per batch"
        else:
            parts = [(jax.device_put(xs[a:b]), jax.device_put(ys[a:b]))
                     for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            how = "lax.scan " + ("unrolled" if k <= max_unroll else "while loop")
        jax.block_until_ready(parts)
        t0 = time.perf_counter()
        exes = {}
        for px, py in parts:
            if px.shape not in exes:
                if k == 1:
                    exes[px.shape] = jax.jit(single, donate_argnums=0).lower(state, px, py).compile()
                else:
                    exes[px.shape] = multi(len(px)).lower(state, px, py).compile()
        compile_s = time.perf_counter() - t0
        epoch_times, losses = [], None
        for _ in range(1 + max(1, epochs)):             # the first epoch is the warm-up
            t = time.perf_counter()
            for px, py in parts:
                state, losses = exes[px.shape](state, px, py)
            jax.block_until_ready((state, losses))
            epoch_times.append(time.perf_counter() - t)
        timed = min(epoch_times[1:])
        last = float(jax.device_get(losses).reshape(-1)[-1])
        results.append({"steps_per_dispatch": k, "dispatches": len(parts), "how": how,
                        "compile_seconds": round(compile_s, 3),
                        "warmup_epoch_seconds": epoch_times[0], "epoch_seconds": timed,
                        "epoch_seconds_all": epoch_times[1:], "images_per_second": n / timed,
                        "final_loss": last, "loss_finite": bool(math.isfinite(last))})
        del parts
    best = min(results, key=lambda r: r["epoch_seconds"])
    info = device_info()
    macs = macs_per_image(config)
    return {"mode": "lenet_epoch", "model": "lenet5", "head": "softmax",
            "optimizer": "paper_sgd momentum 0.9, no weight decay",
            "lr": lr, "batch": batch, "images": n, "steps": n_steps, "dtype": dtype, "device": info["device"],
            "platform": info["platform"], "threads": info["cpu_cores"], "xla_flags": info["xla_flags"],
            "protocol": epoch_protocol(epochs), "runs": results,
            "epoch_seconds": best["epoch_seconds"], "images_per_second": best["images_per_second"],
            "steps_per_dispatch": best["steps_per_dispatch"], "macs_per_image": macs,
            "model_flops_per_image": 6 * macs, "achieved_flops_per_second": 6 * macs * best["images_per_second"]}
