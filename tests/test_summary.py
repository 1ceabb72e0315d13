"""`alexnet_jax.summary` and the `summary` CLI against the published counts (LC98 §II.B; REPRODUCTION.md)."""

from __future__ import annotations

import json

import pytest
from flax import nnx

import alexnet_jax.summary as summary_mod
from alexnet_jax.cli import main
from alexnet_jax.models import create_model

# derived layer by layer (two-GPU AlexNet, 227x227): layer -> (MACs, params)
ALEXNET_TABLE = {
    "conv1": (105_415_200, 34_944), "conv2": (223_948_800, 307_456), "conv3": (149_520_384, 885_120),
    "conv4": (112_140_288, 663_936), "conv5": (74_760_192, 442_624), "fc6": (37_748_736, 37_752_832),
    "fc7": (16_777_216, 16_781_312), "fc8": (4_096_000, 4_097_000),
}
# derived layer by layer (torchvision alexnet, 224x224)
OWT_TABLE = {
    "conv1": (70_276_800, 23_296), "conv2": (223_948_800, 307_392), "conv3": (112_140_288, 663_936),
    "conv4": (149_520_384, 884_992), "conv5": (99_680_256, 590_080), "fc6": (37_748_736, 37_752_832),
    "fc7": (16_777_216, 16_781_312), "fc8": (4_096_000, 4_097_000),
}
# LC98 §II.B (LC98): trainable parameters per layer; the RBF centres are fixed
LENET_PARAMS = {"C1": 156, "S2": 12, "C3": 1516, "S4": 32, "C5": 48120, "F6": 10164}

@pytest.fixture
def abstract_models(monkeypatch):
    """summarize() materialises the full model (~61M random numbers, seconds on a CPU) although it
    only needs shapes: build it with nnx.eval_shape instead.  Everything summarize counts (the
    traced jaxpr, the parameter shapes) is unchanged; the CLI test below runs the real path."""
    monkeypatch.setattr(summary_mod, "create_model",
                        lambda *a, **kw: nnx.eval_shape(lambda: create_model(*a, **kw)))


def _rows(s):
    return {r["layer"]: (r["macs"], r["params"]) for r in s["layers"]}


def test_alexnet_published_counts(abstract_models):
    s = summary_mod.summarize("alexnet")
    assert s["input_size"] == 227 and s["num_classes"] == 1000
    assert s["params"] == 60_965_224
    assert s["macs"] == 724_406_816
    assert _rows(s) == ALEXNET_TABLE
    assert sum(m for m, _ in ALEXNET_TABLE.values()) == 724_406_816
    assert sum(p for _, p in ALEXNET_TABLE.values()) == 60_965_224
    # per-column output shapes: 48 / 128 / 192 / 192 / 128 maps per GPU (K12 Fig. 2, §3.5)
    shapes = {r["layer"]: r["output_shape"] for r in s["layers"]}
    assert shapes["conv1"] == [55, 55, 48] and shapes["conv2"] == [27, 27, 128]
    assert shapes["conv5"] == [13, 13, 128] and shapes["fc8"] == [1000]


def test_alexnet_owt_published_counts(abstract_models):
    s = summary_mod.summarize("alexnet_owt")
    assert s["input_size"] == 224
    assert s["params"] == 61_100_840
    assert s["macs"] == 714_188_480
    assert _rows(s) == OWT_TABLE


def test_lenet5_rbf_published_params():
    s = summary_mod.summarize("lenet5", head="rbf")
    assert s["params"] == 60_000
    rows = {r["layer"]: r["params"] for r in s["layers"]}
    for layer, n in LENET_PARAMS.items():
        assert rows[layer] == n, layer


def test_cli_summary_alexnet(capsys):
    assert main(["summary", "alexnet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    last = json.loads(out[-1])
    assert last["model"] == "alexnet"
    assert last["params"] == 60_965_224
    assert last["macs"] == 724_406_816
    # the table above it: a row per layer and a total row with the same numbers (thousands separators)
    table = "\n".join(out[:-1])
    for layer in ALEXNET_TABLE:
        assert any(line.split()[0] == layer for line in out[:-1] if line.strip()), layer
    total = [line for line in out[:-1] if line.startswith("total")]
    assert total and "60,965,224" in total[0] and "724,406,816" in total[0]
    assert "alexnet" in table.splitlines()[0]


def test_summary_says_which_shapes_are_per_column(capsys):
    from alexnet_jax import cli

    assert cli.main(["summary", "alexnet"]) == 0
    out = capsys.readouterr().out
    assert "conv1       55x55x48 (per column, x2)" in out and "fc8         1000 " in out
    assert "2 columns: parameters and multiply-adds count every column" in out


def test_alexnet_224_published_counts(abstract_models):
    """derived layer by layer: the same count holds at 224 with cuda-convnet's 55x55 conv1."""
    s = summary_mod.summarize("alexnet", input_size=224)
    assert (s["params"], s["macs"]) == (60_965_224, 724_406_816)
    assert _rows(s) == ALEXNET_TABLE
