"""`evaluate(config, workdir)`: retrieval metrics of a trained MSA checkpoint next to BM25.

Behind `python -m msa_jax.evaluate --config=configs/evaluate.py --workdir=...`. Steps:

1. Load the training run (`restore.load_trained`) and the dataset (BEIR folder or NQ320k files;
   by default the training run's) and lay documents and prompts out exactly as training did
   (`RetrievalTask`: memory documents `[m] title\\ntext` cut to G = `data.doc_tokens` tokens,
   prompts `head | question_prefix + question | answer_marker`, positions offset by top_k).
2. Memory: the corpus (or, with `corpus_cap`, the evaluated queries' relevant documents plus a
   seeded sample of the others) encoded into a `MemoryBank` in `<workdir>/bank`. A bank whose
   fingerprint (model) or documents differ is re-encoded; a bank cut short is completed.
3. For every question the prompt stream runs layer by layer (`MSAEngine.prefill`, or `generate`
   for generative retrieval); each router layer scores the whole memory. Rankings:
     * `msa_router_layer{i}`: the top-n documents by router layer i's document score;
     * `msa_router_sum`: by the sum over router layers of the document scores. Every layer's
       score is the same reduction of scaled query-key dot products, so the scores share a
       scale and the sum weighs the layers equally; it rewards documents that every layer
       ranks high (a single layer's outlier does not decide alone);
     * `msa_generative` (models trained to answer `[m]`): the greedily generated identifier
       (stopped at EOS or `]`) mapped back to its document; an unparsable identifier or one
       outside the memory is a miss. Only Hit@1 is meaningful (one document is generated).
   plus `bm25` on the same memory (title + text, `msa_jax.data.bm25`).
4. Memory-size scaling: the same questions against nested memories of growing size: the
   smallest holds every relevant document of the evaluated queries plus `scaling.base_docs`
   sampled distractors, then `factor` times more each step, up to the whole memory (or
   `scaling.max_docs`). A smaller memory is the bank with the other documents masked out of
   routing (the engine's `doc_mask`, `memory.routing.route`), which equals a bank of only those documents: a document's routing score depends on
   its own chunks alone. Distractors are added in one seeded order, so each memory contains
   the smaller ones.

Everything is deterministic (seeded samples, greedy decoding, fixed query batches): a rerun
gives the same numbers. Results: `<workdir>/results.json`, tables on stdout and
`<workdir>/scaling_<split>.png`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from msa_jax import datasets
from msa_jax import tasks
from msa_jax import validation
from msa_jax.checkpoint.hf import dtype_from_name
from msa_jax.data import retrieval
from msa_jax.data import bm25 as bm25_lib
from msa_jax.evaluation import metrics as metrics_lib
from msa_jax.evaluation import report
from msa_jax.inference import engine as engine_lib
from msa_jax.memory import encode as encode_lib
from msa_jax.memory.bank import BankError, MemoryBank, fingerprint_diff
from msa_jax.inference.sampling import SamplingConfig
from msa_jax.loading import restore
from msa_jax.validation import format_duration

METRICS = metrics_lib.DEFAULT_METRICS
GENERATIVE_METRICS = ("hit@1",)
RETRIEVAL_KINDS = tasks.with_evaluator("retrieval")  # the tasks this evaluation applies to
SCALING_COLUMNS = (("msa_router_sum", "ndcg@10"), ("msa_router_sum", "recall@100"),
                   ("bm25", "ndcg@10"), ("bm25", "recall@100"), ("msa_generative", "hit@1"))
_IDENTIFIER_RE = re.compile(r"^\s*\[\s*(\d+)\s*(?:\]|$)")


def _log(message: str) -> None:
  print(f"[evaluate] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# Data and layout
# --------------------------------------------------------------------------------------------


def resolve_data(config: ml_collections.ConfigDict, train: ml_collections.ConfigDict
                 ) -> tuple[str, str, list[str]]:
  """(kind, path, splits) of the evaluation: the config's, else the training run's."""
  d = config.data
  kind = d.kind or train.data.kind
  path = d.path or train.data.path
  if kind not in RETRIEVAL_KINDS:
    raise ValueError(f"data.kind={kind!r} cannot be evaluated: expected one of "
                     f"{RETRIEVAL_KINDS} (the training run's data.kind is "
                     f"{train.data.kind!r})")
  splits = [s for s in d.splits if s] or [train.data.get("eval_split")
                                          or tasks.get(kind).eval_split]
  return kind, path, splits


def load_data(kind: str, path: str, splits: Sequence[str], data_dir: str | None = None
              ) -> retrieval.RetrievalData:
  """The dataset with the given qrels splits, read through its tfds builder (prepared into
  `data_dir` on first use; errors name missing files, unknown ids or splits)."""
  tasks.get(kind).check_files(path, splits)  # e.g. names a missing BEIR qrels/<split>.tsv
  return datasets.load_retrieval(kind, path, list(splits), data_dir)


def make_task(data: retrieval.RetrievalData, tokenizer, train: ml_collections.ConfigDict
              ) -> retrieval.RetrievalTask:
  """The training run's document and prompt layout over `data`."""
  d = train.data
  t = tasks.get(d.kind).template(d)
  spec = retrieval.RetrievalSpec(
      batch_size=1, docs_per_sample=1, doc_tokens=d.doc_tokens, prompt_tokens=d.prompt_tokens,
      max_positives=1, head=t.head, question_prefix=t.question_prefix,
      answer_marker=t.answer_marker, position_offset=train.msa.top_k, seed=d.seed)
  return retrieval.RetrievalTask(data, tokenizer, spec)


