"""Every subcommand given a user's mistake answers with one `error:` line naming what was wrong, exit code 2, and
writes nothing; `predict` skips unreadable files (one line each) and predicts the rest; Ctrl-C in `prepare` is
one line, exit 130, and the next `prepare` resumes.  The mistakes are run through `cli.main` in this process
(the Ctrl-C cases, which need a process of their own, are slow-marked)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from alexnet_jax import cli

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared/data/mnist"


@pytest.fixture(scope="module")
def lab(tmp_path_factory, digits_run):
    """A folder holding a link to a finished LeNet-5 run on the bundled digits (conftest's digits_run, `wd`),
    its TFDS folder (`tfds`), and bad inputs."""
    from PIL import Image

    root = tmp_path_factory.mktemp("faults")
    (root / "wd").symlink_to(digits_run / "wd", target_is_directory=True)
    (root / "tfds").symlink_to(digits_run / "tfds", target_is_directory=True)
    bad = root / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg after all")
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.txt").write_text("not an image")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(bad / "good.png")
    (root / "no_metrics").mkdir()
    return root


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `root` and under the run it links to, with size and modification time."""
    paths = [*root.rglob("*"), *(root / "wd").rglob("*")]
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in paths}


def _main(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def _cases(r: Path) -> dict[str, tuple[list[str], str]]:
    """{case: (argv, what its error line must name)}; `r` is the lab folder."""
    wd, bad, missing, d = str(r / "wd"), r / "bad", str(r / "missing"), str(r / "tfds")
    a_file = str(bad / "good.png")          # a file where a folder is expected
    torch = importlib.util.find_spec("torch") is not None
    return {
        "train unknown config": (["train", "--config", "nosuch", "--workdir", str(r / "new")], "'nosuch'"),
        "train unknown key": (["train", "--workdir", wd, "--set", "nosuchkey=1"], "'nosuchkey'"),
        "eval missing workdir": (["eval", "--workdir", missing], missing),
        "eval unknown split": (["eval", "--workdir", wd, "--split", "nosuchsplit", "--data-dir", d], "'nosuchsplit'"),
        "prepare missing source": (["prepare", "cifar10", "--source", missing, "--data-dir", d], missing),
        "prepare unreadable source": (["prepare", "cifar10", "--source", str(bad / "empty.jpg"), "--data-dir", d],
                                      str(bad / "empty.jpg")),
        "import torchvision missing": (["import", "torchvision", missing + ".pth", "--workdir", str(r / "new")],
                                       missing + ".pth"),
        "import torchvision unreadable": (["import", "torchvision", str(bad / "empty.jpg"), "--workdir",
                                           str(r / "new")], str(bad / "empty.jpg")),
        "import caffe unreadable": (["import", "caffe", str(bad / "notes.txt"), "--deploy", str(bad / "notes.txt"),
                                     "--mean", str(bad / "notes.txt"), "--workdir", str(r / "new")],
                                    str(bad / "notes.txt")),
        "export missing workdir": (["export", "torchvision", "--workdir", missing, str(r / "x.pth")],
                                   missing if torch else "install torch"),
        **{f"{tool} missing workdir": ([tool, "--workdir", missing], missing)
           for tool in ("inspect", "filters", "neighbours", "activations")},
        "neighbours missing images": (["neighbours", "--workdir", wd, "--images", missing], missing),
        "neighbours unknown split": (["neighbours", "--workdir", wd, "--split", "nosuchsplit"], "'nosuchsplit'"),
        "activations unreadable images": (["activations", "--workdir", wd, "--images", str(bad / "broken.jpg")],
                                          str(bad / "broken.jpg")),
        "predict missing workdir": (["predict", "--workdir", missing, str(bad)], missing),
        "predict missing path": (["predict", "--workdir", wd, missing], missing),
        "predict only unreadable": (["predict", "--workdir", wd, str(bad / "broken.jpg"), str(bad / "empty.jpg")],
                                    str(bad / "empty.jpg")),
        "predict a text file": (["predict", "--workdir", wd, str(bad / "notes.txt")], str(bad / "notes.txt")),
        "plot missing workdir": (["plot", missing], missing),
        "plot without metrics": (["plot", str(r / "no_metrics")], str(r / "no_metrics" / "metrics.jsonl")),
        "plot label count": (["plot", wd, "--labels", "a", "b"], "--labels"),
        "init-stats unwritable out": (["init-stats", "--out", a_file + "/x.png"], a_file),
        "bench unwritable out": (["bench", "--out", a_file + "/x.json"], a_file),
        "bench bad mesh": (["bench", "--mesh", "data=two"], "--mesh"),
        "compile unknown topology": (["compile", "--topology", "nosuch:9"], "'nosuch:9'"),
    }


CASES = list(_cases(Path("/r")))


def test_every_subcommand_is_in_the_sweep():
    sub = next(a for a in cli.build_parser([])._actions if a.dest == "command")
    swept = {name.split()[0] for name in CASES}
    assert swept >= set(sub.choices) - {"summary"}   # summary reads no file and takes only argparse's choices


@pytest.mark.parametrize("case", CASES)
def test_a_mistake_is_one_error_line(lab, case, capsys, caplog):
    argv, named = _cases(lab)[case]
    before = _files(lab)
    rc, _, err = _main(argv, capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2, err
    assert len(errors) == 1 and named in errors[0], err
    assert "Traceback" not in err and "_io.BytesIO" not in err
    assert _files(lab) == before                         # nothing written, nothing touched


def test_predict_skips_unreadable_files_and_predicts_the_rest(lab, capsys, caplog, tmp_path):
    out = tmp_path / "predict.json"
    rc, stdout, err = _main(["predict", "--workdir", str(lab / "wd"), str(lab / "bad"), str(lab / "bad" / "notes.txt"),
                             "--out", str(out)], capsys)
    assert rc == 0 and "Traceback" not in err
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert sorted(skipped) == sorted([                  # one line each, naming the file
        "skipping broken.jpg: cannot be decoded (UnidentifiedImageError: cannot identify image file)",
        "skipping empty.jpg: cannot be decoded (an empty file)",
        f"skipping {lab / 'bad' / 'notes.txt'}: not an image (.jpg, .jpeg, .png, .bmp, .ppm, .pgm, .gif, .webp, "
        ".tif, .tiff), a folder or a tar archive"])
    report = json.loads(stdout.strip().splitlines()[-1])
    assert [p["file"] for p in report["predictions"]] == ["good.png"]   # the folder's .txt is not an image name
    assert json.loads(out.read_text())["images"] == 1


# ------------------------------------------------------------------------------------------------
# Ctrl-C in prepare (a process of its own: the signal goes to its process group, as a terminal's does)
# ------------------------------------------------------------------------------------------------
def _prepare(data_dir: Path, *, interrupt_when=None, timeout: float = 300) -> tuple[int, list[str]]:
    """`alexnet-jax prepare mnist` with 2 workers; SIGINT to its process group once `interrupt_when()` holds.
    Returns (exit code, stderr lines other than progress)."""
    argv = [sys.executable, "-m", "alexnet_jax.cli", "prepare", "mnist", "--source", str(MNIST), "--data-dir",
            str(data_dir), "--workers", "2"]
    p = subprocess.Popen(argv, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    if interrupt_when is not None:
        t0 = time.monotonic()
        while not interrupt_when() and p.poll() is None and time.monotonic() - t0 < timeout:
            time.sleep(0.05)
        os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=timeout)
    return p.returncode, [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("prepare mnist: ")]


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.is_dir(), reason=f"MNIST IDX files not found at {MNIST}")
def test_ctrl_c_in_prepare_keeps_its_shards_and_the_next_prepare_resumes(tmp_path):
    staging = tmp_path / "mnist" / "3.0.1.staging"
    rc, lines = _prepare(tmp_path, interrupt_when=lambda: any((staging / "done").glob("*.json")))
    assert rc == 130 and len(lines) == 1, lines
    assert "stopped by SIGINT (Ctrl-C)" in lines[0] and "shards are kept" in lines[0] and "resume" in lines[0]
    kept = len(list((staging / "done").glob("*.json")))
    assert kept >= 1
    rc, lines = _prepare(tmp_path)
    assert rc == 0 and any(f"resuming mnist: {kept} of" in ln for ln in lines), lines
    info = json.loads((tmp_path / "mnist" / "3.0.1" / "dataset_info.json").read_text())
    assert {s["name"]: sum(map(int, s["shardLengths"])) for s in info["splits"]} == {"train": 60000, "test": 10000}


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.is_dir(), reason=f"MNIST IDX files not found at {MNIST}")
def test_ctrl_c_while_prepare_starts_writes_nothing(tmp_path):
    t0 = time.monotonic()
    rc, lines = _prepare(tmp_path, interrupt_when=lambda: time.monotonic() - t0 > 0.5)
    assert rc == 130 and len(lines) == 1, lines
    assert "stopped by SIGINT (Ctrl-C)" in lines[0] and "nothing was written" in lines[0]
    assert not any(tmp_path.iterdir())
