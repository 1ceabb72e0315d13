"""LeNet-5 (as published) and the modern variant, checked against the paper and independent numpy.

References: LC98 §II (LC98 architecture, Table I, init) and §5.3 (MACs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref  # tests/reference.py (pytest puts tests/ on sys.path)
from flax import nnx

from alexnet_jax.models import create_model
from alexnet_jax.models.layers import channels_last
from alexnet_jax.models.lenet import LeNet5, LeNet5Modern
from alexnet_jax.models.lenet_layers import C3_TABLE, DIGIT_BITMAPS, RBFCode, RBFOutput

# LC98 Table I transcribed as printed (tests/reference.py): rows = S2 maps 0-5, columns = C3 maps 0-15
TABLE_I_MASK = np.array([[c == "X" for c in row] for row in ref.TABLE_I]).T   # (16 C3, 6 S2)

# Published per-layer trainable parameters (LC98; LC98 §II.B).
PAPER_PARAMS = {"c1": 156, "s2": 12, "c3": 1516, "s4": 32, "c5": 48120, "f6": 10164}
# Per-image MACs at 32x32 (derived layer by layer).
PAPER_MACS = {"C1": 117_600, "C3": 150_000, "C5": 48_000, "F6": 10_080, "OUT": 840}


def n_params(module) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def jit_apply(model, x, **kw):
    """Functional jitted forward (one compile per model config; eager dispatch is slow on CPU)."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, **kw))(state, x)


def np_squash(a):
    return 1.7159 * np.tanh(2.0 / 3.0 * a)


@pytest.fixture(scope="module")
def rbf_model():
    return LeNet5(head="rbf", rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def softmax_model():
    return LeNet5(head="softmax", rngs=nnx.Rngs(1))


# ---------------------------------------------------------------------------------------------
# shapes and dtypes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 28, 36])
@pytest.mark.parametrize("name,head",
                         [("lenet5", "softmax"), ("lenet5", "rbf"), ("lenet5_modern", "softmax")])
def test_output_shapes(name, head, size):
    model = create_model(name, input_size=size, head=head, seed=0)
    x = jax.random.normal(jax.random.key(0), (3, size, size, 1))
    y = jit_apply(model, x)
    assert y.shape == (3, 10) and y.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))


@pytest.mark.parametrize("cls,head", [(LeNet5, "softmax"), (LeNet5, "rbf"), (LeNet5Modern, "softmax")])
def test_bfloat16_compute(cls, head):
    m32 = cls(head=head, num_classes=10, rngs=nnx.Rngs(3))
    m16 = cls(head=head, num_classes=10, dtype=jnp.bfloat16, rngs=nnx.Rngs(3))
    x = jax.random.normal(jax.random.key(1), (3, 32, 32, 1))
    y16, y32 = jit_apply(m16, x), jit_apply(m32, x)
    assert y16.dtype == jnp.float32 and y16.shape == (3, 10)
    for leaf in jax.tree.leaves(nnx.state(m16, nnx.Param)):
        assert leaf.dtype == jnp.float32
    np.testing.assert_allclose(y16, y32, atol=0.05 * float(jnp.abs(y32).max()) + 0.05)


@pytest.fixture(scope="module")
def wide_model():
    """width 1.5 (9-24-180-126 maps: fully connected C3), 7 classes, 28x28 input."""
    return LeNet5(num_classes=7, width=1.5, input_size=28, rngs=nnx.Rngs(0))


def test_num_classes_and_width(wide_model):
    assert jit_apply(wide_model, jnp.zeros((2, 28, 28, 1))).shape == (2, 7)
    assert wide_model.c1.kernel_HWIO.shape == (5, 5, 1, 9) and wide_model.f6.kernel_IO.shape == (180, 126)
    assert wide_model.c5.kernel_HWIO.shape == (5, 5, 24, 180) and wide_model.out.kernel_IO.shape == (126, 7)
    m2 = LeNet5Modern(num_classes=100, rngs=nnx.Rngs(0))
    assert jit_apply(m2, jnp.zeros((2, 32, 32, 1))).shape == (2, 100)


