"""The `alexnet-jax` command: parses arguments, then calls the importable functions.

    alexnet-jax train   [--config NAME] [--workdir DIR] [--set key=value ...] [--extend] [--data-dir DIR]
    alexnet-jax eval    --workdir DIR [--split NAME] [--ten-crop] [--data-dir DIR]
    alexnet-jax prepare DATASET [--source PATH] [--data-dir DIR] [--overwrite] [--clear-cache]
    alexnet-jax summary MODEL [--input-size N] [--num-classes K] [--width W]
    alexnet-jax import torchvision FILE.pth --workdir DIR
    alexnet-jax import caffe FILE.caffemodel --deploy deploy.prototxt --mean MEAN.binaryproto --workdir DIR
    alexnet-jax export torchvision --workdir DIR FILE.pth
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
import signal
import sys
import threading

from alexnet_jax import data
from alexnet_jax.config import apply_overrides, describe_keys
from alexnet_jax.configs import CONFIGS, DEFAULT, get_config
from alexnet_jax.data.catalog import JPEG256_QUALITY
from alexnet_jax.errors import AlexnetJaxError, Interrupted

# Start-up.  The imports above are light: `import alexnet_jax.cli` takes ~0.03 s.  Building the parser imports jax
# and flax (~1.8 s: alexnet_jax.models for the model names) and every tool module.  The rest is imported where it is
# used, marked at each site with its reason:
# - lazy (Ctrl-C): jax and flax load inside _parse, whose handler turns a Ctrl-C into one line and exit 130; at the
#   top of this module it would be a traceback (tests/test_faults.py::test_ctrl_c_while_prepare_starts_writes_nothing;
#   tests/test_cli.py checks that this module imports no jax).
# - lazy (command): one command's modules (run, restore, compile, zoo, summary: orbax, tensorstore,
#   tensorflow_datasets) would add ~0.5 s to every other command and to --help.
# - lazy (--help): the tool modules' likewise: restore and run (orbax, ~0.2 s), tensorflow_datasets (~0.15 s) and
#   matplotlib (~0.4 s, which `train` does not import either).
# Figures: the import time over what `alexnet-jax --help` imports already (python -X importtime, and wall clock).

TOOLS = ("bench", "inspect", "filters", "neighbours", "predict", "plot", "activations", "init_stats")


def force_host_devices(n: int | None) -> None:
    """Ask XLA for `n` virtual CPU devices (before JAX initialises its backends)."""
    if not n:
        return
    flag = f"--xla_force_host_platform_device_count={int(n)}"
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(flag.split("=")[0])]
    os.environ["XLA_FLAGS"] = " ".join(kept + [flag])
    if "jax" in sys.modules:
        from jax._src import xla_bridge  # lazy (Ctrl-C): only once jax is imported
        if xla_bridge.backends_are_initialized():
            import jax  # lazy (Ctrl-C)
            if jax.local_device_count("cpu") != n:
                raise RuntimeError(f"--force-host-devices {n}: JAX has already started; set XLA_FLAGS={flag} "
                                   f"in the environment instead")


def _distributed(args) -> None:
    coord = getattr(args, "coordinator", None) or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not coord or not hasattr(args, "coordinator"):
        return
    import jax  # lazy (Ctrl-C)
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
    from alexnet_jax.run import train_and_evaluate  # lazy (command)
    from alexnet_jax.workdir import load_config  # lazy (Ctrl-C): numpy, tqdm

    workdir = args.workdir or os.path.join("runs", args.config or DEFAULT)
    # a workdir owns its run: without --config, the run in it resumes with its own config
    own = args.config is None and os.path.exists(os.path.join(workdir, "config.json"))
    base = load_config(workdir) if own else get_config(args.config or DEFAULT)
    config = _data_dir(apply_overrides(base, args.set or []), args)
    result = train_and_evaluate(config, workdir, progress=not args.no_progress, extend=args.extend)
    print(json.dumps(result))
    return 0


def cmd_eval(args) -> int:
    from alexnet_jax.restore import evaluate_workdir  # lazy (command)

    res = evaluate_workdir(args.workdir, split=args.split, ten_crop=True if args.ten_crop else None,
                           data_dir=args.data_dir)
    print(json.dumps(res))
    return 0


def cmd_prepare(args) -> int:
    if args.clear_cache:
        path = data.dataset_dir(args.dataset, args.data_dir)
        print(json.dumps({"dataset": args.dataset, "path": str(path), "cleared_bytes": data.clear_disk_cache(path)}))
        return 0
    path = data.prepare(args.dataset, args.source, args.data_dir, overwrite=args.overwrite, workers=args.workers,
                        quality=args.quality)
    print(json.dumps({"dataset": args.dataset, "path": str(path)}))
    return 0


def cmd_summary(args) -> int:
    from alexnet_jax.summary import summarize, summary_table  # lazy (command)

    extra = {"head": args.head} if args.model == "lenet5" and args.head else {}
    s = summarize(args.model, input_size=args.input_size, num_classes=args.num_classes, width=args.width, **extra)
    print(summary_table(s))
    print(json.dumps({"model": s["model"], "input_size": s["input_size"], "num_classes": s["num_classes"],
                      "params": s["params"], "macs": s["macs"]}))
    return 0


def cmd_compile(args) -> int:
    from alexnet_jax import compile as compile_lib  # lazy (command)

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
    from jax._src import xla_bridge  # lazy (Ctrl-C)

    if not os.environ.get("JAX_PLATFORMS") and not xla_bridge.backends_are_initialized():
        import jax  # lazy (Ctrl-C)
        jax.config.update("jax_platforms", "cpu")


def cmd_import(args) -> int:
    if args.source == "torchvision":
        from alexnet_jax.zoo.torchvision import import_torchvision  # lazy (command)

        res = import_torchvision(args.file, args.workdir)
    else:
        from alexnet_jax.zoo.caffe import import_caffe  # lazy (command)

        res = import_caffe(args.file, args.deploy, args.mean, args.workdir, lrn=args.lrn)
    print(json.dumps(res))
    return 0


def cmd_export(args) -> int:
    from alexnet_jax.zoo.torchvision import export_torchvision  # lazy (command)

    res = export_torchvision(args.workdir, args.file, step=args.step)
    for note in res["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps(res))
    return 0


DATA_DIR_HELP = "TFDS data dir (default $TFDS_DATA_DIR, else ~/tensorflow_datasets)"


def _recipe_named(argv: list[str]) -> str:
    """The recipe `--config NAME` names on a command line (for `train --help`), else the default one."""
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            name = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            name = argv[i + 1]
        else:
            continue
        if name in CONFIGS:
            return name
    return DEFAULT


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line; `argv` only chooses whose values `train --help` lists (its --config's)."""
    from alexnet_jax.models import MODELS  # lazy (Ctrl-C): jax and flax

    p = argparse.ArgumentParser(prog="alexnet-jax", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    recipe = _recipe_named(sys.argv[1:] if argv is None else argv)
    t = sub.add_parser("train", help="train a config in a workdir (resumes automatically)",
                       epilog=f"config keys (--set key=value) with the values of --config {recipe} "
                              f"(alexnet_jax/configs/{recipe}.py; another --config lists its own; a workdir holding a "
                              f"run starts from its config.json):\n" + describe_keys(get_config(recipe)),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", help=f"one of: {', '.join(CONFIGS)} (default: the workdir's own config.json when "
                                    f"it holds a run, else {DEFAULT})")
    t.add_argument("--workdir", help="output directory (default runs/CONFIG); a run in it is resumed")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    t.add_argument("--extend", action="store_true",
                   help="continue a run in --workdir with a changed schedule: num_steps, num_epochs, "
                        "eval_every_epochs, ten_crop (refused without it; what the run saved stays)")
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
    pr.add_argument("--overwrite", action="store_true", help="prepare it again even where it is already prepared")
    pr.add_argument("--workers", type=int, metavar="N", help="shard-writing processes (default: all cores)")
    pr.add_argument("--quality", type=int, default=JPEG256_QUALITY, help="imagenet2012/jpeg256 quality (%(default)s)")
    pr.add_argument("--clear-cache", action="store_true", help="only delete the arrays cached beside the dataset")
    pr.set_defaults(fn=cmd_prepare)

    s = sub.add_parser("summary", help="per-layer table of output shapes, parameters and multiply-adds")
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
    im = sub.add_parser("import", help="a published AlexNet (torchvision .pth, Caffe bvlc_alexnet) as a new workdir")
    src = im.add_subparsers(dest="source", required=True)
    it = src.add_parser("torchvision", help="torchvision's alexnet state_dict -> an alexnet_owt workdir")
    it.add_argument("file", metavar="FILE.pth", help="torch.save(alexnet.state_dict()) file (zip or legacy format)")
    it.add_argument("--workdir", required=True, help="a new or empty folder")
    ic = src.add_parser("caffe", help="Caffe's bvlc_alexnet -> a two-column alexnet workdir (Caffe's LRN)")
    ic.add_argument("file", metavar="FILE.caffemodel", help="trained weights (V2 `layer` or legacy V1 `layers`)")
    ic.add_argument("--deploy", required=True, metavar="deploy.prototxt", help="the net's deploy definition")
    ic.add_argument("--mean", required=True, metavar="MEAN.binaryproto",
                    help="the mean image the net was trained with (ilsvrc_2012_mean.binaryproto, or Caffe's .npy)")
    ic.add_argument("--workdir", required=True, help="a new or empty folder")
    ic.add_argument("--lrn", choices=["caffe", "paper"], default="caffe",
                    help="caffe (default: the net as trained, exact) or the paper's LRN (to compare)")
    for p_ in (it, ic):
        p_.set_defaults(fn=cmd_import)
    ex = sub.add_parser("export", help="a workdir's net as another framework's file")
    dst = ex.add_subparsers(dest="target", required=True)
    et = dst.add_parser("torchvision", help="an alexnet_owt workdir -> torchvision's alexnet state_dict (needs torch)")
    et.add_argument("--workdir", required=True)
    et.add_argument("--step", type=int, help="checkpoint step (default: the newest usable one)")
    et.add_argument("file", metavar="FILE.pth", help="where to write the state_dict (torch.save)")
    et.set_defaults(fn=cmd_export)

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


def _parse(argv: list[str] | None) -> argparse.Namespace | None:
    """The parsed command line, or None after a Ctrl-C while parsing (it imports JAX and Flax: seconds).  The
    Ctrl-C is only noted meanwhile: a KeyboardInterrupt raised in a garbage-collector callback (JAX installs
    one) would be printed as a traceback and swallowed, and the command would go on as if none had come."""
    seen: list[int] = []

    def note(signum, frame):
        seen.append(signum)

    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, note) if main_thread else None
    try:
        args = build_parser(argv).parse_args(argv)
    except KeyboardInterrupt:
        seen.append(signal.SIGINT)
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, old)
    return None if seen else args


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = _parse(argv)
    if args is None:
        print("stopped by SIGINT (Ctrl-C) while starting: nothing was written", file=sys.stderr)
        return 128 + signal.SIGINT
    try:
        force_host_devices(getattr(args, "force_host_devices", None))
        _distributed(args)
        return args.fn(args) or 0
    except KeyboardInterrupt:             # Ctrl-C where no step or batch boundary listens for it
        print("stopped by SIGINT (Ctrl-C)", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as e:
        if isinstance(e, Interrupted):    # stopped at a step or batch boundary: what was saved, and the exit code
            print(e, file=sys.stderr)
            return e.exit_code
        if isinstance(e, AlexnetJaxError) and os.environ.get("ALEXNET_JAX_TRACEBACK") != "1":
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
