"""Orbax checkpoints: async saves every N steps, keep the last K, resume from the newest complete one.

A checkpoint holds the whole TrainState (parameters, optimiser state, step, RNG) and a JSON
record (config, data-iterator state, learning-rate policy state, a fingerprint of every array).
Restores always pass explicit `args` against an abstract target that carries the *current*
shardings, so a checkpoint written on 2 devices restores onto 1 (and back) with identical values.

Orbax writes each step into a temporary directory and renames it when complete, so a save cut
short (SIGKILL, power loss) never looks like a checkpoint.  A checkpoint damaged afterwards (a
missing or truncated file) either fails to read or reads back different numbers; both are caught
by comparing against the fingerprint stored at save time, reported with the step and directory,
and the previous complete checkpoint is used instead.  Nothing is ever restored silently empty.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    pass


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
    if len(a) != len(b):
        return False
    for (s1, q1), (s2, q2) in zip(a, b):
        for u, v in ((s1, s2), (q1, q2)):
            if not np.isfinite(u) or not np.isfinite(v):
                if not (np.isnan(u) and np.isnan(v)) and u != v:
                    return False
            elif abs(u - v) > rtol * max(1.0, abs(u), abs(v)):
                return False
    return True


def abstract_like(state):
    """ShapeDtypeStructs (with shardings) of a live or abstract state: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                                 create=True))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict[str, Any]) -> None:
        meta = dict(meta, step=int(step), fingerprint=fingerprint(state))
        self.manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                              meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, target_state, step: int | None = None) -> tuple[Any, dict[str, Any], int] | None:
        """Restore onto `target_state`'s shapes and shardings; newest complete checkpoint first.

        Returns (state, meta, step), or None when the directory holds no checkpoint.
        """
        self.manager.reload()
        steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            return None
        abstract = abstract_like(target_state)
        problems = []
        for s in steps:
            try:
                r = self.manager.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                     meta=ocp.args.JsonRestore()))
                state, meta = r.state, r.meta
                if state is None or meta is None:
                    raise CheckpointError("the checkpoint has no state or no metadata item")
                if not _fingerprints_match(meta.get("fingerprint", []), fingerprint(state)):
                    raise CheckpointError("restored values do not match the fingerprint saved with them "
                                          "(a file was changed or truncated after the save)")
            except Exception as e:  # noqa: BLE001 - report any unreadable checkpoint and fall back
                msg = (f"checkpoint step {s} in {self.directory} is incomplete or corrupted: "
                       f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
                log.warning(msg + ("; falling back to the previous checkpoint" if step is None else ""))
                problems.append(msg)
                continue
            return state, meta, s
        raise CheckpointError("no usable checkpoint: " + " | ".join(problems))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
