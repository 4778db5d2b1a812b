"""Train short, infer long: the synthetic task at memories far larger than in training.

The demo trains with N documents per sample (N * L memory tokens). `extrapolation_table` asks
held-out questions against memories of x * N documents for x in `multipliers` (1, 10, 100,
1000 by default), through the inference engine: the documents are encoded once into a memory
bank (each size's bank holds a slice of one large held-out corpus, so larger memories add
distractors; a size too small to hold `questions` facts is asked as several disjoint memories
of that size), every question is routed against the whole bank and its answer generated
greedily. Per size it reports

  * routing recall@1 and recall@5: the question's document ranks first / within the top 5 of
    a router layer's scores over the whole memory, averaged over the router layers;
  * answer accuracy: the generated answer (`[ d d d d ]`, the identifier, or whatever the
    model was trained to answer: `include_value` / `include_identifier`) is exact;
  * what the wrong answers are (`classify_answer`): the answer to another question of a routed
    document (the model copied from the wrong place among what it read), of another document
    of the memory, or of no question (a garbled copy, e.g. the right digits in the wrong
    order); the row keeps the counts and a few examples.

With `global_positions` (the global-RoPE ablation), document m of the bank sits at positions
h + m * L + 0..L-1 and the prompt continues after the whole bank, as in training with
`data.rope = "global"`; the default is MSA's document-wise RoPE.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from msa_jax.data import synthetic
from msa_jax.inference import engine as engine_lib
from msa_jax.memory import encode as encode_lib
from msa_jax.inference.sampling import SamplingConfig
from msa_jax.model import ModelConfig, MSAConfig


@dataclasses.dataclass(frozen=True)
class ExtrapolationRow:
  """One memory size's results."""

  multiplier: int
  num_docs: int
  memory_tokens: int
  questions: int
  recall_at_1: float
  recall_at_5: float
  answer_accuracy: float
  seconds: float
  # Counts per `ANSWER_KINDS`, and up to `MAX_EXAMPLES` wrong answers as text (question,
  # expected, generated, kind).
  answer_kinds: dict[str, int] = dataclasses.field(default_factory=dict)
  wrong_examples: tuple[dict[str, str], ...] = ()


# What a generated answer is: the expected one; the answer to another question whose document
# was routed to this one (any router layer's top_k: the model copied from the wrong place among
# what it read); the answer to a question of another document of the memory; no question's.
ANSWER_KINDS = ("right", "routed_other", "other_doc", "no_doc")
MAX_EXAMPLES = 8


def classify_answer(generated: Sequence[int], expected: Sequence[int],
                    routed_docs: Collection[int],
                    answer_docs: Mapping[tuple[int, ...], int]) -> str:
  """The `ANSWER_KINDS` entry of `generated` (token ids, compared whole) for a question whose
  answer is `expected`; `answer_docs` maps each memory question's answer to its document."""
  generated = tuple(int(t) for t in generated)
  if generated == tuple(int(t) for t in expected):
    return "right"
  doc = answer_docs.get(generated)
  if doc is None:
    return "no_doc"
  return "routed_other" if doc in routed_docs else "other_doc"


@dataclasses.dataclass
class MemoryAnswers:
  """`evaluate_memory`'s per-question results: routing hits at 1 and at 5 (one array per router
  layer and batch), exact answers, their `ANSWER_KINDS`, and the wrong answers as text."""

  hits1: list[np.ndarray] = dataclasses.field(default_factory=list)
  hitsk: list[np.ndarray] = dataclasses.field(default_factory=list)
  exact: list[bool] = dataclasses.field(default_factory=list)
  kinds: list[str] = dataclasses.field(default_factory=list)
  wrong: list[dict[str, str]] = dataclasses.field(default_factory=list)

  def extend(self, other: MemoryAnswers) -> None:
    for field in dataclasses.fields(self):
      getattr(self, field.name).extend(getattr(other, field.name))


def _ranks(doc_scores: np.ndarray, target: np.ndarray) -> np.ndarray:
  """0-based rank of each question's target document (ties count against it)."""
  own = doc_scores[np.arange(len(target)), target]
  return (doc_scores >= own[:, None]).sum(1) - 1


def _memory_questions(corpus: synthetic.SyntheticCorpus, first_doc: int,
                      num_docs: int) -> np.ndarray:
  """Every question about documents [first_doc, first_doc + num_docs)."""
  return np.flatnonzero((corpus.key_doc >= first_doc) & (corpus.key_doc < first_doc + num_docs))


def _questions(corpus: synthetic.SyntheticCorpus, first_doc: int, num_docs: int,
               limit: int) -> np.ndarray:
  """Up to `limit` questions about documents [first_doc, first_doc + num_docs), spread
  evenly."""
  pool = _memory_questions(corpus, first_doc, num_docs)
  if len(pool) <= limit:
    return pool
  return pool[np.linspace(0, len(pool) - 1, limit).round().astype(int)]


