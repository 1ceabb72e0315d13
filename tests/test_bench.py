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


def test_torch_cifar_twin_structure():
    torch = pytest.importorskip("torch")
    from alexnet_jax.bench.torch_cifar import cifar_two_column_alexnet, time_cifar
    from alexnet_jax.bench.torch_configs import num_params
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
    r = time_cifar(batch=2, steps=1, warmup=1, layout="channels_last", width=0.0625)
    assert r["config"] == "eager channels_last" and r["images_per_second"] > 0


def _twin_cifar_layout(name: str, what: str, a) -> np.ndarray:
    """One of our CIFAR AlexNet's parameters (or gradients) in the torch twin's layout.  Ours: columns
    stacked on a leading axis, kernels HWIO, fc6 reading the pooled maps in (h, w, c) order; the twin:
    each column's units after the other's (a grouped conv / one Linear), kernels OIHW, fc6 reading (c, h, w)."""
    a = np.array(a, np.float64)
    if what == "bias":
        return a.reshape(-1)
    if name == "fc8":                                   # one layer (in, out)
        return a.T
    if name.startswith("conv"):                         # (2, kh, kw, I, O) -> (2 O, I, kh, kw)
        return np.concatenate([k.transpose(3, 2, 0, 1) for k in a], axis=0)
    if name == "fc6":                                   # (2, 3*3*256, O): inputs (h, w, c) -> (c, h, w)
        return np.concatenate([k.reshape(3, 3, -1, k.shape[-1]).transpose(3, 2, 0, 1).reshape(k.shape[-1], -1)
                               for k in a], axis=0)
    return np.concatenate([k.T for k in a], axis=0)     # fc7: (2, I, O) -> (2 O, I)


def _assert_same(t, ours, what):
    """Equal to float64 working precision scaled by the tensor: |t - ours| <= 1e-6 max |ours| (float32
    rounding, from our logits and LRN which compute in float32, is ~1e-7 of that)."""
    t, ours = np.asarray(t, np.float64), np.asarray(ours, np.float64)
    assert t.shape == ours.shape, what
    err = np.max(np.abs(t - ours)) / np.max(np.abs(ours))
    assert err <= 1e-6, f"{what}: relative error {err:.2e}"


