"""Training metrics: a JSON-lines file and TensorBoard summaries in the workdir, plus log lines.

Only process 0 writes (multi-host runs log once). Values are pulled to the host as Python
floats; `write` is called at the logging interval, not every step, so this is not on the hot
path.

Resumption: a run killed after its last checkpoint has logged steps that the rerun does again.
The loop calls `truncate(step)` with the step it starts from, so `metrics.jsonl` keeps one row
per (split, step): the rows of the run that the checkpoints continue. (TensorBoard's event files
are append-only; there the redone steps appear twice, the later value last.)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np

from msa_jax.train.tensorboard import EventWriter
from msa_jax.validation import format_duration


def _scalar(value) -> float:
  return float(np.asarray(jax.device_get(value)))


class MetricsWriter:
  """Appends `{"step": s, "split": ..., name: value, ...}` lines to `<workdir>/metrics.jsonl`
  and writes the same scalars to TensorBoard under `<workdir>/tensorboard/<split>`."""

  def __init__(self, workdir: str | os.PathLike, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = Path(workdir) / "metrics.jsonl"
    self._tb = {}
    self._tb_root = Path(workdir) / "tensorboard"
    if self.enabled:
      self.path.parent.mkdir(parents=True, exist_ok=True)

  def write(self, step: int, metrics: Mapping[str, object], split: str = "train") -> dict:
    """Writes the scalars and returns them as floats."""
    values = {name: _scalar(v) for name, v in metrics.items()}
    if not self.enabled:
      return values
    with self.path.open("a") as f:
      f.write(json.dumps({"step": int(step), "split": split, "time": time.time(), **values})
              + "\n")
    if split not in self._tb:
      self._tb[split] = EventWriter(self._tb_root / split)
    self._tb[split].scalars(int(step), values)
    return values

  def log(self, step: int, metrics: Mapping[str, object], split: str = "train",
          total: int | None = None, eta_s: float | None = None) -> dict:
    """`write` plus one compact line on stdout (`format_line`); the other fields are in
    metrics.jsonl and TensorBoard."""
    values = self.write(step, metrics, split)
    if self.enabled:
      print(format_line(split, step, values, total, eta_s), flush=True)
    return values

  def truncate(self, step: int) -> int:
    """Drops the rows after `step` (and a torn last line) from metrics.jsonl; returns how many.

    Called when a run starts from `step` (0 or a checkpoint), so that rows logged after the last
    checkpoint by an interrupted run do not stay next to the rerun's rows for the same steps.
    """
    if not self.enabled or not self.path.exists():
      return 0
    lines = [line for line in self.path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if (_parse(line) or {}).get("step", step + 1) <= step]
    if len(kept) != len(lines):
      tmp = self.path.with_suffix(".jsonl.tmp")
      tmp.write_text("".join(line + "\n" for line in kept))
      tmp.replace(self.path)
    return len(lines) - len(kept)

  def close(self) -> None:
    for writer in self._tb.values():
      writer.close()
    self._tb.clear()


SHOWN = ("loss", "aux_loss", "recall@1")  # the fields of the printed line


def format_line(split: str, step: int, values: Mapping[str, float], total: int | None = None,
                eta_s: float | None = None) -> str:
  """`[train] step 100 | loss 2.31 | aux_loss 0.52 | recall@1 0.84 | 12.3k tok/s | 3% ETA 4m10s`.

  Only `SHOWN` fields, the throughput and the progress: constant or secondary fields (weights,
  learning rate, grad norm, recall@5/10, ...) stay in metrics.jsonl / TensorBoard.
  """
  parts = [f"[{split}] step {step}"] + [f"{k} {values[k]:.4g}" for k in SHOWN if k in values]
  if "tokens_per_s" in values:
    rate = values["tokens_per_s"]
    parts.append(f"{rate / 1000:.1f}k tok/s" if rate >= 1000 else f"{rate:.0f} tok/s")
  if total:
    parts.append(f"{100 * step // total}%" + (f" ETA {format_duration(eta_s)}"
                                              if eta_s is not None else ""))
  return " | ".join(parts)


def _parse(line: str) -> dict | None:
  try:
    return json.loads(line)
  except json.JSONDecodeError:
    return None


def read_metrics(workdir: str | os.PathLike, split: str | None = None) -> list[dict]:
  """The records of `<workdir>/metrics.jsonl` (optionally one split), in order of step.

  One record per (split, step): should a step appear twice (a run killed after its last
  checkpoint and not resumed by the loop, which truncates), the later record wins. A torn last
  line (a process killed mid-write) is skipped.
  """
  path = Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  records = {}
  for i, line in enumerate(lines):
    record = _parse(line)
    if record is None:
      if i == len(lines) - 1:
        continue
      raise ValueError(f"{path}: line {i + 1} is not JSON: {line[:80]!r}")
    if split is None or record["split"] == split:
      records.pop((record["split"], record["step"]), None)
      records[(record["split"], record["step"])] = record
  return sorted(records.values(), key=lambda r: r["step"])
