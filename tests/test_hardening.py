"""Every failure a new user hits is a clear message with nothing lost, and no run is stuck or mixed.

In-process where a fresh process is not needed (train_and_evaluate, the CLI's main, the tools) on the
`digits` dataset prepared once into a temporary TFDS directory; subprocesses only where the point is a
process's death.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alexnet_jax.config import Config, ConfigError, apply_overrides

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(num_steps=10, checkpoint_every_steps=5, eval_every_epochs=100, log_every_steps=5, batch_size=16,
            keep_checkpoints=10)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    from alexnet_jax.data import prepare
    prepare("digits", None, str(d))
    return d


def _config(tfds_dir, **kw) -> Config:
    return Config(**dict(FAST, data_dir=str(tfds_dir), **kw))


def _train(config, workdir, *, extend: bool = False):
    from alexnet_jax.run import train_and_evaluate
    return train_and_evaluate(config, str(workdir), progress=False, extend=extend)


def read_events(tb_dir) -> list:
    """Every Event in a TensorBoard folder, read with tensorboardX's own protobuf and crc32c (an independent
    reader of what alexnet_jax.workdir writes)."""
    import struct

    from tensorboardX.crc32c import crc32c
    from tensorboardX.proto.event_pb2 import Event

    def masked(b):
        c = crc32c(b)
        return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    events = []
    for f in sorted(Path(tb_dir).glob("events.out.tfevents*")):
        data = f.read_bytes()
        i = 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            assert struct.unpack("<I", data[i + 8:i + 12])[0] == masked(data[i:i + 8]), f
            rec = data[i + 12:i + 12 + n]
            assert struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] == masked(rec), f
            events.append(Event.FromString(rec))
            i += 16 + n
        assert i == len(data), f"{f}: trailing bytes"
    return events


def _records(workdir: Path) -> list[dict]:
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if x.strip()]


# ------------------------------------------------------------------------------------------------
# 1. A damaged newest checkpoint is moved aside and the run goes on; the record stays one history
# ------------------------------------------------------------------------------------------------
def _damage(step_dir: Path) -> None:
    """Truncate the two largest data files of a checkpoint step (as a crash of the disk would)."""
    files = sorted((f for f in (step_dir / "state").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    for f in files[-2:]:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])


def test_damaged_newest_checkpoint_is_moved_aside_and_the_run_goes_on(tfds_dir, tmp_path, caplog):
    wd = tmp_path / "run"
    _train(_config(tfds_dir), wd)
    _damage(wd / "checkpoints" / "10")
    for resume_to in (15, 20):          # twice: the second resume must not meet the damaged step again
        res = _train(_config(tfds_dir, num_steps=resume_to), wd, extend=True)
        assert res["step"] == resume_to
    moved = [p.name for p in (wd / "checkpoints").iterdir() if ".corrupt-" in p.name]
    assert len(moved) == 1 and moved[0].startswith("10.corrupt-"), moved      # kept, never deleted
    assert sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) == [5, 10, 15, 20]
    assert any("moved the damaged checkpoint step 10 to" in r.getMessage() for r in caplog.records)
    # metrics.jsonl and TensorBoard: one monotonic history through the fallback (10 retrained from 5)
    train_steps = [r["step"] for r in _records(wd) if r["kind"] == "train"]
    assert train_steps == [5, 10, 15, 20]
    tb = [(e.step, v.tag) for e in read_events(str(wd / "tensorboard")) for v in e.summary.value]
    assert [s for s, tag in tb if tag == "train/loss"] == [5, 10, 15, 20]


def test_tensorboard_purge_drops_only_later_steps(tmp_path):
    """purge_events against an independent reading of the TFRecord framing (length, crc, data, crc)."""
    from tensorboardX import SummaryWriter

    from alexnet_jax.tensorboard import purge_events, read_records

    w = SummaryWriter(str(tmp_path))
    for s in range(1, 8):
        w.add_scalar("x", float(s), s)
    w.close()
    (f,) = [p for p in tmp_path.iterdir() if p.name.startswith("events")]
    assert len(read_records(str(f))) == 8                     # file_version event + 7 scalars
    assert purge_events(str(tmp_path), 4) == 3
    assert [(e.step, e.summary.value[0].simple_value) for e in read_events(str(tmp_path)) if e.summary.value] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]


def test_our_event_files_read_back_with_tensorboardx(tmp_path):
    from alexnet_jax.tensorboard import EventWriter

    w = EventWriter(str(tmp_path))
    for step, v in ((0, 2.5), (7, -1.25), (2**40, 3e-8)):
        w.add_scalar("train/loss", v, step)
    w.close()
    events = read_events(tmp_path)
    assert events[0].file_version == "brain.Event:2"
    got = [(e.step, e.summary.value[0].tag, e.summary.value[0].simple_value) for e in events[1:]]
    assert got == [(0, "train/loss", 2.5), (7, "train/loss", -1.25), (2**40, "train/loss", pytest.approx(3e-8))]


# ------------------------------------------------------------------------------------------------
# 2. One run per workdir
# ------------------------------------------------------------------------------------------------
def test_second_run_in_a_locked_workdir_exits_naming_the_holder(tfds_dir, tmp_path):
    from alexnet_jax.workdir import WorkdirError, WorkdirLock

    wd = tmp_path / "run"
    wd.mkdir()
    holder = WorkdirLock(str(wd))
    holder.acquire()
    try:
        with pytest.raises(WorkdirError, match=rf"in use by another run \(pid {os.getpid()} on host "):
            _train(_config(tfds_dir), wd)
        assert not (wd / "metrics.jsonl").exists() and not (wd / "checkpoints").exists()
    finally:
        holder.release()
    assert _train(_config(tfds_dir), wd)["step"] == 10          # free again


def test_the_lock_dies_with_its_process(tmp_path):
    """SIGKILL leaves no stale lock: the kernel drops an flock when the holder dies."""
    code = ("import sys, time; from alexnet_jax.workdir import WorkdirLock; WorkdirLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.stdout.readline().strip() == "locked"
    from alexnet_jax.workdir import WorkdirError, WorkdirLock
    with pytest.raises(WorkdirError, match=f"pid {p.pid}"):
        WorkdirLock(str(tmp_path)).acquire()
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    lock = WorkdirLock(str(tmp_path))
    lock.acquire()
    lock.release()


# ------------------------------------------------------------------------------------------------
# 3. A signal during the final evaluation does not lose the result; a finished workdir says so
# ------------------------------------------------------------------------------------------------
def test_signal_during_final_evaluation_and_rerun_of_a_finished_workdir(tfds_dir, tmp_path, monkeypatch, caplog):
    from alexnet_jax.trainer import Trainer

    real = Trainer.evaluate

    def evaluate_then_interrupt(self, state, batches):
        out = real(self, state, batches)
        os.kill(os.getpid(), signal.SIGINT)       # arrives during the final evaluation: the work is done
        return out

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(Trainer, "evaluate", evaluate_then_interrupt)
    wd = tmp_path / "run"
    first = _train(_config(tfds_dir), wd)
    monkeypatch.setattr(Trainer, "evaluate", real)
    assert first["step"] == 10 and first["compile_seconds"] > 0 and 0 <= first["top1"] <= 1
    again = _train(_config(tfds_dir), wd)
    assert again["finished_before"] is True and again["compile_seconds"] is None     # no made-up timing
    assert again["top1"] == first["top1"] and again["step"] == 10
    assert any("is finished (step 10 of 10)" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------------
# 4. Every config field has a declared range, checked in one place before anything runs
# ------------------------------------------------------------------------------------------------
BAD = {  # one value each field must refuse (written here, not read from the code)
    "model": "vgg", "num_classes": 1, "input_size": 4, "width": 0.0, "dtype": "float16", "head": "sigmoid",
    "init": "xavier", "lrn": "cuda-convnet", "preprocess": "keras", "dataset": "svhn", "data_dir": 3,
    "train_split": "", "eval_split": " ",
    "augment": "mixup", "num_workers": -1, "optimizer": "adam", "sdlm_mu": 0.0, "sdlm_samples": 0,
    "batch_size": 0, "num_epochs": 0.0, "num_steps": -5, "lr": -1.0,
    "momentum": 2.0, "weight_decay": -0.1, "lr_schedule": "cosine", "lr_boundaries": (-1.0,),
    "lr_factors": (0.0,), "plateau_factor": 1.5, "plateau_patience": 0, "plateau_max_drops": -1,
    "warmup_steps": -3, "eval_every_epochs": -1.0, "ten_crop": "yes", "checkpoint_every_steps": 0,
    "keep_checkpoints": 0, "log_every_steps": 0, "seed": -7, "mesh_data": 0, "mesh_model": -2,
}


def test_bad_values_cover_every_field():
    assert set(BAD) == {f.name for f in dataclasses.fields(Config)}


@pytest.mark.parametrize("key", sorted(BAD))
def test_every_config_field_rejects_a_bad_value(key):
    value = BAD[key]
    extra = {"lr_factors": value} if key == "lr_boundaries" else {}
    extra |= {"lr_boundaries": (1.0,)} if key == "lr_factors" else {}
    with pytest.raises(ConfigError) as e:
        Config(**{key: value}, **extra).validate()
    msg = str(e.value)
    assert msg.startswith(f"{key}="), msg                          # names the key ...
    shown = ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else (
        repr(value) if isinstance(value, str) else str(value))
    assert shown in msg, msg                                       # ... and the value ...
    assert "must be" in msg or "expected" in msg, msg              # ... and what is allowed


def test_cross_field_rules_and_nan():
    with pytest.raises(ConfigError, match="one factor per boundary"):
        Config(lr_schedule="steps", lr_boundaries=(1.0, 2.0), lr_factors=(0.1,)).validate()
    with pytest.raises(ConfigError, match="non-decreasing"):
        Config(lr_schedule="steps", lr_boundaries=(2.0, 1.0), lr_factors=(0.1, 0.01)).validate()
    with pytest.raises(ConfigError, match="plateau cannot be combined with warmup"):
        Config(lr_schedule="plateau", warmup_steps=10).validate()
    with pytest.raises(ConfigError, match="head=rbf"):
        Config(model="alexnet", head="rbf").validate()
    with pytest.raises(ConfigError, match="lr=nan"):
        apply_overrides(Config(), ["lr=nan"]).validate()
    assert Config().validate() == Config()


@pytest.mark.parametrize("overrides, message", [
    (["batch_size=0"], "batch_size=0 is not allowed: batch_size must be 1 <= value"),
    (["batch_size=-4"], "batch_size=-4 is not allowed"),
    (["lr=-1"], "lr=-1.0 is not allowed: lr must be 0 < value <= 10"),
    (["momentum=2"], "momentum=2.0 is not allowed: momentum must be 0 <= value < 1"),
    (["num_epochs=0"], "num_epochs=0.0 is not allowed: num_epochs must be 0 < value"),
])
def test_the_values_seen_in_the_wild_are_refused_and_nothing_is_created(tfds_dir, tmp_path, overrides, message):
    from alexnet_jax import cli

    wd = tmp_path / "never"
    rc = cli.main(["train", "--workdir", str(wd), "--no-progress", "--data-dir", str(tfds_dir),
                   *[a for o in overrides for a in ("--set", o)]])
    assert rc == 2
    assert not wd.exists()


def test_cli_prints_one_line_for_project_errors(tfds_dir, tmp_path, capsys):
    from alexnet_jax import cli

    assert cli.main(["train", "--workdir", str(tmp_path / "w"), "--set", "lr=-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: lr=-1.0 is not allowed: lr must be 0 < value <= 10"]


# ------------------------------------------------------------------------------------------------
# 5-6. Refused runs create nothing; mesh errors say how to get devices
# ------------------------------------------------------------------------------------------------
def test_refused_mesh_creates_nothing_and_says_how_to_get_devices(tfds_dir, tmp_path):
    from alexnet_jax.parallel import MeshError

    wd = tmp_path / "never"
    with pytest.raises(MeshError) as e:
        _train(_config(tfds_dir, model="alexnet", num_classes=10, input_size=32, dataset="digits",
                       mesh_model=2), wd)
    assert "xla_force_host_platform_device_count=N" in str(e.value) and "--force-host-devices" in str(e.value)
    assert not wd.exists()


def test_force_host_devices_flag_reaches_xla(tfds_dir, tmp_path):
    """--force-host-devices on train: two devices, and the log line says how the model uses them."""
    r = subprocess.run([sys.executable, "-m", "alexnet_jax.cli", "train", "--force-host-devices", "2",
                        "--workdir", str(tmp_path / "w"), "--no-progress", "--data-dir", str(tfds_dir),
                        "--set", "num_steps=2", "--set", "batch_size=4", "--set", "eval_every_epochs=100"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env=dict({k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, JAX_PLATFORMS="cpu"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mesh data=1 x model=2: one-column model: data-parallel over all 2 devices" in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------------
# 7. Paths that cannot be written
# ------------------------------------------------------------------------------------------------
def _unwritable(tmp_path: Path) -> Path:
    """A directory this process cannot create files in: read-only for a normal user; under a regular
    file for root (who ignores permissions), which fails the same way (an OSError on create)."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d / "run"
    f = tmp_path / "a_file"
    f.write_text("")
    return f / "run"


