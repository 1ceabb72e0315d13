"""LeNet-5 trained as LC98 trained it: its criterion (eq. 9) and its curvature estimate (App. C), against
float64 NumPy references written from the paper's definitions.

The curvature reference treats LeNet-5 the way LC98 draws it, as units and connections: every
connection of every layer is listed explicitly (its output unit, its input unit and the parameter it
carries), built from the layers' definitions (5x5 windows, Table I as printed, 2x2 subsampling windows)
and nothing of `alexnet_jax` but the parameter layout.  The forward pass and the second-derivative
recursion then run over those lists, one term per connection, in float64.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from reference import C3_KERNELS, SQUASH_A, SQUASH_S, c3_inputs

from alexnet_jax import parallel
from alexnet_jax.lc98 import lc98_criterion, lc98_curvature
from alexnet_jax.models import create_model
from alexnet_jax.models.lenet_layers import digit_codes

# ---------------------------------------------------------------------------------------------
# LC98 eq. 9
# ---------------------------------------------------------------------------------------------


def np_lc98(y_K: np.ndarray, label: int, j: float) -> float:
    """E = y_label + log(e^{-j} + sum_i e^{-y_i}), term by term in float64."""
    return float(y_K[label] + np.log(np.exp(-j) + np.sum(np.exp(-y_K))))


@pytest.mark.parametrize("j", [0.5, 8.0, 84.0])
def test_lc98_criterion_matches_eq9(j):
    rng = np.random.default_rng(0)
    y = rng.uniform(0.0, 40.0, (6, 10)) + j / 2     # penalties on both sides of j
    labels = rng.integers(0, 10, 6)
    got = np.asarray(lc98_criterion(jnp.asarray(-y, jnp.float32), jnp.asarray(labels), j))
    want = [np_lc98(y[b], int(labels[b]), j) for b in range(6)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.all(got >= 0)


def test_lc98_criterion_without_its_constant_is_cross_entropy():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(-rng.uniform(0.0, 20.0, (5, 10)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 5))
    np.testing.assert_allclose(np.asarray(lc98_criterion(logits, labels, math.inf)),
                               np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, labels)), rtol=1e-6)


def test_lc98_criterion_gradient_on_the_correct_penalty():
    """dE/dy_label = 1 - q_label: the full pull of the squared distance while every penalty is far above j,
    none once the correct penalty is far below j and the others far above."""
    labels = jnp.asarray([0])
    grad = jax.grad(lambda y: lc98_criterion(-y, labels, 8.0)[0])
    far = jnp.full((1, 10), 80.0)
    assert float(grad(far)[0, 0]) == pytest.approx(1.0, abs=1e-6)
    near = jnp.full((1, 10), 80.0).at[0, 0].set(0.5)
    assert float(grad(near)[0, 0]) == pytest.approx(np.exp(-8.0) / (np.exp(-8.0) + np.exp(-0.5)), rel=1e-3)


# ---------------------------------------------------------------------------------------------
# LC98 App. C on LeNet-5, unit by unit, connection by connection (float64)
# ---------------------------------------------------------------------------------------------
def f64(a) -> np.ndarray:
    return np.asarray(a, np.float64)


def conv_connections(h: int, w: int, c_in: int, c_out: int, k: int, inputs_of=None):
    """Connections of a stride-1 k x k valid convolution on an (h, w, c_in) layer: arrays (out unit, in unit,
    output map, kernel position (kh, kw), input map) with units numbered in (row, col, map) order."""
    ho, wo = h - k + 1, w - k + 1
    rows = []
    for m in range(c_out):
        for ci in (inputs_of(m) if inputs_of else range(c_in)):
            r, c, kh, kw = np.meshgrid(np.arange(ho), np.arange(wo), np.arange(k), np.arange(k), indexing="ij")
            rows.append(np.stack([(r * wo + c) * c_out + m, ((r + kh) * w + (c + kw)) * c_in + ci,
                                  np.full_like(r, m), kh, kw, np.full_like(r, ci)], -1).reshape(-1, 6))
    return np.concatenate(rows)


def subsampling_connections(h: int, w: int, c: int):
    """Each (r, c, map) unit of a 2x2 subsampling layer reads the four units of its window."""
    r, cc, ch, dr, dc = np.meshgrid(np.arange(h // 2), np.arange(w // 2), np.arange(c), [0, 1], [0, 1],
                                    indexing="ij")
    out = (r * (w // 2) + cc) * c + ch
    inp = ((2 * r + dr) * w + (2 * cc + dc)) * c + ch
    return np.stack([out, inp, ch], -1).reshape(-1, 3)


class Layer:
    """One layer as LC98 draws it: units, connections each carrying one parameter entry, a bias per map."""

    def __init__(self, n_out: int, out_map: np.ndarray, out: np.ndarray, inp: np.ndarray, param: str,
                 index: np.ndarray, bias: str):
        self.n_out, self.out_map, self.out, self.inp = n_out, out_map, out, inp
        self.param, self.index, self.bias = param, index, bias


def lenet5_graph(P) -> list[tuple[str, Layer]]:
    """LeNet-5 at 32x32 as explicit connection lists (the parameter layout of `nnx.to_pure_dict`)."""
    layers = []
    cn = conv_connections(32, 32, 1, 6, 5)                                      # C1
    idx = np.ravel_multi_index((cn[:, 3], cn[:, 4], cn[:, 5], cn[:, 2]), (5, 5, 1, 6))
    layers.append(("c1", Layer(28 * 28 * 6, np.tile(np.arange(6), 28 * 28), cn[:, 0], cn[:, 1],
                               "kernel_HWIO", idx, "bias_C")))
    sn = subsampling_connections(28, 28, 6)                                       # S2
    layers.append(("s2", Layer(14 * 14 * 6, np.tile(np.arange(6), 14 * 14), sn[:, 0], sn[:, 1], "coef_C",
                               sn[:, 2], "bias_C")))
    cn = conv_connections(14, 14, 6, 16, 5, inputs_of=c3_inputs)                 # C3, Table I as printed
    kernel_of = {m: (name, m - first) for name, first, last in C3_KERNELS for m in range(first, last)}
    names = np.array([kernel_of[m][0] for m in cn[:, 2]])
    rank = np.array([c3_inputs(m).index(ci) for m, ci in zip(cn[:, 2], cn[:, 5], strict=True)])
    idx = np.empty(len(cn), np.int64)
    for name, first, _ in C3_KERNELS:
        sel = names == name
        shape = np.shape(P["c3"][name])
        idx[sel] = np.ravel_multi_index((cn[sel, 3], cn[sel, 4], rank[sel], cn[sel, 2] - first), shape)
    layers.append(("c3", Layer(10 * 10 * 16, np.tile(np.arange(16), 100), cn[:, 0], cn[:, 1], names, idx,
                               "bias_C")))
    sn = subsampling_connections(10, 10, 16)                                      # S4
    layers.append(("s4", Layer(5 * 5 * 16, np.tile(np.arange(16), 25), sn[:, 0], sn[:, 1], "coef_C", sn[:, 2],
                               "bias_C")))
    cn = conv_connections(5, 5, 16, 120, 5)                                       # C5
    idx = np.ravel_multi_index((cn[:, 3], cn[:, 4], cn[:, 5], cn[:, 2]), (5, 5, 16, 120))
    layers.append(("c5", Layer(120, np.arange(120), cn[:, 0], cn[:, 1], "kernel_HWIO", idx, "bias_C")))
    o, i = np.meshgrid(np.arange(84), np.arange(120), indexing="ij")                # F6
    layers.append(("f6", Layer(84, np.arange(84), o.ravel(), i.ravel(), "kernel_IO",
                               np.ravel_multi_index((i.ravel(), o.ravel()), (120, 84)), "bias_O")))
    return layers


def weight_of(P, name: str, layer: Layer) -> np.ndarray:
    """The parameter value each connection carries."""
    if isinstance(layer.param, str):
        return f64(P[name][layer.param]).ravel()[layer.index]
    out = np.empty(len(layer.index))
    for p in set(layer.param):
        sel = layer.param == p
        out[sel] = f64(P[name][p]).ravel()[layer.index[sel]]
    return out


def lc98_reference(P, graph, image_HW: np.ndarray, codes_KD: np.ndarray, j: float):
    """One pattern: (F6 outputs, penalties, {param path: d2E/dw^2}) by LC98 App. C over the connection lists
    of `graph` (`lenet5_graph(P)`)."""
    f = lambda a: SQUASH_A * np.tanh(SQUASH_S * a)                                      # noqa: E731
    f_prime = lambda a: SQUASH_A * SQUASH_S * (1.0 - np.tanh(SQUASH_S * a) ** 2)        # noqa: E731
    x = f64(image_HW).ravel()
    acts = []                                        # (input units, weighted sums) of each layer
    for name, layer in graph:
        w = weight_of(P, name, layer)
        a = np.bincount(layer.out, weights=w * x[layer.inp], minlength=layer.n_out)
        a = a + f64(P[name][layer.bias])[layer.out_map]
        acts.append((x, a))
        x = f(a)
    w_KD = f64(codes_KD)
    y = ((x[None, :] - w_KD) ** 2).sum(-1)                                     # eq. 7
    # the output term: d2E/dx_d^2 at F6's outputs
    z = np.exp(-j) + np.exp(-y).sum()
    q = np.exp(-y) / z
    d_x = 2.0 + (4.0 * (x[None, :] - w_KD) ** 2 * (q * (1.0 - q))[:, None]).sum(0)
    h = {}
    for (name, layer), (x_in, a) in zip(reversed(graph), reversed(acts), strict=True):
        d_a = f_prime(a) ** 2 * d_x                                              # d2E/da^2 = f'(a)^2 d2E/dx^2
        w = weight_of(P, name, layer)
        per_connection = x_in[layer.inp] ** 2 * d_a[layer.out]                   # d2E/du^2 = x^2 d2E/da^2
        if isinstance(layer.param, str):
            h[(name, layer.param)] = np.bincount(layer.index, weights=per_connection,
                                                 minlength=np.size(P[name][layer.param]))
        else:
            for p in set(layer.param):
                sel = layer.param == p
                h[(name, p)] = np.bincount(layer.index[sel], weights=per_connection[sel],
                                           minlength=np.size(P[name][p]))
        h[(name, layer.bias)] = np.bincount(layer.out_map, weights=d_a, minlength=np.size(P[name][layer.bias]))
        d_x = np.bincount(layer.inp, weights=w ** 2 * d_a[layer.out], minlength=len(x_in))   # no cross terms
    return x, y, h


@pytest.fixture(scope="module")
def lenet_rbf():
    model = create_model("lenet5", head="rbf", seed=3)
    rng = np.random.default_rng(0)
    # digit-like inputs: background -0.1, a few strokes of ink 1.175
    images = np.full((3, 32, 32, 1), -0.1, np.float32)
    for b in range(3):
        r, c = rng.integers(6, 22, 2)
        images[b, r:r + 8, c:c + 3] = 1.175
        images[b, r + rng.integers(0, 6), c:c + 8] = 1.175
    return model, images


@pytest.fixture(scope="module")
def curvature_of(lenet_rbf):
    """j -> (the model's estimate, its taps and logits, the float64 reference per pattern)."""
    model, images = lenet_rbf
    P = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    graph = lenet5_graph(P)
    x = jnp.asarray(images)
    logits, taps = parallel.apply(model, x, taps=True)
    estimate = jax.jit(lambda m, x, t, j: lc98_curvature(m, x, t, j=j))

    def run(j):
        h = nnx.to_pure_dict(estimate(model, x, taps, jnp.float32(j)))
        return h, taps, logits, [lc98_reference(P, graph, images[b, :, :, 0], digit_codes(), j)
                                 for b in range(len(images))]

    return run


@pytest.mark.parametrize("j", [math.inf, 8.0])
def test_lc98_curvature_matches_connection_by_connection_reference(curvature_of, j):
    h, taps, logits, refs = curvature_of(j)
    # the graph computes what the model computes
    np.testing.assert_allclose(np.asarray(taps["F6"][0]), np.stack([r[0] for r in refs]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(-np.asarray(logits), np.stack([r[1] for r in refs]), rtol=1e-5)
    checked = 0
    for key in refs[0][2]:
        name, param = key
        want = np.mean([r[2][key] for r in refs], axis=0)
        got = np.asarray(h[name][param], np.float64).ravel()
        assert np.all(want >= 0)
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6 * want.max(), err_msg=f"{name}/{param}")
        checked += 1
    assert checked == 14                       # every parameter array of LeNet-5 with the RBF head


def test_lc98_curvature_is_the_exact_diagonal_where_nothing_is_dropped(lenet_rbf):
    """With the squared distance alone (j = -inf: no competitive term) the loss's Hessian at F6's outputs is
    2I, diagonal, and every F6 and C5 weight is used by one connection per pattern (C5's outputs are 1x1):
    there is no cross term to drop, and LC98's estimate is the exact Gauss-Newton diagonal,
    mean_n sum_d 2 (dx_d / dw)^2.  Below C5 paths meet again (an S4 unit feeds all 120 C5 units) and the
    two differ."""
    model, images = lenet_rbf
    x = jnp.asarray(images)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def f6_outputs(p):
        return parallel.apply(nnx.merge(graphdef, p, rest), x, taps=True)[1]["F6"][0]

    jac = nnx.to_pure_dict(jax.jit(jax.jacrev(f6_outputs))(params))             # (B, 84, *shape) per leaf
    exact = jax.tree.map(lambda j: 2.0 * np.mean(np.sum(np.square(np.asarray(j, np.float64)), axis=1), axis=0), jac)
    _, taps = parallel.apply(model, x, taps=True)
    paper = nnx.to_pure_dict(jax.jit(lambda m, x, t: lc98_curvature(m, x, t, j=-math.inf))(model, x, taps))
    for layer in ("f6", "c5"):
        for p in paper[layer]:
            np.testing.assert_allclose(np.asarray(paper[layer][p]), exact[layer][p], rtol=2e-4,
                                       atol=1e-6 * exact[layer][p].max(), err_msg=f"{layer}/{p}")
    assert not np.allclose(np.asarray(paper["s4"]["coef_C"]), exact["s4"]["coef_C"], rtol=0.1)


# ---------------------------------------------------------------------------------------------
# LC98 §III's fixed distortion set (augment=lenet_affine_fixed)
# ---------------------------------------------------------------------------------------------
def test_fixed_distortion_set_shows_each_pattern_once_per_ten_passes():
    from alexnet_jax.data import augment as A

    aug = A.Augment("lenet_affine_fixed", 32, (28, 28, 1))
    records = np.arange(300, dtype=np.int32)
    draw = jax.jit(aug.draw_fixed)
    per_epoch = [jax.device_get(draw(records, np.full(300, e, np.int32), jax.random.key(7))) for e in range(20)]
    versions = np.stack([d["version"] for d in per_epoch])                     # (epochs, records)
    for r in range(300):                                                        # 10 consecutive passes:
        assert sorted(versions[:10, r]) == list(range(10))                      # each version once
        np.testing.assert_array_equal(versions[10:, r], versions[:10, r])
    # every pass mixes the versions (an offset per image), about a tenth of the images in each
    counts = np.stack([np.bincount(v, minlength=10) for v in versions])
    assert counts.min() > 10 and counts.max() < 60
    # a version's parameters are drawn once: the same in every pass that shows it, in the lenet_affine ranges
    lo, hi = np.array([0.85, 0.85, -0.3, -2, -2]), np.array([1.15, 1.15, 0.3, 2, 2])
    by_pattern = {}
    for e in range(20):
        for r in range(300):
            key = (r, int(versions[e, r]))
            p = per_epoch[e]["affine"][r]
            if key in by_pattern:
                np.testing.assert_array_equal(by_pattern[key], p)
            by_pattern[key] = p
    assert len(by_pattern) == 3000                                              # 300 images x 10 versions
    distorted = np.array([p for (r, v), p in by_pattern.items() if v > 0])
    assert (distorted >= lo).all() and (distorted <= hi).all() and len(np.unique(distorted, axis=0)) == 2700
    # another seed, another set
    other = jax.device_get(draw(records, np.zeros(300, np.int32), jax.random.key(8)))
    assert not np.array_equal(other["version"], per_epoch[0]["version"])


def test_fixed_distortion_set_images():
    """Version 0 is the original (the evaluation image); a pattern's image does not depend on the batch it
    is in; distorted versions are the lenet_affine warp with the pattern's parameters."""
    from alexnet_jax.data import augment as A

    rng = np.random.default_rng(4)
    digits = jnp.asarray(rng.integers(0, 256, (12, 28, 28, 1), dtype=np.uint8))
    fixed = A.Augment("lenet_affine_fixed", 32, (28, 28, 1))
    records = jnp.arange(100, 112, dtype=jnp.int32)
    key = jax.random.key(3)
    epochs = jnp.full((12,), 5, jnp.int32)
    out = np.asarray(jax.jit(lambda x, r, e: fixed.train(x, jnp.zeros_like(r), key, records=r, epochs=e))(
        digits, records, epochs))
    params = jax.device_get(fixed.draw_fixed(records, epochs, key))
    original = np.asarray(fixed.eval(digits))
    warped = np.asarray(A.Augment("lenet_affine", 32, (28, 28, 1)).apply(digits, {"affine": params["affine"]}))
    for i in range(12):
        np.testing.assert_allclose(out[i], original[i] if params["version"][i] == 0 else warped[i], atol=1e-5)
    assert (params["version"] > 0).any()
    # the same rows in another batch composition give the same images
    order = np.array([5, 0, 11, 3])
    part = np.asarray(fixed.train(digits[order], jnp.zeros(4, jnp.int32), key, records=records[order],
                                  epochs=epochs[order]))
    np.testing.assert_allclose(part, out[order], atol=1e-5)          # XLA may round differently per batch
    sub = jax.device_get(fixed.draw_fixed(records[order], epochs[order], key))
    for k in sub:                                                       # the draws themselves: identical
        np.testing.assert_array_equal(sub[k], params[k][order])
    with pytest.raises(ValueError, match="record and epoch"):
        fixed.train(digits, records, key)


def test_train_loader_reports_records_and_epochs(tmp_path):
    from alexnet_jax import data as D
    from alexnet_jax.config import Config

    cfg = Config(dataset="digits", data_dir=str(tmp_path), augment="lenet_affine_fixed", seed=3)
    D.ensure_prepared(cfg)
    loader = D.make_train_loader(cfg, batch_size=100, prefetch=0)
    n = loader.num_examples
    seen = []
    for _ in range(loader.steps_per_epoch + 2):           # across the end of the first pass
        b = next(loader)
        seen.append((b["record"], b["epoch"]))
    records = np.concatenate([r for r, _ in seen])
    epochs = np.concatenate([e for _, e in seen])
    assert len(records) > n                               # the stream crossed into the second pass
    np.testing.assert_array_equal(records[:n], loader.epoch_indices(0))
    np.testing.assert_array_equal(epochs[:n], 0)
    np.testing.assert_array_equal(records[n:], loader.epoch_indices(1)[:len(records) - n])
    np.testing.assert_array_equal(epochs[n:], 1)
    plain = D.make_train_loader(cfg.replace(augment="lenet_affine"), batch_size=100, prefetch=0)
    assert "record" not in next(plain)
    loader.close()
    plain.close()


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (dict(loss="lc98"), "head=rbf"),
    (dict(loss="lc98", head="rbf", ten_crop=True), "ten_crop"),
    (dict(optimizer="sdlm", momentum=0.0, weight_decay=0.0, sdlm_curvature="paper"), "head=rbf"),
    (dict(loss="lc98", head="rbf", lc98_j=0.0), "lc98_j"),
])
def test_config_refuses_what_lc98_does_not_define(overrides, message):
    from alexnet_jax.config import Config, ConfigError

    with pytest.raises(ConfigError, match=message):
        Config(model="lenet5", **overrides).validate()


