"""Benchmarks of the real training step, and of the CPU-side pieces around it.

Four modes (`alexnet-jax bench ...`, see alexnet_jax/tools/bench.py):

step (default)    `bench_step`: the training step of `alexnet_jax.train.make_train_step` (forward,
                  backward, the paper's SGD with momentum and weight decay, dropout on, state donated),
                  on synthetic data already on the device, under a (data, model) mesh.  Reports compile
                  time, the median of per-step times (each step synchronised) after warm-up, img/s
                  (batch / median) and img/s pipelined (N steps back to back, one sync at the end: the
                  method of ../shared/peers/torch_alexnet.py), model FLOPs utilisation, peak memory and
                  forward MACs per image.
lenet-epoch       `lenet_epoch`: one MNIST epoch (60,000 // 128 = 468 steps of batch 128) of our `lenet5`
                  (softmax head, paper SGD), the whole epoch on the device, K steps per dispatch through
                  `jax.lax.scan` (on a CPU, dispatch dominates a LeNet step), against the shipped peer
                  ../shared/peers/torch_lenet_cpu.py (a simplified LeNet) and against the torch twin of
                  our lenet5 (`torch_twins.lenet5_twin`, the same function), each in its own process
                  with the same thread count.
input-pipeline    `input_pipeline`: decode + resize/centre-crop 256 + mean subtraction + random crop + flip
                  + PCA lighting (the `alexnet` preprocessing of alexnet_jax.data) per CPU core.
lrn               `compare_lrn`: forward+backward time and exactness of LRN formulations.

MFU = 3 x forward MACs x 2 FLOP/MAC x batch / step time / (peak FLOP/s per device x devices).  The 3 is
forward + backward (input and weight gradients); LRN, pooling, activations and the update are not counted.
Peaks are dense tensor-core datasheet numbers (`PEAKS`); float32 is counted at the TF32 rate because XLA
uses TF32 for float32 convolutions and matmuls on Ampere/Hopper at default precision.  Unknown devices
(every CPU) get mfu = null unless `peak_tflops` is given.

Nothing here imports alexnet_jax.data except `input_pipeline` (the lent GPU machines have no
tensorflow-datasets or grain).  The torch twins (`alexnet_jax.bench.torch_twins`) run in subprocesses.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# name -> (registry model, input size, width, classes, extra kwargs)
PRESETS: dict[str, dict[str, Any]] = {
    "alexnet": dict(model="alexnet", input_size=227, width=1.0, num_classes=1000),
    "alexnet_owt": dict(model="alexnet_owt", input_size=224, width=1.0, num_classes=1000),
    "lenet5": dict(model="lenet5", input_size=32, width=1.0, num_classes=10),
    "alexnet_cifar": dict(model="alexnet", input_size=32, width=1.0, num_classes=10),
}

# (lower-case substring of jax's device_kind, {dtype: dense TFLOP/s}, where from).  First match wins.
PEAKS: list[tuple[str, dict[str, float], str]] = [
    ("h100 pcie", {"bfloat16": 756.0, "float32": 378.0}, "NVIDIA H100 PCIe datasheet, dense (fp32 = TF32)"),
    ("h100", {"bfloat16": 989.4, "float32": 494.7}, "NVIDIA H100 SXM datasheet, dense (fp32 = TF32)"),
    ("gh200", {"bfloat16": 989.4, "float32": 494.7}, "NVIDIA GH200 datasheet, dense (fp32 = TF32)"),
    ("h200", {"bfloat16": 989.4, "float32": 494.7}, "NVIDIA H200 datasheet (same chip as H100 SXM), dense"),
    ("a100", {"bfloat16": 312.0, "float32": 156.0}, "NVIDIA A100 datasheet, dense (fp32 = TF32)"),
]
# Measured ceilings quoted in the issue: a large bf16 matmul on the lent H100 reached 786 TFLOP/s.
MEASURED_TFLOPS: list[tuple[str, dict[str, float], str]] = [
    ("h100", {"bfloat16": 786.0}, "bf16 matmul measured on the lent H100 (issue)"),
    ("h200", {"bfloat16": 786.0}, "H100 measurement (issue); H200 has the same compute"),
]

# From the issue: plain Flax AlexNet training on one H100 (bf16) consumed 23.5k img/s.
GPU_STEP_RATE_IMG_S = 23_500.0

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_peer_dir() -> Path:
    """../shared/peers relative to the repository (Path(alexnet_jax.__file__).parents[2]/shared/peers)."""
    import alexnet_jax
    return Path(alexnet_jax.__file__).resolve().parents[2] / "shared" / "peers"


def default_data_dir(name: str) -> Path:
    import alexnet_jax
    return Path(alexnet_jax.__file__).resolve().parents[2] / "shared" / "data" / name


# ------------------------------------------------------------------------------------------------
# Devices
# ------------------------------------------------------------------------------------------------
def force_host_devices(n: int) -> None:
    """Ask XLA for `n` virtual CPU devices.  Must run before JAX initialises its backends."""
    flag = f"--xla_force_host_platform_device_count={int(n)}"
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(
        "--xla_force_host_platform_device_count")]
    os.environ["XLA_FLAGS"] = " ".join(flags + [flag])
    if "jax" in sys.modules:
        from jax._src import xla_bridge
        if xla_bridge.backends_are_initialized():
            import jax
            if jax.local_device_count("cpu") != n:
                raise RuntimeError(f"--force-host-devices {n}: JAX's backends are already initialised; set "
                                   f"XLA_FLAGS={flag} in the environment instead")


def parse_mesh(text: str | None) -> tuple[int, int]:
    """'data=1,model=2' (either may be omitted; data=-1 takes every device) -> (data, model)."""
    if not text:
        return -1, 1
    out = {"data": -1, "model": 1}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"bad --mesh {text!r}: expected data=N,model=M")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in out:
            raise ValueError(f"bad --mesh axis {k!r}: the axes are data and model")
        out[k] = int(v)
    return out["data"], out["model"]


def device_info() -> dict[str, Any]:
    import jax
    d = jax.devices()[0]
    return {"platform": d.platform, "device": d.device_kind, "device_count": jax.device_count(),
            "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "jax": jax.__version__}


def _lookup(table, device_kind: str, dtype: str):
    kind = device_kind.lower()
    for sub, rates, src in table:
        if sub in kind and dtype in rates:
            return rates[dtype] * 1e12, src
    return None, None


def peak_flops(device_kind: str, dtype: str,
               override_tflops: float | None = None) -> tuple[float | None, str]:
    """(peak FLOP/s of one device, description); (None, 'unknown ...') where no peak is known."""
    if override_tflops:
        return override_tflops * 1e12, "given with --peak-tflops"
    flops, src = _lookup(PEAKS, device_kind, dtype)
    if flops is None:
        return None, f"unknown for {device_kind!r} ({dtype}): MFU not computed"
    return flops, src


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str                 # preset or registry name as asked
    model: str                # registry name
    input_size: int
    width: float
    num_classes: int
    channels: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_model(name: str, *, input_size: int | None = None, width: float | None = None,
                  num_classes: int | None = None) -> ModelSpec:
    """A preset (PRESETS) or any registry model at any input size / width."""
    from flax import nnx

    from alexnet_jax.models import MODELS, create_model
    if name in PRESETS:
        p = PRESETS[name]
    elif name in MODELS:
        p = dict(model=name, input_size=None, width=1.0, num_classes=None)
    else:
        raise ValueError(f"unknown model {name!r}; presets: {', '.join(PRESETS)}; "
                         f"registry: {', '.join(MODELS)}")
    size = input_size or p["input_size"]
    w = p["width"] if width is None else width
    k = num_classes or p["num_classes"]
    with nnx.use_eager_sharding(False):
        probe = nnx.eval_shape(lambda: create_model(p["model"], num_classes=k, input_size=size, width=w))
    return ModelSpec(name=name, model=p["model"], input_size=int(probe.input_size), width=float(w),
                     num_classes=int(probe.num_classes), channels=int(getattr(probe, "in_channels", 3)))


def param_count(spec: ModelSpec) -> int:
    """Trainable parameters of `spec`, from an abstract model (nothing is allocated)."""
    from flax import nnx

    from alexnet_jax.models import create_model
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: create_model(spec.model, num_classes=spec.num_classes,
                                                    input_size=spec.input_size, width=spec.width))
    return int(sum(math.prod(x.shape) for x in jax_leaves(nnx.state(model, nnx.Param))))


def jax_leaves(tree):
    import jax
    return jax.tree.leaves(tree)


def macs_per_image(spec: ModelSpec) -> int:
    """Forward multiply-adds per image, traced abstractly (alexnet_jax.summary's counting rule)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from alexnet_jax.models import create_model
    from alexnet_jax.summary import layer_table
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: create_model(spec.model, num_classes=spec.num_classes,
                                                    input_size=spec.input_size, width=spec.width))
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((1, spec.input_size, spec.input_size, spec.channels), jnp.float32)
    table = layer_table(lambda s, x: nnx.merge(graphdef, s)(x, train=False), state, x)
    return int(sum(r["macs"] for r in table.values()))


