"""A run's directory: its lock, its record (config, provenance, metrics.jsonl, TensorBoard events
through alexnet_jax/tensorboard.py), its checkpoints, and what the run prints while it trains.

    <workdir>/config.json        the resolved config          provenance.json  where each start ran
    <workdir>/metrics.jsonl      one JSON record per line      tensorboard/     the same, for TensorBoard
    <workdir>/checkpoints/<step> orbax checkpoints             curves.png       drawn at the end
    <workdir>/finished.json      the steps at which the run finished a schedule (never pruned)
    <workdir>/.lock              held (flock) while a run trains in the workdir

A workdir owns its run: `train --workdir DIR` resumes it with its own config.json, and a config that
differs is refused (`check_config`) except in the keys that say where and how the run runs
(RUNTIME_KEYS), and, when the user says so with --extend, the keys that plan the steps still to come
(EXTEND_KEYS).  Keep-last-K (`keep_checkpoints`) prunes intermediate checkpoints only: the final
checkpoint of a finished schedule stays, however the run is extended.

One run at a time: a second `train` in a locked workdir exits at once naming the holder; the
kernel drops the lock when the holder exits in any way (SIGKILL included).  On resume both
metrics.jsonl and the TensorBoard events are cut back to the restored step, so they stay one
monotonic history through any number of restarts and checkpoint fallbacks.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from alexnet_jax.config import Config, show_value
from alexnet_jax.errors import Interrupted, WorkdirError
from alexnet_jax.plotting import plot_runs
from alexnet_jax.tensorboard import EventWriter, purge_events

log = logging.getLogger("alexnet_jax")


def check_writable(path: str, what: str = "workdir") -> str:
    """Create `path` (a directory) if needed and make sure we can write in it; else a clear error."""
    path = os.path.abspath(path)
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(f"cannot write to the {what} {path}: {e.strerror or e}; choose a writable "
                           f"{'--workdir' if what == 'workdir' else '--out'} or fix its permissions") from None
    return path


# ------------------------------------------------------------------------------------------------
# The run's config
# ------------------------------------------------------------------------------------------------
def load_config(workdir: str) -> Config:
    """The config a workdir's run was trained with (its config.json)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise WorkdirError(f"{path} not found: is {workdir} a workdir written by `alexnet-jax train`?")
    with open(path) as f:
        return Config.from_dict(_migrate_config(json.load(f)))


def _migrate_config(d: dict[str, Any]) -> dict[str, Any]:
    """A workdir's config.json written before the init rules were named for every AlexNet (it has no
    `optimizer` key): its `init` acted on alexnet / alexnet_half only, every other model used its own."""
    if "optimizer" not in d and d.get("model") not in ("alexnet", "alexnet_half") and "init" in d:
        d = dict(d, init="native")
    return d


# Where and how a run runs, not what it computes: a resume may change these freely.
RUNTIME_KEYS = frozenset({"data_dir", "mesh_data", "mesh_model", "num_workers", "log_every_steps",
                          "checkpoint_every_steps", "keep_checkpoints"})
# The plan of the steps still to come (the schedule's length, the evaluations): changed on purpose only,
# with `extend=True` (`train --extend`); what was trained and saved stays as it is.
EXTEND_KEYS = frozenset({"num_epochs", "num_steps", "eval_every_epochs", "ten_crop"})


def check_config(config: Config, workdir: str, *, extend: bool = False) -> None:
    """Refuse to train `workdir`'s run with a config other than its own (config.json): any change outside
    RUNTIME_KEYS is refused, except EXTEND_KEYS with `extend`.  A workdir without config.json is new."""
    if not os.path.exists(os.path.join(workdir, "config.json")):
        return
    saved = load_config(workdir).to_dict()
    diff = {k: (saved[k], v) for k, v in config.to_dict().items() if k not in RUNTIME_KEYS and saved[k] != v}
    shown = ", ".join(f"{k} {show_value(a)} -> {show_value(b)}" for k, (a, b) in sorted(diff.items()))
    if set(diff) - EXTEND_KEYS:
        raise WorkdirError(f"{workdir} holds a run of another config ({shown}); `alexnet-jax train --workdir "
                           f"{workdir}` without --config resumes it with its own (config.json), or choose another "
                           f"--workdir")
    if diff and not extend:
        raise WorkdirError(f"{workdir} holds a run whose schedule this command changes ({shown}); nothing was "
                           f"changed: pass --extend to continue it that way (what it trained and saved stays), or "
                           f"omit --config and --set to resume it as it is")


