"""alexnet_jax.optim against independent references (float64 NumPy formula, hand-computed schedules)."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax.config import Config, ConfigError
from alexnet_jax.lr import get_lr, set_lr
from alexnet_jax.optim import (
    LENET_PAPER_EPOCH_BOUNDARIES,
    LENET_PAPER_FACTORS,
    LENET_PAPER_LRS,
    PlateauController,
    kernel_mask,
    make_schedule,
    optimizer_from_config,
    paper_sgd,
)

LR0, DROP_STEP, NSTEPS = 0.01, 6, 12  # lr 0.01 for steps 0..5, 0.001 from step 6 (a /10 drop in the middle)
M, WD = 0.9, 0.0005




def _lr_at(t):
    return LR0 if t < DROP_STEP else LR0 / 10


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    params = {"kernel": rng.normal(size=(4, 3)), "bias": rng.normal(size=(3,))}
    grads = [{"kernel": rng.normal(size=(4, 3)), "bias": rng.normal(size=(3,))} for _ in range(NSTEPS)]
    return params, grads


def _reference(params, grads, decay_bias):
    """K12 §5 in float64 NumPy: v <- 0.9 v - 0.0005 lr w - lr g; w <- w + v."""
    w = {k: v.copy() for k, v in params.items()}
    vel = {k: np.zeros_like(v) for k, v in params.items()}
    traj = []
    for t, g in enumerate(grads):
        lr = _lr_at(t)
        for k in w:
            wd = WD if (k == "kernel" or decay_bias) else 0.0
            vel[k] = M * vel[k] - wd * lr * w[k] - lr * g[k]
            w[k] = w[k] + vel[k]
        traj.append({k: v.copy() for k, v in w.items()})
    return traj


def _run(tx, params, grads, host_drop=False, read_lr=True):
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params)
    update = jax.jit(tx.update)
    traj, lrs = [], []
    for t, g in enumerate(grads):
        if host_drop and t == DROP_STEP:
            state = set_lr(state, LR0 / 10)
        updates, state = update(jax.tree.map(jnp.asarray, g), state, params)
        params = optax.apply_updates(params, updates)
        traj.append(jax.tree.map(np.asarray, params))
        lrs.append(float(get_lr(state)) if read_lr else None)
    return traj, lrs


def _max_diff(a, b):
    return max(float(np.max(np.abs(x[k] - y[k]))) for x, y in zip(a, b, strict=True) for k in x)


def _drop_schedule():
    cfg = Config(lr=LR0, lr_schedule="steps", lr_boundaries=(3.0,), lr_factors=(0.1,))
    return make_schedule(cfg, steps_per_epoch=2)  # epoch 3 -> step 6


@pytest.mark.parametrize("mode", ["schedule", "set_lr"])
@pytest.mark.parametrize("mask", [None, "all"])
def test_paper_sgd_matches_k12_formula_float64(x64, mode, mask):
    params, grads = _problem()
    ref = _reference(params, grads, decay_bias=(mask == "all"))
    if mode == "schedule":
        tx = paper_sgd(_drop_schedule(), momentum=M, weight_decay=WD, decay_mask=mask)
        traj, lrs = _run(tx, params, grads)
    else:
        tx = paper_sgd(LR0, momentum=M, weight_decay=WD, decay_mask=mask)
        traj, lrs = _run(tx, params, grads, host_drop=True)
    assert traj[0]["kernel"].dtype == np.float64
    assert _max_diff(traj, ref) < 1e-12
    # get_lr reports the rate the most recent update used
    np.testing.assert_allclose(lrs, [_lr_at(t) for t in range(NSTEPS)], rtol=0, atol=1e-15)


def test_optax_sgd_differs_from_k12_after_lr_drop(x64):
    """Why paper_sgd exists: optax.sgd applies lr after the momentum trace; a drop rescales the velocity."""
    params, grads = _problem(1)
    ref = _reference(params, grads, decay_bias=False)
    tx = optax.chain(optax.add_decayed_weights(WD, mask=kernel_mask), optax.sgd(_drop_schedule(), momentum=M))
    traj, _ = _run(tx, params, grads, read_lr=False)
    assert _max_diff(traj[:DROP_STEP], ref[:DROP_STEP]) < 1e-12  # identical while lr is constant
    assert _max_diff(traj[DROP_STEP:], ref[DROP_STEP:]) > 1e-3


def test_decay_mask():
    params = {"kernel": jnp.full((4, 3), 2.0), "bias": jnp.full((3,), 2.0)}
    zeros = jax.tree.map(jnp.zeros_like, params)
    lr, wd = 0.1, 0.5

    def step(mask):
        tx = paper_sgd(lr, momentum=M, weight_decay=wd, decay_mask=mask)
        updates, _ = tx.update(zeros, tx.init(params), params)
        return updates

    u = step(None)  # default: kernels only
    np.testing.assert_allclose(u["kernel"], -lr * wd * 2.0, rtol=1e-6)
    np.testing.assert_array_equal(u["bias"], 0.0)
    u = step("all")
    np.testing.assert_allclose(u["bias"], -lr * wd * 2.0, rtol=1e-6)
    u = step({"kernel": False, "bias": True})  # explicit pytree mask
    np.testing.assert_array_equal(u["kernel"], 0.0)
    np.testing.assert_allclose(u["bias"], -lr * wd * 2.0, rtol=1e-6)
    with pytest.raises(ValueError):
        paper_sgd(lr, decay_mask="biases")


def test_set_lr_is_pure_and_keeps_structure():
    params = {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}
    state = paper_sgd(0.01).init(params)
    new = jax.jit(set_lr)(state, 0.001)
    assert jax.tree.structure(new) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and a.weak_type == b.weak_type
    assert float(get_lr(state)) == pytest.approx(0.01)  # the input is not modified
    assert float(get_lr(new)) == pytest.approx(0.001)
    # found inside a wrapping state too
    wrapped = (optax.EmptyState(), state)
    assert float(get_lr(set_lr(wrapped, 0.5)[1])) == 0.5


def test_set_lr_nnx_optimizer():
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, paper_sgd(0.1, weight_decay=0.0), wrt=nnx.Param)
    assert float(get_lr(opt.opt_state)) == pytest.approx(0.1)

    @nnx.jit
    def step(model, opt, lr):
        set_lr(opt.opt_state, lr)
        grads = nnx.grad(lambda m: m(jnp.ones((1, 3))).sum())(model)
        opt.update(model, grads)

    b0 = np.asarray(model.bias[...])
    step(model, opt, 0.01)
    assert float(get_lr(opt.opt_state)) == pytest.approx(0.01)
    np.testing.assert_allclose(np.asarray(model.bias[...]) - b0, -0.01, rtol=1e-5)  # d(sum)/d(bias) = 1


def _values(sched, n):
    return [float(sched(jnp.int32(t))) for t in range(n)]


def test_make_schedule_constant_and_plateau():
    assert make_schedule(Config(lr=0.02), 10) == 0.02
    assert make_schedule(Config(lr=0.02, lr_schedule="plateau"), 10) == 0.02


def test_make_schedule_steps_boundaries_in_epochs():
    cfg = Config(lr=0.1, lr_schedule="steps", lr_boundaries=(2.0, 3.5), lr_factors=(0.1, 0.01))
    sched = make_schedule(cfg, steps_per_epoch=10)  # boundaries at steps 20 and 35
    f32 = lambda x: float(np.float32(x))
    got = {t: float(sched(jnp.int32(t))) for t in (0, 19, 20, 21, 34, 35, 36, 10_000)}
    assert got == {
        0: f32(0.1),
        19: f32(0.1),
        20: f32(0.01),
        21: f32(0.01),
        34: f32(0.01),
        35: f32(0.001),
        36: f32(0.001),
        10_000: f32(0.001),
    }
    # factors are relative to the base lr, not cumulative
    cfg = Config(lr=1.0, lr_schedule="steps", lr_boundaries=(1.0, 2.0), lr_factors=(0.5, 0.5))
    assert _values(make_schedule(cfg, 1), 4) == [1.0, 0.5, 0.5, 0.5]
    # jittable
    assert float(jax.jit(sched)(jnp.int32(35))) == f32(0.001)


def test_make_schedule_warmup():
    sched = make_schedule(Config(lr=0.1, warmup_steps=4), 100)
    np.testing.assert_allclose(_values(sched, 7), [0.0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.1], rtol=1e-6)
    # boundaries stay absolute (not shifted by the warm-up)
    cfg = Config(lr=0.1, lr_schedule="steps", lr_boundaries=(1.0,), lr_factors=(0.1,), warmup_steps=2)
    expected = [0, 0.05, 0.1, 0.1, 0.1, 0.01, 0.01]
    np.testing.assert_allclose(_values(make_schedule(cfg, 5), 7), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "kw",
    [
        dict(lr_schedule="steps", lr_boundaries=(1.0, 2.0), lr_factors=(0.1,)),
        dict(lr_schedule="steps", lr_boundaries=(2.0, 1.0), lr_factors=(0.1, 0.01)),
        dict(lr_schedule="steps", lr_boundaries=(1.0,), lr_factors=(0.1,), warmup_steps=20),
        dict(lr_schedule="plateau", warmup_steps=5),
        dict(lr_schedule="cosine"),
    ],
)
def test_bad_schedules_are_refused_before_anything_runs(kw):
    """Config.validate refuses what it can; the boundary-inside-warm-up rule needs the steps per epoch."""
    from alexnet_jax.optim import check_schedule

    with pytest.raises(ConfigError):
        Config(**kw).validate()
        check_schedule(Config(**kw), 10)


def test_lenet_paper_schedule_shape():
    # LC98 App. C: 0.0005 x2 passes, 0.0002 x3, 0.0001 x3, 0.00005 x4, then 0.00001
    expected = [0.0005] * 2 + [0.0002] * 3 + [0.0001] * 3 + [0.00005] * 4 + [0.00001] * 8
    np.testing.assert_allclose(
        [LENET_PAPER_LRS[0] * f for f in LENET_PAPER_FACTORS], LENET_PAPER_LRS[1:], rtol=1e-12
    )
    cfg = Config(
        lr=LENET_PAPER_LRS[0],
        lr_schedule="steps",
        lr_boundaries=LENET_PAPER_EPOCH_BOUNDARIES,
        lr_factors=LENET_PAPER_FACTORS,
    )
    np.testing.assert_allclose(_values(make_schedule(cfg, 1), 20), expected, rtol=1e-6)


def test_optimizer_from_config_follows_schedule():
    cfg = Config(lr=0.1, lr_schedule="steps", lr_boundaries=(1.0,), lr_factors=(0.1,))
    tx = optimizer_from_config(cfg, steps_per_epoch=3)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    state = tx.init(params)
    seen = []
    for _ in range(5):
        _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
        seen.append(float(get_lr(state)))
    np.testing.assert_allclose(seen, [0.1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
    assert float(state.hyperparams["momentum"]) == pytest.approx(0.9)
    assert float(state.hyperparams["weight_decay"]) == pytest.approx(5e-4)


def _feed(ctrl, metrics):
    return [ctrl.update(m) for m in metrics]


def test_plateau_controller_drops():
    ctrl = PlateauController(factor=0.1, patience=2, max_drops=3)
    metrics = [0.50, 0.40, 0.41, 0.40, 0.30, 0.31, 0.32, 0.33, 0.34, 0.35, 0.36, 0.37, 0.38, 0.39]
    out = _feed(ctrl, metrics)
    #          0.50  0.40  0.41  0.40(=best, no improvement) -> drop 1 at eval 3
    #          0.30 improves; 0.31 0.32 -> drop 2 at eval 6; 0.33 0.34 -> drop 3 at eval 8; then never again
    expected = [None, None, None, 0.1, None, None, 0.01, None, 1e-3, None, None, None, None, None]
    assert [i for i, o in enumerate(out) if o is not None] == [3, 6, 8]
    for o, e in zip(out, expected, strict=True):
        assert (o is None and e is None) or o == pytest.approx(e)
    assert ctrl.drops == 3 and ctrl.lr_scale == pytest.approx(1e-3) and ctrl.best == 0.30


def test_plateau_controller_threshold_nan_and_config():
    ctrl = PlateauController(patience=1, rtol=1e-2, atol=0.0)
    assert ctrl.update(1.0) is None
    assert ctrl.update(0.995) == pytest.approx(0.1)  # 0.5% better < 1% rtol: not an improvement
    assert ctrl.update(0.98) is None  # 2% better: improvement
    assert ctrl.best == 0.98
    assert ctrl.update(math.nan) == pytest.approx(0.01)  # NaN never improves
    ctrl = PlateauController.from_config(Config(plateau_factor=0.5, plateau_patience=4, plateau_max_drops=1))
    assert (ctrl.factor, ctrl.patience, ctrl.max_drops) == (0.5, 4, 1)
    assert _feed(ctrl, [1.0] * 10).count(0.5) == 1
    ctrl = PlateauController(max_drops=0)
    assert _feed(ctrl, [1.0] * 10) == [None] * 10 and ctrl.lr_scale == 1.0


def test_plateau_controller_state_dict_roundtrip():
    rng = np.random.default_rng(3)
    metrics = list(np.round(rng.uniform(0.2, 0.6, size=30), 3))
    full = PlateauController(patience=2, max_drops=3)
    expected = _feed(full, metrics)

    fresh = PlateauController.from_state_dict(json.loads(json.dumps(PlateauController().state_dict())))
    assert fresh.state_dict() == PlateauController().state_dict()  # best=None survives strict JSON

    first = PlateauController(patience=2, max_drops=3)
    out = _feed(first, metrics[:13])
    saved = json.dumps(first.state_dict(), allow_nan=False)
    resumed = PlateauController.from_state_dict(json.loads(saved))
    assert resumed.state_dict() == first.state_dict()
    out += _feed(resumed, metrics[13:])
    assert out == expected
    assert resumed.state_dict() == full.state_dict()
    assert sum(o is not None for o in out) <= 3
