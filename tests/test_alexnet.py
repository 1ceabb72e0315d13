"""The AlexNet family checked against the published numbers and independent arithmetic.

References (experiments/REPRODUCTION.md): §1.2 (two-GPU connectivity, per-GPU widths,
cross-GPU traffic), §1.3 (224 vs 227; conv1 padding), §1.4 / §2.3 (per-column LRN), §1.5 / K12 §4.2
(dropout), §1.6 / K12 §5 (init), §1.9 (the one-GPU comparison net), §3.1 (torchvision), §5 (params
and MACs).  Expected values are published numbers or arithmetic written out in this file — never
the code's own output.  Full-size (227 / 224) nets are only traced (eval_shape / make_jaxpr), except
for one module-scoped real construction per init-statistics test.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alexnet_jax.models import create_model
from alexnet_jax.models.alexnet import concat_columns
from alexnet_jax.models.layers import lrn, max_pool

ALL_MODELS = ["alexnet", "alexnet_half", "alexnet_owt", "alexnet_keras", "alexnet_bn"]
DEFAULT_CLASSES = {"alexnet": 1000, "alexnet_half": 1000, "alexnet_owt": 1000, "alexnet_keras": 1000,
                   "alexnet_bn": 10}
SMALL = dict(width=0.125)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def abstract_model(name, **kw):
    """A full-size model with ShapeDtypeStruct leaves (nothing is materialised)."""
    return nnx.eval_shape(lambda: create_model(name, **kw))


def filled_model(name, seed=0, **kw):
    """The structure of `create_model(name, **kw)` with numpy-random values.

    Real initialisation compiles one random-number program per parameter shape, which costs seconds
    per model on a CPU; tests of structure and of the forward pass don't depend on the initial
    values, so they use this (kernels He-scaled so activations stay O(1), BN variances positive).
    The initialisation itself is tested on really created models (test_init_statistics).
    """
    graphdef, state = nnx.split(abstract_model(name, **kw))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        shape, key = leaf.shape, str(path[-1].key)
        if key == "var":
            v = rng.uniform(0.5, 1.5, shape)
        elif key in ("bias", "mean"):
            v = rng.normal(0.0, 0.1, shape)
        elif key == "scale":
            v = 1.0 + rng.normal(0.0, 0.1, shape)
        else:  # kernels: (cols?, kh, kw, in, out) or (cols?, in, out)
            fan_in = math.prod(shape[-4:-1]) if len(shape) >= 4 else shape[-2]
            v = rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
        return jnp.asarray(v, leaf.dtype)

    values = jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, values)
    return nnx.merge(graphdef, state)


def n_leaves(module, kind=nnx.Param) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, kind)))


def logits_shape(model, batch, size):
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)


@functools.partial(nnx.jit, static_argnames=("train", "rate"))
def apply(model, x, key, train=False, rate=None):
    """Jitted forward (nnx.jit: one compile per model structure; BatchNorm statistics propagate)."""
    kw = {} if rate is None else {"dropout_rate": rate}
    return model(x, train=train, dropout_key=key, **kw)


def _walk(jaxpr):
    for eqn in jaxpr.eqns:
        subs = []
        for v in eqn.params.values():
            for item in (v if isinstance(v, (tuple, list)) else (v,)):
                if isinstance(item, jax.extend.core.ClosedJaxpr):
                    subs.append(item.jaxpr)
                elif isinstance(item, jax.extend.core.Jaxpr):
                    subs.append(item)
        if subs:
            for s in subs:
                yield from _walk(s)
        else:
            yield eqn


LAYER_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc5", "fc6", "fc7", "fc8")


def traced_macs(model, size) -> dict[str, int]:
    """Per-layer multiply-adds of one image, counted from the traced forward (this file's own walker).

    conv: output elements x (kh*kw*in_channels/groups); dot: output elements x contracted length.
    """
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    closed = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)
    out: dict[str, int] = {}
    for eqn in _walk(closed.jaxpr):
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            o, rhs = eqn.outvars[0].aval, eqn.invars[1].aval
            dn = eqn.params["dimension_numbers"]
            cout = rhs.shape[dn.rhs_spec[0]]
            assert o.shape[dn.out_spec[1]] == cout
            n = math.prod(o.shape) * (math.prod(rhs.shape) // cout)
        elif name == "dot_general":
            o, lhs = eqn.outvars[0].aval, eqn.invars[0].aval
            (contract, _), _ = eqn.params["dimension_numbers"]
            n = math.prod(o.shape) * math.prod(lhs.shape[d] for d in contract)
        else:
            continue
        scopes = [p for p in str(eqn.source_info.name_stack).split("/") if p in LAYER_NAMES]
        assert scopes, f"{name} outside any layer scope: {eqn.source_info.name_stack}"
        out[scopes[-1]] = out.get(scopes[-1], 0) + n
    return out


def per_layer_params(model) -> dict[str, int]:
    return {n: n_leaves(getattr(model, n)) for n in LAYER_NAMES if hasattr(model, n)}


# Independent arithmetic ------------------------------------------------------------------------
def out_len(n, k, s, lo, hi):
    return math.floor((n + lo + hi - k) / s) + 1


def conv_row(hw, cout, k, cin):
    """(MACs, params) of a conv with a hw x hw output: hw^2 * cout * k^2 * cin, cout * (k^2 * cin + 1)."""
    return hw * hw * cout * k * k * cin, cout * (k * k * cin + 1)


def fc_row(fin, fout):
    return fin * fout, fin * fout + fout


# derived layer by layer (two-GPU AlexNet; the same at 224 with cuda-convnet's 55x55 conv1)
K12_TABLE = {
    "conv1": (105_415_200, 34_944), "conv2": (223_948_800, 307_456), "conv3": (149_520_384, 885_120),
    "conv4": (112_140_288, 663_936), "conv5": (74_760_192, 442_624), "fc6": (37_748_736, 37_752_832),
    "fc7": (16_777_216, 16_781_312), "fc8": (4_096_000, 4_097_000),
}
# derived layer by layer (torchvision alexnet, 224)
OWT_TABLE = {
    "conv1": (70_276_800, 23_296), "conv2": (223_948_800, 307_392), "conv3": (112_140_288, 663_936),
    "conv4": (149_520_384, 884_992), "conv5": (99_680_256, 590_080), "fc6": (37_748_736, 37_752_832),
    "fc7": (16_777_216, 16_781_312), "fc8": (4_096_000, 4_097_000),
}


def half_table():
    """K12 §3.2 fn. 2: half the kernels except the last conv layer (256); FC layers not halved.

    conv 48-128-192-192-256 with FULL connectivity (one GPU), fc 4096-4096-1000; 55x55 conv1.
    """
    s1 = 55
    s2 = out_len(s1, 3, 2, 0, 0)          # 27
    s3 = out_len(s2, 3, 2, 0, 0)          # 13
    s5 = out_len(s3, 3, 2, 0, 0)          # 6
    return {
        "conv1": conv_row(s1, 48, 11, 3), "conv2": conv_row(s2, 128, 5, 48),
        "conv3": conv_row(s3, 192, 3, 128), "conv4": conv_row(s3, 192, 3, 192),
        "conv5": conv_row(s3, 256, 3, 192), "fc6": fc_row(s5 * s5 * 256, 4096),
        "fc7": fc_row(4096, 4096), "fc8": fc_row(4096, 1000),
    }


def keras_table():
    """Module docstring: 64@11x11/4 VALID on 224 -> pool -> 192@5x5 same -> pool -> 384@3x3 same ->
    256@3x3 same -> pool -> dense 4096 -> 4096 -> 1000 (four conv layers)."""
    s1 = out_len(224, 11, 4, 0, 0)        # 54
    s2 = out_len(s1, 3, 2, 0, 0)          # 26
    s3 = out_len(s2, 3, 2, 0, 0)          # 12
    s4 = out_len(s3, 3, 2, 0, 0)          # 5
    return {
        "conv1": conv_row(s1, 64, 11, 3), "conv2": conv_row(s2, 192, 5, 64),
        "conv3": conv_row(s3, 384, 3, 192), "conv4": conv_row(s3, 256, 3, 384),
        "fc5": fc_row(s4 * s4 * 256, 4096), "fc6": fc_row(4096, 4096), "fc7": fc_row(4096, 1000),
    }


BN_CHANNELS = (96, 256, 384, 384, 256)


def bn_table(num_classes=10):
    """Module docstring: 96@11x11/4 valid on 227 -> pool -> 256@5x5 p2 -> pool -> 384, 384, 256 @3x3 p1
    -> pool -> 9216 -> 4096 -> 4096 -> num_classes; conv layers keep their biases."""
    s1 = out_len(227, 11, 4, 0, 0)        # 55
    s2 = out_len(s1, 3, 2, 0, 0)          # 27
    s3 = out_len(s2, 3, 2, 0, 0)          # 13
    s5 = out_len(s3, 3, 2, 0, 0)          # 6
    return {
        "conv1": conv_row(s1, 96, 11, 3), "conv2": conv_row(s2, 256, 5, 96),
        "conv3": conv_row(s3, 384, 3, 256), "conv4": conv_row(s3, 384, 3, 384),
        "conv5": conv_row(s3, 256, 3, 384), "fc6": fc_row(s5 * s5 * 256, 4096),
        "fc7": fc_row(4096, 4096), "fc8": fc_row(4096, num_classes),
    }


# ---------------------------------------------------------------------------------------------
# output shapes and dtypes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("size", [227, 224])
@pytest.mark.parametrize("classes", [None, 7])
def test_full_size_output_shape(name, size, classes):
    model = abstract_model(name, input_size=size, num_classes=classes)
    k = classes or DEFAULT_CLASSES[name]
    assert model.num_classes == k
    out = logits_shape(model, 2, size)
    assert out.shape == (2, k) and out.dtype == jnp.float32


@pytest.mark.parametrize("name", ALL_MODELS)
def test_small_forward_shapes_and_jit_agree(name):
    """Real forwards at 32 and 64 (width 0.125); the direct call and the jitted split/merge agree."""
    x32 = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    m = filled_model(name, input_size=32, num_classes=5, **SMALL)
    direct = m(x32)
    jitted = apply(m, x32, jax.random.key(0))
    assert direct.shape == jitted.shape == (2, 5) and direct.dtype == jitted.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(direct))) and np.abs(np.asarray(direct)).max() > 0
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(direct), rtol=1e-5, atol=1e-5)
    m64 = filled_model(name, input_size=64, **SMALL)     # after conv1 the same shapes as at 32
    y64 = m64(jax.random.normal(jax.random.key(2), (2, 64, 64, 3)))
    assert y64.shape == (2, DEFAULT_CLASSES[name]) and y64.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(y64)))


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("size", [32, 227])
def test_bfloat16_compute_float32_params_and_logits(name, size):
    m = abstract_model(name, input_size=size, dtype="bfloat16", **(SMALL if size < 100 else {}))
    assert {x.dtype for x in jax.tree.leaves(nnx.state(m, nnx.Param))} == {jnp.dtype(jnp.float32)}
    y = logits_shape(m, 2, size)
    assert y.dtype == jnp.float32 and y.shape == (2, DEFAULT_CLASSES[name])
    # the convolutions and matmuls really run in bfloat16
    graphdef, state = nnx.split(m)
    closed = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(
        state, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
    heavy = [e for e in _walk(closed.jaxpr) if e.primitive.name in ("conv_general_dilated", "dot_general")]
    assert len(heavy) >= 7
    assert all(v.aval.dtype == jnp.bfloat16 for e in heavy for v in e.invars)


def test_bfloat16_real_forward_close_to_float32():
    x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
    y16 = apply(filled_model("alexnet", input_size=32, dtype="bfloat16", **SMALL), x, jax.random.key(0))
    y32 = apply(filled_model("alexnet", input_size=32, **SMALL), x, jax.random.key(0))   # same values
    assert y16.dtype == jnp.float32 and y16.shape == y32.shape == (2, 1000)
    err = np.abs(np.asarray(y16) - np.asarray(y32)).max() / np.abs(np.asarray(y32)).max()
    assert 0 < err < 0.05


# ---------------------------------------------------------------------------------------------
# published parameter and MAC counts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [227, 224])
def test_alexnet_published_counts(size):
    """derived layer by layer: 60,965,224 params, 724,406,816 MACs, row by row, at 227 and at 224."""
    model = abstract_model("alexnet", input_size=size)
    assert sum(p for _, p in K12_TABLE.values()) == 60_965_224
    assert sum(m for m, _ in K12_TABLE.values()) == 724_406_816
    assert n_leaves(model) == 60_965_224
    macs = traced_macs(model, size)
    assert sum(macs.values()) == 724_406_816
    assert macs == {k: m for k, (m, _) in K12_TABLE.items()}
    assert per_layer_params(model) == {k: p for k, (_, p) in K12_TABLE.items()}


def test_alexnet_kernel_depths_encode_connectivity():
    """K12 Fig. 2, §3.5: conv2 5x5x48, conv4/conv5 3x3x192 (own GPU), conv3 3x3x256 (both GPUs)."""
    m = abstract_model("alexnet")
    assert m.conv1.kernel.shape == (2, 11, 11, 3, 48)
    assert m.conv2.kernel.shape == (2, 5, 5, 48, 128)
    assert m.conv3.kernel.shape == (2, 3, 3, 256, 192)
    assert m.conv4.kernel.shape == (2, 3, 3, 192, 192)
    assert m.conv5.kernel.shape == (2, 3, 3, 192, 128)
    assert m.fc6.kernel.shape == (2, 6 * 6 * 256, 2048)
    assert m.fc7.kernel.shape == (2, 4096, 2048)
    assert m.fc8.kernel.shape == (4096, 1000)


def test_alexnet_owt_published_counts():
    model = abstract_model("alexnet_owt")
    assert model.input_size == 224
    assert n_leaves(model) == 61_100_840
    macs = traced_macs(model, 224)
    assert sum(macs.values()) == 714_188_480
    assert macs == {k: m for k, (m, _) in OWT_TABLE.items()}
    assert per_layer_params(model) == {k: p for k, (_, p) in OWT_TABLE.items()}


@pytest.mark.parametrize("size", [227, 224])
def test_alexnet_half_counts(size):
    table = half_table()
    model = abstract_model("alexnet_half", input_size=size)
    assert n_leaves(model) == sum(p for _, p in table.values())
    assert traced_macs(model, size) == {k: m for k, (m, _) in table.items()}
    assert per_layer_params(model) == {k: p for k, (_, p) in table.items()}
    # footnote 2: "roughly the same number of parameters" as the two-GPU net
    assert abs(sum(p for _, p in table.values()) / 60_965_224 - 1) < 0.05


def test_alexnet_keras_counts():
    table = keras_table()
    model = abstract_model("alexnet_keras")
    assert model.input_size == 224
    assert n_leaves(model) == sum(p for _, p in table.values())
    assert traced_macs(model, 224) == {k: m for k, (m, _) in table.items()}
    assert per_layer_params(model) == {k: p for k, (_, p) in table.items()}


def test_alexnet_bn_counts():
    table = bn_table()
    model = abstract_model("alexnet_bn")
    assert model.input_size == 227 and model.num_classes == 10
    bn_scale_bias = 2 * sum(BN_CHANNELS)           # gamma and beta per channel are parameters
    assert n_leaves(model) == sum(p for _, p in table.values()) + bn_scale_bias
    assert n_leaves(model, nnx.BatchStat) == 2 * sum(BN_CHANNELS)   # running mean / var: not params
    for name, ch in zip(("conv1", "conv2", "conv3", "conv4", "conv5"), BN_CHANNELS, strict=True):
        bn = getattr(model, f"bn_{name}")
        assert n_leaves(bn) == 2 * ch and n_leaves(bn, nnx.BatchStat) == 2 * ch
    assert traced_macs(model, 227) == {k: m for k, (m, _) in table.items()}
    assert per_layer_params(model) == {k: p for k, (_, p) in table.items()}


# ---------------------------------------------------------------------------------------------
# conv1 sizing: 227 VALID, 224 + 3 px bottom/right (K12 §3.5 and the author's code)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["alexnet", "alexnet_half"])
@pytest.mark.parametrize("size, pad", [(227, ((0, 0), (0, 0))), (224, ((0, 3), (0, 3)))])
def test_conv1_is_55x55(name, size, pad):
    m = abstract_model(name, input_size=size)
    assert tuple(map(tuple, m.conv1.padding)) == pad
    assert out_len(size, 11, 4, *pad[0]) == 55
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    graphdef, state = nnx.split(m)
    if name == "alexnet":
        assert m.conv1_padding == pad
        y = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).conv1(0, x), state, x)
        assert y.shape == (1, 55, 55, 48)
    else:
        y = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).conv1(x), state, x)
        assert y.shape == (1, 55, 55, 48)


def test_owt_conv1_padding_2():
    m = abstract_model("alexnet_owt")
    assert tuple(map(tuple, m.conv1.padding)) == ((2, 2), (2, 2))
    graphdef, state = nnx.split(m)
    y = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).conv1(x), state,
                       jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
    assert y.shape == (1, 55, 55, 64)


def test_conv1_at_224_is_zero_padded_bottom_right():
    """cuda-convnet's ceil sizing == a 224 image padded with 3 zero pixels at the bottom/right."""
    m = filled_model("alexnet", input_size=224, **SMALL)
    x = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)
    y = np.asarray(m.conv1(1, jnp.asarray(x)), np.float64)
    assert y.shape == (1, 55, 55, 6)
    xp = np.zeros((227, 227, 3))
    xp[:224, :224] = x[0]
    w = np.asarray(m.conv1.kernel[1], np.float64)          # (11, 11, 3, 6)
    b = np.asarray(m.conv1.bias[1], np.float64)
    for i, j in [(0, 0), (54, 54), (54, 0), (0, 54), (27, 13)]:
        want = np.einsum("hwc,hwco->o", xp[4 * i:4 * i + 11, 4 * j:4 * j + 11], w) + b
        np.testing.assert_allclose(y[0, i, j], want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# two-column connectivity (K12 §3.2 / §3.5, K12 Fig. 2, §3.5)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_alexnet():
    """input 32, width 0.125 (6-16-24-24-16 maps and 256 FC units per column), float32."""
    return filled_model("alexnet", input_size=32, **SMALL)


@pytest.fixture(scope="module")
def x_small():
    return jax.random.normal(jax.random.key(42), (2, 32, 32, 3))


def _vjp(fn, *args, seed=0):
    """VJP with a random cotangent: zero then means a zero Jacobian (almost surely)."""
    y, pull = jax.vjp(fn, *args)
    return pull(jax.random.normal(jax.random.key(seed), y.shape, y.dtype))


def tapped(model, x, inject=None, **kw):
    """Run the model with an exchange that records (and optionally perturbs) each column's maps."""
    records = []

    def exchange(hs, layer=""):
        i = len(records)
        hs = [h + inject[(i, c)] if inject and (i, c) in inject else h for c, h in enumerate(hs)]
        records.append(hs)
        return concat_columns(hs)

    logits = model(x, exchange=exchange, **kw)
    return records, logits


@functools.partial(nnx.jit, static_argnames=("train",))
def tapped_apply(model, x, key, train=False):
    return tapped(model, x, train=train, dropout_key=key)


def test_conv2_reads_only_its_own_column(small_alexnet, x_small):
    m = small_alexnet

    def conv2_from_conv1(a0, a1):
        # the model's own per-column stages: ReLU -> LRN -> pool -> conv2 (model.conv2(c, .))
        return [m.conv2(c, max_pool(lrn(jax.nn.relu(a)))) for c, a in enumerate((a0, a1))]

    @jax.jit
    def run(x):
        a = [m.conv1(c, x) for c in range(2)]
        out = conv2_from_conv1(*a)
        mine = [max_pool(lrn(jax.nn.relu(o))) for o in out]
        model = [m.column_conv12(c, x) for c in range(2)]
        return (mine, model, _vjp(lambda a0, a1: conv2_from_conv1(a0, a1)[0], *a),
                _vjp(lambda a0, a1: conv2_from_conv1(a0, a1)[1], *a, seed=1))

    mine, model, (g0, g1), (h0, h1) = run(x_small)
    for c in range(2):  # the construction is the model's column_conv12
        np.testing.assert_allclose(np.asarray(mine[c]), np.asarray(model[c]), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(g1) == 0.0)            # column 1's conv1 maps never reach column 0's conv2
    assert np.abs(np.asarray(g0)).max() > 0
    assert np.all(np.asarray(h0) == 0.0) and np.abs(np.asarray(h1)).max() > 0


def test_conv3_reads_both_columns_conv4_conv5_only_their_own(small_alexnet, x_small):
    m = small_alexnet

    @jax.jit
    def run(x):
        pools = [m.column_conv12(c, x) for c in range(2)]
        g3 = _vjp(lambda p0, p1: m.conv3(0, concat_columns([p0, p1])), *pools)
        h3 = [jax.nn.relu(m.conv3(c, concat_columns(pools))) for c in range(2)]

        def conv45(h0, h1):  # the model's own conv4 / conv5 per column
            return [m.conv5(c, jax.nn.relu(m.conv4(c, h))) for c, h in enumerate((h0, h1))]

        mine = [max_pool(jax.nn.relu(o)) for o in conv45(*h3)]
        model = [m.column_conv345(c, concat_columns(pools)) for c in range(2)]
        return g3, _vjp(lambda h0, h1: conv45(h0, h1)[0], *h3, seed=1), mine, model

    (g0, g1), (h0, h1), mine, model = run(x_small)
    assert np.abs(np.asarray(g0)).max() > 0 and np.abs(np.asarray(g1)).max() > 0   # conv3: both
    for c in range(2):
        np.testing.assert_allclose(np.asarray(mine[c]), np.asarray(model[c]), rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(h0)).max() > 0 and np.all(np.asarray(h1) == 0.0)     # conv4/5: own


def _perturb(model, layer, col, seed):
    """A copy of `model` whose `layer` has new random weights in column `col` only."""
    m2 = nnx.clone(model)
    rng = np.random.default_rng(seed)
    for leaf in ("kernel", "bias"):
        var = getattr(getattr(m2, layer), leaf)
        v = np.array(var.get_value())
        v[col] = rng.normal(0.0, np.abs(v[col]).mean() * 2 + 0.1, v[col].shape)
        var.set_value(jnp.asarray(v))
    return m2


def test_column_isolation_in_the_real_forward(small_alexnet, x_small):
    """Replace one column's weights of one layer and see which of column 0's exchanged tensors move.

    Runs the real forward (one compiled program); column 0's tensors must be bit-identical when they
    do not depend on the replaced weights.
    """
    k = jax.random.key(0)
    base_rec, base_logits = tapped_apply(small_alexnet, x_small, k)
    stages = ("pool2", "pool5", "fc6", "fc7", "logits")

    def moved(layer, col):
        rec, logits = tapped_apply(_perturb(small_alexnet, layer, col, seed=col), x_small, k)
        col0 = [r[0] for r in rec] + [logits]
        base = [r[0] for r in base_rec] + [base_logits]
        return {st: not np.array_equal(np.asarray(a), np.asarray(b))
                for st, a, b in zip(stages, col0, base, strict=True)}

    def depends(*sts):
        return {st: st in sts for st in stages}

    downstream = ("pool5", "fc6", "fc7", "logits")
    # conv1 / conv2 of column 1: invisible to column 0 until conv3 reads both columns' pool2
    assert moved("conv1", 1) == depends(*downstream)
    assert moved("conv2", 1) == depends(*downstream)
    # conv3 / conv4 / conv5 of column 1: invisible to column 0 until fc6 reads both pool5 halves
    for layer in ("conv3", "conv4", "conv5"):
        assert moved(layer, 1) == depends("fc6", "fc7", "logits"), layer
    # fc6 / fc7 of column 1: read by column 0's next layer
    assert moved("fc6", 1) == depends("fc7", "logits")
    assert moved("fc7", 1) == depends("logits")
    # sanity: column 0's own weights move its own tensor at the next exchange
    assert moved("conv1", 0) == depends("pool2", *downstream)
    assert moved("conv4", 0) == depends(*downstream)
    assert moved("fc6", 0) == depends("fc6", "fc7", "logits")


def test_lrn_is_per_column(small_alexnet):
    """Each GPU normalises only its own maps (CC2 rnorm1a/b, channels=48), not Caffe's single LRN
    over all 96 channels that crosses the 47|48 boundary (Caffe's bvlc_alexnet)."""
    m = small_alexnet
    x = 30.0 * jax.random.normal(jax.random.key(5), (2, 32, 32, 3))   # large maps: LRN matters

    def conv2_stage(h):
        return max_pool(lrn(jax.nn.relu(m.conv2(0, max_pool(h)))))

    @jax.jit
    def run(x):
        a = [jax.nn.relu(m.conv1(c, x)) for c in range(2)]
        n = a[0].shape[-1]
        bumped = a[1] * 3.0 + 1.0                                     # perturb column 1's maps
        per_col = lrn(a[0])
        joint = lrn(jnp.concatenate([a[0], a[1]], -1))[..., :n]       # one LRN over both columns
        joint_b = lrn(jnp.concatenate([a[0], bumped], -1))[..., :n]
        return (a[0], per_col, joint, joint_b, m.column_conv12(0, x), conv2_stage(per_col),
                conv2_stage(joint))

    a0, per_col, joint, joint_b, model, via_per_col, via_joint = map(np.asarray, run(x))
    n = a0.shape[-1]
    assert 1e-4 * (a0[..., -5:] ** 2).sum(-1).max() > 1.0     # the denominator is far from k = 2
    # per-column LRN of column 0 (K12 §3.3 with N = column 0's maps) is a function of them alone
    a64, ref = a0.astype(np.float64), np.empty(a0.shape)
    for i in range(n):
        s = (a64[..., max(0, i - 2):min(n - 1, i + 2) + 1] ** 2).sum(-1)
        ref[..., i] = a64[..., i] / (2.0 + 1e-4 * s) ** 0.75
    np.testing.assert_allclose(per_col, ref, rtol=1e-5, atol=1e-6)
    # a joint LRN's last two channels of column 0 change when column 1 changes, the others don't
    np.testing.assert_array_equal(joint[..., :n - 2], joint_b[..., :n - 2])
    assert np.abs(joint[..., n - 1] - joint_b[..., n - 1]).max() > 1e-3
    assert np.abs(joint[..., n - 1] - per_col[..., n - 1]).max() > 1e-3
    # the model's column 0 is the per-column variant, not the joint one
    np.testing.assert_allclose(model, via_per_col, rtol=1e-5, atol=1e-6)
    assert np.abs(model - via_joint).max() > 1e-3 * np.abs(model).max()


# ---------------------------------------------------------------------------------------------
# the exchange hook
# ---------------------------------------------------------------------------------------------
def test_exchange_called_four_times_full_size():
    """conv3, fc6, fc7, fc8: per-column 13x13x128, 6x6x128, 2048, 2048 (K12 Fig. 2, §3.5)."""
    m = abstract_model("alexnet")
    graphdef, state = nnx.split(m)
    seen = []

    names = []

    def exchange(hs, layer=""):
        seen.append([tuple(h.shape) for h in hs])
        names.append(layer)
        return concat_columns(hs)

    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, exchange=exchange), state,
                         jax.ShapeDtypeStruct((2, 227, 227, 3), jnp.float32))
    assert out.shape == (2, 1000)
    assert seen == [[(2, 13, 13, 128)] * 2, [(2, 6, 6, 128)] * 2, [(2, 2048)] * 2, [(2, 2048)] * 2]
    assert names == ["conv3", "fc6", "fc7", "fc8"]  # the layers that read both columns (K12 §3.5)
    # floats each GPU receives per image: 21,632 / 4,608 / 2,048 / 2,048 (K12 Fig. 2, §3.5)
    assert [math.prod(s[1][1:]) for s in seen] == [21_632, 4_608, 2_048, 2_048]