def _config(spec: ModelSpec, *, batch: int, dtype: str, mesh_shape: tuple[int, int], lr: float,
            weight_decay: float = 5e-4, seed: int = 0):
    from alexnet_jax.config import Config
    return Config(model=spec.model, num_classes=spec.num_classes, input_size=spec.input_size,
                  width=spec.width, dtype=dtype, head="softmax", batch_size=batch, lr=lr,
                  weight_decay=weight_decay, seed=seed, mesh_data=mesh_shape[0], mesh_model=mesh_shape[1])


def build_train_step(spec: ModelSpec, *, batch: int, dtype: str = "float32", mesh_shape=(-1, 1),
                     lr: float = 0.01, weight_decay: float = 5e-4, seed: int = 0):
    """The real training step of alexnet_jax.train for `spec`: (jitted step, state, mesh, batch shardings)."""
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from alexnet_jax import optim, parallel, train
    config = _config(spec, batch=batch, dtype=dtype, mesh_shape=mesh_shape, lr=lr, weight_decay=weight_decay,
                     seed=seed)
    mesh = parallel.make_mesh(config.mesh_data, config.mesh_model)
    probe = nnx.eval_shape(lambda: train._no_eager(train.model_builder(config)))
    divisor = parallel.batch_divisor(probe, mesh)
    if batch % divisor:
        raise ValueError(f"batch {batch} is not divisible by the {divisor} devices that split it "
                         f"(mesh data={mesh.shape['data']} x model={mesh.shape['model']})")
    tx = optim.paper_sgd(config.lr, config.momentum, config.weight_decay)
    graphdef, state = train.create_train_state(config, mesh, tx)
    shardings = train.state_shardings(state)
    axis = parallel.batch_spec(probe, mesh)[0]
    batch_sharding = {"image": NamedSharding(mesh, P(axis)), "label": NamedSharding(mesh, P(axis))}
    step = train.make_train_step(graphdef, tx, mesh, shardings, batch_sharding)
    return step, state, mesh, batch_sharding


