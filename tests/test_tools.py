"""The analysis tools (alexnet_jax/tools): pure functions on known answers, the per-layer forward taps
against the models' own forward pass, and every tool run on a tiny checkpoint trained here.

One tiny workdir is trained once per test session (shared by the xdist workers through a file lock)
by the real trainer in a subprocess: a 1000-way two-column AlexNet2012 (input 64, width 0.0625,
augment=alexnet) on a 20-image imagenet2012-style wnid folder tree prepared here, with the columns on
2 forced CPU devices (mesh_model=2).  Every tool then runs in this process on one CPU device, restoring
the 2-device checkpoint onto 1 device.  (A single training keeps the file within its time budget on a
shared 2-core machine: nearly all of a training's time is compiling, and a one-device run would restore
through the same code.)
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import damage_checkpoint, fast_config, train_in_process

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = Path(__file__).resolve().parents[2] / "shared/data/imagenet_samples/imagenet_samples_100.tar"
WNIDS = ("n01440764", "n01530575", "n01601694", "n01641577")
CONFIG = dict(model="alexnet", num_classes=1000, input_size=64, width=0.0625, dataset="imagenet2012",
              augment="alexnet", eval_split="validation", batch_size=8, num_steps=2, log_every_steps=1,
              mesh_model=2)

_TRAIN = """
import json, sys
from alexnet_jax.config import Config
from alexnet_jax.data import prepare
from alexnet_jax.run import train_and_evaluate
spec = json.loads(sys.argv[1])
prepare("imagenet2012", spec["source"], spec["data_dir"], workers=0)
print(json.dumps(train_and_evaluate(Config.from_dict(spec["config"]), spec["workdir"], progress=False)))
"""


def _build(root: Path) -> dict:
    """Image tree -> TFDS imagenet2012 (train 16, validation 4) -> 2 training steps on 2 CPU devices."""
    from PIL import Image

    rng = np.random.default_rng(0)
    src = root / "imagenet_src"
    for i in range(20):
        d = src / "train" / WNIDS[i % 4]
        d.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(d / f"{WNIDS[i % 4]}_{i}.JPEG")
    spec = dict(source=str(src), data_dir=str(root / "tfds"), workdir=str(root / "run"),
                config=dict(CONFIG, data_dir=str(root / "tfds")))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    r = subprocess.run([sys.executable, "-c", _TRAIN, json.dumps(spec)], env=env, cwd=str(ROOT), text=True,
                       capture_output=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"training failed:\n{r.stderr[-4000:]}")
    return dict(spec, src=str(src), result=json.loads(r.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> dict:
    """The trained workdir, built once and shared by the xdist workers (file lock)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "tools_run"
    root.mkdir(exist_ok=True)
    ready, failed = root / "ready.json", root / "failed.txt"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if ready.exists():
                return json.loads(ready.read_text())
            if failed.exists():
                pytest.fail(failed.read_text())
            try:
                out = _build(root)
            except Exception as e:
                failed.write_text(str(e))
                raise
            ready.write_text(json.dumps(out))
            return out
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _tool(module, argv: list[str], capsys) -> dict:
    """Run a tool's `run` in this process; returns its final JSON line."""
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    assert module.run(p.parse_args(argv)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------------------------
# Pure functions
# ------------------------------------------------------------------------------------------------
def test_colour_specificity_known_kernels():
    from alexnet_jax.tools.filters import colour_specificity

    rng = np.random.default_rng(0)
    g = rng.normal(size=(6, 11, 11))
    grey = np.stack([g, g, g], -1)                                    # same pattern in R, G, B
    assert np.all(colour_specificity(grey) == 0.0)                    # exactly
    assert colour_specificity(np.ones((1, 5, 5, 3)))[0] == 0.0        # constant: defined as 0, not NaN

    a = g - g.mean(axis=(1, 2), keepdims=True)                        # zero-mean spatial patterns
    zero = np.zeros_like(a)
    for ch in range(3):
        single = np.stack([a if c == ch else zero for c in range(3)], -1)
        np.testing.assert_allclose(colour_specificity(single), 2 / 3, rtol=1e-12)
    red_offset = np.stack([g + 3.0, zero, zero], -1)                  # any single-channel kernel: >= 2/3
    assert np.all((colour_specificity(red_offset) >= 2 / 3 - 1e-12) & (colour_specificity(red_offset) <= 1))
    flat_red = np.zeros((1, 5, 5, 3))
    flat_red[..., 0] = 1.0
    np.testing.assert_allclose(colour_specificity(flat_red), 1.0, rtol=1e-12)
    opponent = np.stack([a, -a, zero], -1)                            # red-minus-green: no grey part
    np.testing.assert_allclose(colour_specificity(opponent), 1.0, rtol=1e-12)

    mixed = np.stack([(1 - t) * grey[0] + t * opponent[0] for t in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)])
    s = colour_specificity(mixed)
    assert s[0] == 0.0 and np.all(np.diff(s) > 0) and abs(s[-1] - 1) < 1e-12
    assert np.all((colour_specificity(rng.normal(size=(50, 5, 5, 3))) >= 0) &
                  (colour_specificity(rng.normal(size=(50, 5, 5, 3))) <= 1))
    with pytest.raises(ValueError):
        colour_specificity(np.ones((2, 5, 5, 1)))


