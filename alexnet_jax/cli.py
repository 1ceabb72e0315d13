"""The `alexnet-jax` command: parses arguments, then calls the importable functions.

    alexnet-jax train   [--config NAME] [--workdir DIR] [--set key=value ...] [--data-dir DIR]
    alexnet-jax eval    --workdir DIR [--split NAME] [--ten-crop] [--data-dir DIR]
    alexnet-jax prepare DATASET [--source PATH] [--data-dir DIR]
    alexnet-jax summary MODEL [--input-size N] [--num-classes K] [--width W]
    alexnet-jax compile --topology v5e:2x2|h100:2 [--config NAME] [--set key=value ...] [--eval]
    alexnet-jax bench | inspect | filters | neighbours | predict | plot | activations | init-stats ...

Subcommands that run on devices accept --force-host-devices N (N virtual CPU devices, e.g. to run
the two-column split on a laptop); train and eval also join JAX's distributed runtime with
--coordinator HOST:PORT --num-processes N --process-id I (or JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys

TOOLS = ("bench", "inspect", "filters", "neighbours", "predict", "plot", "activations", "init_stats")


def force_host_devices(n: int | None) -> None:
    """Ask XLA for `n` virtual CPU devices (before JAX initialises its backends)."""
    if not n:
        return
    flag = f"--xla_force_host_platform_device_count={int(n)}"
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(flag.split("=")[0])]
    os.environ["XLA_FLAGS"] = " ".join(kept + [flag])
    if "jax" in sys.modules:
        from jax._src import xla_bridge
        if xla_bridge.backends_are_initialized():
            import jax
            if jax.local_device_count("cpu") != n:
                raise RuntimeError(f"--force-host-devices {n}: JAX has already started; set XLA_FLAGS={flag} "
                                   f"in the environment instead")


def _distributed(args) -> None:
    coord = getattr(args, "coordinator", None) or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not coord or not hasattr(args, "coordinator"):
        return
    import jax
    n = args.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0"))
    pid = args.process_id if args.process_id is not None else int(os.environ.get("JAX_PROCESS_ID", "-1"))
    if n <= 0 or pid < 0:
        raise SystemExit("error: --coordinator needs --num-processes and --process-id "
                         "(or JAX_NUM_PROCESSES / JAX_PROCESS_ID)")
    jax.distributed.initialize(coordinator_address=coord, num_processes=n, process_id=pid)


def add_device_args(p: argparse.ArgumentParser, *, multihost: bool = False) -> None:
    p.add_argument("--force-host-devices", type=int, metavar="N",
                   help="run on N virtual CPU devices (sets XLA_FLAGS before JAX starts)")
    if multihost:
        g = p.add_argument_group("multi-host (JAX distributed runtime)")
        g.add_argument("--coordinator", help="coordinator HOST:PORT (process 0's address)")
        g.add_argument("--num-processes", type=int)
        g.add_argument("--process-id", type=int)


def _data_dir(config, args):
    return config.replace(data_dir=args.data_dir) if getattr(args, "data_dir", None) else config


def cmd_train(args) -> int:
    from alexnet_jax.config import apply_overrides
    from alexnet_jax.configs import get_config
    from alexnet_jax.train import train_and_evaluate

    config = _data_dir(apply_overrides(get_config(args.config), args.set or []), args)
    workdir = args.workdir or os.path.join("runs", args.config)
    result = train_and_evaluate(config, workdir, progress=not args.no_progress)
    print(json.dumps(result))
    return 0


def cmd_eval(args) -> int:
    from alexnet_jax.train import evaluate_workdir

    res = evaluate_workdir(args.workdir, split=args.split, ten_crop=True if args.ten_crop else None,
                           data_dir=args.data_dir)
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


def cmd_compile(args) -> int:
    from alexnet_jax import compile as compile_lib
    from alexnet_jax.config import apply_overrides
    from alexnet_jax.configs import get_config

    config = apply_overrides(get_config(args.config), args.set or [])
    compile_lib.mesh_shape(config, args.topology)      # a bad name or mesh is refused before JAX starts anything
    _host_backend_only()
    report = compile_lib.compile_report(config, args.topology, eval=args.eval)
    print(compile_lib.format_report(report))
    print(json.dumps(report))
    return 0


def _host_backend_only() -> None:
    """`compile` runs nothing on a device: start only the CPU backend (where the user did not choose), so that
    a host with libtpu or the CUDA plugin installed does not try to bring up a runtime it does not need."""
    from jax._src import xla_bridge

    if not os.environ.get("JAX_PLATFORMS") and not xla_bridge.backends_are_initialized():
        import jax
        jax.config.update("jax_platforms", "cpu")


DATA_DIR_HELP = "TFDS data dir (default $TFDS_DATA_DIR, else ~/tensorflow_datasets)"


def build_parser() -> argparse.ArgumentParser:
    from alexnet_jax.config import describe_keys
    from alexnet_jax.configs import CONFIGS, DEFAULT

    p = argparse.ArgumentParser(prog="alexnet-jax", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a config in a workdir (resumes automatically)",
                       epilog="config keys (--set key=value):\n" + describe_keys(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", default=DEFAULT, help=f"one of: {', '.join(CONFIGS)} (default {DEFAULT})")
    t.add_argument("--workdir", help="output directory (default runs/CONFIG)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    t.add_argument("--data-dir", help=DATA_DIR_HELP)
    t.add_argument("--no-progress", action="store_true", help="no progress output")
    add_device_args(t, multihost=True)
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="evaluate a workdir's newest checkpoint on every device; last line is JSON")
    e.add_argument("--workdir", required=True)
    e.add_argument("--split", help="dataset split (default: the config's eval_split)")
    e.add_argument("--ten-crop", action="store_true", help="average 10 views: 4 corners + centre, and flips")
    e.add_argument("--data-dir", help=DATA_DIR_HELP)
    add_device_args(e, multihost=True)
    e.set_defaults(fn=cmd_eval)

    pr = sub.add_parser("prepare", help="build a TFDS dataset offline from files you have")
    pr.add_argument("dataset", help="digits | mnist | cifar10 | imagenet2012[/jpeg256|/raw256]")
    pr.add_argument("--source", help="the files: MNIST .gz dir, CIFAR tarball/folder tree, ILSVRC tars/tree")
    pr.add_argument("--data-dir", help=DATA_DIR_HELP)
    pr.set_defaults(fn=cmd_prepare)

    s = sub.add_parser("summary", help="per-layer table of output shapes, parameters and multiply-adds")
    from alexnet_jax.models import MODELS
    s.add_argument("model", choices=list(MODELS))
    s.add_argument("--input-size", type=int)
    s.add_argument("--num-classes", type=int)
    s.add_argument("--width", type=float, default=1.0)
    s.add_argument("--head", choices=["softmax", "rbf"], help="lenet5 only")
    s.set_defaults(fn=cmd_summary)

    c = sub.add_parser("compile", help="compile the train (and eval) steps for TPU chips or NVIDIA GPUs that are "
                                       "not here: memory, collectives, a roofline prediction; last line is JSON",
                       description="Compile a config's real steps with XLA for chips that are not here; nothing runs. "
                                   "TPU needs libtpu (pip install -e \".[tpu]\"); NVIDIA GPUs need JAX's CUDA plugin "
                                   "without the CUDA libraries (pip install --no-deps jax-cuda13-plugin "
                                   "jax-cuda13-pjrt, the installed jax's version).  The train step's report, then one "
                                   "JSON line.", epilog="config keys (--set key=value):\n" + describe_keys(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--topology", required=True, help="a TPU generation and its chip grid (v5e:2x2, v6e:2x4, v4:2x2x1, "
                                                      "v5p:2x2x1, ...) or NVIDIA GPUs of one host (h100:2, h200:8); "
                                                      "mesh_data x mesh_model of the config are placed on its first "
                                                      "chips")
    c.add_argument("--config", default=DEFAULT, help=f"one of: {', '.join(CONFIGS)} (default {DEFAULT})")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    c.add_argument("--eval", action="store_true", help="also compile the eval steps (centre crop and ten crops)")
    c.set_defaults(fn=cmd_compile)

    for name in TOOLS:   # each tool module registers its own arguments
        mod = importlib.import_module(f"alexnet_jax.tools.{name}")
        sp = sub.add_parser(name.replace("_", "-"), help=mod.__doc__.strip().splitlines()[0],
                            description=mod.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(sp)
        if getattr(mod, "USES_DEVICES", True):
            add_device_args(sp)
        sp.set_defaults(fn=mod.run)
    return p


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "orbax", "jax._src", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        force_host_devices(getattr(args, "force_host_devices", None))
        _distributed(args)
        return args.fn(args) or 0
    except Exception as e:
        from alexnet_jax.errors import AlexnetJaxError
        if isinstance(e, AlexnetJaxError) and os.environ.get("ALEXNET_JAX_TRACEBACK") != "1":
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
