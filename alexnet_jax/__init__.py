"""alexnet_jax: LeNet-5 and AlexNet, faithful and fast, in JAX/Flax NNX.

Layering (arrows point at what a part may import):
  cli / experiments / tools -> run, restore, configs (and trainer, models, data, parallel for analysis)
  run, restore -> trainer, data, checkpoint, workdir
  trainer -> models, parallel, optim (-> lr, sdlm)
  parallel -> models
  models import none of trainer, run, data, cli.

XLA flags.  Importing the package adds the flags in `XLA_DEFAULT_FLAGS` to the environment variable
XLA_FLAGS, which XLA reads when JAX initialises its backends, so they apply to every process that
imports alexnet_jax before its first JAX computation.  A flag the user already set in XLA_FLAGS (any
value) is left alone.  If JAX's backends are already running when alexnet_jax is imported, the flags
cannot take effect any more and a warning says so.  They only affect XLA:CPU.

  --xla_cpu_experimental_ynn_fusion_type=-individual_convolution
      XLA:CPU (jaxlib 0.10.2) runs convolutions through YNNPACK by default.  The flag takes them out
      of YNNPACK (its matmuls and reductions stay) because XLA's own (Eigen) convolutions make the
      CIFAR-size AlexNet's training step faster on the 2-core machines measured
      (experiments/bench_cpu.py's part `cifar_float32_ynnpack`; experiments/results/bench_cpu_*.md).
      When the flag was introduced (2026-11-29) YNNPACK's convolutions also gave conv1/conv2 kernel
      gradients 3.9e-3 and 1.1e-3 off a float64 reference in that step (float32 rounding is ~5e-7).
      The test that watches for it (tests/test_alexnet.py::
      test_conv_relu_lrn_pool_gradients_match_float64, its slow YNNPACK case) now measures about
      1e-6, float32-accurate, with the CPU-tuned and with the plain formulations alike (2026-12-02);
      what caused the earlier error was not found.
"""

import os
import sys
import warnings

__version__ = "0.1.0"


def _compilation_cache() -> None:
    """A project default: XLA's compiled programs are kept in a persistent cache, so a second run of the
    same model starts in a fraction of a second instead of recompiling (the first run pays as before).
    $ALEXNET_JAX_COMPILATION_CACHE chooses the folder (default ~/.cache/alexnet_jax/xla, or under
    $XDG_CACHE_HOME); "0" turns it off; an explicit $JAX_COMPILATION_CACHE_DIR always wins.  Effective
    when alexnet_jax is imported before jax (the CLI and the scripts do)."""
    where = os.environ.get("ALEXNET_JAX_COMPILATION_CACHE")
    if where == "0":
        return
    if not where:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        where = os.path.join(base, "alexnet_jax", "xla")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", where)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


_compilation_cache()

XLA_DEFAULT_FLAGS: tuple[str, ...] = (
    "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
)


def _merge_xla_flags(current: str, defaults: tuple[str, ...] = XLA_DEFAULT_FLAGS) -> str:
    """`current` plus every default whose flag name is not in it already (the user's value wins)."""
    given = {f.split("=", 1)[0].lstrip("-") for f in current.split()}
    extra = [f for f in defaults if f.split("=", 1)[0].lstrip("-") not in given]
    return " ".join(current.split() + extra)


def _set_xla_flags() -> None:
    current = os.environ.get("XLA_FLAGS", "")
    merged = _merge_xla_flags(current)
    if merged == " ".join(current.split()):
        return
    os.environ["XLA_FLAGS"] = merged
    if "jax" in sys.modules:
        try:
            from jax._src import xla_bridge  # lazy: only once jax is imported (`import alexnet_jax` imports no jax)
            started = xla_bridge.backends_are_initialized()
        except Exception:  # noqa: BLE001 - private API; if it moved, assume not started
            started = False
        if started:
            warnings.warn("alexnet_jax was imported after JAX initialised its backends, so its default XLA flags "
                          f"({' '.join(XLA_DEFAULT_FLAGS)}) do not apply to this process; import alexnet_jax "
                          "first or set them in XLA_FLAGS", RuntimeWarning, stacklevel=3)


_set_xla_flags()
