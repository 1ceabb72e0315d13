"""The Trainer: a model, its optimiser, its sharded state, its plan and its jitted steps, built once
from a config and a mesh.

Training, resuming, `eval`, every tool, `bench` and the experiments obtain their model, state and
steps from a Trainer; nothing else builds a train state.  A run gets its Trainer from the run builder
(alexnet_jax/run.py), which validates the config and checks the dataset once; `Trainer.build` is the
standalone way in for consumers without a dataset (the benchmarks on synthetic batches, the tests).

One step: uint8 records -> global array on the batch axes (`global_batch`) -> `train_step` [augmentation
on the device (crop, flip, lighting, mean), per-column forward under shard_map with the four exchanges,
loss, gradients, the paper's update] -> metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from alexnet_jax import optim, parallel
from alexnet_jax.config import Config, ConfigError
from alexnet_jax.lc98 import lc98_criterion, lc98_curvature
from alexnet_jax.models import create_model
from alexnet_jax.sdlm import curvature_summary, gauss_newton_diagonal, set_curvature


@flax.struct.dataclass
class TrainState:
    step: jax.Array          # int32 scalar
    params: Any              # nnx.State of the trainable parameters (float32)
    extra: Any               # nnx.State of everything else (BatchNorm statistics); may be empty
    opt_state: Any           # optax state (velocity, learning rate)
    rng: jax.Array           # uint32 key data of the base key; dropout key = fold_in(key, step)


def build_model(config: Config) -> nnx.Module:
    """The model a config names, its parameters drawn from `config.seed` (the same on every mesh)."""
    extra = {"head": config.head} if config.model == "lenet5" else {}
    if config.model.startswith("alexnet"):
        extra["init"] = config.init
    if config.model == "alexnet":
        extra["lrn"] = config.lrn
    return create_model(config.model, num_classes=config.num_classes, input_size=config.input_size,
                        width=config.width, dtype=config.dtype, seed=config.seed, **extra)


AUGMENT_STREAM = 0xA06   # the augmentation key is fold_in(key(seed), AUGMENT_STREAM); dropout's is state.rng
SDLM_STREAM = 0x5D1      # the patterns of each SDLM curvature estimate: the loader order of seed + SDLM_STREAM


def abstract_model_of(config: Config) -> nnx.Module:
    """The model as shapes only; a model that cannot be built from the config is a ConfigError."""
    try:
        return nnx.eval_shape(lambda: build_model(config))
    except ValueError as e:
        raise ConfigError(f"model={config.model} with input_size={config.input_size}, width={config.width}: "
                          f"{e}") from None


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def criterion(config: Config):
    """The per-example training loss `config.loss` names: (logits, labels) -> (B,)."""
    if config.loss == "lc98":
        return functools.partial(lc98_criterion, j=config.lc98_j)
    return cross_entropy


def _abstract(tree, shardings):
    """ShapeDtypeStructs carrying `shardings` (a tree of NamedShardings, one per leaf or per nnx Variable)."""
    def one(a, s):
        if isinstance(s, nnx.Variable):   # optax maps over Variables and keeps them around its results
            s = s.get_value()
        if isinstance(a, nnx.Variable):
            return a.replace(jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s))
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)

    return jax.tree.map(one, tree, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))


@dataclasses.dataclass(frozen=True, eq=False)
class Trainer:
    """Everything a run's steps need, built once: `Trainer.build(config, mesh)`, or `assemble` from checked parts.

    abstract_state  the TrainState as ShapeDtypeStructs carrying this mesh's shardings: the target of
                    `init()` (one jit with out_shardings: no array is ever whole on one device) and of
                    every checkpoint restore (no initialiser runs).
    augment         the device preprocessing (alexnet_jax.data.augment): batches hold uint8 images and
                    their stream positions, and the steps turn them into model inputs.  None: batches
                    hold model inputs already (the benchmarks' synthetic data).
    train_step      (state, batch) -> (state, metrics), jitted once, the state donated.
    eval_step       (params, extra, batch) -> sums of loss, top-1, top-5 hits and examples; with
                    `ten_crop` the softmax outputs of 10 views are averaged (K12 §4.1).
    """

    config: Config
    mesh: Mesh
    plan: parallel.Plan
    graphdef: Any
    tx: optax.GradientTransformation
    abstract_state: TrainState
    steps_per_epoch: int
    input_shape: tuple[int, int, int]     # (H, W, C) of one model input
    augment: Any = None

    @classmethod
    def build(cls, config: Config, mesh: Mesh | None = None, *, steps_per_epoch: int = 1,
              batch_size: int | None = None, augment=None) -> Trainer:
        """A Trainer from a config alone: validates it, makes the mesh (default: the config's), the abstract
        model and the plan.  `batch_size` defaults to config.batch_size (eval on another device count may
        need another).  The run builder does these steps once itself and calls `assemble`."""
        config.validate()
        mesh = mesh if mesh is not None else parallel.make_mesh(config.mesh_data, config.mesh_model)
        abstract_model = abstract_model_of(config)
        plan = parallel.plan(abstract_model, mesh, batch_size or config.batch_size)
        return cls.assemble(config, abstract_model, plan, steps_per_epoch=steps_per_epoch, augment=augment)

    @classmethod
    def assemble(cls, config: Config, abstract_model: nnx.Module, plan: parallel.Plan, *, steps_per_epoch: int = 1,
                 augment=None) -> Trainer:
        """A Trainer from parts already made and checked (a validated config, its abstract model, the plan on
        the mesh): the optimiser and the abstract state with the plan's shardings; nothing is checked again."""
        graphdef, params, extra = nnx.split(abstract_model, nnx.Param, ...)
        tx = optim.optimizer_from_config(config, steps_per_epoch)
        rep = plan.replicated
        params = _abstract(params, plan.param_shardings(params))
        extra = _abstract(extra, plan.param_shardings(extra))
        abs_opt = jax.eval_shape(tx.init, params)
        opt_shardings = optax.tree_utils.tree_map_params(
            tx, lambda _, p: p.sharding, abs_opt, params, transform_non_params=lambda _: rep,
            is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
        key = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
        abstract_state = TrainState(
            step=jax.ShapeDtypeStruct((), jnp.int32, sharding=rep), params=params, extra=extra,
            opt_state=_abstract(abs_opt, opt_shardings), rng=jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep))
        channels = int(getattr(abstract_model, "in_channels", 3))
        return cls(config=config, mesh=plan.mesh, plan=plan, graphdef=graphdef, tx=tx, abstract_state=abstract_state,
                   steps_per_epoch=steps_per_epoch, input_shape=(config.input_size, config.input_size, channels),
                   augment=augment)

    def with_steps_per_epoch(self, steps_per_epoch: int) -> Trainer:
        """This Trainer with the schedule of a run of `steps_per_epoch` steps per epoch (its `lr_boundaries`
        are epochs); the optimiser state's layout does not depend on it."""
        return dataclasses.replace(self, steps_per_epoch=steps_per_epoch,
                                   tx=optim.optimizer_from_config(self.config, steps_per_epoch))

    # --- state -----------------------------------------------------------------------------------
    @property
    def shardings(self):
        return parallel.tree_shardings(self.abstract_state)

    def init(self) -> TrainState:
        """A fresh state, every array created directly in its sharded layout."""
        def fresh():
            _, params, extra = nnx.split(build_model(self.config), nnx.Param, ...)
            return TrainState(step=jnp.int32(0), params=params, extra=extra, opt_state=self.tx.init(params),
                              rng=jax.random.key_data(jax.random.key(self.config.seed + 1)))

        return jax.jit(fresh, out_shardings=self.shardings)()

    def model(self, state: TrainState) -> nnx.Module:
        return nnx.merge(self.graphdef, state.params, state.extra)

    # --- steps -----------------------------------------------------------------------------------
    def global_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return self.plan.global_batch(batch)

    def forward(self, params, extra, x_BHWC, *, train: bool = False, dropout_key=None, taps: bool = False):
        """The model's forward pass on this mesh (logits, or (logits, taps)); see parallel.apply."""
        model = nnx.merge(self.graphdef, params, extra)
        return parallel.apply(model, x_BHWC, self.plan, train=train, dropout_key=dropout_key, taps=taps)

    @functools.cached_property
    def eval_step(self):
        return jax.jit(self._eval_step, static_argnames="ten_crop")

    @functools.cached_property
    def train_step(self):
        graphdef, tx, plan, augment = self.graphdef, self.tx, self.plan, self.augment
        augment_key_seed = self.config.seed
        per_example = criterion(self.config)

        def train_step(state: TrainState, batch: dict[str, jax.Array]):
            key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
            x = batch["image"]
            if augment is not None:   # each example's draws from (seed, its stream position): any mesh
                by_record = {"records": batch["record"], "epochs": batch["epoch"]} if "record" in batch else {}
                x = augment.train(x, batch["index"], jax.random.fold_in(jax.random.key(augment_key_seed),
                                                                        AUGMENT_STREAM), **by_record)

            def loss_fn(params):
                # fresh Variables for the batch statistics, created in this trace: BatchNorm writes its
                # running averages during the forward pass under value_and_grad
                model = nnx.merge(graphdef, params, jax.tree.map(lambda a: a, state.extra))
                logits = parallel.apply(model, x, plan, train=True, dropout_key=key)
                loss = per_example(logits, batch["label"]).mean()
                _, _, extra = nnx.split(model, nnx.Param, ...)
                return loss, (logits, extra)

            (loss, (logits, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
                       "lr": optim.get_lr(opt_state)}
            return state.replace(step=state.step + 1, params=params, extra=extra, opt_state=opt_state), metrics

        return jax.jit(train_step, out_shardings=(self.shardings, plan.replicated), donate_argnums=0)

    def _eval_step(self, params, extra, batch, ten_crop: bool = False):
        """Sums over the unmasked examples.  The model inputs are (B, H, W, C), or (B, V, H, W, C) for
        multi-view testing, whose V views' softmax outputs are averaged (K12 §4.1)."""
        x, labels, mask = batch["image"], batch["label"], batch["mask"].astype(jnp.float32)
        if self.augment is not None:
            x = self.augment.eval(x, ten_crop)
        views = x.shape[1] if x.ndim == 5 else 1
        if views > 1:
            x = x.reshape((-1,) + x.shape[2:])
        logits = self.forward(params, extra, x).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits)
        if views > 1:
            logp = jax.nn.logsumexp(logp.reshape(labels.shape[0], views, -1), axis=1) - jnp.log(views)
        loss = -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
        if self.config.loss != "cross_entropy":   # the training criterion (single view: Config.validate)
            loss = criterion(self.config)(logits, labels)
        top5 = jax.lax.top_k(logp, min(5, logp.shape[-1]))[1]
        hit1 = top5[:, 0] == labels
        hit5 = jnp.any(top5 == labels[:, None], axis=1)
        return {"loss": jnp.sum(loss * mask), "top1": jnp.sum(hit1 * mask), "top5": jnp.sum(hit5 * mask),
                "examples": jnp.sum(mask)}

    # --- the optimiser's state, changed between steps (in its own sharded layout) -------------------
    def with_lr(self, state: TrainState, lr: float) -> TrainState:
        """The state with the learning rate set to `lr` (the plateau rule), every array where it was."""
        return self._with_lr(state, jnp.float32(lr))

    @functools.cached_property
    def _with_lr(self):
        return jax.jit(lambda state, lr: state.replace(opt_state=optim.set_lr(state.opt_state, lr)),
                       out_shardings=self.shardings, donate_argnums=0)

    def install_curvature(self, state: TrainState, patterns, epoch: int) -> TrainState:
        """optimizer=sdlm: a new curvature estimate h (LC98 App. C; `sdlm_curvature`) on pass `epoch`'s
        patterns (`patterns`: run.curvature_patterns), installed in the optimiser state (alexnet_jax/sdlm.py),
        every array where it was."""
        sample, _ = patterns.produce((epoch, 0, 0))
        images, labels = (jax.device_put(sample[k], self.plan.replicated) for k in ("image", "label"))
        return self._install_curvature(state, images, labels)

    @functools.cached_property
    def _install_curvature(self):
        graphdef, augment, c = self.graphdef, self.augment, self.config
        j = c.lc98_j if c.loss == "lc98" else math.inf      # cross-entropy is LC98 eq. 9 as j -> inf
        per_pattern = None if c.loss == "cross_entropy" else (
            lambda z, label: criterion(c)(z[None], label[None])[0])

        def install(state, images, labels):
            x = images if augment is None else augment.eval(images)
            if c.sdlm_curvature == "paper":   # LC98 App. C, through the model's own layers and taps
                model = nnx.merge(graphdef, state.params, state.extra)
                _, taps = parallel.apply(model, x, taps=True)
                h = lc98_curvature(model, x, taps, j=j)
            else:
                apply = lambda p, xb: nnx.merge(graphdef, p, state.extra)(xb)   # noqa: E731 - evaluation-mode logits
                h = gauss_newton_diagonal(apply, state.params, x, labels, batch=50, loss_fn=per_pattern)
            return state.replace(opt_state=set_curvature(state.opt_state, h))

        return jax.jit(install, out_shardings=self.shardings, donate_argnums=0)

    def curvature_summary(self, state: TrainState, step: int) -> dict[str, float]:
        """optimizer=sdlm: the distribution of the installed h and of the step sizes lr / (mu + h) the
        next pass takes (lr the schedule's rate at `step`)."""
        lr = optim.make_schedule(self.config, self.steps_per_epoch)
        return curvature_summary(state.opt_state, float(lr(step)) if callable(lr) else lr)

    def evaluate(self, state: TrainState, batches, ten_crop: bool | None = None) -> dict[str, float]:
        ten_crop = self.config.ten_crop if ten_crop is None else ten_crop
        totals = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "examples": 0.0}
        for batch in batches:
            out = self.eval_step(state.params, state.extra, self.global_batch(batch), ten_crop=ten_crop)
            for k, v in jax.device_get(out).items():
                totals[k] += float(v)
        n = max(totals["examples"], 1.0)
        return {"top1": totals["top1"] / n, "top5": totals["top5"] / n, "loss": totals["loss"] / n,
                "examples": int(totals["examples"])}