def test_nearest_neighbours_known_answers():
    from alexnet_jax.tools.neighbours import nearest_neighbours

    rng = np.random.default_rng(0)
    f = rng.normal(size=(20, 8)) * 10
    f[7] = f[3] + 1e-3                  # 3 and 7 are each other's nearest point
    f[12] = f[5]                        # an exact duplicate
    idx = nearest_neighbours(f, [3, 7, 5], k=4)
    assert idx.shape == (3, 4)
    assert idx[0, 0] == 7 and idx[1, 0] == 3 and idx[2, 0] == 12
    for row, q in zip(idx, [3, 7, 5], strict=True):
        assert q not in row                                         # the query itself is excluded
        d = np.linalg.norm(f[row] - f[q], axis=1)
        assert np.all(np.diff(d) >= 0)                              # nearest first
        brute = [j for j in np.argsort(np.linalg.norm(f - f[q], axis=1), kind="stable") if j != q][:4]
        assert list(row) == brute
    assert nearest_neighbours(f, [3], k=1, exclude_self=False)[0, 0] == 3
    assert nearest_neighbours(f, [0], k=19).shape == (1, 19)
    with pytest.raises(ValueError):
        nearest_neighbours(f, [0], k=20)


def test_activation_stats_counts_exact_zeros():
    from alexnet_jax.tools.activations import activation_stats

    a = np.arange(1, 2 * 3 * 3 * 4 + 1, dtype=np.float32).reshape(2, 3, 3, 4)
    a[..., 1] = 0.0                                # unit 1 dead everywhere
    a[0, 0, 0, 2] = 0.0                            # two more exact zeros
    a[1, 2, 2, 3] = 0.0
    a[1, 1, 1, 0] = 1e-30                          # tiny but not zero
    s = activation_stats(a)
    assert s["zeros"] == 18 + 2 and s["size"] == a.size
    assert s["dead_fraction"] == 20 / a.size
    assert s["dead_units"] == 1 / 4 and s["units"] == 4
    relu = np.maximum(np.random.default_rng(0).normal(size=(64, 128)), 0)
    assert activation_stats(relu)["dead_fraction"] == np.mean(relu == 0)


