"""Needle-in-a-haystack (NIAH) tasks over the synthetic vocabulary, in the style of RULER's NIAH.

A haystack is a long text of filler words (`w*` of `SyntheticTokenizer`), written as sentences
(one per line) grouped in paragraphs (separated by a blank line). Needles are sentences

  <fact> k5 k12 v9            (a key of `key_length` key words, a value of `value_length` value
                               words, the same fact layout as the synthetic training corpus)

inserted between sentences at chosen depths (0 = the start, 1 = the end of the filler). The
haystack is then split by `msa_jax.data.segment.segment_text` into memory documents of at most
`doc_tokens` tokens; a needle is one sentence, so it is never cut. A question names a key,
`<query> k5 k12`, and expects every value stored under it.

Variants (`NiahSpec`, with RULER's names in `PRESETS`):
  single      one needle, one question.
  multikey    `num_keys` needles with distinct keys; one key is asked, the others distract.
  multivalue  one key written `num_values` times with distinct values; all must be returned.
  multiquery  several of the keys are asked (one question each).

`build_streamed_niah` builds the same variants at any size (100M tokens and more): the haystack
is a sequence of fixed-length documents, each computed on demand from (seed, its index)
(`StreamedNiah.document_tokens(start, stop)`, `.stream(block_docs=...)`), optionally prefixed
with a unique identifier `<doc> [ d.. ]` so a model trained on the synthetic memory task can
answer with the identifier of the needle's document; only the needles are kept in memory.

Memory sizes grow by a factor (`memory_sizes`: 1x, 10x, 100x ... a base size); the total length
counts every token of the haystack, needles included. Everything is a pure function of the seed.

Scoring: `answer_scores` (exact match: the generated value words are exactly the expected ones,
in any order; value recall: the fraction of expected values that appear in the generation, as
RULER's string_match_all), `routing_recall` (the fraction of the question's needles held by a
routed document), and `score_task` (their means over a task's questions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from msa_jax.data import segment
from msa_jax.data.synthetic import (FACT, QUERY, SPECIAL_TOKENS, SyntheticTokenizer, hash_draws,
                                    key_words, keyed_permutation, words_per_key_position)
from msa_jax.validation import int_at_least


@dataclasses.dataclass(frozen=True)
class NiahSpec:
  """What a haystack hides and what is asked.

  Attributes:
    num_keys: distinct keys written in the haystack (the asked ones plus distractors).
    num_values: values written under each key, one needle each (distinct per key).
    num_queries: keys asked, one question each (the first `num_queries` keys).
    key_length: key words per key.
    positional_keys: key position p draws its word from its own block of
      num_key_words // key_length key words (as `synthetic.CorpusSpec.positional_keys`: a model
      trained on such keys is asked keys of the same kind).
    value_length: value words per value.
    min_sentence, max_sentence: filler words per haystack sentence (uniform, inclusive).
    min_paragraph, max_paragraph: sentences per paragraph (uniform, inclusive).
  """
  num_keys: int = 1
  num_values: int = 1
  num_queries: int = 1
  key_length: int = 2
  value_length: int = 1
  positional_keys: bool = False
  min_sentence: int = 6
  max_sentence: int = 14
  min_paragraph: int = 3
  max_paragraph: int = 8

  @property
  def num_needles(self) -> int:
    return self.num_keys * self.num_values

  def key_words_per_position(self, tokenizer: SyntheticTokenizer) -> int:
    """Key words each key position draws from."""
    return words_per_key_position(tokenizer, self.key_length, self.positional_keys)

  @property
  def needle_tokens(self) -> int:
    """Tokens of one needle sentence: the marker, the key, the value."""
    return 1 + self.key_length + self.value_length


PRESETS = {
    "single": NiahSpec(),
    "multikey": NiahSpec(num_keys=4),
    "multivalue": NiahSpec(num_values=4),
    "multiquery": NiahSpec(num_keys=4, num_queries=2),
}


@dataclasses.dataclass(frozen=True)
class Needle:
  """One inserted fact.

  Attributes:
    key: key words, space-separated.
    value: value words, space-separated.
    depth: requested depth in [0, 1].
    start, end: character span of the needle sentence in the haystack.
    docs: indices of the documents that hold the whole needle (one, or more with overlap).
  """
  key: str
  value: str
  depth: float
  start: int
  end: int
  docs: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class NiahQuestion:
  """A question and its expected answers.

  Attributes:
    query: `<query> key...`, the routing query / question text.
    key: the asked key.
    values: every value stored under the key, in haystack order.
    needles: indices into `NiahTask.needles` of the key's needles (same order as values).
    needle_docs: for each of those needles, the documents holding it.
  """
  query: str
  key: str
  values: tuple[str, ...]
  needles: tuple[int, ...]
  needle_docs: tuple[tuple[int, ...], ...]

  @property
  def answer(self) -> str:
    """The expected answer text: the values, space-separated."""
    return " ".join(self.values)

  @property
  def doc_ids(self) -> tuple[int, ...]:
    """Sorted indices of every document holding one of the key's needles."""
    return tuple(sorted({d for docs in self.needle_docs for d in docs}))


