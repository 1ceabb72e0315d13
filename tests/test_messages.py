"""Messages say what happened: another model's checkpoint is named as such, a damaged one in the project's
own words, a NaN before any save says nothing was saved, Ctrl-C in eval says nothing was written.  In-process
on the bundled digits."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from alexnet_jax import cli
from alexnet_jax.config import Config

FAST = dict(num_steps=4, checkpoint_every_steps=2, eval_every_epochs=100, log_every_steps=2, batch_size=16,
            keep_checkpoints=10)


@pytest.fixture
def trained(digits_run):
    """A finished 4-step LeNet-5 run (checkpoints 2 and 4) and its TFDS folder (conftest's digits_run)."""
    return digits_run


def _copy(trained: Path, tmp_path: Path) -> Path:
    import shutil
    shutil.copytree(trained / "wd", tmp_path / "wd")
    return tmp_path / "wd"


def test_eval_names_a_checkpoint_of_another_model(trained, tmp_path, capsys, caplog):
    wd = _copy(trained, tmp_path)
    cfg = json.loads((wd / "config.json").read_text())
    (wd / "config.json").write_text(json.dumps(dict(cfg, model="lenet5_modern")))
    caplog.set_level(logging.WARNING)
    assert cli.main(["eval", "--workdir", str(wd), "--data-dir", str(trained / "tfds")]) == 2
    warnings = [r.getMessage() for r in caplog.records if "checkpoint step" in r.getMessage()]
    assert warnings == [f"checkpoint step {s} in {wd / 'checkpoints'} is a checkpoint of another model (lenet5)"
                        + ("; trying the previous checkpoint") for s in (4, 2)], warnings
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: the checkpoints in {wd / 'checkpoints'} are of another model (lenet5), not of the config "
                   f"they were restored for (lenet5_modern): use the config they were trained with, or another "
                   f"workdir"], err
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == ["2", "4"]      # nothing moved aside


def test_a_damaged_checkpoint_is_reported_in_the_projects_words(trained, tmp_path, caplog):
    from alexnet_jax.restore import restore_workdir

    wd = _copy(trained, tmp_path)
    files = sorted((f for f in (wd / "checkpoints" / "4" / "state").rglob("*") if f.is_file()),
                   key=lambda f: f.stat().st_size)
    files[-1].write_bytes(files[-1].read_bytes()[: files[-1].stat().st_size // 3])
    caplog.set_level(logging.WARNING)
    assert restore_workdir(str(wd), data_dir=str(trained / "tfds")).step == 2
    (warning,) = [r.getMessage() for r in caplog.records if "checkpoint step 4" in r.getMessage()]
    assert warning == (f"checkpoint step 4 in {wd / 'checkpoints'} is incomplete or corrupted (its files cannot be "
                       f"read back as saved); trying the previous checkpoint")


def test_a_nonfinite_loss_before_any_save_says_nothing_was_saved(trained, tmp_path, monkeypatch):
    import jax.numpy as jnp

    from alexnet_jax import data as data_lib
    from alexnet_jax.run import NonFiniteLossError, train_and_evaluate

    real_make = data_lib.make_augment

    def poisoned_make(config, **kw):
        aug = real_make(config, **kw)

        class Poisoned(type(aug)):
            def train(self, images, positions, key):
                return jnp.full_like(super().train(images, positions, key), jnp.nan)

        return Poisoned(aug.kind, aug.input_size, aug.stored_shape, aug.mean)

    monkeypatch.setattr(data_lib, "make_augment", poisoned_make)
    with pytest.raises(NonFiniteLossError) as e:
        train_and_evaluate(Config(**dict(FAST, log_every_steps=1), data_dir=str(trained / "tfds")),
                           str(tmp_path / "nan"), progress=False)
    assert str(e.value) == ("loss became nan at step 1; stopping. No checkpoint was saved before it. Lower the "
                            "learning rate (--set lr=...) or check the data.")


def test_ctrl_c_during_eval_stops_at_the_next_batch(trained, capsys, ctrl_c_in_evaluations):
    wd = trained / "wd"
    assert cli.main(["eval", "--workdir", str(wd), "--data-dir", str(trained / "tfds")]) == 130
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [f"stopped by SIGINT during the evaluation of {wd} (step 4, test): nothing "
                                        f"was written"] and out == ""
    assert ctrl_c_in_evaluations == [(4, 0)]             # the second batch never reached the model
