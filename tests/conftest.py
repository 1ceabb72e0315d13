"""Shared pytest setup.

* Tests marked `slow` run only when selected with `-m slow` (or any -m naming slow).
* Implicit rank promotion is an error in every test (jax_numpy_rank_promotion="raise"): broadcasting a
  lower-rank array must be written out.
"""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_collection_modifyitems(config, items):
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow test: run with `pytest -m slow`")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


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
                from alexnet_jax.config import Config
                from alexnet_jax.data import prepare
                from alexnet_jax.run import train_and_evaluate

                prepare("digits", None, str(root / "tfds"))
                train_and_evaluate(Config(**DIGITS_RUN, data_dir=str(root / "tfds")), str(root / "wd"),
                                   progress=False)
                (root / "ready").touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return root
