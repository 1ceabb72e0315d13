"""`alexnet-jax compile`: the Trainer's steps compiled by XLA:TPU and XLA:GPU on this CPU host (libtpu's
compile-only devices; JAX's CUDA plugin with a GPU description), and the formulation the models are
traced in following the compiler, not the host.

Tests that compile for TPU need libtpu and skip without it (it has wheels for Linux only); those for GPU
need the CUDA plugin and skip without it.  The default run compiles one small program (the two-column
net at width 0.125 on 32 px inputs, its train step on two v5e chips); the full-size checks and the GPU
compile are marked slow.  References are computed here by hand from the layer shapes and the vendors'
published chip figures.
"""

from __future__ import annotations

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alexnet_jax import chips, cli
from alexnet_jax import compile as compile_lib
from alexnet_jax.config import apply_overrides
from alexnet_jax.configs import get_config
from alexnet_jax.models import create_model
from alexnet_jax.models.layers import compiling_for


def _have_libtpu() -> bool:
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return False
    return True


def _have_cuda_plugin() -> bool:
    try:
        chips._require_cuda_plugin()
    except chips.CompileError:
        return False
    return True


needs_libtpu = pytest.mark.skipif(not _have_libtpu(), reason=f"libtpu is not installed here (it has wheels for "
                                                            f"Linux only): {chips.LIBTPU_HINT}")
needs_cuda_plugin = pytest.mark.skipif(not _have_cuda_plugin(), reason=f"JAX's CUDA plugin is not installed "
                                                                     f"here: {chips.CUDA_HINT}")
PAPER_LAYERS = ("conv3", "fc6", "fc7", "fc8")


BATCH = 4      # the small program's global batch (the figures below are per image or scale with it)


def small_config(**kw):
    """The two-column net at width 0.125 on 32 px inputs (small stem), bfloat16, batch 4, one column per chip."""
    sets = dict(width=0.125, dtype="bfloat16", batch_size=BATCH, mesh_data=1, mesh_model=2)
    sets.update(kw)
    return apply_overrides(get_config("alexnet_cifar10"), [f"{k}={v}" for k, v in sets.items()])


def _error_line(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ------------------------------------------------------------------------------------------------
# Bad input: one clear line each (no libtpu needed)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["v9x:2x2", "v5e2x2", "v5e:2x2x2x2", "tpu", "h100:2x2", "v5e:4", "a100:2"])
def test_unknown_topology_is_one_line(capsys, name):
    line = _error_line(capsys, ["compile", "--topology", name])
    assert f"unknown topology {name!r}" in line and "v5e:2x2" in line and "h100:2" in line


def test_mesh_larger_than_topology_is_one_line(capsys):
    line = _error_line(capsys, ["compile", "--topology", "v5e:2x2", "--config", "alexnet_cifar10",
                                "--set", "mesh_data=4", "--set", "mesh_model=2"])
    assert "needs 8 chips but topology v5e:2x2 has 4" in line


def test_missing_cuda_plugin_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(chips.importlib.util, "find_spec", lambda name, *a: None)
    line = _error_line(capsys, ["compile", "--topology", "h100:2", "--config", "alexnet_cifar10",
                                "--set", "mesh_data=1", "--set", "mesh_model=2"])
    assert "needs JAX's CUDA plugin" in line and "jax-cuda13-plugin" in line


def test_missing_libtpu_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "libtpu", None)         # `import libtpu` now fails
    monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
    line = _error_line(capsys, ["compile", "--topology", "v5e:2x2", "--config", "alexnet_cifar10",
                                "--set", "mesh_data=1", "--set", "mesh_model=2"])
    assert "needs libtpu" in line and "jax[tpu]" in line


