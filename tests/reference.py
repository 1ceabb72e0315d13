"""Independent float64 NumPy references for every model of the zoo: forward pass and analytic backward pass.

Everything here is written from the papers' definitions, with no call into `alexnet_jax`:

* LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, "LC98"; LC98 §II): 5x5
  convolutions, the squashing function f(a) = 1.7159 tanh(2/3 a) (LC98 §II.B, App. A), trainable
  subsampling f(coef * (sum of a 2x2 window) + bias) (§II.B), C3 wired by Table I (typed in below as
  printed in the paper), F6, and either the Euclidean RBF output y_k = sum_j (x_j - w_kj)^2 (§II.B, eq. 7;
  logits = -y) or a linear softmax layer.  The modern variant: ReLU, 2x2 max-pool, full C3.
* AlexNet (Krizhevsky, Sutskever & Hinton 2012, "K12"; K12): convolution, ReLU (§3.1), local
  response normalisation b_i = a_i / (k + alpha sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta with
  k=2, n=5, alpha=1e-4 (per element, as printed), beta=0.75 (§3.3), overlapping 3/2 max-pooling (§3.4),
  dropout 0.5 on the outputs of the first two fully connected layers (§4.2) and the two-column layout of
  Fig. 2 / §3.5, written column by column: conv1/conv2 per column (each column normalising only its own
  maps), conv3 reads both columns, conv4/conv5 per column, fc6 and fc7 read both columns, fc8 reads both
  columns' fc7.  The one-column relatives: the paper's one-GPU comparison net (K12 §3.2 fn. 2), torchvision's
  net (torchvision, with torch's AdaptiveAvgPool2d bins), the Keras-style four-conv net and the
  PyTorch-style BatchNorm net (Ioffe & Szegedy 2015: batch statistics in training, running averages
  r <- 0.9 r + 0.1 (batch statistic) with the biased batch variance, epsilon 1e-5, as flax's nnx.BatchNorm).
* Softmax cross-entropy (K12 §3: multinomial logistic regression), averaged over the batch.

What is shared with the models is data layout only, which a reference has to agree on to read the same
parameters: NHWC activations, HWIO convolution kernels, (in, out) dense kernels, flattening in (h, w, c)
order, the two-column net's parameters stacked on a leading column axis with the columns laid side by side
(column 0 first) wherever a layer reads both, the parameter names of `nnx.to_pure_dict`, the order in which
the three C3 kernels of LeNet-5 store Table I's connections (`C3_KERNELS`), the project's small-input stem
(inputs < 100 px: conv1 5x5, stride 1 up to 32 px and 2 above, padding 2) and the division of centred raw
RGB by the ImageNet channel std (255 * (0.229, 0.224, 0.225), torchvision's Normalize) in the nets built
for unit-scale inputs.  Dropout keep-masks and the RBF codes are inputs, not computation.

The backward pass is analytic: every op below records its derivative formula on a `Tape` and
`loss_and_grad` runs them in reverse.  An analytic backward gives the whole gradient, element by element,
which is what checking a training step needs (the new parameters and velocities are the paper's update
applied to *every* gradient element); central finite differences of the float64 loss give only directional
derivatives, one or two forward passes per direction.  The tests use finite differences the other way round:
to check this analytic backward against this forward in float64 along random directions
(tests/test_reference.py::test_reference_backward_matches_finite_differences), so the reference gradient is
itself checked without JAX.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

# ----------------------------------------------------------------------------------------------------------
# Constants from the papers
# ----------------------------------------------------------------------------------------------------------
SQUASH_A, SQUASH_S = 1.7159, 2.0 / 3.0                    # LC98 App. A: f(a) = A tanh(S a), f(+-1) = +-1
LRN_K, LRN_N, LRN_ALPHA, LRN_BETA = 2.0, 5, 1e-4, 0.75    # K12 §3.3
DROPOUT_RATE = 0.5                                        # K12 §4.2
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5                       # nnx.BatchNorm(momentum=0.9, epsilon=1e-5)
IMAGENET_STD = tuple(255.0 * s for s in (0.229, 0.224, 0.225))   # torchvision Normalize std, 0..255 units

# LC98 Table I, as printed: one row per S2 map (0-5), one column per C3 map (0-15), "X" = connected.
TABLE_I = (
    "X...XXX..XXXX.XX",
    "XX...XXX..XXXX.X",
    "XXX...XXX..X.XXX",
    ".XXX..XXXX..X.XX",
    "..XXX..XXXX.XX.X",
    "...XXX..XXXX.XXX",
)


def c3_inputs(m: int) -> list[int]:
    """The S2 maps C3 map m reads (LC98 Table I column m), in increasing order."""
    return [j for j in range(6) if TABLE_I[j][m] == "X"]


# Storage of the sparse C3 (data layout): kernel_tri (5,5,3,6) holds maps 0-5, kernel_quad (5,5,4,9) maps
# 6-14, kernel_full (5,5,6,1) map 15; kernel[:, :, r, m - first] connects the r-th input (increasing order)
# of map m.
C3_KERNELS = (("kernel_tri_HWIO", 0, 6), ("kernel_quad_HWIO", 6, 15), ("kernel_full_HWIO", 15, 16))


# ----------------------------------------------------------------------------------------------------------
# A minimal tape: values plus the derivative formulas of the ops that made them
# ----------------------------------------------------------------------------------------------------------
class Var:
    """A float64 value and the gradient of the loss with respect to it (accumulated by `Tape.backward`)."""

    __slots__ = ("value", "grad")

    def __init__(self, value):
        self.value = np.asarray(value, np.float64)
        self.grad = None

    def add_grad(self, g: np.ndarray) -> None:
        self.grad = g if self.grad is None else self.grad + g

    @property
    def shape(self):
        return self.value.shape


class Tape:
    """Records one backward closure per op, in forward order; `backward` runs them in reverse."""

    def __init__(self):
        self._backs: list[Callable[[], None]] = []

    def record(self, out: Var, back: Callable[[np.ndarray], None]) -> Var:
        self._backs.append(lambda: None if out.grad is None else back(out.grad))
        return out

    def backward(self, out: Var, dout: np.ndarray) -> None:
        out.add_grad(np.asarray(dout, np.float64))
        for back in reversed(self._backs):
            back()


def _rec(tape: Tape | None, out: Var, back) -> Var:
    return out if tape is None else tape.record(out, back)


# ----------------------------------------------------------------------------------------------------------
# Ops (each: forward value + derivative)
# ----------------------------------------------------------------------------------------------------------
def _out_len(size: int, k: int, stride: int, lo: int, hi: int) -> int:
    return (size + lo + hi - k) // stride + 1


def patches(x: np.ndarray, k: int, stride: int, pad: tuple[int, int]) -> np.ndarray:
    """(B, H, W, C) -> (B, Ho, Wo, k, k, C): patch [b, p, q, i, j, c] = x_pad[b, p*stride + i, q*stride + j, c]."""
    lo, hi = pad
    xp = np.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    b, h, w, c = x.shape
    ho, wo = _out_len(h, k, stride, lo, hi), _out_len(w, k, stride, lo, hi)
    out = np.empty((b, ho, wo, k, k, c), x.dtype)
    for i in range(k):
        for j in range(k):
            out[:, :, :, i, j, :] = xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
    return out


def unpatch(dp: np.ndarray, x_shape, k: int, stride: int, pad: tuple[int, int]) -> np.ndarray:
    """Adjoint of `patches`: scatter-add each patch gradient back onto the (unpadded) input."""
    lo, hi = pad
    b, h, w, c = x_shape
    ho, wo = dp.shape[1:3]
    dxp = np.zeros((b, h + lo + hi, w + lo + hi, c))
    for i in range(k):
        for j in range(k):
            dxp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :] += dp[:, :, :, i, j, :]
    return dxp[:, lo:lo + h, lo:lo + w, :]


def conv(tape, x: Var, kernel: Var, bias: Var | None, *, stride: int = 1, pad=(0, 0)) -> Var:
    """Cross-correlation y[b,p,q,o] = sum_{i,j,c} x_pad[b, p s + i, q s + j, c] k[i,j,c,o] + bias[o]."""
    k = kernel.shape[0]
    assert kernel.shape[1] == k
    cols = patches(x.value, k, stride, pad)
    y = np.tensordot(cols, kernel.value, axes=([3, 4, 5], [0, 1, 2]))
    if bias is not None:
        y = y + bias.value

    def back(g):
        kernel.add_grad(np.tensordot(cols, g, axes=([0, 1, 2], [0, 1, 2])))
        if bias is not None:
            bias.add_grad(g.sum(axis=(0, 1, 2)))
        x.add_grad(unpatch(np.tensordot(g, kernel.value, axes=([3], [3])), x.shape, k, stride, pad))

    return _rec(tape, Var(y), back)


def dense(tape, x: Var, kernel: Var, bias: Var) -> Var:
    y = x.value @ kernel.value + bias.value

    def back(g):
        kernel.add_grad(x.value.T @ g)
        bias.add_grad(g.sum(axis=0))
        x.add_grad(g @ kernel.value.T)

    return _rec(tape, Var(y), back)


def relu(tape, x: Var) -> Var:
    """K12 §3.1: f(x) = max(0, x); derivative 1 where x > 0, else 0."""
    on = x.value > 0
    return _rec(tape, Var(np.where(on, x.value, 0.0)), lambda g: x.add_grad(np.where(on, g, 0.0)))


def squash(tape, x: Var) -> Var:
    """LC98 App. A: f(a) = 1.7159 tanh(2/3 a); f'(a) = 1.7159 * 2/3 * (1 - tanh^2(2/3 a))."""
    t = np.tanh(SQUASH_S * x.value)
    return _rec(tape, Var(SQUASH_A * t), lambda g: x.add_grad(g * SQUASH_A * SQUASH_S * (1.0 - t * t)))


