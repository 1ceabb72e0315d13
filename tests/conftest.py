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
