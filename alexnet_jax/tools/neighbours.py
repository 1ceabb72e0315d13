"""Nearest neighbours in fc7 feature space, as a PNG grid (Figure 4 of K12).

    alexnet-jax neighbours --workdir runs/alexnet_cifar10 [--split validation --limit 500] [--queries 8]
    alexnet-jax neighbours --workdir runs/alexnet_imagenet --k 6 \
        --images ../shared/data/imagenet_samples/imagenet_samples_100.tar

K12 §6.1: images whose last-hidden-layer feature vectors are close in Euclidean distance are
similar for the network, even when their pixels are not.  The features are the 4096-d post-ReLU fc7
outputs (AlexNet2012: both columns' fc7 after the exchange, i.e. what fc8 reads; the one-column nets'
last hidden layer; LeNet's F6), read from the model's own taps in evaluation mode.  The pool is
`--limit` images from a dataset split (default: the checkpoint's dataset and eval split) or the given
image files/folders/tars, preprocessed as evaluation batches.  The queries are the first `--queries`
images of the pool (or `--query-indices`); each row of the PNG shows a query (first column) and its
`--k` nearest neighbours in the pool by Euclidean distance, the query itself excluded.  The last
stdout line is a JSON summary (neighbour indices, names and distances are in the .json beside the PNG).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from alexnet_jax.tools import _cli, _images


def add_arguments(p) -> None:
    _cli.add_checkpoint_args(p, "PNG (default <workdir>/analysis/neighbours.png; details in the .json "
                                   "beside it)")
    _cli.add_input_args(p, limit=500)
    p.add_argument("--queries", type=int, default=8, help="the first N images are the queries (default 8)")
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


def draw(display: list[np.ndarray], names: list[str], queries, idx: np.ndarray, dist: np.ndarray,
         out_png: str, title: str = "") -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q, k = idx.shape
    fig, axes = plt.subplots(q, k + 1, figsize=(1.6 * (k + 1), 1.75 * q + 0.4), squeeze=False)
    for r in range(q):
        cells = [(queries[r], "query")] + [(j, f"d={dist[r, c]:.3g}") for c, j in enumerate(idx[r])]
        for c, (j, label) in enumerate(cells):
            ax = axes[r][c]
            im = display[j]
            ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray" if im.shape[-1] == 1 else None,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            path = Path(names[j])
            short = f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem
            ax.set_title(f"{label}\n{short[:24]}", fontsize=6)
            if c == 0:
                for s in ax.spines.values():
                    s.set_color("red")
                    s.set_linewidth(2)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()) if title else None)   # room for the title
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def run(args) -> int:
    r = _cli.restore(args)
    inputs = _images.load_inputs(r, images=args.images, dataset=args.dataset, split=args.split,
                                 limit=args.limit, data_dir=args.data_dir)
    _, taps = _cli.run_model(r, inputs.x, args.batch_size)
    feats = _cli.features(r, taps)
    n = len(feats)
    queries = args.query_indices if args.query_indices else list(range(min(args.queries, n)))
    k = min(args.k, n - 1)
    if k < 1:
        raise ValueError(f"need at least 2 images for neighbours, got {n}")
    idx = nearest_neighbours(feats, queries, k)
    dist = distances(feats, queries, idx)
    layer = r.model.feature_layer
    out = _cli.out_path(args, r.workdir, "neighbours.png")
    draw(inputs.display, inputs.names, queries, idx, dist, out,
         title=f"{os.path.basename(r.workdir)} step {r.step}: {layer} nearest neighbours ({inputs.source})")
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
               "feature_dim": int(feats.shape[1]), "images": n, "source": inputs.source, "mean": inputs.mean,
               "k": k, "queries": len(queries), "same_label_fraction": float(np.mean(same)) if same else None,
               "out": out}
    summary["json"] = _cli.write_json(os.path.splitext(out)[0] + ".json", dict(summary, rows=rows))
    _cli.emit(summary)
    return 0