@pytest.mark.parametrize("width", [0.25, pytest.param(1.0, marks=pytest.mark.slow)])
def test_torch_cifar_twin_computes_our_alexnet_float64(x64, width):
    """The torch twin of our CIFAR-size two-column AlexNet, given our parameters and our dropout masks,
    gives our logits and every parameter's gradient, in float64 (training mode: dropout after fc6, fc7)."""
    torch = pytest.importorskip("torch")
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from alexnet_jax.bench.torch_cifar import CIFAR_DROPOUT, CIFAR_LAYERS, cifar_two_column_alexnet
    from alexnet_jax.models.alexnet import AlexNet2012

    batch = 4
    # the structure from our model, the values drawn here (He-scaled weights, random biases: a permuted
    # unit or channel anywhere shows), float64
    model = nnx.eval_shape(lambda: AlexNet2012(num_classes=10, input_size=32, width=width, dtype=jnp.float64,
                                               rngs=nnx.Rngs(0)))
    graphdef, abstract = nnx.split(model, nnx.Param)
    rng = np.random.default_rng(0)

    def draw(a):
        fan_in = int(np.prod(a.shape[-4:-1])) if a.ndim >= 4 else a.shape[-2] if a.ndim >= 2 else 0
        return rng.normal(0, np.sqrt(2 / fan_in) if fan_in else 0.1, a.shape)

    pure = jax.tree.map(draw, nnx.to_pure_dict(abstract))
    params = nnx.State(abstract)
    nnx.replace_by_pure_dict(params, jax.tree.map(jnp.asarray, pure))
    model = nnx.merge(graphdef, params)
    net = cifar_two_column_alexnet(10, width).double()
    with torch.no_grad():
        for name, i in CIFAR_LAYERS.items():
            for what, t in (("kernel", net[i].weight), ("bias", net[i].bias)):
                t.copy_(torch.from_numpy(_twin_cifar_layout(name, what, pure[name][what])))
    x = rng.normal(0, 1, (batch, 32, 32, 3))
    y = np.array([3, 1, 4, 1])
    keep = model.dropout_masks(jax.random.key(5), batch)   # (columns, batch, units) for fc6, fc7

    class FixedDropout(torch.nn.Module):
        def __init__(self, k):
            super().__init__()
            self.keep = torch.from_numpy(np.concatenate(list(np.asarray(k)), axis=1))   # (batch, 2 units)

        def forward(self, h):
            return torch.where(self.keep, h / 0.5, torch.zeros((), dtype=h.dtype))

    for (layer, i), k in zip(CIFAR_DROPOUT.items(), keep, strict=True):
        assert isinstance(net[i], torch.nn.Dropout), layer
        net[i] = FixedDropout(k)

    graphdef, params = nnx.split(model, nnx.Param)

    def loss_fn(p):
        logits = nnx.merge(graphdef, p)(jnp.asarray(x), train=True, dropout_masks=keep)
        return -jnp.mean(jax.nn.log_softmax(logits.astype(jnp.float64))[jnp.arange(batch), y]), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    t_logits = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(y)).backward()
    _assert_same(t_logits.detach().numpy(), logits, "logits")
    g = nnx.to_pure_dict(grads)
    for name, i in CIFAR_LAYERS.items():
        _assert_same(net[i].weight.grad.numpy(), _twin_cifar_layout(name, "kernel", g[name]["kernel"]), name)
        _assert_same(net[i].bias.grad.numpy(), _twin_cifar_layout(name, "bias", g[name]["bias"]), f"{name} bias")


def test_torch_lenet_twin_computes_our_lenet5():
    """The torch twin of lenet5 (softmax head), given our parameters, gives our logits and our gradients
    (kernel gradients of C3 on Table I's connections only; the twin's masked entries get zero), with each
    of the three torch idioms of the trainable subsampling."""
    torch = pytest.importorskip("torch")
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from alexnet_jax.bench.torch_lenet import C3_TABLE as TWIN_TABLE
    from alexnet_jax.bench.torch_lenet import SUBSAMPLING, lenet5_twin
    from alexnet_jax.models.lenet import LeNet5
    from alexnet_jax.models.lenet_layers import C3_TABLE
    from alexnet_jax.trainer import cross_entropy

    assert [tuple(t) for t in TWIN_TABLE] == [tuple(t) for t in C3_TABLE]
    model = LeNet5(head="softmax", rngs=nnx.Rngs(3))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (4, 32, 32, 1)).astype(np.float32)
    y = np.array([3, 1, 4, 1], np.int32)
    graphdef, params = nnx.split(model, nnx.Param)
    loss_fn = lambda p: cross_entropy(nnx.merge(graphdef, p)(jnp.asarray(x)), jnp.asarray(y)).mean()  # noqa: E731
    logits = np.asarray(model(jnp.asarray(x)), np.float64)
    grads = jax.jit(jax.grad(loss_fn))(params)
    assert SUBSAMPLING == ("depthwise", "avgpool", "reshape")
    for subsampling in SUBSAMPLING:
        _check_lenet_twin(torch, lenet5_twin(10, subsampling).double(), model, x, y, logits, grads)


def _check_lenet_twin(torch, net, model, x, y, logits, grads):
    from alexnet_jax.models.lenet_layers import C3_TABLE

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


