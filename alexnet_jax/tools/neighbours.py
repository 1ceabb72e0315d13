"""Nearest neighbours in fc7 feature space, as a PNG grid (Figure 4 of K12).

    alexnet-jax neighbours --workdir runs/alexnet_cifar10 [--split validation --limit 500 --seed 0] [--queries 8]
    alexnet-jax neighbours --workdir runs/alexnet_imagenet --k 6 \
        --images ../shared/data/imagenet_samples/imagenet_samples_100.tar

K12 §6.1: images whose last-hidden-layer feature vectors are close in Euclidean distance are
similar for the network, even when their pixels are not.  The features are the 4096-d post-ReLU fc7
outputs (AlexNet2012: both columns' fc7 after the exchange, i.e. what fc8 reads; the one-column nets'
last hidden layer; LeNet's F6), read from the model's own taps in evaluation mode.  The pool is
`--limit` images of a dataset split (default: the checkpoint's dataset and eval split), picked from every
class in equal shares with `--seed` (the same examples for the same seed; the first ones of different
classes), or the given image files/folders/tars, preprocessed as evaluation batches.  The queries are
the first `--queries` images of the pool (or `--query-indices`); each row of the PNG shows a query
(first column, red frame) and its `--k` nearest neighbours in the pool by Euclidean distance, the query
itself excluded, each titled with its distance and class.  `same_label_fraction` is the share of
neighbours with their query's label.  The last stdout line is a JSON summary (neighbour indices, names
and distances are in the .json beside the PNG).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np

from alexnet_jax.errors import UsageError
from alexnet_jax.tools import _cli, _images


def add_arguments(p) -> None:
    _cli.add_checkpoint_args(p, "PNG (default <workdir>/analysis/neighbours.png; details in the .json "
                                   "beside it)")
    _cli.add_input_args(p, limit=500)
    p.add_argument("--queries", type=int, default=8, help="the first N images of the pool are the queries "
                                                         "(default 8)")
    p.add_argument("--query-indices", type=int, nargs="+", help="explicit query indices into the pool")
    p.add_argument("--k", type=int, default=6, help="neighbours per query (default 6, as in K12 Fig. 4)")


def nearest_neighbours(features_NxD: np.ndarray, queries_idx, k: int, *,
                       exclude_self: bool = True) -> np.ndarray:
    """(Q, k) indices of the k rows of `features_NxD` nearest (Euclidean) to each query row, nearest first.

    The query itself is excluded (`exclude_self`); ties keep the lower index first.  Distances are
    computed from differences (not |a|^2 - 2ab + |b|^2), so an identical row is at distance exactly 0.
    """
    f = np.asarray(features_NxD, np.float64)
    q_idx = np.asarray(queries_idx, np.int64).reshape(-1)
    n = f.shape[0]
    avail = n - 1 if exclude_self else n
    if not 0 < k <= avail:
        raise ValueError(f"k={k} neighbours requested but only {avail} candidates among {n} feature vectors")
    if q_idx.size and (q_idx.min() < 0 or q_idx.max() >= n):
        raise ValueError(f"query indices must be in [0, {n})")
    out = np.empty((q_idx.size, k), np.int64)
    for row, q in enumerate(q_idx):
        d = ((f - f[q]) ** 2).sum(axis=1)
        if exclude_self:
            d[q] = np.inf
        out[row] = np.argsort(d, kind="stable")[:k]
    return out


def distances(features_NxD: np.ndarray, queries_idx, idx: np.ndarray) -> np.ndarray:
    f = np.asarray(features_NxD, np.float64)
    q = np.asarray(queries_idx).reshape(-1)
    return np.sqrt(((f[idx] - f[q][:, None, :]) ** 2).sum(-1))


def cell_caption(name: str, caption: str | None, width: int = 26) -> list[str]:
    """The lines under a cell's distance: its class (`caption`) wrapped, not cut, then which file it is
    (the wnid of a file named like the ImageNet samples, whose name is the caption)."""
    path = Path(name)
    sample = _images.sample_label(name)
    ident = sample[0] if sample and sample[1] == caption else \
        f"{path.parent.name}/{path.stem}" if path.parent.name and not caption else path.stem
    return (textwrap.wrap(caption, width) if caption else []) + textwrap.wrap(ident, width, break_on_hyphens=False)


def figure(display: list[np.ndarray], names: list[str], queries, idx: np.ndarray, dist: np.ndarray,
           title: str = "", captions: list[str | None] | None = None):
    """One row per query: the query (red frame), then its neighbours nearest first, each titled with its
    distance and its class (`captions`, e.g. class names) or file name."""
    from matplotlib.figure import Figure  # lazy (--help)

    q, k = idx.shape
    cells = [[(queries[r], "query")] + [(j, f"d={dist[r, c]:.3g}") for c, j in enumerate(idx[r])]
             for r in range(q)]
    texts = [[[label, *cell_caption(names[j], captions[j] if captions else None)] for j, label in row]
             for row in cells]
    lines = max(len(t) for row in texts for t in row)
    width = 1.6 * (k + 1)
    head = [ln for part in title.splitlines() for ln in textwrap.wrap(part, int(width * 15))]
    fig = Figure(figsize=(width, q * (1.45 + 0.13 * lines) + 0.2 + 0.16 * len(head)), layout="constrained")
    axes = fig.subplots(q, k + 1, squeeze=False)
    for r in range(q):
        for c, (j, _) in enumerate(cells[r]):
            ax = axes[r][c]
            im = display[j]
            ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray" if im.shape[-1] == 1 else None,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title("\n".join(texts[r][c]), fontsize=6)
            if c == 0:
                for sp in ax.spines.values():
                    sp.set_color("red")
                    sp.set_linewidth(2)
    if head:
        fig.suptitle("\n".join(head), fontsize=8)
    return fig


def draw(display: list[np.ndarray], names: list[str], queries, idx: np.ndarray, dist: np.ndarray,
         out_png: str, title: str = "", captions: list[str | None] | None = None) -> str:
    figure(display, names, queries, idx, dist, title, captions).savefig(out_png, dpi=90)
    return out_png


def captions(restored, args, inputs) -> list[str | None]:
    """Each image's class name: from its label (dataset images), or from a file named like the shared
    ImageNet samples (`<wnid>_<name>.JPEG`); None where neither is known."""
    cfg = restored.config.replace(dataset=args.dataset) if args.dataset else restored.config
    cfg = cfg.replace(data_dir=args.data_dir) if args.data_dir else cfg
    names = _images.class_names(cfg).names if any(lb is not None for lb in inputs.labels) else []
    out = []
    for name, label in zip(inputs.names, inputs.labels, strict=True):
        sample = _images.sample_label(name)
        out.append(names[label] if label is not None and label < len(names) else sample[1] if sample else None)
    return out


def run(args) -> int:
    r = _cli.restore_from_args(args)
    inputs = _images.load_inputs(r, images=args.images, dataset=args.dataset, split=args.split,
                                 limit=args.limit, data_dir=args.data_dir, seed=args.seed)
    _, taps = _cli.run_model(r, inputs.x, args.batch_size)
    feats = _cli.features(r, taps)
    n = len(feats)
    queries = args.query_indices if args.query_indices else list(range(min(args.queries, n)))
    k = min(args.k, n - 1)
    if k < 1:
        raise UsageError(f"neighbours needs at least 2 images, {inputs.source} gave {n}: give more --images "
                         f"or a larger --limit")
    if any(not 0 <= q < n for q in queries):
        raise UsageError(f"--query-indices {[q for q in queries if not 0 <= q < n]} outside the {n} images: "
                         f"give indices 0..{n - 1}")
    idx = nearest_neighbours(feats, queries, k)
    dist = distances(feats, queries, idx)
    layer = r.model.feature_layer
    out = _cli.out_path(args, r.workdir, "neighbours.png")
    draw(inputs.display, inputs.names, queries, idx, dist, out, captions=captions(r, args, inputs),
         title=f"{os.path.basename(r.workdir)} step {r.step}: the {k} nearest neighbours in {layer} feature space "
               f"(Euclidean distance d) of {len(queries)} queries (first column, red frame) among {n} images "
               f"of {inputs.source}\n({inputs.pick})")
    rows = []
    for qi, q in enumerate(queries):
        pairs = list(zip(idx[qi].tolist(), dist[qi].tolist(), strict=True))
        rows.append({"index": int(q), "name": inputs.names[q], "label": inputs.labels[q],
                     "neighbours": [{"index": j, "name": inputs.names[j], "label": inputs.labels[j],
                                     "distance": d} for j, d in pairs]})
        print(f"{inputs.names[q]}: " + ", ".join(f"{inputs.names[j]} ({d:.3g})" for j, d in pairs))
    same = [nb["label"] == row["label"]
            for row in rows if row["label"] is not None for nb in row["neighbours"]]
    summary = {"tool": "neighbours", "workdir": r.workdir, "step": r.step, "feature_layer": layer,
               "feature_dim": int(feats.shape[1]), "images": n, "source": inputs.source, "pick": inputs.pick,
               "mean": inputs.mean,
               "k": k, "queries": len(queries), "same_label_fraction": float(np.mean(same)) if same else None,
               "out": out}
    summary["json"] = _cli.write_json(os.path.splitext(out)[0] + ".json", dict(summary, rows=rows))
    _cli.emit(summary)
    return 0

