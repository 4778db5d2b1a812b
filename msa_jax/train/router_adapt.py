"""Router adaptation: a pretrained LM becomes an MSA model whose routers retrieve real text.

Behind `python -m msa_jax.train --config=configs/router_adapt.py --workdir=...` (`config.mode =
"router_adapt"`). The backbone stays frozen; only the router projections (`router_q_proj`,
`router_k_proj`, with a bias when `msa.router_bias`) of the router layers train, with the
routing (aux) loss of `config.msa` (InfoNCE at `msa.temperature`). Steps:

1. Data: the same layout as `python -m msa_jax.evaluate` reads it (`RetrievalTask`: memory
   documents `[m] title / text` cut to `data.doc_tokens`, prompts `head | question_prefix +
   question | answer_marker`). The training split's queries minus `data.eval_holdout` held-out
   ones train; the held-out ones validate. No other split is read.
2. States (`state_cache`): per router layer, the chunk means of every document's router input and
   every training prompt's routing-query tokens, computed once by the frozen backbone and kept
   in `adapt.cache_dir` (fingerprinted to model and data; later runs load them).
3. Initialisation: router kernels from the model's own initialiser (`config.seed`); with
   `adapt.centre_init` the biases start at minus the projected mean state (documents' chunks
   for keys, query tokens for queries), i.e. the router starts on centred states. A pretrained
   LM's states are strongly anisotropic (SmolLM2: mean cosine 0.90 between unrelated documents)
   and cosine routing on raw states collapses.
4. Steps: `adapt.queries_per_step` questions, each with one sampled relevant document,
   `adapt.hard_negatives` BM25-mined near misses (`msa_jax.data.hard_negatives`) and
   `adapt.random_negatives` shared uniform documents; every question scores every candidate of
   the step (in-batch negatives), its other relevant documents masked out. Scores are exactly
   the model's routing (`routing.tile_chunk_scores` math, `doc_scores` over chunks); with mean
   head and query reduces the mean over query tokens is taken before the dot product (equal,
   and T times cheaper). The loss averages over the `msa.aux_layers` router layers.
5. Validation every `train.eval_every` steps: the held-out questions ranked against the whole
   corpus by each router layer and by their sum (nDCG@10, Recall@100, Hit@1), logged to
   `metrics.jsonl` (split "eval").
6. The result is an ordinary checkpoint of the full model (backbone + trained routers) in
   `<workdir>/checkpoints`, which `msa_jax.evaluate` and the inference CLI load as any other.
   A rerun with a finished checkpoint only reports; an unfinished run starts over (the cached
   states make that cheap).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from msa_jax.checkpoint import checkpoint_tokenizer
from msa_jax.checkpoint.hf import dtype_from_name
from msa_jax.data import hard_negatives
from msa_jax.data import retrieval
from msa_jax.evaluation import metrics as metrics_lib
from msa_jax.evaluation import run as run_lib
from msa_jax.memory import routing as bank_routing
from msa_jax.model import routing
from msa_jax.model.config import MSAArch
from msa_jax.model.msa import router_params, with_routers  # the tree layout lives in model/
from msa_jax.checkpoint import orbax as ckpt_lib
from msa_jax.train import metrics as train_metrics
from msa_jax.train import optimizer as optim_lib
from msa_jax.loading import pretrained
from msa_jax.loading.build import build_model
from msa_jax.train import state_cache
from msa_jax.train import step as step_lib
from msa_jax.runtime.cache import user_cache_dir

VALIDATION_METRICS = ("ndcg@10", "recall@100", "hit@1")


def _log(message: str) -> None:
  print(f"[router_adapt] {message}", flush=True)


def make_task(config: ml_collections.ConfigDict, tokenizer, splits) -> retrieval.RetrievalTask:
  """The evaluation's layout (`msa_jax.evaluation.run.make_task`) over the config's data."""
  d = config.data
  data = (retrieval.load_beir(d.path, list(splits)) if d.kind == "beir"
          else retrieval.load_nq320k(d.path))
  spec = retrieval.RetrievalSpec(
      batch_size=1, docs_per_sample=1, doc_tokens=d.doc_tokens, prompt_tokens=d.prompt_tokens,
      max_positives=1, head=d.head, question_prefix=d.question_prefix,
      answer_marker=d.answer_marker, position_offset=config.msa.top_k, seed=d.seed)
  return retrieval.RetrievalTask(data, tokenizer, spec)


# --------------------------------------------------------------------------------------------
# Router parameters and scores
# --------------------------------------------------------------------------------------------


def _project(p: dict, x: jax.Array, eqn: str) -> jax.Array:
  y = jnp.einsum(eqn, x, p["kernel"])
  return y + p["bias"] if "bias" in p else y


def routing_keys(p: dict, chunks: jax.Array, msa: MSAArch) -> jax.Array:
  """Pooled routing keys [..., J, D] of chunk-mean states [..., E] (what the bank stores)."""
  keys = _project(p["router_k_proj"], chunks, "...E,EJD->...JD")
  return routing.l2_normalize(keys) if msa.cosine_routing else keys


def routing_queries(p: dict, x: jax.Array, msa: MSAArch) -> jax.Array:
  """Routing queries [..., H, D] of query-token states [..., E]."""
  rq = _project(p["router_q_proj"], x, "...E,EHD->...HD")
  return routing.l2_normalize(rq) if msa.cosine_routing else rq


def chunk_scores(p: dict, q_states: jax.Array, q_mask: jax.Array, chunks: jax.Array,
                 msa: MSAArch, head_dim: int) -> jax.Array:
  """Routing scores [B, Nc] of B questions (token states [B, T, E], mask [B, T]) against Nc
  chunks (chunk-mean states [Nc, E]): the model's routing math (`tile_chunk_scores`)."""
  rq = routing_queries(p, q_states, msa)
  keys = routing_keys(p, chunks, msa)
  scale = msa.routing_scale(head_dim)
  q = bank_routing.query_operand(rq, q_mask, keys.shape[-2], scale=scale,
                                 head_reduce=msa.head_reduce, query_reduce=msa.query_reduce,
                                 dtype=keys.dtype)
  return bank_routing.tile_chunk_scores(q, keys, scale=scale, head_reduce=msa.head_reduce)


