"""alexnet_jax.sdlm against independent references: float64 NumPy Jacobians, Hessians and update formula.

The curvature references build each pattern's full Jacobian of the outputs (analytically, checked by
finite differences), the loss's Hessian with respect to the outputs as a matrix, and take the diagonal of
mean_n J_n^T H_n J_n directly, with no square-root factorisation, vmap, chunking or reverse mode.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from alexnet_jax.lr import get_lr, set_lr
from alexnet_jax.models import create_model
from alexnet_jax.sdlm import (
    LC98_MU,
    SDLMState,
    effective_learning_rates,
    gauss_newton_diagonal,
    get_curvature,
    sdlm,
    set_curvature,
)

D, HID, K = 3, 4, 5  # tiny tanh MLP: 3 inputs, 4 hidden units, 5 outputs (logits)




# ---------------------------------------------------------------------------------------------
# tiny net: z = tanh(x w1 + b1) w2 + b2, with its Jacobian in float64 NumPy
# ---------------------------------------------------------------------------------------------
def mlp_problem(seed=0, n=7, scale=1.0):
    rng = np.random.default_rng(seed)
    params = {"w1": rng.normal(size=(D, HID)) * scale, "b1": rng.normal(size=(HID,)) * scale,
              "w2": rng.normal(size=(HID, K)) * scale, "b2": rng.normal(size=(K,)) * scale}
    return params, rng.normal(size=(n, D)), rng.integers(0, K, n)


def mlp_apply(p, x_BD):
    return jnp.tanh(x_BD @ p["w1"] + p["b1"][None, :]) @ p["w2"] + p["b2"][None, :]


def np_mlp(p, x_D):
    return np.tanh(x_D @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def np_mlp_jacobian(p, x_D):
    """dz_m / dparam for every output m: {name: (K, *shape)}, by hand."""
    hid = np.tanh(x_D @ p["w1"] + p["b1"])
    dhid = 1.0 - hid**2                                   # (HID,)
    eye = np.eye(K)
    db1 = (p["w2"] * dhid[:, None]).T                     # (K, HID): w2[j, m] f'(a_j)
    return {"w1": db1[:, None, :] * x_D[None, :, None],   # (K, D, HID)
            "b1": db1,
            "w2": hid[None, :, None] * eye[:, None, :],    # (K, HID, K)
            "b2": eye}


def np_softmax_ce_hessian(z):
    p = np.exp(z - z.max())
    p /= p.sum()
    return np.diag(p) - np.outer(p, p)


def np_gn_diagonal(p, xs, hessian_of_z):
    """diag(1/N sum_n J_n^T H_n J_n), per parameter, from explicit Jacobians and Hessian matrices."""
    out = {k: np.zeros_like(v) for k, v in p.items()}
    for x in xs:
        jac, hess = np_mlp_jacobian(p, x), hessian_of_z(np_mlp(p, x))
        for k in out:
            out[k] += np.einsum("ab,a...,b...->...", hess, jac[k], jac[k])
    return {k: v / len(xs) for k, v in out.items()}


def test_reference_jacobian_matches_finite_differences():
    """The hand-written Jacobian the references rely on, against central differences in float64."""
    p, xs, _ = mlp_problem(3)
    jac, eps = np_mlp_jacobian(p, xs[0]), 1e-6
    for k, v in p.items():
        for idx in np.ndindex(v.shape):
            hi = {**p, k: v.copy()}
            lo = {**p, k: v.copy()}
            hi[k][idx] += eps
            lo[k][idx] -= eps
            fd = (np_mlp(hi, xs[0]) - np_mlp(lo, xs[0])) / (2 * eps)
            np.testing.assert_allclose(jac[k][(slice(None),) + idx], fd, rtol=0, atol=1e-8)


def _diff(a, b):
    return max(float(np.max(np.abs(np.asarray(a[k]) - b[k]) / np.max(np.abs(b[k])))) for k in b)


# ---------------------------------------------------------------------------------------------
# the curvature estimate on the tiny net
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 3, 7, 100])   # 7 patterns: 7x1, 2x3 + 1, 1x7, one short chunk
def test_gauss_newton_diagonal_softmax_ce_float64(x64, batch):
    p, xs, ys = mlp_problem(0)
    ref = np_gn_diagonal(p, xs, np_softmax_ce_hessian)
    f = jax.jit(functools.partial(gauss_newton_diagonal, mlp_apply, batch=batch))
    got = f(jax.tree.map(jnp.asarray, p), jnp.asarray(xs), jnp.asarray(ys))
    assert set(got) == set(ref) and all(got[k].dtype == jnp.float64 and got[k].shape == ref[k].shape for k in ref)
    assert _diff(got, ref) < 1e-12


def test_gauss_newton_diagonal_float32():
    p, xs, ys = mlp_problem(1, n=9)
    ref = np_gn_diagonal(p, xs, np_softmax_ce_hessian)
    p32 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), p)
    got = gauss_newton_diagonal(mlp_apply, p32, jnp.asarray(xs, jnp.float32), batch=4)  # labels optional
    assert all(got[k].dtype == jnp.float32 for k in ref)
    assert _diff(got, ref) < 1e-5


def test_gauss_newton_diagonal_custom_loss_float64(x64):
    """Any per-pattern loss via loss_fn: H = diag(c) + 3 (a.z)^2 a a^T for 0.5 sum c (z-t)^2 + (a.z)^4 / 4."""
    p, xs, ys = mlp_problem(2)
    c = np.array([0.5, 2.0, 1.0, 3.0, 0.1])
    a = np.array([1.0, -0.5, 0.2, 0.0, 0.7])

    def loss_fn(z, y):
        return 0.5 * jnp.sum(c * (z - jax.nn.one_hot(y, K, dtype=z.dtype)) ** 2) + 0.25 * jnp.dot(a, z) ** 4

    ref = np_gn_diagonal(p, xs, lambda z: np.diag(c) + 3.0 * np.dot(a, z) ** 2 * np.outer(a, a))
    got = gauss_newton_diagonal(mlp_apply, jax.tree.map(jnp.asarray, p), jnp.asarray(xs), jnp.asarray(ys),
                                batch=7, loss_fn=loss_fn)
    assert _diff(got, ref) < 1e-11

    # the same loss through the default softmax path gives the softmax answer, not this one
    assert _diff(gauss_newton_diagonal(mlp_apply, jax.tree.map(jnp.asarray, p), jnp.asarray(xs)), ref) > 0.1


def test_gauss_newton_diagonal_indefinite_loss_keeps_psd_part(x64):
    """A non-convex loss: only the positive curvature directions count (eigenvalues clipped at 0)."""
    p, xs, ys = mlp_problem(4)
    c = np.array([2.0, -1.0, 0.5, -3.0, 1.0])
    ref = np_gn_diagonal(p, xs, lambda z: np.diag(np.maximum(c, 0.0)))
    got = gauss_newton_diagonal(mlp_apply, jax.tree.map(jnp.asarray, p), jnp.asarray(xs), jnp.asarray(ys),
                                loss_fn=lambda z, y: 0.5 * jnp.sum(c * z**2))
    assert _diff(got, ref) < 1e-11
    with pytest.raises(ValueError, match="labels"):
        gauss_newton_diagonal(mlp_apply, p, jnp.asarray(xs), loss_fn=lambda z, y: jnp.sum(z))


@pytest.mark.parametrize("scale", [1.0, 6.0])   # 6: saturated tanh units, near one-hot softmax
def test_gauss_newton_diagonal_is_non_negative(scale):
    p, xs, ys = mlp_problem(5, n=16, scale=scale)
    p32 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), p)
    for loss_fn in (None, lambda z, y: optax.softmax_cross_entropy_with_integer_labels(z, y)):
        got = gauss_newton_diagonal(mlp_apply, p32, jnp.asarray(xs, jnp.float32), jnp.asarray(ys), batch=8,
                                    loss_fn=loss_fn)
        assert all(bool(jnp.all(v >= 0)) for v in jax.tree.leaves(got))
        assert sum(float(jnp.sum(v)) for v in jax.tree.leaves(got)) > 0


# ---------------------------------------------------------------------------------------------
# the update
# ---------------------------------------------------------------------------------------------
LR0, DROP_STEP, NSTEPS, MU = 0.05, 5, 10, 0.3
H_STEPS = (2, 7)   # install a curvature estimate before these updates (zeros before the first)


def _update_problem(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"kernel": (4, 3), "bias": (3,)}
    params = {k: rng.normal(size=s) for k, s in shapes.items()}
    grads = [{k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(NSTEPS)]
    curv = {t: {k: rng.uniform(0.0, 2.0, size=s) for k, s in shapes.items()} for t in H_STEPS}
    return params, grads, curv


def _lr_at(t):
    return LR0 if t < DROP_STEP else LR0 / 4


def _sdlm_reference(params, grads, curv):
    """LC98 App. C in float64 NumPy: w <- w - lr_t / (mu + h) * g."""
    w = {k: v.copy() for k, v in params.items()}
    h = {k: np.zeros_like(v) for k, v in params.items()}
    traj = []
    for t, g in enumerate(grads):
        h = curv.get(t, h)
        w = {k: w[k] - _lr_at(t) / (MU + h[k]) * g[k] for k in w}
        traj.append(w)
    return traj


@pytest.mark.parametrize("mode", ["schedule", "set_lr"])
def test_sdlm_update_matches_formula_float64(x64, mode):
    params, grads, curv = _update_problem()
    ref = _sdlm_reference(params, grads, curv)
    lr = (lambda count: jnp.where(count < DROP_STEP, LR0, LR0 / 4)) if mode == "schedule" else LR0
    tx = sdlm(lr, mu=MU)
    w = jax.tree.map(jnp.asarray, params)
    state = tx.init(w)
    update, install = jax.jit(tx.update), jax.jit(set_curvature)
    for t, g in enumerate(grads):
        if mode == "set_lr" and t == DROP_STEP:
            state = set_lr(state, LR0 / 4)
        if t in curv:
            state = install(state, jax.tree.map(jnp.asarray, curv[t]))
        updates, state = update(jax.tree.map(jnp.asarray, g), state, w)
        w = optax.apply_updates(w, updates)
        assert w["kernel"].dtype == jnp.float64
        assert max(float(np.max(np.abs(np.asarray(w[k]) - ref[t][k]))) for k in w) < 1e-12, t
        assert float(get_lr(state)) == pytest.approx(_lr_at(t), rel=1e-15)


def test_set_and_get_curvature():
    params = {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}
    state = sdlm(0.01).init(params)
    assert float(state.hyperparams["mu"]) == pytest.approx(LC98_MU)
    assert isinstance(state.inner_state, SDLMState)
    assert all(bool(jnp.all(v == 0)) for v in jax.tree.leaves(get_curvature(state)))
    h = {"kernel": np.full((4, 3), 0.5), "bias": np.arange(3.0)}     # float64 numpy in, stored float32
    new = jax.jit(set_curvature)(state, h)
    assert jax.tree.structure(new) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(get_curvature(new)["bias"], [0.0, 1.0, 2.0])
    assert bool(jnp.all(get_curvature(state)["bias"] == 0))            # the input is not modified
    # eta / (mu + h)
    np.testing.assert_allclose(effective_learning_rates(new)["bias"], 0.01 / (LC98_MU + np.arange(3.0)), rtol=1e-6)
    with pytest.raises(ValueError):
        set_curvature(state, {"kernel": np.ones((4, 3))})              # wrong tree
    with pytest.raises(ValueError):
        set_curvature(state, {"kernel": np.ones((3, 4)), "bias": np.ones(3)})   # wrong shape
    with pytest.raises(KeyError):
        get_curvature(optax.sgd(0.1).init(params))


def test_sdlm_inside_a_chain():
    """Found inside a wrapping state; the step is -lr g / (mu + h) after the chain's earlier transforms."""
    params = {"w": jnp.zeros(3)}
    tx = optax.chain(optax.scale(2.0), sdlm(0.1, mu=0.5))
    state = set_curvature(tx.init(params), {"w": jnp.array([0.0, 1.5, 9.5])})
    updates, _ = tx.update({"w": jnp.ones(3)}, state, params)
    np.testing.assert_allclose(updates["w"], [-0.1 * 2 / 0.5, -0.1 * 2 / 2.0, -0.1 * 2 / 10.0], rtol=1e-6)