def test_exchange_called_four_times_small(small_alexnet, x_small):
    records, logits = tapped_apply(small_alexnet, x_small, jax.random.key(0))
    assert len(records) == 4
    assert [[tuple(h.shape) for h in r] for r in records] == [
        [(2, 7, 7, 16)] * 2, [(2, 3, 3, 16)] * 2, [(2, 256)] * 2, [(2, 256)] * 2]
    assert logits.shape == (2, 1000)


# ---------------------------------------------------------------------------------------------
# dropout (K12 §4.2: p = 0.5 on the first two FC layers)
# ---------------------------------------------------------------------------------------------
def test_dropout_masks(small_alexnet):
    k = jax.random.key(7)
    m6, m7 = small_alexnet.dropout_masks(k, 16)
    assert m6.shape == m7.shape == (2, 16, 256) and m6.dtype == jnp.bool_
    for mask in (m6, m7):
        assert abs(float(np.mean(np.asarray(mask))) - 0.5) < 0.03
    assert not np.array_equal(np.asarray(m6), np.asarray(m7))
    again = small_alexnet.dropout_masks(k, 16)
    assert np.array_equal(np.asarray(again[0]), np.asarray(m6))
    other = small_alexnet.dropout_masks(jax.random.key(8), 16)
    assert not np.array_equal(np.asarray(other[0]), np.asarray(m6))


