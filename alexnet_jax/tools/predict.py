"""Top-5 predicted classes, with names, for image files, folders or tar archives.

    alexnet-jax predict --workdir runs/alexnet_imagenet \\
        ../shared/data/imagenet_samples/imagenet_samples_100.tar
    alexnet-jax predict --workdir runs/alexnet_cifar10 photo.jpg more_photos/ [--top 5] [--limit N]

Preprocessing is the checkpoint's evaluation preprocessing (`alexnet_jax.data.augment.Augment.eval`):
for `augment=alexnet` the shorter side is resized to 256, the centre 256x256 kept, the training set's
per-pixel mean image subtracted and the centre input_size crop taken (K12 §2); for `cifar` the photo
is resized on its shorter side to 32 and centre-cropped (rather than squashed), then centred the same
way as training.  When the training set is not prepared on this machine, its mean image cannot be
computed and a per-channel mean stands in (reported in the JSON as "mean").  The checkpoint runs on
every device present (the two-column net split over 2 devices when there are 2+).

Class names come from the checkpoint's dataset (`dataset_info(config).class_names`) when it is
prepared here; a 1000-way model without it gets the ILSVRC-2012 wnids in TFDS label order.  ImageNet
wnids are shown with readable names (tensorflow_datasets ships the standard 1000 names in
datasets/siscore/labels.py, read offline).  Files named like the shared samples, `<wnid>_<name>.JPEG`,
also report that expected class and whether it is in the top 5.  The last stdout line is JSON.
"""

from __future__ import annotations

import numpy as np

from alexnet_jax.tools import _cli, _images


def add_arguments(p) -> None:
    p.add_argument("images", nargs="+", help="image files, folders of images, or tar archives")
    _cli.add_checkpoint_args(p, "report JSON (default <workdir>/analysis/predict.json)")
    p.add_argument("--top", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--limit", type=int, help="at most this many images")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, probabilities) of the k most probable classes per row, most probable first."""
    k = min(k, probs.shape[-1])
    idx = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return idx, np.take_along_axis(probs, idx, axis=-1)


def run(args) -> int:
    r = _cli.restore_from_args(args)
    inputs = _images.load_inputs(r, images=args.images, limit=args.limit)
    names = _images.class_names(r.config)
    probs = softmax(_cli.run_model(r, inputs.x, args.batch_size)[0])
    idx, p = top_k(probs, args.top)
    rows, hits = [], []
    for i, name in enumerate(inputs.names):
        top = [{"rank": j + 1, "class": int(c), "id": names.ids[c], "name": names.names[c], "prob": float(q)}
               for j, (c, q) in enumerate(zip(idx[i].tolist(), p[i].tolist(), strict=True))]
        row = {"file": name, "top": top}
        expected = _images.sample_label(name)
        if expected and expected[0] in names.ids:
            row["expected"] = {"id": expected[0], "name": expected[1]}
            row["in_top"] = any(t["id"] == expected[0] for t in top)
            hits.append(row["in_top"])
        rows.append(row)
        print(name + (f"  (expected {expected[1]}, {expected[0]})" if expected else ""))
        for t in top:
            label = t["name"] if t["name"] == t["id"] else f"{t['name']} ({t['id']})"
            print(f"  {t['rank']}. {t['prob']:7.4f}  {label}")
    out = _cli.out_path(args, r.workdir, "predict.json")
    summary = {"tool": "predict", "workdir": r.workdir, "step": r.step,
               "num_classes": int(r.config.num_classes), "class_names": names.source, "mean": inputs.mean,
               "images": len(rows), "top": int(idx.shape[1]),
               "expected_in_top": (sum(hits) / len(hits)) if hits else None, "out": out, "predictions": rows}
    _cli.write_json(out, summary)
    _cli.emit(summary)
    return 0

