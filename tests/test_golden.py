"""The golden runs (tests/golden.py) end bitwise where they were recorded: the quick start in the default
suite, the CIFAR two-column net on two devices and LeNet-5 with SDLM as slow tests.  A change meant to
keep results keeps these; a change meant to alter them records them again (`python tests/golden.py record`)
and says why in its commit."""

from __future__ import annotations

import golden
import pytest


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n == "quickstart" else [pytest.mark.slow])
                                  for n in golden.RUNS])
def test_golden_run_is_bitwise_the_recorded_one(name, tmp_path):
    record = golden.load_record()
    if record["environment"] != golden.environment():
        pytest.skip(f"golden runs recorded with {record['environment']}; here {golden.environment()}")
    if (src := golden.missing_source(name)) is not None:
        pytest.skip(f"{src} not found")
    assert golden.differences(name, golden.run(name, tmp_path), record["runs"][name]) == []