def test_alexnet_dropout_on_fc6_fc7_outputs(small_alexnet, x_small):
    m, x, k = small_alexnet, x_small, jax.random.key(9)
    keep6, keep7 = (np.asarray(a) for a in m.dropout_masks(k, x.shape[0]))
    ev, ev_logits = tapped_apply(m, x, k)
    tr, tr_logits = tapped_apply(m, x, k, train=True)
    fc7_in = concat_columns(tr[2])
    for c in range(2):
        # inverted dropout: kept fc6 units are scaled by 1/(1-0.5), dropped ones are zero
        want6 = np.where(keep6[c], 2.0 * np.asarray(ev[2][c]), 0.0)
        np.testing.assert_allclose(np.asarray(tr[2][c]), want6, rtol=1e-5, atol=1e-6)
        fc7 = np.asarray(jax.nn.relu(m.fc7(c, fc7_in)))
        np.testing.assert_allclose(np.asarray(tr[3][c]), np.where(keep7[c], 2.0 * fc7, 0.0),
                                   rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(tr_logits), np.asarray(ev_logits))
    # same key -> same output; different key -> different output
    np.testing.assert_array_equal(np.asarray(tapped_apply(m, x, k, train=True)[1]), np.asarray(tr_logits))
    other = tapped_apply(m, x, jax.random.key(10), train=True)[1]
    assert not np.allclose(np.asarray(other), np.asarray(tr_logits))
    # eval: deterministic and without dropout, whatever the key
    np.testing.assert_array_equal(np.asarray(tapped_apply(m, x, k)[1]), np.asarray(ev_logits))
    ev_other_key = tapped_apply(m, x, jax.random.key(10))[1]
    np.testing.assert_array_equal(np.asarray(ev_other_key), np.asarray(ev_logits))
    with pytest.raises(ValueError):
        m(x, train=True)


