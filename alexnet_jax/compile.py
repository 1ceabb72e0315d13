"""The one Trainer compiled for an accelerator that is not here, on any host: TPU chips through libtpu's
compile-only devices, NVIDIA GPUs through JAX's CUDA plugin given a description of the GPU (no CUDA
libraries, no GPU).  Nothing runs; XLA compiles the real steps and reports what they would need.

    report = compile_report(config, "v5e:2x2")          # or "h100:2"; eval=True adds the eval steps
    print(format_report(report)); print(json.dumps(report))

What is compiled is what a run on those chips executes: `Trainer.build(config, mesh)` on a mesh of the
topology's chips (`mesh_data` x `mesh_model` of the config, placed on the first chips in the topology's
order), the train step from uint8 batches through the on-device augmentation (a per-channel stand-in
for the training mean image: the dataset need not be prepared), and with `eval=True` the eval step,
centre crop and ten crops.  The models are traced for the target's compiler (`parallel.apply` reads
the mesh's platform), so they hold their plain formulations, not the CPU-tuned ones
(`models.layers.formulation`).

Per step the report gives XLA's own figures (memory per chip, FLOPs and bytes accessed from its cost
analysis, every collective as comms.py reads it) and a roofline **prediction** from the vendors'
published per-chip figures (`CHIPS`; experiments/REPRODUCTION.md): compute time = FLOPs / peak FLOP/s,
memory time = bytes accessed / HBM bandwidth, exchange time = bytes each chip sends / interconnect
bandwidth (one direction, all of the chip's links: a lower bound); step = max(compute, memory) with the
exchange added (not overlapped) or hidden (fully overlapped).  Peaks are those of the arithmetic the
compiler uses at JAX's default precision: bfloat16 everywhere; float32 matmuls and convolutions run as
one bfloat16 pass on TPU (Google publishes bf16 peaks only, so no fp32 peak is assumed) and as TF32 on
NVIDIA GPUs.  On GPU, XLA's cost analysis does not see inside the cuDNN convolution calls, so the
compute time there uses the model's own FLOPs (6 x multiply-adds per image for a train step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import math
import os
import re
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp

from alexnet_jax import comms, parallel
from alexnet_jax.config import Config
from alexnet_jax.errors import AlexnetJaxError
from alexnet_jax.models.layers import FORMULATIONS, formulation

log = logging.getLogger("alexnet_jax")


class CompileError(AlexnetJaxError, ValueError):
    """A topology, mesh or installation that cannot be compiled for; the message says what to change."""


class DoesNotFit(CompileError):
    """XLA refused the program: it needs more memory than the chip has."""


@dataclasses.dataclass(frozen=True)
class Chip:
    """A chip's published figures (experiments/REPRODUCTION.md cites each)."""

    generation: str
    platform: str                   # "tpu" or "gpu"
    name: str                       # "TPU v5e", "NVIDIA H100"
    peak_bf16_flops: float          # FLOP/s, dense
    peak_float32_flops: float       # FLOP/s of float32 matmuls at JAX's default precision (module docstring)
    hbm_bytes: float                # as published (GB or GiB, see `hbm_published`)
    hbm_published: str
    hbm_bytes_per_second: float
    interconnect: str               # ICI (TPU), NVLink (GPU)
    link_bytes_per_second: float | None   # one direction, per chip: half the published bidirectional figure
    source: str


def _tpu(gen: str, peak: float, hbm: float, hbm_text: str, bandwidth: float, ici: float | None) -> Chip:
    return Chip(gen, "tpu", f"TPU {gen}", peak, peak, hbm, hbm_text, bandwidth, "ICI", ici,
                f"https://cloud.google.com/tpu/docs/{gen}")


def _nvidia(gen: str, device_kind: str, hbm: float, hbm_text: str, bandwidth: float) -> Chip:
    from alexnet_jax.bench.step import peak_flops  # the benchmark's GPU peaks (NVIDIA datasheets)

    return Chip(gen, "gpu", f"NVIDIA {gen.upper()}", peak_flops(device_kind, "bfloat16")[0],
                peak_flops(device_kind, "float32")[0], hbm, hbm_text, bandwidth, "NVLink", 900e9 / 2,
                f"https://www.nvidia.com/en-us/data-center/{gen}/")


