"""The command line: project errors are one `error:` line (exit 2) and unexpected ones keep their traceback;
a refused mesh says how to get devices; --force-host-devices reaches XLA; --data-dir on train and eval;
multi-host flags only where they apply; `train --help` lists the recipe's values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST, fast_config, train_in_process

from alexnet_jax import cli

ROOT = Path(__file__).resolve().parents[1]


# -----------------------------------------------------------------------------------------------
# Errors: one line for the project's, a traceback for the unexpected
# -----------------------------------------------------------------------------------------------
def test_cli_prints_one_line_for_project_errors(tfds_dir, tmp_path, capsys):
    from alexnet_jax import cli

    assert cli.main(["train", "--workdir", str(tmp_path / "w"), "--set", "lr=-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: lr=-1.0 is not allowed: lr must be 0 < value <= 10"]


@pytest.mark.parametrize("args, message", [
    (["--set", "nope=1"], "unknown config key 'nope'"),
    (["--set", "lr=fast"], "bad value 'fast' for lr"),
    (["--config", "resnet"], "unknown config 'resnet'"),
    (["--set", "model=vgg"], "model='vgg' is not allowed: model must be one of lenet5, lenet5_modern, alexnet"),
    (["--set", "dataset=mnist", "--set", "data_dir=/nonexistent/tfds"], "alexnet-jax prepare mnist"),
])
def test_clear_errors(tmp_path, capsys, args, message):
    from alexnet_jax import cli

    assert cli.main(["train", "--workdir", str(tmp_path / "x"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert message in err, err[-2000:]
    assert not (tmp_path / "x").exists()


def test_unexpected_errors_keep_their_traceback(monkeypatch, capsys):
    from alexnet_jax import cli

    def boom(args):
        raise RuntimeError("an XLA failure inside a step")

    monkeypatch.setattr(cli, "cmd_summary", boom)
    with pytest.raises(RuntimeError, match="XLA failure"):
        cli.main(["summary", "lenet5"])
    assert "error:" not in capsys.readouterr().err


# -----------------------------------------------------------------------------------------------
# Devices and meshes
# -----------------------------------------------------------------------------------------------
def test_refused_mesh_creates_nothing_and_says_how_to_get_devices(tfds_dir, tmp_path):
    from alexnet_jax.parallel import MeshError

    wd = tmp_path / "never"
    with pytest.raises(MeshError) as e:
        train_in_process(fast_config(tfds_dir, model="alexnet", num_classes=10, input_size=32, dataset="digits",
                       mesh_model=2), wd)
    assert "xla_force_host_platform_device_count=N" in str(e.value) and "--force-host-devices" in str(e.value)
    assert not wd.exists()


def test_force_host_devices_flag_reaches_xla(tfds_dir, tmp_path):
    """--force-host-devices on train: two devices, and the log line says how the model uses them."""
    r = subprocess.run([sys.executable, "-m", "alexnet_jax.cli", "train", "--force-host-devices", "2",
                        "--workdir", str(tmp_path / "w"), "--no-progress", "--data-dir", str(tfds_dir),
                        "--set", "num_steps=2", "--set", "batch_size=4", "--set", "eval_every_epochs=100"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env=dict({k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, JAX_PLATFORMS="cpu"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mesh data=1 x model=2: one-column model: data-parallel over all 2 devices" in r.stderr, r.stderr


# -----------------------------------------------------------------------------------------------
# Flags and help
# -----------------------------------------------------------------------------------------------
def test_data_dir_flag_on_train_and_eval(tfds_dir, tmp_path, capsys):
    from alexnet_jax import cli

    wd = tmp_path / "w"
    assert cli.main(["train", "--workdir", str(wd), "--no-progress", "--data-dir", str(tfds_dir),
                     *[a for k, v in FAST.items() for a in ("--set", f"{k}={v}")]]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cli.main(["eval", "--workdir", str(wd), "--data-dir", str(tfds_dir)]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["top1"] == trained["top1"] and ev["examples"] == 360


def test_multihost_flags_only_where_they_apply():
    from alexnet_jax import cli

    p = cli.build_parser()
    sub = p._subparsers._group_actions[0].choices
    for name, parser in sub.items():
        opts = {o for a in parser._actions for o in a.option_strings}
        assert ("--coordinator" in opts) == (name in ("train", "eval")), name


def test_help_leaves_what_commands_import_unimported():
    """`import alexnet_jax.cli` imports no jax (a Ctrl-C while jax loads reaches _parse's guard), and `--help`, which
    imports every tool module, none of orbax, tensorflow_datasets, matplotlib, scikit-learn (the notes in cli.py)."""
    code = ("import sys\nimport alexnet_jax.cli\nprint('jax' in sys.modules)\n"
            "try:\n  alexnet_jax.cli.main(['--help'])\nexcept SystemExit:\n  pass\n"
            "print([m for m in ('orbax', 'tensorflow_datasets', 'matplotlib', 'sklearn') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "False", r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stdout.splitlines()[-1] == "[]", r.stdout[-300:]


def test_train_help_lists_the_recipes_values():
    def epilog(argv):
        p = cli.build_parser(argv)
        return p._subparsers._group_actions[0].choices["train"].epilog

    default = epilog(["train", "--help"])                        # the quick start's recipe, lenet5_digits
    assert "--config lenet5_digits" in default and "augment = 'lenet_affine'" in default
    assert "batch_size = 32:" in default and "num_epochs = 30" in default
    cifar = epilog(["train", "--config", "alexnet_cifar10", "--help"])
    assert "model = 'alexnet'" in cifar and "width = 0.5:" in cifar and "init = 'he'" in cifar
    assert "eval_split = 'validation'" in cifar
