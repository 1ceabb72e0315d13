"""End-to-end training: train, kill -9 and resume bitwise, SIGTERM, eval, NaN stop, corrupted
checkpoints, a batch the devices cannot split.  Runs the real CLI in subprocesses on the `digits` dataset
(scikit-learn's bundled digits, prepared offline into a temporary TFDS directory) where the point is a
process; in-process otherwise."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import fast_config, metrics_records, train_in_process

SMALL = ["--set", "num_steps=40", "--set", "checkpoint_every_steps=5", "--set", "eval_every_epochs=100",
         "--set", "log_every_steps=5", "--set", "batch_size=16", "--set", "keep_checkpoints=20"]


def _env(tfds_dir):
    env = dict(os.environ, TFDS_DATA_DIR=str(tfds_dir), JAX_PLATFORMS="cpu", ALEXNET_JAX_TRACEBACK="0")
    env.pop("XLA_FLAGS", None)
    return env


def _cli(args, tfds_dir, **kw):
    return subprocess.run([sys.executable, "-m", "alexnet_jax.cli", *args], env=_env(tfds_dir),
                          capture_output=True, text=True, timeout=600, **kw)


def _final_params(workdir):
    """The newest checkpoint of `workdir`, restored from its files in this process, as arrays."""
    import jax

    from alexnet_jax.restore import restore_workdir

    r = restore_workdir(str(workdir))
    st = r.state
    return {"step": np.asarray(r.step), **{str(i): np.asarray(x) for i, x in
                                            enumerate(jax.tree.leaves((st.params, st.opt_state, st.rng, st.step)))}}


def test_train_resume_after_sigkill_is_bitwise(tfds_dir, tmp_path):
    ref = tmp_path / "ref"
    r = _cli(["train", "--workdir", str(ref), "--no-progress", *SMALL], tfds_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["step"] == 40 and 0 <= result["top1"] <= 1
    for f in ("config.json", "metrics.jsonl", "curves.png"):
        assert (ref / f).exists(), f
    assert any((ref / "tensorboard").iterdir())

    # the same run, killed with SIGKILL at a random moment, then restarted until it finishes
    killed = tmp_path / "killed"
    rng = random.Random(0)
    kills = 0
    for _ in range(2):
        p = subprocess.Popen([sys.executable, "-m", "alexnet_jax.cli", "train", "--workdir", str(killed),
                              "--no-progress", *SMALL], env=_env(tfds_dir), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        # wait until at least one checkpoint exists, then kill at a random moment
        t0 = time.time()
        while time.time() - t0 < 120 and not list((killed / "checkpoints").glob("[0-9]*")) and p.poll() is None:
            time.sleep(0.2)
        time.sleep(rng.uniform(0.0, 1.5))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait(60)
    r = _cli(["train", "--workdir", str(killed), "--no-progress", *SMALL], tfds_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert kills >= 1, "the run finished before it could be killed; make it longer"
    a, b = _final_params(ref), _final_params(killed)
    assert int(a["step"]) == int(b["step"]) == 40
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"leaf {k} differs after kill/resume")
    # metrics.jsonl has no duplicated steps after resuming
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "train"]
    assert steps == sorted(set(steps))

    # eval prints one JSON object as its last line
    r = _cli(["eval", "--workdir", str(ref)], tfds_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    ev = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(ev) >= {"top1", "top5", "loss", "examples"} and ev["examples"] == 360
    assert abs(ev["top1"] - result["top1"]) < 1e-9


def test_sigterm_saves_a_checkpoint_and_resume_finishes(tfds_dir, tmp_path):
    wd = tmp_path / "term"
    args = [*SMALL, "--set", "num_steps=100000", "--set", "checkpoint_every_steps=100000"]
    p = subprocess.Popen([sys.executable, "-m", "alexnet_jax.cli", "train", "--workdir", str(wd), "--no-progress",
                          *args], env=_env(tfds_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while time.time() - t0 < 120 and not (wd / "metrics.jsonl").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "saved checkpoint" in err
    steps = [int(s.name) for s in (wd / "checkpoints").glob("[0-9]*")]
    assert steps and max(steps) > 0


@pytest.mark.slow
def test_corrupted_checkpoint_falls_back_to_previous(tfds_dir, tmp_path):
    """Slow: the default suite checks the same fallback in eval (the newest checkpoint's two largest files cut,
    one warning line, stricter) and in training: tests/test_checkpoint.py, the damaged-checkpoint tests."""
    wd = tmp_path / "corrupt"
    r = _cli(["train", "--workdir", str(wd), "--no-progress", *SMALL, "--set", "num_steps=10"], tfds_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = wd / "checkpoints"
    assert sorted(int(s.name) for s in ck.glob("[0-9]*")) == [5, 10]
    # damage the newest checkpoint: truncate its largest array data file to a third
    biggest = max((f for f in (ck / "10" / "state").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 3])
    r = _cli(["eval", "--workdir", str(wd)], tfds_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checkpoint step 10" in r.stderr and "corrupted" in r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["step"] == 5


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
        train_in_process(fast_config(tfds_dir, num_steps=20, checkpoint_every_steps=3, log_every_steps=1), wd)
    assert "Nothing after checkpoint step 6 was saved" in str(e.value)
    monkeypatch.setattr(data_lib, "make_augment", real_make)
    steps = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [3, 6]
    for s in steps:
        assert ckpt_lib.all_finite(restore_workdir(str(wd), step=s).state), f"checkpoint {s} is not finite"
    assert np.isfinite([r["loss"] for r in metrics_records(wd) if r["kind"] == "train"]).all()


def test_batch_not_divisible_by_devices(tfds_dir, tmp_path):
    env = dict(_env(tfds_dir), XLA_FLAGS="--xla_force_host_platform_device_count=2")
    r = subprocess.run([sys.executable, "-m", "alexnet_jax.cli", "train", "--workdir", str(tmp_path / "b"),
                        "--no-progress", "--set", "batch_size=15", "--set", "num_steps=1"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "batch_size 15 is not divisible by the 2 devices" in r.stderr


@pytest.mark.slow
def test_quick_start_job_reaches_97_percent(tmp_path):
    """The README's main job, exactly: `alexnet-jax train` with no arguments (fresh TFDS dir)."""
    env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds"), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "alexnet_jax.cli", "train", "--no-progress"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=900)
    wall = time.time() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["top1"] >= 0.97, res
    wd = tmp_path / "runs" / "lenet5_digits"
    assert (wd / "curves.png").exists() and (wd / "metrics.jsonl").exists() and list((wd / "checkpoints").iterdir())
    print(f"quick start: top1={res['top1']:.4f} wall={wall:.1f}s")
    shutil.rmtree(tmp_path / "tfds", ignore_errors=True)