# ------------------------------------------------------------------------------------------------
# The formulation follows the compiler (no libtpu needed: traced here, executed on CPU)
# ------------------------------------------------------------------------------------------------
def _primitives(closed) -> set[str]:
    out = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            out.add(eqn.primitive.name)
            for v in eqn.params.values():
                for item in (v if isinstance(v, (tuple, list)) else (v,)):
                    if isinstance(item, jax.extend.core.ClosedJaxpr):
                        walk(item.jaxpr)
                    elif isinstance(item, jax.extend.core.Jaxpr):
                        walk(item)

    walk(closed.jaxpr)
    return out


def _loss_and_grads(graphdef, rest, labels):
    def loss(p, x):
        logits = nnx.merge(graphdef, p, rest)(x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

    return jax.value_and_grad(loss)


@pytest.mark.parametrize("name", ["alexnet", "lenet5"])
def test_formulation_follows_the_target(name):
    """Traced for TPU, the models hold XLA's own max-pool, the LRN formula and NHWC convolutions; traced
    for CPU the written-out gradients (custom VJPs) and LeNet's batch-minor matmuls."""
    model = nnx.eval_shape(lambda: create_model(name, input_size=32, num_classes=10, seed=0,
                                                **(dict(width=0.25) if name == "alexnet" else {})))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)       # shapes only: nothing is computed
    x = jnp.zeros((2, 32, 32, getattr(model, "in_channels", 3)))
    step = _loss_and_grads(graphdef, rest, jnp.arange(2))
    for platform in ("cpu", "tpu"):
        def traced(p, x, platform=platform):      # the context inside the traced function (layers.compiling_for)
            with compiling_for(platform):
                return step(p, x)

        prims = _primitives(jax.make_jaxpr(traced)(params, x))
        if name == "alexnet":
            assert ("reduce_window_max" in prims) == (platform == "tpu"), (platform, prims)
            assert ("custom_vjp_call" in prims) == (platform == "cpu"), (platform, prims)
        else:
            assert ("conv_general_dilated" in prims) == (platform == "tpu"), (platform, prims)
            assert ("custom_vjp_call" in prims) == (platform == "cpu"), (platform, prims)


def _both(fn, *args):
    """fn(*args) and its gradient (of a fixed random projection), traced for CPU and for TPU, run here."""
    cot = jax.random.normal(jax.random.key(9), jax.eval_shape(fn, *args).shape)
    out = {}
    for platform in ("cpu", "tpu"):
        def f(*a, platform=platform):
            with compiling_for(platform):
                y, vjp = jax.vjp(fn, *a)
                return y, vjp(cot)
        out[platform] = jax.jit(f)(*args)
    return out["cpu"], out["tpu"]


def _close(a, b, rtol):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(v, u, rtol=rtol, atol=rtol * float(np.abs(u).max()))


def test_the_two_formulations_compute_the_same():
    """The plain formulations (what a TPU or GPU runs) and the CPU-tuned ones are one function, forward
    and gradient: LRN and the 3/2 max-pool (AlexNets), and LeNet-5 end to end (every layer batch-minor)."""
    from alexnet_jax.models.layers import lrn, max_pool

    x = jax.random.normal(jax.random.key(0), (2, 13, 13, 8)) * 30.0
    pooled = {}
    for platform in ("cpu", "tpu"):
        with compiling_for(platform):                  # eager: the formulation is chosen at the call
            pooled[platform] = max_pool(x)
    np.testing.assert_array_equal(pooled["tpu"], pooled["cpu"])          # the same maxima
    _close(*_both(lambda x: max_pool(lrn(x)), x), rtol=1e-5)             # and the same gradients
    model = create_model("lenet5", num_classes=10, seed=0)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 1))
    _close(*_both(lambda p: nnx.merge(graphdef, p, rest)(x), params), rtol=2e-5)


# ------------------------------------------------------------------------------------------------
# Compiled for two v5e chips (libtpu)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_report():
    if not _have_libtpu():
        pytest.skip(f"libtpu is not installed here: {chips.LIBTPU_HINT}")
    return compile_lib.compile_report(small_config(), "v5e:2x2")