def test_paper_recipes_are_lc98s_setting():
    """LC98 §III / App. C, item by item."""
    from alexnet_jax.configs import get_config

    c = get_config("lenet5_mnist_sdlm_paper")
    schedule = [c.lr] + [c.lr * f for f in c.lr_factors]
    np.testing.assert_allclose(schedule, [0.0005, 0.0002, 0.0001, 0.00005, 0.00001], rtol=1e-12)
    assert list(c.lr_boundaries) == [2, 5, 8, 12] and c.num_epochs == 20 and c.lr_schedule == "steps"
    assert (c.optimizer, c.sdlm_mu, c.sdlm_samples, c.batch_size) == ("sdlm", 0.02, 500, 1)
    assert (c.loss, c.sdlm_curvature, c.head, c.model, c.dataset) == ("lc98", "paper", "rbf", "lenet5", "mnist")
    assert get_config("lenet5_mnist_sdlm_paper_affine") == c.replace(augment="lenet_affine_fixed")
    shipped = get_config("lenet5_mnist_sdlm")
    assert shipped == c.replace(lr=0.00005)
    assert get_config("lenet5_mnist_sdlm_affine") == shipped.replace(augment="lenet_affine_fixed")


def test_curvature_summary_against_numpy():
    from alexnet_jax.sdlm import curvature_summary, sdlm, set_curvature

    params = {"a": {"w": jnp.ones(3)}, "b": {"w": jnp.ones(2)}}
    h = {"a": {"w": jnp.array([1.0, 2.0, 3.0])}, "b": {"w": jnp.array([0.0, 0.5])}}
    s = curvature_summary(set_curvature(sdlm(1e-3, mu=0.02).init(params), h), 2e-3)
    flat = np.array([1.0, 2.0, 3.0, 0.0, 0.5])
    rates = 2e-3 / (np.float32(0.02) + flat)
    assert s["h_median"] == pytest.approx(np.median(flat)) and s["h_max"] == 3.0 and s["h_min"] == 0.0
    assert s["share_h_below_mu"] == pytest.approx(0.2)
    assert (s["rate_min"], s["rate_max"]) == (pytest.approx(rates.min()), pytest.approx(rates.max()))
    assert s["rate_median"] == pytest.approx(np.median(rates))
    assert s["h_median_by_module"] == {"a": 2.0, "b": 0.25}
