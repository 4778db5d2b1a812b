"""NIAH at growing memory sizes through the inference engine (bank -> routing -> generation).

The library behind `python -m msa_jax.niah --config=configs/niah.py --workdir=/tmp/niah
--config.checkpoint_workdir=/tmp/msa_demo` (or `--config.random_model=tiny`).

For every variant (`single`, `multikey`, `multivalue`, ... of `niah.PRESETS`) and memory size
(`base_tokens` x 1, x factor, x factor^2, ...), `niah.build_suite` builds haystacks; each
haystack's documents are encoded into a fresh `MemoryBank`, and the questions go through
`MSAEngine.generate` (greedy). Written to the workdir: `niah_results.json` (settings, one row per
variant and size, every task's questions with their routed documents and generations),
`niah_table.txt` (the table also printed) and `niah_scaling.png` (the curves).

Documents and prompts follow the synthetic training task (`msa_jax.data.synthetic`):

  document  <doc> [ 0 4 2 7 ] w3 w17 ... <fact> k5 k12 v9 ... w8   (a haystack segment after an
                                                                     identifier prefix)
  prompt    <bos> | <query> k5 k12 | <answer>      -> the model writes `[ 0 4 2 7 ] [v9] <eos>`

with the training position layout (positions after the head shifted by the trained top_k).

Metrics, means over questions (then over the samples of a size):
  recall_L{i}     the fraction of the asked key's needles held by a document that router layer i
                  selected (its top-k; `niah.routing_recall`).
  recall_any      the same over the union of all router layers' selections.
  chance          what one router layer's recall would be with top-k drawn at random.
  bm25_recall     (`bm25=True`) the same for BM25's top-k on the key words: a lexical reference.
  id_accuracy     the generated identifier names a document holding one of the key's needles.
  exact_match, value_recall
                  `niah.answer_scores` of the generated words after the identifier.

A model trained on the demo config (`include_value=False`) learns to answer document
identifiers only: for it the meaningful metrics are the routing recalls and id_accuracy; value
accuracy (exact_match, value_recall) needs a model trained with `data.include_value=True`. A
random model (`random_model`) measures only the machinery (recall near top_k / documents).
Everything is deterministic: the tasks, identifiers and random parameters follow the seed, and
decoding is greedy.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging as pylogging
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from msa_jax import tasks
from msa_jax.checkpoint.hf import dtype_from_name
from msa_jax.data import synthetic
from msa_jax.data import bm25, niah
from msa_jax.evaluation import report
from msa_jax.inference import engine as engine_lib
from msa_jax.memory import encode as encode_lib
from msa_jax.inference.sampling import SamplingConfig
from msa_jax.loading import restore
from msa_jax.model import MSAConfig, MSATransformer, ModelConfig, get_preset, init_params
from msa_jax.validation import format_duration

RESULTS_FILE = "niah_results.json"
TABLE_FILE = "niah_table.txt"
PLOT_FILE = "niah_scaling.png"
DEFAULT_VARIANTS = ("single", "multikey", "multivalue")
# The tasks whose models NIAH evaluates (the synthetic vocabulary and prompt layout).
NIAH_TASKS = tasks.with_evaluator("niah")


@dataclasses.dataclass(frozen=True, eq=False)
class NiahModel:
  """A model that reads the synthetic vocabulary, with what its training task looked like.

  Attributes:
    config, msa, params: the MSA model.
    tokenizer: its `SyntheticTokenizer`.
    id_digits: digits of the document identifiers it was trained to write.
    key_length, value_length: words per key and per value in its training facts.
    include_value: it was trained to write the value after the identifier.
    position_offset: the prompt position shift it was trained with (the trained top_k).
    dtype: compute dtype.
    name: a label for the results.
  """
  config: ModelConfig
  msa: MSAConfig
  params: Any
  tokenizer: synthetic.SyntheticTokenizer
  id_digits: int = 4
  key_length: int = 2
  value_length: int = 1
  include_value: bool = False
  position_offset: int | None = None
  dtype: Any = jnp.float32
  name: str = "model"

  @property
  def offset(self) -> int:
    return self.msa.arch.top_k if self.position_offset is None else self.position_offset


@dataclasses.dataclass(frozen=True)
class NiahEvalSettings:
  """What to measure.

  Attributes:
    variants: `niah.PRESETS` names.
    base_tokens, num_scales, factor: memory sizes `niah.memory_sizes(base, num_scales, factor)`.
    samples_per_size: haystacks per variant and size (different seeds).
    doc_tokens: G, a memory document's slot length, the identifier prefix included.
    id_prefix: start every document with `<doc> [ id ]`, as in the synthetic training corpus.
    top_k: documents routed per router layer; None: the model's (the prompt positions keep the
      trained offset either way).
    max_new_tokens: generation budget; None: the longest expected answer plus slack.
    encode_batch: documents per encoder forward.
    bm25: also rank the documents with BM25 on the key words (`bm25_recall`, the same top-k; a
      lexical reference that the unique key words make easy; needs bm25s).
    seed: seeds the haystacks and identifiers.
  """
  variants: tuple[str, ...] = DEFAULT_VARIANTS
  base_tokens: int = 512
  num_scales: int = 3
  factor: int = 10
  samples_per_size: int = 2
  doc_tokens: int = 64
  id_prefix: bool = True
  top_k: int | None = None
  max_new_tokens: int | None = None
  encode_batch: int = 32
  bm25: bool = False
  seed: int = 0


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def random_model(preset: str = "tiny", *, seed: int = 0, top_k: int = 2, chunk_size: int = 16,
                 tokenizer: synthetic.SyntheticTokenizer | None = None,
                 **overrides) -> NiahModel:
  """A randomly initialised MSA model over the synthetic vocabulary (routers included).

  Args:
    preset: a `msa_jax.model` preset name; its vocab_size becomes the tokenizer's.
    seed: parameter seed.
    top_k, chunk_size: MSA settings (other MSA fields keep their defaults).
    tokenizer: the vocabulary (default: `SyntheticTokenizer()`).
    **overrides: `ModelConfig` fields to change (e.g. num_layers=2).
  """
  tok = synthetic.SyntheticTokenizer() if tokenizer is None else tokenizer
  cfg = get_preset(preset).replace(vocab_size=tok.vocab_size, **overrides)
  msa = MSAConfig(top_k=top_k, chunk_size=chunk_size)
  params = init_params(MSATransformer(cfg, msa), jax.random.key(seed))
  return NiahModel(config=cfg, msa=msa, params=params, tokenizer=tok,
                   name=f"random {preset} (seed {seed})")


def trained_model(workdir, step: int | None = None) -> NiahModel:
  """The model of a `python -m msa_jax.train` workdir trained on the synthetic task.

  Raises:
    ValueError: the run did not train on the synthetic task (its vocabulary is not NIAH's).
  """
  config = restore.load_config(workdir)
  if config.data.kind not in NIAH_TASKS:
    raise ValueError(f"{workdir} trained on data.kind={config.data.kind!r}; NIAH needs a model "
                     "trained on the synthetic task (data.kind='synthetic')")
  trained = restore.load_trained(workdir, step)
  d = config.data
  return NiahModel(
      config=trained.model_config, msa=trained.msa, params=trained.params,
      tokenizer=trained.tokenizer, id_digits=int(d.id_digits),
      key_length=int(d.get("key_length", 2)), value_length=int(d.get("value_length", 1)),
      include_value=bool(d.get("include_value", False)), position_offset=trained.msa.arch.top_k,
      dtype=dtype_from_name(config.get("dtype", "float32")),
      name=f"{Path(workdir).name} step {trained.step}")


# --------------------------------------------------------------------------------------------
# Documents, prompts and answers
# --------------------------------------------------------------------------------------------


def prefix_tokens(id_digits: int) -> int:
  """Tokens of a document's identifier prefix `<doc> [ d ... d ]`."""
  return 3 + id_digits


def document_identifiers(num_docs: int, id_digits: int, seed: int) -> np.ndarray:
  """[num_docs] distinct random identifiers below 10 ** id_digits (a function of the seed)."""
  if num_docs > 10 ** id_digits:
    raise ValueError(f"{num_docs} documents need distinct identifiers but id_digits={id_digits} "
                     f"gives only {10 ** id_digits}; lower the memory size or raise id_digits")
  rng = np.random.default_rng([seed, 7])
  return rng.choice(10 ** id_digits, size=num_docs, replace=False).astype(np.int64)


def memory_documents(task: niah.NiahTask, tokenizer: synthetic.SyntheticTokenizer,
                     identifiers: np.ndarray | None, id_digits: int) -> list[list[int]]:
  """Token ids of the task's documents, each after `<doc> [ id ]` unless identifiers is None."""
  docs = []
  for i, text in enumerate(task.documents):
    head = [] if identifiers is None else (
        [tokenizer.doc_id] + tokenizer.identifier_ids(int(identifiers[i]), id_digits))
    docs.append(head + tokenizer.encode(text))
  return docs


def question_prompts(task: niah.NiahTask, model: NiahModel) -> engine_lib.PromptBatch:
  """`<bos> | <query> key | <answer>` for each question, with the trained position layout."""
  tok = model.tokenizer
  queries = [tok.encode(q.query) for q in task.questions]
  n = len(queries)
  return engine_lib.PromptBatch.from_segments(
      [[tok.bos_id]] * n, queries, [[tok.answer_id]] * n, position_offset=model.offset,
      pad_id=tok.pad_id)


def parse_answer(words: Sequence[str], id_digits: int) -> tuple[int | None, list[str]]:
  """(identifier, the remaining words) of a generated answer `[ d ... d ] value... <eos>`.

  The identifier is None unless the answer starts with a well-formed one; the remaining words
  are everything after it (all words, identifier characters dropped, when it is malformed).
  """
  words = list(words)
  digits = words[1:1 + id_digits]
  if (len(words) >= id_digits + 2 and words[0] == synthetic.ID_OPEN
      and words[id_digits + 1] == synthetic.ID_CLOSE and all(w in synthetic.DIGITS
                                                             for w in digits)):
    return int("".join(digits)), words[id_digits + 2:]
  skip = {synthetic.ID_OPEN, synthetic.ID_CLOSE, *synthetic.DIGITS}
  return None, [w for w in words if w not in skip]


def default_max_new_tokens(model: NiahModel, specs: Sequence[niah.NiahSpec]) -> int:
  """The longest expected answer (identifier, every value of a key, `<eos>`) plus 2."""
  values = max(s.num_values * s.value_length for s in specs)
  return prefix_tokens(model.id_digits) - 1 + values + 1 + 2


def variant_spec(name: str, model: NiahModel) -> niah.NiahSpec:
  """A preset with the model's key and value lengths."""
  if name not in niah.PRESETS:
    raise ValueError(f"unknown NIAH variant {name!r}; known: {sorted(niah.PRESETS)}")
  return dataclasses.replace(niah.PRESETS[name], key_length=model.key_length,
                             value_length=model.value_length)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def chance_recall(question: niah.NiahQuestion, num_docs: int, top_k: int) -> float:
  """The expected `niah.routing_recall` of top_k documents drawn uniformly at random."""
  k = min(top_k, num_docs)
  miss = lambda held: math.comb(num_docs - len(held), k) / math.comb(num_docs, k)
  return float(np.mean([1.0 - miss(docs) for docs in question.needle_docs]))


def _bm25_routed(task: niah.NiahTask, k: int) -> list[list[int]]:
  """Each question's k best documents by BM25 on its key words (no stopwords, no stemming)."""
  import bm25s  # pylint: disable=import-outside-toplevel,unused-import
  pylogging.getLogger("bm25s").setLevel(pylogging.WARNING)  # else a line per index
  retriever = bm25.BM25Retriever(dict(enumerate(task.documents)), stopwords=None)
  return [[int(d) for d in retriever.search(q.key, k)] for q in task.questions]


def evaluate_task(model: NiahModel, task: niah.NiahTask, bank_path, *, settings: NiahEvalSettings,
                  sampling: SamplingConfig) -> dict[str, Any]:
  """Encodes one haystack into a bank at `bank_path` (replaced), asks its questions, scores them.

  Returns:
    {"metrics": {name: mean over questions}, "num_docs", "questions": [per question: query,
     expected values, needle documents and their identifiers, routed documents per router layer
     with their scores, the generated text and parsed identifier]}.
  """
  tok = model.tokenizer
  ids = (document_identifiers(len(task.segments), model.id_digits, task.seed)
         if settings.id_prefix else None)
  docs = memory_documents(task, tok, ids, model.id_digits)
  bank = encode_lib.create_bank(bank_path, model.config, model.msa, model.params,
                                dtype=model.dtype, overwrite=True)
  texts = [tok.decode(d) for d in docs]
  encode_lib.encode_corpus(bank, model.config, model.msa, model.params,
                           [str(i) for i in range(len(docs))], docs, texts,
                           max_tokens=settings.doc_tokens, batch_size=settings.encode_batch,
                           dtype=model.dtype, progress=None)
  msa = model.msa if settings.top_k is None else model.msa.replace(top_k=settings.top_k)
  engine = engine_lib.MSAEngine(model.config, msa, model.params, bank, dtype=model.dtype)
  tokens, lengths, pre = engine.generate(question_prompts(task, model), sampling)

  routed = {layer: [[int(d) for d in row] for row in engine_lib.routed_doc_ids(bank, mem)]
            for layer, mem in pre.memory.items()}
  scores = {layer: np.asarray(mem.scores) for layer, mem in pre.memory.items()}
  questions, answers, metrics = [], [], collections.defaultdict(list)
  bm25 = _bm25_routed(task, msa.arch.top_k) if settings.bm25 else None
  for qi, q in enumerate(task.questions):
    words = tok.decode(tokens[qi, :lengths[qi]]).split()
    identifier, rest = parse_answer(words, model.id_digits)
    answers.append(" ".join(rest))
    union = sorted({d for layer in routed for d in routed[layer][qi]})
    for layer in routed:
      metrics[f"recall_L{layer}"].append(niah.routing_recall(q, routed[layer][qi]))
    metrics["recall_any"].append(niah.routing_recall(q, union))
    metrics["chance"].append(chance_recall(q, len(docs), msa.arch.top_k))
    if bm25 is not None:
      metrics["bm25_recall"].append(niah.routing_recall(q, bm25[qi]))
    needle_ids = [] if ids is None else [int(ids[d]) for d in q.doc_ids]
    if ids is not None:
      metrics["id_accuracy"].append(float(identifier in needle_ids))
    questions.append(dict(
        query=q.query, values=list(q.values), needle_docs=list(q.doc_ids),
        needle_identifiers=needle_ids, generated=" ".join(words), identifier=identifier,
        routed={str(layer): routed[layer][qi] for layer in routed},
        routed_scores={str(layer): [round(float(s), 6) for s in scores[layer][qi][
            :len(routed[layer][qi])]] for layer in routed}))
  out = {name: float(np.mean(v)) for name, v in metrics.items()}
  out.update(niah.score_task(task, answers=answers))
  return dict(metrics=out, num_docs=len(docs), questions=questions)


def _eta(done_tokens: int, total_tokens: int, began: float) -> str:
  """`ETA 3m05s` at the time per memory token so far (a task's time grows with its memory)."""
  if done_tokens >= total_tokens:
    return "done"
  rate = (time.perf_counter() - began) / max(done_tokens, 1)
  return f"ETA {format_duration((total_tokens - done_tokens) * rate)}"


def _mean_rows(records: Sequence[dict]) -> list[dict]:
  """One row per (variant, memory_tokens): the metrics' means over the samples."""
  groups = collections.OrderedDict()
  for r in records:
    groups.setdefault((r["variant"], r["memory_tokens"]), []).append(r)
  rows = []
  for (variant, size), group in groups.items():
    names = list(group[0]["metrics"])
    rows.append(dict(variant=variant, memory_tokens=size,
                     num_docs=float(np.mean([g["num_docs"] for g in group])),
                     samples=len(group),
                     **{n: float(np.mean([g["metrics"][n] for g in group])) for n in names}))
  return rows


def evaluate_niah(model: NiahModel, settings: NiahEvalSettings = NiahEvalSettings(), *,
                  bank_dir=None, progress=sys.stderr) -> dict[str, Any]:
  """Every variant at every memory size: builds the tasks, encodes, asks, scores.

  Args:
    model: the model (see `random_model`, `trained_model`).
    settings: variants, sizes and options.
    bank_dir: where the banks go (one per task, replaced, kept); None: a temporary directory
      (each bank deleted once its task is scored).
    progress: a stream for one line per task, or None.

  Returns:
    {"model", "settings", "rows": per (variant, size) means, "tasks": per task records}.
  """
  specs = {name: variant_spec(name, model) for name in settings.variants}
  n_new = settings.max_new_tokens or default_max_new_tokens(model, list(specs.values()))
  sampling = SamplingConfig(temperature=0.0, max_new_tokens=n_new,
                            stop_tokens=tuple(model.tokenizer.stop_ids),
                            pad_id=model.tokenizer.pad_id)
  budget = settings.doc_tokens - (prefix_tokens(model.id_digits) if settings.id_prefix else 0)
  tmp = tempfile.mkdtemp(prefix="niah_banks_") if bank_dir is None else None
  root = Path(tmp if bank_dir is None else bank_dir)
  records = []
  sizes = niah.memory_sizes(settings.base_tokens, settings.num_scales, settings.factor)
  total = len(specs) * len(sizes) * settings.samples_per_size
  total_tokens, done_tokens = total * sum(sizes) // len(sizes), 0
  began = time.perf_counter()
  try:
    for name, spec in specs.items():
      tasks = niah.build_suite(model.tokenizer, spec, base_tokens=settings.base_tokens,
                               doc_tokens=budget, num_scales=settings.num_scales,
                               factor=settings.factor,
                               samples_per_size=settings.samples_per_size, seed=settings.seed)
      for i, task in enumerate(tasks):
        start = time.perf_counter()
        path = root / f"{name}-{task.memory_tokens}-{i}"
        result = evaluate_task(model, task, path, settings=settings, sampling=sampling)
        seconds = time.perf_counter() - start
        if tmp is not None:
          shutil.rmtree(path, ignore_errors=True)
        records.append(dict(variant=name, memory_tokens=task.memory_tokens, seed=task.seed,
                            seconds=round(seconds, 3), **result))
        done_tokens += task.memory_tokens
        if progress is not None:
          shown = " ".join(f"{k}={v:.2f}" for k, v in result["metrics"].items())
          print(f"[niah] {len(records)}/{total} {name} {task.memory_tokens} tokens, "
                f"{result['num_docs']} docs ({seconds:.1f}s; {_eta(done_tokens, total_tokens, began)}"
                f"): {shown}", file=progress, flush=True)
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
  return dict(model=dict(name=model.name, include_value=model.include_value,
                         router_layers=list(
                             model.msa.arch.router_layer_ids(model.config.num_layers)),
                         top_k=settings.top_k or model.msa.arch.top_k, id_digits=model.id_digits),
              settings=dataclasses.asdict(settings), rows=_mean_rows(records), tasks=records)


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def format_table(rows: Sequence[dict]) -> str:
  """A fixed-width text table of `evaluate_niah(...)["rows"]`."""
  if not rows:
    return "(no results)"
  metric_names = [k for k in rows[0] if k not in ("variant", "memory_tokens", "num_docs",
                                                  "samples")]
  header = ["variant", "memory", "docs"] + metric_names
  lines = [[r["variant"], str(r["memory_tokens"]), f"{r['num_docs']:.0f}"]
           + [f"{r[m]:.3f}" for m in metric_names] for r in rows]
  return report.format_columns(header, lines)


def plot_scaling(rows: Sequence[dict], title: str = "NIAH vs memory size"):
  """A matplotlib Figure: routing recall (left) and answer accuracy (right) vs memory tokens.

  Built with `matplotlib.figure.Figure` (no pyplot, no display backend needed): save it with
  `fig.savefig(path)`, or show it in a notebook by returning it from a cell.
  """
  fig, (ax_route, ax_answer) = report.memory_figure(2, title)
  variants = list(dict.fromkeys(r["variant"] for r in rows))
  for n, variant in enumerate(variants):
    mine = [r for r in rows if r["variant"] == variant]
    x = [r["memory_tokens"] for r in mine]
    color = f"C{n}"
    ax_route.plot(x, [r["recall_any"] for r in mine], "o-", color=color, label=variant)
    if "bm25_recall" in mine[0]:
      ax_route.plot(x, [r["bm25_recall"] for r in mine], "x--", color=color, alpha=0.6,
                    label=f"{variant} BM25")
    for k, layer in enumerate(k for k in mine[0] if k.startswith("recall_L")):
      ax_route.plot(x, [r[layer] for r in mine], ":", color=color, alpha=0.5,
                    label=f"{variant} {layer[7:]}" if len(variants) == 1 else None)
    if "id_accuracy" in mine[0]:
      ax_answer.plot(x, [r["id_accuracy"] for r in mine], "o-", color=color,
                     label=f"{variant} identifier")
    ax_answer.plot(x, [r["exact_match"] for r in mine], "s--", color=color,
                   label=f"{variant} value EM")
  report.style_memory_axis(ax_route, "routing recall (any router layer; dotted: per layer)")
  report.style_memory_axis(ax_answer, "answer accuracy")
  return fig


def write_results(results: dict, workdir) -> dict[str, Path]:
  """Writes the JSON, the table and the plot into `workdir`; returns their paths."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  paths = {"json": workdir / RESULTS_FILE, "table": workdir / TABLE_FILE,
           "plot": workdir / PLOT_FILE}
  paths["json"].write_text(json.dumps(results, indent=1) + "\n")
  paths["table"].write_text(format_table(results["rows"]) + "\n")
  plot_scaling(results["rows"], title=f"NIAH vs memory size: {results['model']['name']}"
               ).savefig(paths["plot"], dpi=120)
  return paths


def run(workdir, model: NiahModel, settings: NiahEvalSettings = NiahEvalSettings(), *,
        keep_banks: bool = False, progress=sys.stderr) -> dict[str, Any]:
  """`evaluate_niah`, then `write_results` into `workdir` (banks in `<workdir>/banks` when
  `keep_banks`); prints the table to stdout."""
  bank_dir = Path(workdir) / "banks" if keep_banks else None
  results = evaluate_niah(model, settings, bank_dir=bank_dir, progress=progress)
  paths = write_results(results, workdir)
  print(f"NIAH, {results['model']['name']}, top_k={results['model']['top_k']}")
  print(format_table(results["rows"]))
  if not model.include_value:
    print("(this model was not trained to write values: exact_match / value_recall are not "
          "meaningful for it; read recall_* and id_accuracy)")
  print(f"wrote {', '.join(str(p) for p in paths.values())}")
  return results