# ------------------------------------------------------------------------------------------------
# Which examples a tool reads from a split: a seeded, class-balanced pick
# ------------------------------------------------------------------------------------------------
def _sorted_split(sizes: list[int]) -> tuple[np.ndarray, list[str]]:
    """Labels and record names of a split stored sorted by class, as prepared splits are."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return labels, [f"c{lb}/{i:04d}.jpg" for i, lb in enumerate(labels)]


def test_balanced_pick_takes_every_class_in_equal_shares():
    from alexnet_jax.tools._images import balanced_pick

    labels, names = _sorted_split([50, 61, 47, 80, 52, 50, 55, 49, 70, 58])
    for n in (1, 7, 10, 23, 64, 100, 470):                                  # up to 47 a class: none runs out
        pick = balanced_pick(labels, n, keys=names)
        assert len(pick) == n == len(set(pick.tolist()))
        counts = np.bincount(labels[pick], minlength=10)
        assert counts.max() - counts.min() <= 1, (n, counts)
        assert len(np.unique(labels[pick[:min(n, 10)]])) == min(n, 10)     # the first ones: all different classes
    assert len(balanced_pick(labels, 10_000)) == len(labels)                # all of them when fewer
    few = np.repeat(np.arange(4), [3, 30, 30, 30])                          # a class that runs out
    counts = np.bincount(few[balanced_pick(few, 40)], minlength=4)
    assert counts[0] == 3 and counts[1:].max() - counts[1:].min() <= 1 and counts.sum() == 40
    wide, _ = _sorted_split([3] * 1000)                                     # fewer picks than classes
    classes = wide[balanced_pick(wide, 500)]
    assert len(np.unique(classes)) == 500 and classes.max() > 600           # not the first 500 classes


def test_balanced_pick_is_seeded_and_independent_of_storage_order():
    from alexnet_jax.tools._images import balanced_pick

    labels, names = _sorted_split([40, 35, 45, 38, 42])
    a = balanced_pick(labels, 30, seed=3, keys=names)
    assert np.array_equal(a, balanced_pick(labels, 30, seed=3, keys=names))
    assert not np.array_equal(a, balanced_pick(labels, 30, seed=4, keys=names))
    perm = np.random.default_rng(0).permutation(len(labels))               # the same records stored shuffled
    b = balanced_pick(labels[perm], 30, seed=3, keys=[names[i] for i in perm])
    assert [names[i] for i in a] == [names[perm[i]] for i in b]             # the same examples, same order
    counts = np.bincount(labels[perm][b], minlength=5)
    assert counts.min() == counts.max() == 6


def test_pick_from_split_reads_labels_not_storage_order(monkeypatch):
    from alexnet_jax.tools import _images

    labels, names = _sorted_split([300, 300, 300])

    class Split:                                # a split as RecordSource serves it
        read = []

        def __len__(self):
            return len(labels)

        def record(self, i):
            self.read.append(i)
            return {"image": b"", "label": int(labels[i]), "name": names[i]}

    idx, how = _images.pick_from_split(Split(), 12, seed=0)
    assert np.bincount(labels[idx], minlength=3).tolist() == [4, 4, 4]
    assert "class-balanced over 3 classes" in how and "12 of 900" in how
    monkeypatch.setattr(_images, "PICK_SCAN_MAX", 90)                      # a large split: a random part scanned
    Split.read = []
    idx, how = _images.pick_from_split(Split(), 12, seed=0)
    assert len(Split.read) == 90 and set(idx.tolist()) <= set(Split.read) and "from 90 records" in how
    assert np.bincount(labels[idx], minlength=3).tolist() == [4, 4, 4]


# ------------------------------------------------------------------------------------------------
# The figures: what is drawn, labelled, in which order, nothing overlapping
# ------------------------------------------------------------------------------------------------
LENET_ORDER = ["C1", "S2", "C3", "S4", "C5", "F6", "OUT"]      # LC98 Fig. 2, input to output


def _extent(fig, artist):
    fig.draw_without_rendering()                # runs the layout
    return artist.get_window_extent(fig._get_renderer())


def test_layers_in_network_order():
    from alexnet_jax.tools._cli import in_network_order

    model = _filled_model("lenet5", input_size=32)
    by_name = {k: k.lower() for k in sorted(LENET_ORDER)}                  # what a dict is after jit
    assert list(by_name) != LENET_ORDER
    assert list(in_network_order(by_name, model)) == LENET_ORDER
    assert in_network_order(by_name, model)["S2"] == "s2"


@pytest.mark.slow
def test_init_stats_rows_in_network_order():
    from alexnet_jax import parallel
    from alexnet_jax.config import Config
    from alexnet_jax.restore import _augment_or_stand_in
    from alexnet_jax.tools import init_stats
    from alexnet_jax.trainer import Trainer

    cfg = Config(batch_size=4, mesh_data=1, mesh_model=1, data_dir="/nonexistent")   # LeNet-5
    augment = _augment_or_stand_in(cfg)
    trainer = Trainer.build(cfg, parallel.make_mesh(1, 1), augment=augment)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (4, *augment.stored_shape), dtype=np.uint8),
             "index": np.arange(4, dtype=np.int32), "label": np.arange(4, dtype=np.int32)}
    rows = init_stats.layer_stats(trainer, trainer.init(), batch)["layers"]
    assert [r["layer"] for r in rows] == LENET_ORDER


def _variant(init: str, width: float, steps: int | None) -> dict:
    def stats(scale):
        return {"loss": 2.3, "logit_std": 0.1, "logit_input_std": 0.01,
                "layers": [{"layer": n, "input_std": scale * 10.0 ** -i, "grad_std": scale * 10.0 ** (i - 9)}
                           for i, n in enumerate(LENET_ORDER)]}
    v = {"width": width, "init": init, "input_size": 32, "model": "lenet5", "at_init": stats(1.0)}
    if steps:
        v["after_steps"] = dict(stats(2.0), steps=steps)
    return v


def test_init_stats_figure_says_what_it_plots():
    from alexnet_jax.tools import init_stats

    fig = init_stats.figure([_variant(i, 0.25, 7) for i in ("paper", "paper_scaled", "he")], "alexnet_cifar10", 64)
    title = fig.get_suptitle()
    assert "inits paper, paper_scaled, he at width 0.25" in title and "batch of 64" in title
    assert "vs width" not in title
    axes = fig.axes
    assert len(axes) == 4
    assert all("at initialisation" in ax.get_title() for ax in axes[:2])
    assert all("after 7 training steps" in ax.get_title() for ax in axes[2:])
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_yscale() == "log"
        assert [t.get_text() for t in ax.get_xticklabels()] == LENET_ORDER
        assert len(ax.get_lines()) == 3 and ax.get_legend() is not None
    widths = init_stats.figure([_variant("paper", w, None) for w in (1.0, 0.5)], "alexnet_cifar10", 8)
    assert "init paper at widths 1, 0.5" in widths.get_suptitle() and len(widths.axes) == 2


def test_neighbours_figure_titles_do_not_overlap_and_keep_long_names():
    from alexnet_jax.tools.neighbours import figure

    display = [np.full((32, 32, 3), i * 20, np.uint8) for i in range(8)]
    names = [f"validation/n02085620/ILSVRC2012_val_{i:08d}.JPEG" for i in range(8)]
    long_name = "American Staffordshire terrier, Staffordshire bullterrier"
    captions = [long_name if i % 2 else "tench" for i in range(8)]
    idx, dist = np.array([[1, 2, 3], [4, 5, 6], [7, 1, 2]]), np.ones((3, 3))
    fig = figure(display, names, [0, 3, 6], idx, dist, title="fc7 nearest neighbours " * 12, captions=captions)
    grid = np.array(fig.axes).reshape(3, 4)
    for r in range(3):
        for c in range(4):
            ax = grid[r, c]
            text = ax.get_title()
            j = [0, 3, 6][r] if c == 0 else idx[r, c - 1]
            assert " ".join(text.split()).count(captions[j]) == 1, text        # wrapped, not cut
            title_box = _extent(fig, ax.title)
            assert title_box.y0 >= _extent(fig, ax).y1 - 1                     # above its own image
            above = grid[r - 1, c] if r else None
            top = _extent(fig, above).y0 if above is not None else _extent(fig, fig._suptitle).y0
            assert title_box.y1 <= top + 1, (r, c)                             # below the image (title) above
    assert _extent(fig, fig._suptitle).y1 <= fig.bbox.height


def test_filters_figure_title_fits_a_narrow_figure():
    from alexnet_jax.tools import filters

    blocks = [np.random.default_rng(0).normal(size=(6, 5, 5, 1))]
    title = "C1 kernels of a_long_workdir_name at step 1320\n(each kernel scaled on its own: its minimum to 0, " \
            "its maximum to 1)"
    fig = filters.figure(blocks, [None], "C1", title=title)
    box = _extent(fig, fig._suptitle)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
    assert _extent(fig, fig.axes[0].title).y1 <= box.y0 + 1


def test_curves_figure_labels_split_and_scale(tmp_path):
    from alexnet_jax.plotting import curves_figure

    runs = []
    for name, losses in (("wide", [2.3, 0.5, 0.05]), ("narrow", [2.38, 2.33, 2.28])):
        wd = tmp_path / name
        wd.mkdir()
        recs = [{"step": 50 * (i + 1), "kind": "train", "loss": v} for i, v in enumerate(losses)]
        recs.append({"step": 150, "kind": "eval", "top1": 0.4, "top5": 0.9, "loss": losses[-1]})
        (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        (wd / "config.json").write_text(json.dumps({"model": "lenet5", "dataset": "digits", "eval_split": "test"}))
        runs.append(str(wd))
    for wd, scale in zip(runs, ("log", "linear"), strict=True):
        fig = curves_figure([wd])
        ax_loss, ax_err = fig.axes
        assert ax_loss.get_yscale() == scale                   # log only where the loss spans a decade
        assert Path(wd).name in fig.get_suptitle() and "lenet5" in fig.get_suptitle()
        assert "test split" in ax_err.get_title() and ax_err.get_ylabel() == "top-1 error (%)"
        for ax in (ax_loss, ax_err):
            assert ax.get_xlabel() == "training step" and ax.get_ylabel() and ax.get_xlim()[0] == 0
    both = curves_figure(runs, labels=["a", "b"])
    assert [ln.get_label() for ln in both.axes[1].get_lines()] == ["a top-1 error (test)", "b top-1 error (test)"]


def _captured_figure(monkeypatch):
    """The figure a drawing function saves (its savefig still writes the file)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    seen = []
    real = Figure.savefig

    def savefig(self, *a, **k):
        seen.append(self)
        return real(self, *a, **k)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return seen


