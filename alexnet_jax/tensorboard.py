"""TensorBoard event files of a run, written and cut back to a step by the project itself (scalars
only: the record TensorBoard reads; no TensorFlow, no tensorboardX).

TFRecord framing: length (uint64), masked crc32c of the length, data, masked crc32c of the data.
Event protobuf: wall_time = 1 (double), step = 2 (int64), file_version = 3 (string), summary = 5;
Summary.value = 1; Value.tag = 1 (string), Value.simple_value = 2 (float).
"""

from __future__ import annotations

import os
import socket
import struct
import time

from alexnet_jax import protowire


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: str) -> list[bytes]:
    """The records of a TFRecord file, up to the first incomplete or damaged one."""
    out = []
    with open(path, "rb") as f:
        while True:
            head = f.read(12)
            if len(head) < 12:
                break
            (n,) = struct.unpack("<Q", head[:8])
            if struct.unpack("<I", head[8:])[0] != _masked_crc(head[:8]):
                break
            data, crc = f.read(n), f.read(4)
            if len(data) < n or len(crc) < 4 or struct.unpack("<I", crc)[0] != _masked_crc(data):
                break
            out.append(data)
    return out


def _frame(data: bytes) -> bytes:
    head = struct.pack("<Q", len(data))
    return head + struct.pack("<I", _masked_crc(head)) + data + struct.pack("<I", _masked_crc(data))


def scalar_event(step: int, tag: str, value: float, wall_time: float) -> bytes:
    """An Event holding one scalar summary value."""
    pw = protowire
    val = pw.bytes_field(1, tag.encode()) + pw.field(2, pw.FIXED32, struct.pack("<f", value))
    return (pw.field(1, pw.FIXED64, struct.pack("<d", wall_time)) + pw.field(2, pw.VARINT, pw.varint(step))
            + pw.bytes_field(5, pw.bytes_field(1, val)))


def _event_step(record: bytes) -> int:
    """The step field of an Event (0 when absent: the file_version event)."""
    for number, wire, value in protowire.fields(record):
        if number == 2 and wire == protowire.VARINT:
            return protowire.signed64(value)
    return 0


def purge_events(tb_dir: str, step: int) -> int:
    """Cut every event file in `tb_dir` back to events with step <= `step` (each file rewritten atomically);
    returns how many events were dropped."""
    dropped = 0
    for name in sorted(os.listdir(tb_dir)) if os.path.isdir(tb_dir) else []:
        if not name.startswith("events.out.tfevents"):
            continue
        path = os.path.join(tb_dir, name)
        records = read_records(path)
        keep = [r for r in records if _event_step(r) <= step]
        dropped += len(records) - len(keep)
        if len(keep) != len(records) or os.path.getsize(path) != sum(len(r) + 16 for r in records):
            with open(path + ".tmp", "wb") as f:
                f.write(b"".join(_frame(r) for r in keep))
            os.replace(path + ".tmp", path)
    return dropped


class EventWriter:
    """Appends scalar events to one TensorBoard event file (one per start of a run)."""

    def __init__(self, tb_dir: str):
        os.makedirs(tb_dir, exist_ok=True)
        self.path = os.path.join(tb_dir, f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}")
        version = (protowire.field(1, protowire.FIXED64, struct.pack("<d", time.time()))
                   + protowire.bytes_field(3, b"brain.Event:2"))
        self.f = open(self.path, "ab")
        self.f.write(_frame(version))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.f.write(_frame(scalar_event(step, tag, float(value), time.time())))

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()