def test_rbf_requires_ten_classes():
    with pytest.raises(ValueError, match="num_classes"):
        LeNet5(head="rbf", num_classes=100, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError):
        LeNet5(head="rbf", width=0.5, rngs=nnx.Rngs(0))   # F6 would not have 84 units
    with pytest.raises(ValueError):
        LeNet5(head="bogus", rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------------------------
# parameter and MAC counts against the paper
# ---------------------------------------------------------------------------------------------
def test_param_counts_rbf(rbf_model):
    for layer, count in PAPER_PARAMS.items():
        assert n_params(getattr(rbf_model, layer)) == count, layer
    assert n_params(rbf_model.out) == 0
    assert n_params(rbf_model) == 60_000


def test_param_counts_softmax(softmax_model):
    for layer, count in PAPER_PARAMS.items():
        assert n_params(getattr(softmax_model, layer)) == count, layer
    assert n_params(softmax_model.out) == 84 * 10 + 10
    assert n_params(softmax_model) == 60_850


def test_param_count_modern():
    m = LeNet5Modern(rngs=nnx.Rngs(0))
    full_c3 = 25 * 6 * 16 + 16
    assert n_params(m) == 156 + full_c3 + 48_120 + 10_164 + 850 == 61_706
    k = np.asarray(m.c5.kernel[...])                       # lecun normal: std 1/sqrt(fan_in)
    assert abs(k.std() * np.sqrt(5 * 5 * 16) - 1.0) < 0.03 and np.all(np.asarray(m.c5.bias[...]) == 0)


@pytest.mark.parametrize("head", ["rbf", "softmax"])
def test_macs_per_named_scope(head):
    """Conv/dot MACs read off the jaxpr, attributed to the named scopes, equal derived layer by layer

    C3 executes one dense 6->16 convolution whose kernel has structural zeros where Table I has no
    connection (see SparseC3), so its executed count is the "full C3" figure 240,000
    (10*10*25*96); the paper's connection count, 150,000, is 25 MACs per map-pair of Table I.
    """
    model = LeNet5(head=head, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, jnp.zeros((1, 32, 32, 1)))
    macs: dict[str, int] = {}
    for eqn in jaxpr.jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            out = eqn.outvars[0].aval.shape                 # (B, H, W, O)
            kernel = eqn.invars[1].aval.shape               # (kH, kW, I/groups, O)
            n = int(np.prod(out)) * kernel[0] * kernel[1] * kernel[2]
        elif name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            n = int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lhs[d] for d in contract]))
        else:
            continue
        scope = str(eqn.source_info.name_stack).split("/")[-1]
        macs[scope] = macs.get(scope, 0) + n
    executed = dict(PAPER_MACS, C3=10 * 10 * 25 * 96)
    assert macs == executed
    assert sum(macs.values()) == 416_520            # derived layer by layer: total with a full C3
    assert PAPER_MACS["C3"] == 10 * 10 * 25 * sum(len(t) for t in C3_TABLE) == 150_000


# ---------------------------------------------------------------------------------------------
# C3 connectivity (LC98 Table I)
# ---------------------------------------------------------------------------------------------
def test_c3_connectivity_matches_table_i(rbf_model):
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 1))
    s2 = jax.jit(rbf_model.features_to_s2)(x)
    assert s2.shape == (2, 14, 14, 6)
    jac = jax.jit(jax.jacobian(lambda s: rbf_model.c3(s).sum(axis=(0, 1, 2))))(s2)     # (16, 2, 14, 14, 6)
    connected = np.asarray(jnp.abs(jac).sum(axis=(1, 2, 3)))                   # (16, 6)
    assert connected.shape == (16, 6)
    np.testing.assert_array_equal(connected[~TABLE_I_MASK], 0.0)
    assert np.all(connected[TABLE_I_MASK] > 0.0)
    assert TABLE_I_MASK.sum() == 60


def test_c3_fully_connected_when_width_not_one(wide_model):
    m = wide_model
    s2 = jax.jit(m.features_to_s2)(jax.random.normal(jax.random.key(2), (1, 28, 28, 1)))
    assert s2.shape == (1, 14, 14, 9)
    jac = jax.jit(jax.jacobian(lambda s: m.c3(s).sum(axis=(0, 1, 2))))(s2)
    assert np.all(np.asarray(jnp.abs(jac).sum(axis=(1, 2, 3))) > 0)
    assert n_params(m.c3) == 25 * 9 * 24 + 24


