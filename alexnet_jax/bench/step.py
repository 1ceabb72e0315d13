"""The training step of `Trainer.build(config)` (forward, backward, the paper's SGD, dropout on, state
donated) on synthetic data already on the device, under a (data, model) mesh.

Reported: compile time, the median of per-step times (each step synchronised) after warm-up, img/s
(batch / median) and img/s pipelined (N steps back to back, one sync at the end: the method of the
torch_alexnet peer), model FLOPs utilisation, peak memory and forward MACs per image.  `protocol`
records the warm-up, the timed steps and the statistic (alexnet_jax.bench.protocol; the torch twins
record theirs the same way).  `achieved_flops_per_second` is the model FLOPs below over the median step.

MFU = 3 x forward MACs x 2 FLOP/MAC x batch / step time / (peak FLOP/s per device x devices).  The 3
is forward + backward (input and weight gradients); LRN, pooling, activations and the update are not
counted.  Peaks are dense datasheet numbers (`PEAKS`); float32 counts at the TF32 rate, which XLA uses
for float32 convolutions and matmuls on Ampere/Hopper at default precision.  Unknown devices (every
CPU) get mfu = null unless `peak_tflops` is given.
"""

from __future__ import annotations

import inspect
import math
import os
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp

from alexnet_jax.bench.protocol import step_protocol
from alexnet_jax.config import Config, ConfigError
from alexnet_jax.models import MODELS, model_class
from alexnet_jax.summary import summarize
from alexnet_jax.trainer import Trainer

# name -> the Config fields of a benchmark preset (any registry model name works too)
PRESETS: dict[str, dict[str, Any]] = {
    "alexnet": dict(model="alexnet", input_size=227, width=1.0, num_classes=1000),
    "alexnet_owt": dict(model="alexnet_owt", input_size=224, width=1.0, num_classes=1000),
    "lenet5": dict(model="lenet5", input_size=32, width=1.0, num_classes=10),
    "alexnet_cifar": dict(model="alexnet", input_size=32, width=1.0, num_classes=10),
}

# (lower-case substring of jax's device_kind, {dtype: dense TFLOP/s}, source).  First match wins.
PEAKS: list[tuple[str, dict[str, float], str]] = [
    ("h100 pcie", {"bfloat16": 756.0, "float32": 378.0}, "NVIDIA H100 PCIe datasheet, dense (fp32 = TF32)"),
    ("h100", {"bfloat16": 989.4, "float32": 494.7}, "NVIDIA H100 SXM datasheet, dense (fp32 = TF32)"),
    ("gh200", {"bfloat16": 989.4, "float32": 494.7}, "NVIDIA GH200 datasheet, dense (fp32 = TF32)"),
    ("h200", {"bfloat16": 989.4, "float32": 494.7}, "NVIDIA H200 datasheet (the H100 SXM chip), dense"),
    ("a100", {"bfloat16": 312.0, "float32": 156.0}, "NVIDIA A100 datasheet, dense (fp32 = TF32)"),
]


def bench_config(name: str, *, batch: int, dtype: str = "float32", mesh: tuple[int, int] = (-1, 1),
                 input_size: int | None = None, width: float | None = None, num_classes: int | None = None,
                 lr: float = 0.01, weight_decay: float = 5e-4, seed: int = 0):
    """The Config a benchmark trains: a preset or any registry model, with overrides."""
    if name in PRESETS:
        p = dict(PRESETS[name])
    elif name in MODELS:
        defaults = inspect.signature(model_class(name).__init__).parameters
        p = dict(model=name, input_size=defaults["input_size"].default, width=1.0,
                 num_classes=defaults["num_classes"].default)
    else:
        raise ConfigError(f"unknown model {name!r}; presets: {', '.join(PRESETS)}; registry: {', '.join(MODELS)}")
    p.update({k: v for k, v in dict(input_size=input_size, width=width, num_classes=num_classes).items()
              if v is not None})
    return Config(**p, dtype=dtype, head="softmax", batch_size=batch, lr=lr, weight_decay=weight_decay, seed=seed,
                  mesh_data=mesh[0], mesh_model=mesh[1]).validate()


def device_info() -> dict[str, Any]:
    d = jax.devices()[0]
    return {"platform": d.platform, "device": d.device_kind, "device_count": jax.device_count(),
            "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", "")}


def peak_flops(device_kind: str, dtype: str, override_tflops: float | None = None) -> tuple[float | None, str]:
    """(peak FLOP/s of one device, where from); (None, why) where no peak is known."""
    if override_tflops:
        return override_tflops * 1e12, "given with --peak-tflops"
    kind = device_kind.lower()
    for sub, rates, src in PEAKS:
        if sub in kind and dtype in rates:
            return rates[dtype] * 1e12, src
    return None, f"unknown for {device_kind!r} ({dtype}): MFU not computed"


def macs_per_image(config) -> int:
    """Forward multiply-adds per image (alexnet_jax.summary's counting rule), traced abstractly."""
    extra = {"head": config.head} if config.model == "lenet5" else {}
    return int(summarize(config.model, input_size=config.input_size, num_classes=config.num_classes,
                         width=config.width, **extra)["macs"])


def synthetic_batch(trainer, seed: int = 1):
    """Random normal images and random labels, created directly on the devices (never zeros)."""
    c = trainer.config
    shape = (c.batch_size, *trainer.input_shape)
    k1, k2 = jax.random.split(jax.random.key(seed))
    image = jax.jit(lambda k: jax.random.normal(k, shape, jnp.float32),
                    out_shardings=trainer.plan.batch_sharding(4))(k1)
    label = jax.jit(lambda k: jax.random.randint(k, (c.batch_size,), 0, c.num_classes, jnp.int32),
                    out_shardings=trainer.plan.batch_sharding(1))(k2)
    return {"image": image, "label": label}