def _random_bits_shapes(model, x, **kw):
    graphdef, state = nnx.split(model)
    closed = jax.make_jaxpr(lambda s, x, k: nnx.merge(graphdef, s)(x, dropout_key=k, **kw))(
        state, x, jax.random.key(0))
    return [tuple(e.outvars[0].aval.shape) for e in _walk(closed.jaxpr) if e.primitive.name == "random_bits"]


@pytest.mark.parametrize("name", ["alexnet_half", "alexnet_owt", "alexnet_keras"])
def test_one_column_dropout(name):
    m = filled_model(name, input_size=32, **SMALL)
    x = jax.random.normal(jax.random.key(11), (2, 32, 32, 3))
    k = jax.random.key(12)
    ev = apply(m, x, k)
    np.testing.assert_array_equal(np.asarray(apply(m, x, jax.random.key(1))), np.asarray(ev))
    tr = apply(m, x, k, train=True)
    np.testing.assert_array_equal(np.asarray(apply(m, x, k, train=True)), np.asarray(tr))
    bits = _random_bits_shapes(m, jax.ShapeDtypeStruct(x.shape, x.dtype), train=True)
    if name == "alexnet_keras":       # the Keras layout as written has no dropout
        assert bits == []
        np.testing.assert_array_equal(np.asarray(tr), np.asarray(ev))
        return
    assert not np.allclose(np.asarray(tr), np.asarray(ev))
    assert not np.allclose(np.asarray(apply(m, x, jax.random.key(13), train=True)), np.asarray(tr))
    if name == "alexnet_half":        # on the outputs of fc6 and fc7 (4096 * 0.125 = 512 units each)
        assert bits == [(2, 512), (2, 512)]
    else:                             # torchvision: before fc6 (6*6*32 flat features) and before fc7
        assert bits == [(2, 6 * 6 * 32), (2, 512)]