_BF16_CONV = """
import json, alexnet_jax, jax, jax.numpy as jnp
from alexnet_jax.bench.profile import arithmetic_dtypes
x = jnp.ones((8, 15, 15, 48), jnp.bfloat16); k = jnp.ones((5, 5, 48, 128), jnp.bfloat16)
conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), ((2, 2), (2, 2)),
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
a = jnp.ones((64, 128), jnp.bfloat16); b = jnp.ones((128, 32), jnp.bfloat16)
out = {"conv": arithmetic_dtypes(jax.jit(conv).lower(x, k).compile().as_text()),
       "dot_f32_result": arithmetic_dtypes(jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
                                           .lower(a, b).compile().as_text())}
print(json.dumps(out))
"""


ONEDNN = "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true"
YNN_CONV = "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"


@pytest.mark.parametrize("flags", ["", pytest.param(ONEDNN, marks=pytest.mark.slow),
                                   pytest.param(YNN_CONV, marks=pytest.mark.slow)])
def test_xla_cpu_runs_bfloat16_convolutions_in_float32(flags):
    """What README says of bfloat16 on XLA:CPU (jaxlib 0.10.2): a bfloat16 convolution compiles to a float32
    one (its operands converted), whatever these flags; a bfloat16 product with a float32 result stays in
    bfloat16.  If the first assertion fails, a jaxlib computes bfloat16 convolutions natively: rerun
    experiments/bench_cpu.py and revise README's bfloat16 paragraph."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, "-c", _BF16_CONV], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["conv"] == {"convolution f32 x f32 -> f32": 1}, out
    assert out["dot_f32_result"] == {"dot bf16 x bf16 -> f32": 1}, out


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
    from alexnet_jax.cli import main
    assert main(["bench", "--lenet-epoch", "--mnist-dir", str(fake_mnist), "--batch", "32", "--chunks", "4",
                 "--epochs", "2"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    out = json.loads(lines[-1])
    assert out["mode"] == "lenet_epoch" and out["steps"] == 9 and out["images"] == 288
    (run,) = out["runs"]
    assert run["steps_per_dispatch"] == 4 and run["dispatches"] == 3 and run["loss_finite"]
    assert out["images_per_second"] == pytest.approx(288 / out["epoch_seconds"], rel=1e-9)
    assert len(run["epoch_seconds_all"]) == 2 and out["epoch_seconds"] == min(run["epoch_seconds_all"])
    assert out["twin"] is None and out["vs_torch"] is None
    assert any(line.lstrip().startswith("ours (jax)") for line in lines)


def _check_same_protocol(ours: dict, twin: dict, timed_key: str, figure_key: str, statistic) -> None:
    """Both sides recorded the same protocol and did what it says: as many timed repetitions, the same
    statistic of them, on the same number of threads."""
    runs = [r for r in twin["runs"] if "error" not in r]
    assert runs and len(runs) == len(twin["runs"])
    assert twin["protocol"] == ours["protocol"]
    for r in runs:
        assert r["protocol"] == ours["protocol"], r["config"]
        assert len(r[timed_key]) == ours["protocol"]["timed"]
        assert r[figure_key] == statistic(r[timed_key])
    assert twin["threads"] == ours["threads"]


# torch's OpenMP threads spin while they wait, which on a busy machine (a parallel test run) makes a tiny
# eager step take seconds; the protocol tests time nothing, so they let the threads sleep instead
PASSIVE = "PASSIVE"


def test_lenet_epoch_peer_same_protocol(fake_mnist, capsys, monkeypatch):
    """--lenet-epoch --peer (eager torch only here; torch.compile: the slow test below): ours and every
    torch configuration follow one protocol, and the ratios are ours / each configuration's figure."""
    pytest.importorskip("torch")
    monkeypatch.setenv("OMP_WAIT_POLICY", PASSIVE)
    from alexnet_jax.cli import main
    assert main(["bench", "--lenet-epoch", "--peer", "--peer-no-compile", "--mnist-dir", str(fake_mnist),
                 "--batch", "32", "--epochs", "2"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    out = json.loads(lines[-1])
    (run,) = out["runs"]
    assert out["protocol"]["unit"] == "epoch" and out["protocol"]["timed"] == 2
    assert len(run["epoch_seconds_all"]) == 2 and out["epoch_seconds"] == min(run["epoch_seconds_all"])
    twin = out["twin"]
    _check_same_protocol(out, twin, "epoch_seconds_all", "epoch_seconds", min)
    assert [r["config"] for r in twin["runs"]] == ["eager contiguous", "eager channels_last"]
    # each layout's configurations use the subsampling idiom measured fastest for it in this invocation
    cmp = twin["subsampling_comparison"]["layouts"]
    for r in twin["runs"]:
        med = cmp[r["layout"]]["step_seconds_median"]
        assert r["images"] == 288 and r["subsampling"] == min(med, key=med.get) == twin["subsampling"][r["layout"]]
    vs = out["vs_torch"]
    fastest = max(twin["runs"], key=lambda r: r["images_per_second"])
    assert vs["fastest_torch"] == fastest["config"] == twin["fastest"]
    assert vs["ratio_vs_fastest"] == pytest.approx(out["images_per_second"] / fastest["images_per_second"])
    for r in twin["runs"]:
        assert vs["ratio_vs_each"][r["config"]] == pytest.approx(out["images_per_second"] / r["images_per_second"])
    assert any("<- fastest torch" in line for line in lines)


def test_cifar_step_peer_same_protocol(capsys, monkeypatch):
    """bench --model alexnet_cifar --peer at width 1/16 (the twin built at the same width), eager torch
    only: the same warm-up, timed steps and median on both sides, ratios against each configuration."""
    pytest.importorskip("torch")
    monkeypatch.setenv("OMP_WAIT_POLICY", PASSIVE)
    from alexnet_jax.cli import main
    assert main(["bench", "--model", "alexnet_cifar", "--width", "0.0625", "--batch", "8", "--steps", "3",
                 "--warmup", "2", "--peer", "--peer-no-compile"]) == 0
    out = json.loads([ln for ln in capsys.readouterr().out.splitlines() if ln.strip()][-1])
    import statistics
    assert out["protocol"] == {"unit": "step", "warmup": 2, "timed": 3, "statistic": out["protocol"]["statistic"],
                               "untimed": out["protocol"]["untimed"]}
    assert len(out["step_seconds_all"]) == 3
    assert out["step_seconds_median"] == statistics.median(out["step_seconds_all"])
    twin = out["peers"]["torch_cifar"]
    _check_same_protocol(out, twin, "step_seconds_all", "step_seconds_median", statistics.median)
    assert twin["env"]["OMP_NUM_THREADS"] == str(out["threads"])
    assert twin["width"] == 0.0625 and all(r["batch"] == 8 for r in twin["runs"])
    q = out["ratios"]["alexnet_cifar"]
    for r in twin["runs"]:
        assert q["ratio_vs_each"][r["config"]] == pytest.approx(out["images_per_second"] / r["images_per_second"])
    assert q["ratio_vs_fastest"] == pytest.approx(min(q["ratio_vs_each"].values()))   # the fastest torch


@pytest.mark.slow
def test_torch_compile_configurations(fake_mnist, monkeypatch):
    """torch.compile configurations of both twins run and are timed like the eager ones (slow: inductor
    compiles C++ kernels)."""
    pytest.importorskip("torch")
    monkeypatch.setenv("OMP_WAIT_POLICY", PASSIVE)
    from alexnet_jax.bench.torch_cifar import run_cifar
    from alexnet_jax.bench.torch_lenet import run_lenet
    c = run_cifar(batch=4, steps=2, warmup=2, width=0.0625)
    le = run_lenet(str(fake_mnist), batch=32, epochs=1)
    for res in (c, le):
        assert [(r["compiled"], r["layout"]) for r in res["runs"]] == [
            (False, "contiguous"), (False, "channels_last"), (True, "contiguous"), (True, "channels_last")]
        assert all("error" not in r and r["protocol"] == res["protocol"] for r in res["runs"])


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
