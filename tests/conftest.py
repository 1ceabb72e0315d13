"""Shared pytest setup, fixtures and helpers.

* Tests marked `slow` run only when selected with `-m slow` (or any -m naming slow).
* Implicit rank promotion is an error in every test (jax_numpy_rank_promotion="raise"): broadcasting a
  lower-rank array must be written out.
* `digits_run`: one finished 4-step LeNet-5 run on the bundled digits per test session.
* `tfds_dir`: the bundled `digits` dataset prepared once per test module into a temporary TFDS folder
  (in this process, workers=0: a pool of fresh interpreters costs seconds and writes the same records,
  tests/test_data.py::test_prepare_process_pool_same_records);
  `fast_config`, `train_in_process`, `metrics_records`, `read_events` and `damage_checkpoint` train on it
  in-process and read back what a run wrote (test modules import them: `from conftest import ...`).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import pytest

from alexnet_jax.config import Config

# a 10-step run on digits saving every 5 steps, no evaluation before the final one
FAST = dict(num_steps=10, checkpoint_every_steps=5, eval_every_epochs=100, log_every_steps=5, batch_size=16,
            keep_checkpoints=10)

jax.config.update("jax_numpy_rank_promotion", "raise")


# The default suite's longest tests (5-15 s each on 2 quiet cores), longest first; a group shares a module
# fixture and stays together.
LONG_TESTS = (
    ("test_golden.py::test_golden_run_is_bitwise_the_recorded_one",),
    ("test_parallel.py::test_one_column_models_data_parallel_2x2",),
    ("test_parallel.py::test_meshes_train_identically_8_steps",),
    ("test_compile.py::test_two_column_exchanges_only_where_the_paper_does",
     "test_compile.py::test_memory_flops_and_roofline_by_hand"),
    ("test_train.py::test_train_resume_after_sigkill_is_bitwise",),
    ("test_parallel.py::test_caffe_lrn_on_the_column_split",),
    ("test_alexnet.py::test_conv_relu_lrn_pool_gradients_match_float64",),
    ("test_parallel.py::test_checkpoints_move_between_meshes",),
    ("test_bench.py::test_cifar_step_peer_same_protocol",),
    ("test_bench.py::test_lenet_epoch_peer_same_protocol",),
    ("test_multihost.py::test_two_processes_match_one_process",),
    ("test_cli.py::test_force_host_devices_flag_reaches_xla",),
)


def pytest_collection_modifyitems(config, items):
    items[:] = _long_tests_spread_over_the_first_quarter(items)
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow test: run with `pytest -m slow`")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _long_tests_spread_over_the_first_quarter(items: list) -> list:
    """`items` with the LONG_TESTS spread evenly over the first quarter of the run, the rest in their order.
    pytest-xdist's `load` scheduling hands the workers contiguous first chunks that together hold the first
    quarter of the tests, then the rest in small chunks as they finish: each worker starts with its share of
    the long tests, and the run does not end with one worker on a long test while the others are idle."""
    def name(item) -> str:
        return f"{Path(str(item.fspath)).name}::{getattr(item, 'originalname', item.name)}"

    units, taken = [], set()
    for group in LONG_TESTS:
        unit = [item for want in group for item in items if name(item) == want]
        if unit:
            units.append(unit)
            taken.update(id(item) for item in unit)
    rest = iter([item for item in items if id(item) not in taken])
    stride = max(1, len(items) // 4 // max(1, len(units)))
    out = []
    for unit in units:
        out += unit
        out += [item for _, item in zip(range(stride - len(unit)), rest)]
    return out + list(rest)


@pytest.fixture
def x64():
    """float64 JAX for the duration of one test (float64 references)."""
    import jax

    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", prev)


@pytest.fixture
def ctrl_c_in_evaluations(monkeypatch):
    """Trainer.evaluate with a SIGINT sent to this process as it hands the first batch over, in the first
    evaluation of each step (a step evaluated again runs undisturbed).  Yields the (step, batch index) pairs
    that reached the model."""
    import os
    import signal

    from alexnet_jax.trainer import Trainer

    real, cut, seen = Trainer.evaluate, set(), []

    def evaluate(self, state, batches, ten_crop=None):
        step = int(state.step)

        def batches_with_ctrl_c():
            for i, b in enumerate(batches):
                seen.append((step, i))
                if i == 0 and step not in cut:
                    cut.add(step)
                    os.kill(os.getpid(), signal.SIGINT)
                yield b

        return real(self, state, batches_with_ctrl_c(), ten_crop)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    yield seen


DIGITS_RUN = dict(num_steps=4, checkpoint_every_steps=2, eval_every_epochs=100, log_every_steps=2, batch_size=16,
                  keep_checkpoints=10)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A finished 4-step LeNet-5 run on the bundled digits (checkpoints 2 and 4): `<root>/wd`, its TFDS folder
    `<root>/tfds`.  Trained once per test session, shared by the xdist workers through a file lock; tests
    that change it work on a copy."""
    import fcntl
    import os

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "digits_run"
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (root / "ready").exists():
                from alexnet_jax.data import prepare
                from alexnet_jax.run import train_and_evaluate

                prepare("digits", None, str(root / "tfds"), workers=0)
                train_and_evaluate(Config(**DIGITS_RUN, data_dir=str(root / "tfds")), str(root / "wd"),
                                   progress=False)
                (root / "ready").touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return root


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    from alexnet_jax.data import prepare
    prepare("digits", None, str(d), workers=0)
    return d


def fast_config(tfds_dir, **kw) -> Config:
    return Config(**dict(FAST, data_dir=str(tfds_dir), **kw))


def train_in_process(config, workdir, *, extend: bool = False):
    from alexnet_jax.run import train_and_evaluate
    return train_and_evaluate(config, str(workdir), progress=False, extend=extend)


def read_events(tb_dir) -> list:
    """Every Event in a TensorBoard folder, read with tensorboardX's own protobuf and crc32c (an independent
    reader of what alexnet_jax.workdir writes)."""
    import struct

    from tensorboardX.crc32c import crc32c
    from tensorboardX.proto.event_pb2 import Event

    def masked(b):
        c = crc32c(b)
        return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    events = []
    for f in sorted(Path(tb_dir).glob("events.out.tfevents*")):
        data = f.read_bytes()
        i = 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            assert struct.unpack("<I", data[i + 8:i + 12])[0] == masked(data[i:i + 8]), f
            rec = data[i + 12:i + 12 + n]
            assert struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] == masked(rec), f
            events.append(Event.FromString(rec))
            i += 16 + n
        assert i == len(data), f"{f}: trailing bytes"
    return events


def metrics_records(workdir: Path) -> list[dict]:
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def damage_checkpoint(step_dir: Path) -> None:
    """Truncate the two largest data files of a checkpoint step (as a crash of the disk would)."""
    files = sorted((f for f in (step_dir / "state").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    for f in files[-2:]:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
