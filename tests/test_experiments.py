"""Experiment scripts: --help works, and the ImageNet recipe's first steps run on tiny mock data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["lenet5_mnist.py", "alexnet_columns_cifar10.py", "alexnet_imagenet.py", "compare_splits.py", "tpu_compile.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    if not (ROOT / "experiments" / script).exists():
        pytest.skip(f"{script} not present")
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / script), "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "usage" in r.stdout.lower()


def _jpeg_tree(root: Path, wnids: list[str], per_class: int, rng) -> None:
    for split in ("train", "val"):
        for w in wnids:
            d = root / split / w
            d.mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 255, (rng.integers(260, 300), rng.integers(260, 340), 3), np.uint8)
                Image.fromarray(arr).save(d / f"{w}_{i}.JPEG", quality=85)


@pytest.mark.slow
def test_alexnet_imagenet_first_steps_on_mock_data(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "ilsvrc"
    _jpeg_tree(src, ["n01440764", "n01443537"], 4, rng)   # tench, goldfish: the first two synsets
    tfds_dir = tmp_path / "tfds"
    from alexnet_jax.data import prepare
    prepare("imagenet2012", str(src), str(tfds_dir))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    wd = tmp_path / "run"
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "alexnet_imagenet.py"), "--workdir", str(wd),
                        "--data-dir", str(tfds_dir), "--set", "num_steps=2", "--set", "batch_size=4",
                        "--set", "width=0.0625", "--set", "num_workers=0", "--set", "checkpoint_every_steps=2"],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["examples"] == 8 and res["step"] == 2 and res["paper"]["top1_error"] == 0.407
    cfg = json.loads((wd / "config.json").read_text())
    assert cfg["model"] == "alexnet" and cfg["input_size"] == 224 and cfg["ten_crop"] is True
    assert cfg["augment"] == "alexnet" and cfg["lr_schedule"] == "plateau"


@pytest.mark.slow
def test_compare_splits_on_a_prepared_dataset(tmp_path):
    """--dataset: the loader's uint8 batches, scaled on the device, give every split the same losses."""
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "compare_splits.py"), "--model", "lenet5",
                        "--input-size", "32", "--dataset", "digits", "--data-dir", str(tmp_path / "tfds"),
                        "--steps", "3", "--batch", "16", "--devices", "2", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(res["splits"]) == {"1x1", "1x2", "2x1"} and res["data"] == "first 3 batches of digits"
    losses = res["splits"]["1x1"]["losses"]
    assert len(losses) == 3 and all(0.0 < x < 10.0 for x in losses)   # real labels, finite losses
    for name, split in res["splits"].items():
        assert split["max_rel_loss_diff_vs_1x1"] <= 1e-5, (name, split["losses"], losses)


SHARED = ROOT.parent / "shared" / "data"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "cifar10" / "cifar10_train_jpeg.tar.gz").is_file()
                    or not (SHARED / "imagenet_samples" / "imagenet_samples_100.tar").is_file(),
                    reason=f"the CIFAR-10 tarball and sample photos are not under {SHARED}")
def test_gpu_script_smoke_on_cpu(tmp_path):
    """experiments/gpu_run.sh with SMOKE=1: every part of the one-call GPU script runs at tiny sizes."""
    out = tmp_path / "gpu_run"
    r = subprocess.run(["bash", str(ROOT / "experiments" / "gpu_run.sh")], capture_output=True, text=True,
                       timeout=1500, env=dict(os.environ, SMOKE="1", OUT=str(out), BUDGET="1400",
                                              JAX_PLATFORMS="cpu",   # the script's `python`: this one
                                              PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"))
    summary = (out / "summary.txt").read_text()
    assert r.returncode == 0 and "s left of the budget" not in summary, summary   # no part skipped for time
    parts = [ln for ln in summary.splitlines() if ln.startswith("== ")]
    codes = [ln.split("rc=")[1].split(",")[0] for ln in summary.splitlines() if "rc=" in ln]
    assert len(parts) == len(codes) == 8 and set(codes) == {"0"}, summary
    report = json.loads((out / "columns" / "report.json").read_text())
    assert {r["model"] for r in report["runs"]} == {"alexnet", "alexnet_half", "alexnet_owt"}
    pilot = json.loads((out / "columns" / "pilot.json").read_text())
    assert len({r["seed"] for r in report["runs"]}) == pilot["seeds_for_main"]
    assert report["claim_A"]["verdict"] and report["claim_B"]["verdict"]
    for name in ("step_bf16_peers", "e2e_alexnet", "e2e_alexnet_owt"):
        assert json.loads((out / f"{name}.json").read_text().strip().splitlines()[-1])
