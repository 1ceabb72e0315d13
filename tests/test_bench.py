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

from alexnet_jax import bench

REPO = Path(__file__).resolve().parents[1]
KEYS = ("compile_seconds", "step_seconds_median", "images_per_second", "mfu", "peak_memory_bytes",
        "macs_per_image", "device")
TINY = ["--model", "alexnet", "--input-size", "32", "--width", "0.0625", "--num-classes", "10",
        "--batch", "8", "--steps", "3", "--warmup", "1"]


def _run_cli(argv: list[str], *, env: dict | None = None, block_data: bool = False, timeout: float = 240):
    pre = "sys.modules['tensorflow_datasets'] = None; sys.modules['grain'] = None; " if block_data else ""
    check = "assert 'alexnet_jax.data' not in sys.modules; " if block_data else ""
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
        assert r["peak_memory_bytes"] > 0 and r["macs_per_image"] > 0 and r["steps"] == 3
    lenet = out["results"][1]
    assert lenet["model"] == "lenet5" and lenet["input_size"] == 32 and lenet["width"] == 0.0625
    assert out["results"][0]["macs_per_image"] == 1_216_784   # summary.py: alexnet at 32 px, width 1/16


def test_bench_forced_two_device_mesh():
    """--force-host-devices 2 --mesh data=1,model=2: the columns on two virtual CPU devices."""
    env = {"XLA_FLAGS": ""}
    table, out = _run_cli(["bench", *TINY, "--force-host-devices", "2", "--mesh", "data=1,model=2"], env=env)
    for k in KEYS:
        assert k in out
    assert out["mesh"] == {"data": 1, "model": 2} and out["devices_used"] == 2
    assert out["mfu"] is None and out["loss_finite"]
    assert any("1x2" in line for line in table)


def test_parse_mesh_and_peaks():
    assert bench.parse_mesh("data=1,model=2") == (1, 2)
    assert bench.parse_mesh("model=2") == (-1, 2)
    assert bench.parse_mesh("") == (-1, 1)
    with pytest.raises(ValueError):
        bench.parse_mesh("rows=2")
    assert bench.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16")[0] == pytest.approx(989.4e12)
    assert bench.peak_flops("NVIDIA H200", "bfloat16")[0] == pytest.approx(989.4e12)
    assert bench.peak_flops("NVIDIA A100-SXM4-80GB", "bfloat16")[0] == pytest.approx(312e12)
    assert bench.peak_flops("cpu", "float32")[0] is None
    assert bench.peak_flops("cpu", "float32", 2.0)[0] == pytest.approx(2e12)


def test_presets():
    s = bench.resolve_model("alexnet_cifar")
    assert (s.model, s.input_size, s.width, s.num_classes, s.channels) == ("alexnet", 32, 1.0, 10, 3)
    assert bench.resolve_model("lenet5").channels == 1
    assert bench.resolve_model("alexnet").input_size == 227
    assert bench.resolve_model("alexnet_owt").input_size == 224
    assert bench.resolve_model("alexnet_half", input_size=64, width=0.25).input_size == 64


def test_torch_cifar_peer_mirrors_ours():
    torch = pytest.importorskip("torch")
    from alexnet_jax.bench.torch_twins import cifar_two_column_alexnet, num_params, time_cifar
    spec = bench.resolve_model("alexnet", input_size=32, width=1.0, num_classes=10)
    ours = {"params": bench.param_count(spec)}
    net = cifar_two_column_alexnet(10)
    assert num_params(net) == ours["params"] == 28_569_994   # = summarize("alexnet", input_size=32, ...)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    # grouped convolutions where ours has per-column convs, LRN per column, dropout after fc6 / fc7
    groups = [m.groups for m in net if isinstance(m, torch.nn.Conv2d)]
    assert groups == [1, 2, 1, 2, 2]
    r = time_cifar(batch=2, steps=1, warmup=1)
    assert r["params"] == ours["params"] and r["images_per_second"] > 0


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
    from alexnet_jax.train import cross_entropy

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
    x, y = bench.load_mnist_train(fake_mnist)
    assert x.shape == (300, 32, 32, 1) and x.dtype == np.float32 and y.shape == (300,)
    assert x[:, :2].max() == 0 and 0 <= x.min() and x.max() <= 1


def test_lenet_epoch_fake_mnist(fake_mnist, capsys):
    """--lenet-epoch on 300 fake images, batch 32: 9 steps, 4 per dispatch (4 + 4 + 1: two executables)."""
    from alexnet_jax.cli import main
    argv = ["bench", "--lenet-epoch", "--mnist-dir", str(fake_mnist), "--batch", "32", "--chunks", "4"]
    if not bench.torch_available():
        argv.append("--no-peer")
    assert main(argv) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    out = json.loads(lines[-1])
    assert out["mode"] == "lenet_epoch" and out["steps"] == 9 and out["images"] == 288
    (run,) = out["runs"]
    assert run["steps_per_dispatch"] == 4 and run["dispatches"] == 3 and run["loss_finite"]
    assert out["images_per_second"] > 0 and out["epoch_seconds"] > 0
    assert any(line.startswith("ours (jax)") for line in lines)
    if bench.torch_available():
        assert out["peer"]["images_per_second"] > 0 and out["ratio_vs_peer"] > 0
        assert out["twin"]["peer"] == "torch_lenet5_twin" and out["twin"]["images"] == 288
        assert out["twin"]["images_per_second"] > 0 and out["ratio_vs_twin"] > 0
        assert any(line.startswith("twin of lenet5") for line in lines)
