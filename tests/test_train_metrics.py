"""Metrics land in metrics.jsonl and TensorBoard event files in the workdir (the event files
parsed with tensorboardX's protobuf classes and CRC-32C)."""

import struct
import time

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX import crc32c as tbx_crc32c
from tensorboardX.proto import event_pb2

from msa_jax.train import tensorboard
from msa_jax.train.metrics import MetricsWriter, read_metrics


def test_jsonl_and_tensorboard(tmp_path):
  writer = MetricsWriter(tmp_path)
  writer.log(10, {"loss": jnp.float32(2.5), "recall@1": 0.25})
  writer.write(10, {"loss": 3.0}, split="eval")
  writer.log(20, {"loss": jnp.float32(1.5), "recall@1": 0.5})
  writer.close()
  train = read_metrics(tmp_path, "train")
  assert [(r["step"], r["loss"], r["recall@1"]) for r in train] == [(10, 2.5, 0.25),
                                                                     (20, 1.5, 0.5)]
  assert [r["loss"] for r in read_metrics(tmp_path, "eval")] == [3.0]
  events = list((tmp_path / "tensorboard" / "train").glob("events.out.tfevents.*"))
  assert len(events) == 1
  parsed = [event_pb2.Event.FromString(r) for r in read_records(events[0].read_bytes())]
  assert parsed[0].file_version == "brain.Event:2"
  assert [(e.step, {v.tag: v.simple_value for v in e.summary.value}) for e in parsed[1:]] == [
      (10, {"loss": 2.5, "recall@1": 0.25}), (20, {"loss": 1.5, "recall@1": 0.5})]
  assert all(abs(e.wall_time - time.time()) < 600 for e in parsed)
  (eval_events,) = (tmp_path / "tensorboard" / "eval").glob("events.out.tfevents.*")
  assert [[(v.tag, v.simple_value) for v in event_pb2.Event.FromString(r).summary.value]
          for r in read_records(eval_events.read_bytes())] == [[], [("loss", 3.0)]]


def read_records(data: bytes) -> list[bytes]:
  """The TFRecords of an event file, each CRC checked with tensorboardX's CRC-32C."""
  def masked(b):
    crc = tbx_crc32c.crc32c(b)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
  out, offset = [], 0
  while offset < len(data):
    header = data[offset:offset + 8]
    (length,), (header_crc,) = struct.unpack("<Q", header), struct.unpack_from("<I", data,
                                                                                 offset + 8)
    body = data[offset + 12:offset + 12 + length]
    (body_crc,) = struct.unpack_from("<I", data, offset + 12 + length)
    assert header_crc == masked(header) and body_crc == masked(body)
    out.append(body)
    offset += 16 + length
  return out


def test_crc32c_and_event_encoding_match_tensorboardx():
  assert tensorboard.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
  rng = np.random.default_rng(0)
  for n in (0, 1, 7, 100, 1000):
    data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    assert tensorboard.crc32c(data) == tbx_crc32c.crc32c(data)
  for step in (0, 1, 127, 128, 300, 2**40):
    want = event_pb2.Event(wall_time=1.5, step=step)
    want.summary.value.add(tag="loss/ü", simple_value=0.1)
    got = tensorboard.event(1.5, step, scalars={"loss/ü": 0.1})
    assert event_pb2.Event.FromString(got) == want
    assert got == want.SerializeToString()
  with pytest.raises(ValueError, match="step=-1 must be >= 0"):
    tensorboard.event(0.0, -1)


def test_other_processes_write_nothing(tmp_path):
  values = MetricsWriter(tmp_path / "w", enabled=False).write(1, {"loss": 1.0})
  assert values == {"loss": 1.0} and not (tmp_path / "w").exists()


def test_truncate_drops_rows_after_the_resumed_step(tmp_path):
  writer = MetricsWriter(tmp_path)
  for step in (2, 4, 6):
    writer.write(step, {"loss": float(step)})
  writer.write(4, {"loss": 0.5}, split="eval")
  with (tmp_path / "metrics.jsonl").open("a") as f:
    f.write('{"step": 7, "split": "tra')  # a process killed mid-write
  assert [r["step"] for r in read_metrics(tmp_path)] == [2, 4, 4, 6]  # the torn line skipped
  assert writer.truncate(4) == 2  # step 6 and the torn line
  assert [(r["split"], r["step"]) for r in read_metrics(tmp_path)] == [
      ("train", 2), ("train", 4), ("eval", 4)]
  assert writer.truncate(4) == 0
  writer.write(4, {"loss": 9.0})  # a step seen twice: the later record wins
  assert [r["loss"] for r in read_metrics(tmp_path, "train")] == [2.0, 9.0]
  writer.close()