def test_sdlm_nnx_optimizer():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    kernel0, bias0 = np.asarray(model.kernel[...]), np.asarray(model.bias[...])
    opt = nnx.Optimizer(model, sdlm(0.1, mu=0.5), wrt=nnx.Param)
    same = set_curvature(opt.opt_state, {"bias": jnp.full(2, 1.5), "kernel": jnp.full((3, 2), 3.5)})
    assert same is opt.opt_state
    np.testing.assert_array_equal(get_curvature(opt.opt_state)["kernel"], 3.5)
    grads = nnx.grad(lambda m: m(jnp.ones((1, 3))).sum())(model)   # every gradient entry is 1
    opt.update(model, grads)
    np.testing.assert_allclose(model.kernel[...], kernel0 - 0.1 / 4.0, rtol=1e-6)
    np.testing.assert_allclose(model.bias[...], bias0 - 0.1 / 2.0, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# LeNet-5 (RBF head)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lenet():
    model = create_model("lenet5", head="rbf")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(0)
    images = rng.uniform(-0.1, 1.175, (6, 32, 32, 1)).astype(np.float32)
    return (lambda p, x: nnx.merge(graphdef, p, rest)(x)), params, images, rng.integers(0, 10, 6)


def test_lenet5_curvature_matches_brute_force(lenet):
    """Selected entries of h against per-scalar forward-mode derivatives and explicit H_n in float64.

    The model computes (and the RBF head returns) float32, so the reference's Jacobian column is the
    float32 jvp for a one-hot tangent on that scalar; everything after it is float64 NumPy.
    """
    apply_fn, params, images, labels = lenet
    h = jax.jit(functools.partial(gauss_newton_diagonal, apply_fn, batch=3))(params, images, labels)
    assert jax.tree.structure(h) == jax.tree.structure(params)
    for hv, pv in zip(jax.tree.leaves(h), jax.tree.leaves(params), strict=True):
        assert hv.shape == pv.shape and hv.dtype == jnp.float32
        assert bool(jnp.all(hv >= 0)) and bool(jnp.all(jnp.isfinite(hv)))

    # the full Jacobian of the logits, by reverse mode (the layers' written-out gradients have no jvp)
    logits = np.asarray(jax.jit(apply_fn)(params, images), np.float64)
    jacobian = jax.tree.leaves(jax.jit(jax.jacrev(lambda p: apply_fn(p, images)))(params))   # (B, K, *shape)
    leaves = jax.tree.leaves(params)
    rng = np.random.default_rng(1)
    picks = [(i, tuple(int(rng.integers(0, s)) for s in leaves[i].shape)) for i in range(len(leaves))]
    h_leaves = jax.tree.leaves(h)
    checked = 0
    for i, idx in picks[:: max(1, len(picks) // 5)] + [picks[-1]]:
        jcol = np.asarray(jacobian[i][(slice(None), slice(None), *idx)], np.float64)     # (B, K)
        ref = np.mean([j @ np_softmax_ce_hessian(z) @ j for z, j in zip(logits, jcol)])
        got = float(h_leaves[i][idx])
        assert ref > 0
        assert got == pytest.approx(ref, rel=1e-3), (jax.tree_util.keystr(jax.tree.leaves_with_path(params)[i][0]),
                                                     idx)
        checked += 1
    assert checked >= 5
