"""Analysis tools over trained workdirs; each is an `alexnet-jax` subcommand and a script in tools/.

    bench        benchmarks (alexnet_jax/tools/bench.py, maintained with alexnet_jax/bench.py)
    inspect      config, step, eval history, every parameter with its column (--stats: weight statistics)
    filters      conv1 kernels as a PNG grid per column + colour-specificity scores (K12 Fig. 3)
    neighbours   nearest neighbours in fc7 feature space, as a PNG grid (K12 Fig. 4)
    predict      top-5 classes for image files, folders or tars
    plot         training curves of several workdirs overlaid in one PNG
    activations  per-layer activation statistics and dead (exactly zero) fractions

Each analysis module defines `add_arguments(parser)`, `run(args) -> int` and `main(argv=None)`,
writes its output file to `--out` (default `<workdir>/analysis/<tool>.png|json`, details in a .json
beside a PNG) and prints one JSON summary as its last stdout line.
Checkpoints are restored onto one device (a checkpoint written with the columns on two devices
restores onto one CPU).  Shared helpers live in `_common`.  Scripts: tools/<name>.py, except
tools/inspect_checkpoint.py (a tools/inspect.py would shadow the standard library's `inspect` for
every script run from that folder).
"""