def _window_sum(v: np.ndarray, n: int) -> np.ndarray:
    """s_i = sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} v_j over the last axis (K12 §3.3's clipped window)."""
    N = v.shape[-1]
    s = np.zeros_like(v)
    for i in range(N):
        for j in range(max(0, i - n // 2), min(N - 1, i + n // 2) + 1):
            s[..., i] += v[..., j]
    return s


def lrn(tape, x: Var, *, k: float = LRN_K, n: int = LRN_N, alpha: float = LRN_ALPHA, beta: float = LRN_BETA) -> Var:
    """K12 §3.3: b_i = a_i / (k + alpha * sum_{clipped window of n maps} a_j^2)^beta, alpha per element.

    Derivative: with d_i = k + alpha S_i, db_i/da_j = [i == j] d_i^-beta - 2 alpha beta a_i a_j d_i^(-beta-1)
    for j in the window of i; the window relation is symmetric, so dL/da_j = g_j d_j^-beta
    - 2 alpha beta a_j sum_{i in window(j)} g_i a_i d_i^(-beta-1).
    """
    a = x.value
    d = k + alpha * _window_sum(a * a, n)
    y = a * d ** (-beta)

    def back(g):
        x.add_grad(g * d ** (-beta) - 2.0 * alpha * beta * a * _window_sum(g * a * d ** (-beta - 1.0), n))

    return _rec(tape, Var(y), back)


def max_pool(tape, x: Var, *, window: int = 3, stride: int = 2) -> Var:
    """Max over window x window, stride `stride`, no padding (K12 §3.4: z = 3, s = 2, overlapping).

    The derivative routes each output's gradient to the position of its maximum (ties: measure zero for
    continuous inputs; where they happen after a ReLU they are between zeros, whose gradient the ReLU kills).
    """
    cols = patches(x.value, window, stride, (0, 0))
    b, ho, wo, _, _, c = cols.shape
    flat = cols.reshape(b, ho, wo, window * window, c)
    arg = flat.argmax(axis=3)
    y = np.take_along_axis(flat, arg[:, :, :, None, :], axis=3)[:, :, :, 0, :]

    def back(g):
        onehot = np.zeros_like(flat)
        np.put_along_axis(onehot, arg[:, :, :, None, :], g[:, :, :, None, :], axis=3)
        x.add_grad(unpatch(onehot.reshape(cols.shape), x.shape, window, stride, (0, 0)))

    return _rec(tape, Var(y), back)


def adaptive_avg_pool(tape, x: Var, out_hw: tuple[int, int]) -> Var:
    """torch.nn.AdaptiveAvgPool2d: output bin i averages rows [floor(i H / o), ceil((i + 1) H / o))."""
    b, h, w, c = x.shape
    oh, ow = out_hw

    def bins(size, o):
        return [(math.floor(i * size / o), math.ceil((i + 1) * size / o)) for i in range(o)]

    rows, cols = bins(h, oh), bins(w, ow)
    y = np.empty((b, oh, ow, c))
    for i, (h0, h1) in enumerate(rows):
        for j, (w0, w1) in enumerate(cols):
            y[:, i, j, :] = x.value[:, h0:h1, w0:w1, :].mean(axis=(1, 2))

    def back(g):
        dx = np.zeros(x.shape)
        for i, (h0, h1) in enumerate(rows):
            for j, (w0, w1) in enumerate(cols):
                dx[:, h0:h1, w0:w1, :] += g[:, i, j, None, None, :] / ((h1 - h0) * (w1 - w0))
        x.add_grad(dx)

    return _rec(tape, Var(y), back)


def dropout(tape, x: Var, keep: np.ndarray | None, rate: float = DROPOUT_RATE) -> Var:
    """Inverted dropout with a given keep-mask: kept units scaled by 1 / (1 - rate), the others zeroed.

    K12 §4.2 instead halves the outputs at test time; the two agree in expectation.  keep=None: identity
    (evaluation).
    """
    if keep is None:
        return x
    m = np.asarray(keep, bool) / (1.0 - rate)
    return _rec(tape, Var(x.value * m), lambda g: x.add_grad(g * m))


def batch_norm_train(tape, x: Var, scale: Var, bias: Var, *, eps: float = BN_EPSILON):
    """Batch normalisation with this batch's statistics over (B, H, W): y = scale (x - mu) / sqrt(var + eps) + bias.

    var is the biased batch variance.  Returns (y, mu, var); the derivative flows through mu and var.
    """
    axes = (0, 1, 2)
    mu = x.value.mean(axis=axes)
    var = ((x.value - mu) ** 2).mean(axis=axes)
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x.value - mu) * inv
    y = scale.value * xhat + bias.value

    def back(g):
        scale.add_grad((g * xhat).sum(axis=axes))
        bias.add_grad(g.sum(axis=axes))
        gh = g * scale.value
        x.add_grad(inv * (gh - gh.mean(axis=axes) - xhat * (gh * xhat).mean(axis=axes)))

    return _rec(tape, Var(y), back), mu, var


def batch_norm_eval(tape, x: Var, scale: Var, bias: Var, mean: np.ndarray, var: np.ndarray,
                    *, eps: float = BN_EPSILON) -> Var:
    inv = 1.0 / np.sqrt(np.asarray(var, np.float64) + eps)
    xhat = (x.value - mean) * inv
    y = scale.value * xhat + bias.value

    def back(g):
        scale.add_grad((g * xhat).sum(axis=(0, 1, 2)))
        bias.add_grad(g.sum(axis=(0, 1, 2)))
        x.add_grad(g * scale.value * inv)

    return _rec(tape, Var(y), back)


def subsampling(tape, x: Var, coef: Var, bias: Var) -> Var:
    """LC98 §II.B (S2, S4): the four inputs of each non-overlapping 2x2 window are added, multiplied by the
    map's trainable coefficient and the map's trainable bias is added (the squashing follows separately).
    An odd trailing row/column is dropped."""
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    v = x.value
    s = v[:, 0:2 * h2:2, 0:2 * w2:2] + v[:, 1:2 * h2:2, 0:2 * w2:2] + v[:, 0:2 * h2:2, 1:2 * w2:2] \
        + v[:, 1:2 * h2:2, 1:2 * w2:2]
    y = s * coef.value + bias.value

    def back(g):
        coef.add_grad((g * s).sum(axis=(0, 1, 2)))
        bias.add_grad(g.sum(axis=(0, 1, 2)))
        ds = g * coef.value
        dx = np.zeros(x.shape)
        for i in (0, 1):
            for j in (0, 1):
                dx[:, i:2 * h2:2, j:2 * w2:2] = ds
        x.add_grad(dx)

    return _rec(tape, Var(y), back)


def sparse_c3(tape, x: Var, P: dict) -> Var:
    """LC98 C3: map m = sum over the S2 maps j of Table I column m of a 5x5 correlation with its own kernel,
    plus the map's bias (squashing follows separately)."""
    assert x.shape[-1] == 6, x.shape
    cols = patches(x.value, 5, 1, (0, 0))                   # (B, Ho, Wo, 5, 5, 6)
    b, ho, wo = cols.shape[:3]
    y = np.empty((b, ho, wo, 16))
    bias = P["bias_C"]
    terms = []                                               # (m, inputs, kernel Var, column in it)
    for name, first, last in C3_KERNELS:
        for m in range(first, last):
            ins = c3_inputs(m)
            kv = P[name]
            assert kv.shape[2] == len(ins), (name, kv.shape, ins)
            terms.append((m, ins, kv, m - first))
    for m, ins, kv, col in terms:
        y[..., m] = np.tensordot(cols[..., ins], kv.value[:, :, :, col], axes=([3, 4, 5], [0, 1, 2]))
    y = y + bias.value

    def back(g):
        bias.add_grad(g.sum(axis=(0, 1, 2)))
        dcols = np.zeros_like(cols)
        for m, ins, kv, col in terms:
            dk = np.zeros(kv.shape)
            dk[:, :, :, col] = np.tensordot(cols[..., ins], g[..., m], axes=([0, 1, 2], [0, 1, 2]))
            kv.add_grad(dk)
            dcols[..., ins] += g[..., m, None, None, None] * kv.value[None, None, None, :, :, :, col]
        x.add_grad(unpatch(dcols, x.shape, 5, 1, (0, 0)))

    return _rec(tape, Var(y), back)


def rbf_logits(tape, x: Var, codes_KD: np.ndarray) -> Var:
    """LC98 eq. (7): y_k = sum_j (x_j - w_kj)^2 with the fixed codes w; logits = -y."""
    w = np.asarray(codes_KD, np.float64)
    diff = x.value[:, None, :] - w[None, :, :]               # (B, K, D)
    y = -(diff ** 2).sum(-1)
    return _rec(tape, Var(y), lambda g: x.add_grad(-2.0 * (g[:, :, None] * diff).sum(axis=1)))


def concat(tape, xs: list[Var]) -> Var:
    """Maps of several columns side by side on the channel (last) axis, column 0 first."""
    sizes = np.cumsum([v.shape[-1] for v in xs])[:-1]

    def back(g):
        for v, gv in zip(xs, np.split(g, sizes, axis=-1), strict=True):
            v.add_grad(gv)

    return _rec(tape, Var(np.concatenate([v.value for v in xs], axis=-1)), back)


def flatten(tape, x: Var) -> Var:
    shape = x.shape
    return _rec(tape, Var(x.value.reshape(shape[0], -1)), lambda g: x.add_grad(g.reshape(shape)))


def column(tape, p: Var, c: int) -> Var:
    """Column c of a parameter stacked on a leading column axis."""
    def back(g):
        full = np.zeros(p.shape)
        full[c] = g
        p.add_grad(full)

    return _rec(tape, Var(p.value[c]), back)


def scale_input(x: Var, std) -> Var:
    """Centred raw RGB -> unit scale (the input is data: no gradient is needed)."""
    return Var(x.value / np.asarray(std, np.float64))


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean over the batch of -log softmax(z)[label] (K12 §3), and its derivative (softmax - onehot) / B."""
    z = np.asarray(logits, np.float64)
    zmax = z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
    b = z.shape[0]
    loss = float(np.mean(lse - z[np.arange(b), labels]))
    p = np.exp(z - lse[:, None])
    p[np.arange(b), labels] -= 1.0
    return loss, p / b


# ----------------------------------------------------------------------------------------------------------
# Stems and spatial sizes (the papers' sizes; the project's small-input stem)
# ----------------------------------------------------------------------------------------------------------
def alexnet_stem(model: str, input_size: int) -> tuple[int, int, tuple[int, int]]:
    """(kernel, stride, (pad_lo, pad_hi)) of conv1.

    Paper-sized inputs (>= 100): 11x11 stride 4.  K12 and its relatives differ in padding: the 2012 net and
    its one-GPU comparison net size conv1's output as cuda-convnet does, 1 + ceil((size - 11) / 4), which is
    a zero padding on the high side only (55x55 from 224 or 227; K12 §3.5 and the author's code); torchvision pads 2 on
    every side; the Keras and BatchNorm nets are valid.  Small inputs (< 100, the project's convention):
    5x5, stride 1 up to 32 px, stride 2 above, padding 2.
    """
    if input_size < 100:
        return 5, (1 if input_size <= 32 else 2), (2, 2)
    if model in ("alexnet", "alexnet_half"):
        out = 1 + math.ceil((input_size - 11) / 4)
        return 11, 4, (0, (out - 1) * 4 + 11 - input_size)
    if model == "alexnet_owt":
        return 11, 4, (2, 2)
    return 11, 4, (0, 0)


def lenet_c1_pad(input_size: int) -> tuple[int, int]:
    """Inputs smaller than LC98's 32x32 are zero-padded up to 32 (28 -> 2 on every side)."""
    total = max(0, 32 - input_size)
    return total // 2, total - total // 2


# ----------------------------------------------------------------------------------------------------------
# The models
# ----------------------------------------------------------------------------------------------------------
def lenet5(tape, P, x: Var, *, head: str, codes=None, taps=None) -> Var:
    """LC98 LeNet-5: C1 -> S2 -> C3 (Table I when there are 6 S2 and 16 C3 maps, else full) -> S4 -> C5 -> F6
    -> OUT; f after every layer up to F6."""
    h = squash(tape, conv(tape, x, P["c1"]["kernel_HWIO"], P["c1"]["bias_C"], pad=lenet_c1_pad(x.shape[1])))
    h = squash(tape, subsampling(tape, h, P["s2"]["coef_C"], P["s2"]["bias_C"]))
    if "kernel_tri_HWIO" in P["c3"]:
        h = squash(tape, sparse_c3(tape, h, P["c3"]))
    else:
        h = squash(tape, conv(tape, h, P["c3"]["kernel_HWIO"], P["c3"]["bias_C"]))
    if taps is not None:
        taps["C3"] = h.value
    h = squash(tape, subsampling(tape, h, P["s4"]["coef_C"], P["s4"]["bias_C"]))
    h = squash(tape, conv(tape, h, P["c5"]["kernel_HWIO"], P["c5"]["bias_C"]))
    h = squash(tape, dense(tape, flatten(tape, h), P["f6"]["kernel_IO"], P["f6"]["bias_O"]))
    if head == "rbf":
        return rbf_logits(tape, h, codes)
    assert head == "softmax", head
    return dense(tape, h, P["out"]["kernel_IO"], P["out"]["bias_O"])


def lenet5_modern(tape, P, x: Var) -> Var:
    """ReLU + 2x2 max-pool LeNet-5 with a fully connected C3 and a linear output layer."""
    pad = lenet_c1_pad(x.shape[1])
    h = max_pool(tape, relu(tape, conv(tape, x, P["c1"]["kernel"], P["c1"]["bias"], pad=pad)), window=2, stride=2)
    h = max_pool(tape, relu(tape, conv(tape, h, P["c3"]["kernel"], P["c3"]["bias"])), window=2, stride=2)
    h = relu(tape, conv(tape, h, P["c5"]["kernel"], P["c5"]["bias"]))
    h = relu(tape, dense(tape, flatten(tape, h), P["f6"]["kernel"], P["f6"]["bias"]))
    return dense(tape, h, P["out"]["kernel"], P["out"]["bias"])


def alexnet2012(tape, P, x: Var, *, init: str, keep=None, taps=None) -> Var:
    """K12 Fig. 2, column by column.  keep = (keep6, keep7), each (2, B, units): the fc6 / fc7 output masks.

    `taps` (a dict) receives per-column intermediates: conv2 (pre-activation), pool2, conv3 (pre-activation),
    pool5, fc7 (after dropout).
    """
    if init == "he":
        x = scale_input(x, IMAGENET_STD)
    k, s, pad = alexnet_stem("alexnet", x.shape[1])
    cols = range(P["conv1"]["kernel"].shape[0])

    def col(layer, c):
        return column(tape, P[layer]["kernel"], c), column(tape, P[layer]["bias"], c)

    pool2 = []
    for c in cols:                                       # GPU c: conv1 -> ReLU -> LRN -> pool, conv2 likewise
        h = conv(tape, x, *col("conv1", c), stride=s, pad=pad)
        h = max_pool(tape, lrn(tape, relu(tape, h)))
        h = conv(tape, h, *col("conv2", c), pad=(2, 2))  # reads only its own column's conv1 maps
        if taps is not None:
            taps.setdefault("conv2", []).append(h.value)
        pool2.append(max_pool(tape, lrn(tape, relu(tape, h))))
        if taps is not None:
            taps.setdefault("pool2", []).append(pool2[-1].value)
    both = concat(tape, pool2)                           # conv3 reads both columns
    pool5 = []
    for c in cols:
        h = conv(tape, both, *col("conv3", c), pad=(1, 1))
        if taps is not None:
            taps.setdefault("conv3", []).append(h.value)
        h = relu(tape, conv(tape, relu(tape, h), *col("conv4", c), pad=(1, 1)))   # own column only
        h = relu(tape, conv(tape, h, *col("conv5", c), pad=(1, 1)))               # own column only
        pool5.append(max_pool(tape, h))
        if taps is not None:
            taps.setdefault("pool5", []).append(pool5[-1].value)
    flat = flatten(tape, concat(tape, pool5))            # fc6 reads both columns
    fc6 = [dropout(tape, relu(tape, dense(tape, flat, *col("fc6", c))), None if keep is None else keep[0][c])
           for c in cols]
    both6 = concat(tape, fc6)                            # fc7 reads both columns
    fc7 = [dropout(tape, relu(tape, dense(tape, both6, *col("fc7", c))), None if keep is None else keep[1][c])
           for c in cols]
    if taps is not None:
        taps["fc7"] = [v.value for v in fc7]
    return dense(tape, concat(tape, fc7), P["fc8"]["kernel"], P["fc8"]["bias"])   # fc8 reads both columns


# One-column nets: conv layers (name, kernel, stride, padding, LRN after, max-pool after), then the fully
# connected layers in order and the ones whose *input* is dropped out.  Kernel sizes / paddings from the
# definitions (K12 §3.5 and fn. 2; torchvision; the Keras and PyTorch layouts); conv1 is the stem.
ONE_COLUMN = {
    "alexnet_half": dict(
        convs=[("conv1", None, None, None, True, True), ("conv2", 5, 1, (2, 2), True, True),
               ("conv3", 3, 1, (1, 1), False, False), ("conv4", 3, 1, (1, 1), False, False),
               ("conv5", 3, 1, (1, 1), False, True)],
        fcs=("fc6", "fc7", "fc8"), dropout_into=("fc7", "fc8"), batchnorm=False, adaptive=None),   # K12 §4.2
    "alexnet_owt": dict(
        convs=[("conv1", None, None, None, False, True), ("conv2", 5, 1, (2, 2), False, True),
               ("conv3", 3, 1, (1, 1), False, False), ("conv4", 3, 1, (1, 1), False, False),
               ("conv5", 3, 1, (1, 1), False, True)],
        fcs=("fc6", "fc7", "fc8"), dropout_into=("fc6", "fc7"), batchnorm=False, adaptive=(6, 6)),  # torchvision
    "alexnet_keras": dict(
        convs=[("conv1", None, None, None, False, True), ("conv2", 5, 1, (2, 2), False, True),
               ("conv3", 3, 1, (1, 1), False, False), ("conv4", 3, 1, (1, 1), False, True)],
        fcs=("fc5", "fc6", "fc7"), dropout_into=(), batchnorm=False, adaptive=None),
    "alexnet_bn": dict(
        convs=[("conv1", None, None, None, False, True), ("conv2", 5, 1, (2, 2), False, True),
               ("conv3", 3, 1, (1, 1), False, False), ("conv4", 3, 1, (1, 1), False, False),
               ("conv5", 3, 1, (1, 1), False, True)],
        fcs=("fc6", "fc7", "fc8"), dropout_into=("fc6", "fc7"), batchnorm=True, adaptive=None),
}


def dropout_sites(model: str) -> tuple[str, ...]:
    """Names of the fully connected layers whose input is dropped out in training."""
    if model == "alexnet":
        return ("fc7", "fc8")   # the outputs of fc6 and fc7 of both columns
    if model in ONE_COLUMN:
        return ONE_COLUMN[model]["dropout_into"]
    return ()


def one_column(tape, model: str, P, x: Var, *, init: str | None = None, keep=None, train: bool = False,
               stats=None, new_stats=None) -> Var:
    """A one-column AlexNet relative; `keep` maps an fc layer name to the keep-mask of its input.

    BatchNorm: `train` uses batch statistics and writes the running-average update into `new_stats`;
    evaluation uses `stats` (the running averages {bn_name: {"mean", "var"}}).
    """
    spec = ONE_COLUMN[model]
    if model != "alexnet_half" or init == "he":
        x = scale_input(x, IMAGENET_STD)
    h = x
    for name, k, s, pad, lrn_after, pool_after in spec["convs"]:
        if k is None:
            k, s, pad = alexnet_stem(model, x.shape[1])
        h = conv(tape, h, P[name]["kernel"], P[name]["bias"], stride=s, pad=pad)
        if spec["batchnorm"]:
            bn = P[f"bn_{name}"]
            if train:
                h, mu, var = batch_norm_train(tape, h, bn["scale"], bn["bias"])
                if new_stats is not None:
                    old = stats[f"bn_{name}"]
                    new_stats[f"bn_{name}"] = {"mean": BN_MOMENTUM * old["mean"] + (1 - BN_MOMENTUM) * mu,
                                               "var": BN_MOMENTUM * old["var"] + (1 - BN_MOMENTUM) * var}
            else:
                st = stats[f"bn_{name}"]
                h = batch_norm_eval(tape, h, bn["scale"], bn["bias"], st["mean"], st["var"])
        h = relu(tape, h)
        if lrn_after:
            h = lrn(tape, h)
        if pool_after:
            h = max_pool(tape, h)
    if spec["adaptive"]:
        h = adaptive_avg_pool(tape, h, spec["adaptive"])
    h = flatten(tape, h)
    for i, name in enumerate(spec["fcs"]):
        if name in spec["dropout_into"]:
            h = dropout(tape, h, None if keep is None else keep[name])
        h = dense(tape, h, P[name]["kernel"], P[name]["bias"])
        if i < len(spec["fcs"]) - 1:
            h = relu(tape, h)
    return h


# ----------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------
def _to_vars(tree):
    if isinstance(tree, dict):
        return {k: _to_vars(v) for k, v in tree.items()}
    return Var(tree)


def _grads(tree):
    if isinstance(tree, dict):
        return {k: _grads(v) for k, v in tree.items()}
    return np.zeros(tree.shape) if tree.grad is None else tree.grad


def _run(tape, model: str, P, x: Var, *, head=None, init=None, codes=None, keep=None, train=False, stats=None,
         new_stats=None, taps=None) -> Var:
    if model == "lenet5":
        return lenet5(tape, P, x, head=head, codes=codes, taps=taps)
    if model == "lenet5_modern":
        return lenet5_modern(tape, P, x)
    if model == "alexnet":
        return alexnet2012(tape, P, x, init=init, keep=keep if train else None, taps=taps)
    if model in ONE_COLUMN:
        return one_column(tape, model, P, x, init=init, keep=keep if train else None, train=train, stats=stats,
                          new_stats=new_stats)
    raise ValueError(f"no reference for model {model!r}")


def forward(model: str, params, x, **kw) -> np.ndarray:
    """Logits (float64) of `model` with parameters `params` (nested dict of arrays, nnx.to_pure_dict layout).

    kw: head (lenet5), codes (lenet5 rbf), init (alexnet, alexnet_half), train + keep (dropout masks:
    alexnet: (keep6, keep7); one-column nets: {fc name: mask of its input}), stats (BatchNorm running
    averages), taps (dict receiving intermediates).
    """
    return _run(None, model, _to_vars(params), Var(x), **kw).value


def loss_and_grad(model: str, params, x, labels, **kw):
    """(loss, gradient tree, new BatchNorm statistics or None) of the mean softmax cross-entropy, in float64."""
    tape = Tape()
    P = _to_vars(params)
    new_stats = {} if model == "alexnet_bn" and kw.get("train") else None
    logits = _run(tape, model, P, Var(x), new_stats=new_stats, **kw)
    loss, dlogits = softmax_cross_entropy(logits.value, np.asarray(labels))
    tape.backward(logits, dlogits)
    return loss, _grads(P), new_stats


def loss(model: str, params, x, labels, **kw) -> float:
    return softmax_cross_entropy(forward(model, params, x, **kw), np.asarray(labels))[0]


def paper_sgd_update(params, velocity, grads, *, lr: float, momentum: float, weight_decay: float):
    """K12 §5: v <- m v - wd lr w - lr g; w <- w + v, with weight decay on the weights (kernels, ndim > 1) only.

    Returns (new params, new velocity), float64 trees.
    """
    if isinstance(params, dict):
        out = {k: paper_sgd_update(params[k], velocity[k], grads[k], lr=lr, momentum=momentum,
                                   weight_decay=weight_decay) for k in params}
        return {k: v[0] for k, v in out.items()}, {k: v[1] for k, v in out.items()}
    w = np.asarray(params, np.float64)
    wd = weight_decay if w.ndim > 1 else 0.0
    v = momentum * np.asarray(velocity, np.float64) - wd * lr * w - lr * np.asarray(grads, np.float64)
    return w + v, v