CHIPS: dict[str, Chip] = {
    "v4": _tpu("v4", 275e12, 32 * 2**30, "32 GiB", 1200e9, None),
    "v5e": _tpu("v5e", 197e12, 16e9, "16 GB", 819e9, 400e9 / 2),
    "v5p": _tpu("v5p", 459e12, 95e9, "95 GB", 2765e9, 1200e9 / 2),
    "v6e": _tpu("v6e", 918e12, 32e9, "32 GB", 1638e9, 800e9 / 2),
    "h100": _nvidia("h100", "NVIDIA H100 SXM", 80e9, "80 GB", 3.35e12),
    "h200": _nvidia("h200", "NVIDIA H200", 141e9, "141 GB", 4.8e12),
}

# What XLA:GPU needs to know of a GPU it compiles for without one (a GpuTargetConfigProto): SM count, clock,
# memory and L2 of the H100 SXM and the H200 (NVIDIA's datasheets; both are the GH100 chip, 132 SMs) and
# the limits of compute capability 9.0 (NVIDIA's CUDA C++ Programming Guide, "Technical Specifications
# per Compute Capability").
GPU_NAMES = {"h100": "NVIDIA H100 80GB HBM3", "h200": "NVIDIA H200"}
_CC90 = dict(threads_per_block_limit=1024, threads_per_warp=32, shared_memory_per_block=48 * 1024,
             shared_memory_per_core=228 * 1024, shared_memory_per_block_optin=227 * 1024,
             threads_per_core_limit=2048, registers_per_core_limit=65536, registers_per_block_limit=65536,
             block_dim_limit_x=2**31 - 1, block_dim_limit_y=65535, block_dim_limit_z=65535,
             thread_dim_limit_x=1024, thread_dim_limit_y=1024, thread_dim_limit_z=64)
_TOPOLOGY = re.compile(r"^(?P<gen>[a-z0-9]+):(?P<dims>\d+(?:x\d+){0,2})$")
LIBTPU_HINT = f'pip install "jax[tpu]=={jax.__version__}" (or the project\'s extra: pip install -e ".[tpu]")'
CUDA_HINT = (f"pip install --no-deps jax-cuda13-plugin=={jax.__version__} jax-cuda13-pjrt=={jax.__version__} "
             f"(compiling needs neither a GPU nor the CUDA libraries)")
GPU_SLOTS = 8       # GPUs of one host (NVLink); more would need the multi-host topology


def gpu_target_config(generation: str) -> str:
    """The GpuTargetConfigProto (text format) of an NVIDIA GPU: what XLA:GPU compiles for without one."""
    chip = CHIPS[generation]
    info = dict(_CC90, core_count=132, fpus_per_core=128, clock_rate_ghz=1.98, l2_cache_size=50 * 2**20,
                memory_bandwidth=int(chip.hbm_bytes_per_second), device_memory_size=int(chip.hbm_bytes))
    fields = "\n".join(f"  {k}: {v}" for k, v in info.items())
    return (f"gpu_device_info {{\n{fields}\n  cuda_compute_capability {{ major: 9 minor: 0 }}\n}}\n"
            f'platform_name: "CUDA"\ndevice_description_str: "{GPU_NAMES[generation]}"\n')