# One column's maps at each exchange of the small net (width 0.125, 32 px): conv3 reads pool2, 7x7x16;
# fc6 reads pool5, 3x3x16; fc7 and fc8 read fc6 / fc7, 256 units.  bfloat16: 2 bytes each.
SMALL_FLOATS = {"conv3": 7 * 7 * 16, "fc6": 3 * 3 * 16, "fc7": 256, "fc8": 256}


@needs_libtpu
def test_two_column_exchanges_only_where_the_paper_does(small_report):
    """On TPU the split exchanges at conv3, fc6, fc7 and fc8 and nowhere else (no conv1, conv2, conv4,
    conv5, LRN or pooling), forward and backward, and each forward gather sends one column's maps."""
    r = small_report
    assert r["formulation"] == "plain" and r["device_kind"].startswith("TPU v5")
    cs = r["collectives"]
    assert cs and all(c["axis"] == "model" and c["layer"] in PAPER_LAYERS for c in cs), cs
    fwd = {c["layer"]: c for c in cs if c["pass"] == "fwd"}
    assert sorted(fwd) == sorted(PAPER_LAYERS) and all(c["op"] == "all-gather" for c in fwd.values())
    for layer, floats in SMALL_FLOATS.items():
        assert fwd[layer]["sent_bytes_per_image"] == 2 * floats, (layer, fwd[layer])
    bwd = {c["layer"] for c in cs if c["pass"] == "bwd"}
    assert bwd == {"conv3", "fc6", "fc7"}, cs          # fc8's gather is invarying: no gradient exchange
    for layer in bwd:                                   # each chip receives its own column's gradient
        sent = sum(c["sent_bytes_per_image"] for c in cs if c["pass"] == "bwd" and c["layer"] == layer)
        assert sent >= 2 * SMALL_FLOATS[layer], (layer, cs)


@needs_libtpu
def test_memory_flops_and_roofline_by_hand(small_report):
    r, chip = small_report, chips.CHIPS["v5e"]
    assert (chip.peak_bf16_flops, chip.hbm_bytes, chip.hbm_bytes_per_second, chip.link_bytes_per_second) == (
        197e12, 16e9, 819e9, 200e9)                     # cloud.google.com/tpu/docs/v5e; ICI: 400 GB/s both ways
    # parameters per column, by hand from the layer shapes (widths 6-16-24-24-16, fc 256; 32 px small stem)
    column = ((5 * 5 * 3 * 6 + 6) + (5 * 5 * 6 * 16 + 16) + (3 * 3 * 32 * 24 + 24) + (3 * 3 * 24 * 24 + 24)
              + (3 * 3 * 24 * 16 + 16) + (3 * 3 * 32 * 256 + 256) + (512 * 256 + 256))
    fc8 = 512 * 10 + 10
    state = 2 * 4 * (column + fc8)                      # float32 parameters and velocity: one column + fc8 per chip
    batch = BATCH * (32 * 32 * 3 + 4 + 4)               # uint8 images, int32 labels and positions: all on each chip
    m = r["memory_per_device"]
    assert m["arguments"] >= state + batch              # XLA:TPU pads arrays to its tiles: at least this
    assert m["aliased"] >= state                        # the state is donated
    assert m["total"] == m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"] + m["generated_code"]
    assert m["headroom"] == 16e9 - m["total"]
    # the model's FLOPs per chip: 6 x multiply-adds per image (by hand) x BATCH images / 2 chips
    macs_column = (32 * 32 * 6 * 75 + 15 * 15 * 16 * 150 + 7 * 7 * 24 * 288 + 7 * 7 * 24 * 216 + 7 * 7 * 16 * 216
                   + 288 * 256 + 512 * 256)
    macs = 2 * macs_column + 512 * 10
    f = r["flops_per_device"]
    assert r["macs_per_image"] == macs and f["model"] == 6 * macs * BATCH / 2
    assert 0.5 < f["ratio"] < 1.5 and f["ratio"] == f["xla"] / f["model"]
    # the roofline, by hand: bytes each chip sends = BATCH images x (the four gathers + three reduce-scatters)
    p = r["predicted"]
    sent = r["sent_bytes_per_device"]
    f_ = SMALL_FLOATS
    exact = BATCH * 2 * (2 * f_["conv3"] + 2 * f_["fc6"] + 2 * f_["fc7"] + f_["fc8"])
    assert sent >= exact and sent == sum(c["sent_bytes_per_device"] for c in r["collectives"])
    compute, memory, exchange = f["xla"] / 197e12, r["bytes_accessed_per_device"] / 819e9, sent / 200e9
    assert p["compute_seconds"] == pytest.approx(compute, rel=1e-12)
    assert p["memory_seconds"] == pytest.approx(memory, rel=1e-12)
    assert p["exchange_seconds"] == pytest.approx(exchange, rel=1e-12)
    serial, overlapped = max(compute, memory) + exchange, max(compute, memory, exchange)
    assert p["step_seconds_not_overlapped"] == pytest.approx(serial, rel=1e-12)
    assert p["step_seconds_overlapped"] == pytest.approx(overlapped, rel=1e-12)
    assert p["exchange_share"] == pytest.approx(exchange / serial, rel=1e-12)
    assert p["images_per_second_per_chip_not_overlapped"] == pytest.approx(BATCH / serial / 2, rel=1e-12)
    assert p["images_per_second_per_chip_overlapped"] == pytest.approx(BATCH / overlapped / 2, rel=1e-12)
    assert "not a measurement" in p["label"] and "bf16 peak" in p["precision"]