def test_filters_name_columns_not_gpus(monkeypatch, tmp_path):
    from alexnet_jax.tools.filters import draw

    seen = _captured_figure(monkeypatch)
    blocks = [np.random.default_rng(c).normal(size=(6, 5, 5, 3)) for c in range(2)]
    draw(blocks, [0.5, 0.6], "conv1", str(tmp_path / "f.png"))
    titles = [ax.get_title() for ax in seen[0].axes]
    assert titles[0].startswith("conv1 column 0") and titles[1].startswith("conv1 column 1")
    assert not any("GPU" in t for t in titles)


def test_neighbours_title_clears_the_first_row(monkeypatch, tmp_path):
    from alexnet_jax.tools.neighbours import draw

    seen = _captured_figure(monkeypatch)
    display = [np.full((8, 8, 3), i / 10, np.float32) for i in range(6)]
    idx = np.array([[1, 2], [3, 4]])
    draw(display, [f"train/c/{i}.jpg" for i in range(6)], [0, 5], idx, np.ones((2, 2)), str(tmp_path / "n.png"),
         title="a long title " * 3)
    fig = seen[0]
    renderer = fig._get_renderer()
    title_box = fig._suptitle.get_window_extent(renderer)
    first_row_top = max(ax.title.get_window_extent(renderer).y1 for ax in fig.axes[:3])
    assert title_box.y0 >= first_row_top, (title_box, first_row_top)