def doc_scores(p: dict, q_states, q_mask, doc_chunks, chunk_mask, msa: MSAArch,
               head_dim: int) -> jax.Array:
  """Document scores [B, N] against N documents' chunk states [N, C, E] (mask [N, C])."""
  n, c, e = doc_chunks.shape
  s = chunk_scores(p, q_states, q_mask, doc_chunks.reshape(n * c, e), msa, head_dim)
  s = s.reshape(-1, n, c)
  mask = jnp.broadcast_to(chunk_mask, s.shape)
  return routing.doc_scores(jnp.where(mask, s, routing.NEG_INF), mask, msa.chunk_reduce)


def infonce(scores: jax.Array, target: jax.Array, exclude: jax.Array, temperature: float
            ) -> jax.Array:
  """Mean over questions of -log softmax(scores / tau)[target], `exclude`d columns (the
  question's other relevant documents) left out of the denominator."""
  logits = jnp.where(exclude, routing.NEG_INF, scores / temperature)
  return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
      logits, target[:, None], -1)[:, 0])


# --------------------------------------------------------------------------------------------
# Batches from the cached states
# --------------------------------------------------------------------------------------------


class StateBatcher:
  """Dense per-step arrays gathered from the cached states (host side).

  Documents: [M, C, E] chunk states (C = the most chunks of any document) and [M, C] masks per
  layer. Questions: their token states padded to T = the longest routing query.
  """

  def __init__(self, docs: state_cache.DocStates, queries: state_cache.QueryStates,
               layer_ids):
    self.layer_ids = tuple(layer_ids)
    m = len(docs.num_chunks)
    self.max_chunks = int(docs.num_chunks.max())
    self.chunk_mask = np.arange(self.max_chunks)[None, :] < docs.num_chunks[:, None]
    rows = np.where(self.chunk_mask, docs.offsets[:-1, None] + np.arange(self.max_chunks), 0)
    self.doc_chunks = {i: np.where(self.chunk_mask[..., None], docs.chunks[i][rows], 0)
                       .astype(np.float32) for i in self.layer_ids}
    self.num_docs = m
    self.q_offsets, self.q_lengths = queries.offsets, queries.lengths
    self.max_query = int(queries.lengths.max())
    self.q_tokens = queries.tokens

  def queries(self, index: np.ndarray) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """({layer: [B, T, E]}, mask [B, T]) of questions `index`."""
    t = self.max_query
    mask = np.arange(t)[None, :] < self.q_lengths[index][:, None]
    rows = np.where(mask, self.q_offsets[index][:, None] + np.arange(t), 0)
    return {i: np.where(mask[..., None], self.q_tokens[i][rows], 0).astype(np.float32)
            for i in self.layer_ids}, mask