@needs_libtpu
def test_programs_for_tpu_hold_the_plain_formulation():
    """The train step lowered for TPU chips holds XLA's max-pool gradient (select-and-scatter) and, for
    LeNet-5, convolutions; lowered for this CPU it holds neither (written-out gradients, patch matmuls)."""
    from alexnet_jax import parallel
    from alexnet_jax.trainer import Trainer

    for config, plain in ((small_config(mesh_model=1), "select_and_scatter"),
                          (get_config("lenet5_digits").replace(batch_size=8), "stablehlo.convolution")):
        config = config.replace(mesh_data=1, mesh_model=1)
        texts = {}
        for where, trainer in (("tpu", compile_lib.build_trainer(config, "v5e:2x2")),
                               ("cpu", Trainer.build(config, parallel.make_mesh(1, 1), augment=None))):
            b = trainer.plan.batch_size
            batch = compile_lib._abstract_batch(trainer, train=True) if trainer.augment else {
                "image": jax.ShapeDtypeStruct((b, *trainer.input_shape), jnp.float32),
                "label": jax.ShapeDtypeStruct((b,), jnp.int32)}
            texts[where] = trainer.train_step.lower(trainer.abstract_state, batch).as_text()
        assert plain in texts["tpu"] and plain not in texts["cpu"], (config.model, plain)


# ------------------------------------------------------------------------------------------------
# Full size (slow)
# ------------------------------------------------------------------------------------------------
# K12 Fig. 2 / §3.5: floats per image one column sends the other at each exchange (conv3 reads 13x13x128
# pool2 maps, fc6 6x6x128 pool5 maps, fc7 and fc8 2048 units).
PAPER_FLOATS = {"conv3": 13 * 13 * 128, "fc6": 6 * 6 * 128, "fc7": 2048, "fc8": 2048}
PAPER_PARAMS = 60_965_224       # K12 (derived layer by layer, experiments/REPRODUCTION.md)
FC8_PARAMS = 4096 * 1000 + 1000