# ------------------------------------------------------------------------------------------------
# Topology and mesh
# ------------------------------------------------------------------------------------------------
def parse_topology(name: str) -> tuple[Chip, tuple[int, ...]]:
    """"v5e:2x2" -> (CHIPS["v5e"], (2, 2)); "h100:2" -> (CHIPS["h100"], (2,)); anything else is a
    CompileError naming what is accepted."""
    m = _TOPOLOGY.match(name)
    chip = CHIPS.get(m.group("gen")) if m else None
    dims = tuple(int(d) for d in m.group("dims").split("x")) if m else ()
    ok = chip is not None and (len(dims) in (2, 3) if chip.platform == "tpu" else len(dims) == 1)
    if not ok or min(dims) < 1:
        tpus = ", ".join(g for g, c in CHIPS.items() if c.platform == "tpu")
        gpus = ", ".join(g for g, c in CHIPS.items() if c.platform == "gpu")
        raise CompileError(f"unknown topology {name!r}: give a TPU generation ({tpus}) and its chips' grid as JAX "
                           f"names it (v5e:2x2, v6e:2x4, v4:2x2x1, v5p:2x2x1), or an NVIDIA GPU ({gpus}) and a "
                           f"count of 1 to {GPU_SLOTS} (h100:2)")
    if chip.platform == "gpu" and dims[0] > GPU_SLOTS:
        raise CompileError(f"topology {name!r}: at most {GPU_SLOTS} GPUs of one host (NVLink) are described")
    return chip, dims


def mesh_shape(config: Config, topology: str) -> tuple[int, int]:
    """(data, model) of the config's mesh on the topology's chips (-1 as in parallel.resolve_mesh_shape)."""
    _, dims = parse_topology(topology)
    chips = math.prod(dims)
    d, m = config.mesh_data, config.mesh_model
    if d > 0 and m > 0 and d * m > chips:
        raise CompileError(f"mesh data={d} x model={m} needs {d * m} chips but topology {topology} has {chips}: "
                           f"choose a larger topology or a smaller mesh (--set mesh_data=... --set mesh_model=...)")
    try:
        return parallel.resolve_mesh_shape(d, m, chips)
    except parallel.MeshError as e:
        raise CompileError(f"mesh data={d} x model={m} does not fit topology {topology} ({chips} chips): "
                           f"{str(e).split(';')[0]}") from None


def _require_libtpu() -> None:
    if os.environ.get("TPU_LIBRARY_PATH"):
        return
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise CompileError(f"compiling for TPU needs libtpu, which is not installed here: {LIBTPU_HINT}") from None