def select_queries(task: retrieval.RetrievalTask, split: str, max_queries: int, seed: int
                   ) -> list[str]:
  """The split's queries with a relevant document (sorted ids); a seeded sample of
  `max_queries` of them when that is > 0."""
  qids = [qid for qid, _, _ in task.samples(split)]
  if 0 < max_queries < len(qids):
    rng = np.random.default_rng([seed, 11, *split.encode()])
    qids = sorted(qids[i] for i in rng.choice(len(qids), max_queries, replace=False))
  return qids


def relevant_docs(task: retrieval.RetrievalTask, split: str, qids: Sequence[str]) -> set[int]:
  """Corpus indices of the relevant documents (grade >= min_grade) of the queries."""
  wanted = set(qids)
  return {m for qid, pos, _ in task.samples(split) if qid in wanted for m in pos}


def memory_documents(num_docs: int, relevant: set[int], cap: int, seed: int) -> np.ndarray:
  """Corpus indices (sorted) of the memory: all documents, or the relevant ones plus a seeded
  sample of the others, `cap` in all.

  Raises:
    ValueError: a cap below the number of relevant documents.
  """
  if cap <= 0 or cap >= num_docs:
    return np.arange(num_docs)
  if cap < len(relevant):
    raise ValueError(f"corpus_cap={cap} is smaller than the {len(relevant)} relevant "
                     "documents of the evaluated queries: raise corpus_cap or lower max_queries")
  others = np.setdiff1d(np.arange(num_docs), np.fromiter(relevant, np.int64, len(relevant)))
  rng = np.random.default_rng([seed, 13])
  extra = rng.choice(others, cap - len(relevant), replace=False)
  return np.sort(np.concatenate([np.fromiter(relevant, np.int64, len(relevant)), extra]))


def scaling_sizes(smallest: int, total: int, factor: int, max_docs: int = 0) -> list[int]:
  """Memory sizes smallest, smallest * factor, ... up to total (capped at max_docs > 0), the
  last one being the cap itself (a multiple within sqrt(factor) of the cap is replaced by it,
  so the last two sizes are never nearly equal)."""
  if factor < 2:
    raise ValueError(f"scaling.factor must be >= 2, got {factor}")
  top = min(total, max_docs) if max_docs > 0 else total
  smallest = min(smallest, top)
  sizes = [smallest]
  while sizes[-1] < top:
    nxt = sizes[-1] * factor
    sizes.append(top if nxt * math.sqrt(factor) > top else nxt)
  return sizes