# --------------------------------------------------------------------------------------------
# The mode
# --------------------------------------------------------------------------------------------


def _split_queries(config, task: retrieval.RetrievalTask):
  """(training samples, held-out samples) of the training split (seeded holdout)."""
  samples = task.samples(config.data.train_split)
  train_ids, held_ids = retrieval.holdout_split(len(samples), config.data.eval_holdout,
                                                config.data.seed)
  return [samples[i] for i in train_ids], [samples[i] for i in held_ids]


def _validate(p_all: dict, batcher: StateBatcher, held, held_index, msa: MSAArch,
              head_dim: int, task, qrels, batch: int = 64) -> dict[str, float]:
  """Held-out questions ranked against the whole corpus per router layer and summed."""
  per_layer = {i: [] for i in batcher.layer_ids}
  for lo in range(0, len(held_index), batch):
    idx = held_index[lo:lo + batch]
    q_states, q_mask = batcher.queries(idx)
    for i in batcher.layer_ids:
      per_layer[i].append(np.asarray(_doc_scores_jit(msa, head_dim)(
          p_all[i], q_states[i], q_mask, batcher.doc_chunks[i], batcher.chunk_mask)))
  scores = {i: np.concatenate(v) for i, v in per_layer.items()}
  scores["sum"] = np.sum([scores[i] for i in batcher.layer_ids], axis=0)
  out = {}
  qids = [qid for qid, _, _ in held]
  for name, s in scores.items():
    top = np.argsort(-s, axis=1, kind="stable")[:, :100]
    rankings = {q: [task.doc_id_of(int(m)) for m in row] for q, row in zip(qids, top)}
    values = metrics_lib.evaluate(rankings, qrels, VALIDATION_METRICS).mean
    tag = "sum" if name == "sum" else f"layer{name}"
    out.update({f"{k}_{tag}": v for k, v in values.items()})
  return out


_JIT_CACHE: dict = {}


def _doc_scores_jit(msa: MSAArch, head_dim: int):
  key = ("scores", msa, head_dim)
  if key not in _JIT_CACHE:
    _JIT_CACHE[key] = jax.jit(lambda p, q, m, c, cm: doc_scores(p, q, m, c, cm, msa, head_dim))
  return _JIT_CACHE[key]


def _make_step(msa: MSAArch, temperature: float, aux_ids, head_dim: int,
               tx: optax.GradientTransformation):
  def loss_fn(p_all, q_states, q_mask, chunks, chunk_mask, target, exclude):
    losses = [infonce(doc_scores(p_all[i], q_states[i], q_mask, chunks[i], chunk_mask, msa,
                                 head_dim), target, exclude, temperature) for i in aux_ids]
    return jnp.mean(jnp.stack(losses))

  @jax.jit
  def step(p_all, opt_state, q_states, q_mask, chunks, chunk_mask, target, exclude):
    loss, grads = jax.value_and_grad(loss_fn)(p_all, q_states, q_mask, chunks, chunk_mask,
                                              target, exclude)
    updates, opt_state = tx.update(grads, opt_state, p_all)
    return optax.apply_updates(p_all, updates), opt_state, loss

  return step


