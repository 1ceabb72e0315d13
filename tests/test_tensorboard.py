"""TensorBoard event files: what alexnet_jax.tensorboard writes reads back with tensorboardX's own protobuf
and crc32c, and purging drops only the steps after a resumed checkpoint."""

from __future__ import annotations

import pytest
from conftest import read_events


def test_tensorboard_purge_drops_only_later_steps(tmp_path):
    """purge_events against an independent reading of the TFRecord framing (length, crc, data, crc)."""
    from tensorboardX import SummaryWriter

    from alexnet_jax.tensorboard import purge_events, read_records

    w = SummaryWriter(str(tmp_path))
    for s in range(1, 8):
        w.add_scalar("x", float(s), s)
    w.close()
    (f,) = [p for p in tmp_path.iterdir() if p.name.startswith("events")]
    assert len(read_records(str(f))) == 8                     # file_version event + 7 scalars
    assert purge_events(str(tmp_path), 4) == 3
    assert [(e.step, e.summary.value[0].simple_value) for e in read_events(str(tmp_path)) if e.summary.value] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]


def test_our_event_files_read_back_with_tensorboardx(tmp_path):
    from alexnet_jax.tensorboard import EventWriter

    w = EventWriter(str(tmp_path))
    for step, v in ((0, 2.5), (7, -1.25), (2**40, 3e-8)):
        w.add_scalar("train/loss", v, step)
    w.close()
    events = read_events(tmp_path)
    assert events[0].file_version == "brain.Event:2"
    got = [(e.step, e.summary.value[0].tag, e.summary.value[0].simple_value) for e in events[1:]]
    assert got == [(0, "train/loss", 2.5), (7, "train/loss", -1.25), (2**40, "train/loss", pytest.approx(3e-8))]