def test_curves_show_a_single_evaluation(monkeypatch, tmp_path):
    from alexnet_jax.plotting import plot_runs

    seen = _captured_figure(monkeypatch)
    recs = [{"step": s, "kind": "train", "loss": 2.0 / s, "accuracy": 0.1} for s in (1, 2, 3)]
    recs.append({"step": 3, "kind": "eval", "top1": 0.9, "top5": 1.0, "loss": 0.3})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    plot_runs([str(tmp_path)], str(tmp_path / "c.png"))
    ax_loss, ax_acc = seen[0].axes
    evals = [ln for ln in ax_loss.get_lines() if ln.get_label().endswith("eval")]
    assert len(evals) == 1 and len(evals[0].get_xdata()) == 1 and evals[0].get_marker() == "o"
    (err,) = ax_acc.get_lines()
    assert err.get_marker() == "o" and list(err.get_ydata()) == pytest.approx([10.0])


# ------------------------------------------------------------------------------------------------
# Forward taps against the models' own forward pass
# ------------------------------------------------------------------------------------------------
def _filled_model(name, **kw):
    """The structure of create_model(name, **kw) with numpy-random values (no init compilation)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from alexnet_jax.models import create_model

    abstract = nnx.eval_shape(lambda: create_model(name, **kw))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        key = str(path[-1].key)
        if key == "var":
            v = rng.uniform(0.5, 1.5, leaf.shape)
        elif key in ("bias", "mean", "bias_C", "bias_O"):
            v = rng.normal(0.0, 0.1, leaf.shape)
        elif key in ("scale", "coef_C"):
            v = 1.0 + rng.normal(0.0, 0.1, leaf.shape)
        else:
            fan_in = math.prod(leaf.shape[-4:-1]) if len(leaf.shape) >= 4 else leaf.shape[-2]
            v = rng.normal(0.0, math.sqrt(2.0 / fan_in), leaf.shape)
        return jnp.asarray(v, leaf.dtype)

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(state)))
    return nnx.merge(graphdef, state)


TAP_MODELS = [
    ("alexnet", dict(init="paper"), "fc7", 256), ("alexnet", dict(init="he"), "fc7", 256),
    ("alexnet_half", dict(init="paper"), "fc7", 256), ("alexnet_half", dict(init="he"), "fc7", 256),
    ("alexnet_owt", {}, "fc7", 256), ("alexnet_keras", {}, "fc6", 256), ("alexnet_bn", {}, "fc7", 256),
    ("lenet5", dict(head="softmax"), "F6", 84), ("lenet5", dict(head="rbf"), "F6", 84),
    ("lenet5_modern", {}, "F6", 84),
]


@pytest.mark.parametrize("name,kw,feature,dim", TAP_MODELS)
def test_taps_are_the_models_own_forward_pass(name, kw, feature, dim):
    """Every model, both inits: the taps come from the model's forward pass itself.  The logits with taps
    on are bitwise those without (op by op; compiled, to rounding); the last tap is the logits; the
    classifier applied to the feature tap
    gives the logits again (what fc8 reads is what the tools call features: the old shadow forward pass
    of the tools broke this for He init); the first layer's tap equals an independent lax.conv of the
    model's input scaling, kernel and bias; ReLU layers are non-negative; the taps follow layer_kinds."""
    import jax
    import jax.numpy as jnp

    from alexnet_jax import parallel
    from alexnet_jax.tools._cli import features

    width = {} if name.startswith("lenet") else dict(width=0.0625)
    model = _filled_model(name, input_size=32, num_classes=10, **width, **kw)
    channels = 1 if name.startswith("lenet") else 3
    x = np.random.default_rng(1).normal(size=(3, 32, 32, channels)).astype(np.float32) * (
        1.0 if name.startswith("lenet") else 60.0)
    logits, taps = parallel.apply(model, x, taps=True)      # op by op: bitwise the plain forward pass
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(model(x)))
    jitted, _ = jax.jit(lambda x: parallel.apply(model, x, taps=True))(x)   # compiled: the same to rounding
    scale = float(np.abs(np.asarray(logits)).max())
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(logits), rtol=1e-5, atol=1e-5 * scale)
    kinds = model.layer_kinds
    assert list(taps) == list(kinds) and model.feature_layer == feature
    last = list(kinds)[-1]
    np.testing.assert_array_equal(np.asarray(taps[last][0]), np.asarray(logits))
    feats = features(type("R", (), {"model": model})(), {k: [np.asarray(a) for a in v] for k, v in taps.items()})
    assert feats.shape == (3, dim)
    head = getattr(model, last, None) or getattr(model, last.lower())
    again = jax.jit(lambda f: head(f.astype(model.dtype)).astype(jnp.float32))(feats)
    np.testing.assert_allclose(np.asarray(again), np.asarray(logits), rtol=1e-5, atol=1e-5 * scale)
    for layer, per_column in taps.items():
        assert len(per_column) == (2 if name == "alexnet" and layer != "fc8" else 1)
        if kinds[layer] == "relu":
            assert all(np.asarray(a).min() >= 0 for a in per_column)
    # the first layer, independently: conv of the (scaled) input with the layer's own kernel and bias
    first = next(iter(kinds))
    module = getattr(model, first, None) or getattr(model, first.lower())
    kernel = np.asarray(getattr(module, "kernel", None) or module.kernel_HWIO)
    bias = np.asarray(getattr(module, "bias", None) or module.bias_C)
    if name == "alexnet":
        kernel, bias = kernel[1], bias[1]                      # column 1
    scale = np.asarray(getattr(model, "input_std", None) or 1.0, np.float32)
    pad = getattr(module, "padding", "VALID")
    if name == "lenet5":
        pad = model.c1.padding
    stride = getattr(module, "stride", None) or getattr(module, "strides", (1, 1))
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    x_in = x / scale.reshape((1, 1, 1, -1) if scale.ndim else ())
    a = jax.lax.conv_general_dilated(x_in, kernel, stride, pad, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    a = np.asarray(a) + bias.reshape(1, 1, 1, -1)
    if name == "alexnet_bn":
        bn = model.bn_conv1
        a = (a - np.asarray(bn.mean)) / np.sqrt(np.asarray(bn.var) + bn.epsilon) * np.asarray(bn.scale) + np.asarray(
            bn.bias)
    expect = 1.7159 * np.tanh(2.0 / 3.0 * a) if kinds[first] == "squash" else np.maximum(a, 0)
    got = np.asarray(taps[first][1 if name == "alexnet" else 0])
    np.testing.assert_allclose(got, expect, rtol=2e-4, atol=2e-4 * np.abs(expect).max())


def test_filters_lenet_c1_grid_without_colour_score(tmp_path):
    from alexnet_jax.tools import filters

    a = filters.analyse(_filled_model("lenet5", input_size=32))
    assert a["layer"] == "C1" and a["blocks"][0].shape == (6, 5, 5, 1)
    assert a["per_column"] == [None] and a["per_kernel"] == [None]
    out = filters.draw(a["blocks"], a["per_column"], a["layer"], str(tmp_path / "c1.png"))
    assert Path(out).stat().st_size > 0
    one_col = filters.analyse(_filled_model("alexnet_half", input_size=32, width=0.0625))
    assert len(one_col["blocks"]) == 1 and one_col["blocks"][0].shape == (3, 5, 5, 3)
    assert 0 <= one_col["per_column"][0] <= 1


def test_class_names_and_mean_without_the_dataset(tmp_path):
    from alexnet_jax.config import Config
    from alexnet_jax.restore import _augment_or_stand_in
    from alexnet_jax.tools import _images

    cfg = Config(model="alexnet", num_classes=1000, input_size=64, dataset="imagenet2012", augment="alexnet",
                 data_dir=str(tmp_path / "empty"))
    names = _images.class_names(cfg)
    assert len(names.ids) == 1000 and names.ids[0] == "n01440764" and names.ids[-1] == "n15075141"
    assert names.names[0] == "tench" and "ILSVRC-2012 synsets" in names.source
    augment = _augment_or_stand_in(cfg)              # no training mean image here: a per-channel one
    assert augment.mean.shape == (3,) and augment.stored_shape == (256, 256, 3)
    assert "per-channel mean" in _images.describe_mean(augment)
    small = _images.class_names(cfg.replace(num_classes=10, dataset="cifar10"))
    assert small.ids == [f"class_{i}" for i in range(10)]


def test_image_inputs_from_folders_and_tars(tmp_path):
    from PIL import Image

    from alexnet_jax.config import Config
    from alexnet_jax.restore import Restored, _augment_or_stand_in
    from alexnet_jax.tools import _images
    from alexnet_jax.trainer import Trainer

    photos = tmp_path / "photos" / "sub"
    photos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, hw in enumerate([(40, 60), (90, 30), (32, 32)]):
        pixels = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photos / f"n01440764_tench_{i}.jpg")
    (photos / "notes.txt").write_text("not an image")
    with tarfile.open(tmp_path / "photos.tar", "w") as tar:
        tar.add(photos, arcname="photos")
    cfg = Config(model="alexnet", num_classes=10, input_size=32, dataset="cifar10", augment="cifar",
                 data_dir=str(tmp_path / "empty"), batch_size=4)   # not prepared: a per-channel mean stands in
    trainer = Trainer.build(cfg, augment=_augment_or_stand_in(cfg))
    restored = Restored(workdir=str(tmp_path), config=cfg, trainer=trainer, state=None, meta={}, step=0)
    for source in (tmp_path / "photos", tmp_path / "photos.tar"):
        inputs = _images.load_inputs(restored, images=[str(source)])
        assert inputs.x.shape == (3, 32, 32, 3) and inputs.x.dtype == np.float32
        assert "per-channel mean" in inputs.mean and len(inputs.display) == 3
        assert [Path(n).name for n in inputs.names] == [f"n01440764_tench_{i}.jpg" for i in range(3)]
        inside = "sub" if source.is_dir() else "photos"              # full names within the source
        assert inputs.names == [f"{inside}/n01440764_tench_{i}.jpg" for i in range(3)]
        assert abs(float(inputs.x.mean())) < 60                     # centred raw RGB, 0..255 units
    assert _images.sample_label("a/n01440764_tench_0.jpg") == ("n01440764", "tench 0")
    with pytest.raises(FileNotFoundError):
        _images.read_image_files([str(tmp_path / "missing")])


