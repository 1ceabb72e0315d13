"""Probe (not used by the package): what does the overlapping max-pool's gradient cost on XLA:CPU?

`layers.max_pool` is `reduce_window(max)`, whose gradient is XLA's select_and_scatter, slow on XLA:CPU.
`max_pool_slices` below computes the same 3x3 / stride-2 VALID max-pool as the max of 9 strided slices and
gives it a custom gradient with select_and_scatter's rule (each window's gradient goes to the FIRST
maximum in row-major window order), built from compares and interior-padded adds that XLA fuses.

Checks: forward bitwise equal; input gradient equal to the reference (max |diff| / max |grad|, on inputs
with many ties: ReLU zeros and values rounded to a coarse grid).  Times: the pool's forward and vjp per
AlexNet (CIFAR) shape; then the training step of `alexnet_cifar` (alexnet_jax.bench.bench_step, the
real train step) with `alexnet_jax.models.alexnet.max_pool` as it is and swapped in-process.

    python experiments/alexnet_pool_probe.py [--steps 10] [--batch 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import bench
from alexnet_jax.models import alexnet as alexnet_mod
from alexnet_jax.models.layers import max_pool

WINDOW, STRIDE = 3, 2


def _out(n: int) -> int:
    return (n - WINDOW) // STRIDE + 1


def _views(x):
    _, h, w, _ = x.shape
    oh, ow = _out(h), _out(w)
    return [x[:, i:i + STRIDE * (oh - 1) + 1:STRIDE, j:j + STRIDE * (ow - 1) + 1:STRIDE, :]
            for i in range(WINDOW) for j in range(WINDOW)]


@jax.custom_vjp
def max_pool_slices(x):
    vs = _views(x)
    y = vs[0]
    for v in vs[1:]:
        y = jnp.maximum(y, v)
    return y


def _fwd(x):
    y = max_pool_slices(x)
    return y, (x, y)


def _bwd(res, g):
    x, y = res
    _, h, w, _ = x.shape
    oh, ow = _out(h), _out(w)
    taken = jnp.zeros(y.shape, bool)
    dx = jnp.zeros(x.shape, g.dtype)
    zero = jnp.zeros((), g.dtype)
    for k, v in enumerate(_views(x)):
        i, j = divmod(k, WINDOW)
        hit = (v == y) & ~taken
        taken = taken | hit
        contrib = jnp.where(hit, g, zero)
        cfg = [(0, 0, 0), (i, h - i - (STRIDE * (oh - 1) + 1), STRIDE - 1),
               (j, w - j - (STRIDE * (ow - 1) + 1), STRIDE - 1), (0, 0, 0)]
        dx = dx + jax.lax.pad(contrib, zero, cfg)
    return (dx,)


max_pool_slices.defvjp(_fwd, _bwd)


def pool_for_model(x_BHWC, window: int = 3, stride: int = 2, padding="VALID"):
    if (window, stride, padding) != (WINDOW, STRIDE, "VALID"):
        return max_pool(x_BHWC, window, stride, padding)
    return max_pool_slices(x_BHWC)


def _ms(f, *a, n=9):
    jax.block_until_ready(f(*a))
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(f(*a))
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    res = {"pool": {}}
    for shape in ((args.batch, 32, 32, 48), (args.batch, 15, 15, 128), (args.batch, 7, 7, 128)):
        x = np.maximum(np.round(rng.standard_normal(shape) * 4) / 4, 0).astype(np.float32)  # many ties
        x = jnp.asarray(x)
        y_ref, vjp_ref = jax.vjp(max_pool, x)
        y_new, vjp_new = jax.vjp(max_pool_slices, x)
        g = jnp.asarray(rng.standard_normal(y_ref.shape).astype(np.float32))
        d_ref, d_new = vjp_ref(g)[0], vjp_new(g)[0]
        row = {"forward_equal": bool(jnp.array_equal(y_ref, y_new)),
               "grad_max_rel_diff": float(jnp.max(jnp.abs(d_ref - d_new)) / jnp.max(jnp.abs(d_ref))),
               "fwd_ms_reduce_window": _ms(jax.jit(max_pool), x), "fwd_ms_slices": _ms(jax.jit(max_pool_slices), x),
               "vjp_ms_reduce_window": _ms(jax.jit(lambda x, g: jax.vjp(max_pool, x)[1](g)[0]), x, g),
               "vjp_ms_slices": _ms(jax.jit(lambda x, g: jax.vjp(max_pool_slices, x)[1](g)[0]), x, g)}
        res["pool"]["x".join(map(str, shape))] = row
        print("x".join(map(str, shape)), json.dumps(row), flush=True)
    spec = bench.resolve_model("alexnet_cifar")
    for name, fn in (("reduce_window", max_pool), ("slices_custom_vjp", pool_for_model)):
        alexnet_mod.max_pool = fn
        r = bench.bench_step(spec, batch=args.batch, steps=args.steps, mesh_shape=(1, 1))
        res[f"step_{name}"] = {k: r[k] for k in ("step_seconds_median", "images_per_second", "final_loss")}
        print(name, json.dumps(res[f"step_{name}"]), flush=True)
    alexnet_mod.max_pool = max_pool
    print(json.dumps(res))


if __name__ == "__main__":
    main()
