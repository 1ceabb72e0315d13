#!/usr/bin/env python3
"""How exactly the model zoo imports the published AlexNets, and what the paper's LRN does to Caffe's net.

    python experiments/zoo_fidelity.py check [--out runs/zoo_fidelity] [--publish NAME]
    python experiments/zoo_fidelity.py lrn --workdir IMPORTED_BVLC [--images PHOTOS ...] [--out DIR]

No published weight file is available offline here, so `check` makes its own at full size, with the
references the tests use (tests/zoo_reference.py):

* torchvision: a torch module with torchvision.models.alexnet's structure (61,100,840 parameters, PyTorch's
  default random init, fc8's bias set so the classes separate), saved with torch.save (zip and legacy
  formats), imported with `alexnet-jax import torchvision`; on the 100 sample photos (each through
  torchvision's transform written out on PIL for the reference, through the tools' recorded preprocessing
  for ours) the relative difference max|ours - ref| / max|ref| of every layer, and the top-5 classes;
  then export -> import, compared bit for bit, and the exported file's logits in the reference.
* Caffe: bvlc_alexnet blobs at full size (60,965,224 parameters, random, He-scaled), written as .caffemodel
  by the protobuf runtime in the V2 (`layer`) and legacy V1 (`layers`, 4-D blobs) formats, imported with
  `alexnet-jax import caffe`; every layer against a float64 numpy forward pass with Caffe's semantics on
  two random centred inputs.
* LRN: that imported bvlc net (lrn=caffe, exact) run again with the paper's LRN (lrn=paper: k=2, alpha per
  element, each column alone) on the 100 photos: the relative change of every layer, top-1 agreement and
  top-5 overlap.  Random weights say how large the change is for *this* net only; `lrn` measures it on any
  imported workdir, e.g. the published bvlc_alexnet.caffemodel (README: where to download it).

Needs torch (the `peer` extra) for the torchvision part and google.protobuf (installed with
tensorflow-datasets) for the Caffe files.  Writes results.json and report.md to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAMPLES = ROOT.parent / "shared" / "data" / "imagenet_samples" / "imagenet_samples_100.tar"
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


def _reference():
    sys.path.insert(0, str(ROOT / "tests"))   # the tests' independent references
    import zoo_reference

    return zoo_reference


def rel_max(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def run_workdir(workdir: str, images: list[str], lrn: str | None = None):
    """(logits, {layer: columns joined, NCHW / NC}) of a workdir on image files through the tools' path;
    `lrn` rebuilds the 2012 net with another LRN (the same parameters)."""
    from alexnet_jax.restore import restore_workdir as restore
    from alexnet_jax.tools import _cli, _images
    from alexnet_jax.trainer import Trainer

    r = restore(workdir)
    if lrn is not None and lrn != r.config.lrn:
        t = r.trainer
        other = Trainer.build(t.config.replace(lrn=lrn), t.mesh, batch_size=t.plan.batch_size, augment=t.augment)
        r = dataclasses.replace(r, trainer=other)
    inputs = _images.load_inputs(r, images=images)
    logits, taps = _cli.run_model(r, inputs.x, batch_size=10)
    joined = {}
    for k, cols in taps.items():
        v = np.concatenate(cols, axis=-1)
        joined[k] = v.transpose(0, 3, 1, 2) if v.ndim == 4 else v
    return logits, joined


def top_k(logits, k=5):
    return np.argsort(-np.asarray(logits), axis=1, kind="stable")[:, :k]


def sample_photos(folder: Path) -> list[str]:
    from alexnet_jax.data import read_image_files

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, data in read_image_files([str(SAMPLES)]):
        p = folder / Path(name).name
        p.write_bytes(data)
        out.append(str(p))
    return out


def import_cli(argv: list[str]) -> dict:
    import contextlib
    import io

    from alexnet_jax.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    if rc != 0:
        raise SystemExit(f"alexnet-jax {' '.join(argv)} failed")
    return json.loads(buf.getvalue().strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
def check_torchvision(out: Path, photos: list[str], zr) -> dict:
    import torch

    torch.manual_seed(0)
    net = zr.torchvision_alexnet(1.0, 1000).eval()
    x = np.stack([zr.torchvision_input(Path(p).read_bytes()) for p in photos])
    zr.separate_classes(net, x)
    res = {"parameters": int(sum(p.numel() for p in net.parameters()))}
    for fmt in ("zip", "legacy"):
        torch.save(net.state_dict(), out / f"tv_{fmt}.pth", _use_new_zipfile_serialization=fmt == "zip")
        t = time.perf_counter()
        import_cli(["import", "torchvision", str(out / f"tv_{fmt}.pth"), "--workdir", str(out / f"tv_{fmt}")])
        res[f"import_seconds_{fmt}"] = time.perf_counter() - t
    ref_logits, ref = zr.torchvision_taps(net, x)
    logits, ours = run_workdir(str(out / "tv_zip"), photos)
    res["per_layer_rel_max"] = {k: rel_max(ours[k], ref[k]) for k in LAYERS}
    t5o, t5r = top_k(logits), top_k(ref_logits)
    res["photos"] = len(photos)
    res["top5_identical_in_order"] = int(np.sum(np.all(t5o == t5r, axis=1)))
    res["distinct_top1_classes"] = len(set(t5r[:, 0].tolist()))
    legacy_logits, _ = run_workdir(str(out / "tv_legacy"), photos)
    res["legacy_vs_zip_logits_identical"] = bool(np.array_equal(legacy_logits, logits))
    import_cli(["export", "torchvision", "--workdir", str(out / "tv_zip"), str(out / "tv_back.pth")])
    back = torch.load(out / "tv_back.pth", weights_only=True)
    res["export_state_dict_bitwise"] = all(torch.equal(back[k], v) for k, v in net.state_dict().items())
    import_cli(["import", "torchvision", str(out / "tv_back.pth"), "--workdir", str(out / "tv_back")])
    back_logits, _ = run_workdir(str(out / "tv_back"), photos)
    res["reimport_logits_bitwise"] = bool(np.array_equal(back_logits, logits))
    net2 = zr.torchvision_alexnet(1.0, 1000).eval()
    net2.load_state_dict(back)
    res["exported_file_logits_rel_max"] = rel_max(zr.torchvision_taps(net2, x)[0], logits)
    return res


def check_caffe(out: Path, zr) -> dict:
    blobs = zr.bvlc_blobs(1.0, 1000, seed=4)
    rng = np.random.default_rng(6)
    mean = rng.uniform(80, 140, (3, 256, 256)).astype(np.float32)
    (out / "mean.binaryproto").write_bytes(zr.binaryproto_bytes(mean))
    x_bgr = rng.uniform(-120, 120, (2, 3, 227, 227))
    ref = zr.caffe_forward(blobs, x_bgr)
    res = {}
    for fmt in ("V2", "V1"):
        (out / f"bvlc_{fmt}.caffemodel").write_bytes(zr.caffemodel_bytes(blobs, fmt))
        (out / f"deploy_{fmt}.prototxt").write_text(zr.bvlc_deploy(1.0, 1000, v1=fmt == "V1"))
        t = time.perf_counter()
        info = import_cli(["import", "caffe", str(out / f"bvlc_{fmt}.caffemodel"), "--deploy",
                           str(out / f"deploy_{fmt}.prototxt"), "--mean", str(out / "mean.binaryproto"),
                           "--workdir", str(out / f"bvlc_{fmt}")])
        seconds = time.perf_counter() - t
        ours = _caffe_layers(str(out / f"bvlc_{fmt}"), x_bgr)
        res[fmt] = {"parameters": info["parameters"], "bytes": (out / f"bvlc_{fmt}.caffemodel").stat().st_size,
                    "import_seconds": seconds, "per_layer_rel_max": {k: rel_max(ours[k], ref[k]) for k in LAYERS}}
    return res


def _caffe_layers(workdir: str, x_bgr) -> dict[str, np.ndarray]:
    import jax

    from alexnet_jax.restore import restore_workdir as restore

    r = restore(workdir)
    x = np.ascontiguousarray(x_bgr[:, ::-1].transpose(0, 2, 3, 1), np.float32)
    _, taps = jax.jit(lambda p, e, x: r.trainer.forward(p, e, x, taps=True))(r.state.params, r.state.extra, x)
    out = {}
    for k, cols in taps.items():
        v = np.concatenate([np.asarray(c) for c in cols], axis=-1)
        out[k] = v.transpose(0, 3, 1, 2) if v.ndim == 4 else v
    return out


def lrn_change(workdir: str, photos: list[str]) -> dict:
    """The paper's LRN in place of Caffe's on an imported bvlc net (same parameters)."""
    logits_c, caffe = run_workdir(workdir, photos, lrn="caffe")
    logits_p, paper = run_workdir(workdir, photos, lrn="paper")
    t5c, t5p = top_k(logits_c), top_k(logits_p)
    overlap = [len(set(a) & set(b)) / 5 for a, b in zip(t5c.tolist(), t5p.tolist(), strict=True)]
    def cosine(a, b):
        a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
        return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))

    return {"workdir": workdir, "photos": len(photos),
            "per_layer_rel_l2_change": {k: rel_l2(paper[k], caffe[k]) for k in LAYERS},
            "per_layer_norm_ratio": {k: float(np.linalg.norm(paper[k]) / np.linalg.norm(caffe[k])) for k in LAYERS},
            "per_layer_cosine": {k: cosine(paper[k], caffe[k]) for k in LAYERS},
            "top1_agreement": float(np.mean(t5c[:, 0] == t5p[:, 0])), "top5_overlap": float(np.mean(overlap)),
            "caffe_top1_distinct": len(set(t5c[:, 0].tolist()))}


def report(res: dict) -> str:
    lines = ["# Model zoo fidelity (weights made here; `python experiments/zoo_fidelity.py check`)", ""]
    tv = res.get("torchvision")
    if tv:
        lines += [f"torchvision alexnet, {tv['parameters']:,} parameters, {tv['photos']} sample photos:", "",
                  "| layer | " + " | ".join(LAYERS) + " |", "|---|" + "---|" * len(LAYERS),
                  "| max rel. difference | " + " | ".join(f"{tv['per_layer_rel_max'][k]:.1e}" for k in LAYERS) + " |",
                  "", f"- top-5 identical (in order): {tv['top5_identical_in_order']} of {tv['photos']} photos "
                  f"({tv['distinct_top1_classes']} distinct top-1 classes)",
                  f"- legacy-format file gives the same logits as the zip file: {tv['legacy_vs_zip_logits_identical']}",
                  f"- export gives back the imported state_dict bit for bit: {tv['export_state_dict_bitwise']}; "
                  f"re-import gives bitwise the same logits: {tv['reimport_logits_bitwise']}",
                  f"- exported file in the reference vs ours: max rel. logit difference "
                  f"{tv['exported_file_logits_rel_max']:.1e}", ""]
    cf = res.get("caffe")
    if cf:
        lines += ["bvlc_alexnet layout, full size, against float64 numpy with Caffe's semantics (2 random inputs):", "",
                  "| format | params | " + " | ".join(LAYERS) + " |", "|---|---|" + "---|" * len(LAYERS)]
        for fmt in ("V2", "V1"):
            lines.append(f"| {fmt} | {cf[fmt]['parameters']:,} | "
                         + " | ".join(f"{cf[fmt]['per_layer_rel_max'][k]:.1e}" for k in LAYERS) + " |")
        lines.append("")
    lr = res.get("lrn")
    if lr:
        lines += [f"The paper's LRN instead of Caffe's on that imported net ({lr['photos']} photos; random weights: "
                  "this says how much the change can matter, not what it does to the published net):", "",
                  "| layer | " + " | ".join(LAYERS[1:]) + " |", "|---|" + "---|" * (len(LAYERS) - 1),
                  "| rel. L2 change | " + " | ".join(f"{lr['per_layer_rel_l2_change'][k]:.3f}" for k in LAYERS[1:])
                  + " |",
                  "| norm, paper / Caffe | " + " | ".join(f"{lr['per_layer_norm_ratio'][k]:.3f}" for k in LAYERS[1:])
                  + " |",
                  "| cosine, per image | " + " | ".join(f"{lr['per_layer_cosine'][k]:.4f}" for k in LAYERS[1:])
                  + " |", "", f"- top-1 agreement {100 * lr['top1_agreement']:.0f}%, top-5 overlap "
                  f"{100 * lr['top5_overlap']:.0f}% ({lr['caffe_top1_distinct']} distinct top-1 classes with "
                  f"Caffe's LRN)", ""]
    if "load_average" in res:
        lines.append(f"2 CPU cores, load average {res['load_average']}; {res.get('seconds', 0):.0f} s.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="full-size fidelity on weights made here (+ the LRN change on them)")
    c.add_argument("--out", default="runs/zoo_fidelity")
    c.add_argument("--publish", help="copy results.json and report.md to experiments/results/NAME")
    c.add_argument("--skip", nargs="*", default=[], choices=["torchvision", "caffe"])
    lr = sub.add_parser("lrn", help="the paper's LRN vs Caffe's on an imported bvlc workdir")
    lr.add_argument("--workdir", required=True)
    lr.add_argument("--images", nargs="+", help=f"photos (default: {SAMPLES})")
    lr.add_argument("--out", default="runs/zoo_lrn")
    args = p.parse_args(argv)
    import os

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.cmd == "lrn":
        photos = args.images or sample_photos(out / "photos")
        res = {"lrn": lrn_change(args.workdir, photos)}
    else:
        zr = _reference()
        photos = sample_photos(out / "photos")
        res = {}
        if "torchvision" not in args.skip:
            res["torchvision"] = check_torchvision(out, photos, zr)
        if "caffe" not in args.skip:
            res["caffe"] = check_caffe(out, zr)
            res["lrn"] = lrn_change(str(out / "bvlc_V2"), photos)
    res["seconds"] = time.perf_counter() - t0
    res["load_average"] = [round(v, 2) for v in os.getloadavg()]
    (out / "results.json").write_text(json.dumps(res, indent=1))
    (out / "report.md").write_text(report(res))
    print(report(res))
    if getattr(args, "publish", None):
        sys.path.insert(0, str(HERE))
        from _results import publish

        publish(out, args.publish, ["results.json", "report.md"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