# ---------------------------------------------------------------------------------------------
# BatchNorm (alexnet_bn)
# ---------------------------------------------------------------------------------------------
def _stats(m):
    return {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(m, nnx.BatchStat))}


def test_alexnet_bn_train_updates_stats_and_eval_uses_them():
    m = filled_model("alexnet_bn", input_size=32, **SMALL)
    pair = jax.random.normal(jax.random.key(14), (2, 32, 32, 3)) + 0.5
    k = jax.random.key(15)
    before = _stats(m)
    assert len(before) == 10
    mean0, var0 = np.asarray(m.bn_conv1.mean, np.float64), np.asarray(m.bn_conv1.var, np.float64)
    # the input the model's conv1 sees (the unit-variance nets first divide by a per-channel std)
    std = getattr(m, "input_std", None)
    conv1_out = np.asarray(m.conv1(pair if std is None else pair / jnp.asarray(std).reshape(1, 1, 1, 3)), np.float64)
    # train mode: batch statistics (dropout off to isolate BN)
    tr = np.asarray(apply(m, pair, k, train=True, rate=0.0))
    after = _stats(m)
    assert all(not np.array_equal(before[p], after[p]) for p in before)
    # momentum 0.9 (torch's 0.1): running = 0.9 * running + 0.1 * batch statistic (biased variance)
    axes = (0, 1, 2)
    np.testing.assert_allclose(np.asarray(m.bn_conv1.mean), 0.9 * mean0 + 0.1 * conv1_out.mean(axis=axes),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(m.bn_conv1.var), 0.9 * var0 + 0.1 * conv1_out.var(axis=axes),
                               rtol=1e-4, atol=1e-5)
    alone = np.asarray(apply(m, pair[:1], k, train=True, rate=0.0))[0]
    assert np.abs(tr[0] - alone).max() > 1e-3 * np.abs(tr[0]).max()
    # eval mode: running statistics, so each example's logits ignore the rest of the batch
    frozen = _stats(m)
    ev = np.asarray(apply(m, pair, k))
    for i in range(2):
        np.testing.assert_allclose(ev[i], np.asarray(apply(m, pair[i:i + 1], k))[0], rtol=1e-5, atol=1e-5)
    assert all(np.array_equal(frozen[p], v) for p, v in _stats(m).items())


