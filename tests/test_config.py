"""The config: every field has a declared range, checked in one place before anything runs; cross-field
rules; unknown keys and values refused with the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses

import pytest

from alexnet_jax.config import Config, ConfigError, apply_overrides

# -----------------------------------------------------------------------------------------------
# Every field has a declared range
# -----------------------------------------------------------------------------------------------
BAD = {  # one value each field must refuse (written here, not read from the code)
    "model": "vgg", "num_classes": 1, "input_size": 4, "width": 0.0, "dtype": "float16", "head": "sigmoid",
    "init": "xavier", "lrn": "cuda-convnet", "preprocess": "keras", "dataset": "svhn", "data_dir": 3,
    "train_split": "", "eval_split": " ",
    "augment": "mixup", "num_workers": -1, "optimizer": "adam", "sdlm_mu": 0.0, "sdlm_samples": 0,
    "sdlm_curvature": "hessian", "loss": "mse", "lc98_j": 0.0,
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
def test_the_values_seen_in_the_wild_are_refused_and_nothing_is_created(tfds_dir, tmp_path, overrides, message,
                                                                      capsys):
    from alexnet_jax import cli

    wd = tmp_path / "never"
    rc = cli.main(["train", "--workdir", str(wd), "--no-progress", "--data-dir", str(tfds_dir),
                   *[a for o in overrides for a in ("--set", o)]])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not wd.exists()


# -----------------------------------------------------------------------------------------------
# Unknown keys; ranges as they print
# -----------------------------------------------------------------------------------------------
def test_unknown_key_lists_valid_keys():
    from alexnet_jax.config import Config, ConfigError, apply_overrides
    with pytest.raises(ConfigError, match="valid keys: model, num_classes"):
        apply_overrides(Config(), ["foo=1"])


def test_ranges_print_as_numbers():
    from alexnet_jax.config import Range

    assert Range(1, 1 << 20).describe() == "1 <= value <= 1,048,576"
    assert Range(0, 2**31 - 1).describe() == "0 <= value <= 2,147,483,647"
    assert Range(0, 1, hi_open=True).describe() == "0 <= value < 1"
    assert Range(0, 10, lo_open=True).describe() == "0 < value <= 10"