def test_wrapper_scripts():
    from alexnet_jax.cli import TOOLS

    scripts = {p.stem for p in (ROOT / "tools").glob("*.py")}
    # a script run from tools/ puts the folder first on sys.path: no file there may shadow a stdlib module
    assert not scripts & set(sys.stdlib_module_names)
    expected = {"inspect_checkpoint" if t == "inspect" else t for t in TOOLS}   # README: one script per tool
    assert scripts == expected
    for t in TOOLS:
        text = (ROOT / "tools" / f"{'inspect_checkpoint' if t == 'inspect' else t}.py").read_text()
        assert f'main(["{t.replace("_", "-")}", *sys.argv[1:]])' in text
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "inspect_checkpoint.py"), "--help"],
                       capture_output=True, text=True, timeout=120, cwd="/")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--workdir" in r.stdout and "--stats" in r.stdout


# ------------------------------------------------------------------------------------------------
# The tools on trained checkpoints (the 2-device one restored onto 1 CPU)
# ------------------------------------------------------------------------------------------------
def _param_count(config: dict) -> int:
    import jax
    from flax import nnx

    from alexnet_jax.models import create_model

    m = nnx.eval_shape(lambda: create_model("alexnet", num_classes=config["num_classes"],
                                            input_size=config["input_size"], width=config["width"]))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(m, nnx.Param)))