FINISHED = "finished.json"


def finished_steps(workdir: str) -> list[int]:
    """The steps at which `workdir`'s run finished a schedule (their checkpoints are never pruned)."""
    try:
        with open(os.path.join(workdir, FINISHED)) as f:
            return sorted({int(s) for s in json.load(f)["steps"]})
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WorkdirError(f"{os.path.join(workdir, FINISHED)} is unreadable ({e}); it lists the steps of finished "
                           f"schedules as {{\"steps\": [...]}}: repair or remove it") from None


# ------------------------------------------------------------------------------------------------
# The lock
# ------------------------------------------------------------------------------------------------
class WorkdirLock:
    """An exclusive `flock` on <workdir>/.lock holding the owner's pid and host."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise WorkdirError(f"{os.path.dirname(self.path)} is in use by another run ({holder}); wait for it, "
                               f"stop it, or choose another --workdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class MetricWriter:
    """metrics.jsonl plus TensorBoard scalars (EventWriter: no TensorFlow, no tensorboardX); process 0 only."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb_dir = os.path.join(workdir, "tensorboard")
        self.tb = None

    def start(self, step: int) -> None:
        """Resume the record at `step`: drop what was written after it, then open TensorBoard."""
        if not self.enabled:
            return
        if os.path.exists(self.path):
            with open(self.path) as f:
                keep = [line for line in f if line.strip() and _record_step(line) <= step]
            with open(self.path + ".tmp", "w") as f:      # atomically: a kill here loses nothing
                f.writelines(keep)
            os.replace(self.path + ".tmp", self.path)
        purge_events(self.tb_dir, step)
        self.tb = EventWriter(self.tb_dir)

    def write(self, step: int, kind: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), "kind": kind, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _record_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62   # an unreadable line (a write cut short) is dropped


# ------------------------------------------------------------------------------------------------
# The run directory
# ------------------------------------------------------------------------------------------------
# checkpoint is imported below where it is used, lazy (--help): orbax would add ~0.2 s to `alexnet-jax --help`,
# which imports this module (every tool's check_writable; alexnet_jax/cli.py).
class RunDir:
    """Opens a workdir for training: lock (process 0), config.json, provenance.json, the metric
    writer and the checkpointer.  Use as a context manager; everything is released on any exit."""

    def __init__(self, workdir: str, config, *, primary: bool = True):
        self.path = check_writable(workdir) if primary else os.path.abspath(workdir)
        self.config, self.primary = config, primary
        self.lock = WorkdirLock(self.path)
        self.metrics = MetricWriter(self.path, enabled=primary)
        self.checkpointer = None

    def __enter__(self) -> RunDir:
        from alexnet_jax.checkpoint import Checkpointer  # lazy (--help): see the note above the class

        if self.primary:
            self.lock.acquire()
        try:
            self.checkpointer = Checkpointer(os.path.join(self.path, "checkpoints"), keep=self.config.keep_checkpoints,
                                             keep_steps=finished_steps(self.path))
        except BaseException:
            self.lock.release()
            raise
        return self

    def start(self, step: int, *, resumed: bool) -> None:
        """After the restore: write the config and this start's provenance, cut the record back."""
        if not self.primary:
            return
        from alexnet_jax.checkpoint import provenance  # lazy (--help): see the note above the class
        with open(os.path.join(self.path, "config.json"), "w") as f:
            f.write(self.config.to_json())
        prov_path = os.path.join(self.path, "provenance.json")
        starts = []
        if os.path.exists(prov_path):
            try:
                starts = json.loads(open(prov_path).read()).get("starts", [])
            except (OSError, ValueError):
                starts = []
        starts.append(dict(provenance(), started_at=time.strftime("%Y-%m-%d %H:%M:%S %z"), at_step=step,
                           resumed=resumed))
        with open(prov_path, "w") as f:
            json.dump({"starts": starts}, f, indent=1)
        self.metrics.start(step)
        if resumed:
            log.info("resumed from %s at step %d", self.checkpointer.directory, step)
        else:
            log.info("no checkpoint in %s: starting from scratch", self.checkpointer.directory)

    def mark_finished(self, step: int) -> None:
        """`step` ended a schedule: its checkpoint (saved, waited for) is kept from now on."""
        if not self.primary:
            return
        steps = sorted(set(finished_steps(self.path)) | {int(step)})
        path = os.path.join(self.path, FINISHED)
        with open(path + ".tmp", "w") as f:
            json.dump({"steps": steps}, f)
        os.replace(path + ".tmp", path)

    def finish(self, step: int) -> None:
        """The run completed at `step`: its checkpoint is kept (mark_finished); draw curves.png (never fails
        the run)."""
        self.checkpointer.wait()
        self.mark_finished(step)
        if not self.primary:
            return
        self.metrics.close()
        try:
            plot_runs([self.path], os.path.join(self.path, "curves.png"))
        except Exception as e:  # noqa: BLE001 - a plot must never fail a finished run
            log.warning("could not draw curves.png: %s", e)

    def __exit__(self, *exc) -> None:
        try:
            if self.checkpointer is not None:
                self.checkpointer.close()
        finally:
            self.metrics.close()
            self.lock.release()