def nested_memories(memory: np.ndarray, relevant: set[int], sizes: Sequence[int], seed: int
                    ) -> list[np.ndarray]:
  """For each size, a bool mask over the bank's documents (`memory` order): the relevant
  documents first, then distractors in one seeded order (so the memories are nested)."""
  is_rel = np.isin(memory, np.fromiter(relevant, np.int64, len(relevant)))
  others = np.flatnonzero(~is_rel)
  order = np.concatenate([np.flatnonzero(is_rel),
                          np.random.default_rng([seed, 17]).permutation(others)])
  masks = []
  for n in sizes:
    mask = np.zeros(len(memory), bool)
    mask[order[:max(n, int(is_rel.sum()))]] = True
    masks.append(mask)
  return masks


# --------------------------------------------------------------------------------------------
# Memory bank
# --------------------------------------------------------------------------------------------


def documents_digest(doc_ids: Sequence[str], tokens: Sequence[Sequence[int]]) -> str:
  """sha256 of the documents' ids and token ids (what a bank's contents depend on besides the
  model)."""
  h = hashlib.sha256()
  for doc_id, ids in zip(doc_ids, tokens):
    h.update(json.dumps([doc_id, list(map(int, ids))]).encode())
  return h.hexdigest()


def prepare_bank(path: Path, managed: bool, trained: restore.TrainedModel, dtype,
                 doc_ids: Sequence[str], tokens: Sequence[Sequence[int]], *, max_tokens: int,
                 bank_dtype: str = "float32", batch_size: int = 16, commit_every: int = 512
                 ) -> tuple[MemoryBank, str]:
  """The memory bank of the documents: reused, completed, (re-)encoded or refused.

  Args:
    path: the bank directory.
    managed: the evaluation owns the bank (re-encode it when the model or documents changed);
      otherwise such a bank is refused.
    trained, dtype: the model and compute dtype.
    doc_ids, tokens: the memory documents (bank order) and their token ids.
    max_tokens: G. bank_dtype: storage dtype. batch_size: documents per encoder forward.
    commit_every: documents per bank commit (a progress line each; an interrupted encoding
      resumes from the last commit).

  Returns:
    (bank, what happened: "reused" | "completed" | "encoded").

  Raises:
    BankError: an unmanaged bank from another model, or holding other documents.
  """
  cfg, msa, params = trained.model_config, trained.msa, trained.params
  fingerprint = encode_lib.bank_fingerprint(cfg, msa.arch, params, dtype)
  metadata = {"documents": documents_digest(doc_ids, tokens), "num_docs": len(doc_ids),
              "doc_tokens": max_tokens}
  try:
    bank = MemoryBank.open(path, verify=False)
  except FileNotFoundError:
    bank = None
  done = 0
  if bank is not None:
    diff = fingerprint_diff(bank.fingerprint, json.loads(json.dumps(fingerprint)))
    ids = bank.doc_ids
    same_docs = bank.metadata == metadata and ids == list(doc_ids[:len(ids)])
    if not managed and diff:
      raise BankError(f"bank {path} was encoded with another model or config: "
                      + "; ".join(diff[:5]))
    if not managed and not same_docs:
      raise BankError(f"bank {path} holds other documents than this evaluation's "
                      f"{len(doc_ids)} (metadata {bank.metadata}, expected {metadata})")
    if diff or not same_docs:
      _log(f"bank {path} is stale ({'; '.join(diff[:2]) or 'other documents'}): re-encoding")
      bank = None
    else:
      done = len(ids)
  if bank is None:
    bank = encode_lib.create_bank(path, cfg, msa, params, dtype=dtype, bank_dtype=bank_dtype,
                                  overwrite=True, metadata=metadata)
  status = "reused" if done == len(doc_ids) else "completed" if done else "encoded"
  if done < len(doc_ids):
    _log(f"encoding {len(doc_ids) - done} documents into {path}")
    encode_lib.encode_corpus(bank, cfg, msa, params, list(doc_ids[done:]), tokens[done:],
                             max_tokens=max_tokens, batch_size=batch_size,
                             commit_every=commit_every, dtype=dtype, progress=sys.stdout)
  return bank, status