# ---------------------------------------------------------------------------------------------
# C1 + subsampling against float64 numpy
# ---------------------------------------------------------------------------------------------
def np_conv_valid(x, w):
    """x (B,H,W,I), w (k,k,I,O), float64 cross-correlation."""
    k = w.shape[0]
    ho, wo = x.shape[1] - k + 1, x.shape[2] - k + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[3]))
    for i in range(k):
        for j in range(k):
            out += np.einsum("bhwi,io->bhwo", x[:, i:i + ho, j:j + wo, :], w[i, j])
    return out


def np_subsample(x, coef, bias):
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    s = (x[:, 0:2 * h2:2, 0:2 * w2:2] + x[:, 1:2 * h2:2, 0:2 * w2:2]
         + x[:, 0:2 * h2:2, 1:2 * w2:2] + x[:, 1:2 * h2:2, 1:2 * w2:2])
    return np_squash(s * coef + bias)


@pytest.mark.parametrize("hw", [28, 9])
def test_subsampling_matches_numpy(rbf_model, hw):
    layer = rbf_model.s2
    x = np.random.default_rng(0).normal(size=(2, hw, hw, 6))
    coef = np.asarray(layer.coef_C[...], np.float64)
    bias = np.asarray(layer.bias_C[...], np.float64)
    ref = np_subsample(x, coef, bias)
    got = np.asarray(layer(jnp.asarray(x, jnp.float32)))
    assert got.shape == (2, hw // 2, hw // 2, 6)
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [32, 28])
def test_features_to_s2_matches_numpy(rbf_model, size):
    m = rbf_model if size == 32 else LeNet5(input_size=size, head="rbf", rngs=nnx.Rngs(0))
    x = np.random.default_rng(1).normal(size=(2, size, size, 1))
    pad = (32 - size) // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    c1 = np_squash(np_conv_valid(xp, np.asarray(m.c1.kernel_HWIO[...], np.float64))
                   + np.asarray(m.c1.bias_C[...], np.float64))
    ref = np_subsample(c1, np.asarray(m.s2.coef_C[...], np.float64), np.asarray(m.s2.bias_C[...], np.float64))
    got = np.asarray(jax.jit(m.features_to_s2)(jnp.asarray(x, jnp.float32)))
    assert got.shape == (2, 14, 14, 6)
    np.testing.assert_allclose(got, ref, atol=5e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# initialisation: U(-2.4/F, 2.4/F)
# ---------------------------------------------------------------------------------------------
def _expected_bounds(model):
    """(array, bound) pairs with the fan-in worked out here from the paper's layer sizes."""
    b = lambda f: 2.4 / f
    c3_fanin = np.array([25.0 * TABLE_I_MASK[m].sum() for m in range(16)])
    pairs = [
        (model.c1.kernel_HWIO, b(25)), (model.c1.bias_C, b(25)),
        (model.s2.coef_C, b(4)), (model.s2.bias_C, b(4)),
        (model.c3.kernel_tri_HWIO, b(75)), (model.c3.kernel_quad_HWIO, b(100)),
        (model.c3.kernel_full_HWIO, b(150)), (model.c3.bias_C, 2.4 / c3_fanin),
        (model.s4.coef_C, b(4)), (model.s4.bias_C, b(4)),
        (model.c5.kernel_HWIO, b(400)), (model.c5.bias_C, b(400)),
        (model.f6.kernel_IO, b(120)), (model.f6.bias_O, b(120)),
    ]
    if model.head == "softmax":
        pairs += [(model.out.kernel_IO, b(84)), (model.out.bias_O, b(84))]
    return pairs


@pytest.mark.parametrize("head", ["rbf", "softmax"])
def test_init_ranges(head, rbf_model, softmax_model):
    model = rbf_model if head == "rbf" else softmax_model
    pairs = _expected_bounds(model)
    covered = sum(int(np.size(p[...])) for p, _ in pairs)
    assert covered == n_params(model)              # every parameter is checked
    for p, bound in pairs:
        w = np.abs(np.asarray(p[...]))
        assert np.all(w < bound)
        if w.size >= 100:                          # uniform: the extremes are reached
            assert w.max() > 0.9 * np.max(bound)
    w = np.asarray(model.c5.kernel_HWIO[...]).ravel() / (2.4 / 400)   # U(-1, 1)
    assert abs(w.mean()) < 0.02 and abs(w.std() - 1 / np.sqrt(3)) < 0.01
    assert abs(np.mean(np.abs(w) < 0.5) - 0.5) < 0.02


# ---------------------------------------------------------------------------------------------
# RBF output layer
# ---------------------------------------------------------------------------------------------
def test_rbf_codes(rbf_model):
    codes = np.asarray(rbf_model.out.codes_KD[...])
    assert codes.shape == (10, 84)
    assert set(np.unique(codes)) == {-1.0, 1.0}
    assert len({c.tobytes() for c in codes}) == 10
    for bm in DIGIT_BITMAPS:
        assert len(bm) == 12 and all(len(row) == 7 and set(row) <= {"#", "."} for row in bm)
    ref = np.array([[1.0 if ch == "#" else -1.0 for row in bm for ch in row] for bm in DIGIT_BITMAPS])
    np.testing.assert_array_equal(codes, ref)
    hamming = (codes[:, None, :] != codes[None, :, :]).sum(-1) + 84 * np.eye(10, dtype=int)
    assert hamming.min() >= 4


def test_rbf_codes_not_trainable(rbf_model):
    params = nnx.state(rbf_model, nnx.Param)
    shapes = [x.shape for x in jax.tree.leaves(params)]
    assert (10, 84) not in shapes
    fixed = jax.tree.leaves(nnx.state(rbf_model, RBFCode))
    assert len(fixed) == 1 and fixed[0].shape == (10, 84)
    assert not isinstance(rbf_model.out.codes_KD, nnx.Param)


def test_rbf_penalty_and_argmax(rbf_model):
    layer = rbf_model.out
    codes = np.asarray(layer.codes_KD[...])
    y = np.asarray(layer.penalties(jnp.asarray(codes)))                # row d: F6 output = code d
    np.testing.assert_array_equal(np.diag(y), 0.0)
    assert np.all(y[~np.eye(10, dtype=bool)] > 0)
    np.testing.assert_array_equal(np.asarray(layer(jnp.asarray(codes))).argmax(-1), np.arange(10))
    x = np.random.default_rng(0).uniform(-1.7, 1.7, size=(5, 84))
    ref = ((x[:, None, :] - codes[None]) ** 2).sum(-1)
    np.testing.assert_allclose(np.asarray(layer.penalties(jnp.asarray(x, jnp.float32))), ref, rtol=1e-5,
                               atol=1e-3)


def test_rbf_layer_rejects_other_class_counts():
    with pytest.raises(ValueError, match="10"):
        RBFOutput(num_classes=26)


# ---------------------------------------------------------------------------------------------
# jit vs eager, gradients
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,head", [(LeNet5, "softmax"), (LeNet5, "rbf"), (LeNet5Modern, "softmax")])
def test_jit_matches_eager(cls, head):
    model = cls(head=head, input_size=28, rngs=nnx.Rngs(5))
    x = jax.random.normal(jax.random.key(4), (3, 28, 28, 1))
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, train=False))
    np.testing.assert_allclose(fwd(state, x), model(x), rtol=1e-5, atol=1e-5)


