"""Probe (not used by the package): SDLM (LC98 App. C, `alexnet_jax.sdlm`) on LeNet-5 with the RBF head.

Measures, on real MNIST with LC98's input scaling (28x28 padded to 32x32, background -0.1, foreground
1.175, as ``augment="lenet"``):

1. the time to estimate h_kk (exact Gauss-Newton diagonal) on ``--patterns`` (500) training patterns;
2. the effective per-parameter rates eta / (mu + h_kk) at initialisation for the first published rate
   (eta = 0.0005, mu = 0.02), overall and per layer (LC98 reports about 7e-5 to 0.016 in the first pass);
3. short sanity runs, one per ``--runs`` entry BATCH:ETA:STEPS[:MU]: STEPS SDLM updates on random
   training batches from the same initialisation, the curvature estimated once at initialisation, with
   the cross-entropy and accuracy on ``--eval`` test patterns before and after, the mean training loss
   of the first and last 10% of the steps, and the steps per second (one jitted step per dispatch,
   compile excluded). The defaults compare the paper's first rate at batch 1 (0.0005) with a smaller
   one, and its linear scaling to batch 32 (32 * 0.0005) with a smaller one.

    python experiments/sdlm_probe.py [--mnist-dir ../shared/data/mnist] [--runs 1:0.0001:600 32:0.0004:300]
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from alexnet_jax.data.pipeline import Preprocessor
from alexnet_jax.data.prepare import read_idx
from alexnet_jax.models import create_model
from alexnet_jax.optim import LENET_PAPER_LRS
from alexnet_jax.sdlm import LC98_MU, effective_learning_rates, gauss_newton_diagonal, sdlm, set_curvature


def load_mnist(mnist_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """float32 (N, 32, 32, 1) in LC98's scaling, int32 labels."""
    x = read_idx(mnist_dir / f"{split}-images-idx3-ubyte.gz")[..., None]
    y = read_idx(mnist_dir / f"{split}-labels-idx1-ubyte.gz").astype(np.int32)
    return Preprocessor(augment="lenet", input_size=32, channels=1).base_batch(x), y


def layer_of(path) -> str:
    return str(getattr(path[0], "key", path[0]))


def rate_summary(tree) -> dict:
    by_layer: dict[str, list[np.ndarray]] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        by_layer.setdefault(layer_of(path), []).append(np.asarray(leaf).ravel())
    allv = np.concatenate([v for vs in by_layer.values() for v in vs])
    out = {"all": {"min": float(allv.min()), "median": float(np.median(allv)), "max": float(allv.max())}}
    for name, vs in sorted(by_layer.items()):
        v = np.concatenate(vs)
        out[name] = {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist-dir", type=Path, default=Path("../shared/data/mnist"))
    ap.add_argument("--patterns", type=int, default=500, help="patterns per curvature estimate (LC98: 500)")
    ap.add_argument("--chunk", type=int, default=50, help="patterns per chunk of the estimator")
    ap.add_argument("--runs", nargs="+", default=["1:0.0005:600", "1:0.0001:600", "32:0.016:300", "32:0.0004:300"],
                    help="training runs, each BATCH:ETA:STEPS or BATCH:ETA:STEPS:MU (default mu 0.02)")
    ap.add_argument("--eval", type=int, default=1000, help="test patterns for the before/after loss")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="also write the results here as JSON")
    args = ap.parse_args(argv)
    try:
        runs_spec = [(int(f[0]), float(f[1]), int(f[2]), float(f[3]) if len(f) > 3 else LC98_MU)
                     for f in (r.split(":") for r in args.runs)]
    except (ValueError, IndexError):
        ap.error(f"--runs entries are BATCH:ETA:STEPS[:MU], got {args.runs}")

    x_train, y_train = load_mnist(args.mnist_dir, "train")
    x_test, y_test = load_mnist(args.mnist_dir, "t10k")
    x_eval, y_eval = jnp.asarray(x_test[: args.eval]), jnp.asarray(y_test[: args.eval])
    rng = np.random.default_rng(args.seed)

    model = create_model("lenet5", head="rbf", seed=args.seed)
    graphdef, params0, rest = nnx.split(model, nnx.Param, ...)

    def apply_fn(p, x):
        return nnx.merge(graphdef, p, rest)(x)

    eta1 = LENET_PAPER_LRS[0]
    estimate = jax.jit(functools.partial(gauss_newton_diagonal, apply_fn, batch=args.chunk))
    idx = rng.choice(len(x_train), args.patterns, replace=False)
    xs, ys = jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx])
    t = time.perf_counter()
    h0 = jax.block_until_ready(estimate(params0, xs, ys))
    first = time.perf_counter() - t
    times = []
    for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready(estimate(params0, xs, ys))
        times.append(time.perf_counter() - t)
    results: dict = {
        "jax": jax.__version__, "backend": jax.default_backend(), "devices": str(jax.devices()),
        "curvature_estimate": {"patterns": args.patterns, "chunk": args.chunk, "first_call_s": first,
                               "steady_s": min(times)},
        "h_at_init": rate_summary(h0),
    }
    tx0 = sdlm(eta1, mu=LC98_MU)
    results["effective_rates_at_init"] = {"eta": eta1, "mu": LC98_MU, **rate_summary(
        effective_learning_rates(set_curvature(tx0.init(params0), h0)))}

    @jax.jit
    def eval_loss(p):
        logits = apply_fn(p, x_eval)
        return (optax.softmax_cross_entropy_with_integer_labels(logits, y_eval).mean(),
                jnp.mean(jnp.argmax(logits, -1) == y_eval))

    runs = []
    for batch, eta, steps, mu in runs_spec:
        tx = sdlm(eta, mu=mu)
        params = params0
        opt_state = set_curvature(tx.init(params), h0)

        def step(p, s, x, y, tx=tx):
            loss, g = jax.value_and_grad(
                lambda p: optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, x), y).mean())(p)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s, loss

        step = jax.jit(step)
        order = rng.integers(0, len(x_train), (steps + 1, batch))
        loss0, acc0 = (float(v) for v in eval_loss(params))
        # compile on a copy of the first step, then time the run
        jax.block_until_ready(step(params, opt_state, jnp.asarray(x_train[order[0]]), jnp.asarray(y_train[order[0]])))
        xb = [jnp.asarray(x_train[o]) for o in order[1:]]
        yb = [jnp.asarray(y_train[o]) for o in order[1:]]
        train_losses = []
        t = time.perf_counter()
        for i in range(steps):
            params, opt_state, loss = step(params, opt_state, xb[i], yb[i])
            train_losses.append(loss)
        jax.block_until_ready(params)
        elapsed = time.perf_counter() - t
        train_losses = np.asarray(jax.device_get(train_losses))
        loss1, acc1 = (float(v) for v in eval_loss(params))
        k = max(1, steps // 10)
        h1 = estimate(params, xs, ys)
        runs.append({
            "batch": batch, "eta": eta, "mu": mu, "steps": steps, "patterns_seen": steps * batch,
            "eval_loss_before": loss0, "eval_loss_after": loss1, "eval_acc_before": acc0, "eval_acc_after": acc1,
            "train_loss_first_10pct": float(train_losses[:k].mean()),
            "train_loss_last_10pct": float(train_losses[-k:].mean()),
            "steps_per_s": steps / elapsed,
            "effective_rates_after_at_eta1": rate_summary(
                effective_learning_rates(set_curvature(tx0.init(params), h1)))["all"],
        })
    results["runs"] = runs
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return results


if __name__ == "__main__":
    main()