@needs_libtpu
@pytest.mark.slow
def test_full_size_exchanges_the_papers_volumes():
    """The 2012 net at 227, bfloat16, batch 128 on two v5e chips: every exchange is exactly the paper's
    floats per image (bfloat16: 2 bytes), forward and backward, and the arguments are the state by hand."""
    config = apply_overrides(get_config("alexnet_imagenet"), ["input_size=227", "dtype=bfloat16", "batch_size=128",
                                                             "mesh_data=1", "mesh_model=2"])
    r = compile_lib.compile_report(config, "v5e:2x2")
    cs = r["collectives"]
    got = {(c["layer"], c["pass"]): c["sent_bytes_per_image"] for c in cs}
    want = {(k, "fwd"): 2 * v for k, v in PAPER_FLOATS.items()}
    want.update({(k, "bwd"): 2 * v for k, v in PAPER_FLOATS.items() if k != "fc8"})
    assert got == want and len(cs) == 7, cs
    per_chip = (PAPER_PARAMS - FC8_PARAMS) // 2 + FC8_PARAMS          # one column of conv1..fc7, all of fc8
    state = 2 * 4 * per_chip
    batch = 128 * (256 * 256 * 3 + 8)
    assert state + batch <= r["memory_per_device"]["arguments"] <= 1.02 * (state + batch)


@needs_libtpu
@pytest.mark.slow
@pytest.mark.parametrize("model,size", [("alexnet_half", 227), ("alexnet_owt", 224), ("alexnet_keras", 224),
                                        ("alexnet_bn", 227), ("lenet5", 32), ("lenet5_modern", 32)])
def test_every_model_compiles_for_tpu(model, size):
    """Each model's train step at its published size compiles for one v5e chip; the one-column nets are
    data-parallel (no model-axis exchange) and LeNet-5 holds no collective on one chip."""
    base = "lenet5_digits" if model.startswith("lenet") else "alexnet_imagenet"
    sets = [f"model={model}", f"input_size={size}", "batch_size=32", "mesh_data=1", "mesh_model=1"]
    if model == "lenet5_modern":
        sets.append("head=softmax")
    r = compile_lib.compile_report(apply_overrides(get_config(base), sets), "v5e:2x2")
    assert r["collectives"] == [] and r["memory_per_device"]["headroom"] > 0
    assert math.isfinite(r["predicted"]["step_seconds_overlapped"])


@needs_libtpu
@pytest.mark.slow
def test_eval_steps_compile_with_ten_crops():
    r = compile_lib.compile_report(small_config(), "v5e:2x2", eval=True)
    ten = r["eval_steps"]["eval_ten_crop"]
    assert {c["layer"] for c in ten["collectives"]} == set(PAPER_LAYERS)
    assert {c["pass"] for c in ten["collectives"]} == {"fwd"}
    fwd = {c["layer"]: c["sent_bytes_per_image"] for c in ten["collectives"]}
    assert fwd == {k: 2 * v for k, v in SMALL_FLOATS.items()}     # per view: 10 views of BATCH images


