"""`python -m msa_jax.scale --config=configs/scale.py --config.checkpoint_workdir=DIR
--config.workdir=OUT`: a trained synthetic-task model against memories of up to 100M tokens.

For every memory size (`config.sizes`, in tokens) it streams stage-1 encoding into bfloat16
banks on disk (`OUT/banks/<memory>-<tokens>`; progress line with ETA; staged and published
atomically, so a rerun after kill -9 continues from the last commit and a finished bank is
reused), then routes and answers held-out questions through the inference engine and prints one
row per size and task. Two memories per size, both generated document by document from a seed
(never held whole, `msa_jax.data.synthetic.stream_documents` / `niah.StreamedNiah`):

  demo    held-out documents of the checkpoint's own synthetic task (the documents after its
          training and evaluation documents); `config.questions` questions, each a key whose
          document identifier is the answer.
  niah    one haystack holding `config.niah_repeats` independent needle groups of each NIAH
          variant (single, multi-key, multi-value, multi-query: RULER-style, `niah.PRESETS`),
          placed at random depths; every variant's questions are asked of it.

Columns: memory tokens, documents, bank bytes on disk, encode tokens/s (of the run that encoded
the bank), route ms per question (all router layers, after compilation), recall@1 (the best
routed document holds a needle of the question), recall@k (the fraction of the question's
needles among the top `config.route_k` routed documents, any router layer), answer accuracy
(the generated answer starts with the identifier of a document holding a needle; the model
answers at its trained top_k). Written to OUT: scale.json, scale_table.txt and scale.png (recall
and accuracy against memory size, in the style of the paper's Figure 4).

User errors (a missing checkpoint, bad sizes, unknown tasks, a memory larger than the task's
identifiers or keys allow) are one `error: ...` line and exit status 2, before any model is
loaded.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from msa_jax import runtime, validation

from msa_jax.data import synthetic
from msa_jax.data import niah
from msa_jax.evaluation import report
from msa_jax.loading import restore
from msa_jax.inference import engine as engine_lib
from msa_jax.memory import encode as encode_lib
from msa_jax.memory.bank import MemoryBank, fingerprint_diff
from msa_jax.inference.sampling import SamplingConfig

TASKS = ("demo", "single", "multikey", "multivalue", "multiquery")
NIAH_TASKS = TASKS[1:]
RESULTS_FILE, TABLE_FILE, PLOT_FILE = "scale.json", "scale_table.txt", "scale.png"


class ScaleError(ValueError):
  """A user error: printed as one `error: ...` line, exit status 2."""


def _log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Memories and questions
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Question:
  """A held-out question: routing query tokens, the documents holding its answer (memory
  indices) and their identifier tokens (`[ d.. ]`)."""

  task: str
  query: list[int]
  needle_docs: tuple[int, ...]
  identifiers: tuple[tuple[int, ...], ...]


@dataclasses.dataclass(frozen=True)
class Memory:
  """A streamed memory: `num_docs` documents of `doc_tokens` tokens, built block by block.

  Attributes:
    name: "demo" or "niah".
    record: JSON that identifies the documents (kept in the bank's metadata: a bank is
      continued or reused only for the same record).
    block: (start, stop) -> [stop - start, doc_tokens] int32 token ids.
    questions: the questions asked of it.
  """

  name: str
  num_docs: int
  doc_tokens: int
  record: dict
  block: Callable[[int, int], np.ndarray]
  questions: tuple[Question, ...]

  def doc_ids(self, start: int) -> Iterator[str]:
    """Bank ids of documents start.. (their memory index, 7 digits)."""
    return (f"{i:07d}" for i in range(start, self.num_docs))

  def tokens(self, start: int, block_docs: int = 16384) -> Iterator[np.ndarray]:
    """Token rows of documents start.., generated `block_docs` at a time."""
    for lo in range(start, self.num_docs, block_docs):
      yield from self.block(lo, min(lo + block_docs, self.num_docs))


def corpus_spec(data: ml_collections.ConfigDict) -> synthetic.CorpusSpec:
  """The checkpoint's synthetic document sequence."""
  return synthetic.CorpusSpec(
      doc_length=data.doc_length, facts_per_doc=data.facts_per_doc, key_length=data.key_length,
      id_digits=data.id_digits, fact_span=data.get("fact_span"), seed=data.seed,
      positional_keys=data.get("positional_keys", False),
      id_after_fact=data.get("id_after_fact", False))


