"""The Trainer (model, sharded state, plan and the jitted steps, built once from a config and a
mesh) and `train_and_evaluate`, the loop every run goes through.

The flow of one step: config -> mesh -> Trainer (abstract state with shardings, plan) -> loader:
uint8 records -> global array on the batch axes -> jitted step [augmentation on the device (crop,
flip, lighting, mean), per-column forward under shard_map with the four exchanges, loss, gradients,
the paper's SGD] -> metrics -> orbax save.
Training, resuming, `eval`, every tool, `bench` and the experiments obtain their model, state and
steps from `Trainer.build`; nothing else builds a train state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import math
import os
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import optim, parallel
from alexnet_jax.config import Config, ConfigError
from alexnet_jax.errors import AlexnetJaxError
from alexnet_jax.models import create_model

log = logging.getLogger("alexnet_jax")


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
    """Everything a run needs, built once: `Trainer.build(config, mesh)`.

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
        """`batch_size` defaults to config.batch_size (eval on another device count may need another)."""
        config.validate()
        mesh = mesh if mesh is not None else parallel.make_mesh(config.mesh_data, config.mesh_model)
        abstract_model = abstract_model_of(config)
        plan = parallel.plan(abstract_model, mesh, batch_size or config.batch_size)
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
        return cls(config=config, mesh=mesh, plan=plan, graphdef=graphdef, tx=tx, abstract_state=abstract_state,
                   steps_per_epoch=steps_per_epoch, input_shape=(config.input_size, config.input_size, channels),
                   augment=augment)

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

    def restore(self, checkpointer: ckpt_lib.Checkpointer, step: int | None = None):
        """(state, meta, step) from the newest usable checkpoint (or `step`), or None when there is none."""
        return checkpointer.restore(self.abstract_state, step=step)

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

        def train_step(state: TrainState, batch: dict[str, jax.Array]):
            key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
            x = batch["image"]
            if augment is not None:   # each example's draws from (seed, its stream position): any mesh
                x = augment.train(x, batch["index"], jax.random.fold_in(jax.random.key(augment_key_seed),
                                                                        AUGMENT_STREAM))

            def loss_fn(params):
                # fresh Variables for the batch statistics, created in this trace: BatchNorm writes its
                # running averages during the forward pass under value_and_grad
                model = nnx.merge(graphdef, params, jax.tree.map(lambda a: a, state.extra))
                logits = parallel.apply(model, x, plan, train=True, dropout_key=key)
                loss = cross_entropy(logits, batch["label"]).mean()
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

    def curvature_patterns(self):
        """optimizer=sdlm: the loader of the patterns each curvature estimate uses, `sdlm_samples` of the
        training split drawn from (seed + SDLM_STREAM, pass): the same on every process and on resume."""
        from alexnet_jax import data as data_lib

        c = self.config
        return data_lib.make_train_loader(c.replace(seed=c.seed + SDLM_STREAM), batch_size=c.sdlm_samples, prefetch=0)

    def install_curvature(self, state: TrainState, patterns, epoch: int) -> TrainState:
        """optimizer=sdlm: a new estimate of the Gauss-Newton diagonal h (LC98 App. C) on pass `epoch`'s
        patterns, installed in the optimiser state (alexnet_jax/sdlm.py), every array where it was."""
        sample, _ = patterns.produce((epoch, 0, 0))
        images, labels = (jax.device_put(sample[k], self.plan.replicated) for k in ("image", "label"))
        return self._install_curvature(state, images, labels)

    @functools.cached_property
    def _install_curvature(self):
        from alexnet_jax.sdlm import gauss_newton_diagonal, set_curvature

        graphdef, augment = self.graphdef, self.augment

        def install(state, images, labels):
            x = images if augment is None else augment.eval(images)
            apply = lambda p, xb: nnx.merge(graphdef, p, state.extra)(xb)   # noqa: E731 - evaluation-mode logits
            h = gauss_newton_diagonal(apply, state.params, x, labels, batch=50)
            return state.replace(opt_state=set_curvature(state.opt_state, h))

        return jax.jit(install, out_shardings=self.shardings, donate_argnums=0)

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


class NonFiniteLossError(AlexnetJaxError, FloatingPointError):
    pass


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
# Config fields a resumed run may change; any other difference from the workdir's config.json is refused
# (a resume with another model or dataset would find no checkpoint that fits).
RESUMABLE_CHANGES = {"num_epochs", "num_steps", "eval_every_epochs", "log_every_steps", "checkpoint_every_steps",
                     "keep_checkpoints", "data_dir", "mesh_data", "mesh_model", "num_workers", "ten_crop"}