def test_inspect_lists_every_parameter_with_its_column(run, capsys, tmp_path):
    from alexnet_jax.tools import inspect as inspect_tool

    argv = ["--workdir", run["workdir"], "--stats", "--out", str(tmp_path / "i.json")]
    s = _tool(inspect_tool, argv, capsys)
    total = _param_count(CONFIG)
    assert s["params"] == total and s["columns"] == 2
    assert s["step"] == CONFIG["num_steps"] and s["evals"] == 1
    report = json.loads(Path(s["out"]).read_text())
    rows = report["parameters"]
    assert sum(r["size"] for r in rows) == total
    for r in rows:
        if r["path"].startswith("fc8."):
            assert r["column"] == "shared"
        else:
            assert r["column"] in (0, 1) and r["path"].endswith(f"[{r['column']}]")
        assert 0 <= r["frac_small"] <= 1 and r["min"] <= r["mean"] <= r["max"]
    assert s["params_by_column"]["0"] == s["params_by_column"]["1"] > 0
    assert s["params_by_column"]["shared"] == 2 * 128 * 1000 + 1000          # fc8: 2 columns x 128 fc7 units
    conv1 = [r["path"] for r in rows if r["path"].startswith("conv1.kernel")]
    assert conv1 == ["conv1.kernel[0]", "conv1.kernel[1]"]
    assert report["config"]["mesh_model"] == 2 and report["evals"][-1]["step"] == CONFIG["num_steps"]


def test_inspect_lists_the_checkpoint_steps(tfds_dir, tmp_path, capsys):
    from alexnet_jax import cli

    wd = tmp_path / "w"
    train_in_process(fast_config(tfds_dir), wd)
    damage_checkpoint(wd / "checkpoints" / "10")
    train_in_process(fast_config(tfds_dir, num_steps=15), wd, extend=True)
    capsys.readouterr()
    assert cli.main(["inspect", "--workdir", str(wd)]) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["checkpoint_steps"]["usable_or_unchecked"] == [5, 10, 15]
    assert len(s["checkpoint_steps"]["moved_aside"]) == 1