def synthetic_batch(spec: ModelSpec, batch: int, batch_sharding, seed: int = 1):
    """Random normal images and random labels, created directly on the devices (never zeros)."""
    import jax
    import jax.numpy as jnp
    shape = (batch, spec.input_size, spec.input_size, spec.channels)
    k1, k2 = jax.random.split(jax.random.key(seed))
    image = jax.jit(lambda k: jax.random.normal(k, shape, jnp.float32),
                    out_shardings=batch_sharding["image"])(k1)
    label = jax.jit(lambda k: jax.random.randint(k, (batch,), 0, spec.num_classes, jnp.int32),
                    out_shardings=batch_sharding["label"])(k2)
    return {"image": image, "label": label}


def _memory(compiled) -> dict[str, int] | None:
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


def _xla_flops(compiled) -> float | None:
    try:
        c = compiled.cost_analysis()
    except Exception:  # noqa: BLE001
        return None
    if isinstance(c, (list, tuple)):
        c = c[0] if c else None
    return float(c["flops"]) if c and "flops" in c else None


def bench_step(spec: ModelSpec, *, batch: int, dtype: str = "float32", mesh_shape=(-1, 1), steps: int = 10,
               warmup: int = 2, peak_tflops: float | None = None, lr: float = 0.01) -> dict[str, Any]:
    """Compile and time the training step of `spec` (see the module docstring for each number)."""
    import jax

    info = device_info()
    step, state, mesh, batch_sharding = build_train_step(spec, batch=batch, dtype=dtype,
                                                         mesh_shape=mesh_shape, lr=lr)
    data = synthetic_batch(spec, batch, batch_sharding)
    jax.block_until_ready((state, data))
    t0 = time.perf_counter()
    compiled = step.lower(state, data).compile()
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

    devices = mesh.devices.size
    macs = macs_per_image(spec)
    model_flops = 3 * 2 * macs * batch
    peak, peak_src = peak_flops(info["device"], dtype, peak_tflops)
    mfu = model_flops / med / (peak * devices) if peak else None
    measured, measured_src = _lookup(MEASURED_TFLOPS, info["device"], dtype)
    mem = _memory(compiled)
    stats_peak = None
    try:
        ms = jax.devices()[0].memory_stats()
        stats_peak = int(ms["peak_bytes_in_use"]) if ms and "peak_bytes_in_use" in ms else None
    except Exception:  # noqa: BLE001
        stats_peak = None
    if stats_peak is not None:
        peak_mem, mem_src = stats_peak, "device.memory_stats()['peak_bytes_in_use'] (process high-water mark)"
    elif mem is not None:
        peak_mem = mem["estimated_peak_bytes"]
        mem_src = "compiled.memory_analysis(): arguments + outputs - aliased + temp"
    else:
        peak_mem, mem_src = None, "unavailable"
    return {
        "model": spec.name, "registry_model": spec.model, "input_size": spec.input_size, "width": spec.width,
        "num_classes": spec.num_classes, "batch": batch, "dtype": dtype,
        "mesh": {"data": int(mesh.shape["data"]), "model": int(mesh.shape["model"])},
        "device": info["device"], "platform": info["platform"], "devices_used": int(devices),
        "compile_seconds": round(compile_s, 3), "steps": steps, "warmup": max(warmup, 1),
        "step_seconds_median": med, "step_seconds_min": min(times), "step_seconds_max": max(times),
        "images_per_second": batch / med, "images_per_second_pipelined": batch / pipelined,
        "macs_per_image": macs, "model_flops_per_step": model_flops,
        "xla_flops_per_step": _xla_flops(compiled),
        "mfu": mfu, "peak_flops_per_device": peak, "peak_flops_source": peak_src,
        "mfu_vs_measured_peak": model_flops / med / (measured * devices) if measured else None,
        "measured_peak_flops_per_device": measured, "measured_peak_source": measured_src,
        "peak_memory_bytes": peak_mem, "peak_memory_source": mem_src, "device_peak_bytes_in_use": stats_peak,
        "compiled_memory": mem, "final_loss": loss, "loss_finite": bool(math.isfinite(loss)),
    }


