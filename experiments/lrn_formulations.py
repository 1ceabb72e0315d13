#!/usr/bin/env python3
"""Where XLA:CPU spends the LRN's time: the package's LRN against other ways of writing its window sum.

    python experiments/lrn_formulations.py [--out runs/lrn_formulations] [--repeats 15] [--publish NAME]

The cross-channel LRN (K12 §3.3) plus the max-pool after it is about a third of the CIFAR two-column step
on XLA:CPU (experiments/results/bench_cpu_*.md, "Where the time goes").  Its arithmetic is tiny; its cost is
passes over memory and how XLA:CPU's loop emitter handles the channel window (shifted slices along the
minor, 48- or 128-wide axis).  This script times `max_pool(lrn(x))` forward, and forward plus gradient, at
the two LRN shapes of the CIFAR two-column net (one column, batch 128: conv1 32x32x48, conv2 15x15x128),
with the package's written-out LRN (alexnet_jax/models/layers.py `_lrn_f32`) and with the same written-out
LRN whose window sum is formulated otherwise:

  package        shifted slices of one zero-padded array, added in one elementwise fusion (what ships)
  padded first   the same, with the padded array materialised (an optimization barrier) before the slices
  roll + mask    jnp.roll by each offset, the wrapped channels masked to zero
  reduce_window  lax.reduce_window(add) over the channel axis
  band matmul    a product with the 0/1 band matrix (C x C)
  channel-major  transposed so the shifts run along the major axis, and back
  autodiff       the plain formulation (JAX differentiates the formula), as compiled for other platforms

and a memory pass for scale (`x * 2`: read once, write once).  Each row: median milliseconds over
--repeats calls after one warm-up, and the largest difference of the output and the input gradient from
the package's (0 = bitwise equal).  Run it on a quiet machine; the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import alexnet_jax  # noqa: F401  (its XLA flags; they apply at JAX's first computation, below)
from alexnet_jax.models import layers as L

HERE = Path(__file__).resolve().parent
SHAPES = {"conv1 (128, 32, 32, 48)": (128, 32, 32, 48), "conv2 (128, 15, 15, 128)": (128, 15, 15, 128)}
K, N, ALPHA, BETA = L.LRN_K, L.LRN_N, L.LRN_ALPHA, L.LRN_BETA


def ws_padded_first(v, n, lo):
    p = jax.lax.optimization_barrier(jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(lo, n - 1 - lo)]))
    c = v.shape[-1]
    out = p[..., 0:c]
    for j in range(1, n):
        out = out + p[..., j:j + c]
    return out


def ws_roll(v, n, lo):
    c, idx, out = v.shape[-1], jnp.arange(v.shape[-1]), None
    for j in range(n):
        sh = j - lo
        r = jnp.where((idx + sh >= 0) & (idx + sh < c), jnp.roll(v, -sh, axis=-1), 0.0)
        out = r if out is None else out + r
    return out


def ws_reduce_window(v, n, lo):
    return jax.lax.reduce_window(v, 0.0, jax.lax.add, (1,) * (v.ndim - 1) + (n,), (1,) * v.ndim,
                                 [(0, 0)] * (v.ndim - 1) + [(lo, n - 1 - lo)])


def ws_band(v, n, lo):
    c = v.shape[-1]
    i = np.arange(c)
    band = ((i[:, None] >= i[None, :] - lo) & (i[:, None] <= i[None, :] - lo + n - 1)).astype(np.float32)
    return (v.reshape(-1, c) @ band).reshape(v.shape)


def ws_channel_major(v, n, lo):
    vt = jnp.moveaxis(v, -1, 0)
    c = vt.shape[0]
    p = jnp.pad(vt, [(lo, n - 1 - lo)] + [(0, 0)] * (v.ndim - 1))
    out = p[0:c]
    for j in range(1, n):
        out = out + p[j:j + c]
    return jnp.moveaxis(out, 0, -1)


def written_out_lrn(ws):
    """The package's `_lrn_f32` (forward and written-out gradient) with the window sum `ws` swapped in."""
    def scale(x):
        d = K + ALPHA * ws(x * x, N, N // 2)
        return d, jax.lax.rsqrt(d) * jax.lax.rsqrt(jnp.sqrt(d))

    @jax.custom_vjp
    def f(x):
        return x * scale(x)[1]

    def bwd(x, g):
        d, s = scale(x)
        return (g * s - (2.0 * ALPHA * BETA) * x * ws(g * x * s / d, N, N - 1 - N // 2),)

    f.defvjp(lambda x: (f(x), x), bwd)
    return f


VARIANTS = {
    "package": lambda x: L.lrn(x),
    "package, rewritten here": written_out_lrn(L._channel_window_sum),
    "padded first": written_out_lrn(ws_padded_first),
    "roll + mask": written_out_lrn(ws_roll),
    "reduce_window": written_out_lrn(ws_reduce_window),
    "band matmul": written_out_lrn(ws_band),
    "channel-major": written_out_lrn(ws_channel_major),
}


def timed(f, *args, repeats: int) -> float:
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)


def measure(shape, repeats: int) -> dict:
    x = jax.random.normal(jax.random.key(0), shape) * 3.0
    oh, ow = (shape[1] - 3) // 2 + 1, (shape[2] - 3) // 2 + 1
    g = jax.random.normal(jax.random.key(1), (shape[0], oh, ow, shape[3]))
    rows, ref = {}, None
    with L.compiling_for("cpu"):
        rows["memory pass (x * 2)"] = {"forward_ms": timed(jax.jit(lambda x: x * 2.0), x, repeats=repeats)}
    for name, lrn in [*VARIANTS.items(), ("autodiff", lambda x: L.lrn(x))]:
        platform = "tpu" if name == "autodiff" else "cpu"      # the plain formulation, run by XLA:CPU
        with L.compiling_for(platform):
            fwd = jax.jit(lambda x, lrn=lrn: L.max_pool(lrn(x)))
            step = jax.jit(jax.value_and_grad(lambda x, lrn=lrn: jnp.vdot(L.max_pool(lrn(x)), g)))
            y, (_, dx) = fwd(x), step(x)
            row = {"forward_ms": timed(fwd, x, repeats=repeats),
                   "forward_and_gradient_ms": timed(step, x, repeats=repeats)}
        y, dx = np.asarray(y), np.asarray(dx)
        if ref is None:
            ref = (y, dx)
        row["max_abs_diff_output"] = float(np.abs(y - ref[0]).max())
        row["max_abs_diff_gradient"] = float(np.abs(dx - ref[1]).max())
        row["bitwise_equal"] = bool(np.array_equal(y, ref[0]) and np.array_equal(dx, ref[1]))
        rows[name] = row
        print(f"  {name:28s} {row['forward_ms']:7.2f} ms fwd  {row['forward_and_gradient_ms']:7.2f} ms fwd+grad  "
              f"bitwise {row['bitwise_equal']}", flush=True)
    return rows


def report_md(res: dict) -> str:
    lines = [f"# LRN window-sum formulations on XLA:CPU, {res['date']}", "",
             f"Machine: {res['cpu']} ({res['cores']} cores), jax {res['jax']}; load 1 min before/after "
             f"{res['load_before']} / {res['load_after']}.  `{res['command']}`.  Median of {res['repeats']} calls "
             "after one warm-up; max-pool 3/2 after the LRN in every row; differences against the package's.", ""]
    for shape, rows in res["shapes"].items():
        lines += [f"## {shape}", "",
                  "| formulation | forward ms | forward + gradient ms | max diff (output, gradient) |",
                  "|---|---|---|---|"]
        for name, r in rows.items():
            if "forward_and_gradient_ms" not in r:
                lines.append(f"| {name} | {r['forward_ms']:.2f} | - | - |")
                continue
            diff = "bitwise equal" if r["bitwise_equal"] else \
                f"{r['max_abs_diff_output']:.2g}, {r['max_abs_diff_gradient']:.2g}"
            lines.append(f"| {name} | {r['forward_ms']:.2f} | {r['forward_and_gradient_ms']:.2f} | {diff} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/lrn_formulations")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--publish", metavar="NAME", help="copy results.json and report.md to experiments/results/NAME")
    args = p.parse_args(argv)
    if args.repeats < 1:
        print(f"error: --repeats must be at least 1, got {args.repeats}", file=sys.stderr)
        return 2
    if jax.default_backend() != "cpu":
        print(f"error: this measures XLA:CPU; JAX's default backend here is {jax.default_backend()} "
              "(set JAX_PLATFORMS=cpu)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "unknown CPU"
    res = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu, "cores": len(os.sched_getaffinity(0)),
           "jax": jax.__version__, "repeats": args.repeats, "load_before": [round(v, 2) for v in os.getloadavg()],
           "command": "python experiments/lrn_formulations.py" + (f" --repeats {args.repeats}"
                                                                  if args.repeats != 15 else ""),
           "shapes": {}}
    for label, shape in SHAPES.items():
        print(label, flush=True)
        res["shapes"][label] = measure(shape, args.repeats)
    res["load_after"] = [round(v, 2) for v in os.getloadavg()]
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "report.md").write_text(report_md(res) + "\n")
    print(report_md(res))
    if args.publish:
        sys.path.insert(0, str(HERE))
        from _results import publish
        print(f"published {publish(out, args.publish, ['results.json', 'report.md'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