def test_unwritable_workdir_and_output_paths_give_one_clear_message(tfds_dir, tmp_path, capsys):
    from alexnet_jax import cli

    bad = _unwritable(tmp_path)
    assert cli.main(["train", "--workdir", str(bad), "--no-progress", "--data-dir", str(tfds_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot write to the workdir {bad}"), err
    wd = tmp_path / "ok"
    _train(_config(tfds_dir), wd)
    for tool in ("inspect", "filters", "activations"):
        assert cli.main([tool, "--workdir", str(wd), "--out", str(bad / "x.json")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: cannot write to the output folder"), (tool, err)


# ------------------------------------------------------------------------------------------------
# 9. A damaged checkpoint in eval: one warning line
# ------------------------------------------------------------------------------------------------
def test_eval_on_a_damaged_checkpoint_prints_one_warning_line(tfds_dir, tmp_path):
    wd = tmp_path / "run"
    _train(_config(tfds_dir), wd)
    _damage(wd / "checkpoints" / "10")
    r = subprocess.run([sys.executable, "-m", "alexnet_jax.cli", "eval", "--workdir", str(wd), "--data-dir",
                        str(tfds_dir)], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["step"] == 5
    # A known race outside Python's reach: orbax closes its event loop when the first array read fails while
    # TensorStore's threads finish the step's other reads and try to report to it; now and then (about 1
    # run in 10 here) they print bare "Event loop is closed" tracebacks through asyncio from C++ threads.
    # Those frames (asyncio's) are not counted; any traceback through orbax or our code still is.
    # The threads interleave their output mid-line, so the race's pieces are cut out of the whole text.
    race = re.sub(r'File "[^"]*asyncio[/\\]base_events\.py", line \d+, in \w+', "", r.stderr)
    for piece in ("Traceback (most recent call last):", "self._check_closed()",
                  "raise RuntimeError('Event loop is closed')", "Event loop is closed", "RuntimeError:"):
        race = race.replace(piece, "")
    lines = [x for x in race.splitlines() if x.strip()]
    # one line about the damage, no traceback (orbax's own logging is silenced); a shared machine may add
    # unrelated runtime lines, which are not counted
    about = [x for x in lines if "checkpoint" in x.lower() or "orbax" in x.lower() or 'File "' in x]
    assert len(about) == 1 and "checkpoint step 10" in about[0] and "trying the previous checkpoint" in about[0], (
        r.stderr[-6000:])
    assert (wd / "checkpoints" / "10").is_dir()                # eval reads; it never moves anything


def test_only_orbax_coroutines_are_dropped_from_unraisable_reports(monkeypatch):
    """The filter behind the one warning line: an orbax coroutine collected at any later time is dropped,
    any other unraisable exception still reaches the previous hook."""
    import types

    from alexnet_jax import checkpoint

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    checkpoint._filter_orbax_coroutines()
    checkpoint._filter_orbax_coroutines()            # idempotent: one filter, not a chain

    async def ours():
        pass

    orbax_like = types.SimpleNamespace(cr_code=types.SimpleNamespace(
        co_filename=f"{os.sep}site-packages{os.sep}orbax{os.sep}checkpoint{os.sep}serialization.py"))
    other = ours()
    sys.unraisablehook(types.SimpleNamespace(object=orbax_like, exc_value=Exception("read failed")))
    sys.unraisablehook(types.SimpleNamespace(object=other, exc_value=Exception("ours")))
    sys.unraisablehook(types.SimpleNamespace(object=None, exc_value=Exception("plain")))
    other.close()
    assert [str(u.exc_value) for u in seen] == ["ours", "plain"]


# ------------------------------------------------------------------------------------------------
# 10. Unexpected errors keep their traceback
# ------------------------------------------------------------------------------------------------
def test_unexpected_errors_keep_their_traceback(monkeypatch, capsys):
    from alexnet_jax import cli

    def boom(args):
        raise RuntimeError("an XLA failure inside a step")

    monkeypatch.setattr(cli, "cmd_summary", boom)
    with pytest.raises(RuntimeError, match="XLA failure"):
        cli.main(["summary", "lenet5"])
    assert "error:" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# 11. Resume bitwise beyond LeNet: see test_resume.py (slow).  12. What a run prints
# ------------------------------------------------------------------------------------------------
def test_piped_progress_is_plain_lines(tfds_dir, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", ALEXNET_JAX_PROGRESS_SECONDS="0")
    r = subprocess.run([sys.executable, "-m", "alexnet_jax.cli", "train", "--workdir", str(tmp_path / "w"),
                        "--data-dir", str(tfds_dir), "--set", "num_steps=6", "--set", "batch_size=16",
                        "--set", "eval_every_epochs=100"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "\r" not in r.stderr
    progress = [x for x in r.stderr.splitlines() if " step " in x and "/6 (" in x]
    assert progress and all(" INFO step " in x for x in progress), r.stderr


def test_log_lines_go_through_the_progress_bar(capsys):
    import logging

    from alexnet_jax.workdir import Progress

    console = logging.StreamHandler(sys.stderr)             # what cli.setup_logging installs
    logging.getLogger().addHandler(console)
    try:
        with Progress(100, 0, tty=True) as bar:
            bar.advance(10)
            logging.getLogger("alexnet_jax").warning("received signal 15")
            bar.advance(20)
    finally:
        logging.getLogger().removeHandler(console)
    err = capsys.readouterr().err
    line = next(x for x in err.replace("\r", "\n").splitlines() if "received signal 15" in x)
    assert line.strip() == "received signal 15" or line.rstrip().endswith("received signal 15")
    assert "it/s]received" not in err and "step/s]received" not in err


# ------------------------------------------------------------------------------------------------
# 13-14. Consistency
# ------------------------------------------------------------------------------------------------
def test_data_dir_flag_on_train_and_eval(tfds_dir, tmp_path, capsys):
    from alexnet_jax import cli

    wd = tmp_path / "w"
    assert cli.main(["train", "--workdir", str(wd), "--no-progress", "--data-dir", str(tfds_dir),
                     *[a for k, v in FAST.items() for a in ("--set", f"{k}={v}")]]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cli.main(["eval", "--workdir", str(wd), "--data-dir", str(tfds_dir)]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["top1"] == trained["top1"] and ev["examples"] == 360


def test_the_column_axis_follows_the_devices():
    """mesh_model=-1 (alexnet_cifar10's default): two columns over two devices when 2+ are free, one device
    otherwise."""
    from alexnet_jax import parallel
    from alexnet_jax.configs import get_config

    assert get_config("alexnet_cifar10").mesh_model == -1
    assert parallel.resolve_mesh_shape(-1, -1, 1) == (1, 1)
    assert parallel.resolve_mesh_shape(-1, -1, 2) == (1, 2)
    assert parallel.resolve_mesh_shape(-1, -1, 4) == (2, 2)
    assert parallel.resolve_mesh_shape(3, -1, 3) == (3, 1)      # the data axis leaves one device each
    assert parallel.resolve_mesh_shape(1, -1, 3) == (1, 1)      # 3 free devices: no even split of 2 columns


def test_multihost_flags_only_where_they_apply():
    from alexnet_jax import cli

    p = cli.build_parser()
    sub = p._subparsers._group_actions[0].choices
    for name, parser in sub.items():
        opts = {o for a in parser._actions for o in a.option_strings}
        assert ("--coordinator" in opts) == (name in ("train", "eval")), name


def test_summary_says_which_shapes_are_per_column(capsys):
    from alexnet_jax import cli

    assert cli.main(["summary", "alexnet"]) == 0
    out = capsys.readouterr().out
    assert "conv1       55x55x48 (per column, x2)" in out and "fc8         1000 " in out
    assert "2 columns: parameters and multiply-adds count every column" in out


def test_inspect_lists_the_checkpoint_steps(tfds_dir, tmp_path, capsys):
    from alexnet_jax import cli

    wd = tmp_path / "w"
    _train(_config(tfds_dir), wd)
    _damage(wd / "checkpoints" / "10")
    _train(_config(tfds_dir, num_steps=15), wd, extend=True)
    capsys.readouterr()
    assert cli.main(["inspect", "--workdir", str(wd)]) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["checkpoint_steps"]["usable_or_unchecked"] == [5, 10, 15]
    assert len(s["checkpoint_steps"]["moved_aside"]) == 1


def test_nonfinite_loss_stops_and_nothing_nonfinite_is_saved(tfds_dir, tmp_path, monkeypatch):
    """NaN inputs from step 8 on (the device augmentation is poisoned for stream positions >= 7 batches):
    the run stops naming the step, having saved the checkpoints before it, each finite."""
    import jax.numpy as jnp

    from alexnet_jax import checkpoint as ckpt_lib
    from alexnet_jax import data as data_lib
    from alexnet_jax.restore import restore_workdir
    from alexnet_jax.run import NonFiniteLossError

    real_make = data_lib.make_augment

    def poisoned_make(config, **kw):
        aug = real_make(config, **kw)

        class Poisoned(type(aug)):
            def train(self, images, positions, key):
                x = super().train(images, positions, key)
                return jnp.where((positions >= 7 * 16).reshape(-1, 1, 1, 1), jnp.nan, x)

        return Poisoned(aug.kind, aug.input_size, aug.stored_shape, aug.mean)

    monkeypatch.setattr(data_lib, "make_augment", poisoned_make)
    wd = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 8; stopping") as e:
        _train(_config(tfds_dir, num_steps=20, checkpoint_every_steps=3, log_every_steps=1), wd)
    assert "Nothing after checkpoint step 6 was saved" in str(e.value)
    monkeypatch.setattr(data_lib, "make_augment", real_make)
    steps = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [3, 6]
    for s in steps:
        assert ckpt_lib.all_finite(restore_workdir(str(wd), step=s).state), f"checkpoint {s} is not finite"
    assert np.isfinite([r["loss"] for r in _records(wd) if r["kind"] == "train"]).all()


def _captured_figure(monkeypatch):
    """The figure a drawing function saves (its savefig still writes the file)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    seen = []
    real = Figure.savefig

    def savefig(self, *a, **k):
        seen.append(self)
        return real(self, *a, **k)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return seen


def test_filters_name_columns_not_gpus(monkeypatch, tmp_path):
    from alexnet_jax.tools.filters import draw

    seen = _captured_figure(monkeypatch)
    blocks = [np.random.default_rng(c).normal(size=(6, 5, 5, 3)) for c in range(2)]
    draw(blocks, [0.5, 0.6], "conv1", str(tmp_path / "f.png"))
    titles = [ax.get_title() for ax in seen[0].axes]
    assert titles[0].startswith("conv1 column 0") and titles[1].startswith("conv1 column 1")
    assert not any("GPU" in t for t in titles)


def test_neighbours_title_clears_the_first_row(monkeypatch, tmp_path):
    from alexnet_jax.tools.neighbours import draw

    seen = _captured_figure(monkeypatch)
    display = [np.full((8, 8, 3), i / 10, np.float32) for i in range(6)]
    idx = np.array([[1, 2], [3, 4]])
    draw(display, [f"train/c/{i}.jpg" for i in range(6)], [0, 5], idx, np.ones((2, 2)), str(tmp_path / "n.png"),
         title="a long title " * 3)
    fig = seen[0]
    renderer = fig._get_renderer()
    title_box = fig._suptitle.get_window_extent(renderer)
    first_row_top = max(ax.title.get_window_extent(renderer).y1 for ax in fig.axes[:3])
    assert title_box.y0 >= first_row_top, (title_box, first_row_top)


def test_curves_show_a_single_evaluation(monkeypatch, tmp_path):
    from alexnet_jax.plotting import plot_runs

    seen = _captured_figure(monkeypatch)
    recs = [{"step": s, "kind": "train", "loss": 2.0 / s, "accuracy": 0.1} for s in (1, 2, 3)]
    recs.append({"step": 3, "kind": "eval", "top1": 0.9, "top5": 1.0, "loss": 0.3})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    plot_runs([str(tmp_path)], str(tmp_path / "c.png"))
    ax_loss, ax_acc = seen[0].axes
    evals = [ln for ln in ax_loss.get_lines() if ln.get_label().endswith("eval")]
    assert len(evals) == 1 and len(evals[0].get_xdata()) == 1 and evals[0].get_marker() == "o"
    (err,) = ax_acc.get_lines()
    assert err.get_marker() == "o" and list(err.get_ydata()) == pytest.approx([10.0])