def demo_memory(tok: synthetic.SyntheticTokenizer, data: ml_collections.ConfigDict,
                num_docs: int, questions: int) -> Memory:
  """`num_docs` held-out documents of the training task (after its training and evaluation
  documents) and `questions` questions about documents spread evenly over them."""
  spec = corpus_spec(data)
  first = data.num_docs + data.eval_docs
  synthetic.check_corpus_spec(tok, spec, first + num_docs)
  docs = np.unique(np.linspace(0, num_docs - 1, min(questions, num_docs)).round().astype(int))
  corpus = synthetic.documents(tok, spec, first + docs)
  asked = [Question("demo", corpus.question_ids(j * spec.facts_per_doc), (int(d),),
                    (tuple(corpus.identifier_ids(j)),)) for j, d in enumerate(docs)]
  record = dict(task="demo", spec=dataclasses.asdict(spec), first_doc=first, num_docs=num_docs)
  return Memory("demo", num_docs, spec.doc_length, record,
                lambda a, b: synthetic.document_range(tok, spec, first + a, first + b).doc_tokens,
                tuple(asked))


def combined_niah(tok: synthetic.SyntheticTokenizer, *, num_docs: int, doc_tokens: int,
                  id_digits: int, needle_span: int | None, key_length: int,
                  variants: Sequence[str], repeats: int, seed: int,
                  positional_keys: bool = False) -> tuple[niah.StreamedNiah, list[str]]:
  """One streamed haystack holding `repeats` needle groups of each variant (`niah.PRESETS`
  with the model's key length and kind of keys; each group built by `niah.build_streamed_niah`
  from its own seed, a needle moved to the next free document when its document is taken; the
  filler and identifiers are those of `seed`); returns it with each question's variant."""
  memory_tokens = num_docs * doc_tokens
  specs = {v: dataclasses.replace(niah.PRESETS[v], key_length=key_length,
                                  positional_keys=positional_keys) for v in variants}
  base = niah.build_streamed_niah(tok, specs[variants[0]], memory_tokens=memory_tokens,
                                  doc_tokens=doc_tokens, seed=seed, id_digits=id_digits,
                                  needle_span=needle_span)
  needles, groups, taken, keys = [], [], set(), set()
  group_seed = seed * 1000
  for variant in variants:
    for _ in range(repeats):
      while True:  # a group whose keys another group already uses is drawn again
        group_seed += 1
        task = niah.build_streamed_niah(tok, specs[variant], memory_tokens=memory_tokens,
                                        doc_tokens=doc_tokens, seed=group_seed,
                                        id_digits=id_digits, needle_span=needle_span)
        group_keys = {n.key for n in task.needles}
        if not group_keys & keys:
          break
      keys |= group_keys
      moved = []
      for needle in task.needles:
        doc = needle.doc
        while doc in taken:
          doc = (doc + 1) % num_docs
        taken.add(doc)
        moved.append(dataclasses.replace(needle, doc=doc))
      groups.append((variant, len(needles), task.questions))
      needles += moved
  order = sorted(range(len(needles)), key=lambda i: needles[i].doc)
  new_index = {old: new for new, old in enumerate(order)}
  placed = tuple(needles[i] for i in order)
  questions, labels = [], []
  for variant, offset, group_questions in groups:
    for q in group_questions:
      mine = tuple(new_index[offset + i] for i in q.needles)
      questions.append(dataclasses.replace(
          q, needles=mine, needle_docs=tuple((placed[i].doc,) for i in mine)))
      labels.append(variant)
  return dataclasses.replace(base, needles=placed, questions=tuple(questions)), labels


