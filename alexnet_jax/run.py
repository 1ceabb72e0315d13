"""A run: the run builder (`build_run`: config -> validated once -> mesh -> abstract model -> plan -> the
dataset checked once -> loaders, augmentation and the Trainer) and the one loop every training goes
through (`train_and_evaluate`: resume, train, evaluate, checkpoint, stop on a signal).

Training, the tools, the benchmark and the experiments get their loaders and Trainer for training from
`build_run`; experiments that train a config end to end call `train_and_evaluate` (with `after_eval`
where they stop early).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import data as data_lib
from alexnet_jax import optim, parallel
from alexnet_jax.config import Config, ConfigError
from alexnet_jax.errors import AlexnetJaxError
from alexnet_jax.trainer import SDLM_STREAM, Trainer, abstract_model_of
from alexnet_jax.workdir import Interrupted, Progress, RunDir, StopFlag, WorkdirError, check_config

log = logging.getLogger("alexnet_jax")


class NonFiniteLossError(AlexnetJaxError, FloatingPointError):
    pass


# ------------------------------------------------------------------------------------------------
# The run builder
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class Run:
    """A config made ready to train on a mesh (`build_run`); `close()` (or `with`) stops its loaders.

    train_loader  this process's share of every global batch (infinite, resumable, stream positions)
    eval_loader   one pass over config.eval_split, this process's share (None: not asked for)
    patterns      optimizer=sdlm: the patterns of each pass's curvature estimate (`curvature_patterns`)
    """

    config: Config
    trainer: Trainer
    train_loader: Any
    eval_loader: Any = None
    patterns: Any = None

    @property
    def steps_per_epoch(self) -> int:
        return self.trainer.steps_per_epoch

    @property
    def total_steps(self) -> int:
        return self.config.num_steps or max(1, math.ceil(self.config.num_epochs * self.steps_per_epoch))

    @property
    def eval_every(self) -> int:
        return max(1, round(self.config.eval_every_epochs * self.steps_per_epoch))

    def close(self) -> None:
        for loader in (self.train_loader, self.eval_loader, self.patterns):
            if loader is not None:
                loader.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_dataset(config: Config, abstract_model) -> None:
    """The dataset against the model: its classes and its images' channels (the dataset is located here)."""
    info = data_lib.dataset_info(config)
    if info.num_classes != config.num_classes:
        raise ConfigError(f"num_classes={config.num_classes} but dataset {config.dataset!r} has "
                          f"{info.num_classes} classes; pass --set num_classes={info.num_classes}")
    channels = int(getattr(abstract_model, "in_channels", 3))
    if info.stored_shape[-1] != channels:
        raise ConfigError(f"dataset {config.dataset!r} has {info.stored_shape[-1]}-channel images and model="
                          f"{config.model} reads {channels}: choose a {channels}-channel dataset or another model")


def curvature_patterns(config: Config):
    """optimizer=sdlm: the loader of the patterns each curvature estimate uses, `sdlm_samples` of the
    training split drawn from (seed + SDLM_STREAM, pass): the same on every process and on resume."""
    return data_lib.make_train_loader(config.replace(seed=config.seed + SDLM_STREAM), batch_size=config.sdlm_samples,
                                      prefetch=0)


def build_run(config: Config, mesh: Mesh | None = None, *, workdir: str | None = None, evaluation: bool = True,
              prefetch: int | None = None) -> Run:
    """Everything a training run of `config` needs on `mesh` (default: the config's mesh_data x mesh_model).

    The config is validated once; the model x mesh x batch plan is made before any data is read (a mesh
    or batch that does not fit is refused first); then the dataset is checked against the model, and the
    loaders, the device augmentation and the Trainer are built.  `evaluation=False`: no eval loader;
    `prefetch`: the training loader's read-ahead in batches (None: the loader's default); `workdir`: where an
    imported net keeps its preprocessing files (config.preprocess, alexnet_jax/zoo)."""
    config.validate()
    mesh = mesh if mesh is not None else parallel.make_mesh(config.mesh_data, config.mesh_model)
    abstract_model = abstract_model_of(config)
    plan = parallel.plan(abstract_model, mesh, config.batch_size)
    check_dataset(config, abstract_model)
    feed = dict(process_index=plan.feed_index, process_count=plan.feed_count)
    with contextlib.ExitStack() as on_error:
        train_loader = data_lib.make_train_loader(config, batch_size=plan.per_process_batch, **feed,
                                                  **({} if prefetch is None else {"prefetch": prefetch}))
        on_error.callback(train_loader.close)
        optim.check_schedule(config, train_loader.steps_per_epoch)
        trainer = Trainer.assemble(config, abstract_model, plan, steps_per_epoch=train_loader.steps_per_epoch,
                                   augment=data_lib.make_augment(config, workdir=workdir))
        eval_loader = (data_lib.make_eval_loader(config, config.eval_split, batch_size=plan.per_process_batch, **feed)
                       if evaluation else None)
        patterns = curvature_patterns(config) if config.optimizer == "sdlm" else None
        on_error.pop_all()
    return Run(config=config, trainer=trainer, train_loader=train_loader, eval_loader=eval_loader, patterns=patterns)


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
def _data_state(loader) -> dict[str, Any]:
    """The loaders' positions, every process's: each process reads its own share of the data."""
    state = json.loads(loader.get_state())
    if jax.process_count() == 1:
        return {"state": state}
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
    return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).max())


