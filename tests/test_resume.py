"""Resume is bitwise beyond LeNet (slow): the two-column AlexNet on CIFAR-10 images split over two
devices (dropout, random crops and flips on the device, SIGKILLed once before and once after a plateau
learning-rate drop), the streaming loader on an ImageNet-style tree, and prepare -> train -> resume for
every ImageNet store.  Final parameters and optimiser state equal an uninterrupted run's, bit for bit,
and so does the metrics history in every field that does not measure time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10_train_jpeg.tar.gz"
TIME_FIELDS = {"images_per_second", "step_seconds", "seconds"}

pytestmark = pytest.mark.slow


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **extra)
    return env


def _train_cmd(workdir: Path, overrides: list[str], *, devices: int = 1) -> list[str]:
    cmd = [sys.executable, "-m", "alexnet_jax.cli", "train", "--workdir", str(workdir), "--no-progress"]
    if devices > 1:
        cmd += ["--force-host-devices", str(devices)]
    return cmd + [a for o in overrides for a in ("--set", o)]


def _final(workdir: Path) -> dict[str, np.ndarray]:
    code = ("import sys, numpy as np, jax; from alexnet_jax.restore import restore_workdir;"
            "r = restore_workdir(sys.argv[1]); st = r.state;"
            "np.savez(sys.argv[2], step=r.step, **{str(i): np.asarray(x) for i, x in "
            "enumerate(jax.tree.leaves((st.params, st.extra, st.opt_state, st.rng, st.step)))})")
    out = workdir / "final.npz"
    subprocess.run([sys.executable, "-c", code, str(workdir), str(out)], check=True, timeout=300, env=_env())
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def _history(workdir: Path, kinds=("train", "eval")) -> list[dict]:
    recs = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in recs if r["kind"] in kinds]


def _assert_same_run(ref: Path, other: Path, kinds=("train", "eval")) -> None:
    a, b = _final(ref), _final(other)
    assert a.keys() == b.keys() and int(a["step"]) == int(b["step"])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"leaf {k} differs after kill/resume")
    assert _history(ref, kinds) == _history(other, kinds)


def _kill_when(cmd, env, ready, *, timeout=600) -> bool:
    """Start `cmd`, SIGKILL it as soon as `ready()` holds; False if it finished first."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < timeout:
        if ready():
            p.send_signal(signal.SIGKILL)
            p.wait(60)
            return True
        time.sleep(0.1)
    p.wait(60)
    return False


def _steps(workdir: Path) -> list[int]:
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _cifar_subset(tmp: Path, per_class: int = 40) -> Path:
    """A class-per-folder tree of the first `per_class` shared CIFAR-10 images of each class."""
    root, counts = tmp / "cifar_src", {}
    with tarfile.open(CIFAR) as tar:
        for m in tar:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) < 3 or parts[-3] != "train":
                continue
            c = parts[-2]
            if counts.get(c, 0) >= per_class:
                continue
            counts[c] = counts.get(c, 0) + 1
            d = root / "train" / c
            d.mkdir(parents=True, exist_ok=True)
            (d / parts[-1]).write_bytes(tar.extractfile(m).read())
            if len(counts) == 10 and all(v >= per_class for v in counts.values()):
                break
    return root