def _centre(p_all: dict, docs: state_cache.DocStates, queries: state_cache.QueryStates) -> dict:
  """Biases at minus the projected mean states: the router starts on centred states."""
  out = {}
  for i, p in p_all.items():
    mean_k = docs.chunks[i].mean(0)
    mean_q = queries.tokens[i].mean(0)
    out[i] = {
        "router_q_proj": dict(p["router_q_proj"], bias=-jnp.einsum(
            "E,EHD->HD", mean_q, p["router_q_proj"]["kernel"])),
        "router_k_proj": dict(p["router_k_proj"], bias=-jnp.einsum(
            "E,EJD->JD", mean_k, p["router_k_proj"]["kernel"]))}
  return out


def train(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  """Runs the mode (module docstring); returns the final validation metrics."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  a, total = config.adapt, config.train.steps
  checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", every=None,
                                       keep=config.train.keep_checkpoints)
  if checkpointer.latest_step == total and (workdir / "final_metrics.json").is_file():
    checkpointer.close()
    _log(f"{workdir} already holds the finished run (step {total})")
    return json.loads((workdir / "final_metrics.json").read_text())
  start = time.perf_counter()
  if not config.model.get("checkpoint"):
    raise ValueError("mode=router_adapt adapts a pretrained backbone: set model.checkpoint")
  tokenizer = checkpoint_tokenizer(config.model.checkpoint)
  model_cfg, msa, model = build_model(config, tokenizer.vocab_size)
  if not msa.arch.decouple_router:
    raise ValueError("mode=router_adapt trains router projections: msa.decouple_router must be "
                     "True")
  layer_ids = msa.arch.router_layer_ids(model_cfg.num_layers)
  aux_ids = msa.aux_layer_ids(model_cfg.num_layers)
  dtype = dtype_from_name(config.dtype)
  task = make_task(config, tokenizer, [config.data.train_split])
  train_samples, held = _split_queries(config, task)
  _log(f"{task.data.name}: {task.data.num_docs} documents, {len(train_samples)} training and "
       f"{len(held)} held-out questions of split {config.data.train_split!r}")

  tx = optim_lib.make_optimizer(config.optim.to_dict())
  _, backbone = pretrained.load_backbone(config.model.checkpoint, config.model.get("num_layers"))
  state = step_lib.train_state_from_params(
      pretrained.load_params(model, jax.random.key(config.seed), backbone), tx)
  _log(f"backbone {config.model.checkpoint} loaded under fresh routers "
       f"({time.perf_counter() - start:.0f} s)")
  cache_dir = Path(a.cache_dir or user_cache_dir("router_states"))
  t0 = time.perf_counter()
  docs = state_cache.doc_states(
      cache_dir, model_cfg, state.params, layer_ids, msa.arch.chunk_size,
      [task.doc_token_ids(m) for m in range(task.data.num_docs)],
      max_tokens=task.spec.doc_tokens, batch_size=a.encode_batch_size, dtype=dtype)
  samples = train_samples + held
  prompts = run_lib.question_prompts(task, [qid for qid, _, _ in samples])
  queries = state_cache.query_states(
      cache_dir, model_cfg, state.params, layer_ids, prompts.tokens, prompts.token_mask,
      prompts.positions, prompts.query_mask, batch_size=a.encode_batch_size, dtype=dtype)
  cache_s = time.perf_counter() - t0
  _log(f"states: documents {state_cache.describe(docs)}; questions "
       f"{state_cache.describe(queries)} ({cache_s:.0f} s)")

  batcher = StateBatcher(docs, queries, layer_ids)
  n_train = len(train_samples)
  held_index = np.arange(n_train, len(samples))
  qrels = {q: dict(task.data.split(config.data.train_split)[q]) for q, _, _ in held}
  p_all = router_params(state.params, layer_ids)
  if a.centre_init:
    if not msa.arch.router_bias:
      raise ValueError("adapt.centre_init needs msa.router_bias=True (the centring is a bias)")
    p_all = _centre(p_all, docs, queries)
  p_all = jax.tree.map(jnp.asarray, p_all)
  opt = optim_lib.make_optimizer(config.optim.to_dict())
  opt_state = opt.init(p_all)
  step_fn = _make_step(msa.arch, msa.loss.temperature, aux_ids, model_cfg.head_dim, opt)

  negatives = None
  if a.hard_negatives > 0:
    t0 = time.perf_counter()
    mined = hard_negatives.bm25_negatives(
        task.data, config.data.train_split, depth=a.negatives_depth,
        query_ids=[q for q, _, _ in train_samples], stemmer=a.bm25_stemmer or None)
    negatives = [mined[q] for q, _, _ in train_samples]
    _log(f"BM25 hard negatives: top {a.negatives_depth} of {n_train} questions "
         f"({time.perf_counter() - t0:.0f} s)")
  judged = [judged for _, _, judged in train_samples]
  positives = [np.asarray(pos) for _, pos, _ in train_samples]
  rng = np.random.default_rng([config.seed, 23])
  writer = train_metrics.MetricsWriter(workdir)
  writer.truncate(0)
  b, h, r = a.queries_per_step, a.hard_negatives, a.random_negatives
  last, losses = {}, []
  window = train_start = time.perf_counter()
  for step in range(1, total + 1):
    idx = rng.choice(n_train, b, replace=n_train < b)
    target_docs = np.array([rng.choice(positives[k]) for k in idx])
    parts = [target_docs]
    if negatives is not None:
      parts.append(hard_negatives.sample_negatives(
          rng, [negatives[k] for k in idx], h, batcher.num_docs,
          [judged[k] for k in idx]).reshape(-1))
    parts.append(rng.integers(batcher.num_docs, size=r))
    cands = np.concatenate(parts)
    exclude = np.array([[c in judged[k] and c != t for c in cands]
                        for k, t in zip(idx, target_docs)])
    q_states, q_mask = batcher.queries(idx)
    p_all, opt_state, loss = step_fn(
        p_all, opt_state, q_states, q_mask, {i: batcher.doc_chunks[i][cands] for i in layer_ids},
        batcher.chunk_mask[cands], jnp.arange(b), exclude)
    losses.append(loss)
    if step % config.train.log_every == 0 or step == total:
      elapsed = time.perf_counter() - window
      mean_loss = float(np.mean(jax.device_get(losses)))
      eta = (time.perf_counter() - train_start) / step * (total - step)
      last = writer.write(step, dict(aux_loss=mean_loss, steps_per_s=len(losses) / elapsed))
      _log(f"step {step}/{total} aux_loss {mean_loss:.4f} ({len(losses) / elapsed:.1f} "
           f"steps/s, ETA {eta:.0f} s)")
      losses, window = [], time.perf_counter()
    if held and (step % config.train.eval_every == 0 or step == total):
      values = _validate(p_all, batcher, held, held_index, msa.arch, model_cfg.head_dim, task,
                         qrels)
      last.update({f"eval_{k}": v for k, v in writer.write(step, values, "eval").items()})
      _log(f"step {step} held-out: " + ", ".join(
          f"{k} {v:.4f}" for k, v in values.items() if k.startswith("ndcg")))
      window = time.perf_counter()
  t0 = time.perf_counter()
  params = with_routers(state.params, jax.device_get(p_all))
  checkpointer.save(total, state.replace(step=jnp.asarray(total, state.step.dtype),
                                         params=params), force=True)
  checkpointer.close()
  writer.close()
  _log(f"checkpoint written ({time.perf_counter() - t0:.0f} s)")
  last.update(cache_s=cache_s, train_s=time.perf_counter() - start - cache_s,
              doc_states_mib=state_cache.size_bytes(docs) / 2 ** 20,
              query_states_mib=state_cache.size_bytes(queries) / 2 ** 20,
              states_reused=bool(docs.reused and queries.reused))
  (workdir / "final_metrics.json").write_text(json.dumps(last, indent=2))
  _log(f"done in {time.perf_counter() - start:.0f} s; checkpoint {workdir / 'checkpoints'}")
  return last
