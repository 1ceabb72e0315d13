"""A workdir written by an older release (checkpoint format 1, tests/fixtures/v1_lenet5_digits) opens with
today's code: it restores, evaluates to the numbers that release printed, and training resumes from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "v1_lenet5_digits"
# printed by that release's final evaluation (fixture README): 35 of digits[test]'s 360 right
OLD_TOP1, OLD_LOSS = 35 / 360, 2.3030296007792157


@pytest.fixture
def old_workdir(tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(FIXTURE, wd)
    return wd


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
