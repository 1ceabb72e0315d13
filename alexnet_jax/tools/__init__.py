"""Analysis tools over trained workdirs; each is an `alexnet-jax` subcommand and a script in tools/.

    bench        benchmarks of the real train step, the input pipeline and the PyTorch peers
    inspect      config, step, eval history, every parameter with its column (--stats: weight statistics)
    filters      conv1 kernels as a PNG grid per column + colour-specificity scores (K12 Fig. 3)
    neighbours   nearest neighbours in fc7 feature space, as a PNG grid (K12 Fig. 4)
    predict      top-5 classes for image files, folders or tars
    plot         training curves of several workdirs overlaid in one PNG
    activations  per-layer activation statistics and dead (exactly zero) fractions
    init-stats   per-layer activation and gradient scales at initialisation (and after N steps)

Each module defines `add_arguments(parser)` and `run(args) -> int`, writes its output file to `--out`
(default `<workdir>/analysis/<tool>.png|json`, details in a .json beside a PNG) and prints one JSON
summary as its last stdout line.  Checkpoints are restored onto every device present through
`alexnet_jax.restore.restore_workdir` (one CPU is enough), and layer outputs come from the models' own taps.
`_cli` holds the shared plumbing, `_images` the image inputs.  Scripts: tools/<name>.py, except
tools/inspect_checkpoint.py (a tools/inspect.py would shadow the standard library's `inspect`).
"""
