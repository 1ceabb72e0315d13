"""The `alexnet-jax` command: parses arguments, then calls the importable functions.

    alexnet-jax train   [--config NAME] [--workdir DIR] [--set key=value ...]
    alexnet-jax eval    --workdir DIR [--split NAME] [--ten-crop]
    alexnet-jax prepare DATASET [--source PATH] [--data-dir DIR]
    alexnet-jax summary MODEL [--input-size N] [--num-classes K] [--width W]
    alexnet-jax bench | inspect | filters | neighbours | predict | plot | activations ...

Multi-host: every subcommand accepts --coordinator HOST:PORT --num-processes N --process-id I
(or the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) and then
joins JAX's distributed runtime before touching any device.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def _distributed(args) -> None:
    coord = args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not coord:
        return
    import jax
    n = args.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0"))
    pid = args.process_id if args.process_id is not None else int(os.environ.get("JAX_PROCESS_ID", "-1"))
    if n <= 0 or pid < 0:
        raise SystemExit("error: --coordinator needs --num-processes and --process-id "
                         "(or JAX_NUM_PROCESSES / JAX_PROCESS_ID)")
    jax.distributed.initialize(coordinator_address=coord, num_processes=n, process_id=pid)


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-host (JAX distributed runtime)")
    g.add_argument("--coordinator", help="coordinator HOST:PORT (process 0's address)")
    g.add_argument("--num-processes", type=int)
    g.add_argument("--process-id", type=int)


def cmd_train(args) -> int:
    from alexnet_jax.config import apply_overrides
    from alexnet_jax.configs import get_config
    from alexnet_jax.train import train_and_evaluate

    config = apply_overrides(get_config(args.config), args.set or [])
    workdir = args.workdir or os.path.join("runs", args.config)
    result = train_and_evaluate(config, workdir, progress=not args.no_progress)
    print(json.dumps({k: v for k, v in result.items()}))
    return 0


def cmd_eval(args) -> int:
    from alexnet_jax.train import evaluate_workdir

    res = evaluate_workdir(args.workdir, split=args.split, ten_crop=True if args.ten_crop else None)
    print(json.dumps(res))
    return 0


def cmd_prepare(args) -> int:
    from alexnet_jax.data import prepare

    path = prepare(args.dataset, args.source, args.data_dir)
    print(json.dumps({"dataset": args.dataset, "path": str(path)}))
    return 0


def cmd_summary(args) -> int:
    from alexnet_jax.summary import format_table, summarize

    extra = {"head": args.head} if args.model == "lenet5" and args.head else {}
    s = summarize(args.model, input_size=args.input_size, num_classes=args.num_classes, width=args.width, **extra)
    print(format_table(s))
    print(json.dumps({"model": s["model"], "input_size": s["input_size"], "num_classes": s["num_classes"],
                      "params": s["params"], "macs": s["macs"]}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from alexnet_jax.configs import CONFIGS, DEFAULT

    p = argparse.ArgumentParser(prog="alexnet-jax", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a config in a workdir (resumes automatically)")
    t.add_argument("--config", default=DEFAULT, help=f"one of: {', '.join(CONFIGS)} (default {DEFAULT})")
    t.add_argument("--workdir", help="output directory (default runs/CONFIG)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="evaluate a workdir's newest checkpoint; last line is JSON")
    e.add_argument("--workdir", required=True)
    e.add_argument("--split", help="dataset split (default: the config's eval_split)")
    e.add_argument("--ten-crop", action="store_true", help="average 10 views: 4 corners + centre, and flips")
    e.set_defaults(fn=cmd_eval)

    pr = sub.add_parser("prepare", help="build a TFDS dataset offline from files you have")
    pr.add_argument("dataset", help="digits | mnist | cifar10 | imagenet2012")
    pr.add_argument("--source", help="the files: MNIST .gz dir, CIFAR tarball/folder tree, ILSVRC tars/tree")
    pr.add_argument("--data-dir", help="TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    pr.set_defaults(fn=cmd_prepare)

    s = sub.add_parser("summary", help="per-layer table of output shapes, parameters and multiply-adds")
    from alexnet_jax.models import MODELS
    s.add_argument("model", choices=list(MODELS))
    s.add_argument("--input-size", type=int)
    s.add_argument("--num-classes", type=int)
    s.add_argument("--width", type=float, default=1.0)
    s.add_argument("--head", choices=["softmax", "rbf"], help="lenet5 only")
    s.set_defaults(fn=cmd_summary)

    _add_tools(sub)
    for sp in sub.choices.values():
        _add_common(sp)
    return p


def _add_tools(sub) -> None:
    """Analysis and benchmark subcommands (each module registers its own arguments)."""
    import importlib

    for name in ("bench", "inspect", "filters", "neighbours", "predict", "plot", "activations"):
        try:
            mod = importlib.import_module(f"alexnet_jax.tools.{name}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("alexnet_jax.tools"):
                continue
            raise
        sp = sub.add_parser(name, help=mod.__doc__.strip().splitlines()[0])
        mod.add_arguments(sp)
        sp.set_defaults(fn=mod.run)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "orbax", "jax._src", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    _distributed(args)
    try:
        return args.fn(args) or 0
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        from alexnet_jax.config import ConfigError
        known = [ConfigError]
        try:
            from alexnet_jax.data import DatasetNotPreparedError
            known.append(DatasetNotPreparedError)
        except ImportError:  # pragma: no cover
            pass
        if isinstance(e, tuple(known)) or os.environ.get("ALEXNET_JAX_TRACEBACK") != "1":
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
