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
SCRIPTS = ["lenet5_mnist.py", "alexnet_columns_cifar10.py", "alexnet_imagenet.py", "compare_splits.py"]


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
