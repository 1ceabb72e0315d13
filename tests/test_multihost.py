"""Multi-host on one machine: two processes, one CPU device each, joined by `jax.distributed`, train the
two-column AlexNet with one column per process (mesh data=1 x model=2 over the 2 global devices) and
match a one-process run on 2 forced devices.  The CLI path (`alexnet-jax train --coordinator ...`) is
checked the same way.

CPU collectives between processes use gloo, JAX's default `jax_cpu_collectives_implementation` since
0.4.3x (this file asserts it; set `jax.config.update("jax_cpu_collectives_implementation", "gloo")` on
older versions).  Every process gets a timeout, so a lost peer fails the test instead of hanging it.

This file run as a script (`python tests/test_multihost.py OUTDIR PROCESS_ID NUM_PROCESSES PORT STEPS`)
is one worker; NUM_PROCESSES=1 is the single-process reference on the forced devices it was given.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240
STEPS = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CACHE: list[str] = []


@pytest.fixture(autouse=True)
def _jax_cache(request):
    """Persistent XLA compilation cache in pytest's cache dir (repeat runs compile little)."""
    cache = getattr(request.config, "cache", None)
    CACHE[:] = [str(cache.mkdir("jax_compile_cache"))] if cache else []


def _env(devices: int) -> dict:
    """Forced CPU devices, LLVM optimisation off (3-8x faster compiles; nothing here is timed)."""
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags,
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if CACHE:
        env.update(JAX_COMPILATION_CACHE_DIR=CACHE[0], JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def launch(cmds: list[list[str]], envs: list[dict], cwd: Path) -> list[tuple[int, str]]:
    """Start all processes at once, wait for all (killing every one on timeout); [(rc, output)]."""
    logs = [open(cwd / f"proc{i}.log", "w+") for i in range(len(cmds))]
    procs = [subprocess.Popen(c, env=e, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
             for c, e, f in zip(cmds, envs, logs, strict=True)]
    try:
        for p in procs:
            p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        for p in procs:
            p.kill()
            p.wait()
        tails = [f"--- process {i}\n{(cwd / f'proc{i}.log').read_text()[-3000:]}" for i in range(len(procs))]
        raise AssertionError("multi-process run timed out:\n" + "\n".join(tails)) from e
    out = []
    for p, f in zip(procs, logs, strict=True):
        f.seek(0)
        out.append((p.returncode, f.read()))
        f.close()
    return out


def test_two_processes_match_one_process(tmp_path):
    port = free_port()
    me = [sys.executable, __file__]
    cmds = [me + [str(tmp_path / "multi"), str(i), "2", str(port), str(STEPS)] for i in range(2)]
    cmds.append(me + [str(tmp_path / "single"), "0", "1", "0", str(STEPS)])
    res = launch(cmds, [_env(1), _env(1), _env(2)], tmp_path)
    for i, (rc, log) in enumerate(res):
        assert rc == 0, f"process {i} failed:\n{log[-4000:]}"
    multi = [json.loads((tmp_path / "multi" / f"result{i}.json").read_text()) for i in range(2)]
    single = json.loads((tmp_path / "single" / "result0.json").read_text())
    for r in multi:
        assert r["process_count"] == 2 and r["device_count"] == 2 and r["local_device_count"] == 1
        assert r["cpu_collectives"] == "gloo"
    # each process holds exactly its own column
    assert [r["conv1_kernel_local_columns"] for r in multi] == [[[0, 1]], [[1, 2]]]
    assert single["process_count"] == 1 and single["device_count"] == 2
    ref = np.array(single["losses"])
    for r in multi:
        assert np.max(np.abs(np.array(r["losses"]) - ref) / np.abs(ref)) <= 1e-6, (r["losses"], ref)
    with open(tmp_path / "multi" / "params0.pkl", "rb") as f:
        p_multi = pickle.load(f)
    with open(tmp_path / "single" / "params0.pkl", "rb") as f:
        p_single = pickle.load(f)
    assert p_multi.keys() == p_single.keys()
    worst = max(float(np.max(np.abs(p_multi[k] - p_single[k]))) for k in p_single)
    assert worst <= 1e-6, worst


@pytest.mark.slow
@pytest.mark.parametrize("config,mesh", [("lenet5_digits", (2, 1)), ("alexnet", (1, 2))])
def test_cli_train_two_processes(tmp_path, config, mesh):
    """`alexnet-jax train --coordinator 127.0.0.1:PORT --num-processes 2 --process-id I` end to end, on a
    dataset prepared beforehand (two processes must not prepare the same directory at once)."""
    data_dir = tmp_path / "tfds"
    sets = ["num_steps=6", "log_every_steps=2", "checkpoint_every_steps=3", "eval_every_epochs=100",
            f"mesh_data={mesh[0]}", f"mesh_model={mesh[1]}", f"data_dir={data_dir}", "batch_size=16"]
    if config == "alexnet":   # the two-column net on a CIFAR-shaped dataset made of random pictures
        _fake_cifar(tmp_path / "cifar_tree")
        prep = ["cifar10", "--source", str(tmp_path / "cifar_tree")]
        config = "alexnet_cifar10"
        sets += ["width=0.125", "augment=none"]
    else:
        prep = ["digits"]
    prepare = [sys.executable, "-m", "alexnet_jax.cli", "prepare", *prep, "--data-dir", str(data_dir)]
    p = subprocess.run(prepare, env=_env(1), cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr[-3000:]
    port = free_port()

    def cli(workdir):
        return [sys.executable, "-m", "alexnet_jax.cli", "train", "--config", config, "--workdir",
                str(tmp_path / workdir), "--no-progress", *sum([["--set", s] for s in sets], [])]

    # two processes, one device each; and the same run in one process on 2 forced devices
    cmds = [cli("wd") + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]
            for i in range(2)] + [cli("wd_single")]
    res = launch(cmds, [_env(1), _env(1), _env(2)], tmp_path)
    for i, (rc, log) in enumerate(res):
        assert rc == 0, f"process {i} failed:\n{log[-4000:]}"
    final = json.loads(res[0][1].strip().splitlines()[-1])
    assert final["step"] == 6

    def train_records(workdir):
        records = [json.loads(x) for x in (tmp_path / workdir / "metrics.jsonl").read_text().splitlines()]
        return [r for r in records if r["kind"] == "train"]

    train = train_records("wd")
    assert train[-1]["step"] == 6 and all(np.isfinite(r["loss"]) for r in train), train
    saved = sorted(int(d.name) for d in (tmp_path / "wd" / "checkpoints").iterdir() if d.name.isdigit())
    assert saved == [3, 6], saved
    if mesh[0] == 1:
        # one column per process: both processes must feed the same (whole) batch, so the run is the
        # one-process run exactly (with data > 1 each process reads its own part of the data set instead)
        single = train_records("wd_single")
        assert [r["step"] for r in single] == [r["step"] for r in train]
        np.testing.assert_allclose([r["loss"] for r in train], [r["loss"] for r in single], rtol=1e-5)
        np.testing.assert_allclose(final["top1"], json.loads(res[2][1].strip().splitlines()[-1])["top1"])


def _fake_cifar(root: Path, per_class: int = 10) -> None:
    """A CIFAR-10-like folder tree (train/<class>/nnnn.jpg) of random 32x32 pictures."""
    from PIL import Image

    from alexnet_jax.data.listing import CIFAR10_CLASSES
    rng = np.random.default_rng(0)
    for c in CIFAR10_CLASSES:
        d = root / "train" / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:04d}.jpg")


# ================================================================================================
# Worker
# ================================================================================================
def worker(out: Path, pid: int, nproc: int, port: int, steps: int) -> None:
    import jax
    if nproc > 1:
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc,
                                   process_id=pid, initialization_timeout=120)
    from jax.experimental import multihost_utils

    from alexnet_jax import parallel

    sys.path.insert(0, str(Path(__file__).parent))
    from test_parallel import _flat, _small_config, _synthetic, _trainer

    config = _small_config()
    batches = _synthetic(config)           # every process builds the same fixed batches
    mesh = parallel.make_mesh(1, 2)        # data=1: every process feeds the whole (process-local) batch
    trainer = _trainer(config, mesh)
    state = trainer.init()
    kernel = state.params["conv1"]["kernel"]
    local_cols = [[s.index[0].start or 0, s.index[0].stop or 2] for s in kernel.addressable_shards]
    losses = []
    for i in range(steps):
        state, metrics = trainer.train_step(state, trainer.global_batch(batches[i % len(batches)]))
        losses.append(float(np.asarray(metrics["loss"].addressable_data(0))))
    params = multihost_utils.process_allgather(state.params, tiled=True) if nproc > 1 else state.params
    res = {"losses": losses, "process_count": jax.process_count(), "device_count": jax.device_count(),
           "local_device_count": jax.local_device_count(), "conv1_kernel_local_columns": local_cols,
           "cpu_collectives": jax.config.jax_cpu_collectives_implementation}
    out.mkdir(parents=True, exist_ok=True)
    if pid == 0:
        with open(out / "params0.pkl", "wb") as f:
            pickle.dump(_flat(params), f)
    (out / f"result{pid}.json").write_text(json.dumps(res))
    if nproc > 1:
        multihost_utils.sync_global_devices("done")


if __name__ == "__main__":
    worker(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
