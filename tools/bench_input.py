"""Input-pipeline throughput: images/s of ``next(train_iter)`` (and optionally a full eval pass).

    python tools/bench_input.py --dataset mnist --augment lenet
    python tools/bench_input.py --dataset cifar10 --augment cifar --batch-size 128
    python tools/bench_input.py --dataset mnist --augment lenet --pipeline stream    # the grain path

The dataset is prepared into --data-dir first when missing (digits: always possible; mnist / cifar10
from ../shared/data when present, or --source).  ``--pipeline memory|stream`` forces a path by setting
$ALEXNET_JAX_IN_MEMORY_MAX_BYTES (auto: in memory when the split fits).  Setup time (decode, cache) is
reported separately from the steady-state rate.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SOURCES = {"mnist": SHARED / "mnist", "cifar10": SHARED / "cifar10" / "cifar10_train_jpeg.tar.gz"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=("digits", "mnist", "cifar10", "imagenet2012"))
    p.add_argument("--augment", default="lenet")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 (128 for cifar10)")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--data-dir", default=os.environ.get("TFDS_DATA_DIR", "/tmp/bench_tfds"))
    p.add_argument("--source", default=None)
    p.add_argument("--pipeline", default="auto", choices=("auto", "memory", "stream"))
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--seconds", type=float, default=5.0, help="time budget of the steady-state loop")
    p.add_argument("--eval", action="store_true", help="also time one pass of the eval iterator")
    a = p.parse_args(argv)
    if a.pipeline == "stream":
        os.environ["ALEXNET_JAX_IN_MEMORY_MAX_BYTES"] = "0"
    elif a.pipeline == "memory":
        os.environ["ALEXNET_JAX_IN_MEMORY_MAX_BYTES"] = str(2**62)
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(ROOT))
    from alexnet_jax import data as D
    from alexnet_jax.config import Config

    bs = a.batch_size or (128 if a.dataset == "cifar10" else 32)
    if a.dataset != "digits" and not _prepared(D, a.dataset, a.data_dir):
        src = a.source or SOURCES.get(a.dataset)
        if src is None or not Path(src).exists():
            print(f"{a.dataset} is not prepared in {a.data_dir}; no source found (--source)", file=sys.stderr)
            return 2
        t = time.perf_counter()
        D.prepare(a.dataset, str(src), a.data_dir)
        print(f"prepared {a.dataset} in {time.perf_counter() - t:.1f} s")
    cfg = Config(dataset=a.dataset, data_dir=a.data_dir, augment=a.augment, input_size=a.input_size,
                 num_workers=a.num_workers, seed=0)
    t = time.perf_counter()
    it = D.make_train_iter(cfg, batch_size=bs)
    b = next(it)
    setup = time.perf_counter() - t
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < a.seconds:
        b = next(it)
        n += 1
    dt = time.perf_counter() - t
    rate = n * bs / dt
    print(f"{a.dataset} augment={a.augment} batch={bs} pipeline={getattr(it, 'pipeline', '?')} "
          f"workers={a.num_workers}: setup+first batch {setup:.2f} s; {n} batches in {dt:.2f} s = "
          f"{dt / n * 1e3:.2f} ms/batch, {rate:,.0f} img/s  (image {b['image'].shape} {b['image'].dtype})")
    if hasattr(it, "close"):
        it.close()
    if a.eval:
        split = "test" if a.dataset in ("digits", "mnist") else "validation"
        t = time.perf_counter()
        ev = D.make_eval_iter(cfg, split, batch_size=bs)
        m = sum(int(x["mask"].sum()) for x in ev)
        dt = time.perf_counter() - t
        print(f"eval {split}: {m} images in {dt:.2f} s = {m / dt:,.0f} img/s (incl. setup)")
    return 0


def _prepared(D, dataset: str, data_dir: str) -> bool:
    try:
        D.dataset_dir(dataset, data_dir)
        return True
    except D.DatasetNotPreparedError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