def niah_memory(tok: synthetic.SyntheticTokenizer, data: ml_collections.ConfigDict,
                num_docs: int, variants: Sequence[str], repeats: int, seed: int) -> Memory:
  """The combined NIAH haystack of `num_docs` documents (`combined_niah`) and its questions."""
  positional_keys = bool(data.get("positional_keys", False))
  task, labels = combined_niah(tok, num_docs=num_docs, doc_tokens=data.doc_length,
                               id_digits=data.id_digits, needle_span=data.get("fact_span"),
                               key_length=data.key_length, variants=variants, repeats=repeats,
                               seed=seed, positional_keys=positional_keys)
  asked = []
  for q, variant in zip(task.questions, labels):
    docs = tuple(d for nd in q.needle_docs for d in nd)
    ids = task.identifiers(np.asarray(docs))
    asked.append(Question(variant, tok.encode(q.query), docs,
                          tuple(tuple(tok.identifier_ids(int(i), data.id_digits)) for i in ids)))
  record = dict(task="niah", variants=list(variants), repeats=repeats, seed=seed,
                num_docs=num_docs, doc_tokens=data.doc_length, id_digits=data.id_digits,
                needle_span=data.get("fact_span"), positional_keys=positional_keys)
  return Memory("niah", num_docs, data.doc_length, record, task.document_tokens, tuple(asked))


# --------------------------------------------------------------------------------------------
# Banks
# --------------------------------------------------------------------------------------------


def bank_bytes(path: Path) -> int:
  """Bytes of every file under a bank directory."""
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def ensure_bank(path: Path, trained, memory: Memory, config: ml_collections.ConfigDict
                ) -> tuple[MemoryBank, dict]:
  """The bank of `memory`: reused when complete, continued when staged (same memory and model),
  otherwise encoded anew beside whatever is there, then published.

  Returns:
    (the bank, {"tokens_per_s", "seconds", "tokens"} of the run that encoded it).
  """
  cfg, msa, params = trained.model_config, trained.msa, trained.params
  dtype = jnp.dtype(config.dtype)
  fingerprint = json.loads(json.dumps(encode_lib.bank_fingerprint(cfg, msa.arch, params,
                                                                  dtype)))

  def mismatch(bank: MemoryBank) -> str:
    """"" when `bank` holds this memory encoded by this model, else what differs."""
    meta = bank.metadata if isinstance(bank.metadata, dict) else {}
    for what, diff in (("memory", fingerprint_diff(meta.get("memory"), memory.record, "memory")),
                       ("model", fingerprint_diff(bank.fingerprint, fingerprint))):
      if diff:
        return f"another {what} ({diff[0]}{', ...' if len(diff) > 1 else ''})"
    return ""

  if (path / "manifest.json").exists():
    bank = MemoryBank.open(path, verify=False)
    why = mismatch(bank)
    if not why and bank.num_docs == memory.num_docs:
      _log(f"[scale] {path}: complete bank reused ({bank.num_docs:,} documents)")
      return bank, bank.metadata["encode"]
    _log(f"[scale] {path}: the bank there holds {why or f'{bank.num_docs:,} documents'}; "
         "encoding anew")
  bank = None
  if MemoryBank.has_staged(path):
    bank = MemoryBank.open(path, staged=True, verify=False)
    why = mismatch(bank)
    if not why:
      _log(f"[scale] {path}: continuing the unfinished encoding at document "
           f"{bank.num_docs:,} of {memory.num_docs:,}")
    else:
      _log(f"[scale] {path}: the unfinished encoding there is of {why}; starting anew")
      bank = None
  if bank is None:
    bank = encode_lib.create_bank(path, cfg, msa, params, dtype=dtype,
                                  bank_dtype=config.bank_dtype, overwrite=True, staged=True,
                                  metadata={"memory": memory.record})
  done = bank.num_docs
  _log(f"[scale] encoding {memory.num_docs - done:,} documents "
       f"({(memory.num_docs - done) * memory.doc_tokens:,} tokens) into {path}")
  stats = encode_lib.encode_corpus(
      bank, cfg, msa, params, memory.doc_ids(done), memory.tokens(done), None,
      max_tokens=memory.doc_tokens, batch_size=config.encode_batch,
      commit_every=config.commit_every, commit_seconds=config.commit_seconds,
      total=memory.num_docs - done, dtype=dtype)
  encode = {"tokens_per_s": stats.tokens_per_second, "seconds": stats.seconds,
            "tokens": stats.tokens, "resumed_at": done}
  bank.set_metadata({"memory": memory.record, "encode": encode})
  bank.publish()
  return bank, encode