# --------------------------------------------------------------------------------------------
# Routing and generation
# --------------------------------------------------------------------------------------------


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
  """Indices of the n highest finite scores of each row [Q, M], best first; ties keep index
  order. Returns a list of index arrays (rows may be shorter when few scores are finite)."""
  out = []
  for row in scores:
    valid = np.flatnonzero(np.isfinite(row))
    if valid.size > n:
      kth = np.partition(row[valid], valid.size - n)[valid.size - n]
      valid = valid[row[valid] >= kth]
    out.append(valid[np.lexsort((valid, -row[valid]))][:n])
  return out


def parse_identifier(text: str) -> int | None:
  """The document index m of a generated `[m]` (a closing `]` cut off by the stop is
  accepted), or None when the text does not start with an identifier."""
  match = _IDENTIFIER_RE.match(text)
  return int(match.group(1)) if match else None


def identifier_stops(task: retrieval.RetrievalTask) -> tuple[int, ...]:
  """EOS and the tokens that close an identifier (`]`) under this tokenizer."""
  tok = task.tokenizer
  stops = {int(tok.eos_id)}
  for m in {0, 9, task.data.num_docs - 1}:
    last = task.identifier_ids(m)[-1]
    if tok.decode([last]).rstrip().endswith("]"):
      stops.add(int(last))
  return tuple(sorted(stops))


def question_prompts(task: retrieval.RetrievalTask, qids: Sequence[str]
                     ) -> engine_lib.PromptBatch:
  """Training-layout prompts of the queries: `head | prefix + question | answer marker`, the
  question cut to leave room for the longest identifier + EOS, T = `prompt_tokens`."""
  heads, queries, tails = [], [], []
  longest = task.data.num_docs - 1
  for qid in qids:
    row, q0, q1, a0 = task.prompt(task.data.queries[qid], longest)
    heads.append(row[:q0])
    queries.append(row[q0:q1])
    tails.append(row[q1:a0])
  return engine_lib.PromptBatch.from_segments(
      heads, queries, tails, position_offset=task.spec.position_offset, pad_id=task.pad_id,
      length=task.spec.prompt_tokens)


def run_queries(engine: engine_lib.MSAEngine, task: retrieval.RetrievalTask,
                qids: Sequence[str], bank_doc_ids: Sequence[str], members: np.ndarray | None,
                *, top: int, sampling: SamplingConfig | None, batch_size: int, label: str = ""
                ) -> tuple[dict[str, dict[str, list[str]]], dict[str, str]]:
  """Routes (and generates for) the queries against the bank restricted to `members` ([M]
  bool in bank order, the engine's `doc_mask`; None: the whole bank); the rankings come from
  every router layer's document scores [Q, M] (-inf outside `members`).

  Returns:
    ({ranking name: {qid: doc ids, best first}}, {qid: generated text} (empty without
    `sampling`)). Ranking names: `msa_router_layer{i}` and `msa_router_sum`.
  """
  rankings: dict[str, dict[str, list[str]]] = {}
  generated: dict[str, str] = {}
  start = time.perf_counter()
  for lo in range(0, len(qids), batch_size):
    batch = list(qids[lo:lo + batch_size])
    padded = batch + [batch[-1]] * (batch_size - len(batch))  # one compiled shape
    prompts = question_prompts(task, padded)
    if sampling is None:
      pre = engine.prefill(prompts, keep_scores=True, doc_mask=members)
    else:
      tokens, lengths, pre = engine.generate(prompts, sampling, keep_scores=True,
                                             doc_mask=members)
      for r, qid in enumerate(batch):
        generated[qid] = task.tokenizer.decode(tokens[r, :lengths[r]].tolist())
    per_layer = {i: np.asarray(pre.memory[i].doc_scores, np.float32)[:len(batch)]
                 for i in engine.router_ids}
    per_layer["sum"] = np.sum([per_layer[i] for i in engine.router_ids], axis=0)
    for name, scores in per_layer.items():
      key = f"msa_router_layer{name}" if name != "sum" else "msa_router_sum"
      ranked = rankings.setdefault(key, {})
      for qid, idx in zip(batch, top_n(scores, top)):
        ranked[qid] = [bank_doc_ids[i] for i in idx]
    done = min(lo + batch_size, len(qids))
    rate = done / max(time.perf_counter() - start, 1e-9)
    _log(f"{label}{done}/{len(qids)} questions ({rate:.2f}/s, ETA "
         f"{format_duration((len(qids) - done) / rate)})")
  return rankings, generated


