"""Metrics land in metrics.jsonl and TensorBoard event files in the workdir."""

import jax.numpy as jnp

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
  assert events and events[0].stat().st_size > 0


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