# ------------------------------------------------------------------------------------------------
# The HLO forms of the two compilers (written by hand after XLA:TPU's and XLA:GPU's output)
# ------------------------------------------------------------------------------------------------
TPU_AND_GPU_FORMS = """
%all-reduce-scatter (input: bf16[2,8,3,3,16]) -> bf16[10,8,16] {
  %input = bf16[2,8,3,3,16]{4,1,3,2,0:T(8,128)(2,1)} parameter(0)
  %bitcast.1 = bf16[18,8,16]{2,1,0:T(8,128)(2,1)} bitcast(%input)
  %pad.1 = bf16[20,8,16]{2,1,0:T(8,128)(2,1)} pad(%bitcast.1, %c0), padding=0_2x0_0x0_0
  %all-reduce.1 = bf16[20,8,16]{2,1,0:T(8,128)(2,1)} all-reduce(%pad.1), channel_id=7, replica_groups={{0,1}}, to_apply=%add
  ROOT %dynamic-slice.1 = bf16[10,8,16]{2,1,0:T(8,128)(2,1)} dynamic-slice(%all-reduce.1, %o, %z, %z), dynamic_slice_sizes={10,8,16}
}

ENTRY %main (p: bf16[2,8,3,3,16]) -> bf16[11,8,16] {
  %copy.1 = bf16[2,8,3,3,16]{4,1,3,2,0} copy(%p), metadata={op_name="jit(train_step)/transpose(jvp())/shard_map/fc6/add_any"}
  %fusion = bf16[10,8,16]{2,1,0:T(8,128)(2,1)} fusion(%copy.1), kind=kCustom, calls=%all-reduce-scatter
  %slice.1 = bf16[1,8,16]{2,1,0} slice(%fusion), slice={[9:10], [0:8], [0:16]}
  %cp-start = (bf16[1,8,16]{2,1,0}, bf16[1,8,16]{2,1,0}, u32[], u32[]) collective-permute-start(%slice.1), source_target_pairs={{0,1}}
  %cp-done = bf16[1,8,16]{2,1,0} collective-permute-done(%cp-start)
  %rs-start = (bf16[2,16,256]{2,1,0}, bf16[1,16,256]{2,1,0}) reduce-scatter-start(%g), channel_id=3, replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_1'}, dimensions={0}, to_apply=%add, metadata={op_name="jit(train_step)/transpose(jvp())/shard_map/fc7/reduce_scatter"}
  ROOT %c = bf16[11,8,16]{2,1,0} concatenate(%cp-done, %fusion), dimensions={0}
}
"""  # noqa: E501


def test_comms_reads_the_tpu_and_gpu_forms():
    """XLA:TPU's fused reduce-scatter (an all-reduce of a padded buffer, sliced) is one reduce-scatter of the
    fusion's result, its body's all-reduce is not counted again, and metadata-less ops take their operand's
    layer; XLA:GPU's mesh replica groups and async reduce-scatter results are read."""
    from alexnet_jax import comms

    rep = comms.analyze(TPU_AND_GPU_FORMS, {"data": 2, "model": 2})
    got = [(c.op, c.shape, c.axis, c.layer, c.backward, c.sent) for c in rep.collectives]
    assert got == [("reduce-scatter", "bf16[10,8,16]", "model", "fc6", True, 2560.0),
                   ("collective-permute", "bf16[1,8,16]", "model", "fc6", True, 256.0),
                   ("reduce-scatter", "bf16[1,16,256]", "model", "fc7", True, 8192.0)]


@needs_cuda_plugin
@pytest.mark.slow
def test_two_column_on_two_h100s():
    """The same small two-column step compiled by XLA:GPU for two H100s (no GPU here): the paper's exchanges
    only, one column's maps per forward gather; the roofline computes with the model's FLOPs."""
    r = compile_lib.compile_report(small_config(), "h100:2")
    assert r["platform"] == "gpu" and r["formulation"] == "plain" and "H100" in r["device_kind"]
    cs = r["collectives"]
    assert all(c["axis"] == "model" and c["layer"] in PAPER_LAYERS for c in cs), cs
    got = {(c["layer"], c["pass"]): c["sent_bytes_per_image"] for c in cs}
    want = {(k, "fwd"): 2 * v for k, v in SMALL_FLOATS.items()}
    want.update({(k, "bwd"): 2 * v for k, v in SMALL_FLOATS.items() if k != "fc8"})
    assert got == want and len(cs) == 7, cs
    p, f = r["predicted"], r["flops_per_device"]
    assert p["compute_seconds"] == pytest.approx(f["model"] / 989.4e12, rel=1e-12)
    assert p["exchange_seconds"] == pytest.approx(r["sent_bytes_per_device"] / 450e9, rel=1e-12)
    assert r["memory_per_device"]["headroom"] == 80e9 - r["memory_per_device"]["total"]
