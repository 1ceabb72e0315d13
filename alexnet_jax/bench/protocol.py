"""The timing protocol both sides of a comparison follow, recorded with every result (ours: step.py,
lenet.py; torch: torch_twins.py), so that a ratio is only ever taken between the same statistic of the
same kind of measurement.  Imports nothing (torch_twins runs in a light subprocess)."""

from __future__ import annotations

STEP_STATISTIC = "median of the timed steps, each synchronised"
EPOCH_STATISTIC = "best of the timed epochs"


def step_protocol(warmup: int, steps: int) -> dict:
    """Steps: compilation (ours ahead of time; torch.compile inside its first call) and `warmup` untimed
    calls, then `steps` timed calls, each synchronised; the median is the figure."""
    return {"unit": "step", "warmup": max(1, warmup), "timed": steps, "statistic": STEP_STATISTIC,
            "untimed": "compilation and the warm-up steps"}


def epoch_protocol(epochs: int) -> dict:
    """Epochs: compilation and one untimed warm-up epoch, then `epochs` timed epochs; the best is the figure."""
    return {"unit": "epoch", "warmup": 1, "timed": max(1, epochs), "statistic": EPOCH_STATISTIC,
            "untimed": "compilation and the warm-up epoch"}