# ---------------------------------------------------------------------------------------------
# initialisation (K12 §5; K12 §5), on really created full-size models
# ---------------------------------------------------------------------------------------------
BIAS_ONE = {"conv2", "conv4", "conv5", "fc6", "fc7"}
BIAS_ZERO = {"conv1", "conv3", "fc8"}


@pytest.fixture(scope="module", params=["alexnet", "alexnet_half"])
def full_model(request):
    return request.param, nnx.jit(lambda: create_model(request.param, seed=0))()


def test_init_statistics(full_model):
    name, m = full_model
    assert n_leaves(m) == (60_965_224 if name == "alexnet" else sum(p for _, p in half_table().values()))
    for layer in sorted(BIAS_ONE | BIAS_ZERO):
        mod = getattr(m, layer)
        w = np.asarray(mod.kernel[...])
        b = np.asarray(mod.bias[...])
        # per column for the two-column layers (fc8 and all of alexnet_half are one-column)
        cols = [w[0], w[1]] if (name == "alexnet" and layer != "fc8") else [w]
        for wc in cols:
            wc = wc.ravel()
            n = wc.size
            mean = float(wc.sum(dtype=np.float64)) / n
            std = math.sqrt(float(np.dot(wc, wc)) / n - mean ** 2)
            assert abs(std / 0.01 - 1) < 0.02, (layer, std)
            assert abs(mean) < 5 * 0.01 / math.sqrt(n), (layer, mean)
            # Gaussian, not truncated or uniform: P(|w| < sigma) = 0.6827
            assert abs(np.count_nonzero(np.abs(wc) < 0.01) / n - 0.6827) < 0.01, layer
        assert np.all(b == (1.0 if layer in BIAS_ONE else 0.0)), layer