# --------------------------------------------------------------------------------------------
# Questions through the engine
# --------------------------------------------------------------------------------------------


class TimedEngine(engine_lib.MSAEngine):
  """An `MSAEngine` that accumulates the wall time of its routing calls (`route_seconds`)."""

  route_seconds = 0.0

  def route(self, layer, rq, query_mask, doc_mask=None):
    start = time.perf_counter()
    result = super().route(layer, rq, query_mask, doc_mask)
    jax.block_until_ready(result.indices)
    self.route_seconds += time.perf_counter() - start
    return result


def _prompts(questions: Sequence[Question], tok, offset: int, length: int
             ) -> engine_lib.PromptBatch:
  n = len(questions)
  return engine_lib.PromptBatch.from_segments(
      [[tok.bos_id]] * n, [q.query for q in questions], [[tok.answer_id]] * n,
      position_offset=offset, pad_id=tok.pad_id, length=length)


def ask(engine: TimedEngine, questions: Sequence[Question], tok, *, trained_top_k: int,
        route_k: int, batch: int, id_digits: int) -> tuple[list[dict], float]:
  """Routing hits and answers of every question; returns (per question {task, hit1, recall_k,
  correct}, route ms per question measured after a warm-up batch)."""
  length = 2 + max(len(q.query) for q in questions)
  sampling = SamplingConfig(temperature=0.0, max_new_tokens=id_digits + 3,
                            stop_tokens=(tok.eos_id,), pad_id=tok.pad_id)
  answer_msa = engine.msa
  route_msa = engine.msa.replace(top_k=min(route_k, engine.bank.num_docs))
  rows, timed, seconds = [], 0, 0.0
  batches = [questions[i:i + batch] for i in range(0, len(questions), batch)]
  for n, qs in enumerate([batches[0]] + batches):  # the first batch twice: compile, then time
    qs = list(qs) + [qs[-1]] * (batch - len(qs))  # one shape: one compilation
    prompts = _prompts(qs, tok, trained_top_k, length)
    engine.msa = route_msa
    routed = engine.prefill(prompts).memory
    engine.msa = answer_msa
    engine.route_seconds = 0.0
    tokens, _, _ = engine.generate(prompts, sampling)
    if n == 0:
      continue
    real = min(batch, len(questions) - (n - 1) * batch)
    seconds += engine.route_seconds * real / batch
    timed += real
    for i, q in enumerate(qs[:real]):
      top = [np.asarray(m.doc_indices)[i] for m in routed.values()]
      needles = set(q.needle_docs)
      hit1 = any(int(t[0]) in needles for t in top)
      found = {int(d) for t in top for d in t} & needles
      out = [int(t) for t in tokens[i]]
      correct = any(out[:len(ident)] == list(ident) for ident in q.identifiers)
      rows.append({"task": q.task, "hit1": hit1, "recall_k": len(found) / len(needles),
                   "correct": correct})
  return rows, 1000 * seconds / max(timed, 1)


# --------------------------------------------------------------------------------------------
# Throughput reference, table and plot
# --------------------------------------------------------------------------------------------


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
  """This machine's float32 matmul throughput through XLA (median of `repeats`), GFLOP/s."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n ** 3 / float(np.median(times)) / 1e9


def encode_flops_per_token(trained, config, doc_tokens: int) -> float:
  """FLOPs of one document-stream token, from XLA's cost analysis of the encode program."""
  cfg, msa = trained.model_config, trained.msa
  fn = encode_lib.encode_fn(cfg, msa, jnp.dtype(config.dtype), jnp.dtype(config.bank_dtype))
  b = config.encode_batch
  shapes = (jax.ShapeDtypeStruct((b, doc_tokens), jnp.int32),
            jax.ShapeDtypeStruct((b,), jnp.int32), jax.ShapeDtypeStruct((b, doc_tokens), jnp.int32))
  cost = fn.lower(trained.params, *shapes).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) / (b * doc_tokens)


