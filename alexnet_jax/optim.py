"""The papers' optimiser and learning-rate policies, built from optax parts.

AlexNet's update (K12 §5), with learning rate eps, momentum m = 0.9 and weight decay wd = 0.0005:

    v <- m * v - wd * eps * w - eps * <dL/dw>
    w <- w + v

The learning rate sits *inside* the velocity. ``optax.sgd(lr, momentum=m)`` applies lr *after* the
momentum trace, which is the same thing only while lr is constant: when lr drops by 10, optax.sgd rescales
the whole accumulated velocity at once, K12 lets the old velocity decay at its old scale. ``paper_sgd`` is
therefore

    optax.chain(add_decayed_weights(wd, mask), scale_by_learning_rate(lr), trace(decay=m))

(add wd * w to the gradient, multiply by -lr, accumulate), wrapped in ``optax.inject_hyperparams`` so the
learning rate is part of the optimiser state (``opt_state.hyperparams["learning_rate"]``; read and written
by alexnet_jax/lr.py, which sdlm shares).
``tests/test_optim.py`` checks it against a float64 NumPy version of the formula to 1e-12 across a /10
drop, and checks that the optax.sgd chain does not match.

Weight decay is applied to kernels only by default (every parameter with ndim > 1), not to biases or other
1-D parameters (e.g. BatchNorm scales): K12 writes the rule for the weights w, and cuda-convnet, the
authors' code, applies the weight cost ``wc`` to weights only (biases have their own ``epsB``/``momB`` and
no ``wc``). ``decay_mask="all"`` decays every parameter.

Learning-rate policies (``Config.lr_schedule``):

* ``constant``: ``config.lr``.
* ``steps``: piecewise constant. ``config.lr_boundaries`` are epochs, counted from the start of training,
  converted to optimiser steps with ``round(epoch * steps_per_epoch)``; the step at a boundary already
  uses the new rate. ``config.lr_factors[i]`` is the rate after boundary i relative to the *base* rate,
  not cumulative: ``lr_factors = (0.1, 0.01)`` means lr, then lr/10, then lr/100.
* ``plateau``: the constant base rate in the optimiser; the host-side ``PlateauController`` decides, after
  each evaluation, when to divide it by 10 (K12 §5: divide by 10 when the validation error stops
  improving at the current rate; three times in all) and the train loop writes it into the state with
  ``set_lr``.
* ``warmup_steps > 0`` (constant / steps only): the rate rises linearly from 0 (at step 0) to
  ``config.lr`` over the first ``warmup_steps`` steps, then the schedule above continues at its absolute
  step (boundaries are not shifted). Not from either paper. Combining it with ``plateau`` is refused,
  because a scheduled rate is recomputed by inject_hyperparams on every step and would overwrite what
  ``set_lr`` writes.

LeNet-5 (LC98 §III.A, App. C) was trained for 20 passes with global rates 0.0005 (2 passes), 0.0002 (3),
0.0001 (3), 0.00005 (4), then 0.00001, one pattern per update. Those rates are for stochastic diagonal
Levenberg-Marquardt (``alexnet_jax/sdlm.py``, ``optimizer=sdlm``): each parameter's step is the global
rate divided by (mu + its diagonal Gauss-Newton Hessian estimate). For plain SGD the absolute values mean
nothing: ``LENET_PAPER_EPOCH_BOUNDARIES`` / ``LENET_PAPER_FACTORS`` keep the published *shape* (when the
rate falls, and by how much relative to the first rate), used as ``lr_schedule="steps"`` with a base rate.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from alexnet_jax.config import Config, ConfigError
from alexnet_jax.lr import ScalarOrSchedule, get_lr, set_lr
from alexnet_jax.sdlm import sdlm

__all__ = [
    "LENET_PAPER_EPOCH_BOUNDARIES",
    "LENET_PAPER_FACTORS",
    "LENET_PAPER_LRS",
    "PlateauController",
    "get_lr",       # alexnet_jax.lr's, shared with sdlm
    "kernel_mask",
    "make_schedule",
    "optimizer_from_config",
    "paper_sgd",
    "set_lr",       # alexnet_jax.lr's, shared with sdlm
]

# LC98 App. C: global rates and the passes (epochs) each lasted; 0.00001 from pass 12 to the end (20 passes).
LENET_PAPER_LRS = (0.0005, 0.0002, 0.0001, 0.00005, 0.00001)
LENET_PAPER_EPOCH_BOUNDARIES = (2, 5, 8, 12)
LENET_PAPER_FACTORS = (0.4, 0.2, 0.1, 0.02)  # LENET_PAPER_LRS[1:] / LENET_PAPER_LRS[0]

def kernel_mask(params: Any) -> Any:
    """Default weight-decay mask: True for params with ndim > 1 (kernels), False for biases / 1-D params."""
    return jax.tree.map(lambda x: jnp.ndim(x) > 1, params)


def _resolve_mask(decay_mask: Any) -> Any:
    if decay_mask is None or (isinstance(decay_mask, str) and decay_mask == "kernels"):
        return kernel_mask
    if isinstance(decay_mask, str):
        if decay_mask == "all":
            return None
        raise ValueError(
            f"decay_mask must be None, 'kernels', 'all', a callable or a pytree; got {decay_mask!r}"
        )
    return decay_mask  # callable(params) -> bool pytree, or a bool pytree


def paper_sgd(
    learning_rate: ScalarOrSchedule,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    decay_mask: Any = None,
) -> optax.GradientTransformation:
    """K12's SGD: v <- m v - wd lr w - lr g; w <- w + v (lr inside the velocity, decay scaled by lr).

    Args:
      learning_rate: a float, or an optax schedule (callable of the step count, 0 for the first update).
      momentum: m.
      weight_decay: wd (added to the gradient as wd * w before the lr scaling).
      decay_mask: None / "kernels" (default: decay params with ndim > 1 only), "all", or an optax mask
        (a bool pytree or a callable params -> bool pytree).

    The result is an ``optax.inject_hyperparams`` transformation: its state holds ``hyperparams`` with
    "learning_rate", "momentum" and "weight_decay" (in the params' highest float dtype). With a float
    learning rate, ``set_lr`` changes it from the host; with a schedule, the schedule overwrites it on
    every step.
    ``get_lr`` gives the rate used by the most recent update (at init: the rate for step 0).
    """
    mask = _resolve_mask(decay_mask)

    def factory(learning_rate, momentum, weight_decay):
        return optax.chain(
            optax.add_decayed_weights(weight_decay, mask),
            optax.scale_by_learning_rate(learning_rate),
            optax.trace(decay=momentum, nesterov=False),
        )

    return optax.inject_hyperparams(factory)(
        learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay
    )


def _piecewise(base_lr: float, boundary_steps: tuple[int, ...], factors: tuple[float, ...]):
    values = tuple(base_lr * f for f in factors)

    def schedule(count):
        # python-float constants are weakly typed: the result takes the default float dtype at trace time
        out = jnp.asarray(count) * 0 + base_lr
        for b, v in zip(boundary_steps, values, strict=True):
            out = jnp.where(count >= b, v, out)
        return out

    return schedule


def boundary_steps(config: Config, steps_per_epoch: int) -> tuple[int, ...]:
    """`lr_boundaries` (epochs) as optimiser steps: round(epoch * steps_per_epoch)."""
    return tuple(int(round(b * steps_per_epoch)) for b in config.lr_boundaries)


def check_schedule(config: Config, steps_per_epoch: int) -> None:
    """The one schedule check that needs the data's steps per epoch (the rest is in Config.validate)."""
    steps = boundary_steps(config, steps_per_epoch)
    if config.lr_schedule == "steps" and config.warmup_steps and any(s < config.warmup_steps for s in steps):
        raise ConfigError(f"lr_boundaries={','.join(f'{b:g}' for b in config.lr_boundaries)} fall at steps {steps}, "
                          f"inside the warm-up of warmup_steps={config.warmup_steps}: move them later or shorten "
                          f"the warm-up")


def make_schedule(config: Config, steps_per_epoch: int) -> ScalarOrSchedule:
    """The learning rate for ``paper_sgd`` from a validated ``config`` (the module docstring has the
    policies).  Returns a float (constant / plateau without warm-up) or an optax schedule of the step count."""
    lr, warmup = float(config.lr), int(config.warmup_steps)
    if config.lr_schedule == "plateau":
        return lr
    main: ScalarOrSchedule = lr
    if config.lr_schedule == "steps":
        main = _piecewise(lr, boundary_steps(config, max(1, steps_per_epoch)),
                          tuple(float(f) for f in config.lr_factors))
    if not warmup:
        return main
    after = main if callable(main) else (lambda count: jnp.asarray(count) * 0 + lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), lambda count: after(count + warmup)],  # absolute step
        [warmup],
    )


