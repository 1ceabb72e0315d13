#!/usr/bin/env python3
"""Which JPEG decoder should the host loader use?  Pillow, simplejpeg and OpenCV on the same files.

    python experiments/jpeg_decoders.py [--images ../shared/data/imagenet_samples/imagenet_samples_100.tar]

Two workloads, one thread, each decoder timed on the same bytes (best of --repeats passes):
  jpeg256   the 100 sample photos as the `imagenet2012/jpeg256` store holds them: shorter side 256, centre
            256x256, re-encoded at quality 90, decoded to uint8 RGB;
  original  the photos as shipped, decoded at reduced size for a 256 short side: the largest libjpeg DCT
            scale 1/2, 1/4 or 1/8 that keeps the shorter side >= 256 (Pillow `draft`, simplejpeg
            `min_height/min_width`, OpenCV `IMREAD_REDUCED_COLOR_k`), as `alexnet_jax.data.files` does.
Decoders that are not installed are reported as absent (OpenCV is not a dependency: install
opencv-python-headless to include it).  The last line is JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from alexnet_jax.data import files
from alexnet_jax.data.catalog import JPEG256_QUALITY

HERE = Path(__file__).resolve().parent


def scale_for(data: bytes) -> int:
    """The DCT reduction the loader uses for a 256 px short side (alexnet_jax.data.files.dct_scale)."""
    return files.dct_scale(*files.image_size(data), 256, 256)


def decoders() -> dict:
    out = {}

    def pil_full(b):
        return np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))

    def pil_reduced(b):
        im = Image.open(io.BytesIO(b))
        d = scale_for(b)
        im.draft("RGB", (im.size[0] // d, im.size[1] // d))
        return np.asarray(im.convert("RGB"))

    out["pillow"] = (pil_full, pil_reduced)
    try:
        import simplejpeg

        def sj_full(b):
            return simplejpeg.decode_jpeg(b, colorspace="RGB")

        def sj_reduced(b):
            h, w, _, _ = simplejpeg.decode_jpeg_header(b)
            d = scale_for(b)
            return simplejpeg.decode_jpeg(b, colorspace="RGB", min_height=-(-h // d), min_width=-(-w // d))

        out["simplejpeg"] = (sj_full, sj_reduced)
    except ImportError:
        out["simplejpeg"] = None
    try:
        import cv2

        cv2.setNumThreads(1)

        def cv_full(b):
            return cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

        def cv_reduced(b):
            flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                    8: cv2.IMREAD_REDUCED_COLOR_8}[scale_for(b)]
            return cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), flag), cv2.COLOR_BGR2RGB)

        out["opencv"] = (cv_full, cv_reduced)
    except ImportError:
        out["opencv"] = None
    return out


def time_one(fn, data: list[bytes], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for b in data:
            fn(b)
        best = min(best, time.perf_counter() - t)
    return len(data) / best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", default=str(HERE.parents[1] / "shared" / "data" / "imagenet_samples" /
                                           "imagenet_samples_100.tar"))
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if not Path(args.images).is_file():
        print(f"error: {args.images} not found; pass --images", file=sys.stderr)
        return 2
    originals = [data for _, data in files.read_image_files([args.images])]
    small = [files.encode_jpeg(files.decode_fit(b, (256, 256, 3)), JPEG256_QUALITY) for b in originals]
    res = {"photos": len(originals), "load_average": os.getloadavg(), "images_per_second_one_thread": {}}
    ref = {}
    print(f"{'decoder':12s} {'jpeg256 img/s':>14s} {'original (reduced) img/s':>26s}")
    for name, fns in decoders().items():
        if fns is None:
            res["images_per_second_one_thread"][name] = "absent"
            print(f"{name:12s} {'absent':>14s}")
            continue
        full, reduced = fns
        same = {}
        for kind, fn, data in (("jpeg256", full, small), ("original", reduced, originals)):
            outs = [fn(b) for b in data[:10]]
            if kind not in ref:
                ref[kind] = outs
            same[kind] = all(a.shape == b.shape and int(np.abs(a.astype(int) - b).max()) <= 1
                             for a, b in zip(outs, ref[kind]))
        r = {"jpeg256": time_one(full, small, args.repeats), "original_reduced": time_one(reduced, originals,
                                                                                            args.repeats),
             "pixels_match_pillow_within_1": same}
        res["images_per_second_one_thread"][name] = r
        print(f"{name:12s} {r['jpeg256']:14,.0f} {r['original_reduced']:26,.0f}   same pixels as Pillow (+-1): {same}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