def _find(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _require_cuda_plugin() -> None:
    if not any(_find(f"jax_plugins.xla_cuda{v}") for v in (13, 12)):
        raise CompileError(f"compiling for NVIDIA GPUs needs JAX's CUDA plugin, which is not installed here: "
                           f"{CUDA_HINT}")


@contextlib.contextmanager
def _runtime_stderr():
    """libtpu (and the CUDA plugin) print complaints about the runtime they cannot find on a host without
    the device (worker hostnames, accelerator type, cuInit) straight to the process's stderr; they do not
    concern compile-only devices.  Kept out of the output and logged at debug level."""
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace").strip()
            if text:
                log.debug("device runtime at start-up: %s", text)


def devices(topology: str) -> list:
    """The compile-only devices of a topology, one per chip in the topology's order: TPU chips from libtpu
    (v4 and v5p in megacore mode, as JAX runs them), NVIDIA GPUs of one host from the CUDA plugin."""
    chip, dims = parse_topology(topology)
    from jax.experimental import topologies

    if chip.platform == "gpu":
        _require_cuda_plugin()
        try:
            with _runtime_stderr():
                return list(topologies.get_topology_desc(chip.generation, platform="cuda",
                                                         target_config=gpu_target_config(chip.generation),
                                                         topology=f"1x1x{dims[0]}").devices)
        except jax.errors.JaxRuntimeError as e:
            raise CompileError(f"JAX's CUDA plugin cannot describe {topology!r}: {str(e).splitlines()[0]}") from None
    _require_libtpu()
    # libtpu takes a host-wide lock (/tmp/libtpu_lockfile) when it loads, meant for processes that open the TPU;
    # compile-only devices open nothing, so a second compiling process (a test worker, another compile) may load
    # it too
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    kw: dict[str, Any] = {"chip_config_name": "megacore"} if chip.generation in ("v4", "v5p") else {}
    dims3 = dims + (1,) * (3 - len(dims))
    bounds = tuple(min(d, b) for d, b in zip(dims3, (2, 2, 1), strict=True))
    if bounds != (2, 2, 1):   # fewer chips than one host holds: the host is the topology
        kw["chips_per_host_bounds"] = bounds
    try:
        with _runtime_stderr():
            return list(topologies.get_topology_desc(topology, platform="tpu", **kw).devices)
    except RuntimeError as e:
        if "not installed" in str(e):
            raise CompileError(f"compiling for TPU needs libtpu, which JAX cannot load here: {LIBTPU_HINT}") from None
        raise CompileError(f"libtpu does not accept topology {topology!r}: {str(e).splitlines()[0]}") from None


# ------------------------------------------------------------------------------------------------
# Compiling the steps
# ------------------------------------------------------------------------------------------------
def build_trainer(config: Config, topology: str):
    """The Trainer of `config` on a compile-only mesh of `topology`'s chips, with the device augmentation."""
    from alexnet_jax.data import make_augment
    from alexnet_jax.data.records import stored_shape_of
    from alexnet_jax.trainer import Trainer

    config.validate()
    data, model = mesh_shape(config, topology)
    mesh = parallel.make_mesh(data, model, devices=devices(topology))
    augment = make_augment(config, stored_shape=stored_shape_of(config.dataset), mean="stand-in")
    return Trainer.build(config.replace(mesh_data=data, mesh_model=model), mesh, augment=augment)


def _abstract_batch(trainer, *, train: bool) -> dict[str, jax.ShapeDtypeStruct]:
    """The batch the loaders deliver, as shapes on the plan's batch sharding: uint8 images as stored."""
    b, plan = trainer.plan.batch_size, trainer.plan
    image = jax.ShapeDtypeStruct((b, *trainer.augment.stored_shape), jnp.uint8, sharding=plan.batch_sharding(4))
    rows = {"label": jnp.int32, "index": jnp.int32} if train else {"label": jnp.int32, "mask": jnp.bool_}
    return {"image": image, **{k: jax.ShapeDtypeStruct((b,), t, sharding=plan.batch_sharding(1))
                               for k, t in rows.items()}}


@contextlib.contextmanager
def _no_persistent_cache():
    """A compile-only executable cannot be loaded back from JAX's persistent compilation cache (no client to
    load it onto): writing it there would only fill the cache.  JAX writes only programs that took longer
    than a minimum to compile; inside, that minimum is out of reach (the option is read at each write)."""
    key = "jax_persistent_cache_min_compile_time_secs"
    was = getattr(jax.config, key)
    jax.config.update(key, 1e9)
    try:
        yield
    finally:
        jax.config.update(key, was)


def compile_steps(trainer, *, eval: bool = False) -> dict[str, tuple[Any, float]]:
    """{"train": (compiled, seconds)[, "eval": ..., "eval_ten_crop": ...]} for the trainer's mesh."""
    st = trainer.abstract_state
    todo = {"train": lambda: trainer.train_step.lower(st, _abstract_batch(trainer, train=True))}
    if eval:
        for name, ten in (("eval", False), ("eval_ten_crop", True)):
            todo[name] = (lambda ten=ten: trainer.eval_step.lower(st.params, st.extra, _abstract_batch(
                trainer, train=False), ten_crop=ten))
    out = {}
    for name, lower in todo.items():
        t0 = time.perf_counter()
        try:
            with _no_persistent_cache():
                compiled = lower().compile()
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            c = trainer.config
            raise DoesNotFit(f"the {name} step of {c.model} at global batch {c.batch_size} ({c.dtype}) does not fit "
                             f"its chips: XLA says {str(e).strip().splitlines()[0]}; lower batch_size or put the "
                             f"batch on more chips (mesh_data)") from None
        out[name] = (compiled, time.perf_counter() - t0)
        log.info("compiled the %s step in %.1f s", name, out[name][1])
    return out


# ------------------------------------------------------------------------------------------------
# What the compiled programs say, and the roofline
# ------------------------------------------------------------------------------------------------
def memory_per_device(compiled, chip: Chip) -> dict[str, int | float]:
    """XLA's memory analysis of one chip's program (bench.step.memory) with the generated code and the
    published HBM: total = arguments + outputs - aliased (donated) + temporaries + generated code."""
    from alexnet_jax.bench.step import memory

    m = memory(compiled)
    if m is None:
        raise CompileError("XLA gave no memory analysis for this program")
    total = m["estimated_peak_bytes"] + m["generated_code_size_in_bytes"]
    return {"arguments": m["argument_size_in_bytes"], "outputs": m["output_size_in_bytes"],
            "aliased": m["alias_size_in_bytes"], "temporaries": m["temp_size_in_bytes"],
            "generated_code": m["generated_code_size_in_bytes"], "total": total,
            "hbm": chip.hbm_bytes, "headroom": chip.hbm_bytes - total}


def cost(compiled) -> dict[str, float]:
    """XLA's cost analysis of one chip's program: flops, bytes accessed, transcendentals.  A compile-only
    GPU executable gives none; XLA's cost analysis of its optimized HLO module (run by the host's CPU
    client) stands in."""
    c = compiled.cost_analysis()
    c = c[0] if isinstance(c, (list, tuple)) else c
    if c is None:
        try:   # private API: if it moves, the report says the cost is unknown
            from jax._src import xla_bridge
            from jax._src.lib import _jax

            cpu = xla_bridge.get_backend("cpu")
            parts = [_jax.hlo_module_cost_analysis(cpu, m) for m in compiled.runtime_executable().hlo_modules()]
        except Exception as e:  # noqa: BLE001
            log.warning("no cost analysis for this program (%s): FLOPs and bytes accessed unknown", e)
            return {"flops": None, "bytes_accessed": None, "transcendentals": None}
        c = {k: sum(float(p.get(k, 0.0)) for p in parts) for k in ("flops", "bytes accessed", "transcendentals")}
    return {"flops": float(c.get("flops", 0.0)), "bytes_accessed": float(c.get("bytes accessed", 0.0)),
            "transcendentals": float(c.get("transcendentals", 0.0))}


def roofline(flops: float, bytes_accessed: float, sent_bytes: float, chip: Chip, *, images: int,
             chips: int, dtype: str) -> dict[str, Any]:
    """The prediction for one step of one chip (module docstring)."""
    peak = chip.peak_bf16_flops if dtype == "bfloat16" else chip.peak_float32_flops
    compute = flops / peak if flops is not None else None
    mem = bytes_accessed / chip.hbm_bytes_per_second if bytes_accessed is not None else None
    link = chip.link_bytes_per_second
    exchange = (sent_bytes / link if link else None) if sent_bytes else 0.0
    known = [t for t in (compute, mem) if t is not None]
    local = max(known) if known else None
    if local is None:
        exchange = None
    serial = local + exchange if exchange is not None else None
    overlapped = max(local, exchange) if exchange is not None else None
    if dtype == "bfloat16":
        precision = "bfloat16 operands at the bf16 peak"
    elif chip.platform == "tpu":
        precision = ("float32 arrays; matmuls and convolutions at JAX's default TPU precision, one bfloat16 pass "
                     "(the bf16 peak; no fp32 peak is assumed)")
    else:
        precision = "float32 arrays; matmuls and convolutions at JAX's default GPU precision, TF32 (the TF32 peak)"
    return {
        "label": "roofline prediction, not a measurement", "precision": precision,
        "peak_flops_per_chip": peak, "hbm_bytes_per_second": chip.hbm_bytes_per_second,
        "link_bytes_per_second": link,
        "compute_seconds": compute, "memory_seconds": mem, "exchange_seconds": exchange,
        "bound": None if compute is None or mem is None else ("compute" if compute >= mem else "memory"),
        "step_seconds_not_overlapped": serial, "step_seconds_overlapped": overlapped,
        "exchange_share": exchange / serial if serial else (0.0 if exchange == 0.0 else None),
        "images_per_second_per_chip_not_overlapped": images / serial / chips if serial else None,
        "images_per_second_per_chip_overlapped": images / overlapped / chips if overlapped else None,
    }


def step_report(compiled, seconds: float, trainer, chip: Chip, *, images: int, flops_per_image: float,
                rule: str) -> dict[str, Any]:
    """Memory, FLOPs against the model's own count, collectives and the roofline of one compiled step.
    `images`: the step's global images (views included); `flops_per_image`: the model's FLOPs per image
    from its own multiply-adds, by `rule`."""
    chips = int(trainer.mesh.devices.size)
    c = cost(compiled)
    model_flops = flops_per_image * images / chips
    rep = comms.analyze(compiled, trainer.mesh)
    per_group = images / rep.mesh_shape.get("data", 1)
    sent = sum(x.sent for x in rep.collectives)
    collectives = [{"op": x.op, "axis": x.axis, "layer": x.layer, "pass": "bwd" if x.backward else "fwd",
                    "shape": x.shape, "bytes": x.bytes, "sent_bytes_per_device": x.sent,
                    "sent_bytes_per_image": x.sent / per_group} for x in rep.collectives]
    tpu = chip.platform == "tpu"
    flops = c["flops"] if tpu else model_flops      # XLA:GPU's count misses the cuDNN convolutions
    return {
        "compile_seconds": round(seconds, 1),
        "memory_per_device": memory_per_device(compiled, chip),
        "flops_per_device": {"xla": c["flops"], "model": model_flops,
                             "ratio": None if c["flops"] is None else c["flops"] / model_flops,
                             "model_rule": rule,
                             "roofline_uses": "xla" if tpu else "model (XLA's GPU count misses cuDNN convolutions)"},
        "bytes_accessed_per_device": c["bytes_accessed"],
        "collectives": collectives, "sent_bytes_per_device": sent,
        "predicted": roofline(flops, c["bytes_accessed"], sent, chip, images=images, chips=chips,
                              dtype=trainer.config.dtype),
    }


def compile_report(config: Config, topology: str, *, eval: bool = False) -> dict[str, Any]:
    """Compile `config`'s train step (and with `eval` its eval steps) for `topology` and report them: the
    train step's figures at the top level, the eval steps' under "eval_steps"."""
    from alexnet_jax.bench.step import macs_per_image

    chip, dims = parse_topology(topology)
    trainer = build_trainer(config, topology)
    config = trainer.config
    macs = macs_per_image(config)
    compiled = compile_steps(trainer, eval=eval)
    b = config.batch_size
    train = step_report(*compiled["train"], trainer, chip, images=b, flops_per_image=6.0 * macs,
                        rule="6 x the model's multiply-adds per image (2 FLOP each; forward, input and weight "
                             "gradients) x global batch / chips")
    evals = {}
    for name, views in (("eval", 1), ("eval_ten_crop", 10)):
        if name in compiled:
            evals[name] = step_report(*compiled[name], trainer, chip, images=b * views, flops_per_image=2.0 * macs,
                                      rule="2 x the model's multiply-adds per view x views x global batch / chips")
    mesh = {k: int(v) for k, v in trainer.mesh.shape.items()}
    fm = formulation(trainer.plan.platform)
    return {
        "label": f"compiled for {chip.name} on a CPU host; times are a roofline prediction, not a measurement",
        "topology": topology, "chips": math.prod(dims), "device_kind": trainer.mesh.devices.flat[0].device_kind,
        "platform": trainer.plan.platform,
        "mesh": mesh, "mesh_chips": int(trainer.mesh.devices.size), "plan": trainer.plan.describe(),
        "model": config.model, "input_size": config.input_size, "width": config.width,
        "num_classes": config.num_classes, "dtype": config.dtype, "global_batch": b,
        "batch_per_data_replica": b // mesh["data"], "augment": config.augment,
        "mean_image": "per-channel stand-in (the dataset is not read)", "macs_per_image": macs,
        "formulation": fm, "formulation_detail": FORMULATIONS[fm],
        "chip": dataclasses.asdict(chip), **train, "eval_steps": evals,
    }


# ------------------------------------------------------------------------------------------------
# The readable table
# ------------------------------------------------------------------------------------------------
def _mib(v) -> str:
    return "-" if v is None else f"{v / 2**20:,.0f}"


def _ms(v) -> str:
    return "-" if v is None else f"{v * 1e3:.2f}"


def format_report(r: dict[str, Any]) -> str:
    mesh = f"data={r['mesh']['data']} x model={r['mesh']['model']}"
    lines = [f"{r['model']} {r['input_size']} px, width {r['width']:g}, {r['dtype']}, global batch {r['global_batch']} "
             f"on {r['topology']} ({r['device_kind']}), mesh {mesh} ({r['mesh_chips']} of {r['chips']} chips)",
             f"  {r['plan']}",
             f"  formulation: {r['formulation']} ({r['formulation_detail']}); mean image: {r['mean_image']}",
             f"  {r['label']}", "",
             "| step | compile s | arguments MiB | outputs MiB | temporaries MiB | code MiB | total MiB | HBM MiB | "
             "headroom MiB | GFLOP/chip (XLA) | GFLOP/chip (model) | XLA/model |",
             "|---|" + "---|" * 11]
    steps = {"train": r, **r.get("eval_steps", {})}
    for name, s in steps.items():
        m, f = s["memory_per_device"], s["flops_per_device"]
        cells = [f"{s['compile_seconds']:.1f}", _mib(m["arguments"]), _mib(m["outputs"] - m["aliased"]),
                 _mib(m["temporaries"]), _mib(m["generated_code"]), _mib(m["total"]), _mib(m["hbm"]),
                 _mib(m["headroom"]), "-" if f["xla"] is None else f"{f['xla'] / 1e9:,.1f}",
                 f"{f['model'] / 1e9:,.1f}", "-" if f["ratio"] is None else f"{f['ratio']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "outputs: not aliased to a donated argument; total = arguments + outputs + temporaries + code", ""]
    for name, s in steps.items():
        lines.append(f"collectives ({name} step; bytes each chip sends, ring accounting, as alexnet_jax.comms reads "
                     f"them):")
        if not s["collectives"]:
            lines.append("  none")
        else:
            lines.append("| axis | layer | pass | op | result shape | sent/chip | sent/image |")
            lines.append("|---|---|---|---|---|---|---|")
            for c in s["collectives"]:
                lines.append(f"| {c['axis']} | {c['layer'] or '-'} | {c['pass']} | {c['op']} | {c['shape']} | "
                             f"{c['sent_bytes_per_device']:,.0f} | {c['sent_bytes_per_image']:,.0f} |")
        lines.append("")
    chip, p0 = r["chip"], r["predicted"]
    link = chip["link_bytes_per_second"]
    lines += [f"roofline prediction (not a measurement; {chip['name']}: {p0['peak_flops_per_chip'] / 1e12:g} TFLOP/s "
              f"for {r['dtype']}, HBM {chip['hbm_published']} at {chip['hbm_bytes_per_second'] / 1e9:g} GB/s, "
              f"{chip['interconnect']} {'not published' if link is None else f'{link / 1e9:g} GB/s one way'}; "
              f"{chip['source']}; compute from {r['flops_per_device']['roofline_uses']} FLOPs):",
              "| step | compute ms | memory ms | exchange ms | step ms (not overlapped) | step ms (overlapped) | "
              "exchange share | img/s/chip (not overlapped) | img/s/chip (overlapped) |",
              "|---|" + "---|" * 8]
    for name, s in steps.items():
        p = s["predicted"]
        share = "-" if p["exchange_share"] is None else f"{100 * p['exchange_share']:.1f}%"
        ips = [("-" if v is None else f"{v:,.0f}") for v in (p["images_per_second_per_chip_not_overlapped"],
                                                             p["images_per_second_per_chip_overlapped"])]
        lines.append(f"| {name} | {_ms(p['compute_seconds'])} | {_ms(p['memory_seconds'])} | "
                     f"{_ms(p['exchange_seconds'])} | {_ms(p['step_seconds_not_overlapped'])} | "
                     f"{_ms(p['step_seconds_overlapped'])} | {share} | {ips[0]} | {ips[1]} |")
    lines.append(f"precision: {r['predicted']['precision']}")
    return "\n".join(lines)
