"""Probe (not used by the package): how much of a LeNet-5 CPU training epoch is XLA:CPU's convolutions?

Times one MNIST epoch of our `lenet5` (alexnet_jax.bench.lenet_epoch: paper SGD, whole epoch in one
`lax.scan` dispatch) as the model is, then with `alexnet_jax.models.lenet._conv` swapped in-process for an
im2col formulation (25 shifted slices stacked, one matmul), after checking that the swap computes the
same outputs and gradients.  Also times each convolution of the step (forward, kernel gradient, input
gradient) at batch 128, and a hybrid that keeps lax convs except C5 (a 5x5 conv over a 5x5 map), done as
the matmul it is.

    python experiments/lenet_conv_probe.py [--mnist-dir ../shared/data/mnist] [--repeats 2]
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
from alexnet_jax.models import lenet

ORIGINAL_CONV = lenet._conv


def conv_im2col(x_BHWC, kernel_HWIO, *, groups: int = 1, padding="VALID"):
    """Stride-1 convolution as patches @ kernel (same semantics as lenet._conv for groups == 1)."""
    assert groups == 1
    if padding != "VALID":
        (pt, pb), (pl, pr) = padding
        x_BHWC = jnp.pad(x_BHWC, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    kh, kw, ci, co = kernel_HWIO.shape
    b, h, w, c = x_BHWC.shape
    oh, ow = h - kh + 1, w - kw + 1
    cols = [x_BHWC[:, i:i + oh, j:j + ow, :] for i in range(kh) for j in range(kw)]
    p = jnp.stack(cols, axis=3).reshape(b, oh, ow, kh * kw * c)
    return p @ kernel_HWIO.reshape(kh * kw * ci, co)


def conv_hybrid(x_BHWC, kernel_HWIO, *, groups: int = 1, padding="VALID"):
    """lax conv, except a VALID conv whose kernel covers the whole input (C5: 5x5 on 5x5) is a matmul."""
    kh, kw, ci, co = kernel_HWIO.shape
    if padding == "VALID" and groups == 1 and x_BHWC.shape[1:3] == (kh, kw):
        y = x_BHWC.reshape(x_BHWC.shape[0], -1) @ kernel_HWIO.reshape(kh * kw * ci, co)
        return y[:, None, None, :]
    return ORIGINAL_CONV(x_BHWC, kernel_HWIO, groups=groups, padding=padding)


def _median_ms(f, *args, n=20):
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


def per_conv_times(conv, batch=128):
    out = {}
    rng = np.random.default_rng(0)
    for name, (hw, c, o) in {"C1": (32, 1, 6), "C3": (14, 6, 16), "C5": (5, 16, 120)}.items():
        x = jnp.asarray(rng.standard_normal((batch, hw, hw, c), np.float32))
        k = jnp.asarray(0.1 * rng.standard_normal((5, 5, c, o), np.float32))
        out[name] = {
            "forward_ms": _median_ms(jax.jit(conv), x, k),
            "kernel_grad_ms": _median_ms(jax.jit(jax.grad(lambda k, x: conv(x, k).sum())), k, x),
            "input_grad_ms": _median_ms(jax.jit(jax.grad(lambda x, k: conv(x, k).sum())), x, k),
        }
    return out


def check_same():
    rng = np.random.default_rng(1)
    errs = []
    for hw, c, o in ((32, 1, 6), (14, 6, 16), (5, 16, 120)):
        x = jnp.asarray(rng.standard_normal((4, hw, hw, c), np.float32))
        k = jnp.asarray(rng.standard_normal((5, 5, c, o), np.float32))
        g = jnp.asarray(rng.standard_normal((4, hw - 4, hw - 4, o), np.float32))
        ya, va = jax.vjp(ORIGINAL_CONV, x, k)
        for alt in (conv_im2col, conv_hybrid):
            yb, vb = jax.vjp(alt, x, k)
            for a, b in zip((ya, *va(g)), (yb, *vb(g)), strict=True):
                errs.append(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))))
    return max(errs)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mnist-dir", default=str(bench.default_data_dir("mnist")))
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    res = {"max_rel_diff_vs_lax_conv": check_same()}
    res["per_conv_lax"] = per_conv_times(ORIGINAL_CONV)
    res["per_conv_im2col"] = per_conv_times(conv_im2col)
    for name, conv in (("lax_conv", ORIGINAL_CONV), ("im2col", conv_im2col), ("c5_as_matmul", conv_hybrid)):
        lenet._conv = conv
        r = bench.lenet_epoch(args.mnist_dir, epochs=1 + args.repeats)
        res[f"epoch_{name}"] = {"epoch_seconds": r["epoch_seconds"], "images_per_second": r["images_per_second"],
                                "final_loss": r["runs"][0]["final_loss"]}
        print(name, json.dumps(res[f"epoch_{name}"]), flush=True)
    lenet._conv = ORIGINAL_CONV
    for name in ("per_conv_lax", "per_conv_im2col"):
        for layer, v in res[name].items():
            print(f"{name:16s} {layer}: fwd {v['forward_ms']:7.2f} ms  dkernel {v['kernel_grad_ms']:7.2f} ms  "
                  f"dinput {v['input_grad_ms']:7.2f} ms")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