def check_resumable(config: Config, workdir: str) -> None:
    """Refuse to resume `workdir` with a config that differs from its own in more than RESUMABLE_CHANGES."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    saved = load_config(workdir).to_dict()
    diff = {k: (saved[k], v) for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES and saved[k] != v}
    if diff:
        from alexnet_jax.workdir import WorkdirError
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
        raise WorkdirError(f"{workdir} holds a run of another config ({shown}); resume it with the config it was "
                           f"trained with (see its config.json), or choose another --workdir")


def _data_state(loader) -> dict[str, Any]:
    """The loaders' positions, every process's: each process reads its own share of the data."""
    state = json.loads(loader.get_state())
    if jax.process_count() == 1:
        return {"state": state}
    from jax.experimental import multihost_utils
    rows = multihost_utils.process_allgather(np.array([state["epoch"], state["cursor"], state["step"]]))
    return {"state": state, "per_process": np.asarray(rows).reshape(-1, 3).tolist()}


def _restore_data_state(loader, saved: dict[str, Any]) -> None:
    state = saved["state"]
    if "per_process" in saved:
        epoch, cursor, step = saved["per_process"][jax.process_index()]
        state = dict(state, epoch=epoch, cursor=cursor, step=step,
                     meta=dict(state["meta"], process_index=loader.process_index))
    try:
        loader.set_state(state)
    except ValueError as e:
        raise ckpt_lib.CheckpointError(f"the checkpoint's data-loader state does not fit this run: {e}") from None


def _any_process(flag: bool) -> bool:
    """True on every process when `flag` holds on any (a signal reaches one process; all must stop)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils
    return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).max())