def memory(compiled) -> dict[str, int] | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes")
    out = {k: int(getattr(m, k, 0) or 0) for k in keys}
    # arguments + outputs that do not reuse a donated argument + scratch
    out["estimated_peak_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                                   - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
    return out


def bench_step(config, *, steps: int = 10, warmup: int = 2, peak_tflops: float | None = None,
               name: str | None = None) -> dict[str, Any]:
    """Compile and time the train step of `config` (see the module docstring for each number)."""
    info = device_info()
    trainer = Trainer.build(config)
    state = trainer.init()
    data = synthetic_batch(trainer)
    jax.block_until_ready((state, data))
    t0 = time.perf_counter()
    compiled = trainer.train_step.lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(max(warmup, 1)):
        state, metrics = compiled(state, data)
    jax.block_until_ready((state, metrics))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, metrics = compiled(state, data)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, data)
    jax.block_until_ready((state, metrics))
    pipelined = (time.perf_counter() - t) / steps
    loss = float(jax.device_get(metrics["loss"]))
    med = statistics.median(times)

    batch, devices = config.batch_size, trainer.mesh.devices.size
    macs = macs_per_image(config)
    model_flops = 3 * 2 * macs * batch
    peak, peak_src = peak_flops(info["device"], config.dtype, peak_tflops)
    mem = memory(compiled)
    try:
        ms = jax.devices()[0].memory_stats()
        stats_peak = int(ms["peak_bytes_in_use"]) if ms and "peak_bytes_in_use" in ms else None
    except Exception:  # noqa: BLE001
        stats_peak = None
    if stats_peak is not None:
        peak_mem, mem_src = stats_peak, "device.memory_stats()['peak_bytes_in_use'] (process high-water mark)"
    elif mem is not None:
        peak_mem, mem_src = mem["estimated_peak_bytes"], "compiled.memory_analysis(): args + outputs - aliased + temp"
    else:
        peak_mem, mem_src = None, "unavailable"
    return {
        "model": name or config.model, "registry_model": config.model, "input_size": config.input_size,
        "width": config.width, "num_classes": config.num_classes, "batch": batch, "dtype": config.dtype,
        "mesh": {k: int(v) for k, v in trainer.mesh.shape.items()}, "plan": trainer.plan.describe(),
        "device": info["device"], "platform": info["platform"], "devices_used": int(devices),
        "threads": info["cpu_cores"],
        "xla_flags": info["xla_flags"],
        "compile_seconds": round(compile_s, 3), "steps": steps, "warmup": max(warmup, 1),
        "protocol": step_protocol(warmup, steps), "step_seconds_all": times,
        "step_seconds_median": med, "step_seconds_min": min(times), "step_seconds_max": max(times),
        "images_per_second": batch / med, "images_per_second_pipelined": batch / pipelined,
        "macs_per_image": macs, "model_flops_per_step": model_flops,
        "achieved_flops_per_second": model_flops / med,
        "mfu": model_flops / med / (peak * devices) if peak else None,
        "peak_flops_per_device": peak, "peak_flops_source": peak_src,
        "peak_memory_bytes": peak_mem, "peak_memory_source": mem_src, "compiled_memory": mem,
        "final_loss": loss, "loss_finite": bool(math.isfinite(loss)),
    }


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def step_table(results: list[dict[str, Any]], ratios: dict[str, Any] | None = None) -> str:
    head = (f"{'model':<14}{'input':>6}{'width':>7}{'batch':>6}{'dtype':>10}{'mesh':>7}{'compile s':>10}"
            f"{'step ms':>10}{'img/s':>11}{'img/s pipe':>11}{'MFU':>7}{'peak MiB':>10}{'GMAC/img':>10}")
    lines = [head]
    for r in results:
        if "error" in r:
            lines.append(f"{r.get('model', '?'):<14} error: {r['error'][:200]}")
            continue
        mesh = f"{r['mesh']['data']}x{r['mesh']['model']}"
        mem = r["peak_memory_bytes"] / 2**20 if r["peak_memory_bytes"] is not None else None
        lines.append(f"{r['model']:<14}{r['input_size']:>6}{r['width']:>7.3g}{r['batch']:>6}{r['dtype']:>10}"
                     f"{mesh:>7}{r['compile_seconds']:>10.1f}{r['step_seconds_median'] * 1e3:>10.1f}"
                     f"{r['images_per_second']:>11.1f}{r['images_per_second_pipelined']:>11.1f}"
                     f"{_fmt(r['mfu'] and 100 * r['mfu'], '6.1f'):>6}{'%' if r['mfu'] else ' '}"
                     f"{_fmt(mem, '.0f'):>10}{r['macs_per_image'] / 1e9:>10.3f}")
    ok = [r for r in results if "error" not in r]
    if ok:
        r = ok[0]
        peak = r["peak_flops_per_device"]
        lines.append(f"device: {r['device']} ({r['platform']}); peak used for MFU: "
                     f"{_fmt(peak and peak / 1e12, '.1f', 'unknown')} TFLOP/s per device ({r['peak_flops_source']}); "
                     f"memory: {r['peak_memory_source']}")
    for name, q in (ratios or {}).items():
        lines.append(f"ours/peer {name}: {q['ratio_vs_best_peer']:.2f}x vs {q['best_peer']} "
                     f"(ours {q['ours_images_per_second']:.1f} img/s, {q['ours_method']})")
    return "\n".join(lines)