def _hlo_descriptions(hlo_text: str) -> dict[str, str]:
    """{instruction name: "scope fwd|bwd" from op_name metadata (its own or its fused computation's),
    else the fused computation's root instruction}, for the instructions of a compiled module."""
    import collections
    import re

    comps: dict[str, list[str]] = {}
    cur = None
    for line in hlo_text.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .*\{$", line)
        if m:
            cur = m.group(1)
            comps[cur] = []
        elif cur is not None and line.strip() and line.strip() != "}":
            comps[cur].append(line.strip())

    def unwrap(q: str) -> str:  # "transpose(jvp(C3))" -> "C3"
        while (m := re.match(r"^(?:jit|pjit|jvp|transpose|vmap)\((.*)\)$", q)):
            q = m.group(1)
        return q

    def scope(op_name: str) -> str:
        parts = [unwrap(q) for q in op_name.split("/")]
        layer = next((q for q in reversed(parts[:-1]) if re.match(
            r"^(conv\d|lrn\d|pool\d|fc\d|C\d|S\d|F6|OUT|exchange)$", q)), None)
        return f"{layer or 'other'} {'bwd' if 'transpose(' in op_name else 'fwd'}"

    out = {}
    for body in comps.values():
        for ins in body:
            m = re.match(r"^(?:ROOT )?%([\w.\-]+) = (.*)$", ins)
            if not m:
                continue
            name, rest = m.groups()
            names = re.findall(r'op_name="([^"]+)"', rest)
            called = re.search(r"calls=%([\w.\-]+)", rest)
            root = ""
            if called and called.group(1) in comps:
                sub = comps[called.group(1)]
                names += [n for line in sub for n in re.findall(r'op_name="([^"]+)"', line)]
                roots = [line for line in sub if line.startswith("ROOT ")]
                if roots:
                    r = re.match(r"^ROOT %[\w.\-]+ = (\S+) (\w[\w\-]*)\(", roots[0])
                    w = re.search(r"window=\{size=(\S+?)[ }]", roots[0])
                    root = f"{r.group(2)} {r.group(1)}" if r else roots[0][:60]
                    root += f" window {w.group(1)}" if w else ""
            if names:
                top = collections.Counter(scope(n) for n in names).most_common(1)[0][0]
                out[name] = f"{top}" + (f" [{root}]" if root.startswith("convolution") else "")
            elif root:
                out[name] = root
    return out


def profile_step(spec: ModelSpec, *, batch: int, dtype: str = "float32", mesh_shape=(1, 1), steps: int = 3,
                 top: int = 15, trace_dir: str | None = None) -> dict[str, Any]:
    """Per-op device time of the training step from a jax.profiler trace (perfetto JSON): the `top` ops by
    time per step (summed over XLA:CPU's worker threads), their share of all op time, what each op is
    (layer and direction from the HLO metadata, or the fused root instruction), and shares per layer."""
    import collections
    import glob
    import re
    import tempfile

    import jax

    step, state, mesh, batch_sharding = build_train_step(spec, batch=batch, dtype=dtype, mesh_shape=mesh_shape)
    data = synthetic_batch(spec, batch, batch_sharding)
    compiled = step.lower(state, data).compile()
    for _ in range(2):
        state, metrics = compiled(state, data)
    jax.block_until_ready((state, metrics))
    d = trace_dir or tempfile.mkdtemp(prefix="alexnet_jax_profile_")
    t = time.perf_counter()
    with jax.profiler.trace(d, create_perfetto_trace=True):
        for _ in range(steps):
            state, metrics = compiled(state, data)
        jax.block_until_ready((state, metrics))
    wall = (time.perf_counter() - t) / steps
    files = sorted(glob.glob(os.path.join(d, "**", "perfetto_trace.json.gz"), recursive=True))
    if not files:
        return {"error": f"no perfetto trace under {d}"}
    events = json.load(gzip.open(files[-1]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    desc = _hlo_descriptions(compiled.as_text())
    # un-annotated weight-gradient convolutions: name them by the kernel whose dimensions they have
    kernels = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if len(leaf.shape) >= 4 and any("kernel" in k for k in keys):
            h, w, i, o = leaf.shape[-4:]
            kernels[(i, h, w, o)] = keys[0]     # XLA:CPU's weight-gradient conv writes (I, H, W, O)
    for name, what in desc.items():
        shape = re.match(r"^convolution f32\[([\d,]+)\]", what)
        if shape:
            layer = kernels.get(tuple(int(v) for v in shape.group(1).split(",")))
            desc[name] = f"{layer} bwd (weight gradient)" if layer else what
        elif what.startswith("iota s32") or "window 1x3x3x1" in what:
            desc[name] = "max-pool fwd (max + argmax, for select-and-scatter)"
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in desc:
            per_op[e["name"]] += float(e.get("dur", 0.0)) / 1e3 / steps   # us -> ms per step
    total = sum(per_op.values()) or 1.0
    per_layer: collections.Counter = collections.Counter()
    for name, ms in per_op.items():
        per_layer[desc[name].split(" [")[0]] += ms
    return {"model": spec.name, "batch": batch, "step_seconds_wall_traced": wall, "op_ms_total_per_step": total,
            "note": "ms summed over XLA:CPU worker threads (can exceed wall time); share = of all op time",
            "top_ops": [{"op": n, "what": desc[n], "ms_per_step": ms, "share": ms / total}
                        for n, ms in per_op.most_common(top)],
            "per_layer": [{"layer": k, "ms_per_step": v, "share": v / total} for k, v in per_layer.most_common()],
            "trace_dir": d}


# ------------------------------------------------------------------------------------------------
# Peers (PyTorch, in subprocesses: torch is optional and JAX may hold most of a GPU's memory)
# ------------------------------------------------------------------------------------------------
def torch_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def _thread_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(threads)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + rest)
    return env


def _run_json(cmd: list[str], *, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run `cmd`; its last stdout line is JSON.  Errors come back as {"error": ...}."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "cmd": cmd}
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    try:
        out = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"exit {p.returncode}: {(p.stderr or p.stdout)[-800:]}", "cmd": cmd}
    if isinstance(out, dict):
        out.setdefault("cmd", cmd)
        if p.returncode:
            out.setdefault("error", f"exit {p.returncode}: {p.stderr[-400:]}")
    return out


PEER_KEYS = {"alexnet": "alexnet_2012_two_column", "alexnet_owt": "torchvision_alexnet"}


def run_peers(specs: list[ModelSpec], *, batch: int, steps: int, peer_dir: Path, device: str | None,
              threads: int | None, compile_: bool = True, dtype: str = "float32",
              timeout: float = 600) -> dict[str, Any]:
    """The PyTorch peers matching `specs` ({model name: peer result}); unmatched models are listed.

    torch_alexnet.py uses bf16 autocast on CUDA and float32 on a CPU whatever our dtype; the CIFAR
    mirror uses bf16 autocast when our dtype is bfloat16 and it runs on CUDA."""
    out: dict[str, Any] = {"skipped": {}}
    if not torch_available():
        out["skipped"]["all"] = "torch is not installed (pip install 'alexnet-jax[peer]')"
        return out
    want = {PEER_KEYS[s.name] for s in specs if s.name in PEER_KEYS and s.input_size in (224, 227)}
    if want:
        cmd = [sys.executable, "-m", "alexnet_jax.bench.torch_twins", "alexnet", "--peer-dir", str(peer_dir),
               "--batch", str(batch), "--steps", str(steps), "--variants", ",".join(sorted(want))]
        if device:
            cmd += ["--device", device]
        if threads:
            cmd += ["--threads", str(threads)]
        if not compile_:
            cmd.append("--no-compile")
        out["torch_alexnet"] = _run_json(cmd, env=_thread_env(threads), timeout=timeout)
    if any(s.name == "alexnet_cifar" for s in specs):
        cmd = [sys.executable, "-m", "alexnet_jax.bench.torch_twins", "cifar", "--batch", str(batch),
               "--steps", str(steps), "--device", device or ("cuda" if _torch_cuda() else "cpu")]
        if threads:
            cmd += ["--threads", str(threads)]
        if dtype == "bfloat16":
            cmd.append("--amp")
        out["torch_cifar"] = _run_json(cmd, env=_thread_env(threads), timeout=timeout)
    for s in specs:
        if s.name in PEER_KEYS and s.input_size not in (224, 227):
            out["skipped"][s.name] = f"torch_alexnet.py runs 224/227 inputs only (asked {s.input_size})"
        elif s.name not in PEER_KEYS and s.name != "alexnet_cifar":
            out["skipped"][s.name] = "no per-step PyTorch peer for this model (lenet5: use --lenet-epoch)"
    return out


def _torch_cuda() -> bool:
    try:
        p = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, timeout=120)
        return p.stdout.strip().endswith("True")
    except Exception:  # noqa: BLE001
        return False


def peer_ratios(results: list[dict[str, Any]], peers: dict[str, Any]) -> dict[str, Any]:
    """ours / peer img/s per matching model, each peer variant; `torch_alexnet` variants are compared
    with our pipelined rate (its method), the CIFAR peer with our median-step rate (its method)."""
    ratios: dict[str, Any] = {}
    ta = peers.get("torch_alexnet") or {}
    for r in results:
        name = r["model"]
        if name in PEER_KEYS and isinstance(ta.get("images_per_second"), dict):
            vs = {k: v for k, v in ta["images_per_second"].items() if k.startswith(PEER_KEYS[name])}
            if vs:
                best_k = max(vs, key=vs.get)
                ratios[name] = {"ours_images_per_second": r["images_per_second_pipelined"],
                                "ours_method": "pipelined (N steps, one sync)",
                                "peer": {k: {"images_per_second": v,
                                             "ratio": r["images_per_second_pipelined"] / v}
                                         for k, v in vs.items()},
                                "best_peer": best_k,
                                "ratio_vs_best_peer": r["images_per_second_pipelined"] / vs[best_k]}
        if name == "alexnet_cifar" and (peers.get("torch_cifar") or {}).get("best"):
            b = peers["torch_cifar"]["best"]
            ratios[name] = {"ours_images_per_second": r["images_per_second"],
                            "ours_method": "median of synchronised steps",
                            "best_peer": f"torch_cifar_two_column_alexnet channels_last={b['channels_last']} "
                                         f"compiled={b['compiled']}",
                            "peer_images_per_second": b["images_per_second"],
                            "ratio_vs_best_peer": r["images_per_second"] / b["images_per_second"]}
    return ratios


# ------------------------------------------------------------------------------------------------
# LeNet-5 epoch on MNIST
# ------------------------------------------------------------------------------------------------
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An MNIST IDX file (optionally .gz) as a numpy array."""
    path = Path(path)
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    dt, nd = raw[2], raw[3]
    if dt not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{dt:02x}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(nd))
    return np.frombuffer(raw, dtypes[dt], offset=4 + 4 * nd, count=math.prod(dims)).reshape(dims)


def _idx_file(d: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem, stem.replace("-idx", ".idx")):
        if (d / name).exists():
            return d / name
    raise FileNotFoundError(f"no {stem}[.gz] in {d} (pass --mnist-dir)")


def load_mnist_train(mnist_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (N, 32, 32, 1) in [0, 1], zero-padded 2 px like the peer; labels int32 (N,))."""
    d = Path(mnist_dir)
    x = read_idx(_idx_file(d, "train-images-idx3-ubyte"))
    y = read_idx(_idx_file(d, "train-labels-idx1-ubyte")).astype(np.int32)
    x = np.pad(x.astype(np.float32) / np.float32(255.0), ((0, 0), (2, 2), (2, 2)))[..., None]
    return x, y


MAX_UNROLL = 16


def lenet_epoch(mnist_dir: str | os.PathLike, *, batch: int = 128, chunks: list[int] | None = None,
                lr: float = 0.05, dtype: str = "float32", epochs: int = 2,
                max_unroll: int = MAX_UNROLL) -> dict[str, Any]:
    """Time epochs of our `lenet5` (softmax head, paper SGD, momentum 0.9, no weight decay like the peer)
    with K steps per dispatch for each K in `chunks` (default [1]).

    K = 1 calls the jitted train step of alexnet_jax.train once per batch.  K > 1 runs K steps in one
    dispatch with `jax.lax.scan`, fully unrolled when K <= `max_unroll` (else a while loop).  Measured on
    XLA:CPU (jax 0.10.2, experiments/results/bench_cpu_2026-11-25.md): a train step inside a while loop
    runs ~4x slower than the same step unrolled or dispatched alone, and at ~30 ms per LeNet step the
    ~0.1 ms dispatch is noise, so K = 1 is as fast as any K here.

    The epoch (n // batch steps, the remainder dropped as the peer does) is put on the device once, as
    one array per dispatch.  The first epoch is the warm-up; the reported time is the best of the
    following `epochs - 1` (at least one).  Training continues across the runs of different K."""
    import jax

    x, y = load_mnist_train(mnist_dir)
    n_steps = len(x) // batch
    if n_steps < 1:
        raise ValueError(f"{len(x)} images are fewer than one batch of {batch}")
    n = n_steps * batch
    spec = resolve_model("lenet5")
    step, state, mesh, batch_sharding = build_train_step(spec, batch=batch, dtype=dtype, mesh_shape=(1, 1),
                                                         lr=lr, weight_decay=0.0)
    inner = getattr(step, "__wrapped__", step)
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
        for _ in range(max(epochs, 2)):
            t = time.perf_counter()
            for px, py in parts:
                state, losses = exes[px.shape](state, px, py)
            jax.block_until_ready((state, losses))
            epoch_times.append(time.perf_counter() - t)
        timed = min(epoch_times[1:])
        last = float(jax.device_get(losses).reshape(-1)[-1])
        results.append({"steps_per_dispatch": k, "dispatches": len(parts), "how": how,
                        "compile_seconds": round(compile_s, 3),
                        "first_epoch_seconds": epoch_times[0], "epoch_seconds": timed,
                        "epoch_seconds_all": epoch_times, "images_per_second": n / timed,
                        "final_loss": last, "loss_finite": bool(math.isfinite(last))})
        del parts
    best = min(results, key=lambda r: r["epoch_seconds"])
    info = device_info()
    return {"mode": "lenet_epoch", "model": "lenet5", "head": "softmax",
            "optimizer": "paper_sgd momentum 0.9, no weight decay",
            "lr": lr, "batch": batch, "images": n, "steps": n_steps, "dtype": dtype, "device": info["device"],
            "platform": info["platform"], "threads": info["cpu_cores"], "runs": results,
            "epoch_seconds": best["epoch_seconds"], "images_per_second": best["images_per_second"],
            "steps_per_dispatch": best["steps_per_dispatch"]}


def run_lenet_peer(mnist_dir: str | os.PathLike, peer_dir: Path, threads: int | None,
                   timeout: float = 600) -> dict[str, Any]:
    if not torch_available():
        return {"skipped": "torch is not installed"}
    script = Path(peer_dir) / "torch_lenet_cpu.py"
    if not script.exists():
        return {"skipped": f"{script} not found"}
    return _run_json([sys.executable, str(script), str(mnist_dir)], env=_thread_env(threads), timeout=timeout)


def run_lenet_twin(mnist_dir: str | os.PathLike, threads: int | None, *, batch: int = 128, epochs: int = 3,
                   timeout: float = 900) -> dict[str, Any]:
    """The torch twin of our lenet5 (alexnet_jax.bench.torch_twins `lenet`), best of `epochs` epochs."""
    if not torch_available():
        return {"skipped": "torch is not installed"}
    cmd = [sys.executable, "-m", "alexnet_jax.bench.torch_twins", "lenet", str(mnist_dir), "--batch", str(batch),
           "--epochs", str(epochs)]
    if threads:
        cmd += ["--threads", str(threads)]
    return _run_json(cmd, env=_thread_env(threads), timeout=timeout)


# ------------------------------------------------------------------------------------------------
# Input pipeline (ImageNet-style JPEGs through the `alexnet` preprocessing)
# ------------------------------------------------------------------------------------------------
def _read_images(path: str | os.PathLike) -> list[tuple[str, bytes]]:
    path = Path(path)
    exts = (".jpg", ".jpeg", ".JPEG", ".JPG", ".png")
    if path.is_dir():
        return [(p.name, p.read_bytes()) for p in sorted(path.rglob("*")) if p.suffix in exts]
    with tarfile.open(path) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()
                if m.isfile() and m.name.endswith(exts)]


