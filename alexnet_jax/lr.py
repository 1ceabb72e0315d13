"""The learning rate inside an optimiser state, shared by both optimisers (optim.paper_sgd, sdlm.sdlm).

Both wrap their update in ``optax.inject_hyperparams``, so the rate is part of the state
(``opt_state.hyperparams["learning_rate"]``): ``get_lr`` reads the rate the most recent update used,
``set_lr`` writes a new one from the host (the plateau rule).  A rate is a float or an optax schedule of
the update count (``ScalarOrSchedule``); with a schedule, inject_hyperparams recomputes it on every update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

ScalarOrSchedule = float | Callable[[Any], Any]


def _is_inject_state(s: Any) -> bool:
    return isinstance(s, optax.InjectStatefulHyperparamsState | optax.InjectHyperparamsState)


def _lr_leaf(opt_state: Any) -> Any:
    if _is_inject_state(opt_state):
        return opt_state.hyperparams["learning_rate"]
    lr = optax.tree_utils.tree_get(opt_state, "learning_rate")
    if lr is None:
        raise KeyError("no 'learning_rate' hyperparameter in this optimiser state (not built by paper_sgd?)")
    return lr


def is_variable(x: Any) -> bool:
    """A flax nnx Variable (optimiser states built on nnx params hold them as leaves)."""
    return isinstance(x, nnx.Variable)


def get_lr(opt_state: Any) -> jax.Array:
    """The learning rate held in a ``paper_sgd`` state (or any optax state containing exactly one such).

    Also accepts an ``nnx.Optimizer``'s ``opt_state`` (whose leaves are nnx Variables); returns the array.
    """
    lr = _lr_leaf(opt_state)
    return lr[...] if is_variable(lr) else lr


def set_lr(opt_state: Any, value: Any) -> Any:
    """A new state with the learning rate set to ``value``; same structure, shapes, dtypes. Pure, jittable.

    Takes effect from the next update. Only meaningful when ``paper_sgd`` got a float learning rate
    (a schedule recomputes the rate on every update). For an ``nnx.Optimizer``'s ``opt_state`` (leaves are
    nnx Variables) the Variable is updated in place (NNX semantics; works inside ``nnx.jit``) and the same
    state object is returned. The value is cast to the stored dtype (never weakly typed), so jit caches
    are not invalidated.
    """
    old = _lr_leaf(opt_state)
    old_arr = old[...] if is_variable(old) else old
    new = jnp.asarray(value, dtype=old_arr.dtype).reshape(jnp.shape(old_arr))
    if is_variable(old):
        old[...] = new
        return opt_state
    if _is_inject_state(opt_state):
        return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": new})
    return optax.tree_utils.tree_set(opt_state, learning_rate=new)
