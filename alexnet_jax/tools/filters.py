"""Draw the conv1 kernels per column with colour-specificity scores (Figure 3 of K12).

    alexnet-jax filters --workdir runs/alexnet_cifar10 [--out FILE.png] [--step N]

K12 Fig. 3 shows the 96 learned 11x11x3 conv1 kernels: 48 on GPU 1 (largely colour-agnostic) and
48 on GPU 2 (largely colour-specific); the specialisation comes from the restricted connectivity
(K12 §6.1, Fig. 3).  The PNG has one block per column (AlexNet2012: two
blocks of 48 at full width; one block for a one-column AlexNet; LeNet's C1 5x5x1 kernels as grey).
Each kernel is normalised to [0, 1] on its own for display (minimum -> 0, maximum -> 1).

Colour specificity of a kernel w (H x W x 3), in [0, 1]:

    w  <- w - mean(w)                               (remove the kernel's overall mean, a grey offset)
    score = ||w - grey(w)||^2 / ||w||^2             grey(w): each pixel's RGB replaced by its mean

i.e. the share of the kernel's energy that lies off the grey (luminance) axis.  A grey kernel (the
same pattern in R, G and B) scores exactly 0; a kernel with no grey component at all (e.g. a red-minus-
green opponent pattern, or a flat single colour) scores 1; a single-channel kernel whose spatial
pattern has zero mean scores exactly 2/3 (its grey projection keeps 1/3 of its energy), and any
single-channel kernel scores at least 2/3.  No rescaling is applied.  A constant kernel (all zero after
removing its mean) scores 0.  A column's score is the mean over its kernels.  For one-channel inputs
(LeNet) the score does not apply and is reported as null.  Scores are written to the JSON next to the
PNG (per kernel and per column); the last stdout line is a JSON summary.
"""

from __future__ import annotations

import os
import textwrap

import jax
import numpy as np

from alexnet_jax.tools import _cli


def add_arguments(p) -> None:
    _cli.add_checkpoint_args(p, "PNG (default <workdir>/analysis/filters.png; scores in the .json "
                                   "beside it)")
    p.add_argument("--scale", type=int, default=0,
                   help="screen pixels per kernel pixel (default: about 60 px per kernel)")


def conv1_kernels(model) -> tuple[str, list[np.ndarray]]:
    """(layer name, one (N, H, W, C) array of kernels per column) of the model's first layer."""
    layer = next(iter(model.layer_kinds))                       # conv1, or LeNet's C1
    module = getattr(model, layer, None) or getattr(model, layer.lower())
    kernel = getattr(module, "kernel", None) or module.kernel_HWIO
    k = np.asarray(jax.device_get(kernel[...]), np.float32)    # (columns,) H, W, I, O
    per_column = [k[c] for c in range(k.shape[0])] if model.columns > 1 else [k]
    return layer, [np.moveaxis(kc, -1, 0) for kc in per_column]


def colour_specificity(kernels_NHWC: np.ndarray) -> np.ndarray:
    """Per-kernel share of (mean-removed) energy off the grey axis, in [0, 1] (module docstring).

    The off-grey energy per pixel is computed as (1/C) sum_{c<d} (w_c - w_d)^2 (equal to
    sum_c (w_c - mean_c w)^2), so kernels with identical channels score exactly 0.
    """
    w = np.asarray(kernels_NHWC, np.float64)
    if w.ndim != 4 or w.shape[-1] < 2:
        raise ValueError(f"colour specificity needs (N, H, W, C>=2) kernels, got shape {w.shape}")
    w = w - w.mean(axis=(1, 2, 3), keepdims=True)
    c = w.shape[-1]
    off = sum(((w[..., i] - w[..., j]) ** 2).sum(axis=(1, 2)) for i in range(c) for j in range(i + 1, c)) / c
    total = (w ** 2).sum(axis=(1, 2, 3))
    return np.where(total > 0, off / np.where(total > 0, total, 1.0), 0.0)


def normalise_for_display(k_HWC: np.ndarray) -> np.ndarray:
    lo, hi = float(k_HWC.min()), float(k_HWC.max())
    return (k_HWC - lo) / (hi - lo) if hi > lo else np.full_like(k_HWC, 0.5)


