"""A training workdir is bound to the config it was created with.

The first run writes `<workdir>/config.json`; it is never rewritten. A later run (a resume, or a
run that extends it) is compared field by field with it:

* a difference in anything that changes the model, the data or the optimisation is refused
  (`UserError` listing every differing field): those checkpoints belong to another run;
* fields that only extend or observe the run are allowed (`EXTENDING`: the step count and the
  last phase's length, logging / evaluation / checkpoint cadence, evaluation sizes, the mesh,
  the kernel implementation, the extrapolation table);
* every run start appends one line to `<workdir>/config_history.jsonl` (time, the step it
  starts from, the allowed changes as `{field: [recorded, now]}`), so the record says which
  config produced which steps.

Fewer steps than the latest checkpoint are refused too (the run would silently report a state
trained past its config).
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

from msa_jax.model.config import RUNTIME_FIELDS
from msa_jax.validation import UserError, check_output_dir

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"

# Fields that may differ from the recorded config: these flattened names and everything under
# them (the MSA runtime part: remat, kernel_impl); plus the last phase's
# `optim.phases[i].steps`, which absorbs a change of train.steps.
EXTENDING = ("train.steps", "train.log_every", "train.eval_every", "train.eval_batches",
             "train.checkpoint_every", "train.keep_checkpoints", "mesh", "rules",
             *(f"msa.{name}" for name in RUNTIME_FIELDS),
             "evals", "extrapolation")  # extrapolation: what evals was


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{"a.b[0].c": leaf} of nested dicts and lists (JSON values)."""
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out or {prefix: {}}
  if isinstance(tree, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in tree):
    out = {}
    for i, value in enumerate(tree):
      out.update(flatten(value, f"{prefix}[{i}]"))
    return out or {prefix: []}
  return {prefix: list(tree) if isinstance(tree, tuple) else tree}


def config_record(config) -> dict:
  """The config as its JSON record (what config.json holds)."""
  return json.loads(config.to_json_best_effort())


def _last_phase_name(record: dict) -> str | None:
  phases = record.get("optim", {}).get("phases")
  return f"optim.phases[{len(phases) - 1}].steps" if phases else None


def _extending(name: str, last_phase: str | None) -> bool:
  if last_phase is not None and name == last_phase:
    return True
  return any(name == p or name.startswith((p + ".", p + "[")) for p in EXTENDING)


def config_diff(recorded: dict, current: dict) -> tuple[dict, dict]:
  """({field: (recorded, now)} that change the run, {field: (recorded, now)} that extend it)."""
  a, b = flatten(recorded), flatten(current)
  last = _last_phase_name(recorded)
  if last != _last_phase_name(current):
    last = None  # a different number of phases is a different optimisation
  refused, allowed = {}, {}
  for name in sorted(set(a) | set(b)):
    old, new = a.get(name, "<absent>"), b.get(name, "<absent>")
    if old != new:
      (allowed if _extending(name, last) else refused)[name] = (old, new)
  return refused, allowed


def _show(value: Any) -> str:
  text = json.dumps(value)
  return text if len(text) <= 40 else text[:37] + "..."


def bind(config, workdir: str | os.PathLike, latest_step: int | None = None,
         write: bool = True) -> dict:
  """Checks `config` against the workdir's record (creating it on the first run) and appends
  the run to the history. Returns the allowed changes ({field: (recorded, now)}).

  Args:
    config: the run's ConfigDict.
    workdir: the run directory.
    latest_step: the step of the workdir's latest checkpoint (None: none yet).
    write: write config.json / the history (process 0 of a multi-process run).

  Raises:
    UserError: the workdir is a file, or was made by a run with a different model, data or
      optimisation, or has trained past `train.steps`.
  """
  workdir = check_output_dir(workdir)
  path = workdir / CONFIG_FILE
  current = config_record(config)
  allowed = {}
  if path.is_file():
    try:
      recorded = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise UserError(f"{path} is not valid JSON ({e}); it is this workdir's record of its "
                      "config: restore it or use another --workdir") from None
    refused, allowed = config_diff(recorded, current)
    if refused:
      fields = "; ".join(f"{k}: {_show(o)} -> {_show(n)}" for k, (o, n) in refused.items())
      raise UserError(f"--workdir={workdir} holds a run of another config ({len(refused)} "
                      f"field(s) change the model, data or optimisation: {fields}); use a new "
                      "--workdir, or rerun with the recorded config (see its config.json)")
  steps = int(config.train.steps)
  if latest_step is not None and latest_step > steps:
    raise UserError(f"train.steps={steps} but --workdir={workdir} has a checkpoint at step "
                    f"{latest_step}; give train.steps >= {latest_step}")
  if write:
    workdir.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
      tmp = path.with_suffix(".json.tmp")
      tmp.write_text(json.dumps(current, indent=2))
      tmp.replace(path)
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "start_step": latest_step or 0,
             "changes": {k: [o, n] for k, (o, n) in allowed.items()}}
    history = workdir / HISTORY_FILE
    torn = history.is_file() and not history.read_bytes().endswith(b"\n")  # killed mid-write
    with history.open("a") as f:
      f.write(("\n" if torn and history.stat().st_size else "") + json.dumps(entry) + "\n")
  return allowed


def latest_checkpoint(workdir: str | os.PathLike) -> int | None:
  """The step of the workdir's latest finished checkpoint (orbax names it by its step; an
  unfinished save has a suffix), without starting a checkpoint manager."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return None
  steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
  return max(steps) if steps else None
