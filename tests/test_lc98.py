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

from alexnet_jax import parallel
from alexnet_jax.models import create_model
from alexnet_jax.models.lenet import digit_codes, lc98_criterion
from alexnet_jax.sdlm import gauss_newton_diagonal
from reference import C3_KERNELS, SQUASH_A, SQUASH_S, c3_inputs

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
    for name, first, last in C3_KERNELS:
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
    estimate = jax.jit(lambda m, x, t, j: m.lc98_curvature(x, t, j=j))

    def run(j):
        h = nnx.to_pure_dict(estimate(model, x, taps, jnp.float32(j)))
        return h, taps, logits, [lc98_reference(P, graph, images[b, :, :, 0], digit_codes(), j)
                                 for b in range(len(images))]

    return run


@pytest.mark.parametrize("j", [math.inf, 84.0, 8.0])
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
    """With the squared distance alone (j = -inf: no competitive term) F6's weights each feed one output
    unit whose loss is (x - w_label)^2: there are no cross terms to drop and LC98's estimate is the exact
    Gauss-Newton diagonal of that loss.  One layer down (C5), connections to different F6 units do meet
    and the two differ."""
    model, images = lenet_rbf
    x = jnp.asarray(images)
    labels = jnp.asarray([3, 7, 1])
    codes = jnp.asarray(digit_codes())
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def f6_outputs(p, xb):
        return parallel.apply(nnx.merge(graphdef, p, rest), xb, taps=True)[1]["F6"][0]

    def squared_distance(out_D, label):
        return jnp.sum(jnp.square(out_D - codes[label]))

    exact = nnx.to_pure_dict(gauss_newton_diagonal(f6_outputs, params, x, labels, batch=3, loss_fn=squared_distance))
    _, taps = parallel.apply(model, x, taps=True)
    paper = nnx.to_pure_dict(model.lc98_curvature(x, taps, j=-math.inf))
    for p in ("kernel_IO", "bias_O"):
        np.testing.assert_allclose(np.asarray(paper["f6"][p]), np.asarray(exact["f6"][p]), rtol=1e-4, atol=1e-9)
    assert not np.allclose(np.asarray(paper["c5"]["kernel_HWIO"]), np.asarray(exact["c5"]["kernel_HWIO"]),
                           rtol=1e-2)