# ------------------------------------------------------------------------------------------------
# What a run prints
# ------------------------------------------------------------------------------------------------
PROGRESS_SECONDS_ENV = "ALEXNET_JAX_PROGRESS_SECONDS"


class Progress:
    """A tqdm bar on a terminal (log lines are written through it, not glued onto it); when stderr is
    not a terminal, one plain log line every `every_seconds` (default 30, or $ALEXNET_JAX_PROGRESS_SECONDS)."""

    def __init__(self, total: int, initial: int, *, enabled: bool = True, every_seconds: float | None = None,
                 tty: bool | None = None):
        if every_seconds is None:
            every_seconds = float(os.environ.get(PROGRESS_SECONDS_ENV, "30"))
        self.total, self.enabled, self.every = total, enabled, every_seconds
        self.tty = enabled and (sys.stderr.isatty() if tty is None else tty)
        self.bar = None
        self._redirect = None
        self._last_line = time.monotonic()
        self._start = (time.monotonic(), initial)
        self._postfix: dict[str, float] = {}
        if self.tty:
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr,
                            mininterval=0.5)
            self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger()], tqdm_class=type(self.bar))

    def __enter__(self) -> Progress:
        if self._redirect is not None:
            self._redirect.__enter__()
        return self

    def advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
        elif self.enabled and time.monotonic() - self._last_line >= self.every:
            self._line(step)

    def show(self, step: int, metrics: dict[str, float]) -> None:
        self._postfix = {"loss": metrics["loss"], "img_s": metrics["images_per_second"]}
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{metrics['images_per_second']:.0f}")

    def _line(self, step: int) -> None:
        self._last_line = time.monotonic()
        t0, s0 = self._start
        rate = (step - s0) / max(time.monotonic() - t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        extra = "".join(f" {k} {v:.4g}" for k, v in self._postfix.items())
        log.info("step %d/%d (%.0f%%)%s, eta %s", step, self.total, 100 * step / self.total, extra,
                 time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "?")

    def __exit__(self, *exc) -> None:
        if self._redirect is not None:
            self._redirect.__exit__(*exc)
        if self.bar is not None:
            self.bar.close()


class StopFlag:
    """SIGTERM / SIGINT, while held: the signal is noted (`signum`), and the holder stops at its next step or
    batch boundary (`interruptible`) saying what it saved."""

    def __init__(self):
        self.signum = None
        self._old = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a signal"

    def interruptible(self, batches, what: str):
        """`batches`, until a signal arrives: then Interrupted naming `what` was stopped (nothing is saved)."""
        for batch in batches:
            if self.signum is not None:
                raise Interrupted(f"stopped by {self.name} during {what}: nothing was written", self.signum)
            yield batch

    def __enter__(self) -> StopFlag:
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
