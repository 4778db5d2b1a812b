"""`train_and_evaluate(config, workdir)`: the training loop behind `python -m msa_jax.train`.

The workdir is the unit of resumption: it holds `config.json` (the config it was created with;
a rerun with another model, data or optimisation is refused, see `msa_jax.train.workdir`),
`config_history.jsonl` (one line per run start), `checkpoints/` (train state and data-iterator
position) and `metrics.jsonl` + `tensorboard/` (every metric; stdout gets a compact line and
phase lines while loading and compiling). Rerunning the same command continues from the latest
checkpoint and reproduces the uninterrupted run's losses, also after the process was killed
(SIGKILL) at any point: an unfinished checkpoint write is ignored and deleted, and
`metrics.jsonl` rows logged after the checkpoint it resumes from are dropped, as the rerun logs
those steps again.

Multi-process (`launch/local.sh`, `launch/slurm.sbatch`): every process runs this function; each
loads only its rows of the global batch (see `msa_jax.train.data`), process 0 writes the metrics.

Data: `data.kind` names the task (`msa_jax.tasks`: synthetic, beir, nq320k), which provides the
tokenizer, the train iterator and the eval batches (held out: for the synthetic task other
documents and keys). After training, the evaluations the config declares in `evals` run
(`msa_jax.evaluation.evaluators`, e.g. the synthetic task's extrapolation table).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from msa_jax import validation
from msa_jax.evaluation import evaluators
from msa_jax.model import check_batch
from msa_jax.checkpoint import orbax as ckpt_lib
from msa_jax.train import data as data_lib
from msa_jax.runtime import distributed
from msa_jax.train import metrics as metrics_lib
from msa_jax.train import optimizer as optim_lib
from msa_jax.train import router_adapt
from msa_jax.loading import pretrained
from msa_jax.loading.build import build_model, check_model_config
from msa_jax.runtime import sharding as sharding_lib
from msa_jax.train import step as step_lib
from msa_jax.train import workdir as workdir_lib


def _logged_metrics(workdir: Path, step: int) -> dict[str, float]:
  """The metrics.jsonl rows of `step` as the loop returns them (eval keys prefixed `eval_`)."""
  out = {}
  for record in metrics_lib.read_metrics(workdir):
    if record["step"] == step:
      prefix = "" if record["split"] == "train" else f"{record['split']}_"
      out.update({prefix + k: v for k, v in record.items() if k not in ("step", "split", "time")})
  return out


def _phase(message: str) -> float:
  """Prints a phase line (`[train] compiling train step...`) and returns the time."""
  if jax.process_index() == 0:
    print(f"[train] {message}", flush=True)
  return time.perf_counter()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike
                       ) -> dict[str, Any]:
  """Trains (resuming from the workdir's latest checkpoint) and returns the final metrics.

  Raises:
    UserError: a bad config field, or a workdir that is a file or holds another config's run
      (`msa_jax.train.workdir`); checked before anything is loaded.
  """
  if config.get("mode", "") == "router_adapt":  # frozen backbone, cached states, routers only
    check_model_config(config)
    return router_adapt.train(config, validation.check_output_dir(workdir))
  validation.check_train_config(config)
  evaluators.check_evals(config)
  check_model_config(config)  # the model fields, before the data or any weights load
  workdir = validation.check_output_dir(workdir)
  distributed.initialize()
  changes = workdir_lib.bind(config, workdir, workdir_lib.latest_checkpoint(workdir),
                             write=jax.process_index() == 0)
  if changes and jax.process_index() == 0:
    print(f"[train] {workdir}: continuing with " + ", ".join(
        f"{k} {o} -> {n}" for k, (o, n) in changes.items())
          + f" (recorded in {workdir_lib.HISTORY_FILE})", flush=True)
  phases = config.optim.get("phases") or []
  if phases and config.train.steps < sum(int(p["steps"]) for p in phases):
    _phase(f"train.steps={config.train.steps} stops inside the optimiser phases (they cover "
           f"{sum(int(p['steps']) for p in phases)} steps); a rerun with more steps continues")
  _phase(f"loading data ({config.data.kind})...")
  tok, iterator, eval_batches = data_lib.make_data(config)
  _phase("building the model...")
  model_cfg, msa, model = build_model(config, tok.vocab_size)

  opt_cfg = config.optim.to_dict()
  tx = optim_lib.make_optimizer(opt_cfg)
  lr = optim_lib.make_lr_schedule(opt_cfg)
  weights = optim_lib.make_loss_weights(opt_cfg, msa.loss.lm_weight, msa.loss.aux_weight)
  mesh = sharding_lib.make_mesh(config.mesh.to_dict())
  rules = sharding_lib.make_rules(config.get("rules", None))
  shardings = step_lib.state_shardings(model, tx, mesh, rules)
  checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", config.train.checkpoint_every,
                                       config.train.keep_checkpoints)
  rng = jax.random.key(config.seed)
  if checkpointer.latest_step is not None:  # restored into the abstract state: nothing is built
    _phase(f"restoring the checkpoint of step {checkpointer.latest_step}...")
    state, data_state = checkpointer.restore(
        step_lib.abstract_train_state(model, tx, shardings))
    iterator.set_state(data_state)
    print(f"resumed from step {int(state.step)} in {workdir}", flush=True)
  elif config.model.get("checkpoint"):  # a fresh run: pretrained backbone, fresh routers
    _phase(f"loading the backbone {config.model.checkpoint}...")
    _, backbone = pretrained.load_backbone(config.model.checkpoint,
                                           config.model.get("num_layers"))
    params = pretrained.load_params(model, rng, backbone, shardings.params)
    state = step_lib.train_state_from_params(params, tx, shardings)
  else:
    _phase("initialising parameters...")
    state, _ = step_lib.init_train_state(model, tx, rng, mesh, rules)
  accum = opt_cfg.get("grad_accum_steps", 1)
  train_steps = {}  # top_k -> compiled step: optimiser phases may route other top_k than msa's

  def make_train_step(top_k: int):
    phase_msa = msa.replace(top_k=top_k)
    return step_lib.make_train_step(
        model.clone(msa=phase_msa), model_cfg, msa.loss, tx, weights, lr_schedule=lr,
        grad_accum_steps=accum, mesh=mesh, rules=rules, shardings=shardings)
  eval_step = step_lib.make_eval_step(model, model_cfg, msa.loss, weights,
                                      grad_accum_steps=accum, mesh=mesh, rules=rules)
  writer = metrics_lib.MetricsWriter(workdir)
  total = config.train.steps
  step = int(state.step)
  if dropped := writer.truncate(step):
    print(f"dropped {dropped} metrics rows after step {step} (logged before the restart)",
          flush=True)
  tokens_per_batch = None
  last = {}
  window_start, window_steps = time.perf_counter(), 0
  compiled_eval = False
  while step < total:
    batch = next(iterator)
    top_k = optim_lib.phase_top_k(opt_cfg, step // accum, msa.arch.top_k)
    if tokens_per_batch is None:  # first batch of this run: validate it once, host-side
      check_batch(batch, vocab_size=tok.vocab_size,
                  need_route_labels=optim_lib.uses_aux_loss(opt_cfg, msa.loss.aux_weight))
      tokens_per_batch = jax.process_count() * int(  # this process's rows, times P
          np.asarray(batch.doc_lengths).sum() + np.asarray(batch.token_mask).sum())
    if top_k not in train_steps:  # the run's first step, or a phase routing another top_k
      train_steps[top_k] = make_train_step(top_k)
      window_start = _phase("compiling the train step" + (
          f" (top_k {top_k} from step {step + 1})" if top_k != msa.arch.top_k or len(train_steps) > 1
          else "") + "...")
      state, metrics = train_steps[top_k](state, sharding_lib.shard_batch(batch, mesh))
      _phase(f"compiled in {time.perf_counter() - window_start:.1f}s; training steps "
             f"{step + 1}..{total}")
      window_steps = -1  # rates and ETA leave out the compiling step, unless it is alone
    else:
      state, metrics = train_steps[top_k](state, sharding_lib.shard_batch(batch, mesh))
    step += 1
    window_steps += 1
    if window_steps == 0 and step % config.train.log_every and step != total:
      window_start = time.perf_counter()  # the compiling step is not logged: start after it
    if step % config.train.log_every == 0 or step == total:
      metrics = jax.device_get(metrics)  # waits for the step, so the timing is real
      elapsed = max(time.perf_counter() - window_start, 1e-9)
      steps = max(window_steps, 1)
      metrics = dict(metrics, tokens_per_s=tokens_per_batch * steps / elapsed)
      last = writer.log(step, metrics, total=total,
                        eta_s=(total - step) * elapsed / steps if window_steps else None)
      window_start, window_steps = time.perf_counter(), 0
    if eval_batches and (step % config.train.eval_every == 0 or step == total):
      if not compiled_eval:
        _phase("compiling the eval step...")
        compiled_eval = True
      results = [eval_step(state.params, sharding_lib.shard_batch(b, mesh), step)
                 for b in eval_batches]
      mean = {k: float(np.mean([float(r[k]) for r in results])) for k in results[0]}
      last.update({f"eval_{k}": v for k, v in writer.log(step, mean, "eval").items()})
      window_start, window_steps = time.perf_counter(), 0
    if checkpointer.save(step, state, iterator.get_state(), force=step == total):
      window_start, window_steps = time.perf_counter(), 0
  checkpointer.close()
  writer.close()
  if not last:  # nothing left to train (finished before, perhaps killed before this file)
    last = _logged_metrics(workdir, total)
  if jax.process_index() == 0:
    (workdir / "final_metrics.json").write_text(json.dumps(last, indent=2))
  evaluators.run_evals(config, model_cfg, msa, state.params, tok, workdir)
  return last

