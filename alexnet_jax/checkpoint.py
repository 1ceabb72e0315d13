"""Orbax checkpoints: async saves every N steps, keep the last K, resume from the newest usable one.

A checkpoint holds the whole TrainState (parameters, optimiser state, step, RNG) and a JSON record:
the checkpoint format version, the run's provenance (package versions, git commit, devices, mesh,
XLA flags), the config, the data-iterator state, the learning-rate policy state and a fingerprint
of every array.  Restores always target an abstract state that carries the *current* shardings,
so a checkpoint written on 2 devices restores onto 1 (and back) with identical values, and nothing
is initialised first.

Orbax writes each step into a temporary directory and renames it when complete, so a save cut
short (SIGKILL, power loss) never looks like a checkpoint.  A checkpoint damaged afterwards (a
missing or truncated file) either fails to read or reads back different numbers; both are caught
by comparing against the fingerprint stored at save time and reported in one line, and the
previous checkpoint is used instead.  A training run moves the damaged step aside
(`<step>.corrupt-<time>`, never deleted) so that it can save that step again.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from alexnet_jax.errors import AlexnetJaxError

log = logging.getLogger(__name__)

# 1: alexnet_jax up to commit 3e6cf36 (no "format" key).  2: adds "format" and "provenance"; the
# TrainState layout is unchanged, so a format-1 checkpoint restores as it is.
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)


# Config keys that change the arrays of a train state (besides the model): a checkpoint that differs in one
# is another net's
SHAPING_KEYS = ("num_classes", "input_size", "width", "head", "optimizer")


class CheckpointError(AlexnetJaxError, RuntimeError):
    pass


class CheckpointFormatError(CheckpointError):
    pass


# ------------------------------------------------------------------------------------------------
# Provenance
# ------------------------------------------------------------------------------------------------
def _git_commit() -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty", "--abbrev=40"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


_PROVENANCE_CACHE: dict[str, Any] = {}


def provenance(mesh=None) -> dict[str, Any]:
    """Where and with what a run ran: versions, git commit, devices, mesh, the XLA flags in effect."""
    if not _PROVENANCE_CACHE:
        versions = {}
        for pkg in ("alexnet-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
                    "tensorflow-datasets"):
            try:
                versions[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                versions[pkg] = None
        _PROVENANCE_CACHE.update(versions=versions, python=platform.python_version(), git_commit=_git_commit(),
                                 host=platform.node())
    d = jax.devices()
    out = dict(_PROVENANCE_CACHE, format=FORMAT_VERSION, platform=d[0].platform, device_kind=d[0].device_kind,
               device_count=jax.device_count(), process_count=jax.process_count(),
               xla_flags=os.environ.get("XLA_FLAGS", ""))
    if mesh is not None:
        out["mesh"] = {k: int(v) for k, v in mesh.shape.items()}
    return out


# ------------------------------------------------------------------------------------------------
# Fingerprints
# ------------------------------------------------------------------------------------------------
@jax.jit
def _leaf_sums(leaves):
    out = []
    for x in leaves:
        if jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer):
            f = x.astype(jnp.float32)
            out.append(jnp.stack([jnp.sum(f), jnp.sum(f * f)]))
        else:
            out.append(jnp.zeros(2, jnp.float32))
    return out


def fingerprint(tree) -> list[list[float]]:
    """Per-leaf (sum, sum of squares) in float32, computed where the arrays live (one program)."""
    leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "dtype")]
    leaves = [jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x for x in leaves]
    return [[float(a), float(b)] for a, b in jax.device_get(_leaf_sums(leaves))]


def _fingerprints_match(a, b, rtol=1e-4) -> bool:
    """Each leaf's (sum, sum of squares) agree, relative to the leaf's own scale: the sums of squares to
    `rtol`, the sums to 10 * rtol * sqrt(sum of squares) (float32 rounding of a sum of N values stays
    well below that; a damaged file changes both by far more)."""
    if len(a) != len(b):
        return False
    for (s1, q1), (s2, q2) in zip(a, b):
        vals = (s1, q1, s2, q2)
        if not all(np.isfinite(vals)):
            if any(np.isfinite(u) != np.isfinite(v) or (np.isinf(u) and u != v) for u, v in ((s1, s2), (q1, q2))):
                return False
            continue
        scale = max(q1, q2)
        if abs(q1 - q2) > rtol * scale or abs(s1 - s2) > 10 * rtol * np.sqrt(scale):
            return False
    return True


def all_finite(tree) -> bool:
    return all(np.isfinite(s) and np.isfinite(q) for s, q in fingerprint(tree))


def migrate(meta: dict[str, Any], step: int) -> dict[str, Any]:
    """A checkpoint record of an older readable format, in today's form.

    1 -> 2: the TrainState layout is the same; the loader state was base64 of its JSON bytes, one process's
    (now {"state": the JSON object, "per_process": [[epoch, cursor, step], ...] with several processes});
    there is no provenance (it stays absent)."""
    fmt = int(meta.get("format", 1))
    if fmt == 1:
        meta = dict(meta, format=FORMAT_VERSION)
        data = meta.get("data_state")
        if isinstance(data, str):
            meta["data_state"] = {"state": json.loads(base64.b64decode(data) if not data.lstrip().startswith("{")
                                                      else data)}
        log.info("checkpoint step %d was written in format 1; migrated to format %d", step, FORMAT_VERSION)
    return meta


# ------------------------------------------------------------------------------------------------
# The manager
# ------------------------------------------------------------------------------------------------
def _is_orbax_coroutine(unraisable) -> bool:
    code = getattr(unraisable.object, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _filter_orbax_coroutines() -> None:
    """Drop, for the rest of the process, the "Exception ignored in: <coroutine ...>" reports (and asyncio's
    log lines) of orbax's coroutines that a failed read leaves behind (they are collected whenever the
    garbage collector runs, possibly long after the read); every other unraisable exception still reaches
    the previous hook."""
    # the same reads' futures are reported by asyncio's logger ("Future exception was never retrieved")
    # when collected; alexnet_jax runs no asyncio of its own, so that logger only ever speaks for orbax here
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    if getattr(sys.unraisablehook, "_drops_orbax_coroutines", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        if not _is_orbax_coroutine(unraisable):
            previous(unraisable)

    hook._drops_orbax_coroutines = True
    sys.unraisablehook = hook


@contextlib.contextmanager
def _quiet():
    """Orbax's failed reads leave un-awaited coroutines and log TensorStore specs: keep stderr to our
    one warning line."""
    _filter_orbax_coroutines()
    loggers = [logging.getLogger(n) for n in ("absl", "orbax", "orbax.checkpoint")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class Checkpointer:
    """Saves keep the newest `keep` checkpoints and every step in `keep_steps` (a finished schedule's end)."""

    def __init__(self, directory: str, *, keep: int = 3, keep_steps: tuple[int, ...] | list[int] = (),
                 async_save: bool = True, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        self.read_only = read_only
        kept = ocp.checkpoint_managers.AnyPreservationPolicy([ocp.checkpoint_managers.LatestN(keep),
                                                              ocp.checkpoint_managers.CustomSteps(list(keep_steps))])
        with _quiet():   # a read-only manager logs a warning that says just that
            self.manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(preservation_policy=None if read_only else kept,
                                                     enable_async_checkpointing=async_save,
                                                     create=not read_only, read_only=read_only))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict[str, Any]) -> None:
        meta = dict(meta, step=int(step), format=FORMAT_VERSION, fingerprint=fingerprint(state))
        self.manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                              meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, abstract_state, step: int | None = None, *, config: dict[str, Any] | None = None
                ) -> tuple[Any, dict[str, Any], int] | None:
        """Restore onto `abstract_state` (ShapeDtypeStructs with shardings); newest usable step first.

        Returns (state, meta, step), or None when the directory holds no checkpoint.  A damaged step
        is reported in one line and skipped (and, unless read-only, moved aside); a step that does not
        fit because it holds another net than `config` (the config the state was built from) is named
        as such, skipped and never moved; a checkpoint of an unknown format raises CheckpointFormatError
        naming both versions."""
        self.manager.reload()
        steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            return None
        problems, damaged, others = [], [], []
        for s in steps:
            try:
                with _quiet():
                    r = self.manager.restore(s, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
                    state, meta = r.state, r.meta
                    if state is None or meta is None:
                        raise CheckpointError("the checkpoint has no state or no metadata item")
                    fmt = int(meta.get("format", 1))
                    if fmt not in READABLE_FORMATS:
                        raise CheckpointFormatError(
                            f"checkpoint step {s} in {self.directory} has format {fmt}; this alexnet_jax reads "
                            f"formats {', '.join(map(str, READABLE_FORMATS))} (it writes {FORMAT_VERSION}): "
                            f"use the alexnet_jax version that wrote it")
                    if not _fingerprints_match(meta.get("fingerprint", []), fingerprint(state)):
                        raise CheckpointError("restored values do not match the fingerprint saved with them "
                                              "(a file was changed or truncated after the save)")
            except CheckpointFormatError:
                raise
            except Exception as e:  # noqa: BLE001 - report any unreadable checkpoint and fall back
                log.debug("checkpoint step %d: %s: %s", s, type(e).__name__, e)   # the library's own words
                other = self._another_net(s, config) if config else None
                if other:
                    msg = f"checkpoint step {s} in {self.directory} is a checkpoint of {other}"
                    others.append(other)
                else:   # in our words: the libraries' messages carry their internals
                    msg = f"checkpoint step {s} in {self.directory} is incomplete or corrupted (" + (
                        str(e) if isinstance(e, CheckpointError) else "its files cannot be read back as saved") + ")"
                    damaged.append(s)
                log.warning(msg + ("; trying the previous checkpoint" if step is None else ""))
                problems.append(msg)
                continue
            # only now that an older step restored are the damaged newer ones moved aside (never when every
            # step fails: that is a run of another shape, not damage)
            if not self.read_only and step is None:
                for d in damaged:
                    moved = self._move_aside(d)
                    if moved:
                        log.warning("moved the damaged checkpoint step %d to %s", d, moved)
            return state, migrate(meta, s), s
        if others and not damaged:
            raise CheckpointError(f"the checkpoints in {self.directory} are of {others[0]}, not of the config they "
                                  f"were restored for ({config['model']}): use the config they were trained with, "
                                  f"or another workdir")
        raise CheckpointError("no usable checkpoint: " + " | ".join(problems))

    def _another_net(self, step: int, config: dict[str, Any]) -> str | None:
        """How checkpoint `step` is another net than `config`'s, read from its own record ("another model
        (lenet5)"), or None when it is the same net (or its record cannot be read: then it is damaged)."""
        try:
            with _quiet():
                meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            saved = dict(meta["config"])
        except Exception:  # noqa: BLE001 - no readable record: not evidence of another net
            return None
        if saved.get("model") != config["model"]:
            return f"another model ({saved.get('model')})"
        changed = [f"{k}={saved[k]}" for k in SHAPING_KEYS if k in saved and saved[k] != config.get(k)]
        return f"another {config['model']} ({', '.join(changed)})" if changed else None

    def _move_aside(self, step: int) -> str | None:
        """Rename a damaged step directory to `<step>.corrupt-<time>` so that the step can be saved again."""
        src = os.path.join(self.directory, str(step))
        if jax.process_index() != 0 or not os.path.isdir(src):
            return None
        dst = f"{src}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            os.rename(src, dst)
        except OSError as e:
            log.warning("could not move the damaged checkpoint %s aside: %s", src, e)
            return None
        self.manager.reload()
        return dst

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
