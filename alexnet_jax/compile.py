"""The one Trainer compiled for an accelerator that is not here, on any host: TPU chips or NVIDIA GPUs, through
their compile-only devices (chips.py).  Nothing runs; XLA compiles the real steps and reports what they would need.

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
published per-chip figures (`chips.CHIPS`; experiments/REPRODUCTION.md): compute time = FLOPs / peak FLOP/s,
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
import logging
import math
import time
from typing import Any

import jax
import jax.numpy as jnp

from alexnet_jax import comms, parallel
from alexnet_jax.bench.step import macs_per_image, memory
from alexnet_jax.chips import Chip, CompileError, devices, parse_topology
from alexnet_jax.config import Config
from alexnet_jax.data import make_augment
from alexnet_jax.data.records import stored_shape_of
from alexnet_jax.models.layers import FORMULATIONS, formulation
from alexnet_jax.trainer import Trainer

log = logging.getLogger("alexnet_jax")


class DoesNotFit(CompileError):
    """XLA refused the program: it needs more memory than the chip has."""


# ------------------------------------------------------------------------------------------------
# Compiling the steps
# ------------------------------------------------------------------------------------------------
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


def build_trainer(config: Config, topology: str):
    """The Trainer of `config` on a compile-only mesh of `topology`'s chips, with the device augmentation."""
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
        try:   # private API, imported lazily here: if it moves, the report says the cost is unknown
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