def mosaic(kernels_NHWC: np.ndarray, cols: int, scale: int, gap: int = 1) -> np.ndarray:
    """The kernels of one column as one RGB image (each normalised on its own, upsampled by `scale`)."""
    n, h, w, c = kernels_NHWC.shape
    rows, cols = _cli.grid_shape(n, cols)
    hh, ww = h * scale, w * scale
    img = np.ones((rows * (hh + gap) + gap, cols * (ww + gap) + gap, 3), np.float32)
    for i in range(n):
        k = normalise_for_display(kernels_NHWC[i])
        k = np.repeat(k, 3, axis=-1) if c == 1 else k[..., :3]
        k = np.kron(k, np.ones((scale, scale, 1), np.float32))
        r, q = divmod(i, cols)
        y, x = gap + r * (hh + gap), gap + q * (ww + gap)
        img[y:y + hh, x:x + ww] = k
    return img


def figure(blocks: list[np.ndarray], scores: list[float | None], layer: str, scale: int = 0, title: str = ""):
    """One panel per column: its kernels as a mosaic, titled with their count, shape and column score."""
    from matplotlib.figure import Figure  # lazy (--help)

    h = blocks[0].shape[1]
    scale = scale or max(1, round(60 / h))
    n = blocks[0].shape[0]
    cols = 8 if n > 16 else max(1, min(n, 8))
    images = [mosaic(b, cols, scale, gap=max(1, scale // 4)) for b in blocks]
    dpi = 100                                   # one mosaic pixel per screen pixel
    h_px, w_px = images[0].shape[:2]
    width = max(4.5, len(images) * (w_px / dpi + 0.4))
    head = [ln for part in title.splitlines() for ln in textwrap.wrap(part, int(width * 13))]   # ~7 px a letter
    fig = Figure(figsize=(width, h_px / dpi + 0.7 + 0.17 * len(head)), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, len(images), squeeze=False)
    for c, (ax, im, s) in enumerate(zip(axes[0], images, scores, strict=True)):
        ax.imshow(im, interpolation="nearest")
        ax.set_axis_off()
        who = f" column {c}" if len(images) > 1 else ""
        score = "colour specificity n/a" if s is None else f"colour specificity {s:.3f}"
        shape = "x".join(map(str, blocks[c].shape[1:]))
        ax.set_title(f"{layer}{who}: {blocks[c].shape[0]} kernels {shape}\n{score}", fontsize=9)
    if head:
        fig.suptitle("\n".join(head), fontsize=9)
    return fig


def draw(blocks: list[np.ndarray], scores: list[float | None], layer: str, out_png: str, scale: int = 0,
         title: str = "") -> str:
    fig = figure(blocks, scores, layer, scale, title)
    fig.savefig(out_png, dpi=fig.dpi)
    return out_png


def analyse(model) -> dict:
    """Kernels, per-kernel and per-column scores of a model's first convolution."""
    layer, blocks = conv1_kernels(model)
    colour = blocks[0].shape[-1] >= 3
    per_kernel = [colour_specificity(b).tolist() if colour else None for b in blocks]
    per_column = [float(np.mean(s)) if s is not None else None for s in per_kernel]
    return {"layer": layer, "blocks": blocks, "per_kernel": per_kernel, "per_column": per_column}


def run(args) -> int:
    r = _cli.restore_from_args(args)
    a = analyse(r.model)
    out = _cli.out_path(args, r.workdir, "filters.png")
    draw(a["blocks"], a["per_column"], a["layer"], out, args.scale,
         title=f"{a['layer']} kernels of {os.path.basename(r.workdir)} at step {r.step}\n"
               "(each kernel scaled on its own: its minimum to 0, its maximum to 1)")
    shape = list(a["blocks"][0].shape[1:])
    columns = [{"column": c, "kernels": int(b.shape[0]), "colour_specificity": a["per_column"][c]}
               for c, b in enumerate(a["blocks"])]
    report = {"workdir": r.workdir, "step": r.step, "layer": a["layer"], "kernel_shape": shape,
              "columns": columns, "per_kernel": a["per_kernel"],
              "score": "share of mean-removed kernel energy off the grey axis: 0 grey, 2/3 single-channel "
                       "(zero-mean pattern), 1 no grey component; null for one-channel kernels"}
    json_path = _cli.write_json(os.path.splitext(out)[0] + ".json", report)
    for col in columns:
        s = col["colour_specificity"]
        print(f"{a['layer']} column {col['column']}: {col['kernels']} kernels {'x'.join(map(str, shape))}, "
              f"colour specificity {'n/a (one input channel)' if s is None else f'{s:.4f}'}")
    _cli.emit({"tool": "filters", "workdir": r.workdir, "step": r.step, "layer": a["layer"],
                  "kernel_shape": shape, "columns": columns, "column_scores": a["per_column"], "out": out,
                  "json": json_path})
    return 0