def optimizer_from_config(config: Config, steps_per_epoch: int, decay_mask: Any = None):
    """``paper_sgd(make_schedule(config, steps_per_epoch), config.momentum, config.weight_decay, mask)``, or
    for ``optimizer=sdlm`` LC98's ``sdlm.sdlm(make_schedule(...), config.sdlm_mu)``."""
    if config.optimizer == "sdlm":
        return sdlm(make_schedule(config, steps_per_epoch), config.sdlm_mu)
    return paper_sgd(make_schedule(config, steps_per_epoch), config.momentum, config.weight_decay, decay_mask)


class PlateauController:
    """K12's manual policy: divide the rate by 10 when the validation error stops improving, at most 3 times.

    Host-side and pure Python. Call ``update(val_error)`` after each evaluation (lower is better). An
    evaluation improves when ``metric < best - max(atol, rtol * |best|)`` (the first one always does; NaN
    never does). After ``patience`` evaluations in a row without improvement, if fewer than ``max_drops``
    drops have happened, it drops: the counter resets, the best value is kept, and ``update`` returns the
    new multiplier of the base rate, ``factor ** drops`` (set it with
    ``set_lr(opt_state, base_lr * multiplier)``); otherwise it returns None.
    ``state_dict()`` is JSON-serialisable; ``from_state_dict`` restores it exactly.
    """

    def __init__(
        self,
        factor: float = 0.1,
        patience: int = 2,
        max_drops: int = 3,
        rtol: float = 1e-4,
        atol: float = 1e-8,
    ):
        if not 0.0 < factor:
            raise ValueError(f"factor must be > 0, got {factor}")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if max_drops < 0:
            raise ValueError(f"max_drops must be >= 0, got {max_drops}")
        self.factor = float(factor)
        self.patience = int(patience)
        self.max_drops = int(max_drops)
        self.rtol = float(rtol)
        self.atol = float(atol)
        self.best: float | None = None
        self.bad_evals = 0
        self.drops = 0
        self.num_evals = 0

    @classmethod
    def from_config(cls, config: Config) -> PlateauController:
        return cls(config.plateau_factor, config.plateau_patience, config.plateau_max_drops)

    @property
    def lr_scale(self) -> float:
        """Multiplier of the base learning rate now: factor ** drops."""
        return self.factor**self.drops

    def update(self, metric: float) -> float | None:
        metric = float(metric)
        self.num_evals += 1
        if self.best is None and not math.isnan(metric):
            improved = True
        elif self.best is None:
            improved = False
        else:
            improved = metric < self.best - max(self.atol, self.rtol * abs(self.best))
        if improved:
            self.best = metric
            self.bad_evals = 0
            return None
        self.bad_evals += 1
        if self.bad_evals >= self.patience and self.drops < self.max_drops:
            self.drops += 1
            self.bad_evals = 0
            return self.lr_scale
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "patience": self.patience,
            "max_drops": self.max_drops,
            "rtol": self.rtol,
            "atol": self.atol,
            "best": self.best,
            "bad_evals": self.bad_evals,
            "drops": self.drops,
            "num_evals": self.num_evals,
        }

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> PlateauController:
        c = cls(d["factor"], d["patience"], d["max_drops"], d["rtol"], d["atol"])
        c.best = None if d["best"] is None else float(d["best"])
        c.bad_evals = int(d["bad_evals"])
        c.drops = int(d["drops"])
        c.num_evals = int(d["num_evals"])
        return c

    def __repr__(self) -> str:
        return f"PlateauController({self.state_dict()})"