@dataclasses.dataclass(frozen=True)
class NiahTask:
  """A haystack, its memory documents and its questions.

  Attributes:
    text: the haystack.
    segments: the memory documents (`segment.Segment`: text, character span, token count).
    needles: the inserted needles, in haystack order.
    questions: one per asked key.
    memory_tokens: tokens of the haystack (needles included).
    doc_tokens: the document budget used to segment it.
    spec: the variant.
    seed: the seed it was built from.
  """
  text: str
  segments: tuple[segment.Segment, ...]
  needles: tuple[Needle, ...]
  questions: tuple[NiahQuestion, ...]
  memory_tokens: int
  doc_tokens: int
  spec: NiahSpec
  seed: int

  @property
  def documents(self) -> tuple[str, ...]:
    """The memory documents' texts; document ids are indices into this tuple."""
    return tuple(s.text for s in self.segments)


def check_spec(spec: NiahSpec, tokenizer: SyntheticTokenizer) -> None:
  """Raises ValueError naming a field that is out of range or needs more words than exist."""
  for name in ("num_keys", "num_values", "num_queries", "key_length", "value_length",
               "min_sentence", "max_sentence", "min_paragraph", "max_paragraph"):
    int_at_least(f"spec.{name}", getattr(spec, name), 1)
  if spec.num_queries > spec.num_keys:
    raise ValueError(f"spec.num_queries={spec.num_queries} exceeds spec.num_keys={spec.num_keys}")
  if spec.max_sentence < spec.min_sentence or spec.max_paragraph < spec.min_paragraph:
    raise ValueError(f"empty ranges: sentence [{spec.min_sentence}, {spec.max_sentence}], "
                     f"paragraph [{spec.min_paragraph}, {spec.max_paragraph}]")
  if spec.positional_keys and tokenizer.num_key_words < spec.key_length:
    raise ValueError(f"spec.positional_keys needs num_key_words >= key_length; got "
                     f"num_key_words={tokenizer.num_key_words}, key_length={spec.key_length}")
  per_position = spec.key_words_per_position(tokenizer)
  keys = per_position ** spec.key_length
  if spec.num_keys > keys:
    raise ValueError(f"spec.num_keys={spec.num_keys} needs distinct keys, but only {keys} exist "
                     f"({per_position} key words per position ** key_length={spec.key_length})")
  values = tokenizer.num_value_words ** spec.value_length
  if spec.num_values > values:
    raise ValueError(f"spec.num_values={spec.num_values} needs distinct values, but only {values} "
                     f"exist (num_value_words={tokenizer.num_value_words} ** "
                     f"value_length={spec.value_length})")


def memory_sizes(base_tokens: int, num_scales: int = 3, factor: int = 10) -> list[int]:
  """[base, base * factor, base * factor ** 2, ...]: `num_scales` memory sizes in tokens."""
  base_tokens = int_at_least("base_tokens", base_tokens, 1)
  num_scales = int_at_least("num_scales", num_scales, 1)
  factor = int_at_least("factor", factor, 2)
  return [base_tokens * factor ** i for i in range(num_scales)]