def generative_rankings(generated: Mapping[str, str], task: retrieval.RetrievalTask,
                        in_memory: set[str]) -> tuple[dict[str, list[str]], dict[str, int]]:
  """({qid: [generated document id] or []}, counts of parsed / unparsable / unknown ids)."""
  rankings, counts = {}, {"parsed": 0, "unparsable": 0, "not_in_memory": 0}
  for qid, text in generated.items():
    m = parse_identifier(text)
    if m is None:
      counts["unparsable"] += 1
      rankings[qid] = []
    elif m >= task.data.num_docs or task.doc_id_of(m) not in in_memory:
      counts["not_in_memory"] += 1
      rankings[qid] = []
    else:
      counts["parsed"] += 1
      rankings[qid] = [task.doc_id_of(m)]
  return rankings, counts


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def format_table(methods: Mapping[str, Mapping[str, float]], metrics: Sequence[str] = METRICS
                 ) -> str:
  """Methods as rows, metrics as columns ("-" where a method has no value)."""
  width = max(len(m) for m in methods) + 2
  lines = ["method".ljust(width) + "".join(f"{m:>11}" for m in metrics)]
  for name, values in methods.items():
    cells = "".join(f"{values[m]:>11.4f}" if m in values else f"{'-':>11}" for m in metrics)
    lines.append(name.ljust(width) + cells)
  return "\n".join(lines)


def relative_degradation(values: Sequence[float]) -> list[float | None]:
  """(v - v[0]) / v[0] of each size (None when the smallest memory scores 0)."""
  return [None if values[0] == 0 else (v - values[0]) / values[0] for v in values]


def format_scaling(sizes: Sequence[int], methods: Mapping[str, Sequence[Mapping[str, float]]]
                   ) -> str:
  """Memory size as rows; (method, metric) value and relative change from the smallest."""
  cols = [(m, k) for m, k in SCALING_COLUMNS if m in methods]
  head = "memory".rjust(8) + "".join(f"{m.replace('msa_', '')} {k}".rjust(30) for m, k in cols)
  lines = [head]
  for s, n in enumerate(sizes):
    cells = ""
    for m, k in cols:
      values = [row[k] for row in methods[m]]
      rel = relative_degradation(values)[s]
      cells += f"{values[s]:.4f} ({'n/a' if rel is None else f'{rel:+.1%}'})".rjust(30)
    lines.append(f"{n:>8}" + cells)
  return "\n".join(lines)


