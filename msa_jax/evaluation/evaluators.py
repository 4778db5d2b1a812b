"""Evaluations declared in a training config (`config.evals`, as big_vision's), by name.

  c.evals = ml_collections.ConfigDict(dict(
      extrapolation=dict(multipliers=(1, 10, 100, 700), questions=128)))

Each entry names an evaluator of `EVALUATORS` and holds its settings; the training loop runs
every declared evaluation after training, on the trained parameters. An evaluator applies only
to models of the tasks that list it (`msa_jax.tasks`: `Task.evaluators`); `check_evals`
refuses others before anything is loaded. The evaluators run by their own commands
("retrieval": `python -m msa_jax.evaluate`, "niah": `python -m msa_jax.niah`) are not run by
the loop.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections

from msa_jax import tasks, validation
from msa_jax.checkpoint.hf import dtype_from_name
from msa_jax.evaluation import extrapolation


def check_extrapolation(settings: ml_collections.ConfigDict) -> None:
  """`evals.extrapolation`: questions >= 1 and memory multipliers >= 1."""
  validation.check_at_least("evals.extrapolation.questions", settings.questions, 1)
  for m in settings.multipliers:
    validation.check_at_least("evals.extrapolation.multipliers[]", m, 1)


def run_extrapolation(config: ml_collections.ConfigDict, model_cfg, msa, params, tok,
                      workdir: Path) -> list[dict[str, Any]] | None:
  """The synthetic task's train-short/infer-long table (`config.evals.extrapolation`), printed
  and written to `<workdir>/extrapolation.json`. Runs on one process only."""
  if jax.process_count() > 1:
    print("[extrapolation] skipped: run it on one process", flush=True)
    return None
  d, e = config.data, config.evals.extrapolation
  rows = extrapolation.extrapolation_table(
      model_cfg, msa, params, tok, docs_per_sample=d.docs_per_sample,
      doc_length=d.doc_length, facts_per_doc=d.facts_per_doc, key_length=d.key_length,
      id_digits=d.id_digits, fact_span=d.get("fact_span"), seed=d.seed,
      first_doc=d.num_docs + d.eval_docs, multipliers=tuple(e.multipliers),
      questions=e.questions, global_positions=d.get("rope", "document") == "global",
      include_value=d.include_value, include_identifier=d.get("include_identifier", True),
      positional_keys=d.get("positional_keys", False),
      id_after_fact=d.get("id_after_fact", False), dtype=dtype_from_name(config.dtype))
  rope = d.get("rope", "document")
  print(extrapolation.format_table(
      rows, f"Train short, infer long ({rope} RoPE; trained with "
      f"{d.docs_per_sample} documents = {d.docs_per_sample * d.doc_length} memory tokens):"),
      flush=True)
  out = [dataclasses.asdict(r) for r in rows]
  (workdir / "extrapolation.json").write_text(json.dumps(
      dict(rope=rope, top_k=msa.arch.top_k, rows=out), indent=2))
  return out


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """`check(settings)` before training; `run(config, model_cfg, msa, params, tokenizer,
  workdir)` after it."""

  check: Any
  run: Any


EVALUATORS = {"extrapolation": Evaluator(check_extrapolation, run_extrapolation)}


def check_evals(config: ml_collections.ConfigDict) -> None:
  """Every `config.evals` entry names an evaluator that the training task lists, with valid
  settings.

  Raises:
    UserError: an unknown evaluator, one the task does not list, or a bad setting.
  """
  evals = config.get("evals") or {}
  task = tasks.get(config.data.kind)
  for name in evals.keys():
    if name not in EVALUATORS:
      raise validation.UserError(f"evals.{name}: no such evaluator after training"
                                 + validation.did_you_mean(name, EVALUATORS))
    if name not in task.evaluators:
      raise validation.UserError(f"evals.{name} does not apply to data.kind={task.name!r} "
                                 f"(its evaluators: {list(task.evaluators)})")
    EVALUATORS[name].check(evals[name])


def run_evals(config: ml_collections.ConfigDict, model_cfg, msa, params, tok,
              workdir: Path) -> dict[str, Any]:
  """Runs every `config.evals` entry on the trained parameters; {name: its result}."""
  evals = config.get("evals") or {}
  return {name: EVALUATORS[name].run(config, model_cfg, msa, params, tok, workdir)
          for name in evals.keys()}
