"""LeNet-5's training as LC98 states it: the criterion (eq. 9), and the curvature estimate h_kk (App. C) by which
SDLM (sdlm.py) scales each parameter's step, through `LeNet5`'s layers.  experiments/REPRODUCTION.md derives both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from alexnet_jax.models.lenet_layers import RBFOutput, squash_derivative

CURVATURE_LAYERS = ("C1", "S2", "C3", "S4", "C5", "F6")   # back-propagated through with squared weights


def lc98_criterion(logits_BK: jax.Array, labels_B: jax.Array, j: float) -> jax.Array:
    """LC98 eq. 9 per pattern, on the RBF head's logits = -penalties y:

        E = y_label + log(e^{-j} + sum_i e^{-y_i})

    The first term pulls F6's output onto the correct code (the squared-distance criterion, eq. 8); the
    second is LC98's competitive term, whose constant e^{-j} keeps penalties already above about j from
    being pushed further up.  j = inf gives softmax cross-entropy on the logits.  E >= 0."""
    z = logits_BK.astype(jnp.float32)
    y_label = -jnp.take_along_axis(z, labels_B[:, None], axis=-1)[:, 0]
    return y_label + jnp.logaddexp(-j, jax.nn.logsumexp(z, axis=-1))


def lc98_output_curvature(head: RBFOutput, x_BD: jax.Array, logits_BK: jax.Array, j: float) -> jax.Array:
    """The boundary term of LC98's curvature estimate: d2E/dx_d^2 for every F6 output x_d (B, D) into the
    RBF `head`, E = LC98 eq. 9 with constant j (``lc98_criterion``; j = inf is softmax cross-entropy on the
    logits, j = -inf the squared distance to the correct code alone):

        2 + sum_i 4 (x_d - w_id)^2 q_i (1 - q_i),    q_i = e^{-y_i} / (e^{-j} + sum_k e^{-y_k})

    2 is the squared-distance term's own second derivative; the sum is the log term's, carried through the RBF
    units with LC98's two simplifications (no cross terms between units, no second derivative of a unit times
    the loss's first derivative).  Independent of the label."""
    x = x_BD.astype(jnp.float32)
    w_KD = jax.lax.stop_gradient(head.codes_KD[...])
    z = logits_BK.astype(jnp.float32)
    q = jnp.exp(z - jnp.logaddexp(-j, jax.nn.logsumexp(z, axis=-1, keepdims=True)))
    diff = x[:, None, :] - w_KD[None, :, :]
    return 2.0 + 4.0 * jnp.einsum("bk,bkd->bd", q * (1.0 - q), diff * diff)


def lc98_curvature(model, x_BHWC: jax.Array, taps: dict[str, list[jax.Array]], *, j: float) -> nnx.State:
    """LC98 App. C's estimate h_kk of d2E/dw_k^2 for a `LeNet5` with head="rbf", averaged over the B
    patterns ``x_BHWC``: a State shaped like the model's Params.

    ``taps`` are the model's layer outputs on ``x_BHWC`` (``parallel.apply(..., taps=True)``): the units' outputs
    x, from which f'(a) = S (A^2 - x^2) / A.  From the output term at F6 (``lc98_output_curvature``, criterion
    ``lc98_criterion`` with constant j) the recursion runs down the layers, each unit's d2E/da^2 =
    f'(a)^2 d2E/dx^2 and each input's d2E/dx^2 = sum over its connections of (weight^2 * d2E/da^2): the
    layer's own ``weighted_sum`` with every parameter squared, transposed (a VJP of a linear map).  A
    parameter's h is the sum over the connections that share it of (input^2 * d2E/da^2) (a bias
    connection's input is 1): the transpose of ``weighted_sum`` taken with respect to the parameters at the
    squared inputs."""
    if model.head != "rbf":
        raise ValueError("lc98_curvature starts from the RBF head's criterion (LC98 eq. 9): head='rbf'")
    b = x_BHWC.shape[0]
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    squared = nnx.merge(graphdef, jax.tree.map(jnp.square, params), rest)
    names = CURVATURE_LAYERS
    outs = {n: taps[n][0].astype(jnp.float32) for n in names}
    ins = dict(zip(names, [x_BHWC.astype(jnp.float32)] + [outs[n] for n in names[:-1]], strict=True))
    ins["F6"] = ins["F6"].reshape(b, -1)
    d_x = lc98_output_curvature(model.out, outs["F6"], taps["OUT"][0], j)
    d_a = {}
    for n in reversed(names):
        d_a[n] = jnp.square(squash_derivative(outs[n])) * d_x.reshape(outs[n].shape)
        if n != "C1":
            _, transpose = jax.vjp(getattr(squared, n.lower()).weighted_sum, ins[n])
            (d_x,) = transpose(d_a[n].astype(ins[n].dtype))

    def paired(p):
        m = nnx.merge(graphdef, p, rest)
        return sum(jnp.vdot(d_a[n], getattr(m, n.lower()).weighted_sum(jnp.square(ins[n]))
                            .astype(jnp.float32)) for n in names)

    return jax.tree.map(lambda h: h / b, jax.grad(paired)(params))