def test_all_params_get_gradients(rbf_model):
    x = jax.random.normal(jax.random.key(6), (4, 32, 32, 1))
    labels = jnp.arange(4)

    def loss_fn(m):
        logits = m(x)
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).mean()

    graphdef, params, rest = nnx.split(rbf_model, nnx.Param, ...)
    grads = jax.jit(jax.grad(lambda p: loss_fn(nnx.merge(graphdef, p, rest))))(params)
    leaves = jax.tree.leaves(grads)
    assert sum(int(g.size) for g in leaves) == 60_000
    for g in leaves:
        assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0


# ---------------------------------------------------------------------------------------------
# the layers' fast formulations (layers.py, batch-minor) against the straightforward ones
# ---------------------------------------------------------------------------------------------
def ref_conv(x, k, padding="VALID"):
    return jax.lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def ref_squash_conv(p, x, padding, dtype):
    """SquashConv as first written: lax.conv_general_dilated + bias, then f."""
    a = ref_conv(x.astype(dtype), p["kernel_HWIO"].astype(dtype), padding)
    return 1.7159 * jnp.tanh(2.0 / 3.0 * (a + channels_last(p["bias_C"].astype(dtype), 4)))


def ref_subsampling(p, x, dtype):
    """Subsampling as first written: the 2x2 windows reshaped out and summed."""
    x = x.astype(dtype)
    b, h, w, c = x.shape
    s = x[:, :2 * (h // 2), :2 * (w // 2)].reshape(b, h // 2, 2, w // 2, 2, c).sum(axis=(2, 4))
    coef, bias = (channels_last(p[k].astype(dtype), 4) for k in ("coef_C", "bias_C"))
    return 1.7159 * jnp.tanh(2.0 / 3.0 * (s * coef + bias))


def ref_c3_dense_kernel(p):
    """C3's dense kernel as first written: stacked per map from the three kernels, zeros elsewhere."""
    zero = jnp.zeros((5, 5), jnp.float32)
    cols = []
    for m, inputs in enumerate(C3_TABLE):
        def own(j, m=m, inputs=inputs):
            if j not in inputs:
                return zero
            if m < 6:
                return p["kernel_tri_HWIO"][:, :, inputs.index(j), m]
            if m < 15:
                return p["kernel_quad_HWIO"][:, :, inputs.index(j), m - 6]
            return p["kernel_full_HWIO"][:, :, j, 0]
        cols.append(jnp.stack([own(j) for j in range(6)], axis=-1))
    return jnp.stack(cols, axis=-1)


def ref_sparse_c3(p, x, dtype):
    a = ref_conv(x.astype(dtype), ref_c3_dense_kernel(p).astype(dtype)) + channels_last(p["bias_C"].astype(dtype), 4)
    return 1.7159 * jnp.tanh(2.0 / 3.0 * a)


def _params(layer):
    return {k: v[...] for k, v in nnx.state(layer, nnx.Param).items()}


def _vjp_outputs(fn, p, x, g):
    y, vjp = jax.jit(lambda p, x: jax.vjp(fn, p, x))(p, x)
    dp, dx = vjp(g)
    return [y, dx] + [dp[k][...] for k in sorted(dp)]


def _compare_layer(layer, ref_fn, x, dtype, tol):
    """Forward, input gradient and every parameter gradient of `layer` against ref_fn(params, x, dtype).

    float32: equal to `tol` (relative to each array's largest value).  bfloat16: both are compared with
    the float32 reference, and ours must be within 2x the reference formulation's own bfloat16 error
    (+ tol): long bfloat16 sums (the bias gradients) differ by their summation order alone."""
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
    ours = lambda p, x: nnx.merge(graphdef, p, rest)(x)  # noqa: E731
    g = jax.random.normal(jax.random.key(7), jax.eval_shape(ours, params, x).shape, dtype)
    got = _vjp_outputs(ours, params, x, g)
    ref_params = {k: v[...] for k, v in _params(layer).items()}
    want = _vjp_outputs(lambda p, x: ref_fn(p, x, dtype), ref_params, x, g)
    assert got[0].dtype == want[0].dtype == dtype

    def err(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert a.shape == b.shape
        return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)

    if dtype == jnp.float32:
        for a, b in zip(got, want, strict=True):
            assert err(a, b) <= tol
        return
    truth = _vjp_outputs(lambda p, x: ref_fn(p, x, jnp.float32), ref_params, x, g.astype(jnp.float32))
    for a, b, t in zip(got, want, truth, strict=True):
        assert err(a, t) <= 2 * err(b, t) + tol


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-6), (jnp.bfloat16, 3e-2)])
@pytest.mark.parametrize("case", [(1, 6, 32, "VALID"), (1, 6, 28, ((2, 2), (2, 2))), (16, 120, 5, "VALID"),
                                  (9, 24, 13, "VALID"), (3, 5, 9, ((1, 2), (2, 1)))])
