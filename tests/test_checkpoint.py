"""Checkpoints: a workdir written by an older release (checkpoint format 1, tests/fixtures/v1_lenet5_digits)
opens with today's code (it restores, evaluates to the numbers that release printed, and training resumes from
it); a restored trainer keeps the run's schedule; a damaged newest checkpoint is moved aside and the run goes
on, and eval on one prints one warning line."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import damage_checkpoint, fast_config, metrics_records, read_events, train_in_process

FIXTURE = Path(__file__).parent / "fixtures" / "v1_lenet5_digits"
# printed by that release's final evaluation (fixture README): 35 of digits[test]'s 360 right
OLD_TOP1, OLD_LOSS = 35 / 360, 2.3030296007792157


@pytest.fixture
def old_workdir(tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(FIXTURE, wd)
    return wd


# -----------------------------------------------------------------------------------------------
# A workdir written by an older release
# -----------------------------------------------------------------------------------------------
def test_format1_workdir_evaluates_as_it_did(old_workdir, tmp_path):
    from alexnet_jax.restore import evaluate_workdir

    res = evaluate_workdir(str(old_workdir), data_dir=str(tmp_path / "tfds"))
    assert res["step"] == 6 and res["split"] == "test"
    assert abs(res["top1"] - OLD_TOP1) < 1e-9, res
    assert res["loss"] == pytest.approx(OLD_LOSS, rel=1e-5), res


def test_format1_checkpoint_restores_with_its_meaning(old_workdir, tmp_path):
    from alexnet_jax import checkpoint
    from alexnet_jax.restore import restore_workdir

    r = restore_workdir(str(old_workdir), data_dir=str(tmp_path / "tfds"))
    assert r.step == 6 and int(r.state.step) == 6
    assert r.meta["format"] == checkpoint.FORMAT_VERSION                      # migrated in memory
    # format 1 stored the loader position as base64 JSON; it reads as the object itself: 6 batches of 16
    # into epoch 0, i.e. the resumed run continues with the 7th batch
    state = r.meta["data_state"]["state"]
    assert isinstance(state, dict), r.meta["data_state"]
    # the written-out files are untouched (read-only restore)
    assert sorted(p.name for p in (old_workdir / "checkpoints").iterdir()) == ["6"]
    # the restored weights are finite and are the trained ones, not a fresh initialisation
    leaves = [np.asarray(x) for x in jax.tree.leaves(r.state.params)]
    assert all(np.isfinite(x).all() for x in leaves)
    init = r.trainer.init()
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in
               zip(leaves, jax.tree.leaves(init.params), strict=True))


def test_format1_workdir_resumes(old_workdir, tmp_path):
    from alexnet_jax.restore import restore_workdir
    from alexnet_jax.run import train_and_evaluate
    from alexnet_jax.workdir import load_config

    config = load_config(str(old_workdir)).replace(num_steps=9, data_dir=str(tmp_path / "tfds"))
    train_and_evaluate(config, str(old_workdir), progress=False, extend=True)
    steps = sorted(int(p.name) for p in (old_workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 9
    lines = [json.loads(x) for x in (old_workdir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    trained = [x["step"] for x in lines if x.get("kind") == "train"]
    assert trained[:2] == [3, 6] and trained[-1] == 9        # the old history, continued
    assert trained == sorted(set(trained))                   # one history: no step logged twice
    r = restore_workdir(str(old_workdir), data_dir=str(tmp_path / "tfds"))
    assert r.step == 9 and r.meta.get("provenance"), "the new checkpoint carries today's provenance"


# -----------------------------------------------------------------------------------------------
# What a restored trainer keeps
# -----------------------------------------------------------------------------------------------
def test_a_restored_trainer_keeps_the_runs_learning_rate_boundaries(tmp_path):
    """restore_workdir's Trainer steps with the run's schedule: lr_boundaries are epochs, and an epoch is the
    run's steps per epoch (1,437 training digits // batch 16 = 89 steps), not one step."""
    from alexnet_jax.config import Config
    from alexnet_jax.restore import restore_workdir
    from alexnet_jax.run import train_and_evaluate

    lr, boundary_epochs, factor = 0.01, 1.0, 0.1
    config = Config(data_dir=str(tmp_path / "tfds"), batch_size=16, num_steps=3, lr=lr, lr_schedule="steps",
                    lr_boundaries=(boundary_epochs,), lr_factors=(factor,), eval_every_epochs=100,
                    checkpoint_every_steps=3)
    train_and_evaluate(config, str(tmp_path / "wd"), progress=False)
    r = restore_workdir(str(tmp_path / "wd"))
    assert r.step == 3
    steps_per_epoch = 1437 // 16            # the digits training split (1,797 - 360 held out) in batches of 16
    h, w, c = r.trainer.augment.stored_shape
    batch = {"image": np.zeros((16, h, w, c), np.uint8), "label": np.zeros(16, np.int32),
             "index": np.arange(16, dtype=np.int32)}
    state, metrics = r.trainer.train_step(r.state, r.trainer.global_batch(batch))
    assert 3 < round(boundary_epochs * steps_per_epoch)                       # step 3 is before the boundary
    assert float(metrics["lr"]) == pytest.approx(lr, rel=1e-6)
    # and the rate drops at the boundary: the update numbered steps_per_epoch (counted from 0) uses lr * factor
    lrs = [float(metrics["lr"])]
    for _ in range(3 + 1, steps_per_epoch + 1):
        state, metrics = r.trainer.train_step(state, r.trainer.global_batch(batch))
        lrs.append(float(metrics["lr"]))
    assert lrs[-2] == pytest.approx(lr, rel=1e-6) and lrs[-1] == pytest.approx(lr * factor, rel=1e-6)


# -----------------------------------------------------------------------------------------------
# A damaged checkpoint: moved aside in training, one warning line in eval
# -----------------------------------------------------------------------------------------------
def test_damaged_newest_checkpoint_is_moved_aside_and_the_run_goes_on(tfds_dir, tmp_path, caplog):
    wd = tmp_path / "run"
    train_in_process(fast_config(tfds_dir), wd)
    damage_checkpoint(wd / "checkpoints" / "10")
    for resume_to in (15, 20):          # twice: the second resume must not meet the damaged step again
        res = train_in_process(fast_config(tfds_dir, num_steps=resume_to), wd, extend=True)
        assert res["step"] == resume_to
    moved = [p.name for p in (wd / "checkpoints").iterdir() if ".corrupt-" in p.name]
    assert len(moved) == 1 and moved[0].startswith("10.corrupt-"), moved      # kept, never deleted
    assert sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) == [5, 10, 15, 20]
    assert any("moved the damaged checkpoint step 10 to" in r.getMessage() for r in caplog.records)
    # metrics.jsonl and TensorBoard: one monotonic history through the fallback (10 retrained from 5)
    train_steps = [r["step"] for r in metrics_records(wd) if r["kind"] == "train"]
    assert train_steps == [5, 10, 15, 20]
    tb = [(e.step, v.tag) for e in read_events(str(wd / "tensorboard")) for v in e.summary.value]
    assert [s for s, tag in tb if tag == "train/loss"] == [5, 10, 15, 20]


def test_eval_on_a_damaged_checkpoint_prints_one_warning_line(tfds_dir, tmp_path):
    wd = tmp_path / "run"
    train_in_process(fast_config(tfds_dir), wd)
    damage_checkpoint(wd / "checkpoints" / "10")
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