@pytest.mark.parametrize("name", ["alexnet_owt", "alexnet_bn", "alexnet_keras"])
def test_native_init_is_the_frameworks_default(name):
    """init=native: PyTorch's Conv2d/Linear default (torchvision's and the BatchNorm net: weights and biases
    U(-1/sqrt(F), 1/sqrt(F)), F the fan-in) and Keras' (Glorot-uniform weights, bound sqrt(6 / (F + F_out)),
    zero biases).  A uniform U(-a, a) has std a / sqrt(3) and P(|w| < a / 2) = 1 / 2."""
    m = create_model(name, num_classes=10, input_size=224, width=0.25, seed=0)
    for layer in [c[0] for c in m.conv_names] + [f[0] for f in m.fc_names]:
        mod = getattr(m, layer)
        w = np.asarray(mod.kernel[...], np.float64)
        b = np.asarray(mod.bias[...], np.float64)
        fan_in = int(np.prod(w.shape[:-1]))
        if name == "alexnet_keras":
            fan_out = int(np.prod(w.shape[:-2])) * w.shape[-1]
            a = math.sqrt(6.0 / (fan_in + fan_out))
            assert np.all(b == 0.0), layer
        else:
            a = 1.0 / math.sqrt(fan_in)
            assert np.abs(b).max() <= a and (b.size < 8 or np.std(b) > 0.3 * a), layer
        assert np.abs(w).max() <= a * (1 + 1e-6), layer
        n = w.size
        assert abs(w.std() / (a / math.sqrt(3)) - 1) < 5 / math.sqrt(n) + 0.01, (layer, w.std(), a)
        assert abs(np.count_nonzero(np.abs(w) < a / 2) / n - 0.5) < 5 / math.sqrt(n), layer


