"""Per-layer activation and gradient scales at initialisation (and after N training steps), per variant.

    alexnet-jax init-stats --config alexnet_cifar10 --widths 1,0.5,0.25,0.125 [--steps 50] [--batch 64]
    alexnet-jax init-stats --config alexnet_cifar10 --inits paper,paper_scaled,he --set width=0.25

For each variant (the config with one width and init), the Trainer builds the model from the config's
seed, one batch comes from the real training loader with the run's own device augmentation (so the
inputs are what training sees: centred raw RGB for the AlexNets), and the model's own taps record
every layer's output after its activation (evaluation mode: no dropout).  Per layer:

  act_std      standard deviation of the layer's outputs (all examples, positions and units)
  input_std    the part that depends on the input: sqrt(mean over units and positions of the variance
               across the batch).  A layer whose units are the same for every image has input_std 0
               however large act_std is (e.g. biases of 1 that drown a vanishing signal).
  dead         fraction of exact zeros (ReLU layers)
  grad_std     standard deviation of d loss / d output (the gradient reaching that layer)
  wgrad_std    standard deviation of d loss / d kernel of the layer's weights

and for the logits, `logit_input_std` / `logit_std`.  With `--steps N` the same variant is then trained
N steps with its own optimiser (the real train step) and measured again on the same batch.  Table on
stdout, a plot of input_std and grad_std per layer (one line per variant), and a JSON report (default
runs/init_stats/<config>.{png,json}); the last stdout line is a JSON summary.
"""

from __future__ import annotations

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alexnet_jax import parallel
from alexnet_jax.config import apply_overrides
from alexnet_jax.configs import get_config
from alexnet_jax.plotting import plain_log_ticks
from alexnet_jax.tools import _cli
from alexnet_jax.trainer import AUGMENT_STREAM, cross_entropy
from alexnet_jax.workdir import check_writable

USES_DEVICES = True


def add_arguments(p) -> None:
    p.add_argument("--config", default="alexnet_cifar10", help="a named recipe (default alexnet_cifar10)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--widths", help="comma list of widths (default: the config's)")
    p.add_argument("--inits", help="comma list of init rules (default: the config's)")
    p.add_argument("--steps", type=int, default=0, help="also measure after this many training steps")
    p.add_argument("--batch", type=int, default=64, help="images in the measured batch (default 64)")
    p.add_argument("--data-dir", help="TFDS data dir (default $TFDS_DATA_DIR, else ~/tensorflow_datasets)")
    p.add_argument("--out", help="PNG (default runs/init_stats/<config>.png; the JSON beside it)")