def _words(prefix: str, codes: np.ndarray, base: int, length: int) -> list[str]:
  """Codes in [0, base ** length) written as `length` words `{prefix}{digit}`."""
  powers = base ** np.arange(length - 1, -1, -1)
  digits = (np.asarray(codes)[:, None] // powers) % base
  return [" ".join(f"{prefix}{d}" for d in row) for row in digits.tolist()]


def _filler(rng: np.random.Generator, spec: NiahSpec, tokens: int,
            num_words: int) -> list[list[str]]:
  """Filler sentences (lists of words) adding up to exactly `tokens` words."""
  sizes, total = [], 0
  while total < tokens:
    sizes.append(int(rng.integers(spec.min_sentence, spec.max_sentence + 1)))
    total += sizes[-1]
  if sizes:
    sizes[-1] -= total - tokens
  words = [f"w{i}" for i in rng.integers(0, num_words, size=tokens).tolist()]
  cuts = np.cumsum([0, *sizes])
  return [words[a:b] for a, b in zip(cuts[:-1], cuts[1:])]


def _checked_arguments(tokenizer: SyntheticTokenizer, spec: NiahSpec | str, memory_tokens: int,
                       doc_tokens: int, seed: int) -> tuple[NiahSpec, int, int, int]:
  """(spec, memory_tokens, doc_tokens, seed) of a builder, checked; a preset name resolved."""
  if isinstance(spec, str):
    if spec not in PRESETS:
      raise ValueError(f"unknown NIAH preset {spec!r}; known: {sorted(PRESETS)}")
    spec = PRESETS[spec]
  check_spec(spec, tokenizer)
  return (spec, int_at_least("memory_tokens", memory_tokens, 1),
          int_at_least("doc_tokens", doc_tokens, 1), int_at_least("seed", seed, 0))


def _draw_facts(rng: np.random.Generator, tokenizer: SyntheticTokenizer, spec: NiahSpec,
                depths: Sequence[float] | None,
                place: Callable[[float], tuple] | None = None
                ) -> tuple[list[str], list[tuple]]:
  """(keys, facts): the needles' depths (drawn uniformly when None, else checked), then
  `spec.num_keys` distinct keys and, key by key, `spec.num_values` distinct values; a fact is
  (key, value, depth, *place(depth)), listed key by key (`place`, when given, may draw from
  `rng` too).

  Raises:
    ValueError: depths of the wrong number or outside [0, 1].
  """
  if depths is None:
    depths = rng.uniform(0.0, 1.0, size=spec.num_needles).tolist()
  depths = [float(d) for d in depths]
  if len(depths) != spec.num_needles or not all(0.0 <= d <= 1.0 for d in depths):
    raise ValueError(f"depths={depths} must be {spec.num_needles} numbers in [0, 1]")
  codes = rng.choice(spec.key_words_per_position(tokenizer) ** spec.key_length, spec.num_keys,
                     replace=False)
  # The training corpus's key layout (`synthetic.key_words`), written as words `k{index}`.
  words = key_words(tokenizer, codes, spec.key_length, spec.positional_keys) - tokenizer.key0_id
  keys = [" ".join(f"k{w}" for w in row) for row in words.tolist()]
  facts = []
  for key in keys:
    codes = rng.choice(tokenizer.num_value_words ** spec.value_length, spec.num_values,
                       replace=False)
    for value in _words("v", codes, tokenizer.num_value_words, spec.value_length):
      depth = depths[len(facts)]
      facts.append((key, value, depth, *(place(depth) if place else ())))
  return keys, facts


def _questions(keys: Sequence[str], facts: Sequence[tuple], index_of: dict[int, int],
               needles: Sequence[Needle | PlacedNeedle]) -> tuple[NiahQuestion, ...]:
  """One question per key of `keys`: its values in haystack order (`index_of`: fact -> its
  needle's index in `needles`)."""
  questions = []
  for key in keys:
    mine = sorted(index_of[f] for f, fact in enumerate(facts) if fact[0] == key)
    questions.append(NiahQuestion(
        query=f"{QUERY} {key}", key=key, values=tuple(needles[i].value for i in mine),
        needles=tuple(mine), needle_docs=tuple(needles[i].docs for i in mine)))
  return tuple(questions)


def build_niah(tokenizer: SyntheticTokenizer, spec: NiahSpec | str, *, memory_tokens: int,
               doc_tokens: int, seed: int = 0, depths: Sequence[float] | None = None,
               overlap: int = 0) -> NiahTask:
  """Builds one NIAH task: haystack, memory documents, needles and questions.

  Args:
    tokenizer: the synthetic vocabulary (filler, key and value words) and the token counter.
    spec: a `NiahSpec` or a `PRESETS` name.
    memory_tokens: total haystack tokens, needles included.
    doc_tokens: token budget of a memory document (>= one needle sentence).
    seed: numpy Generator seed.
    depths: one depth in [0, 1] per needle (needles are listed key by key, values within a key);
      None draws them uniformly. A needle goes to the sentence boundary nearest to
      depth * filler tokens.
    overlap: tokens repeated between consecutive documents (see `segment_text`).

  Raises:
    ValueError: an unknown preset, a bad spec, sizes that cannot hold the needles, or depths of
      the wrong number or outside [0, 1].
  """
  spec, memory_tokens, doc_tokens, seed = _checked_arguments(tokenizer, spec, memory_tokens,
                                                             doc_tokens, seed)
  needle_total = spec.num_needles * spec.needle_tokens
  if memory_tokens < needle_total:
    raise ValueError(f"memory_tokens={memory_tokens} cannot hold {spec.num_needles} needles of "
                     f"{spec.needle_tokens} tokens")
  if doc_tokens < spec.needle_tokens:
    raise ValueError(f"doc_tokens={doc_tokens} cannot hold a {spec.needle_tokens}-token needle")
  rng = np.random.default_rng(seed)
  keys, facts = _draw_facts(rng, tokenizer, spec, depths)  # (key, value, depth), key by key

  filler_tokens = memory_tokens - needle_total
  sentences = _filler(rng, spec, filler_tokens, tokenizer.num_filler_words)
  paragraph = []  # paragraph index of each filler sentence
  while len(paragraph) < len(sentences):
    size = int(rng.integers(spec.min_paragraph, spec.max_paragraph + 1))
    paragraph += [paragraph[-1] + 1 if paragraph else 0] * size
  paragraph = paragraph[:len(sentences)]

  # Needle f goes before filler sentence slot[f] (len(sentences): after the last one).
  offsets = np.cumsum([0] + [len(s) for s in sentences])
  slots = [int(np.argmin(np.abs(offsets - d * filler_tokens))) for _, _, d in facts]
  order = sorted(range(len(facts)), key=lambda f: (slots[f], f))
  items = []  # (words, paragraph, fact index or None)
  next_fact = 0
  for slot in range(len(sentences) + 1):
    while next_fact < len(order) and slots[order[next_fact]] == slot:
      f = order[next_fact]
      par = paragraph[slot] if slot < len(sentences) else (paragraph[-1] if paragraph else 0)
      items.append(([FACT, *facts[f][0].split(), *facts[f][1].split()], par, f))
      next_fact += 1
    if slot < len(sentences):
      items.append((sentences[slot], paragraph[slot], None))

  parts, spans, pos = [], {}, 0
  for n, (words, par, fact) in enumerate(items):
    if n:
      sep = "\n" if par == items[n - 1][1] else "\n\n"
      parts.append(sep)
      pos += len(sep)
    line = " ".join(words)
    if fact is not None:
      spans[fact] = (pos, pos + len(line))
    parts.append(line)
    pos += len(line)
  text = "".join(parts)

  segments = tuple(segment.segment_text(text, doc_tokens, tokenizer=tokenizer, overlap=overlap))
  needles, index_of = [], {}
  for f in order:  # haystack order
    start, end = spans[f]
    docs = tuple(segment.segments_containing(list(segments), start, end))
    assert docs, f"needle {f} at {start}:{end} is in no segment"
    index_of[f] = len(needles)
    needles.append(Needle(key=facts[f][0], value=facts[f][1], depth=facts[f][2], start=start,
                          end=end, docs=docs))
  questions = _questions(keys[:spec.num_queries], facts, index_of, needles)
  return NiahTask(text=text, segments=segments, needles=tuple(needles),
                  questions=questions, memory_tokens=memory_tokens,
                  doc_tokens=doc_tokens, spec=spec, seed=seed)


def build_suite(tokenizer: SyntheticTokenizer, spec: NiahSpec | str, *, base_tokens: int,
                doc_tokens: int, num_scales: int = 3, factor: int = 10,
                samples_per_size: int = 1, seed: int = 0,
                depths: Sequence[float] | None = None, overlap: int = 0) -> list[NiahTask]:
  """Tasks at every memory size of `memory_sizes(base_tokens, num_scales, factor)`.

  Sample s at size m is built with the seed `SeedSequence([seed, m, s])` draws, so adding sizes
  or samples leaves the other tasks unchanged.
  """
  samples_per_size = int_at_least("samples_per_size", samples_per_size, 1)
  tasks = []
  for size in memory_sizes(base_tokens, num_scales, factor):
    for sample in range(samples_per_size):
      task_seed = int(np.random.SeedSequence([seed, size, sample]).generate_state(1)[0])
      tasks.append(build_niah(tokenizer, spec, memory_tokens=size, doc_tokens=doc_tokens,
                              seed=task_seed, depths=depths, overlap=overlap))
  return tasks


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def _answer_words(generated: str | Sequence[str]) -> list[str]:
  """Words of a generation, special tokens (`<eos>`, `<answer>`, ...) dropped."""
  words = generated.split() if isinstance(generated, str) else list(generated)
  return [w for w in words if w not in SPECIAL_TOKENS]


def answer_scores(generated: str | Sequence[str], expected: Sequence[str]) -> dict[str, float]:
  """Exact match and value recall of one generated answer.

  Args:
    generated: the decoded answer (text or a list of words).
    expected: the expected values (each one or more space-separated words).

  Returns:
    {"exact_match": 1.0 if the generated words, special tokens dropped, are exactly the expected
     values' words in any order, "value_recall": the fraction of expected values found in the
     generation as a contiguous run of words}.
  """
  if not expected:
    raise ValueError("expected has no value to score against")
  words = _answer_words(generated)
  wanted = [w for value in expected for w in value.split()]

  def found(value: str) -> bool:
    v = value.split()
    return any(words[i:i + len(v)] == v for i in range(len(words) - len(v) + 1))

  return {"exact_match": float(sorted(words) == sorted(wanted)),
          "value_recall": float(np.mean([found(v) for v in expected]))}


def routing_recall(question: NiahQuestion, routed_docs: Sequence[int]) -> float:
  """Fraction of the question's needles with at least one holding document among `routed_docs`."""
  routed = {int(d) for d in routed_docs}
  return float(np.mean([bool(routed.intersection(docs)) for docs in question.needle_docs]))


def score_task(task: NiahTask | StreamedNiah, answers: Sequence[str] | None = None,
               routed_docs: Sequence[Sequence[int]] | None = None) -> dict[str, float]:
  """Means over the task's questions of `answer_scores` and `routing_recall`.

  Args:
    task: the task.
    answers: one generated answer per question (in `task.questions` order), or None.
    routed_docs: the document ids routed for each question, or None.

  Raises:
    ValueError: a number of answers or routed lists other than the number of questions, or a
      routed document id outside [0, number of documents).
  """
  n = len(task.questions)
  scores = {}
  if answers is not None:
    if isinstance(answers, str) or len(answers) != n:
      raise ValueError(f"expected {n} answers (one per question), got {answers!r}")
    per = [answer_scores(a, q.values) for a, q in zip(answers, task.questions)]
    scores.update({name: float(np.mean([p[name] for p in per])) for name in per[0]})
  if routed_docs is not None:
    if len(routed_docs) != n:
      raise ValueError(f"expected {n} routed-document lists, got {len(routed_docs)}")
    num_docs = len(task.segments) if isinstance(task, NiahTask) else task.num_docs
    bad = [d for docs in routed_docs for d in docs if not 0 <= int(d) < num_docs]
    if bad:
      raise ValueError(f"routed document ids {bad[:5]} are outside [0, {num_docs})")
    scores["routing_recall"] = float(np.mean(
        [routing_recall(q, docs) for q, docs in zip(task.questions, routed_docs)]))
  return scores



# --------------------------------------------------------------------------------------------
# Streamed haystacks (any size: documents are computed on demand)
# --------------------------------------------------------------------------------------------

_STREAM_NIAH_FILLER, _STREAM_NIAH_ID = 16, 17


@dataclasses.dataclass(frozen=True)
class PlacedNeedle:
  """One needle of a streamed haystack.

  Attributes:
    key: key words, space-separated.
    value: value words, space-separated.
    depth: requested depth in [0, 1].
    doc: the document holding it.
    offset: token position of its `<fact>` marker in that document.
  """
  key: str
  value: str
  depth: float
  doc: int
  offset: int

  @property
  def docs(self) -> tuple[int, ...]:
    """The documents holding it (one), as `Needle.docs`."""
    return (self.doc,)


@dataclasses.dataclass(frozen=True)
class StreamedNiah:
  """A NIAH task whose haystack is `num_docs` documents of exactly `doc_tokens` tokens, each a
  pure function of (seed, its index): build any range with `document_tokens(start, stop)`
  without the others (100M-token haystacks are never held whole).

  Document i is `[<doc> [ id ]] filler...`, with the needles placed in it (if any) written as
  `<fact> key value` at their offsets. The identifier prefix (when `id_digits` is set) lets a
  model trained on the synthetic memory task (`msa_jax.data.synthetic`) answer with the
  identifier of the document holding the needle; identifiers are a keyed permutation of the
  document index (`synthetic.keyed_permutation`), so distinct for up to 10 ** id_digits
  documents.

  Attributes:
    tokenizer: the synthetic vocabulary.
    spec: the variant.
    num_docs: documents of the haystack.
    doc_tokens: tokens per document (identifier prefix included).
    seed: the seed of every draw.
    id_digits: identifier digits, or None for documents without an identifier prefix.
    needles: the needles, in haystack order (by document, then offset).
    questions: one per asked key (`NiahQuestion`; `needle_docs` holds one document per needle).
  """
  tokenizer: SyntheticTokenizer
  spec: NiahSpec
  num_docs: int
  doc_tokens: int
  seed: int
  id_digits: int | None
  needles: tuple[PlacedNeedle, ...]
  questions: tuple[NiahQuestion, ...]

  @property
  def memory_tokens(self) -> int:
    return self.num_docs * self.doc_tokens

  @property
  def prefix_length(self) -> int:
    """Tokens of the identifier prefix `<doc> [ d.. ]` (0 without identifiers)."""
    return 0 if self.id_digits is None else 3 + self.id_digits

  def identifiers(self, docs) -> np.ndarray:
    """[n] int64 identifiers of documents `docs` (distinct for distinct documents).

    Raises:
      ValueError: the task has no identifiers, or an index outside [0, num_docs).
    """
    if self.id_digits is None:
      raise ValueError("this task was built with id_digits=None: its documents have no "
                       "identifiers")
    return keyed_permutation(self._checked(docs), 10 ** self.id_digits, self.seed,
                             _STREAM_NIAH_ID)

  def _checked(self, docs) -> np.ndarray:
    docs = np.asarray(docs, np.int64).reshape(-1)
    if docs.size and (docs.min() < 0 or docs.max() >= self.num_docs):
      raise ValueError(f"document indices must lie in [0, {self.num_docs})")
    return docs

  def document_tokens(self, start: int, stop: int) -> np.ndarray:
    """[stop - start, doc_tokens] int32 token ids of documents [start, stop).

    Raises:
      ValueError: an empty or out-of-range document range.
    """
    if not 0 <= start < stop <= self.num_docs:
      raise ValueError(f"document range [{start}, {stop}) is not a non-empty part of "
                       f"[0, {self.num_docs})")
    tok = self.tokenizer
    docs = np.arange(start, stop, dtype=np.int64)
    out = (tok.filler0_id + hash_draws(
        self.seed, _STREAM_NIAH_FILLER, docs[:, None], np.arange(self.doc_tokens)[None])
        % np.uint64(tok.num_filler_words)).astype(np.int32)
    if self.id_digits is not None:
      ids = self.identifiers(docs)
      digits = (ids[:, None] // 10 ** np.arange(self.id_digits - 1, -1, -1)) % 10
      out[:, 0], out[:, 1], out[:, self.prefix_length - 1] = (tok.doc_id, tok.id_open_id,
                                                              tok.id_close_id)
      out[:, 2:2 + self.id_digits] = tok.digit0_id + digits
    for needle in self.needles:
      if start <= needle.doc < stop:
        words = [FACT, *needle.key.split(), *needle.value.split()]
        out[needle.doc - start, needle.offset:needle.offset + len(words)] = [
            tok.token_to_id(w) for w in words]
    return out

  def stream(self, start: int = 0, stop: int | None = None, block_docs: int = 16384):
    """Yields (first document index, `document_tokens` block) over [start, stop) in blocks of
    at most `block_docs` documents."""
    stop = self.num_docs if stop is None else stop
    block_docs = int_at_least("block_docs", block_docs, 1)
    for lo in range(start, stop, block_docs):
      yield lo, self.document_tokens(lo, min(lo + block_docs, stop))


def build_streamed_niah(tokenizer: SyntheticTokenizer, spec: NiahSpec | str, *,
                        memory_tokens: int, doc_tokens: int, seed: int = 0,
                        id_digits: int | None = None, depths: Sequence[float] | None = None,
                        needle_span: int | None = None) -> StreamedNiah:
  """A NIAH task of `memory_tokens // doc_tokens` documents, built without its haystack.

  Needle f (listed key by key, values within a key) goes to document round(depth * (D - 1))
  of the D documents (the next free one if another needle took it: one needle per document),
  at a random offset after the identifier prefix (within its first `needle_span` tokens when
  set, as the synthetic corpus' `fact_span`). Keys and values are drawn as in `build_niah`.

  Raises:
    ValueError: an unknown preset, a bad spec, fewer documents than needles, documents too
      short for the prefix and a needle, too many documents for `id_digits`, or bad depths.
  """
  spec, memory_tokens, doc_tokens, seed = _checked_arguments(tokenizer, spec, memory_tokens,
                                                             doc_tokens, seed)
  prefix = 0 if id_digits is None else 3 + int_at_least("id_digits", id_digits, 1)
  room = doc_tokens - prefix - spec.needle_tokens  # last allowed offset after the prefix
  if room < 0:
    raise ValueError(f"doc_tokens={doc_tokens} cannot hold a {prefix}-token identifier prefix "
                     f"and a {spec.needle_tokens}-token needle")
  if needle_span is not None:
    needle_span = int_at_least("needle_span", needle_span, spec.needle_tokens)
    room = min(room, needle_span - spec.needle_tokens)
  num_docs = memory_tokens // doc_tokens
  if num_docs < spec.num_needles:
    raise ValueError(f"memory_tokens={memory_tokens} gives {num_docs} documents of {doc_tokens} "
                     f"tokens, fewer than the {spec.num_needles} needles")
  if id_digits is not None and num_docs > 10 ** id_digits:
    raise ValueError(f"{num_docs} documents need distinct identifiers but id_digits={id_digits} "
                     f"gives only {10 ** id_digits}")
  rng = np.random.default_rng([seed, 1])
  taken = set()

  def place(depth: float) -> tuple[int, int]:
    """(document, offset) of a needle: the nearest free document, a random offset."""
    doc = int(round(depth * (num_docs - 1)))
    while doc in taken:
      doc = (doc + 1) % num_docs
    taken.add(doc)
    return doc, prefix + int(rng.integers(0, room + 1))

  # (key, value, depth, doc, offset), key by key
  keys, facts = _draw_facts(rng, tokenizer, spec, depths, place)
  order = sorted(range(len(facts)), key=lambda f: facts[f][3])
  needles = tuple(PlacedNeedle(*facts[f]) for f in order)
  index_of = {f: i for i, f in enumerate(order)}
  return StreamedNiah(tokenizer=tokenizer, spec=spec, num_docs=num_docs, doc_tokens=doc_tokens,
                      seed=seed, id_digits=id_digits, needles=needles,
                      questions=_questions(keys[:spec.num_queries], facts, index_of, needles))
