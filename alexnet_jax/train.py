"""Training and evaluation: the train state, one pure jitted step, the loop, `train_and_evaluate`.

The flow of one step: config -> mesh (parallel) -> sharded state (models created under the mesh)
-> grain batch -> global array on the batch axis -> jitted step [per-column forward under
shard_map, all-gathers at conv3/fc6/fc7/fc8, loss, gradients (reverse collectives), the paper's
SGD update] -> metrics -> orbax save.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import optim, parallel
from alexnet_jax.config import Config
from alexnet_jax.models import create_model

log = logging.getLogger("alexnet_jax")


@flax.struct.dataclass
class TrainState:
    step: jax.Array          # int32 scalar
    params: Any              # nnx.State of the trainable parameters (float32)
    extra: Any               # nnx.State of everything else (BatchNorm statistics); may be empty
    opt_state: Any           # optax state of paper_sgd (velocity, learning rate)
    rng: jax.Array           # uint32 key data of the base key; dropout key = fold_in(key, step)


# ------------------------------------------------------------------------------------------------
# Construction
# ------------------------------------------------------------------------------------------------
def model_builder(config: Config) -> Callable[[], nnx.Module]:
    extra = {"head": config.head} if config.model == "lenet5" else {}
    if config.model in ("alexnet", "alexnet_half"):
        extra["init"] = config.init
    return lambda: create_model(config.model, num_classes=config.num_classes, input_size=config.input_size,
                                width=config.width, dtype=config.dtype, seed=config.seed, **extra)


def create_train_state(config: Config, mesh, tx: optax.GradientTransformation):
    """(graphdef, TrainState), every array created directly in its sharded layout."""
    model = parallel.create_sharded(model_builder(config), mesh)
    graphdef, params, extra = nnx.split(model, nnx.Param, ...)
    # momentum buffers take their parameters' shardings (each column's velocity on its device)
    rep = parallel.replicated(mesh)
    opt_shardings = optax.tree_utils.tree_map_params(
        tx, lambda _, p: p.sharding, jax.eval_shape(tx.init, params), params, transform_non_params=lambda _: rep,
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    state = TrainState(step=jax.device_put(jnp.int32(0), rep), params=params, extra=extra, opt_state=opt_state,
                       rng=jax.device_put(jax.random.key_data(jax.random.key(config.seed + 1)), rep))
    return graphdef, state


def state_shardings(state: TrainState):
    return jax.tree.map(lambda x: x.sharding, state)


# ------------------------------------------------------------------------------------------------
# Steps
# ------------------------------------------------------------------------------------------------
def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def make_train_step(graphdef, tx: optax.GradientTransformation, mesh, shardings, batch_sharding):
    """The one pure training step `(state, batch) -> (state, metrics)`, jitted once, state donated."""

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, state.extra)
            logits = parallel.apply(model, batch["image"], mesh=mesh, train=True, dropout_key=key)
            loss = cross_entropy(logits, batch["label"]).mean()
            _, _, extra = nnx.split(model, nnx.Param, ...)
            return loss, (logits, extra)

        (loss, (logits, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
                   "lr": optim.get_lr(opt_state)}
        return state.replace(step=state.step + 1, params=params, extra=extra, opt_state=opt_state), metrics

    rep = parallel.replicated(mesh)
    return jax.jit(train_step, in_shardings=(shardings, batch_sharding), out_shardings=(shardings, rep),
                   donate_argnums=0)


def make_eval_step(graphdef, mesh):
    """`(params, extra, batch) -> sums` of loss, top-1 and top-5 hits over the unmasked examples.

    `batch["image"]` is (B, H, W, C) or (B, V, H, W, C) for multi-view testing, where the softmax
    outputs of the V views are averaged (K12 §4.1: 4 corners + centre and their flips).
    """

    def eval_step(params, extra, batch):
        model = nnx.merge(graphdef, params, extra)
        x, labels, mask = batch["image"], batch["label"], batch["mask"].astype(jnp.float32)
        views = x.shape[1] if x.ndim == 5 else 1
        if views > 1:
            x = x.reshape((-1,) + x.shape[2:])
        logits = parallel.apply(model, x, mesh=mesh, train=False).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits)
        if views > 1:
            logp = jax.nn.logsumexp(logp.reshape(labels.shape[0], views, -1), axis=1) - jnp.log(views)
        loss = -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
        top5 = jax.lax.top_k(logp, min(5, logp.shape[-1]))[1]
        hit1 = top5[:, 0] == labels
        hit5 = jnp.any(top5 == labels[:, None], axis=1)
        return {"loss": jnp.sum(loss * mask), "top1": jnp.sum(hit1 * mask), "top5": jnp.sum(hit5 * mask),
                "examples": jnp.sum(mask)}

    return jax.jit(eval_step)


def evaluate(eval_step, state: TrainState, batches, model_like, mesh) -> dict[str, float]:
    totals = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "examples": 0.0}
    for batch in batches:
        out = eval_step(state.params, state.extra, parallel.global_batch(batch, model_like, mesh))
        for k, v in jax.device_get(out).items():
            totals[k] += float(v)
    n = max(totals["examples"], 1.0)
    return {"top1": totals["top1"] / n, "top5": totals["top5"] / n, "loss": totals["loss"] / n,
            "examples": int(totals["examples"])}


# ------------------------------------------------------------------------------------------------
# Logging helpers
# ------------------------------------------------------------------------------------------------
class MetricWriter:
    """metrics.jsonl plus TensorBoard event files (tensorboardX, no TensorFlow); process 0 only."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter
                self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:  # pragma: no cover - optional
                self.tb = None

    def write(self, step: int, kind: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), "kind": kind, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _truncate_metrics(path: str, step: int) -> None:
    """On resume, drop records written after the checkpoint we resume from (they will be redone)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(keep)


class _StopFlag:
    """SIGTERM / SIGINT: finish the current step, save a checkpoint, exit."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class NonFiniteLossError(FloatingPointError):
    pass


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
def train_and_evaluate(config: Config, workdir: str, *, progress: bool = True) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming from its checkpoints) and return the final metrics."""
    from alexnet_jax import data as data_lib  # lazy: `bench` builds steps without tfds/grain installed

    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    primary = jax.process_index() == 0
    mesh = parallel.make_mesh(config.mesh_data, config.mesh_model)
    info = data_lib.dataset_info(config)
    if info.num_classes != config.num_classes:
        raise ValueError(f"config.num_classes={config.num_classes} but dataset {config.dataset!r} has "
                         f"{info.num_classes} classes; pass --set num_classes={info.num_classes}")

    build = model_builder(config)
    # the batch is split over the data axis (two-column net) or over every device (others)
    abstract_model = nnx.eval_shape(lambda: _no_eager(build))
    divisor = parallel.batch_divisor(abstract_model, mesh)
    if config.batch_size % divisor or config.batch_size % jax.process_count():
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {divisor} devices that "
                         f"split the batch (mesh data={mesh.shape['data']} x model={mesh.shape['model']}); "
                         f"choose a multiple of {divisor}")
    # processes holding the same batch rows (one column each) read the same data
    feed_index, feed_count = parallel.batch_feed(abstract_model, mesh, config.batch_size)
    per_process = config.batch_size // feed_count
    train_iter = data_lib.make_train_iter(config, batch_size=per_process, process_index=feed_index,
                                          process_count=feed_count, seed=config.seed)
    steps_per_epoch = train_iter.steps_per_epoch
    total_steps = config.num_steps or max(1, math.ceil(config.num_epochs * steps_per_epoch))
    eval_every = max(1, round(config.eval_every_epochs * steps_per_epoch))
    tx = optim.optimizer_from_config(config, steps_per_epoch)
    plateau = optim.PlateauController.from_config(config) if config.lr_schedule == "plateau" else None

    graphdef, state = create_train_state(config, mesh, tx)
    shardings = state_shardings(state)
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    restored = checkpointer.restore(state)
    history: list[dict[str, Any]] = []
    if restored is not None:
        state, meta, step0 = restored
        train_iter.set_state(base64.b64decode(meta["data_state"]))
        if plateau is not None and meta.get("plateau"):
            plateau = optim.PlateauController.from_state_dict(meta["plateau"])
        history = meta.get("evals", [])
        if primary:
            log.info("resumed from %s at step %d", checkpointer.directory, step0)
            _truncate_metrics(os.path.join(workdir, "metrics.jsonl"), step0)
    elif primary:
        log.info("no checkpoint in %s: starting from scratch", checkpointer.directory)
    if primary:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json())

    train_step = make_train_step(graphdef, tx, mesh, shardings, parallel.batch_shardings(abstract_model, mesh))
    eval_step = make_eval_step(graphdef, mesh)
    writer = MetricWriter(workdir, enabled=primary)

    def eval_batches(split):
        return data_lib.make_eval_iter(config, split, batch_size=per_process, process_index=feed_index,
                                       process_count=feed_count, ten_crop=config.ten_crop)

    def data_state_b64() -> str:
        return base64.b64encode(train_iter.get_state()).decode()

    def meta() -> dict[str, Any]:
        return {"config": config.to_dict(), "data_state": data_state_b64(),
                "plateau": plateau.state_dict() if plateau else None, "evals": history}

    step = int(jax.device_get(state.step))
    t_compile = time.perf_counter()
    batch = parallel.global_batch(next(train_iter), abstract_model, mesh) if step < total_steps else None
    compiled = train_step.lower(state, batch).compile() if batch is not None else None
    compile_s = time.perf_counter() - t_compile
    if primary and compiled is not None:
        log.info("compiled the train step in %.1f s", compile_s)
        writer.write(step, "compile", {"seconds": compile_s})

    pending: list[tuple[int, dict]] = []
    last_saved = step if restored is not None else -1
    pbar = None
    if progress and primary:
        from tqdm import tqdm
        pbar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr,
                    mininterval=0.5)
    t_window, n_window = time.perf_counter(), 0

    def flush() -> dict[str, float] | None:
        nonlocal t_window, n_window
        if not pending:
            return None
        fetched = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, fetched):
            if not np.isfinite(m["loss"]):
                raise NonFiniteLossError(
                    f"loss became {float(m['loss'])} at step {s + 1}; stopping. Nothing after checkpoint step "
                    f"{checkpointer.latest_step()} was saved. Lower the learning rate (--set lr=...) or check "
                    f"the data.")
        dt = time.perf_counter() - t_window
        mean = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        mean["images_per_second"] = n_window * config.batch_size / max(dt, 1e-9)
        mean["step_seconds"] = dt / max(n_window, 1)
        writer.write(pending[-1][0] + 1, "train", mean)
        if pbar is not None:
            pbar.set_postfix(loss=f"{mean['loss']:.4f}", img_s=f"{mean['images_per_second']:.0f}")
        pending.clear()
        t_window, n_window = time.perf_counter(), 0
        return mean

    def save(at_step: int) -> None:
        nonlocal last_saved
        flush()
        checkpointer.save(at_step, state, meta())
        last_saved = at_step

    last_eval: dict[str, float] | None = history[-1] if history else None
    with _StopFlag() as stop:
        try:
            while step < total_steps:
                if batch is None:
                    batch = parallel.global_batch(next(train_iter), abstract_model, mesh)
                state, metrics = compiled(state, batch)
                batch = None
                pending.append((step, metrics))
                step += 1
                n_window += 1
                if pbar is not None:
                    pbar.update(1)
                if step % config.log_every_steps == 0 or step == total_steps:
                    flush()
                if step % eval_every == 0 or step == total_steps:
                    flush()
                    ev = evaluate(eval_step, state, eval_batches(config.eval_split), abstract_model, mesh)
                    ev = dict(ev, epoch=step / steps_per_epoch)
                    history.append(dict(ev, step=step))
                    writer.write(step, "eval", ev)
                    last_eval = ev
                    if plateau is not None:
                        new_scale = plateau.update(1.0 - ev["top1"])
                        if new_scale is not None:
                            state = state.replace(opt_state=optim.set_lr(state.opt_state, config.lr * new_scale))
                            if primary:
                                log.info("validation error stopped improving: lr -> %g at step %d",
                                         config.lr * new_scale, step)
                if step % config.checkpoint_every_steps == 0 or step == total_steps:
                    save(step)
                if stop.signum is not None:
                    if last_saved != step:
                        save(step)
                    checkpointer.wait()
                    if primary:
                        log.warning("received signal %d: saved checkpoint at step %d, exiting", stop.signum, step)
                    raise SystemExit(128 + stop.signum)
        finally:
            if pbar is not None:
                pbar.close()
            checkpointer.close()
            writer.close()

    final = dict(last_eval or {}, step=step, compile_seconds=compile_s, workdir=workdir)
    if primary:
        try:
            from alexnet_jax.plotting import plot_runs
            plot_runs([workdir], os.path.join(workdir, "curves.png"))
        except Exception as e:  # noqa: BLE001 - a plot must never fail a finished run
            log.warning("could not draw curves.png: %s", e)
    return final


def _no_eager(build):
    with nnx.use_eager_sharding(False):
        return build()


# ------------------------------------------------------------------------------------------------
# Restoring for evaluation and analysis
# ------------------------------------------------------------------------------------------------
def load_config(workdir: str) -> Config:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir} a workdir written by `alexnet-jax train`?")
    with open(path) as f:
        return Config.from_dict(json.load(f))


def abstract_train_state(config: Config, mesh, tx: optax.GradientTransformation):
    """(graphdef, TrainState of ShapeDtypeStructs carrying this mesh's shardings): a restore target.

    Built without running (or compiling) the random initialiser or the optimiser's init, which on
    a CPU costs more than the restore itself.
    """
    def _build():
        with nnx.use_eager_sharding(False):
            return model_builder(config)()

    graphdef, params, extra = nnx.split(nnx.eval_shape(_build), nnx.Param, ...)
    rep = parallel.replicated(mesh)

    def with_shardings(tree):
        shardings = parallel.state_shardings(tree, mesh)
        return jax.tree.map(lambda v, s: v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s)), tree,
                            shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))

    params, extra = with_shardings(params), with_shardings(extra)
    abs_opt = jax.eval_shape(tx.init, params)
    opt_shardings = optax.tree_utils.tree_map_params(
        tx, lambda _, p: p.sharding, abs_opt, params, transform_non_params=lambda _: rep,
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    opt_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abs_opt, opt_shardings)
    key = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
    return graphdef, TrainState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=rep), params=params, extra=extra,
                                opt_state=opt_state, rng=jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep))


def restore_model(workdir: str, *, mesh=None, step: int | None = None):
    """(config, model, meta, step, state, graphdef, mesh) from a workdir's newest usable checkpoint,
    restored onto the current devices.

    With no mesh, a one-device mesh is used, so a checkpoint saved on two devices (columns split)
    restores onto one CPU for analysis.
    """
    config = load_config(workdir)
    if mesh is None:
        mesh = parallel.make_mesh(1, 1)
    config = config.replace(mesh_data=mesh.shape["data"], mesh_model=mesh.shape["model"])
    tx = optim.optimizer_from_config(config, steps_per_epoch=1)
    graphdef, target = abstract_train_state(config, mesh, tx)
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    try:
        restored = checkpointer.restore(target, step=step)
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint under {os.path.join(workdir, 'checkpoints')}")
    state, meta, step = restored
    model = nnx.merge(graphdef, state.params, state.extra)
    return config, model, meta, step, state, graphdef, mesh


def evaluate_workdir(workdir: str, *, split: str | None = None, ten_crop: bool | None = None,
                     mesh=None) -> dict[str, Any]:
    from alexnet_jax import data as data_lib

    config, model, _, step, state, graphdef, mesh = restore_model(workdir, mesh=mesh)
    if ten_crop is not None:
        config = config.replace(ten_crop=ten_crop)
    split = split or config.eval_split
    feed_index, feed_count = parallel.batch_feed(model, mesh, config.batch_size)
    per_process = config.batch_size // feed_count
    batches = data_lib.make_eval_iter(config, split, batch_size=per_process, process_index=feed_index,
                                      process_count=feed_count, ten_crop=config.ten_crop)
    res = evaluate(make_eval_step(graphdef, mesh), state, batches, model, mesh)
    return dict(res, split=split, step=step, ten_crop=config.ten_crop)