@pytest.mark.skipif(not CIFAR.is_file(), reason=f"shared CIFAR-10 not found at {CIFAR}")
def test_two_column_cifar_on_two_devices_resumes_bitwise_across_a_plateau_drop(tmp_path):
    from alexnet_jax.data import prepare

    tfds = tmp_path / "tfds"
    prepare("cifar10", str(_cifar_subset(tmp_path)), str(tfds))
    over = ["model=alexnet", "width=0.0625", "num_classes=10", "dataset=cifar10", f"data_dir={tfds}",
            "augment=cifar", "init=he", "batch_size=16", "num_steps=36", "lr=0.05", "lr_schedule=plateau",
            "plateau_patience=1", "plateau_max_drops=3", "eval_every_epochs=0.15", "checkpoint_every_steps=1",
            "keep_checkpoints=40", "log_every_steps=1", "mesh_model=2"]
    env = _env()
    ref = tmp_path / "ref"
    r = subprocess.run(_train_cmd(ref, over, devices=2), env=env, capture_output=True, text=True, timeout=900,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mesh data=1 x model=2: the 2 columns split over `model`" in r.stderr
    lrs = [(rec["step"], rec["lr"]) for rec in _history(ref) if rec["kind"] == "train"]
    drops = [s for (s, lr), (_, prev) in zip(lrs[1:], lrs, strict=False) if lr < prev]
    assert drops, f"no plateau drop happened in the reference run: {lrs}"
    drop = drops[0]
    killed = tmp_path / "killed"
    cmd = _train_cmd(killed, over, devices=2)
    assert _kill_when(cmd, env, lambda: any(s >= 2 for s in _steps(killed)) and max(_steps(killed)) < drop - 1)
    assert max(_steps(killed)) < drop
    assert _kill_when(cmd, env, lambda: bool(_steps(killed)) and max(_steps(killed)) > drop + 1)
    assert max(_steps(killed)) > drop
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(ref, killed)


def _imagenet_tree(root: Path, wnids=("n01440764", "n01443537", "n01484850"), per_class: int = 12) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for w in wnids:
        d = root / "train" / w
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, wd = int(rng.integers(260, 320)), int(rng.integers(260, 360))
            Image.fromarray(rng.integers(0, 255, (h, wd, 3), dtype=np.uint8)).save(d / f"{w}_{i}.JPEG", quality=85)
    return root


def test_streaming_loader_resumes_bitwise_after_sigkill(tmp_path):
    from alexnet_jax.data import prepare

    tfds = tmp_path / "tfds"
    prepare("imagenet2012", str(_imagenet_tree(tmp_path / "src")), str(tfds))
    over = ["model=alexnet", "width=0.0625", "num_classes=1000", "input_size=64", "dataset=imagenet2012",
            f"data_dir={tfds}", "augment=alexnet", "eval_split=validation", "batch_size=8", "num_steps=14",
            "checkpoint_every_steps=1", "keep_checkpoints=20", "log_every_steps=1", "eval_every_epochs=1",
            "num_workers=2"]
    env = _env(ALEXNET_JAX_IN_MEMORY_MAX_BYTES="0")          # the streaming path
    ref = tmp_path / "ref"
    r = subprocess.run(_train_cmd(ref, over), env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    killed = tmp_path / "killed"
    cmd = _train_cmd(killed, over)
    assert _kill_when(cmd, env, lambda: any(s >= 5 for s in _steps(killed)))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_run(ref, killed)


@pytest.mark.parametrize("store", ["imagenet2012", "imagenet2012/jpeg256", "imagenet2012/raw256"])
def test_prepare_train_resume_for_every_store(tmp_path, store):
    """In process: 6 steps straight vs 3 steps, then resumed to 6: the same parameters, optimiser state
    and training records, bit for bit."""
    from alexnet_jax.config import Config
    from alexnet_jax.data import prepare
    from alexnet_jax.run import train_and_evaluate

    tfds = tmp_path / "tfds"
    prepare(store, str(_imagenet_tree(tmp_path / "src", per_class=6)), str(tfds))
    cfg = Config(model="alexnet", width=0.0625, num_classes=1000, input_size=64, dataset=store,
                 data_dir=str(tfds), augment="alexnet", eval_split="validation", batch_size=4, num_steps=6,
                 checkpoint_every_steps=3, log_every_steps=1, eval_every_epochs=100)
    train_and_evaluate(cfg, str(tmp_path / "straight"), progress=False)
    train_and_evaluate(cfg.replace(num_steps=3), str(tmp_path / "resumed"), progress=False)
    train_and_evaluate(cfg, str(tmp_path / "resumed"), progress=False, extend=True)
    # (the 3-step run also evaluated at its end, so only the training records are compared)
    _assert_same_run(tmp_path / "straight", tmp_path / "resumed", kinds=("train",))
