"""Scalars from TensorBoard event files, read incrementally, without TensorFlow or TensorBoard.

diffusion-pipe writes eval losses only there (reference/trainers.md §1.6). The file is a
sequence of TFRecords: u64 length, u32 masked CRC of the length, `length` bytes of an `Event`
protobuf, u32 masked CRC of the data. A record not yet fully written is left for the next read.
Of the protobuf, only what scalars need is decoded:

    Event   { double wall_time = 1; int64 step = 2; Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; TensorProto tensor = 8; }
    TensorProto { float_val = 5 (packed); double_val = 6 (packed) }   # new-style scalars

CRCs are not checked: a torn tail is detected by its length, and a corrupt record only loses
its own scalars.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Scalar:
    tag: str
    step: int
    value: float
    wall_time: float


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


# A field's value: an int for varints, bytes for the rest (fixed-size and length-delimited).
FieldValue = int | bytes


def _as_bytes(value: FieldValue) -> bytes:
    if isinstance(value, int):  # a corrupt record: read as struct.error, like a short one
        raise struct.error("expected a length-delimited or fixed-size field, found a varint")
    return value


def _as_int(value: FieldValue) -> int:
    if isinstance(value, bytes):
        raise struct.error("expected a varint field")
    return value


def _fields(buf: bytes) -> Iterator[tuple[int, int, FieldValue]]:
    """(field number, wire type, value) of a protobuf message; bytes for length-delimited."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        value: FieldValue
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            length, i = _varint(buf, i)
            value, i = buf[i:i + length], i + length
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            return  # groups (3, 4) are not used by event files
        yield field, wire, value


def _tensor_value(buf: bytes) -> float | None:
    for field, _wire, value in _fields(buf):
        if field == 5:  # float_val
            return float(struct.unpack("<f", _as_bytes(value)[:4])[0])
        if field == 6:  # double_val
            return float(struct.unpack("<d", _as_bytes(value)[:8])[0])
    return None


def scalars_of_event(data: bytes) -> list[Scalar]:
    wall_time, step, summary = 0.0, 0, None
    for field, _, value in _fields(data):
        if field == 1:
            wall_time = float(struct.unpack("<d", _as_bytes(value))[0])
        elif field == 2:
            step = _as_int(value)
        elif field == 5:
            summary = _as_bytes(value)
    if summary is None:
        return []
    out: list[Scalar] = []
    for field, _, raw in _fields(summary):
        if field != 1:
            continue
        tag, scalar = "", None
        for f, _, v in _fields(_as_bytes(raw)):
            if f == 1:
                tag = _as_bytes(v).decode("utf-8", "replace")
            elif f == 2:
                scalar = float(struct.unpack("<f", _as_bytes(v))[0])
            elif f == 8 and scalar is None:
                scalar = _tensor_value(_as_bytes(v))
        if tag and scalar is not None:
            out.append(Scalar(tag, int(step), float(scalar), wall_time))
    return out


class EventFileReader:
    """Follows one event file; `read()` returns the scalars of records completed since."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[Scalar]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        out: list[Scalar] = []
        i = 0
        while len(data) - i >= 12:
            (length,) = struct.unpack_from("<Q", data, i)
            end = i + 12 + length + 4
            if end > len(data):
                break  # the writer is mid-record: read it next time
            try:
                out += scalars_of_event(data[i + 12:i + 12 + length])
            except (IndexError, struct.error):
                pass  # a corrupt record loses only its own scalars
            i = end
        self.offset += i
        return out