def layer_stats(trainer, state, batch) -> dict:
    """Per-layer statistics of one batch (module docstring), on the model's own forward pass."""
    c = trainer.config
    key = jax.random.fold_in(jax.random.key(c.seed), AUGMENT_STREAM)
    x = trainer.augment.train(jnp.asarray(batch["image"]), jnp.asarray(batch["index"]), key)
    y = jnp.asarray(batch["label"])
    graphdef = trainer.graphdef

    shapes: dict[str, list] = {}

    def record(name, col, v):
        shapes.setdefault(name, []).append(jax.ShapeDtypeStruct(v.shape, jnp.float32))
        return v

    jax.eval_shape(lambda p, e: nnx.merge(graphdef, p, e)(x, tap=record), state.params, state.extra)
    probes = {k: [jnp.zeros(s.shape, s.dtype) for s in v] for k, v in shapes.items()}

    def loss_fn(probes, params):
        seen: dict[str, int] = {}
        acts: dict[str, list] = {}

        def tap(name, col, v):      # add a zero probe: d loss / d probe = d loss / d output
            i = seen.get(name, 0)
            seen[name] = i + 1
            v = v + probes[name][i].astype(v.dtype)
            acts.setdefault(name, []).append(v)
            return v

        logits = nnx.merge(graphdef, params, jax.tree.map(lambda a: a, state.extra))(x, tap=tap)
        return cross_entropy(logits, y).mean(), (acts, logits)

    fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))
    (loss, (acts, logits)), (g_act, g_par) = fn(probes, state.params)
    acts, g_act, logits = jax.device_get((acts, g_act, logits))
    kernels = {}
    for path, leaf in nnx.to_flat_state(g_par):
        keys = [str(k) for k in path]
        if any("kernel" in k for k in keys):
            layer = keys[0].upper() if keys[0] in ("c1", "c3", "c5", "f6") else keys[0]
            kernels.setdefault(layer, []).append(np.asarray(leaf[...] if hasattr(leaf, "__getitem__") else leaf))
    rows = []
    for name, per_col in _cli.in_network_order(acts, nnx.merge(graphdef, state.params, state.extra)).items():
        a = np.concatenate([np.asarray(v, np.float64).reshape(len(v), -1) for v in per_col], axis=-1)
        g = np.concatenate([np.asarray(v, np.float64).reshape(len(v), -1) for v in g_act[name]], axis=-1)
        k = kernels.get(name) or kernels.get(name.lower())
        rows.append({"layer": name, "act_mean": float(a.mean()), "act_std": float(a.std()),
                     "input_std": float(np.sqrt(a.var(axis=0).mean())), "dead": float(np.mean(a == 0)),
                     "grad_std": float(g.std()),
                     "wgrad_std": float(np.concatenate([np.ravel(w) for w in k]).std()) if k else None})
    lg = np.asarray(logits, np.float64)
    return {"loss": float(loss), "logit_std": float(lg.std()), "logit_input_std": float(np.sqrt(lg.var(0).mean())),
            "layers": rows}


def measure(config, *, batch: int, steps: int) -> dict:
    """Init (and after `steps` train steps) statistics of one variant on a batch of its real data."""
    from alexnet_jax.run import build_run  # lazy (--help): orbax, tensorflow_datasets

    config = config.replace(batch_size=batch, mesh_data=1, mesh_model=1)
    with build_run(config, parallel.make_mesh(1, 1), evaluation=False, prefetch=0) as run:
        trainer, loader = run.trainer, run.train_loader
        state = trainer.init()
        probe_batch = next(loader)
        out = {"width": config.width, "init": config.init, "input_size": config.input_size,
               "model": config.model, "at_init": layer_stats(trainer, state, probe_batch)}
        if steps:
            # not the run loop: the state after N steps is what is measured (no workdir, evaluation or checkpoint)
            losses = []
            for b in itertools.islice(loader, steps):
                state, m = trainer.train_step(state, trainer.global_batch(b))
                losses.append(float(jax.device_get(m["loss"])))
            out["train_losses"] = losses
            out["after_steps"] = dict(layer_stats(trainer, state, probe_batch), steps=steps)
    return out


def layer_stats_table(variant: dict, when: str) -> str:
    s = variant[when]
    head = (f"{variant['model']} width {variant['width']:g} init {variant['init']} input {variant['input_size']}"
            f" ({'at init' if when == 'at_init' else 'after ' + str(s['steps']) + ' steps'}): loss "
            f"{s['loss']:.4f}, logits std {s['logit_std']:.3g} of which input-dependent {s['logit_input_std']:.3g}")
    lines = [head, f"  {'layer':<6}{'act mean':>10}{'act std':>10}{'input std':>11}{'dead':>7}{'grad std':>11}"
                   f"{'wgrad std':>11}"]
    for r in s["layers"]:
        w = "-" if r["wgrad_std"] is None else f"{r['wgrad_std']:.3g}"
        lines.append(f"  {r['layer']:<6}{r['act_mean']:>10.3g}{r['act_std']:>10.3g}{r['input_std']:>11.3g}"
                     f"{r['dead']:>7.2f}{r['grad_std']:>11.3g}{w:>11}")
    return "\n".join(lines)


