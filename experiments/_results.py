"""Experiments write to runs/ (ignored by git); `--publish NAME` copies a run's curated summary files
to experiments/results/NAME, on purpose, so that a rerun never overwrites committed results by accident."""

from __future__ import annotations

import shutil
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def publish(out: str | Path, name: str, files: list[str]) -> Path:
    """Copy `files` (paths relative to `out`; folders are copied whole) to experiments/results/<name>."""
    out, dest = Path(out), RESULTS / name
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        src = out / f
        if src.is_dir():
            shutil.copytree(src, dest / f, dirs_exist_ok=True)
        elif src.exists():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    return dest