def summarize(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
  """Per task: questions, recall@1, recall@k, answer accuracy (means)."""
  out = {}
  for task in dict.fromkeys(r["task"] for r in rows):
    mine = [r for r in rows if r["task"] == task]
    out[task] = {"questions": len(mine),
                 "recall@1": float(np.mean([r["hit1"] for r in mine])),
                 "recall@k": float(np.mean([r["recall_k"] for r in mine])),
                 "accuracy": float(np.mean([r["correct"] for r in mine]))}
  return out


def format_table(rows: Sequence[dict], route_k: int) -> str:
  header = ["memory tokens", "docs", "task", "bank bytes", "encode tok/s", "route ms/q",
            "questions", "recall@1", f"recall@{route_k}", "accuracy"]
  lines = [[f"{r['memory_tokens']:,}", f"{r['num_docs']:,}", r["task"], f"{r['bank_bytes']:,}",
            f"{r['encode_tokens_per_s']:,.0f}", f"{r['route_ms_per_question']:.1f}",
            str(r["questions"]), f"{r['recall@1']:.3f}", f"{r['recall@k']:.3f}",
            f"{r['accuracy']:.3f}"] for r in rows]
  return report.format_columns(header, lines)


def plot(rows: Sequence[dict], path: Path, route_k: int, title: str) -> None:
  """Recall and answer accuracy against memory tokens (log scale), one line per task."""
  fig, (ax_route, ax_answer) = report.memory_figure(2, title)
  for n, task in enumerate(dict.fromkeys(r["task"] for r in rows)):
    mine = [r for r in rows if r["task"] == task]
    x = [r["memory_tokens"] for r in mine]
    ax_route.plot(x, [r["recall@1"] for r in mine], "o-", color=f"C{n}", label=f"{task} @1")
    ax_route.plot(x, [r["recall@k"] for r in mine], "x--", color=f"C{n}", alpha=0.6,
                  label=f"{task} @{route_k}")
    ax_answer.plot(x, [r["accuracy"] for r in mine], "o-", color=f"C{n}", label=task)
  report.style_memory_axis(ax_route, "routing recall")
  report.style_memory_axis(ax_answer, "answer accuracy")
  fig.savefig(path, dpi=120)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def check_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Validates the config and the checkpoint's recorded config (no model is loaded); returns
  the checkpoint's training config. Raises ScaleError naming the bad value."""
  for name in ("checkpoint_workdir", "workdir"):
    if not config.get(name):
      raise ScaleError(f"--config.{name} is required")
  out = Path(config.workdir)
  if out.exists() and not out.is_dir():
    raise ScaleError(f"--config.workdir={out} exists and is not a directory")
  for name in ("questions", "niah_repeats", "route_k", "encode_batch", "question_batch",
               "commit_every"):
    value = config[name]
    if not (isinstance(value, int) and value >= 1):
      raise ScaleError(f"--config.{name}={value!r} must be an int >= 1")
  if not config.commit_seconds > 0:
    raise ScaleError(f"--config.commit_seconds={config.commit_seconds!r} must be > 0")
  if config.bank_dtype not in ("float32", "bfloat16"):
    raise ScaleError(f"--config.bank_dtype={config.bank_dtype!r}: expected float32 or bfloat16")
  unknown = [t for t in config.tasks if t not in TASKS]
  if unknown or not config.tasks:
    raise ScaleError(f"--config.tasks={tuple(config.tasks)!r}: known tasks are {TASKS}")
  sizes = list(config.sizes)
  if not sizes or not all(isinstance(s, int) and s >= 1 for s in sizes):
    raise ScaleError(f"--config.sizes={tuple(sizes)!r} must be memory sizes in tokens (ints)")
  try:
    trained_config = restore.load_config(config.checkpoint_workdir)
  except (FileNotFoundError, OSError, ValueError) as e:
    raise ScaleError(f"--config.checkpoint_workdir={config.checkpoint_workdir}: {e}") from None
  data = trained_config.data
  if data.kind != "synthetic":
    raise ScaleError(f"--config.checkpoint_workdir={config.checkpoint_workdir} was trained on "
                     f"data.kind={data.kind!r}; the scale run needs the synthetic task")
  tok = restore.make_tokenizer(trained_config)
  spec = corpus_spec(data)
  needles = config.niah_repeats * sum(niah.PRESETS[t].num_needles for t in NIAH_TASKS
                                      if t in config.tasks)
  for size in sizes:
    docs = size // data.doc_length
    if docs < max(1, needles):
      raise ScaleError(f"--config.sizes: {size:,} tokens make {docs} documents of "
                       f"{data.doc_length} tokens, fewer than {max(1, needles)}")
    try:
      synthetic.check_corpus_spec(tok, spec, data.num_docs + data.eval_docs + docs)
    except ValueError as e:
      raise ScaleError(f"--config.sizes: {size:,} tokens ({docs:,} documents) do not fit the "
                       f"checkpoint's task: {e}") from None
  return trained_config


def run(config: ml_collections.ConfigDict) -> list[dict]:
  """The whole scale run (see the module docstring); returns the table's rows."""
  trained_config = check_config(config)
  out = Path(config.workdir)
  out.mkdir(parents=True, exist_ok=True)
  _log(f"[scale] restoring the checkpoint of {config.checkpoint_workdir}")
  trained = restore.load_trained(config.checkpoint_workdir, config.get("step"))
  tok, data = trained.tokenizer, trained_config.data
  _log("[scale] measuring matmul throughput and the encoder's FLOPs per token")
  gflops = matmul_gflops()
  flops_token = encode_flops_per_token(trained, config, data.doc_length)
  variants = [t for t in NIAH_TASKS if t in config.tasks]
  rows = []
  for size in sorted(config.sizes):
    num_docs = size // data.doc_length
    memories = []
    if "demo" in config.tasks:
      memories.append(demo_memory(tok, data, num_docs, config.questions))
    if variants:
      memories.append(niah_memory(tok, data, num_docs, variants, config.niah_repeats,
                                  config.seed))
    for memory in memories:
      path = out / "banks" / f"{memory.name}-{num_docs * data.doc_length}"
      _log(f"[scale] {num_docs * data.doc_length:,} memory tokens ({num_docs:,} documents), "
           f"{memory.name}: {len(memory.questions)} questions")
      bank, encode = ensure_bank(path, trained, memory, config)
      engine = TimedEngine(trained.model_config, trained.msa, trained.params, bank,
                           dtype=jnp.dtype(config.dtype))
      answers, route_ms = ask(engine, memory.questions, tok, trained_top_k=trained.msa.arch.top_k,
                              route_k=config.route_k, batch=config.question_batch,
                              id_digits=data.id_digits)
      for task, stats in summarize(answers).items():
        rows.append(dict(memory_tokens=num_docs * data.doc_length, num_docs=num_docs, task=task,
                         bank_bytes=bank_bytes(path),
                         encode_tokens_per_s=encode["tokens_per_s"],
                         encode_seconds=encode["seconds"],
                         encode_gflops=encode["tokens_per_s"] * flops_token / 1e9,
                         route_ms_per_question=route_ms, **stats))
        _log(f"[scale]   {task}: recall@1 {stats['recall@1']:.3f}, recall@{config.route_k} "
             f"{stats['recall@k']:.3f}, accuracy {stats['accuracy']:.3f}")
  table = format_table(rows, config.route_k)
  results = {"config": config.to_dict(), "checkpoint_step": trained.step,
             "matmul_gflops": gflops, "encode_flops_per_token": flops_token, "rows": rows}
  (out / RESULTS_FILE).write_text(json.dumps(results, indent=1) + "\n")
  (out / TABLE_FILE).write_text(table + "\n")
  plot(rows, out / PLOT_FILE, config.route_k,
       f"MSA memory scaling: {Path(config.checkpoint_workdir).name} step {trained.step}")
  print(table)
  best = max(r["encode_gflops"] for r in rows)
  print(f"encoder: {flops_token / 1e6:.2f} MFLOP per token; fastest encode {best:.1f} GFLOP/s "
        f"= {100 * best / gflops:.0f}% of this machine's {gflops:.1f} GFLOP/s float32 matmul")
  return rows


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise ScaleError(f"unexpected arguments {argv[1:]}")
  if flags.FLAGS.config is None:
    raise ScaleError("--config is required (e.g. --config=configs/scale.py)")
  runtime.start_command()
  run(flags.FLAGS.config)


if __name__ == "__main__":
  # Flags are defined only when run as a command, so importing this module defines none.
  config_flags.DEFINE_config_file(
      "config", None, validation.config_help("Scale config", "configs/scale.py"),
      lock_config=True)
  validation.run_app(main)