def input_pipeline(images: str | os.PathLike, *, input_size: int = 224, repeats: int = 5, batch: int = 50,
                   seed: int = 0, needed_rate: float = GPU_STEP_RATE_IMG_S) -> dict[str, Any]:
    """Per-core img/s of the `alexnet` training preprocessing of alexnet_jax.data (one process, one thread:
    PIL decode and numpy here are single-threaded): decode (JPEG draft downscale, resize shorter side to
    256, centre crop 256), mean-image subtraction, random crop, flip, PCA lighting.  Files are read into
    memory first (disk reads are not timed).  Best of `repeats` passes."""
    from alexnet_jax.data.pipeline import Preprocessor

    files = _read_images(images)
    if not files:
        raise FileNotFoundError(f"no images in {images}")
    pre = Preprocessor("alexnet", input_size, 3)
    decoded = np.stack([pre.decode(b) for _, b in files])
    pre = dataclasses.replace(pre, mean=decoded.astype(np.float32).mean(0))
    rng = np.random.default_rng(seed)
    sizes = []
    import io

    from PIL import Image
    for _, b in files:
        with Image.open(io.BytesIO(b)) as im:
            sizes.append(im.size)
    best = None
    for _ in range(repeats):
        t = time.perf_counter()
        dec = [pre.decode(b) for _, b in files]
        t_dec = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(0, len(dec), batch):
            chunk = np.stack(dec[i:i + batch])
            out = pre.train_batch(chunk, pre.draw(rng, len(chunk)))
        t_aug = time.perf_counter() - t
        if best is None or t_dec + t_aug < best[0] + best[1]:
            best = (t_dec, t_aug)
    t_dec, t_aug = best
    n = len(files)
    per_core = n / (t_dec + t_aug)
    px = [w * h for w, h in sizes]
    return {"mode": "input_pipeline", "images": n, "source": str(images), "input_size": input_size,
            "output_shape": list(out.shape[1:]), "median_source_pixels": int(np.median(px)),
            "median_source_size": list(sorted(sizes, key=lambda s: s[0] * s[1])[n // 2]),
            "decode_seconds": t_dec, "augment_seconds": t_aug,
            "decode_images_per_second": n / t_dec, "augment_images_per_second": n / t_aug,
            "images_per_second_per_core": per_core, "needed_images_per_second": needed_rate,
            "needed_source": "plain Flax AlexNet training step on one H100 (issue)",
            "cores_needed": needed_rate / per_core}


# ------------------------------------------------------------------------------------------------
# LRN formulations (speed and exactness)
# ------------------------------------------------------------------------------------------------
def lrn_cumsum(x_BHWC, *, k=2.0, n=5, alpha=1e-4, beta=0.75):
    """Windowed sum of squares as a difference of cumulative sums along the channels."""
    import jax.numpy as jnp
    dtype = x_BHWC.dtype
    x = x_BHWC.astype(jnp.float32)
    half = n // 2
    sq = jnp.pad(x * x, [(0, 0)] * 3 + [(half + 1, n - 1 - half)])
    c = jnp.cumsum(sq, axis=-1)
    s = c[..., n:] - c[..., :-n]
    d = k + alpha * s
    return (x * d ** (-beta)).astype(dtype)


def lrn_shifted(x_BHWC, *, k=2.0, n=5, alpha=1e-4, beta=0.75):
    """Windowed sum of squares as the sum of n shifted slices of the zero-padded squares (one fusion)."""
    import jax
    import jax.numpy as jnp
    dtype = x_BHWC.dtype
    x = x_BHWC.astype(jnp.float32)
    c = x.shape[-1]
    half = n // 2
    sq = jnp.pad(x * x, [(0, 0)] * 3 + [(half, n - 1 - half)])
    s = sq[..., 0:c]
    for j in range(1, n):
        s = s + sq[..., j:j + c]
    d = k + alpha * s
    scale = jax.lax.rsqrt(d) * jax.lax.rsqrt(jnp.sqrt(d)) if beta == 0.75 else d ** (-beta)
    return (x * scale).astype(dtype)


def lrn_banded(x_BHWC, *, k=2.0, n=5, alpha=1e-4, beta=0.75):
    """Windowed sum of squares as a matmul with a banded 0/1 (C, C) matrix (a 1x1 convolution)."""
    import jax
    import jax.numpy as jnp
    dtype = x_BHWC.dtype
    x = x_BHWC.astype(jnp.float32)
    c = x.shape[-1]
    half = n // 2
    i = np.arange(c)
    band = ((i[None, :] - i[:, None] >= -half) & (i[None, :] - i[:, None] <= n - 1 - half)).astype(np.float32)
    s = jnp.matmul(x * x, jnp.asarray(band), precision=jax.lax.Precision.HIGHEST)
    d = k + alpha * s
    scale = jax.lax.rsqrt(d) * jax.lax.rsqrt(jnp.sqrt(d)) if beta == 0.75 else d ** (-beta)
    return (x * scale).astype(dtype)


def compare_lrn(shapes=((128, 32, 32, 48), (128, 15, 15, 128)), repeats: int = 20) -> dict[str, Any]:
    """Forward+backward time of each LRN formulation on the CIFAR AlexNet's LRN shapes (per column), and
    the max relative error of the forward output and the input gradient against a float64 NumPy reference."""
    import jax

    from alexnet_jax.models.layers import lrn

    def ref(x):  # float64, the paper's clipped sum
        x = x.astype(np.float64)
        c = x.shape[-1]
        sq = x * x
        s = np.zeros_like(x)
        for j in range(c):
            s[..., j] = sq[..., max(0, j - 2):min(c, j + 3)].sum(-1)
        return x / (2.0 + 1e-4 * s) ** 0.75

    fns = {"layers.lrn (reduce_window)": lrn, "shifted slices": lrn_shifted, "cumsum": lrn_cumsum,
           "banded matmul": lrn_banded}
    out: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    for shape in shapes:
        x = (rng.standard_normal(shape) * 30).astype(np.float32)   # post-ReLU-like magnitudes in 0..255 units
        x = np.maximum(x, 0)
        r = ref(x)
        g = rng.standard_normal(shape).astype(np.float32)
        row = {}
        grads = {}
        for name, f in fns.items():
            fb = jax.jit(lambda x, g, f=f: jax.vjp(f, x)[1](g)[0])
            fwd = jax.jit(f)
            y = np.asarray(fwd(x))
            grads[name] = np.asarray(fb(x, g))
            jax.block_until_ready(fb(x, g))
            ts = []
            for _ in range(repeats):
                t = time.perf_counter()
                jax.block_until_ready(fb(x, g))
                ts.append(time.perf_counter() - t)
            tf = []
            for _ in range(repeats):
                t = time.perf_counter()
                jax.block_until_ready(fwd(x))
                tf.append(time.perf_counter() - t)
            row[name] = {"forward_ms": 1e3 * statistics.median(tf),
                         "backward_ms": 1e3 * statistics.median(ts),
                         "max_rel_err_vs_float64": float(np.max(np.abs(y - r)) / np.max(np.abs(r)))}
        base = grads["layers.lrn (reduce_window)"]
        for name in fns:
            row[name]["grad_max_rel_diff_vs_layers_lrn"] = float(np.max(np.abs(grads[name] - base))
                                                                 / np.max(np.abs(base)))
        out["x".join(map(str, shape))] = row
    return out


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------
def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def format_step_table(results: list[dict[str, Any]], ratios: dict[str, Any] | None = None) -> str:
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
    if results and "device" in results[0]:
        r = results[0]
        peak = r["peak_flops_per_device"]
        lines.append(f"device: {r['device']} ({r['platform']}); peak used for MFU: "
                     f"{_fmt(peak and peak / 1e12, '.1f', 'unknown')} "
                     f"TFLOP/s per device ({r['peak_flops_source']}); memory: {r['peak_memory_source']}")
    for name, q in (ratios or {}).items():
        lines.append(f"ours/peer {name}: {q['ratio_vs_best_peer']:.2f}x vs {q['best_peer']} "
                     f"(ours {q['ours_images_per_second']:.1f} img/s, {q['ours_method']})")
    return "\n".join(lines)
