"""TensorBoard event files with scalar summaries, written without TensorFlow, tensorboardX or torch.

tensorboardX imports torch when it is installed (~2 s of CPU in every training process, for
summaries that are a handful of floats); the format needs none of that:

* a file `events.out.tfevents.<time>.<host>.<pid>.<n>` of TFRecords: length (u64 LE), masked
  CRC-32C of the length (u32), the bytes, masked CRC-32C of the bytes;
* each record one `Event` protobuf: wall_time (field 1, double), step (2, varint),
  file_version (3, string; the first record, "brain.Event:2"), summary (5): `Summary` with
  repeated `value` (1) of {tag (1, string), simple_value (2, float)}.

`tests/test_train_metrics.py` parses the files with the protobuf classes tensorboardX ships and
checks every CRC against tensorboardX's own CRC-32C.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)  # Castagnoli, reflected
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
  """One TFRecord framing `data`."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", masked_crc32c(length)) + data
          + struct.pack("<I", masked_crc32c(data)))


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int = 0, *, file_version: str | None = None,
          scalars: Mapping[str, float] | None = None) -> bytes:
  """The serialised `Event` protobuf."""
  if step < 0:
    raise ValueError(f"step={step} must be >= 0")
  out = b"\x09" + struct.pack("<d", wall_time)  # field 1, 64-bit
  if step:
    out += b"\x10" + _varint(step)  # field 2, varint
  if file_version is not None:
    out += _bytes_field(3, file_version.encode())
  if scalars:
    values = b"".join(
        _bytes_field(1, _bytes_field(1, tag.encode()) + b"\x15" + struct.pack("<f", value))
        for tag, value in scalars.items())  # Summary.Value: tag (1), simple_value (2, 32-bit)
    out += _bytes_field(5, values)
  return out


_FILE_NUMBER = itertools.count()


class EventWriter:
  """Appends scalar summaries to a new event file in `logdir` (created if needed)."""

  def __init__(self, logdir: str | os.PathLike):
    directory = Path(logdir)
    directory.mkdir(parents=True, exist_ok=True)
    self.path = directory / (f"events.out.tfevents.{int(time.time()):010d}."
                             f"{socket.gethostname()}.{os.getpid()}.{next(_FILE_NUMBER)}")
    self._file = self.path.open("ab")
    self._file.write(record(event(time.time(), file_version="brain.Event:2")))
    self._file.flush()

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """One event at `step` holding every value (written and flushed at once)."""
    self._file.write(record(event(time.time(), step, scalars=values)))
    self._file.flush()

  def close(self) -> None:
    self._file.close()
