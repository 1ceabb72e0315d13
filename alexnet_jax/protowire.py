"""The protocol-buffer wire format, read and written without a protobuf library (and without schemas).

One reader for every binary protobuf the project meets: TensorBoard's Event records (workdir.py writes and
cuts them back), Caffe's NetParameter and BlobProto (zoo/caffe.py reads .caffemodel and .binaryproto).

A message is a sequence of fields, each a key varint (field number << 3 | wire type) and a payload:

    wire 0  varint            int32/int64/uint32/uint64/bool/enum
    wire 1  8 bytes           fixed64, double
    wire 2  varint length + bytes   string, bytes, embedded message, packed repeated scalars
    wire 5  4 bytes           fixed32, float

Groups (wire 3/4) are not used by any format read here and are refused.  A payload that runs past the end
of its buffer raises `ProtobufError` (a truncated or damaged file), never an IndexError.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from alexnet_jax.errors import AlexnetJaxError

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class ProtobufError(AlexnetJaxError, ValueError):
    """Bytes that are not a well-formed protobuf message (cut short or damaged)."""


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------
def read_varint(b, i: int) -> tuple[int, int]:
    """(value, next offset) of the varint at b[i] (unsigned, up to 64 bits).  Raises IndexError when the
    buffer ends inside it (`fields` turns that into ProtobufError)."""
    out = shift = 0
    while True:
        byte = b[i]
        i += 1
        out |= (byte & 0x7F) << shift
        if byte < 0x80:
            return out, i
        shift += 7
        if shift > 63:
            raise ProtobufError("a varint longer than 10 bytes")


def signed64(v: int) -> int:
    """A varint read as int64 / int32 (two's complement over 64 bits)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def fields(buf, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of every field of the message in buf[start:end], in order.

    value: an int for wire 0; a memoryview of the raw 8 / 4 bytes for wire 1 / 5; a memoryview of the
    payload for wire 2 (an embedded message, a string or a packed array: the caller knows which)."""
    mv = memoryview(buf)
    end = len(mv) if end is None else end
    i = start
    try:
        while i < end:
            key, i = read_varint(mv, i)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise ProtobufError(f"field number 0 at byte {i}")
            if wire == VARINT:
                value, i = read_varint(mv, i)
            elif wire == LENGTH:
                n, i = read_varint(mv, i)
                value, i = mv[i:i + n], i + n
            elif wire in (FIXED64, FIXED32):
                n = 8 if wire == FIXED64 else 4
                value, i = mv[i:i + n], i + n
            else:
                raise ProtobufError(f"wire type {wire} (field {number}) at byte {i}")
            if i > end:
                raise ProtobufError(f"field {number} runs past the end of its message ({i - end} bytes missing)")
            yield number, wire, value
    except IndexError:
        raise ProtobufError("the message ends inside a field (cut short?)") from None


def message(buf) -> dict[int, list]:
    """{field number: [values in order]} of one message (`fields`' values)."""
    out: dict[int, list] = {}
    for number, _, value in fields(buf):
        out.setdefault(number, []).append(value)
    return out


def string(value) -> str:
    return bytes(value).decode("utf-8", "replace")


def packed(values: list, dtype: str) -> np.ndarray:
    """A repeated fixed-width field (`dtype` '<f4', '<f8', ...) as one array, from packed payloads (wire 2)
    and/or single values (wire 1 / 5), in order (parsers must accept both encodings)."""
    size = np.dtype(dtype).itemsize
    if any(len(v) % size for v in values):
        raise ProtobufError(f"a packed {np.dtype(dtype).name} field whose length is not a multiple of {size}")
    parts = [np.frombuffer(v, dtype) for v in values]
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def varints(values: list) -> list[int]:
    """A repeated varint field from packed payloads (wire 2) and/or single values (wire 0), in order."""
    out: list[int] = []
    for v in values:
        if isinstance(v, int):
            out.append(v)
            continue
        i = 0
        try:
            while i < len(v):
                x, i = read_varint(v, i)
                out.append(x)
        except IndexError:
            raise ProtobufError("a packed varint field cut short") from None
    return out


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------
def varint(v: int) -> bytes:
    """The varint encoding of v (negative values as 64-bit two's complement, as protobuf's int64)."""
    out = bytearray()
    v &= (1 << 64) - 1
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def field(number: int, wire: int, payload: bytes) -> bytes:
    """One field: key varint then `payload` as given (already encoded for its wire type)."""
    return varint(number << 3 | wire) + payload


def bytes_field(number: int, data: bytes) -> bytes:
    """A length-delimited field (string, bytes, embedded message, packed array)."""
    return field(number, LENGTH, varint(len(data)) + data)
