"""A workdir owns its run: `train --workdir DIR` resumes with DIR's own config, a changed schedule is refused
unless asked for with --extend, and a finished schedule's final checkpoint is never pruned; one run at a time
holds it (a lock that dies with its process); a signal, during training or its evaluations, loses nothing;
a workdir or output folder that cannot be written is one clear message; progress is plain lines when piped.
In-process through the CLI's main or train_and_evaluate on the bundled digits (the quick start's recipe,
shortened with --set); subprocesses only where the point is a process's death or its output."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import fast_config, train_in_process

from alexnet_jax import cli

ROOT = Path(__file__).resolve().parents[1]
FIRST = ["--set", "num_steps=6", "--set", "checkpoint_every_steps=2", "--set", "keep_checkpoints=1"]


def _steps(wd: Path) -> list[int]:
    return sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())


def _train(capsys, *args) -> tuple[int, list[str], dict | None]:
    capsys.readouterr()
    rc = cli.main(["train", "--no-progress", *args])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return rc, [x for x in err.splitlines() if x.startswith("error:")], json.loads(lines[-1]) if lines else None


def _params(wd: Path, step: int) -> list[np.ndarray]:
    from alexnet_jax.restore import restore_workdir
    return [np.asarray(x) for x in jax.tree.leaves(restore_workdir(str(wd), step=step).state.params)]


# -----------------------------------------------------------------------------------------------
# One run per workdir
# -----------------------------------------------------------------------------------------------
def test_second_run_in_a_locked_workdir_exits_naming_the_holder(tfds_dir, tmp_path):
    from alexnet_jax.workdir import WorkdirError, WorkdirLock

    wd = tmp_path / "run"
    wd.mkdir()
    holder = WorkdirLock(str(wd))
    holder.acquire()
    try:
        with pytest.raises(WorkdirError, match=rf"in use by another run \(pid {os.getpid()} on host "):
            train_in_process(fast_config(tfds_dir), wd)
        assert not (wd / "metrics.jsonl").exists() and not (wd / "checkpoints").exists()
    finally:
        holder.release()
    assert train_in_process(fast_config(tfds_dir), wd)["step"] == 10          # free again


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


# -----------------------------------------------------------------------------------------------
# Resume, extend, another model: the workdir keeps its run
# -----------------------------------------------------------------------------------------------
def test_a_finished_run_is_neither_extended_nor_pruned_by_accident(tfds_dir, tmp_path, capsys):
    wd = tmp_path / "short"
    common = ["--workdir", str(wd), "--data-dir", str(tfds_dir)]
    rc, _, first = _train(capsys, "--config", "lenet5_digits", *common, *FIRST)
    assert rc == 0 and first["step"] == 6 and _steps(wd) == [6]
    config_json = (wd / "config.json").read_text()
    kept = _params(wd, 6)

    # the recipe again without --set: it would train to the recipe's 1,320 steps; refused, in one line
    rc, errors, _ = _train(capsys, "--config", "lenet5_digits", *common)
    assert rc == 2 and len(errors) == 1, errors
    assert "num_steps 6 -> 0" in errors[0] and "--extend" in errors[0], errors
    assert (wd / "config.json").read_text() == config_json and _steps(wd) == [6]

    # the workdir alone resumes with its own config: finished, so its final evaluation, nothing trained
    rc, errors, again = _train(capsys, *common)
    assert rc == 0 and not errors and again["finished_before"] is True and again["step"] == 6
    assert again["top1"] == first["top1"] and (wd / "config.json").read_text() == config_json

    # an explicit longer schedule is refused too without --extend ...
    rc, errors, _ = _train(capsys, "--config", "lenet5_digits", *common, *FIRST[2:], "--set", "num_steps=12")
    assert rc == 2 and "--extend" in errors[0] and _steps(wd) == [6]

    # ... and with it the run continues; keep-last-1 prunes 8 and 10, never the finished step 6
    rc, errors, extended = _train(capsys, "--config", "lenet5_digits", *common, *FIRST[2:], "--set", "num_steps=12",
                                  "--extend")
    assert rc == 0 and not errors and extended["step"] == 12 and extended.get("finished_before") is None
    assert _steps(wd) == [6, 12]
    for a, b in zip(kept, _params(wd, 6), strict=True):
        np.testing.assert_array_equal(a, b)
    records = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    evals = [r["step"] for r in records if r["kind"] == "eval"]
    assert evals == [6, 12], evals                             # the finished run's evaluation is kept in the record
    assert json.loads(config_json)["num_steps"] == 6 and json.loads((wd / "config.json").read_text())["num_steps"] == 12

    # a schedule shorter than the step reached is refused, extend or not; nothing changes
    rc, errors, _ = _train(capsys, *common, "--set", "num_steps=8", "--extend")
    assert rc == 2 and "past the 8 steps" in errors[0] and _steps(wd) == [6, 12]


def test_another_model_in_a_workdir_is_refused_naming_the_change(tfds_dir, tmp_path, capsys):
    wd = tmp_path / "run"
    common = ["--workdir", str(wd), "--data-dir", str(tfds_dir)]
    assert _train(capsys, *common, *FIRST)[0] == 0
    for extra in ([], ["--extend"]):
        rc, errors, _ = _train(capsys, *common, "--set", "model=lenet5_modern", *extra)
        assert rc == 2 and "model 'lenet5' -> 'lenet5_modern'" in errors[0] and "without --config" in errors[0]
    # where and how it runs may change freely (here: how often it saves)
    rc, errors, res = _train(capsys, *common, "--set", "checkpoint_every_steps=3")
    assert rc == 0 and res["finished_before"] is True


# -----------------------------------------------------------------------------------------------
# A signal during training or an evaluation loses nothing
# -----------------------------------------------------------------------------------------------
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
    first = train_in_process(fast_config(tfds_dir), wd)
    monkeypatch.setattr(Trainer, "evaluate", real)
    assert first["step"] == 10 and first["compile_seconds"] > 0 and 0 <= first["top1"] <= 1
    again = train_in_process(fast_config(tfds_dir), wd)
    assert again["finished_before"] is True and again["compile_seconds"] is None     # no made-up timing
    assert again["top1"] == first["top1"] and again["step"] == 10
    assert any("is finished (step 10 of 10)" in r.getMessage() for r in caplog.records)


def test_ctrl_c_during_evaluations_saves_and_the_next_command_resumes_bitwise(tfds_dir, tmp_path,
                                                                            ctrl_c_in_evaluations):
    """SIGINT in the middle of the evaluation at step 6, and again in the final one at step 12: each stops at
    the next batch, saves that step and exits 130; the next command runs the evaluation that was cut short
    first.  The result equals an uninterrupted run's, parameters and evaluations."""
    from alexnet_jax.config import Config
    from alexnet_jax.run import train_and_evaluate
    from alexnet_jax.workdir import Interrupted

    steps_per_epoch = 1437 // 16                     # the digits training split in batches of 16
    config = Config(data_dir=str(tfds_dir), batch_size=16, num_steps=12, eval_every_epochs=6 / steps_per_epoch,
                    checkpoint_every_steps=100, log_every_steps=3)
    wd = tmp_path / "cut"
    for at in (6, 12):
        with pytest.raises(Interrupted) as e:
            train_and_evaluate(config, str(wd), progress=False)
        assert e.value.exit_code == 130
        assert f"stopped by SIGINT during the evaluation at step {at}: saved checkpoint step {at}" in str(e.value)
        assert _steps(wd)[-1] == at
        assert at not in [json.loads(x)["step"] for x in (wd / "metrics.jsonl").read_text().splitlines()
                          if json.loads(x)["kind"] == "eval"]
    res = train_and_evaluate(config, str(wd), progress=False)
    ref = train_and_evaluate(config, str(tmp_path / "ref"), progress=False)     # its evaluations: cut before
    assert res["finished_before"] is True and res["step"] == 12 and res["top1"] == ref["top1"]
    for a, b in zip(_params(tmp_path / "ref", 12), _params(wd, 12), strict=True):
        np.testing.assert_array_equal(a, b)

    def evals(w):
        return [{k: r[k] for k in ("step", "top1", "top5", "loss")} for r in map(json.loads,
                (w / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]

    assert evals(wd) == evals(tmp_path / "ref") and [r["step"] for r in evals(wd)] == [6, 12]


@pytest.mark.slow
def test_ctrl_c_in_a_training_process_saves_and_train_resumes_it(tfds_dir, tmp_path):
    """A real SIGINT to `alexnet-jax train`: exit 130 and one line naming the saved step; `train --workdir`
    then continues the run (here --extend'ed to 50 steps past the saved one), bitwise as an uninterrupted run."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "alexnet_jax.cli", "train", "--data-dir", str(tfds_dir), "--no-progress"]
    args = ["--set", "batch_size=16", "--set", "eval_every_epochs=1000", "--set", "checkpoint_every_steps=100000"]
    wd = tmp_path / "cut"
    p = subprocess.Popen([*cmd, "--workdir", str(wd), *args, "--set", "num_steps=100000"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while time.time() - t0 < 600 and p.poll() is None and not (wd / "metrics.jsonl").exists():
        time.sleep(0.1)
    time.sleep(2.0)                                  # the compile record is written: training is under way
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 130, err[-3000:]
    lines = [x for x in err.splitlines() if x.startswith("stopped by")]
    assert len(lines) == 1, err[-3000:]
    saved = int(re.match(r"stopped by SIGINT at step (\d+): saved checkpoint step \1 in ", lines[0]).group(1))
    assert 0 < saved < 100000 and _steps(wd) == [saved]
    end = f"num_steps={saved + 50}"
    r = subprocess.run([*cmd, "--workdir", str(wd), "--set", end, "--extend"], env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["step"] == saved + 50
    ref = subprocess.run([*cmd, "--workdir", str(tmp_path / "ref"), *args, "--set", end], env=env,
                         capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]
    for a, b in zip(_params(tmp_path / "ref", saved + 50), _params(wd, saved + 50), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_extending_a_finished_run_to_the_recipes_schedule_keeps_its_final_checkpoint(tfds_dir, tmp_path, capsys):
    """The issue's sequence to the end: a 6-step run of the quick start's recipe, then the recipe itself with
    --extend (1,320 steps), keeping one intermediate checkpoint: step 6 stays, bitwise."""
    wd = tmp_path / "short"
    common = ["--config", "lenet5_digits", "--workdir", str(wd), "--data-dir", str(tfds_dir)]
    assert _train(capsys, *common, *FIRST)[0] == 0
    kept = _params(wd, 6)
    rc, errors, res = _train(capsys, *common, "--set", "keep_checkpoints=1", "--extend")
    assert rc == 0 and not errors and res["step"] == 1320
    assert _steps(wd) == [6, 1320]
    for a, b in zip(kept, _params(wd, 6), strict=True):
        np.testing.assert_array_equal(a, b)


# -----------------------------------------------------------------------------------------------
# Paths that cannot be written
# -----------------------------------------------------------------------------------------------
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
    train_in_process(fast_config(tfds_dir), wd)
    for tool in ("inspect", "filters", "activations"):
        assert cli.main([tool, "--workdir", str(wd), "--out", str(bad / "x.json")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: cannot write to the output folder"), (tool, err)


# -----------------------------------------------------------------------------------------------
# What a run prints
# -----------------------------------------------------------------------------------------------
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