# ---------------------------------------------------------------------------------------------
# float32 gradients against float64 with the package's default XLA flags (alexnet_jax/__init__.py)
# ---------------------------------------------------------------------------------------------
_GRAD_VS_F64 = """
import json, sys
import numpy as np
import alexnet_jax, jax, jax.numpy as jnp
from flax import nnx
from alexnet_jax.models import create_model
from alexnet_jax.models.layers import lrn, max_pool
with nnx.use_eager_sharding(False):
    model = create_model("alexnet", num_classes=10, input_size=32, width=1.0, seed=0)
rng = np.random.default_rng(0)
x = rng.standard_normal((16, 32, 32, 3)).astype(np.float32) * 50
params = [np.asarray(a) for a in (model.conv1.kernel[...], model.conv1.bias[...], model.conv2.kernel[...],
                                  model.conv2.bias[...])]
DN = ("NHWC", "HWIO", "NHWC")
def conv(h, k):
    return jax.lax.conv_general_dilated(h, k, (1, 1), ((2, 2), (2, 2)), dimension_numbers=DN)
def column(p, x, c):  # the paper net's conv1 -> ReLU -> LRN -> pool -> conv2 -> ReLU -> LRN -> pool
    k1, b1, k2, b2 = p
    h = max_pool(lrn(jax.nn.relu(conv(x, k1[c]) + b1[c])))
    return max_pool(lrn(jax.nn.relu(conv(h, k2[c]) + b2[c])))
w = rng.standard_normal((2, 16, 7, 7, 128)).astype(np.float32)
loss = lambda p, x, w: sum(jnp.sum(column(p, x, c) * w[c]) for c in range(2))
g32 = jax.jit(jax.grad(loss))(params, x, w)
jax.config.update("jax_enable_x64", True)
g64 = jax.jit(jax.grad(loss))([a.astype(np.float64) for a in params], x.astype(np.float64), w.astype(np.float64))
err = [float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max()) for a, b in zip(g32, g64)]
print(json.dumps({"flags": alexnet_jax.os.environ.get("XLA_FLAGS", ""), "errors": err}))
"""


@pytest.mark.parametrize("ynn_convolutions", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_conv_relu_lrn_pool_gradients_match_float64(ynn_convolutions):
    """With the package's default XLA flags, conv1/conv2 kernel and bias gradients through conv -> ReLU
    -> LRN -> max-pool (twice, both columns, CIFAR size, batch 16) are float32-accurate against float64.

    XLA:CPU's default YNNPACK convolutions (jaxlib 0.10.2) got the conv1/conv2 kernel gradients of this
    chain wrong by ~1e-3 when the package's flag was introduced (2026-11-29); the YNNPACK case watches for
    that (xfail when it recurs).  It passes since at least 2026-12-02 (about 1e-6); the flag stays for
    speed (alexnet_jax/__init__.py).  Slow: it watches jaxlib, not the package, whose flags the default case
    checks."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    env["JAX_PLATFORMS"] = "cpu"
    if ynn_convolutions:
        env["XLA_FLAGS"] = "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"
    p = subprocess.run([sys.executable, "-c", _GRAD_VS_F64], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    if ynn_convolutions:
        assert "+individual_convolution" in out["flags"]
        if max(out["errors"]) > 1e-5:
            pytest.xfail(f"XLA:CPU YNNPACK convolutions: gradient errors {out['errors']}")
    else:
        assert "-individual_convolution" in out["flags"]
    assert max(out["errors"]) < 5e-6, out["errors"]


def test_xla_default_flags_merge_never_override_the_user():
    import alexnet_jax
    from alexnet_jax import XLA_DEFAULT_FLAGS, _merge_xla_flags
    ynn = "--xla_cpu_experimental_ynn_fusion_type"
    assert f"{ynn}=-individual_convolution" in XLA_DEFAULT_FLAGS
    assert _merge_xla_flags("") == " ".join(XLA_DEFAULT_FLAGS)
    count = "--xla_force_host_platform_device_count=2"
    assert _merge_xla_flags(count).split() == [count, *XLA_DEFAULT_FLAGS]
    assert _merge_xla_flags(f"{ynn}= {count}").split() == [f"{ynn}=", count]      # the user's value stays
    assert _merge_xla_flags(f"{ynn}=+dot") == f"{ynn}=+dot"
    # this process imported alexnet_jax before JAX started: the flags are in effect
    assert all(f.split("=")[0] in os.environ.get("XLA_FLAGS", "") for f in XLA_DEFAULT_FLAGS)
    assert alexnet_jax.__version__
