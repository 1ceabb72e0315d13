"""The achievable matmul rate of this machine, the yardstick for the FLOP/s a training step reaches.

A datasheet peak is unknown for most CPUs (clock, vector units and AMX tiles vary by part and by
virtual machine), so the peak is *measured*: a large (size x size) @ (size x size) matmul in float32 and
bfloat16, through XLA (here) and through torch (torch_twins `matmul`, in a subprocess with the same
threads), and the faster of the two frameworks is the achievable peak of that precision.  A training
step's achieved FLOP/s (3 x forward MACs x 2 per image, as MFU counts them) is reported as a fraction of
it."""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.bench import peers


def jax_matmul_rate(size: int = 4096, dtype: str = "float32", reps: int = 5,
                    accumulate: str | None = None) -> dict[str, Any]:
    """FLOP/s of a jitted (size x size) @ (size x size) jnp.dot in `dtype` on the default device: one
    warm-up call after compiling, then the median of `reps` synchronised calls (2 size^3 FLOP each).
    `accumulate="float32"` asks for a float32 result (preferred_element_type): on XLA:CPU the only
    bfloat16 product that runs on the CPU's bfloat16 units; a bfloat16 result is computed in float32."""
    rng = np.random.default_rng(0)
    a, b = (jax.device_put(jnp.asarray(rng.standard_normal((size, size)), dtype)) for _ in range(2))
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=accumulate)).lower(a, b).compile()
    jax.block_until_ready(f(a, b))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(a, b))
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"framework": "jax", "dtype": dtype, "result_dtype": accumulate or dtype, "size": size, "reps": reps,
            "seconds_median": med,
            "flops_per_second": 2 * size ** 3 / med, "device": str(jax.devices()[0].device_kind),
            "jax": jax.__version__}


def measure_peaks(threads: int | None, *, size: int = 4096, dtypes=("float32", "bfloat16"),
                  torch_too: bool = True) -> dict[str, Any]:
    """{dtype: {"jax": run, ["jax_float32_result": run,] "torch": run, "peak_flops_per_second": the fastest,
    "source": which}}; bfloat16 is timed with a bfloat16 and with a float32 result through jax (torch's
    bfloat16 mm accumulates in float32 and returns bfloat16)."""
    out: dict[str, Any] = {}
    torch_runs = {}
    if torch_too:
        t = peers.run_torch_matmul(threads, size, dtypes)
        torch_runs = {r["dtype"]: r for r in t.get("runs", [])}
        if not torch_runs:
            out["torch_note"] = t.get("skipped") or t.get("error")
    for d in dtypes:
        entry = {"jax": jax_matmul_rate(size, d)}
        if d != "float32":
            entry["jax_float32_result"] = jax_matmul_rate(size, d, accumulate="float32")
        if d in torch_runs:
            entry["torch"] = torch_runs[d]
        best = max((k for k in entry), key=lambda k: entry[k]["flops_per_second"])
        entry["peak_flops_per_second"] = entry[best]["flops_per_second"]
        entry["source"] = f"{best} {size}x{size} matmul"
        out[d] = entry
    return out


def share_of_peak(achieved_flops_per_second: float | None, peaks: dict[str, Any] | None, dtype: str) -> float | None:
    peak = ((peaks or {}).get(dtype) or {}).get("peak_flops_per_second")
    return achieved_flops_per_second / peak if achieved_flops_per_second and peak else None
