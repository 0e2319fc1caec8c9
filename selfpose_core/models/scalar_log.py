"""Training scalars in TensorBoard's event-file format (no tensorboard/tensorflow needed to write or read them).

An event file is a TFRecord stream (length, masked CRC-32C, payload, masked CRC-32C) of ``Event`` protocol buffers;
we encode the few fields TensorBoard reads for scalars by hand: wall_time (1, double), step (2, int64),
file_version (3, string), summary (5) -> value (1) -> tag (1, string), simple_value (2, float).
A plain ``scalars.csv`` is written next to it for people and scripts.
"""
from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

from selfpose_core.errors import SelfposeError


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, *, file_version: str | None = None,
           scalars: dict[str, float] | None = None) -> bytes:
    msg = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        msg += _field_bytes(3, file_version.encode())
    if scalars:
        values = b"".join(_field_bytes(1, _field_bytes(1, tag.encode()) + b"\x15" + struct.pack("<f", float(v)))
                          for tag, v in scalars.items())
        msg += _field_bytes(5, values)
    return msg


def _record(payload: bytes) -> bytes:
    header = struct.pack("<Q", len(payload))
    return header + struct.pack("<I", _masked_crc(header)) + payload + struct.pack("<I", _masked_crc(payload))


class ScalarLog:
    """Append scalars to ``log_dir/events.out.tfevents.<time>.<host>`` and ``log_dir/scalars.csv``."""

    def __init__(self, log_dir: str | Path) -> None:
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = self.dir / f"events.out.tfevents.{int(now)}.{socket.gethostname()}"
        self._file = open(self.path, "ab")
        self._file.write(_record(_event(now, 0, file_version="brain.Event:2")))
        self._csv = open(self.dir / "scalars.csv", "a", encoding="utf-8")
        if self._csv.tell() == 0:
            self._csv.write("step,tag,value\n")

    def add(self, step: int, scalars: dict[str, float]) -> None:
        """Log ``scalars`` (tag -> value) at ``step``."""
        self._file.write(_record(_event(time.time(), int(step), scalars=scalars)))
        self._csv.writelines(f"{int(step)},{tag},{float(v):.6g}\n" for tag, v in scalars.items())

    def flush(self) -> None:
        self._file.flush()
        self._csv.flush()

    def close(self) -> None:
        self._file.close()
        self._csv.close()


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        shift += 7
        if not b & 0x80:
            return value, i


def _fields(buf: bytes) -> list[tuple[int, int, object]]:
    out, i = [], 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 2:
            n, i = _read_varint(buf, i)
            value, i = buf[i:i + n], i + n
        else:
            raise SelfposeError(f"unsupported protobuf wire type {wire}")
        out.append((number, wire, value))
    return out


def read_scalars(path: str | Path) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in an event file, checking the record CRCs."""
    data = Path(path).read_bytes()
    out, i = [], 0
    while i < len(data):
        (n,) = struct.unpack_from("<Q", data, i)
        if struct.unpack_from("<I", data, i + 8)[0] != _masked_crc(data[i:i + 8]):
            raise SelfposeError(f"{path}: corrupt record header at byte {i}")
        payload = data[i + 12:i + 12 + n]
        if struct.unpack_from("<I", data, i + 12 + n)[0] != _masked_crc(payload):
            raise SelfposeError(f"{path}: corrupt record at byte {i}")
        i += 16 + n
        fields = _fields(payload)
        step = next((v for num, _, v in fields if num == 2), 0)
        for num, _, summary in fields:
            if num != 5:
                continue
            for _, _, value in _fields(summary):
                f = {vn: vv for vn, _, vv in _fields(value)}
                out.append((int(step), f[1].decode(), struct.unpack("<f", f[2])[0]))
    return out
