"""`alexnet-jax bench`: the step benchmark's table and last-line JSON, a forced 2-device mesh, running
without tensorflow-datasets / grain, the torch twins (CIFAR AlexNet, LeNet-5), and the LeNet MNIST epoch
mode."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
KEYS = ("compile_seconds", "step_seconds_median", "images_per_second", "mfu", "peak_memory_bytes",
        "macs_per_image", "device")
TINY = ["--model", "alexnet", "--input-size", "32", "--width", "0.0625", "--num-classes", "10",
        "--batch", "8", "--steps", "3", "--warmup", "1"]


def _run_cli(argv: list[str], *, env: dict | None = None, block_data: bool = False, timeout: float = 240):
    pre = "sys.modules['tensorflow_datasets'] = None; sys.modules['grain'] = None; " if block_data else ""
    check = "assert 'alexnet_jax.data.sources' not in sys.modules; " if block_data else ""
    code = f"import sys; {pre}from alexnet_jax.cli import main; rc = main({argv!r}); {check}sys.exit(rc)"
    e = dict(os.environ, **(env or {}))
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), e.get("PYTHONPATH", "")])
    e.setdefault("JAX_PLATFORMS", "cpu")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=timeout,
                       cwd=REPO)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    return lines[:-1], json.loads(lines[-1])


def test_bench_step_table_and_json_without_tfds_or_grain():
    """Two tiny models (alexnet at 32 px width 1/16, lenet5) for 3 steps, tfds and grain blocked."""
    table, out = _run_cli(["bench", "--model", "alexnet", "lenet5", "--input-size", "32", "--width", "0.0625",
                           "--num-classes", "10", "--batch", "8", "--steps", "3", "--warmup", "1",
                           "--no-isolate"], block_data=True)
    assert any(line.startswith("model") and "img/s" in line for line in table)
    assert any(line.startswith("alexnet ") for line in table)
    assert any(line.startswith("lenet5 ") for line in table)
    assert out["mode"] == "step" and out["device"] == "cpu" and len(out["results"]) == 2
    for r in out["results"]:
        for k in KEYS:
            assert k in r, k
        assert r["mfu"] is None                     # CPU: no known peak
        assert r["step_seconds_median"] > 0 and r["images_per_second"] > 0 and r["loss_finite"]
        assert r["peak_memory_bytes"] > 0 and r["steps"] == 3
        # img/s is what the step times say: the batch over the median step
        assert r["images_per_second"] == pytest.approx(8 / r["step_seconds_median"], rel=1e-9)
    # forward multiply-adds per image, by the papers' formulas (not read from the code):
    # LeNet-5 at width 1/16 (C1 0, C3 1, C5 8, F6 5 maps: max(1, round(w * n))), fully connected C3
    lenet = 28 * 28 * 1 * 25 + 10 * 10 * 1 * 25 * 1 + 1 * 1 * 8 * 25 * 1 + 8 * 5 + 5 * 10
    assert out["results"][1]["macs_per_image"] == lenet
    assert out["load_average"] and len(out["load_average"]) == 3


def test_bench_forced_two_device_mesh():
    """--force-host-devices 2 --mesh data=1,model=2: the columns on two virtual CPU devices."""
    env = {"XLA_FLAGS": ""}
    table, out = _run_cli(["bench", *TINY, "--force-host-devices", "2", "--mesh", "data=1,model=2"], env=env)
    for k in KEYS:
        assert k in out
    assert out["mesh"] == {"data": 1, "model": 2} and out["devices_used"] == 2
    assert out["plan"].startswith("mesh data=1 x model=2: the 2 columns split over `model`")
    assert out["mfu"] is None and out["loss_finite"]
    assert any("1x2" in line for line in table)


def test_parse_mesh_and_peaks():
    from alexnet_jax.bench.step import peak_flops
    from alexnet_jax.tools.bench import parse_mesh

    assert parse_mesh("data=1,model=2") == (1, 2)
    assert parse_mesh("model=2") == (-1, 2)
    assert parse_mesh("") == (-1, 1)
    with pytest.raises(ValueError):
        parse_mesh("rows=2")
    assert peak_flops("NVIDIA H100 80GB HBM3", "bfloat16")[0] == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA H200", "bfloat16")[0] == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bfloat16")[0] == pytest.approx(312e12)
    assert peak_flops("cpu", "float32")[0] is None
    assert peak_flops("cpu", "float32", 2.0)[0] == pytest.approx(2e12)


def test_presets():
    from alexnet_jax.bench.step import bench_config

    c = bench_config("alexnet_cifar", batch=8)
    assert (c.model, c.input_size, c.width, c.num_classes) == ("alexnet", 32, 1.0, 10)
    assert bench_config("alexnet", batch=8).input_size == 227
    assert bench_config("alexnet_owt", batch=8).input_size == 224
    assert bench_config("alexnet_half", batch=8, input_size=64, width=0.25).input_size == 64
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        bench_config("vgg", batch=8)


def test_torch_cifar_peer_mirrors_ours():
    torch = pytest.importorskip("torch")
    from alexnet_jax.bench.torch_twins import cifar_two_column_alexnet, num_params, time_cifar
    net = cifar_two_column_alexnet(10)
    # the two-column net at 32 px (small stem 5x5/1, pool5 3x3): by the layer formulas
    conv = 2 * (5 * 5 * 3 * 48 + 48) + 2 * (5 * 5 * 48 * 128 + 128) + 2 * (3 * 3 * 256 * 192 + 192) \
        + 2 * (3 * 3 * 192 * 192 + 192) + 2 * (3 * 3 * 192 * 128 + 128)
    fc = 2 * (3 * 3 * 256 * 2048 + 2048) + 2 * (4096 * 2048 + 2048) + (4096 * 10 + 10)
    assert num_params(net) == conv + fc == 28_569_994
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    # grouped convolutions where ours has per-column convs, LRN per column, dropout after fc6 / fc7
    groups = [m.groups for m in net if isinstance(m, torch.nn.Conv2d)]
    assert groups == [1, 2, 1, 2, 2]
    r = time_cifar(batch=2, steps=1, warmup=1)
    assert r["params"] == conv + fc and r["images_per_second"] > 0


def test_torch_lenet_twin_computes_our_lenet5():
    """The torch twin of lenet5 (softmax head), given our parameters, gives our logits and our gradients
    (kernel gradients of C3 on Table I's connections only; the twin's masked entries get zero)."""
    torch = pytest.importorskip("torch")
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from alexnet_jax.bench.torch_twins import C3_TABLE as TWIN_TABLE
    from alexnet_jax.bench.torch_twins import lenet5_twin
    from alexnet_jax.models.lenet import C3_TABLE, LeNet5
    from alexnet_jax.trainer import cross_entropy

    assert [tuple(t) for t in TWIN_TABLE] == [tuple(t) for t in C3_TABLE]
    model = LeNet5(head="softmax", rngs=nnx.Rngs(3))
    net = lenet5_twin(10).double()
    hwio = lambda k: torch.from_numpy(np.asarray(k, np.float64).transpose(3, 2, 0, 1).copy())  # noqa: E731
    vec = lambda v: torch.from_numpy(np.asarray(v, np.float64).copy())  # noqa: E731
    c1, s2, c3, s4, c5, f6, out = (net[i] for i in (0, 2, 4, 6, 8, 11, 13))
    with torch.no_grad():
        c1.weight.copy_(hwio(model.c1.kernel_HWIO[...]))
        c1.bias.copy_(vec(model.c1.bias_C[...]))
        for t, ours in ((s2, model.s2), (s4, model.s4)):
            t.coef.copy_(vec(ours.coef_C[...]))
            t.bias.copy_(vec(ours.bias_C[...]))
        c3.weight.copy_(hwio(model.c3.dense_kernel_HWIO()))
        c3.bias.copy_(vec(model.c3.bias_C[...]))
        c5.weight.copy_(hwio(model.c5.kernel_HWIO[...]))
        c5.bias.copy_(vec(model.c5.bias_C[...]))
        for t, ours in ((f6, model.f6), (out, model.out)):
            t.weight.copy_(vec(ours.kernel_IO[...]).T)
            t.bias.copy_(vec(ours.bias_O[...]))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (4, 32, 32, 1)).astype(np.float32)
    y = np.array([3, 1, 4, 1], np.int32)

    graphdef, params = nnx.split(model, nnx.Param)
    loss_fn = lambda p: cross_entropy(nnx.merge(graphdef, p)(jnp.asarray(x)), jnp.asarray(y)).mean()  # noqa: E731
    logits = np.asarray(model(jnp.asarray(x)), np.float64)
    grads = jax.grad(loss_fn)(params)

    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float64))
    t_logits = net(tx)
    torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(y.astype(np.int64))).backward()
    np.testing.assert_allclose(t_logits.detach().numpy(), logits, rtol=1e-4, atol=1e-5)

    def close(t_grad, ours):
        np.testing.assert_allclose(t_grad.numpy(), np.asarray(ours, np.float64), rtol=2e-3, atol=1e-6)

    close(c1.weight.grad, np.asarray(grads["c1"]["kernel_HWIO"][...]).transpose(3, 2, 0, 1))
    close(c5.weight.grad, np.asarray(grads["c5"]["kernel_HWIO"][...]).transpose(3, 2, 0, 1))
    close(f6.weight.grad, np.asarray(grads["f6"]["kernel_IO"][...]).T)
    close(out.bias.grad, grads["out"]["bias_O"][...])
    for t, key in ((s2, "s2"), (s4, "s4")):
        close(t.coef.grad, grads[key]["coef_C"][...])
        close(t.bias.grad, grads[key]["bias_C"][...])
    close(c3.bias.grad, grads["c3"]["bias_C"][...])
    tri, quad, full = (np.asarray(grads["c3"][k][...]) for k in ("kernel_tri_HWIO", "kernel_quad_HWIO",
                                                                   "kernel_full_HWIO"))
    g3 = c3.weight.grad.numpy()                  # (16, 6, 5, 5)
    for m, inputs in enumerate(C3_TABLE):
        for k, j in enumerate(inputs):
            ours = tri[:, :, k, m] if m < 6 else quad[:, :, k, m - 6] if m < 15 else full[:, :, j, 0]
            close(torch.from_numpy(g3[m, j]), ours)
        for j in set(range(6)) - set(inputs):
            assert np.all(g3[m, j] == 0)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


@pytest.fixture
def fake_mnist(tmp_path):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (300, 28, 28), dtype=np.uint8))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 300, dtype=np.uint8))
    return tmp_path


def test_read_idx(fake_mnist):
    from alexnet_jax.bench.lenet import load_mnist_train

    x, y = load_mnist_train(fake_mnist)
    assert x.shape == (300, 32, 32, 1) and x.dtype == np.float32 and y.shape == (300,)
    assert x[:, :2].max() == 0 and 0 <= x.min() and x.max() <= 1


def test_lenet_epoch_fake_mnist(fake_mnist, capsys):
    """--lenet-epoch on 300 fake images, batch 32: 9 steps, 4 per dispatch (4 + 4 + 1: two executables)."""
    from alexnet_jax.bench.peers import torch_available
    from alexnet_jax.cli import main
    argv = ["bench", "--lenet-epoch", "--mnist-dir", str(fake_mnist), "--batch", "32", "--chunks", "4"]
    if not torch_available():
        argv.append("--no-peer")
    assert main(argv) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    out = json.loads(lines[-1])
    assert out["mode"] == "lenet_epoch" and out["steps"] == 9 and out["images"] == 288
    (run,) = out["runs"]
    assert run["steps_per_dispatch"] == 4 and run["dispatches"] == 3 and run["loss_finite"]
    assert out["images_per_second"] == pytest.approx(288 / out["epoch_seconds"], rel=1e-9)
    assert any(line.startswith("ours (jax)") for line in lines)
    if torch_available():
        assert out["peer"]["images_per_second"] > 0
        assert out["ratio_vs_peer"] == pytest.approx(out["images_per_second"] / out["peer"]["images_per_second"])
        assert out["twin"]["peer"] == "torch_lenet5_twin" and out["twin"]["images"] == 288
        assert out["twin"]["images_per_second"] > 0 and out["ratio_vs_twin"] > 0
        assert any(line.startswith("twin of lenet5") for line in lines)


SAMPLES = Path(__file__).resolve().parents[2] / "shared/data/imagenet_samples/imagenet_samples_100.tar"


@pytest.mark.skipif(not SAMPLES.is_file(), reason=f"shared ImageNet samples not found at {SAMPLES}")
def test_input_pipeline_raw256(capsys):
    from alexnet_jax.cli import main

    assert main(["bench", "--input-pipeline", "--store", "raw256", "--records", "256", "--batch", "32",
                 "--input-size", "64", "--step-seconds", "1.0"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    out = json.loads(lines[-1])
    # the photos repeated to >= 256 training records (prepare holds ~10% out for validation)
    assert out["store"] == "raw256" and 256 <= out["records"] < out["files_made"]
    assert out["record_bytes_mean"] >= 256 * 256 * 3                # raw uint8 records
    pc = out["page_cache"]
    assert pc["images_per_second_per_core"] > 0
    assert out["cores_needed_page_cache"] == pytest.approx(out["step_rate_images_per_second"]
                                                           / pc["images_per_second_per_core"])
    assert out["augment"]["train_share_of_step"] == pytest.approx(out["augment"]["train_seconds_per_batch"])
    assert any("img/s per core" in ln for ln in lines)


def test_input_pipeline_unknown_store_is_a_clear_error(capsys):
    from alexnet_jax.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--input-pipeline", "--store", "raw999"])
    assert "invalid choice: 'raw999'" in capsys.readouterr().err
