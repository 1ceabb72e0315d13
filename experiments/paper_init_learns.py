#!/usr/bin/env python3
"""Does the paper's initialisation learn at full width and input 227?  Memorise 100 ImageNet photos.

    python experiments/paper_init_learns.py [--out runs/paper_init_learns] [--max-steps 600] [--publish NAME]

K12 §5 starts every weight at N(0, 0.01) with biases 1 in conv2/4/5 and fc6/7.  At CIFAR scale that
rule starves the signal (init-stats, README): this script checks that at the paper's own size it does
not.  The 100 photos of ../shared/data/imagenet_samples (one each of 100 ILSVRC-2012 classes) are
prepared as imagenet2012/raw256 (shorter side 256, centre 256x256, K12 §2) and the `alexnet_imagenet`
recipe's Trainer trains on them as published (two-column net, width 1, crops + flips + PCA
lighting, dropout, SGD momentum 0.9, weight decay 5e-4, lr 0.01, paper init), except: input 227 (the
recipe's 224 plus the author's 3 px of padding has the same 55x55 geometry), batch 50 (two
batches an epoch), a constant learning rate, and evaluation every 25 steps on the training photos
themselves (centre crop).  Memorising 100 photos needs features: the bias of fc8 alone predicts one class, 1%.
The run (the project's training loop, workdir --out/run, one checkpoint at the end) stops when training
top-1 reaches --target (default 0.5) or at --max-steps, and reports the step and the wall time
(results.json in --out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parents[1] / "shared" / "data" / "imagenet_samples" / "imagenet_samples_100.tar"


def photo_tree(tar: Path, root: Path) -> Path:
    """train/<wnid>/<file>: a class-per-folder tree of the sample photos (one per class)."""
    from alexnet_jax.data import read_image_files

    for name, data in read_image_files([str(tar)]):
        wnid = Path(name).name.split("_")[0]
        d = root / "train" / wnid
        d.mkdir(parents=True, exist_ok=True)
        (d / Path(name).name).write_bytes(data)
    return root


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", default="runs/paper_init_learns")
    p.add_argument("--samples", default=str(SAMPLES), help="the 100 photos (tar or folder)")
    p.add_argument("--max-steps", type=int, default=600)
    p.add_argument("--target", type=float, default=0.5, help="training top-1 to reach")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--publish", metavar="NAME", help="also copy results.json and curves.png to experiments/results")
    args = p.parse_args(argv)

    from alexnet_jax import data as data_lib
    from alexnet_jax.config import apply_overrides
    from alexnet_jax.configs import get_config
    from alexnet_jax.run import train_and_evaluate

    out = Path(args.out)
    workdir = out / "run"
    if workdir.exists():
        print(f"error: {workdir} holds an earlier run; remove it or choose another --out", file=sys.stderr)
        return 2
    tfds = out / "tfds"
    if not (tfds / "imagenet2012").exists():
        if not Path(args.samples).exists():
            print(f"error: {args.samples} not found; pass --samples", file=sys.stderr)
            return 2
        data_lib.prepare("imagenet2012/raw256", str(photo_tree(Path(args.samples), out / "photos")), str(tfds))
    config = get_config("alexnet_imagenet").replace(
        data_dir=str(tfds), dataset="imagenet2012/raw256", eval_split="train", batch_size=50, lr_schedule="constant",
        ten_crop=False, num_workers=2, input_size=227, num_steps=args.max_steps, log_every_steps=1,
        checkpoint_every_steps=args.max_steps, keep_checkpoints=1)
    config = apply_overrides(config, args.set)
    # an evaluation every --eval-every steps: the loader's steps per epoch are the training examples // batch
    steps_per_epoch = data_lib.dataset_info(config).splits[config.train_split] // config.batch_size
    config = config.replace(eval_every_epochs=args.eval_every / steps_per_epoch)
    t0, reached, history = time.time(), None, []
    print(f"{config.model} width {config.width} input {config.input_size} init {config.init}", flush=True)

    def after_eval(ev, train) -> bool:
        nonlocal reached
        # train: the record of the step just before the evaluation (log_every_steps=1)
        history.append({"step": ev["step"], "top1": ev["top1"], "top5": ev["top5"], "loss": ev["loss"],
                        "train_loss": train["loss"], "wall_seconds": time.time() - t0})
        print(json.dumps(history[-1]), flush=True)
        if ev["top1"] >= args.target:
            reached = history[-1]
        return reached is not None

    train_and_evaluate(config, str(workdir), progress=False, after_eval=after_eval)
    result = {"question": f"does the paper's init learn at full width and input {config.input_size}?",
              "photos": 100, "batch": config.batch_size, "lr": config.lr, "init": config.init,
              "width": config.width, "input_size": config.input_size, "target_top1": args.target,
              "reached": reached, "history": history, "wall_seconds": time.time() - t0}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    if args.publish:
        sys.path.insert(0, str(HERE))
        from _results import publish
        publish(out, args.publish, ["results.json"])
    return 0 if reached else 1


if __name__ == "__main__":
    sys.exit(main())