def test_squash_conv_matches_lax_conv(case, dtype, tol):
    from alexnet_jax.models.lenet_layers import SquashConv
    ci, co, hw, pad = case
    layer = SquashConv(ci, co, padding=pad, dtype=dtype, rngs=nnx.Rngs(ci))
    x = jax.random.normal(jax.random.key(co), (3, hw, hw, ci), jnp.float32)
    _compare_layer(layer, lambda p, x, d: ref_squash_conv(p, x, pad, d), x, dtype, tol)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-6), (jnp.bfloat16, 3e-2)])
@pytest.mark.parametrize("shape", [(3, 28, 28, 6), (2, 10, 10, 16), (2, 9, 11, 4)])
def test_subsampling_matches_reshape_sum(shape, dtype, tol):
    from alexnet_jax.models.lenet_layers import Subsampling
    layer = Subsampling(shape[-1], dtype=dtype, rngs=nnx.Rngs(shape[1]))
    x = jax.random.normal(jax.random.key(shape[2]), shape, jnp.float32)
    _compare_layer(layer, ref_subsampling, x, dtype, tol)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-6), (jnp.bfloat16, 3e-2)])
def test_sparse_c3_matches_stacked_kernel_conv(rbf_model, dtype, tol):
    from alexnet_jax.models.lenet_layers import SparseC3
    layer = SparseC3(dtype=dtype, rngs=nnx.Rngs(8))
    np.testing.assert_array_equal(np.asarray(layer.dense_kernel_HWIO()),
                                  np.asarray(ref_c3_dense_kernel(_params(layer))))
    x = jax.random.normal(jax.random.key(9), (3, 14, 14, 6), jnp.float32)
    _compare_layer(layer, ref_sparse_c3, x, dtype, tol)