def train_and_evaluate(config: Config, workdir: str, *, progress: bool = True) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming from its checkpoints) and return the final metrics."""
    from alexnet_jax import data as data_lib  # lazy: bench and the tools build Trainers without tfds
    from alexnet_jax.workdir import Progress, RunDir, StopFlag

    config.validate()
    check_resumable(config, workdir)
    primary = jax.process_index() == 0
    mesh = parallel.make_mesh(config.mesh_data, config.mesh_model)
    info = data_lib.dataset_info(config)
    if info.num_classes != config.num_classes:
        raise ConfigError(f"num_classes={config.num_classes} but dataset {config.dataset!r} has "
                          f"{info.num_classes} classes; pass --set num_classes={info.num_classes}")
    # the plan first (model x mesh x batch validated before anything is read or written), then the data
    abstract_model = abstract_model_of(config)
    channels = int(getattr(abstract_model, "in_channels", 3))
    if info.stored_shape[-1] != channels:
        raise ConfigError(f"dataset {config.dataset!r} has {info.stored_shape[-1]}-channel images and model="
                          f"{config.model} reads {channels}: choose a {channels}-channel dataset or another model")
    plan = parallel.plan(abstract_model, mesh, config.batch_size)
    feed = dict(process_index=plan.feed_index, process_count=plan.feed_count)
    loader = data_lib.make_train_loader(config, batch_size=plan.per_process_batch, **feed)
    spe = loader.steps_per_epoch
    optim.check_schedule(config, spe)
    trainer = Trainer.build(config, mesh, steps_per_epoch=spe, augment=data_lib.make_augment(config, workdir=workdir))
    total_steps = config.num_steps or max(1, math.ceil(config.num_epochs * spe))
    eval_every = max(1, round(config.eval_every_epochs * spe))
    eval_batches = data_lib.make_eval_loader(config, config.eval_split, batch_size=plan.per_process_batch, **feed)
    # optimizer=sdlm: h re-estimated before each pass on sdlm_samples training patterns (curvature_patterns)
    patterns = trainer.curvature_patterns() if config.optimizer == "sdlm" else None

    with RunDir(workdir, config, primary=primary) as run, contextlib.ExitStack() as closing:
        for ld in (loader, eval_batches, patterns):
            if ld is not None:
                closing.callback(ld.close)
        log.info("%s; %d steps of %d (%d per epoch)", trainer.plan.describe(), total_steps, config.batch_size, spe)
        plateau = optim.PlateauController.from_config(config) if config.lr_schedule == "plateau" else None
        restored = trainer.restore(run.checkpointer)
        history: list[dict[str, Any]] = []
        if restored is None:
            state, step = trainer.init(), 0
        else:
            state, saved, step = restored
            if "data_state" in saved:   # an imported net (alexnet_jax/zoo) has none: its data start at the beginning
                _restore_data_state(loader, saved["data_state"])
            if plateau is not None and saved.get("plateau"):
                plateau = optim.PlateauController.from_state_dict(saved["plateau"])
            history = saved.get("evals", [])
        run.start(step, resumed=restored is not None)

        def checkpoint_meta() -> dict[str, Any]:
            return {"config": config.to_dict(), "data_state": _data_state(loader), "steps_per_epoch": spe,
                    "plateau": plateau.state_dict() if plateau else None, "evals": history,
                    "provenance": ckpt_lib.provenance(mesh)}

        def evaluate(state, step) -> dict[str, Any]:
            return dict(trainer.evaluate(state, eval_batches), epoch=step / spe, step=step)

        if step >= total_steps:
            if not (history and history[-1].get("step") == step):
                history.append(evaluate(state, step))
            log.info("%s is finished (step %d of %d): its final evaluation, from the checkpoint (no new "
                     "training, so no timings)", run.path, step, total_steps)
            return dict(history[-1], step=step, compile_seconds=None, finished_before=True, workdir=run.path)

        first = trainer.global_batch(next(loader))
        t0 = time.perf_counter()
        compiled = trainer.train_step.lower(state, first).compile()
        compile_s = time.perf_counter() - t0
        log.info("compiled the train step in %.1f s", compile_s)
        run.metrics.write(step, "compile", {"seconds": compile_s})

        bar = Progress(total_steps, step, enabled=progress and primary)
        window = Window(config.batch_size)
        with StopFlag() as stop, bar:
            batches = itertools.chain([first], (trainer.global_batch(b) for b in loader))
            while step < total_steps:
                if patterns is not None and step % spe == 0:
                    state = trainer.install_curvature(state, patterns, epoch=step // spe)
                    window.restart()
                state, metrics = compiled(state, next(batches))
                window.add(metrics)
                step += 1
                bar.advance(step)
                final = step == total_steps
                if step % config.log_every_steps == 0 or final:
                    window.flush(step, run, bar)
                if step % eval_every == 0 or final:
                    window.flush(step, run, bar)
                    history.append(evaluate(state, step))
                    run.metrics.write(step, "eval", history[-1])
                    if plateau is not None and (scale := plateau.update(1.0 - history[-1]["top1"])) is not None:
                        state = trainer.with_lr(state, config.lr * scale)
                        log.info("validation error stopped improving: lr -> %g at step %d", config.lr * scale, step)
                    window.restart()
                # a signal stops the run after this step, saved; with several processes, all agree at log steps
                checks = jax.process_count() == 1 or step % config.log_every_steps == 0
                stopping = not final and checks and _any_process(stop.signum is not None)
                if step % config.checkpoint_every_steps == 0 or final or stopping:
                    window.flush(step, run, bar)
                    run.checkpointer.save(step, state, checkpoint_meta())
                    window.restart()
                if stopping:
                    run.checkpointer.wait()
                    log.warning("received signal %s: saved checkpoint at step %d, exiting", stop.signum or "(another "
                                "process's)", step)
                    raise SystemExit(128 + (stop.signum or signal.SIGTERM))
        run.finish()
    return dict(history[-1], step=step, compile_seconds=compile_s, workdir=run.path)


class Window:
    """The train metrics since the last record: fetched, checked for non-finite losses and averaged at
    each log step; the time of evaluations, saves and curvature estimates is not counted as training."""

    def __init__(self, batch_size: int):
        self.batch_size, self.metrics, self.t = batch_size, [], time.perf_counter()

    def add(self, metrics) -> None:
        self.metrics.append(metrics)

    def restart(self) -> None:
        self.t = time.perf_counter()

    def flush(self, step: int, run, bar) -> None:
        if not self.metrics:
            return
        fetched = jax.device_get(self.metrics)
        for i, m in enumerate(fetched):
            if not np.isfinite(m["loss"]):
                raise NonFiniteLossError(
                    f"loss became {float(m['loss'])} at step {step - len(fetched) + i + 1}; stopping. Nothing after "
                    f"checkpoint step {run.checkpointer.latest_step()} was saved. Lower the learning rate "
                    f"(--set lr=...) or check the data.")
        dt = time.perf_counter() - self.t
        mean = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        mean["images_per_second"] = len(fetched) * self.batch_size / max(dt, 1e-9)
        mean["step_seconds"] = dt / len(fetched)
        run.metrics.write(step, "train", mean)
        bar.show(step, mean)
        self.metrics = []
        self.restart()


# ------------------------------------------------------------------------------------------------
# Restoring for evaluation and analysis
# ------------------------------------------------------------------------------------------------
def load_config(workdir: str) -> Config:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        from alexnet_jax.workdir import WorkdirError
        raise WorkdirError(f"{path} not found: is {workdir} a workdir written by `alexnet-jax train`?")
    with open(path) as f:
        return Config.from_dict(_migrate_config(json.load(f)))


def _migrate_config(d: dict[str, Any]) -> dict[str, Any]:
    """A workdir's config.json written before the init rules were named for every AlexNet (it has no
    `optimizer` key): its `init` acted on alexnet / alexnet_half only, every other model used its own."""
    if "optimizer" not in d and d.get("model") not in ("alexnet", "alexnet_half") and "init" in d:
        d = dict(d, init="native")
    return d


@dataclasses.dataclass
class Restored:
    """A workdir's checkpoint restored onto the devices present (`restore`)."""

    workdir: str
    config: Config             # as trained (trainer.config has the mesh it was restored onto)
    trainer: Trainer
    state: TrainState
    meta: dict[str, Any]
    step: int

    @property
    def model(self) -> nnx.Module:
        return self.trainer.model(self.state)


