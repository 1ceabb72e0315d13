"""The chips `alexnet-jax compile` compiles for (compile.py): their published figures (`CHIPS`, cited in
experiments/REPRODUCTION.md), topology names (`parse_topology`: "v5e:2x2", "h100:2") and compile-only devices
(`devices`): TPU chips through libtpu, NVIDIA GPUs through JAX's CUDA plugin given a description of the GPU
(`gpu_target_config`; no CUDA libraries, no GPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import re
import tempfile
from typing import Any

import jax
from jax.experimental import topologies

from alexnet_jax.bench.step import peak_flops  # the benchmark's GPU peaks (NVIDIA datasheets)
from alexnet_jax.errors import AlexnetJaxError

log = logging.getLogger("alexnet_jax")


class CompileError(AlexnetJaxError, ValueError):
    """A topology, mesh or installation that cannot be compiled for; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Chip:
    """A chip's published figures (experiments/REPRODUCTION.md cites each)."""

    generation: str
    platform: str                   # "tpu" or "gpu"
    name: str                       # "TPU v5e", "NVIDIA H100"
    peak_bf16_flops: float          # FLOP/s, dense
    peak_float32_flops: float       # FLOP/s of float32 matmuls at JAX's default precision (compile.py)
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


def _require_libtpu() -> None:
    if os.environ.get("TPU_LIBRARY_PATH"):
        return
    try:
        import libtpu  # noqa: F401 - lazy: optional (the "tpu" extra)
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
