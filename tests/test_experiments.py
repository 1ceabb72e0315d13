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
SCRIPTS = ["lenet5_mnist.py", "alexnet_columns_cifar10.py", "alexnet_imagenet.py", "compare_splits.py", "bench_cpu.py",
           "tpu_compile.py", "recipe_run.py", "zoo_fidelity.py", "lrn_formulations.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    if not (ROOT / "experiments" / script).exists():
        pytest.skip(f"{script} not present")
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / script), "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "usage" in r.stdout.lower()


def _lrn_f64(x, k=2.0, n=5, alpha=1e-4, beta=0.75):
    """The printed LRN formula in float64 numpy: b_i = a_i / (k + alpha * sum of a_j^2 over the clipped window)^beta."""
    c = x.shape[-1]
    sq = x ** 2
    win = np.stack([sq[..., max(0, i - n // 2):min(c, i + n // 2 + 1)].sum(-1) for i in range(c)], -1)
    return x / (k + alpha * win) ** beta


def test_lrn_formulations_measure_the_same_function():
    """Every window-sum formulation experiments/lrn_formulations.py times is the LRN: forward against the
    float64 formula, gradient against float64 central differences of it."""
    import importlib.util

    import jax
    import jax.numpy as jnp
    spec = importlib.util.spec_from_file_location("lrn_formulations", ROOT / "experiments" / "lrn_formulations.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 2, 9)) * 30          # large enough that the denominator is far from k
    w = rng.standard_normal(x.shape)
    eps, num = 1e-6, np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = eps
        num[i] = ((_lrn_f64(x + d) * w).sum() - (_lrn_f64(x - d) * w).sum()) / (2 * eps)
    for name, lrn in mod.VARIANTS.items():
        y = np.asarray(jax.jit(lrn)(jnp.asarray(x, jnp.float32)), np.float64)
        g = np.asarray(jax.jit(jax.grad(lambda v, lrn=lrn: jnp.vdot(lrn(v), jnp.asarray(w, jnp.float32))))(
            jnp.asarray(x, jnp.float32)), np.float64)
        assert np.abs(y - _lrn_f64(x)).max() <= 1e-5 * np.abs(_lrn_f64(x)).max(), name
        assert np.abs(g - num).max() <= 1e-4 * np.abs(num).max(), name


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


def _bench_cpu():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_cpu", ROOT / "experiments" / "bench_cpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_cpu_tables_and_readme_block(tmp_path):
    """The tables are written from the results: the fastest torch configuration in bold, the ratio against
    it, both sides' statistic, the load; README's block between the markers is replaced, nothing else."""
    bench_cpu = _bench_cpu()
    proto = {"unit": "epoch", "warmup": 1, "timed": 5, "statistic": "best of the timed epochs", "untimed": "x"}
    runs = [{"config": c, "images_per_second": v, "share_of_peak": v / 1000}
            for c, v in (("eager contiguous", 100.0), ("eager channels_last", 80.0),
                         ("compiled contiguous", 50.0), ("compiled channels_last", 40.0))]
    lenet = {"mode": "lenet_epoch", "dtype": "float32", "batch": 128, "images_per_second": 200.0, "threads": 2,
             "protocol": proto, "achieved_flops_per_second": 5e8, "share_of_peak": 0.25,
             "peaks": {"float32": {"jax": {"flops_per_second": 1e9, "size": 4096},
                                   "torch": {"flops_per_second": 2e9, "size": 4096},
                                   "peak_flops_per_second": 2e9, "source": "torch 4096x4096 matmul"}},
             "twin": {"threads": 2, "runs": runs, "fastest": "eager contiguous", "protocol": proto},
             "vs_torch": {"fastest_torch": "eager contiguous", "ratio_vs_fastest": 2.0}}
    res = {"date": "2030-01-02", "machine": {"cores": 2, "cpu": "a CPU", "torch": "2.13", "jax": "0.10.2"},
           "parts": {"lenet_float32": {"cmd": "python -m alexnet_jax.cli bench --lenet-epoch --peer",
                                       "wall_seconds": 60.0, "load_before": [0.3, 0.2, 0.1],
                                       "load_after": [0.9, 0.4, 0.2], "result": lenet}}}
    table = bench_cpu.comparison_table(bench_cpu.comparison_rows(res))
    row = table.splitlines()[2]
    assert row.startswith("| LeNet-5 MNIST epoch, batch 128 | float32 | 200 | **100** | 80 | 50 | 40 | **2.00x** |")
    assert "best of the timed epochs (5 after 1 warm-up epoch)" in row and row.endswith("| 2 / 2 | 0.3, 0.9 |")
    peak_row = bench_cpu.peak_table(bench_cpu.comparison_rows(res)).splitlines()[2]
    assert "| 0 (25%) | 0 (10%) | 2 (torch 4096x4096 matmul) |" in peak_row
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{bench_cpu.BEGIN}\nold table\n{bench_cpu.END}\nafter\n")
    block = bench_cpu.readme_block(res, "bench_cpu_2030-01-02.md")
    assert bench_cpu.rewrite_readme(block, readme)
    text = readme.read_text()
    assert text.startswith("before\n" + bench_cpu.BEGIN) and text.endswith(bench_cpu.END + "\nafter\n")
    assert "old table" not in text and "**2.00x**" in text and "bench_cpu_2030-01-02.md" in text


def test_bench_cpu_never_overwrites_another_machines_results(tmp_path, monkeypatch, capsys):
    """Publishing under a name that holds another CPU's run is refused (exit 2, the file unchanged); --name
    gives this machine's file, and --no-readme leaves README's table alone."""
    bench_cpu = _bench_cpu()
    results, readme = tmp_path / "results", tmp_path / "README.md"
    results.mkdir()
    monkeypatch.setattr(bench_cpu, "RESULTS", results)
    monkeypatch.setattr(bench_cpu, "README", readme)
    readme.write_text(f"{bench_cpu.BEGIN}\nold table\n{bench_cpu.END}\n")
    theirs = {"date": "2030-01-02", "machine": {"cores": 2, "cpu": "CPU A"}, "parts": {}}
    (results / "bench_cpu_2030-01-02.json").write_text(json.dumps(theirs))
    mine = dict(theirs, machine={"cores": 2, "cpu": "CPU B"})
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(mine))
    assert bench_cpu.main(["--report", str(run / "results.json"), "--publish"]) == 2
    assert "holds a run on CPU A" in capsys.readouterr().err
    assert json.loads((results / "bench_cpu_2030-01-02.json").read_text())["machine"]["cpu"] == "CPU A"
    assert bench_cpu.main(["--report", str(run / "results.json"), "--publish", "--name", "bench_cpu_b",
                           "--no-readme"]) == 0
    assert json.loads((results / "bench_cpu_b.json").read_text())["machine"]["cpu"] == "CPU B"
    assert (results / "bench_cpu_b.md").exists() and "old table" in readme.read_text()


@pytest.mark.slow
def test_bench_cpu_smoke(tmp_path):
    """Every part of experiments/bench_cpu.py runs (tiny nets, fake MNIST, eager torch when installed);
    a smoke run is refused for publishing."""
    import gzip
    rng = np.random.default_rng(0)
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for name, arr in (("train-images-idx3-ubyte.gz", rng.integers(0, 256, (96, 28, 28), dtype=np.uint8)),
                      ("train-labels-idx1-ubyte.gz", rng.integers(0, 10, 96, dtype=np.uint8))):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        with gzip.open(mnist / name, "wb") as f:
            f.write(header + arr.tobytes())
    out = tmp_path / "out"
    env = dict(os.environ, JAX_PLATFORMS="cpu", OMP_WAIT_POLICY="PASSIVE")   # torch's threads sleep when waiting
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_cpu.py"), "--smoke", "--out", str(out),
                        "--mnist-dir", str(mnist)], env=env, capture_output=True, text=True, timeout=3000)
    res = json.loads((out / "results.json").read_text())
    assert set(res["parts"]) == {"lenet_float32", "lenet_bfloat16", "cifar_float32", "cifar_bfloat16",
                                 "cifar_float32_ynnpack", "alexnet_float32"}
    assert res["parts"]["cifar_float32_ynnpack"]["cmd"].startswith("XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+")
    for name, part in res["parts"].items():
        assert "error" not in part["result"], (name, part["result"]["error"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "## Ours against every torch configuration" in (out / "report.md").read_text()
    p = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_cpu.py"), "--report",
                        str(out / "results.json"), "--publish"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "not published" in p.stderr
