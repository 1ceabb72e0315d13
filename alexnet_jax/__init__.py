"""alexnet_jax: LeNet-5 and AlexNet, faithful and fast, in JAX/Flax NNX.

Layering (arrows point at what a part may import):
  cli / experiments / tools -> train, configs (and models, data, parallel for analysis)
  train -> models, parallel, data, optim, checkpoint
  parallel -> models
  models import none of train, data, cli.
"""

__version__ = "0.1.0"


def _compilation_cache() -> None:
    """A project default: XLA's compiled programs are kept in a persistent cache, so a second run of the
    same model starts in a fraction of a second instead of recompiling (the first run pays as before).
    $ALEXNET_JAX_COMPILATION_CACHE chooses the folder (default ~/.cache/alexnet_jax/xla, or under
    $XDG_CACHE_HOME); "0" turns it off; an explicit $JAX_COMPILATION_CACHE_DIR always wins.  Effective
    when alexnet_jax is imported before jax (the CLI and the scripts do)."""
    import os

    where = os.environ.get("ALEXNET_JAX_COMPILATION_CACHE")
    if where == "0":
        return
    if not where:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        where = os.path.join(base, "alexnet_jax", "xla")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", where)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


_compilation_cache()
