#!/usr/bin/env python3
"""The full 2012 AlexNet recipe on ILSVRC-2012, for a GPU/TPU host with imagenet2012 prepared.

    alexnet-jax prepare imagenet2012 --source /data/ILSVRC2012 --data-dir $TFDS_DATA_DIR   # the two tars
    python experiments/alexnet_imagenet.py --workdir runs/alexnet_imagenet                  # 2 devices: columns split

Krizhevsky, Sutskever & Hinton 2012 (K12 §2, §4-5; experiments/REPRODUCTION.md): the two-column
net, batch 128, SGD momentum 0.9, weight decay 0.0005, lr 0.01 divided by 10 whenever the
validation error stops improving (three times), about 90 epochs; weights N(0, 0.01), biases 1 in
conv2/4/5 and fc6/7; 224 crops of the 256x256 images (+ conv1's 3 px padding, as cuda-convnet) with
horizontal flips and PCA lighting noise (sigma 0.1), per-pixel mean subtraction; 10-view testing.
Published (ILSVRC-2012 validation, one CNN): 40.7% top-1 / 18.2% top-5 error (Table 2); the
ILSVRC-2010 test set: 37.5% / 17.0% (Table 1). 5-6 days on two GTX 580s.

With two or more devices the columns are split over a `model` axis of 2 (the rest is `data`);
with one device both columns run on it.  The run resumes from --workdir after any interruption.
At the end the script evaluates the newest checkpoint with 10-view testing and writes
results.json (top-1/top-5 error next to the paper's) into the workdir.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PAPER = {"top1_error": 0.407, "top5_error": 0.182}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--workdir", default="runs/alexnet_imagenet")
    p.add_argument("--data-dir", default=None, help="TFDS data dir holding imagenet2012")
    p.add_argument("--mesh-model", type=int, default=-1,
                   help="2 = split the columns, 1 = both on each device (default -1: 2 when >= 2 devices)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    args = p.parse_args(argv)

    import jax

    from alexnet_jax.config import apply_overrides
    from alexnet_jax.configs import get_config
    from alexnet_jax.restore import evaluate_workdir
    from alexnet_jax.run import train_and_evaluate

    config = get_config("alexnet_imagenet").replace(mesh_model=args.mesh_model, data_dir=args.data_dir or "")
    config = apply_overrides(config, args.set)
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}", flush=True)
    train_and_evaluate(config, args.workdir, progress=sys.stderr.isatty())
    ev = evaluate_workdir(args.workdir, ten_crop=True)
    res = {"top1_error": 1 - ev["top1"], "top5_error": 1 - ev["top5"], "examples": ev["examples"],
           "step": ev["step"], "paper": PAPER}
    Path(args.workdir, "results.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