def restore(workdir: str, *, mesh: Mesh | None = None, step: int | None = None, batch_size: int | None = None,
            data_dir: str | None = None) -> Restored:
    """The newest usable checkpoint of `workdir` (or `step`), restored onto `mesh` (default: every
    device present; the columns of a two-column net split over 2 devices when there are 2+; one
    device is fine, so a checkpoint saved on two devices opens on one CPU for analysis).

    Its Trainer carries the run's device augmentation when the dataset is prepared here (for `eval`);
    without the dataset, the per-channel mean stands in for the training mean image (for the tools'
    photos), with a warning."""
    workdir = os.path.abspath(workdir)
    config = load_config(workdir)
    mesh = mesh if mesh is not None else parallel.make_mesh(-1, -1)
    if batch_size is None:   # the training batch, rounded up to what this mesh splits evenly
        n = mesh.devices.size
        batch_size = -(-config.batch_size // n) * n
    here = config.replace(mesh_data=mesh.shape["data"], mesh_model=mesh.shape["model"],
                          **({"data_dir": data_dir} if data_dir else {}))
    trainer = Trainer.build(here, mesh, batch_size=batch_size, augment=_augment_or_stand_in(here, workdir))
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    try:
        restored = trainer.restore(checkpointer, step=step)
    finally:
        checkpointer.close()
    if restored is None:
        raise ckpt_lib.CheckpointError(f"no checkpoint under {os.path.join(workdir, 'checkpoints')}: train first "
                                       f"(alexnet-jax train --workdir {workdir})")
    state, meta, got = restored
    return Restored(workdir=workdir, config=config, trainer=trainer, state=state, meta=meta, step=int(got))


def _augment_or_stand_in(config: Config, workdir: str | None = None):
    """The run's device augmentation; where its dataset is not prepared here, a per-channel mean stands in
    for the training mean image (the tools' photos), with a warning.  An imported net's preprocessing
    (config.preprocess) needs no dataset (its mean image, for caffe, is in `workdir`)."""
    from alexnet_jax import data as data_lib
    from alexnet_jax.data.catalog import stored_shape_of

    try:
        return data_lib.make_augment(config, workdir=workdir)
    except data_lib.DatasetNotPreparedError:
        if config.augment in ("alexnet", "cifar"):
            log.warning("%s is not prepared here: subtracting a per-channel mean instead of the training mean "
                        "image", config.dataset)
        return data_lib.make_augment(config, stored_shape=stored_shape_of(config.dataset), mean="stand-in")


def evaluate_workdir(workdir: str, *, split: str | None = None, ten_crop: bool | None = None,
                     mesh: Mesh | None = None, data_dir: str | None = None) -> dict[str, Any]:
    """Evaluate a workdir's newest usable checkpoint on every device present."""
    from alexnet_jax import data as data_lib

    r = restore(workdir, mesh=mesh, data_dir=data_dir)
    config = r.trainer.config
    ten_crop = config.ten_crop if ten_crop is None else ten_crop
    split = split or config.eval_split
    plan = r.trainer.plan
    batches = data_lib.make_eval_loader(config, split, batch_size=plan.per_process_batch,
                                        process_index=plan.feed_index, process_count=plan.feed_count)
    return dict(r.trainer.evaluate(r.state, batches, ten_crop=ten_crop), split=split, step=r.step,
                ten_crop=ten_crop, devices=int(r.trainer.mesh.devices.size))
