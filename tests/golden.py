"""Golden runs: short trainings whose final state is recorded bit for bit, so that a change meant to keep
results (a refactor, a new module layout) can show it did.

    python tests/golden.py record [NAME ...]   # run and write tests/fixtures/golden.json
    python tests/golden.py check  [NAME ...]   # run and compare with the record (exit 1 on a difference)

Each run goes through the command line (`alexnet-jax prepare` and `alexnet-jax train` in fresh processes,
a fresh TFDS directory, no compilation cache), and its result is read straight from the files the run wrote:
the newest checkpoint's arrays through orbax without any of the project's code, and the last evaluation
in metrics.jsonl.  A record holds the versions and the CPU it was made with; a bitwise comparison is only
meaningful on the same ones (XLA:CPU compiles for the host's instruction set), so `check` reports a
different environment instead of comparing.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RECORD = Path(__file__).resolve().parent / "fixtures" / "golden.json"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")

# name -> (dataset and its source, or None for a bundled one; config; overrides; forced CPU devices)
RUNS = {
    "quickstart": (None, "lenet5_digits", [], 1),
    "cifar_two_column": (("cifar10", SHARED / "cifar10" / "cifar10_train_jpeg.tar.gz"), "alexnet_cifar10",
                         ["num_steps=50", "checkpoint_every_steps=50", "eval_every_epochs=1000"], 2),
    # SDLM with the exact Gauss-Newton diagonal and cross-entropy (the recipe's LC98 estimate and criterion off)
    "lenet5_sdlm": (("mnist", SHARED / "mnist"), "lenet5_mnist_sdlm",
                    ["num_steps=200", "checkpoint_every_steps=200", "eval_every_epochs=1000", "loss=cross_entropy",
                     "sdlm_curvature=exact"], 1),
}


def environment() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "python": platform.python_version(), **{p: metadata.version(p) for p in PACKAGES}}


def missing_source(name: str) -> Path | None:
    ds = RUNS[name][0]
    return None if ds is None or ds[1].exists() else ds[1]


def _env(tfds: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), TFDS_DATA_DIR=tfds, ALEXNET_JAX_COMPILATION_CACHE="0")
    return env


def _cli(args: list[str], env: dict[str, str]) -> None:
    r = subprocess.run([sys.executable, "-m", "alexnet_jax.cli", *args], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"alexnet-jax {' '.join(args)} exited {r.returncode}:\n{r.stderr[-3000:]}")


def _leaves(tree, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        out = {}
        for k in sorted(tree):
            out.update(_leaves(tree[k], f"{prefix}/{k}" if prefix else str(k)))
        return out
    if isinstance(tree, (list, tuple)):
        out = {}
        for i, v in enumerate(tree):
            out.update(_leaves(v, f"{prefix}/{i}"))
        return out
    return {prefix: tree}


def read_result(workdir: Path) -> dict:
    """The newest checkpoint's arrays (sha256 of each, with dtype and shape) and the last evaluation."""
    import numpy as np
    import orbax.checkpoint as ocp

    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    step = steps[-1]
    path = workdir / "checkpoints" / str(step) / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    as_numpy = lambda tree: {k: as_numpy(v) for k, v in tree.items()} if isinstance(tree, dict) else (  # noqa: E731
        [as_numpy(v) for v in tree] if isinstance(tree, (list, tuple)) else
        None if tree is None else ocp.RestoreArgs(restore_type=np.ndarray))
    tree = checkpointer.restore(path, restore_args=as_numpy(checkpointer.metadata(path).item_metadata.tree))
    hashes = {}
    for path, a in _leaves(tree).items():
        if a is None:
            continue
        a = np.asarray(a)
        hashes[path] = f"{a.dtype}{list(a.shape)}:{hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()}"
    evals = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    last = {k: v for k, v in evals[-1].items() if k in ("step", "top1", "top5", "loss", "examples")} if evals else {}
    return {"step": step, "eval": last, "arrays": hashes}


def run(name: str, scratch: Path) -> dict:
    dataset, config, overrides, devices = RUNS[name]
    tfds = scratch / "tfds"
    env = _env(str(tfds))
    if dataset is not None:
        _cli(["prepare", dataset[0], "--source", str(dataset[1]), "--data-dir", str(tfds)], env)
    workdir = scratch / name
    args = ["train", "--config", config, "--workdir", str(workdir), "--no-progress"]
    args += [a for o in overrides for a in ("--set", o)]
    if devices > 1:
        args += ["--force-host-devices", str(devices)]
    _cli(args, env)
    return read_result(workdir)


def differences(name: str, got: dict, want: dict) -> list[str]:
    out = []
    if got["step"] != want["step"]:
        out.append(f"{name}: final step {got['step']} != {want['step']}")
    if got["eval"] != want["eval"]:
        out.append(f"{name}: last evaluation {got['eval']} != {want['eval']}")
    for path in sorted(set(got["arrays"]) | set(want["arrays"])):
        a, b = got["arrays"].get(path), want["arrays"].get(path)
        if a != b:
            out.append(f"{name}: {path}: {'missing' if a is None else a[:40]} != {'missing' if b is None else b[:40]}")
    return out


def load_record() -> dict:
    return json.loads(RECORD.read_text())


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("record", "check"):
        print(__doc__)
        return 2
    names = argv[1:] or list(RUNS)
    record = load_record() if RECORD.exists() else {"environment": environment(), "runs": {}}
    if argv[0] == "check" and record["environment"] != environment():
        print(f"recorded with {record['environment']}, here {environment()}: compare on the recording machine "
              f"or record again", file=sys.stderr)
        return 3
    if argv[0] == "record":
        record["environment"] = environment()
    problems = []
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        for name in names:
            if (src := missing_source(name)) is not None:
                print(f"{name}: skipped ({src} not found)")
                continue
            got = run(name, Path(tmp) / name)
            if argv[0] == "record":
                record["runs"][name] = got
                print(f"{name}: recorded step {got['step']}, {len(got['arrays'])} arrays, eval {got['eval']}")
            else:
                diff = differences(name, got, record["runs"][name])
                problems += diff
                print(f"{name}: {'bitwise equal' if not diff else f'{len(diff)} difference(s)'}")
    if argv[0] == "record":
        RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
