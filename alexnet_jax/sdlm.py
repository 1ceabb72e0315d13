"""Stochastic diagonal Levenberg-Marquardt (SDLM), the optimiser LeNet-5 was trained with (LC98 App. C).

The update
----------
Every parameter w_k has its own step size, the global rate eta divided by mu plus an estimate h_kk of the
k-th diagonal entry of the loss's (Gauss-Newton) Hessian:

    w_k <- w_k - eta / (mu + h_kk) * dE/dw_k

mu (0.02 in LC98) keeps the step bounded where the curvature estimate is tiny. The h_kk are not updated
on every step: LC98 re-estimates them on 500 training patterns before each pass over the data and keeps
them fixed during the pass, with eta following the published schedule (``optim.LENET_PAPER_LRS`` over
``optim.LENET_PAPER_EPOCH_BOUNDARIES``: 0.0005, 0.0002, 0.0001, 0.00005, 0.00001 for 2, 3, 3, 4 and the
remaining passes of 20). The paper reports effective rates eta / (mu + h_kk) of roughly 7e-5 to 0.016 in
the first pass.

``sdlm(learning_rate, mu)`` is that update as an optax transformation, wrapped in
``optax.inject_hyperparams``: ``optim.get_lr`` / ``optim.set_lr`` work on its state as on ``paper_sgd``'s,
``opt_state.hyperparams["mu"]`` holds mu, and the state holds the current estimate h (one array per
parameter, same shape and dtype, i.e. float32 for the project's models; zeros after ``init``, which makes
the first update plain SGD with rate eta / mu until an estimate is installed). The trainer installs a new
estimate with ``set_curvature(opt_state, h)`` before each pass (h from ``gauss_newton_diagonal`` or the
model's ``lc98.lc98_curvature``); nothing in the update itself touches h.

The curvature estimate
----------------------
``gauss_newton_diagonal`` returns the *exact* diagonal of the Gauss-Newton matrix averaged over the
patterns given,

    G = 1/N sum_n J_n^T H_n J_n,    h_kk = G_kk,

with J_n the Jacobian of the network's outputs (here the K logits) with respect to all parameters for
pattern n, and H_n the Hessian of the per-pattern loss with respect to those outputs. For the project's
loss, ``optax.softmax_cross_entropy_with_integer_labels`` on the logits, H_n = diag(p) - p p^T with
p = softmax(logits): it does not depend on the label (G is then also the Fisher information of the model's
predictive distribution). H_n is positive semi-definite, so G is, and its diagonal is >= 0.

It is computed without forming J_n: write H_n = U_n^T U_n with K rows u_m; then
G_kk = 1/N sum_n sum_m (u_m^T J_n)_k^2, and u_m^T J_n is one vector-Jacobian product. For softmax
cross-entropy a square root is known in closed form, u_m = sqrt(p_m) (e_m - p) (indeed
sum_m p_m (e_m - p)(e_m - p)^T = diag(p) - p p^T because sum_m p_m = 1); every term is a square, so the
result is non-negative exactly, not just up to rounding. For any other loss (``loss_fn``) H_n comes from
``jax.hessian`` and is factored by its eigendecomposition, u_m = sqrt(max(lambda_m, 0)) v_m (clipping
negative eigenvalues, a no-op for a convex loss). So one estimate costs K backward passes per pattern,
done as a ``vmap`` over patterns of a ``vmap`` over the K rows of one ``vjp``, in chunks of ``batch``
patterns (memory ~ batch * K * number of parameters) accumulated by a ``lax.scan``. For LeNet-5
(K = 10, 60,000 parameters) 500 patterns are 5,000 backward passes of a small net.

Relation to the paper's "backpropagated second derivatives"
------------------------------------------------------------
LC98 (App. C, following LeCun's earlier work) does not compute G_kk. It estimates h_kk with a backward
pass that is a cheap caricature of the ordinary one, obtained by three simplifications of the true
Hessian:

1. Gauss-Newton: terms containing the second derivative of a unit's squashing function (or, in general,
   of the outputs with respect to the parameters) are dropped, which keeps the estimate non-negative.
   ``gauss_newton_diagonal`` makes exactly this approximation and no other.
2. Diagonal propagation: instead of the full matrix of second derivatives with respect to a layer's
   units, only its diagonal is propagated, the second derivative of the loss with respect to a unit's
   total input a_i being taken as f'(a_i)^2 times the sum, over the units i feeds, of the squared
   connection weight times their own second derivative. Cross terms between two units (or two paths
   to the same unit) are dropped.
3. Shared weights: the second derivative with respect to a weight shared by many connections (a
   convolution kernel entry) is taken as the sum over those connections of the per-connection second
   derivative (input squared times the unit's second derivative), again dropping the cross terms
   between connections.

Keeping the cross terms of 2 and 3 gives G_kk: the paper's quantity is a diagonal approximation of the
diagonal computed here, and both are non-negative.

The paper's approximation is not a property of the function the network computes but of how the network
is drawn as units and connections: splitting a computation into a different but equivalent sequence of
operations changes which cross terms step 2 drops. For example the RBF output layer here computes
``|x|^2 - 2 x.w + |w|^2`` (one dot product) rather than ``sum_j (x_j - w_j)^2``; squaring the two branches'
derivatives separately gives 4 x^2 + 4 w^2 instead of 4 (x - w)^2. A model-independent version (a jaxpr
interpreter squaring each primitive's partial derivatives) would therefore silently give different,
model-code-dependent answers. So it is written with the model, per layer type, for LeNet-5's units as
LC98 draws them (``lc98.lc98_curvature``: convolution, trainable subsampling, sparse C3, dense, and the
RBF output under LC98's criterion; derived in experiments/REPRODUCTION.md), and the trainer installs it
with ``sdlm_curvature=paper``. Where the cut between "network" and "loss" is made also matters. For
``gauss_newton_diagonal`` on LeNet-5 the outputs are the 10 logits -y_i = -|x - w_i|^2 of the RBF head
(x = F6's output), so the head's own curvature, the same -2 I for every logit, sits in the dropped term
sum_i dL/dz_i * d^2 z_i; for softmax cross-entropy sum_i dL/dz_i = sum_i (p_i - [i = label]) = 0 and that
term vanishes (the |x|^2 common to all logits cancels in the softmax), so cutting at the logits or at F6
gives the same G. It does not vanish for LC98's own criterion (``loss=lc98``, with its constant e^{-j}
competitor), where the paper's estimate keeps the squared-distance term's curvature 2 at every F6 unit.

Batches larger than one pattern
-------------------------------
LC98 updates after every pattern. With a batch of B patterns the gradient fed to ``sdlm`` is the batch
*mean* (the trainer's loss is a mean), and h is a per-pattern average whatever B is, so mu and the
per-parameter scaling need no change. What changes is eta: one step of eta_B times the mean of B
gradients moves the weights, to first order, as far as B single-pattern steps of eta_1 when
eta_B = B * eta_1 (the linear scaling rule). That is the natural translation of the published rates to
batch B (e.g. ``Config(lr=B * 0.0005, lr_schedule="steps", lr_boundaries=LENET_PAPER_EPOCH_BOUNDARIES,
lr_factors=LENET_PAPER_FACTORS)``, boundaries in passes). It is only a first-order equivalence: the
largest effective rate becomes B * eta_1 / mu (0.8 for B = 32 at the first rate), and the largest stable
step is set by the curvature of the batch loss, which does not shrink as B grows, so the stable eta grows
much less than linearly (measured below).

Step sizes in practice (measured, not from the paper)
-----------------------------------------------------
A development probe, not shipped (LeNet-5, RBF head, softmax cross-entropy, MNIST in LC98's scaling, h
estimated on 500 patterns at initialisation, jax 0.10.2 CPU): the effective rates eta / (mu + h) at
eta = 0.0005 span about 1e-4 to 0.025 (LC98: 7e-5 to 0.016), most parameters near the cap eta / mu
because their exact G_kk is far below mu. From there, at B = 1 a few hundred steps diverge at
eta = 0.0005 and 0.0002 (the paper's first two rates) and train at 0.0001 and 0.00005; at B = 32 they
diverge at eta = 0.0008 and above (so at 32 * 0.0005) and train at 0.0004. Raising mu to 0.1 also
makes eta = 0.0005 train at B = 1.  Over a whole first pass at B = 1 (experiments/lenet5_mnist.py, MNIST
test error after it): eta = 0.0005 89.7% and 0.0002 88.7% (stuck at chance), 0.0001 11.7% (it learns,
with two bursts of the training loss), 0.00005 3.2% (steady); the shipped `lenet5_mnist_sdlm` recipe uses
batch 1 and the schedule's shape from 0.00005.  Why the steps are so large: on 500 patterns, 90% of the
h_kk are below mu at initialisation and 99% after one pass (median 0.0043, then 0.0005), so at eta =
0.0005 77% (then 98%) of the parameters would step faster than the 0.016 LC98 reports as its largest
effective rate (`experiments/lenet5_mnist.py --curvature WORKDIR`); the paper's range 7e-5..0.016 at
eta = 0.0005 implies h_kk between about 0.01 and 7, two to three orders above the exact diagonal here.
The paper's own estimate on its own criterion (``sdlm_curvature=paper``, ``loss=lc98``) gives larger h_kk
where it matters least and the same picture where it matters: first-pass rates 7.0e-5 / 0.0155 / 0.025
(min / median / max; LC98: 7e-5 .. 0.016), and after one pass at batch 1 0.0005 and 0.0002 are at chance
(89.7%, 90.4% test error), 0.0001 at 4.5%, 0.00005 at 3.2% (experiments/results/lenet5_mnist_lc98; what
was measured beyond that is in the README). So the published schedule is not a safe default with either
estimator here: scale it down (or raise mu) and check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from alexnet_jax.lr import ScalarOrSchedule, get_lr, is_variable

__all__ = [
    "LC98_MU",
    "SDLMState",
    "curvature_summary",
    "effective_learning_rates",
    "gauss_newton_diagonal",
    "get_curvature",
    "scale_by_sdlm",
    "sdlm",
    "set_curvature",
    "softmax_cross_entropy_hessian_sqrt",
]

LC98_MU = 0.02  # LC98 App. C


# ------------------------------------------------------------------------------------------------
# The update
# ------------------------------------------------------------------------------------------------
class SDLMState(NamedTuple):
    """The curvature estimate h: one array per parameter (same tree, shapes and dtypes as the params)."""

    curvature: Any


def scale_by_sdlm(learning_rate: Any, mu: Any = LC98_MU) -> optax.GradientTransformation:
    """updates <- -learning_rate * g / (mu + h), h = the curvature held in the state (zeros after init).

    The bare transformation, with scalar hyperparameters; ``sdlm`` wraps it in ``inject_hyperparams``.
    """

    def init_fn(params):
        return SDLMState(curvature=jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        new = jax.tree.map(lambda g, h: (-learning_rate * g / (mu + h)).astype(g.dtype), updates, state.curvature)
        return new, state

    return optax.GradientTransformation(init_fn, update_fn)


def sdlm(learning_rate: ScalarOrSchedule, mu: float = LC98_MU) -> optax.GradientTransformation:
    """Stochastic diagonal Levenberg-Marquardt (LC98 App. C): w_k <- w_k - eta / (mu + h_kk) * g_k.

    Args:
      learning_rate: eta, a float or an optax schedule of the update count (0 for the first update).
      mu: the damping added to every h_kk (LC98: 0.02).

    An ``optax.inject_hyperparams`` transformation: ``opt_state.hyperparams`` holds "learning_rate" and
    "mu" (in the params' highest float dtype), so ``optim.get_lr`` / ``optim.set_lr`` apply, and the inner
    state is an ``SDLMState`` whose curvature starts at zero. Install an estimate with ``set_curvature``
    (e.g. from ``gauss_newton_diagonal``) before each pass; read it with ``get_curvature``.
    """
    return optax.inject_hyperparams(scale_by_sdlm)(learning_rate=learning_rate, mu=mu)


def _is_sdlm_state(x: Any) -> bool:
    return isinstance(x, SDLMState)




def _sdlm_state(opt_state: Any) -> SDLMState:
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_sdlm_state) if _is_sdlm_state(s)]
    if len(found) != 1:
        raise KeyError(f"expected exactly one SDLMState in this optimiser state (built by sdlm?), found {len(found)}")
    return found[0]


def get_curvature(opt_state: Any) -> Any:
    """The curvature estimate h held in an ``sdlm`` state (or any optax state containing exactly one).

    For an ``nnx.Optimizer``'s ``opt_state`` (leaves are nnx Variables) the arrays are returned.
    """
    return _unwrap_variables(_sdlm_state(opt_state).curvature)


def _has_variables(tree: Any) -> bool:
    return any(is_variable(x) for x in jax.tree.leaves(tree, is_leaf=is_variable))


def _unwrap_variables(tree: Any) -> Any:
    return jax.tree.map(lambda v: v[...] if is_variable(v) else v, tree, is_leaf=is_variable)


def _key_paths(tree: Any) -> list[str]:
    """Leaf paths as strings, so that a dict and an ``nnx.State`` with the same keys compare equal."""
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def set_curvature(opt_state: Any, curvature: Any) -> Any:
    """A new state holding ``curvature`` as h; same structure, shapes and dtypes. Pure, jittable.

    ``curvature`` must have the params' leaves (same key paths; a dict and an ``nnx.State`` with the same
    keys both do) and shapes, e.g. ``gauss_newton_diagonal``'s result; each leaf is cast to the stored
    dtype. Takes effect from the next update. For an
    ``nnx.Optimizer``'s ``opt_state`` the Variables are updated in place (NNX semantics) and the same state
    object is returned.
    """
    old = _sdlm_state(opt_state).curvature
    old_arrays = get_curvature(opt_state)
    curvature = _unwrap_variables(curvature)
    old_paths, new_paths = _key_paths(old_arrays), _key_paths(curvature)
    if old_paths != new_paths:
        raise ValueError(f"curvature with leaves {new_paths} for a state with leaves {old_paths}")

    def cast(o, n):
        n = jnp.asarray(n)
        if n.shape != o.shape:
            raise ValueError(f"curvature leaf of shape {n.shape} for a parameter of shape {o.shape}")
        return n.astype(o.dtype)

    old_leaves, treedef = jax.tree.flatten(old_arrays)
    new = jax.tree.unflatten(treedef, [cast(o, n) for o, n in zip(old_leaves, jax.tree.leaves(curvature))])
    if _has_variables(old):
        for var, arr in zip(jax.tree.leaves(old, is_leaf=is_variable), jax.tree.leaves(new), strict=True):
            var[...] = arr
        return opt_state
    return jax.tree.map(
        lambda s: s._replace(curvature=new) if _is_sdlm_state(s) else s, opt_state, is_leaf=_is_sdlm_state
    )


def effective_learning_rates(opt_state: Any) -> Any:
    """eta / (mu + h) per parameter entry: the step sizes the next update would use (with a float rate;
    a schedule's rate for the next step may differ from the stored one)."""
    lr = get_lr(opt_state)
    mu = _hyperparam(opt_state, "mu")
    return jax.tree.map(lambda h: lr / (mu + h), get_curvature(opt_state))


def curvature_summary(opt_state: Any, lr: float) -> dict[str, float]:
    """The distribution of the installed h over every parameter entry, and of the step sizes
    lr / (mu + h) at the global rate ``lr`` (LC98 App. C reports 7e-5 .. 0.016 for its first pass):
    h quantiles 0, 10, 50, 90, 100%, the share of h below mu, the rates' min, median and max, and the median
    h of each top-level module (a model's layers)."""
    by_module: dict[str, list[np.ndarray]] = {}
    for path, v in jax.tree_util.tree_leaves_with_path(jax.device_get(get_curvature(opt_state))):
        name = str(getattr(path[0], "key", path[0])) if path else ""
        by_module.setdefault(name, []).append(np.ravel(np.asarray(v, np.float64)))
    h = np.concatenate([a for parts in by_module.values() for a in parts])
    mu = float(jax.device_get(_hyperparam(opt_state, "mu")))
    quantiles = dict(zip(("h_min", "h_p10", "h_median", "h_p90", "h_max"),
                         np.quantile(h, [0.0, 0.1, 0.5, 0.9, 1.0]).tolist(), strict=True))
    rates = lr / (mu + h)
    return {"lr": float(lr), "mu": mu, **quantiles, "share_h_below_mu": float(np.mean(h < mu)),
            "rate_min": float(rates.min()), "rate_median": float(np.median(rates)), "rate_max": float(rates.max()),
            "h_median_by_module": {k: float(np.median(np.concatenate(v))) for k, v in by_module.items()}}


def _hyperparam(opt_state: Any, name: str) -> jax.Array:
    if isinstance(opt_state, optax.InjectStatefulHyperparamsState | optax.InjectHyperparamsState):
        value = opt_state.hyperparams.get(name)
    else:
        value = optax.tree_utils.tree_get(opt_state, name)
    if value is None:
        raise KeyError(f"no {name!r} hyperparameter in this optimiser state")
    return value[...] if is_variable(value) else value


# ------------------------------------------------------------------------------------------------
# The curvature estimate
# ------------------------------------------------------------------------------------------------
def softmax_cross_entropy_hessian_sqrt(logits_K: jax.Array) -> jax.Array:
    """U (K, K) with U^T U = diag(p) - p p^T, p = softmax(logits): row m is sqrt(p_m) (e_m - p).

    diag(p) - p p^T is the Hessian of softmax cross-entropy with respect to the logits (for any label).
    """
    p = jax.nn.softmax(logits_K)
    return jnp.sqrt(p)[:, None] * (jnp.eye(p.shape[-1], dtype=p.dtype) - p[None, :])


def _hessian_sqrt(loss_fn: Callable[[jax.Array, jax.Array], jax.Array], logits_K, label) -> jax.Array:
    """U (K, K) with U^T U = the PSD part of d^2 loss_fn(z, label) / dz^2 at z = logits (by eigh)."""
    hess = jax.hessian(loss_fn)(logits_K, label)
    lam, vecs = jnp.linalg.eigh(0.5 * (hess + hess.T))
    return jnp.sqrt(jnp.maximum(lam, 0.0))[:, None] * vecs.T


def gauss_newton_diagonal(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    images: jax.Array,
    labels: jax.Array | None = None,
    *,
    batch: int = 50,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> Any:
    """diag(1/N sum_n J_n^T H_n J_n) over the N patterns given: LC98's h_kk, exactly (see module doc).

    Args:
      apply_fn: ``apply_fn(params, x_B...) -> outputs_BK`` (the logits), differentiable in params.
      params: the parameter pytree (an ``nnx.State`` works).
      images: (N, ...) patterns.
      labels: (N,) labels; only read by ``loss_fn`` (softmax cross-entropy's Hessian does not depend on
        them), so they may be None when ``loss_fn`` is None.
      batch: patterns per chunk (static); memory grows as batch * K * number of parameters. The last
        chunk may be shorter.
      loss_fn: None for ``optax.softmax_cross_entropy_with_integer_labels`` on the outputs (closed-form
        square root of its Hessian), or ``loss_fn(outputs_K, label) -> scalar`` for any other per-pattern
        loss (Hessian by ``jax.hessian``, PSD part by eigendecomposition).

    Returns the params' tree, each leaf in its parameter's dtype, all entries >= 0 (exactly for the
    default loss). Jittable with ``apply_fn``, ``batch`` and ``loss_fn`` static, e.g.
    ``jax.jit(functools.partial(gauss_newton_diagonal, apply_fn, batch=50))(params, images, labels)``.
    """
    n = images.shape[0]
    if n < 1:
        raise ValueError("gauss_newton_diagonal needs at least one pattern")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if labels is None:
        if loss_fn is not None:
            raise ValueError("a custom loss_fn needs labels")
        labels = jnp.zeros((n,), jnp.int32)
    b = min(batch, n)
    acc_dtypes = jax.tree.map(lambda p: jnp.promote_types(p.dtype, jnp.float32), params)

    def hessian_sqrt(logits_K, label):
        if loss_fn is None:
            return softmax_cross_entropy_hessian_sqrt(logits_K)
        return _hessian_sqrt(loss_fn, logits_K, label)

    def one_pattern(x, label):
        """sum_m (u_m^T J)^2 for one pattern: K vector-Jacobian products."""
        logits_K, vjp = jax.vjp(lambda p: apply_fn(p, x[None])[0], params)
        u_KK = hessian_sqrt(logits_K, label).astype(logits_K.dtype)
        (rows,) = jax.vmap(vjp)(u_KK)  # each leaf: (K, *param_shape)
        return jax.tree.map(lambda r, dt: jnp.sum(jnp.square(r.astype(dt)), axis=0), rows, acc_dtypes)

    def chunk_sum(x_b, y_b):
        per_pattern = jax.vmap(one_pattern)(x_b, y_b)
        return jax.tree.map(lambda a: jnp.sum(a, axis=0), per_pattern)

    total = jax.tree.map(lambda p, dt: jnp.zeros(p.shape, dt), params, acc_dtypes)
    n_full, rest = divmod(n, b)
    chunks_x = images[: n_full * b].reshape((n_full, b) + images.shape[1:])
    chunks_y = labels[: n_full * b].reshape((n_full, b) + labels.shape[1:])

    def body(acc, xy):
        return jax.tree.map(jnp.add, acc, chunk_sum(*xy)), None

    total, _ = jax.lax.scan(body, total, (chunks_x, chunks_y))
    if rest:
        total = jax.tree.map(jnp.add, total, chunk_sum(images[n_full * b :], labels[n_full * b :]))
    return jax.tree.map(lambda t, p: (t / n).astype(p.dtype), total, params)