def test_filters_through_the_cli(run, capsys):
    from alexnet_jax import cli

    assert cli.main(["filters", "--workdir", run["workdir"]]) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(s["out"]).is_file() and Path(s["out"]).stat().st_size > 0
    assert s["out"].startswith(run["workdir"])                     # default: inside the workdir
    assert len(s["column_scores"]) == 2 and all(0 <= v <= 1 for v in s["column_scores"])
    assert [c["kernels"] for c in s["columns"]] == [3, 3] and s["kernel_shape"] == [5, 5, 3]
    report = json.loads(Path(s["json"]).read_text())
    assert len(report["per_kernel"]) == 2 and all(len(k) == 3 for k in report["per_kernel"])


def test_neighbours_on_a_dataset_split(run, capsys, tmp_path):
    from alexnet_jax.tools import neighbours

    out = tmp_path / "nn.png"
    argv = ["--workdir", run["workdir"], "--split", "train", "--limit", "12", "--queries", "3", "--k", "4",
            "--out", str(out)]
    s = _tool(neighbours, argv, capsys)
    assert out.is_file() and out.stat().st_size > 0
    assert s["feature_layer"] == "fc7" and s["feature_dim"] == 256 and s["images"] == 12
    assert s["source"] == "imagenet2012:train" and "training-split mean" in s["mean"]
    assert s["pick"] == "12 of 16, class-balanced over 4 classes, seed 0"
    rows = json.loads(Path(s["json"]).read_text())["rows"]
    assert len(rows) == 3
    assert len({row["label"] for row in rows}) == 3                 # the queries: three different classes
    for row in rows:
        nbrs = row["neighbours"]
        assert len(nbrs) == 4 and row["index"] not in [n["index"] for n in nbrs]
        assert [n["distance"] for n in nbrs] == sorted(n["distance"] for n in nbrs)


@pytest.mark.skipif(not SAMPLES.is_file(), reason=f"shared ImageNet samples not found at {SAMPLES}")
def test_predict_on_shared_imagenet_samples(run, capsys):
    from alexnet_jax.tools import predict

    s = _tool(predict, [str(SAMPLES), "--limit", "3", "--workdir", run["workdir"]], capsys)
    assert s["images"] == 3 and s["num_classes"] == 1000
    assert "dataset imagenet2012" in s["class_names"] and "ImageNet names" in s["class_names"]
    with tarfile.open(SAMPLES) as tar:
        first = sorted(m.name for m in tar.getmembers() if m.isfile())[:3]
    assert [p["file"] for p in s["predictions"]] == first
    for p in s["predictions"]:
        probs = [t["prob"] for t in p["top"]]
        assert len(p["top"]) == 5 and sum(probs) <= 1 + 1e-6
        assert probs == sorted(probs, reverse=True) and all(q > 0 for q in probs)
        assert all(t["id"].startswith("n") and t["name"] for t in p["top"])
        assert p["expected"]["id"] == Path(p["file"]).name.split("_")[0]
    assert Path(s["out"]).is_file()


def test_plot_two_workdirs(run, capsys, tmp_path):
    from alexnet_jax.tools import plot

    other = tmp_path / "other"          # a second run's metrics (plot reads nothing else)
    other.mkdir()
    recs = [{"step": s, "kind": "train", "loss": 2.0 / s, "accuracy": 0.1} for s in (1, 2, 3)]
    recs.append({"step": 3, "kind": "eval", "top1": 0.3, "top5": 0.6, "loss": 0.9})
    (other / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "curves.png"
    s = _tool(plot, [run["workdir"], str(other), "--labels", "trained,other", "--out", str(out)], capsys)
    assert out.is_file() and out.stat().st_size > 0
    assert [r["label"] for r in s["runs"]] == ["trained", "other"]
    assert [(r["train_points"], r["eval_points"]) for r in s["runs"]] == [(2, 1), (3, 1)]
    with pytest.raises(ValueError):
        plot.parse_labels(["a"], 2)


@pytest.mark.parametrize("inputs", ["split", "synthetic", "images"])
def test_activations_dead_fractions(run, capsys, tmp_path, inputs):
    from alexnet_jax.tools import activations

    argv = ["--workdir", run["workdir"], "--out", str(tmp_path / "a.json")]
    argv += {"split": [], "synthetic": ["--synthetic", "--limit", "5"],
             "images": ["--images", run["src"], "--limit", "7"]}[inputs]
    s = _tool(activations, argv, capsys)
    assert s["inputs"] == {"split": 4, "synthetic": 5, "images": 7}[inputs]
    layers = [(r["layer"], r["column"]) for r in s["layers"]]
    expected = [(n, c) for n in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7") for c in (0, 1)]
    assert layers == expected + [("fc8", "shared")]
    for r in s["layers"]:
        assert 0.0 <= r["dead_fraction"] <= 1.0 and 0.0 <= r["dead_units"] <= 1.0
    full = json.loads(Path(s["out"]).read_text())["layers"]
    for r in full:
        assert r["zeros"] / r["size"] == r["dead_fraction"]