def plot_scaling(path: Path, split: str, sizes: Sequence[int],
                 methods: Mapping[str, Sequence[Mapping[str, float]]],
                 metrics: Sequence[str]) -> None:
  """One panel per metric: each method's value against the memory size (log x)."""
  fig, axes = report.memory_figure(len(metrics), f"memory-size scaling, split {split}")
  for ax, metric in zip(axes, metrics):
    for name, rows in methods.items():
      if rows and metric in rows[0]:
        ax.plot(sizes, [r[metric] for r in rows], marker="o", label=name)
    report.style_memory_axis(ax, metric, xlabel="memory size (documents)", unit_range=False)
  fig.savefig(path, dpi=120)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def _generative(config: ml_collections.ConfigDict, train: ml_collections.ConfigDict) -> bool:
  choice = config.generative
  if choice == "auto":  # the retrieval training target is `[m] <eos>`
    return train.data.kind in RETRIEVAL_KINDS
  if choice not in ("yes", "no"):
    raise ValueError(f"generative={choice!r} must be 'auto', 'yes' or 'no'")
  return choice == "yes"


def _score(rankings: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]],
           metrics: Sequence[str] = METRICS) -> dict[str, float]:
  return metrics_lib.evaluate(rankings, qrels, metrics).mean


def evaluate_split(engine: engine_lib.MSAEngine, task: retrieval.RetrievalTask, split: str,
                   qids: Sequence[str], memory: np.ndarray, relevant: set[int],
                   config: ml_collections.ConfigDict, sampling: SamplingConfig | None,
                   bank_doc_ids: Sequence[str]) -> dict[str, Any]:
  """Every method on every memory size of one split (the last size is the whole memory)."""
  data = task.data
  qrels = {q: dict(data.split(split)[q]) for q in qids}
  queries = {q: data.queries[q] for q in qids}
  sc = config.scaling
  if sc.enabled:
    sizes = scaling_sizes(len(relevant) + sc.base_docs, len(memory), sc.factor, sc.max_docs)
  else:
    sizes = []
  if not sizes or sizes[-1] != len(memory):
    sizes.append(len(memory))
  masks = nested_memories(memory, relevant, sizes, config.seed)
  per_size = []
  for n, mask in zip(sizes, masks):
    members = None if mask.all() else mask
    rankings, generated = run_queries(
        engine, task, qids, bank_doc_ids, members, top=config.top_n, sampling=sampling,
        batch_size=config.query_batch_size, label=f"{split} memory {n}: ")
    methods = {name: _score(r, qrels) for name, r in sorted(
        rankings.items(), key=lambda kv: (kv[0] == "msa_router_sum", kv[0]))}
    in_memory = [bank_doc_ids[i] for i in np.flatnonzero(mask)]
    corpus = {d: {"title": data.titles[data.doc_index[d]], "text": data.texts[data.doc_index[d]]}
              for d in in_memory}
    bm25 = bm25_lib.bm25_rankings(corpus, queries, k=config.top_n, query_ids=list(qids),
                                  stemmer=config.bm25_stemmer or None)
    methods = {"bm25": _score(bm25, qrels), **methods}
    entry = {"memory_docs": int(mask.sum()), "methods": methods}
    if sampling is not None:
      gen, counts = generative_rankings(generated, task, set(in_memory))
      methods["msa_generative"] = _score(gen, qrels, GENERATIVE_METRICS)
      entry["generative"] = dict(counts, examples=dict(list(generated.items())[:5]))
    per_size.append(entry)
  full = per_size[-1]
  scaling = None
  if sc.enabled:
    names = list(per_size[0]["methods"])
    scaled = {m: [e["methods"][m] for e in per_size] for m in names}
    scaling = {
        "sizes": sizes, "methods": scaled,
        "relative_degradation": {m: {k: relative_degradation([r[k] for r in rows])
                                     for k in rows[0]} for m, rows in scaled.items()}}
  return {"num_queries": len(qids), "memory_docs": len(memory), "methods": full["methods"],
          "generative": full.get("generative"), "scaling": scaling}


def evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  """Evaluates `config.checkpoint_workdir`'s model; writes `<workdir>/results.json` (returned)
  and the scaling plots, prints the tables."""
  validation.check_evaluate_config(config, workdir)  # before anything is loaded
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  timing = {}
  t0 = time.perf_counter()
  train = restore.load_config(config.checkpoint_workdir)
  kind, path, splits = resolve_data(config, train)
  data = load_data(kind, path, splits,  # refuses bad data before the model is loaded
                   train.data.get("data_dir"))
  generative = _generative(config, train)
  _log(f"loading the checkpoint of {config.checkpoint_workdir}...")
  trained = restore.load_trained(config.checkpoint_workdir, config.checkpoint_step)
  task = make_task(data, trained.tokenizer, train)
  _log(f"checkpoint {config.checkpoint_workdir} step {trained.step}; {kind} {path} "
       f"({data.num_docs} documents), splits {splits}")
  qids = {s: select_queries(task, s, config.max_queries, config.seed) for s in splits}
  relevant = {s: relevant_docs(task, s, qids[s]) for s in splits}
  memory = memory_documents(data.num_docs, set().union(*relevant.values()), config.corpus_cap,
                            config.seed)
  timing["load_s"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  bank_doc_ids = [data.doc_ids[m] for m in memory]
  tokens = [task.doc_token_ids(int(m)) for m in memory]
  dtype = dtype_from_name(train.dtype)
  bank_path = Path(config.bank_path) if config.bank_path else workdir / "bank"
  bank, bank_status = prepare_bank(
      bank_path, not config.bank_path, trained, dtype, bank_doc_ids, tokens,
      max_tokens=task.spec.doc_tokens, bank_dtype=config.bank_dtype,
      batch_size=config.encode_batch_size)
  timing["bank_s"] = time.perf_counter() - t0
  _log(f"memory bank {bank_path}: {bank.num_docs} documents ({bank_status})")

  engine = engine_lib.MSAEngine(trained.model_config, trained.msa, trained.params, bank, dtype=dtype)
  sampling = None
  if generative:
    longest = len(task.identifier_ids(data.num_docs - 1)) + 1
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=longest,
                              stop_tokens=identifier_stops(task), pad_id=task.pad_id)
  results = {
      "checkpoint": {"workdir": str(config.checkpoint_workdir), "step": trained.step},
      "data": {"kind": kind, "path": str(path), "splits": splits, "corpus_docs": data.num_docs},
      "memory": {"bank": str(bank_path), "docs": len(memory), "status": bank_status,
                 "doc_tokens": task.spec.doc_tokens},
      "router_layers": list(engine.router_ids),
      "combined_ranking": "msa_router_sum: documents ranked by the sum over router layers of "
                          "their routing scores",
      "splits": {}, "config": config.to_dict(),
  }
  for split in splits:
    t0 = time.perf_counter()
    out = evaluate_split(engine, task, split, qids[split], memory, relevant[split], config,
                         sampling, bank_doc_ids)
    timing[f"{split}_s"] = time.perf_counter() - t0
    results["splits"][split] = out
    print(f"\nsplit {split}: {out['num_queries']} queries, memory of {out['memory_docs']} "
          f"documents (checkpoint step {trained.step})")
    print(format_table(out["methods"]))
    if out["generative"] is not None:
      g = out["generative"]
      print(f"generated identifiers: {g['parsed']} in memory, {g['not_in_memory']} not in "
            f"memory, {g['unparsable']} unparsable")
    if out["scaling"] is not None:
      s = out["scaling"]
      print(f"\nmemory-size scaling, split {split} (relative change from the smallest):")
      print(format_scaling(s["sizes"], s["methods"]))
      plot = workdir / f"scaling_{split}.png"
      plot_scaling(plot, split, s["sizes"],
                   {m: s["methods"][m] for m in ("msa_router_sum", "bm25", "msa_generative")
                    if m in s["methods"]}, list(config.scaling.plot_metrics))
      s["plot"] = str(plot)
  results["timing"] = timing
  (workdir / "results.json").write_text(json.dumps(results, indent=2))
  _log(f"wrote {workdir / 'results.json'}")
  return results