@pytest.mark.parametrize("head", ["softmax", "rbf"])
def test_lenet5_logits_and_gradients_match_reference_layers(head):
    """The whole model: logits and every parameter gradient of a loss equal those of the same
    parameters run through the straightforward layer formulations above."""
    model = LeNet5(head=head, input_size=28, rngs=nnx.Rngs(11))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(12), (8, 28, 28, 1), jnp.float32)
    labels = jnp.arange(8) % 10

    def ref_forward(p, x):
        h = ref_squash_conv(p["c1"], x, model.c1.padding, jnp.float32)
        h = ref_subsampling(p["s2"], h, jnp.float32)
        h = ref_sparse_c3(p["c3"], h, jnp.float32)
        h = ref_subsampling(p["s4"], h, jnp.float32)
        h = ref_squash_conv(p["c5"], h, "VALID", jnp.float32).reshape(x.shape[0], -1)
        h = 1.7159 * jnp.tanh(2.0 / 3.0 * (h @ p["f6"]["kernel_IO"] + p["f6"]["bias_O"][None, :]))
        if head == "softmax":
            return h @ p["out"]["kernel_IO"] + p["out"]["bias_O"][None, :]
        return nnx.merge(graphdef, params, rest).out(h)

    def loss(logits):
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).mean()

    ours = jax.jit(jax.value_and_grad(lambda p: loss(nnx.merge(graphdef, p, rest)(x))))(params)
    ref_params = {k: _params(getattr(model, k)) for k in ("c1", "s2", "c3", "s4", "c5", "f6", "out")
                  if nnx.state(getattr(model, k), nnx.Param)}
    ref = jax.jit(jax.value_and_grad(lambda p: loss(ref_forward(p, x))))(ref_params)
    np.testing.assert_allclose(float(ours[0]), float(ref[0]), rtol=1e-6)
    for layer, grads in ref[1].items():
        for k, want in grads.items():
            got = np.asarray(ours[1][layer][k][...], np.float64)
            want = np.asarray(want, np.float64)
            assert np.abs(got - want).max() <= 2e-6 * np.abs(want).max(), (layer, k)