def evaluate_memory(cfg: ModelConfig, msa: MSAConfig, params, corpus: synthetic.SyntheticCorpus,
                    arrays: dict[int, dict[str, np.ndarray]], first_doc: int, num_docs: int,
                    questions: np.ndarray, *, head: Sequence[int], global_positions: bool,
                    bank_dir: Path, batch_size: int = 32, answer: dict | None = None,
                    dtype=jnp.float32) -> MemoryAnswers:
  """The routing and answers of `questions` against corpus documents [first_doc, first_doc +
  num_docs), whose encoded blocks are `arrays` (`encode_documents` of the whole corpus)."""
  length = corpus.doc_length
  c = -(-length // msa.arch.chunk_size)
  docs = slice(first_doc, first_doc + num_docs)
  if global_positions and first_doc:  # positions restart at the memory's first document
    _, _, arrays = encode_lib.encode_documents(
        cfg, msa, params, list(corpus.doc_tokens[docs]), max_tokens=length, batch_size=256,
        dtype=dtype, position_starts=len(head) + np.arange(num_docs) * length, progress=None)
    docs = slice(0, num_docs)
  rows = slice(docs.start * c, docs.stop * c)
  bank = encode_lib.create_bank(bank_dir, cfg, msa, params, dtype=dtype, overwrite=True)
  bank.add([str(i) for i in range(num_docs)], None, np.full(num_docs, length),
           np.full(num_docs, c), {i: {k: v[rows] for k, v in a.items()}
                                  for i, a in arrays.items()})
  eng = engine_lib.MSAEngine(cfg, msa, params, bank, dtype=dtype)
  offset = num_docs * length if global_positions else msa.arch.top_k
  tok = corpus.tokenizer
  answer = answer or {}
  answer_len = len(corpus.answer_ids(0, **answer))
  sampling = SamplingConfig(temperature=0.0, max_new_tokens=answer_len,
                            stop_tokens=(tok.eos_id,), pad_id=tok.pad_id)
  # Every memory question's answer, to tell what a wrong answer copied.
  answer_docs = {tuple(corpus.answer_ids(int(q), **answer)): int(corpus.key_doc[q]) - first_doc
                 for q in _memory_questions(corpus, first_doc, num_docs)}
  out = MemoryAnswers()
  for lo in range(0, len(questions), batch_size):
    qs = questions[lo:lo + batch_size]
    prompts = engine_lib.PromptBatch.from_segments(
        [list(head)] * len(qs), [corpus.question_ids(int(q)) for q in qs],
        [[tok.answer_id]] * len(qs), position_offset=offset, pad_id=tok.pad_id)
    tokens, _, pre = eng.generate(prompts, sampling, keep_scores=True)
    target = corpus.key_doc[qs] - first_doc
    routed = [set() for _ in qs]
    for mem in pre.memory.values():
      scores = np.asarray(mem.doc_scores)
      ranks = _ranks(scores, target)
      out.hits1.append(ranks < 1)
      out.hitsk.append(ranks < 5)
      top = np.argsort(-scores, axis=1, kind="stable")[:, :msa.arch.top_k]
      for docs_of_q, row in zip(routed, top):
        docs_of_q.update(int(d) for d in row)
    for row, q, docs_of_q in zip(tokens, qs, routed):
      want = corpus.answer_ids(int(q), **answer)
      got = [int(t) for t in row[:len(want)]]
      kind = classify_answer(got, want, docs_of_q, answer_docs)
      out.exact.append(kind == "right")
      out.kinds.append(kind)
      if kind != "right":
        out.wrong.append(dict(question=tok.decode(corpus.question_ids(int(q))),
                              expected=tok.decode(want), generated=tok.decode(got), kind=kind))
  return out


def extrapolation_table(cfg: ModelConfig, msa: MSAConfig, params, tokenizer, *,
                        docs_per_sample: int, doc_length: int, facts_per_doc: int,
                        key_length: int, id_digits: int, seed: int,
                        fact_span: int | None = None, first_doc: int = 0,
                        multipliers: Sequence[int] = (1, 10, 100, 1000), questions: int = 64,
                        global_positions: bool = False, batch_size: int = 32,
                        include_value: bool = False, include_identifier: bool = True,
                        positional_keys: bool = False, id_after_fact: bool = False,
                        dtype=jnp.float32,
                        progress=sys.stdout) -> list[ExtrapolationRow]:
  """Evaluates memories of x * docs_per_sample held-out documents for x in `multipliers`.

  The held-out documents are documents first_doc, first_doc + 1, ... of the seed's document
  sequence (`synthetic.CorpusSpec`; training used the first ones). Sizes the vocabulary cannot
  hold (more documents than identifiers or unique keys) are skipped with a message. Returns one
  row per evaluated size.
  """
  spec = synthetic.CorpusSpec(doc_length=doc_length, facts_per_doc=facts_per_doc,
                              key_length=key_length, id_digits=id_digits,
                              positional_keys=positional_keys, id_after_fact=id_after_fact)
  max_docs = spec.max_docs(tokenizer) - first_doc
  sizes = []
  for x in sorted(set(int(x) for x in multipliers)):
    m = x * docs_per_sample
    if m > max_docs:
      print(f"[extrapolation] skipping {x}x ({m} documents): the vocabulary holds at most "
            f"{max_docs} (id_digits, unique keys)", file=progress, flush=True)
      continue
    sizes.append((x, m))
  if not sizes:
    return []
  corpus = synthetic.generate_corpus(
      tokenizer, num_docs=sizes[-1][1], doc_length=doc_length, facts_per_doc=facts_per_doc,
      key_length=key_length, id_digits=id_digits, fact_span=fact_span, seed=seed,
      first_doc=first_doc, positional_keys=positional_keys, id_after_fact=id_after_fact)
  head = [tokenizer.bos_id]
  starts = (len(head) + np.arange(corpus.num_docs) * doc_length) if global_positions else None
  start = time.perf_counter()
  _, _, arrays = encode_lib.encode_documents(
      cfg, msa, params, list(corpus.doc_tokens), max_tokens=doc_length, batch_size=256,
      dtype=dtype, position_starts=starts, progress=None)
  print(f"[extrapolation] encoded {corpus.num_docs} held-out documents in "
        f"{time.perf_counter() - start:.1f} s", file=progress, flush=True)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for x, m in sizes:
      t0 = time.perf_counter()
      # Small memories hold few questions: ask them of several disjoint memories of that size.
      groups = max(1, min(-(-questions // (m * facts_per_doc)), corpus.num_docs // m))
      result, asked = MemoryAnswers(), 0
      for g in range(groups):
        qs = _questions(corpus, g * m, m, -(-questions // groups))
        result.extend(evaluate_memory(
            cfg, msa, params, corpus, arrays, g * m, m, qs, head=head,
            global_positions=global_positions, bank_dir=Path(tmp) / f"bank_x{x}_{g}",
            batch_size=batch_size, dtype=dtype,
            answer=dict(include_value=include_value, include_identifier=include_identifier)))
        asked += len(qs)
      r1 = float(np.mean(np.concatenate(result.hits1)))
      rk = float(np.mean(np.concatenate(result.hitsk)))
      acc = float(np.mean(result.exact))
      kinds = {k: result.kinds.count(k) for k in ANSWER_KINDS}
      rows.append(ExtrapolationRow(x, m, m * doc_length, asked, r1, rk, acc,
                                   time.perf_counter() - t0, kinds,
                                   tuple(result.wrong[:MAX_EXAMPLES])))
      print(f"[extrapolation] {x}x: {m} documents, recall@1 {r1:.3f}, answer accuracy "
            f"{acc:.3f}", file=progress, flush=True)
  return rows


def format_table(rows: Sequence[ExtrapolationRow], title: str = "") -> str:
  """A plain-text table of the rows."""
  lines = [title] if title else []
  lines.append(f"{'memory':>8} {'documents':>10} {'tokens':>10} {'questions':>9} "
               f"{'recall@1':>9} {'recall@5':>9} {'answer':>7} {'wrong r/o/n':>12}")
  for r in rows:
    wrong = "/".join(str(r.answer_kinds.get(k, 0)) for k in ANSWER_KINDS[1:])
    lines.append(f"{f'{r.multiplier}x':>8} {r.num_docs:>10,} {r.memory_tokens:>10,} "
                 f"{r.questions:>9} {r.recall_at_1:>9.3f} {r.recall_at_5:>9.3f} "
                 f"{r.answer_accuracy:>7.3f} {wrong:>12}")
  if len(rows) > 1:
    first, last = rows[0], rows[-1]
    loss = [relative_loss(getattr(first, name), getattr(last, name))
            for name in ("recall_at_1", "answer_accuracy")]
    lines.append(f"relative loss {first.multiplier}x -> {last.multiplier}x "
                 f"({last.memory_tokens:,} tokens): recall@1 "
                 + ", answer ".join("n/a" if x is None else f"{x:.1%}" for x in loss))
  lines.append("wrong r/o/n: wrong answers that are another routed document's / another memory "
               "document's / no memory document's")
  return "\n".join(lines)


def relative_loss(small: float, large: float) -> float | None:
  """(small - large) / small: the fraction of the small memory's score lost at the large one
  (None when the small memory scores 0)."""
  return (small - large) / small if small > 0 else None