def train_and_evaluate(config: Config, workdir: str, *, progress: bool = True, extend: bool = False,
                       mesh: Mesh | None = None,
                       after_eval: Callable[[dict[str, Any], dict[str, Any] | None], bool] | None = None
                       ) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming from its checkpoints) and return the final metrics.

    A workdir holding a run resumes it only with its own config (workdir.check_config): a changed schedule
    (num_steps, num_epochs, eval_every_epochs, ten_crop) needs `extend=True`, and never ends before the
    step the run has reached.

    `after_eval(evaluation, train)`, called after each evaluation that follows a step trained by this call,
    with its record and the training record written just before it (the mean over the steps since the
    previous log step), may return True to end the run there (saved) before its schedule does."""
    check_config(config, workdir, extend=extend)
    with build_run(config, mesh, workdir=workdir) as run:
        return _train(run, workdir, progress=progress, after_eval=after_eval)


def _train(run: Run, workdir: str, *, progress: bool, after_eval) -> dict[str, Any]:
    config, trainer, loader, patterns = run.config, run.trainer, run.train_loader, run.patterns
    spe, total_steps, eval_every = run.steps_per_epoch, run.total_steps, run.eval_every
    primary, single = jax.process_index() == 0, jax.process_count() == 1
    with StopFlag() as stop, RunDir(workdir, config, primary=primary) as rundir:
        log.info("%s; %d steps of %d (%d per epoch)", trainer.plan.describe(), total_steps, config.batch_size, spe)
        plateau = optim.PlateauController.from_config(config) if config.lr_schedule == "plateau" else None
        restored = rundir.checkpointer.restore(trainer.abstract_state, config=config.to_dict())
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
            if step > total_steps:
                raise WorkdirError(f"{rundir.path} is at step {step}, past the {total_steps} steps of this config's "
                                   f"schedule: --extend continues a run with a longer schedule, never a shorter one")
        rundir.start(step, resumed=restored is not None)

        def checkpoint_meta() -> dict[str, Any]:
            return {"config": config.to_dict(), "data_state": _data_state(loader), "steps_per_epoch": spe,
                    "plateau": plateau.state_dict() if plateau else None, "evals": history,
                    "provenance": ckpt_lib.provenance(trainer.mesh)}

        def evaluate(state, step):
            """The evaluation at `step`, recorded, and the state with the plateau rule's rate.  A signal stops
            it at the next batch (Interrupted; with several processes it runs to its end)."""
            what = f"the evaluation at step {step}"
            batches = stop.interruptible(run.eval_loader, what) if single else run.eval_loader
            history.append(dict(trainer.evaluate(state, batches), epoch=step / spe, step=step))
            rundir.metrics.write(step, "eval", history[-1])
            if plateau is not None and (scale := plateau.update(1.0 - history[-1]["top1"])) is not None:
                state = trainer.with_lr(state, config.lr * scale)
                log.info("validation error stopped improving: lr -> %g at step %d", config.lr * scale, step)
            return state

        def saved_and_stopped(step: int, during: str = "") -> Interrupted:
            """Step `step` saved (once) and waited for: the Interrupted that says so."""
            if rundir.checkpointer.latest_step() != step:
                rundir.checkpointer.save(step, state, checkpoint_meta())
            rundir.checkpointer.wait()
            return Interrupted(f"stopped by {stop.name}{during} at step {step}: saved checkpoint step {step} in "
                               f"{rundir.checkpointer.directory}; `alexnet-jax train --workdir {rundir.path}` resumes "
                               f"it", stop.signum or signal.SIGTERM)

        # an evaluation due at the restored step that did not run (stopped by a signal) runs first
        if step and (step % eval_every == 0 or step >= total_steps) and not (history and history[-1]["step"] == step):
            try:
                state = evaluate(state, step)
            except Interrupted as e:
                raise Interrupted(f"{e}; the workdir resumes from its checkpoint step {step}", e.signum) from None
        if step >= total_steps:
            rundir.mark_finished(step)
            log.info("%s is finished (step %d of %d): its final evaluation, from the checkpoint (no new "
                     "training, so no timings)", rundir.path, step, total_steps)
            return dict(history[-1], step=step, compile_seconds=None, finished_before=True, workdir=rundir.path)

        first = trainer.global_batch(next(loader))
        t0 = time.perf_counter()
        compiled = trainer.train_step.lower(state, first).compile()
        compile_s = time.perf_counter() - t0
        log.info("compiled the train step in %.1f s", compile_s)
        rundir.metrics.write(step, "compile", {"seconds": compile_s})
        if single and stop.signum is not None:
            raise Interrupted(f"stopped by {stop.name} before the first step: nothing was trained; the workdir "
                              f"resumes from step {step}", stop.signum)

        bar = Progress(total_steps, step, enabled=progress and primary)
        window = Window(config.batch_size)
        with bar:
            batches = itertools.chain([first], (trainer.global_batch(b) for b in loader))
            in_flight = None
            while step < total_steps:
                if patterns is not None and step % spe == 0:
                    state = trainer.install_curvature(state, patterns, epoch=step // spe)
                    window.restart()
                state, metrics = compiled(state, next(batches))
                if in_flight is not None:    # at most two steps dispatched: a signal is answered within a step
                    jax.block_until_ready(in_flight)
                in_flight = metrics["loss"]
                window.add(metrics)
                step += 1
                bar.advance(step)
                final = step == total_steps
                ended = False          # by after_eval, before the schedule's end
                if step % config.log_every_steps == 0 or final:
                    window.flush(step, rundir, bar)
                if step % eval_every == 0 or final:
                    window.flush(step, rundir, bar)
                    try:
                        state = evaluate(state, step)
                    except Interrupted:
                        raise saved_and_stopped(step, " during the evaluation") from None
                    ended = after_eval is not None and bool(after_eval(history[-1], window.last)) and not final
                    window.restart()
                # a signal stops the run after this step, saved; with several processes, all agree at log steps
                checks = single or step % config.log_every_steps == 0
                stopping = not final and checks and _any_process(stop.signum is not None)
                if step % config.checkpoint_every_steps == 0 or final or stopping or ended:
                    window.flush(step, rundir, bar)
                    rundir.checkpointer.save(step, state, checkpoint_meta())
                    window.restart()
                if stopping:
                    raise saved_and_stopped(step)
                if ended:
                    log.info("stopped at step %d of %d (after_eval)", step, total_steps)
                    break
        rundir.finish(step)
    return dict(history[-1], step=step, compile_seconds=compile_s, workdir=rundir.path)


class Window:
    """The train metrics since the last record: fetched, checked for non-finite losses and averaged at
    each log step; the time of evaluations, saves and curvature estimates is not counted as training."""

    def __init__(self, batch_size: int):
        self.batch_size, self.metrics, self.t = batch_size, [], time.perf_counter()
        self.last: dict[str, float] | None = None     # the record written by the latest flush

    def add(self, metrics) -> None:
        self.metrics.append(metrics)

    def restart(self) -> None:
        self.t = time.perf_counter()

    def flush(self, step: int, rundir, bar) -> None:
        if not self.metrics:
            return
        fetched = jax.device_get(self.metrics)
        for i, m in enumerate(fetched):
            if not np.isfinite(m["loss"]):
                saved = rundir.checkpointer.latest_step()
                raise NonFiniteLossError(
                    f"loss became {float(m['loss'])} at step {step - len(fetched) + i + 1}; stopping. "
                    + ("No checkpoint was saved before it" if saved is None else
                       f"Nothing after checkpoint step {saved} was saved")
                    + ". Lower the learning rate (--set lr=...) or check the data.")
        dt = time.perf_counter() - self.t
        mean = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        mean["images_per_second"] = len(fetched) * self.batch_size / max(dt, 1e-9)
        mean["step_seconds"] = dt / len(fetched)
        rundir.metrics.write(step, "train", mean)
        bar.show(step, mean)
        self.last = mean
        self.metrics = []
        self.restart()