def describe_variants(variants: list[dict]) -> str:
    """What the variants vary, e.g. "inits paper, he at width 0.25" or "init paper at widths 1, 0.5"."""
    def listing(one: str, many: str, values: list) -> str:
        return f"{one} {values[0]}" if len(values) == 1 else f"{many} {', '.join(map(str, values))}"

    inits = list(dict.fromkeys(v["init"] for v in variants))
    widths = list(dict.fromkeys(f"{v['width']:g}" for v in variants))
    return f"{listing('init', 'inits', inits)} at {listing('width', 'widths', widths)}"


def figure(variants: list[dict], recipe: str, batch: int):
    """The figure of `plot`: input-dependent activation std (left) and gradient std (right) per layer, in
    network order, one line per variant; a second row after the training steps when measured."""
    from matplotlib.figure import Figure  # lazy (--help)

    whens = ["at_init"] + (["after_steps"] if any("after_steps" in v for v in variants) else [])
    fig = Figure(figsize=(12, 4.2 * len(whens) + 0.5), layout="constrained")
    axes = fig.subplots(len(whens), 2, squeeze=False)
    for row, when in enumerate(whens):
        steps = sorted({v[when]["steps"] for v in variants if when in v and "steps" in v[when]})
        suffix = "at initialisation" if when == "at_init" else \
            f"after {', '.join(map(str, steps))} training step{'s' if steps != [1] else ''}"
        for v in variants:
            if when not in v:
                continue
            layers = [r["layer"] for r in v[when]["layers"]]
            label = f"width {v['width']:g}, init {v['init']}, {v['input_size']} px"
            axes[row][0].plot(layers, [max(r["input_std"], 1e-12) for r in v[when]["layers"]], "o-", label=label)
            axes[row][1].plot(layers, [max(r["grad_std"], 1e-12) for r in v[when]["layers"]], "o-", label=label)
        axes[row][0].set(title=f"input-dependent activation std, {suffix}", yscale="log",
                         ylabel="std across the batch (log)")
        axes[row][1].set(title=f"gradient std reaching each layer, {suffix}", yscale="log",
                         ylabel="std of d loss / d layer output (log)")
        for ax in axes[row]:
            plain_log_ticks(ax)
            ax.set_xlabel("layer (network order; output after its activation)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"{recipe}: per-layer scales, {describe_variants(variants)} "
                 f"(one batch of {batch} training images)", fontsize=10)
    return fig


def plot(variants: list[dict], out_png: str, recipe: str, batch: int) -> str:
    figure(variants, recipe, batch).savefig(out_png, dpi=100)
    return out_png


def run(args) -> int:
    base = apply_overrides(get_config(args.config), args.set)
    out = args.out or os.path.join("runs", "init_stats", f"{args.config}.png")
    check_writable(os.path.dirname(os.path.abspath(out)), "output folder")   # before minutes of measuring
    if args.data_dir:
        base = base.replace(data_dir=args.data_dir)
    widths = [float(w) for w in args.widths.split(",")] if args.widths else [base.width]
    inits = [i.strip() for i in args.inits.split(",")] if args.inits else [base.init]
    variants = []
    for init in inits:
        for width in widths:
            v = measure(base.replace(width=width, init=init), batch=args.batch, steps=args.steps)
            variants.append(v)
            print(layer_stats_table(v, "at_init"))
            if "after_steps" in v:
                print(layer_stats_table(v, "after_steps"))
            print()
    plot(variants, out, " ".join([args.config, *args.set]), args.batch)
    json_path = _cli.write_json(os.path.splitext(out)[0] + ".json", {"config": base.to_dict(), "variants": variants})
    _cli.emit({"tool": "init-stats", "config": args.config, "out": out, "json": json_path,
               "variants": [{"width": v["width"], "init": v["init"], "input_size": v["input_size"],
                             "logit_input_std": v["at_init"]["logit_input_std"],
                             **({"loss_after": v["after_steps"]["loss"]} if "after_steps" in v else {})}
                            for v in variants]})
    return 0
