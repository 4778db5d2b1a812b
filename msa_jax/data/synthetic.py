"""A synthetic memory task for MSA: find the document that holds a fact, generate its identifier.

The corpus is M documents of a fixed length, each written as

  <doc> [ 0 4 2 7 ] w3 w17 ... <fact> k5 k12 v9 ... w8

an identifier prefix, then filler words with `facts_per_doc` facts (key -> value) hidden among
them, each preceded by the `<fact>` marker (DESIGN.md section 9: without such textual structure a
tiny model barely learns to route). With `CorpusSpec.id_after_fact` the identifier follows the
last fact instead (`<doc> w3 <fact> k5 k12 v9 [ 0 4 2 7 ] w17 ... w8`), so under causal document
attention its tokens have read the key. Keys are `key_length` key words, unique across the corpus;
with `CorpusSpec.positional_keys` each key position has its own key words, so no two keys hold
the same words in another order.
A question names a key; its answer is the identifier of the document holding it (generative
retrieval), optionally followed by the value, then `<eos>`:

  prompt  = head (e.g. <bos>) | <query> k5 k12 | <answer> [ 0 4 2 7 ] [v9] <eos>
  query_mask on `<query> k5 k12`, labels (unshifted) on the answer tokens after `<answer>`,
  memory_index = len(head).

Everything is a pure function of the seeds. Documents form an unbounded-looking sequence per
`CorpusSpec`: document i (its identifier, facts, keys, values and filler) is computed from
(seed, i) alone by counter-based hashing, and identifiers / keys are keyed permutations of the
document / fact index, so they never collide (up to 10 ** id_digits documents and
`CorpusSpec.num_keys` facts: 7 digits and e.g. 3 key words of 256 hold the 1.6M documents
of a 100M-token memory). `documents(tok, spec, indices)` builds any documents,
`stream_documents(tok, spec, start, stop, block_docs)` yields a range in blocks (a 100M-token
memory is never held whole), `generate_corpus` is the range [first_doc, first_doc + num_docs).
Training uses the first documents of a seed, held-out memories later ones. The training batch
number k of `SyntheticBatchSource` is a function of (spec.seed, k). The iterator's state is
`{"seed", "epoch", "index"}`; `grain_dataset` wraps the same source as a `grain.MapDataset` (its
iterator has grain's checkpointable state) when grain is installed. Both give identical batches.

Multi-process training: with `process_index=p, process_count=P` the source, iterator and
`grain_dataset` yield only rows [p * B / P, (p + 1) * B / P) of each global batch (B must be
divisible by P). The global batch (all processes' rows in process order) is the single-process
batch: negatives are still drawn for all B samples, only the arrays of the other rows are skipped.

For evaluation, `whole_memory_batch` puts all M corpus documents in every sample (N = M) and
`chunked_memory_batches` splits them into chunks of documents; `corpus_memory` returns the memory
once ([M, G]) so routing keys can be encoded a single time for large M.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from msa_jax.data.iterator import IndexedBatchIterator
from msa_jax.model.batch import IGNORE, MSABatch, prompt_positions
from msa_jax.validation import int_at_least

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
DOC, QUERY, ANSWER, FACT = "<doc>", "<query>", "<answer>", "<fact>"
ID_OPEN, ID_CLOSE = "[", "]"
DIGITS = tuple(str(d) for d in range(10))
SPECIAL_TOKENS = (PAD, BOS, EOS, DOC, QUERY, ANSWER, FACT)


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


class SyntheticTokenizer:
  """A fixed word-level vocabulary: specials, `[`, `]`, digits, filler, key and value words.

  Ids: the specials of `SPECIAL_TOKENS` (pad = 0), `[`, `]`, `0`..`9`, then `w0..w{F-1}`,
  `k0..k{K-1}`, `v0..v{V-1}`. The vocabulary depends only on the three sizes, so corpora of any
  size built with the same sizes share it (train on a small memory, evaluate on a large one).

  Args:
    num_filler_words: F, filler words.
    num_key_words: K, key words (a key is `key_length` of them).
    num_value_words: V, value words.
  """

  def __init__(self, num_filler_words: int = 64, num_key_words: int = 64,
               num_value_words: int = 32):
    self.num_filler_words = int_at_least("num_filler_words", num_filler_words)
    self.num_key_words = int_at_least("num_key_words", num_key_words)
    self.num_value_words = int_at_least("num_value_words", num_value_words)
    self.tokens: tuple[str, ...] = (
        SPECIAL_TOKENS + (ID_OPEN, ID_CLOSE) + DIGITS
        + tuple(f"w{i}" for i in range(self.num_filler_words))
        + tuple(f"k{i}" for i in range(self.num_key_words))
        + tuple(f"v{i}" for i in range(self.num_value_words)))
    self._ids = {t: i for i, t in enumerate(self.tokens)}
    self.pad_id = self._ids[PAD]
    self.bos_id = self._ids[BOS]
    self.eos_id = self._ids[EOS]
    self.doc_id = self._ids[DOC]
    self.query_id = self._ids[QUERY]
    self.answer_id = self._ids[ANSWER]
    self.fact_id = self._ids[FACT]
    self.id_open_id = self._ids[ID_OPEN]
    self.id_close_id = self._ids[ID_CLOSE]
    self.digit0_id = self._ids["0"]
    self.filler0_id = self._ids["w0"]
    self.key0_id = self._ids["k0"]
    self.value0_id = self._ids["v0"]
    self.stop_ids = (self.eos_id,)
    self.add_bos = False

  @property
  def vocab_size(self) -> int:
    """Number of ids (the model config's `vocab_size` must be at least this)."""
    return len(self.tokens)

  def token_to_id(self, token: str) -> int | None:
    return self._ids.get(token)

  def id_to_token(self, token_id: int) -> str | None:
    return self.tokens[token_id] if 0 <= token_id < len(self.tokens) else None

  def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
    """Ids of the whitespace-separated words of `text`.

    Raises:
      ValueError: a word outside the vocabulary.
    """
    ids = [self.bos_id] if add_bos else []
    for word in text.split():
      if word not in self._ids:
        raise ValueError(f"word {word!r} is not in the synthetic vocabulary")
      ids.append(self._ids[word])
    return ids

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
    """Words of `ids` joined by spaces (pad/bos/eos dropped when `skip_special_tokens`).

    Raises:
      ValueError: an id outside [0, vocab_size).
    """
    words = []
    for i in ids:
      i = int(i)
      if not 0 <= i < len(self.tokens):
        raise ValueError(f"token id {i} is not in [0, {len(self.tokens)})")
      if skip_special_tokens and i in (self.pad_id, self.bos_id, self.eos_id):
        continue
      words.append(self.tokens[i])
    return " ".join(words)

  def identifier_ids(self, identifier: int, digits: int) -> list[int]:
    """`[ d d ... ]`: the identifier zero-padded to `digits` digits."""
    text = str(int(identifier)).zfill(digits)
    if len(text) != digits:
      raise ValueError(f"identifier {identifier} does not fit in {digits} digits")
    return [self.id_open_id] + [self.digit0_id + int(c) for c in text] + [self.id_close_id]


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SyntheticCorpus:
  """Documents and their facts (Q = M * facts_per_doc questions, one per fact).

  Attributes:
    tokenizer: the vocabulary the ids refer to.
    doc_tokens: [M, L] int32 token ids of the documents (all exactly L = doc_length tokens).
    identifiers: [M] int64 document identifiers (unique, written with `id_digits` digits).
    id_digits: digits per identifier.
    keys: [Q, key_length] int32 token ids of each fact's key (unique rows).
    values: [Q, value_length] int32 token ids of each fact's value.
    key_doc: [Q] int32 index of the document holding fact q.
    key_offset: [Q] int32 position of fact q's `<fact>` marker in that document.
    seed: the generator seed.
    doc_index: [M] int64 index of each document in the seed's document sequence (`CorpusSpec`);
      None: 0..M-1.
  """
  tokenizer: SyntheticTokenizer
  doc_tokens: np.ndarray
  identifiers: np.ndarray
  id_digits: int
  keys: np.ndarray
  values: np.ndarray
  key_doc: np.ndarray
  key_offset: np.ndarray
  seed: int
  doc_index: np.ndarray | None = None

  @property
  def num_docs(self) -> int:
    return self.doc_tokens.shape[0]

  @property
  def doc_length(self) -> int:
    return self.doc_tokens.shape[1]

  @property
  def num_questions(self) -> int:
    return self.keys.shape[0]

  def identifier_ids(self, doc: int) -> list[int]:
    """Token ids `[ d d ... ]` of document `doc`'s identifier."""
    return self.tokenizer.identifier_ids(self.identifiers[doc], self.id_digits)

  def question_ids(self, q: int) -> list[int]:
    """`<query> key...` of question q (the routing query)."""
    return [self.tokenizer.query_id] + self.keys[q].tolist()

  def answer_ids(self, q: int, include_value: bool = False,
                 include_identifier: bool = True) -> list[int]:
    """`[ id ] [value] <eos>` (or `value <eos>` without the identifier): question q's target.

    Raises:
      ValueError: neither the identifier nor the value is included.
    """
    if not (include_value or include_identifier):
      raise ValueError("an answer needs the identifier, the value or both")
    ids = self.identifier_ids(int(self.key_doc[q])) if include_identifier else []
    if include_value:
      ids += self.values[q].tolist()
    return ids + [self.tokenizer.eos_id]


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  """The document sequence of a synthetic corpus: document i is a pure function of (seed, i).

  Document i holds facts i * facts_per_doc .. (i + 1) * facts_per_doc - 1. Its identifier and
  its facts' keys are images of i (resp. the fact index) under keyed pseudo-random permutations
  of [0, 10 ** id_digits) and [0, num_keys(tokenizer)), so no two documents of a seed
  share an identifier and no two facts share a key, however many documents are generated and in
  whatever pieces. Any range of documents (`document_range`, `stream_documents`) can thus be
  built without the others: a 100M-token memory is never held whole.

  Attributes:
    doc_length: L tokens per document, prefix `<doc> [ id ]` (or `<doc>` and the identifier
      after the facts, `id_after_fact`) included.
    facts_per_doc: facts hidden in each document.
    key_length: key words per key; `num_keys` unique keys exist.
    value_length: value words per value.
    id_digits: digits per identifier: 10 ** id_digits documents exist at most. Identifiers are
      distinct pseudo-random numbers, not the document index. Keep it the same for training and
      evaluation, so answers have one length whatever the memory size.
    positional_keys: key position p draws its word from its own block of
      num_key_words // key_length key words (`k0..` for the first position, the next block for
      the second, ...), so a key's bag of words identifies it: no other key holds the same words
      in another order, and a key sharing a word with another shares it at the same position.
      (num_key_words // key_length) ** key_length keys exist. False: every position draws from
      all num_key_words words (num_key_words ** key_length keys).
    fact_span: facts lie among the first `fact_span` tokens after the identifier prefix
      (`<doc>` with `id_after_fact`; filler included); None: anywhere in the document. A span
      that puts the facts in the identifier's chunk lets a shallow model copy the identifier
      from the fact's chunk (pooled memory keeps no token order across chunks; see
      configs/demo.py).
    id_after_fact: the identifier `[ id ]` directly follows the last fact
      (`<doc> filler <fact> key value [ id ] filler`) instead of opening the document: under
      causal attention within a document, the identifier's token states then have read the
      key (before it, they never do). False (default): `<doc> [ id ] filler <fact> ...`.
    seed: the seed of every draw.
  """
  doc_length: int = 64
  facts_per_doc: int = 1
  key_length: int = 2
  value_length: int = 1
  id_digits: int = 6
  fact_span: int | None = None
  seed: int = 0
  positional_keys: bool = False
  id_after_fact: bool = False

  @property
  def id_length(self) -> int:
    """`[ digits ]`."""
    return 2 + self.id_digits

  @property
  def prefix_length(self) -> int:
    """`<doc> [ digits ]`, or `<doc>` with `id_after_fact`."""
    return 1 if self.id_after_fact else 1 + self.id_length

  @property
  def fact_length(self) -> int:
    """`<fact> key value`."""
    return 1 + self.key_length + self.value_length

  def key_words_per_position(self, tokenizer: SyntheticTokenizer) -> int:
    """Key words a key position draws from (`positional_keys`: its own block of them)."""
    return words_per_key_position(tokenizer, self.key_length, self.positional_keys)

  def num_keys(self, tokenizer: SyntheticTokenizer) -> int:
    """Distinct keys: key_words_per_position ** key_length."""
    return self.key_words_per_position(tokenizer) ** self.key_length

  def max_docs(self, tokenizer: SyntheticTokenizer) -> int:
    """Documents that exist: bounded by the identifiers and by the unique keys."""
    return min(10 ** self.id_digits, self.num_keys(tokenizer) // self.facts_per_doc)


def check_corpus_spec(tokenizer: SyntheticTokenizer, spec: CorpusSpec,
                      num_docs: int | None = None) -> None:
  """Raises ValueError naming a field out of range, facts that do not fit in doc_length, or
  (given `num_docs`, the end of the document range used) more documents than identifiers or
  unique keys."""
  for name in ("doc_length", "facts_per_doc", "key_length", "value_length", "id_digits"):
    int_at_least(name, getattr(spec, name))
  int_at_least("seed", spec.seed, minimum=0)
  if spec.positional_keys and tokenizer.num_key_words < spec.key_length:
    raise ValueError(f"positional_keys needs num_key_words >= key_length; got num_key_words="
                     f"{tokenizer.num_key_words} for key_length={spec.key_length}")
  needed = 1 + spec.id_length + spec.facts_per_doc * spec.fact_length
  if spec.doc_length < needed:
    raise ValueError(f"doc_length={spec.doc_length} cannot hold facts_per_doc="
                     f"{spec.facts_per_doc} facts of {spec.fact_length} tokens, `<doc>` and a "
                     f"{spec.id_length}-token identifier (needs >= {needed})")
  if spec.fact_span is not None:
    int_at_least("fact_span", spec.fact_span)
    if spec.fact_span < spec.facts_per_doc * spec.fact_length:
      raise ValueError(f"fact_span={spec.fact_span} cannot hold facts_per_doc="
                       f"{spec.facts_per_doc} facts of {spec.fact_length} tokens")
  if num_docs is None:
    return
  int_at_least("num_docs", num_docs)
  if 10 ** spec.id_digits < num_docs:
    raise ValueError(f"id_digits={spec.id_digits} gives {10 ** spec.id_digits} identifiers, "
                     f"fewer than num_docs={num_docs}")
  num_q, num_keys = num_docs * spec.facts_per_doc, spec.num_keys(tokenizer)
  if num_q > num_keys:
    per = (f"num_key_words={tokenizer.num_key_words} // key_length={spec.key_length} "
           "per position" if spec.positional_keys
           else f"num_key_words={tokenizer.num_key_words}")
    raise ValueError(f"num_docs * facts_per_doc = {num_q} facts need unique keys, but only "
                     f"{num_keys} exist ({per}, ** key_length={spec.key_length}); raise "
                     "num_key_words or key_length")


# Counter-based draws: every random number is a hash of (seed, stream, indices), so a document's
# content does not depend on which other documents are generated.
_STREAM_ID, _STREAM_KEY, _STREAM_VALUE, _STREAM_GAP, _STREAM_FILLER = range(5)
_MASK64 = (1 << 64) - 1


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def hash_draws(seed: int, stream: int, *indices) -> np.ndarray:
  """Pseudo-random uint64s, one per element of the broadcast `indices`: a pure function of
  (seed, stream, indices)."""
  with np.errstate(over="ignore"):
    h = _mix(np.asarray([(seed * 0x9E3779B97F4A7C15 + stream) & _MASK64], np.uint64))
    for index in indices:
      h = _mix(h ^ (np.asarray(index).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)))
  return h


def keyed_permutation(x, size: int, seed: int, stream: int) -> np.ndarray:
  """The images of `x` (ints in [0, size)) under a permutation of [0, size) keyed by (seed,
  stream): a 4-round Feistel network on the smallest even number of bits that holds `size`,
  cycle-walked back into [0, size). A bijection, so distinct inputs give distinct outputs."""
  x = np.asarray(x, np.int64)
  if x.size and (x.min() < 0 or x.max() >= size):
    raise ValueError(f"permutation inputs must lie in [0, {size})")
  half = max(1, (int(size - 1).bit_length() + 1) // 2)
  mask = np.uint64((1 << half) - 1)

  def feistel(v: np.ndarray) -> np.ndarray:
    left, right = v >> np.uint64(half), v & mask
    for r in range(4):
      left, right = right, left ^ (hash_draws(seed, stream, r, right) & mask)
    return (left << np.uint64(half)) | right

  out = feistel(x.astype(np.uint64))
  todo = np.flatnonzero(out >= np.uint64(size))
  while todo.size:  # cycle-walking: each input's cycle re-enters [0, size)
    out[todo] = feistel(out[todo])
    todo = todo[out[todo] >= np.uint64(size)]
  return out.astype(np.int64)


def document_identifiers(spec: CorpusSpec, docs) -> np.ndarray:
  """[n] int64 identifiers of documents `docs` (distinct for distinct documents)."""
  return keyed_permutation(docs, 10 ** spec.id_digits, spec.seed, _STREAM_ID)


def fact_key_codes(tokenizer: SyntheticTokenizer, spec: CorpusSpec, facts) -> np.ndarray:
  """[n] int64 key codes in [0, spec.num_keys(tokenizer)) of facts `facts` (distinct for
  distinct facts); `key_words` writes them as key words."""
  return keyed_permutation(facts, spec.num_keys(tokenizer), spec.seed, _STREAM_KEY)


def words_per_key_position(tokenizer: SyntheticTokenizer, key_length: int,
                           positional: bool) -> int:
  """Key words each position of a `key_length`-word key draws from: all of them, or with
  `positional` its own block of num_key_words // key_length."""
  return tokenizer.num_key_words // key_length if positional else tokenizer.num_key_words


def key_words(tokenizer: SyntheticTokenizer, codes, key_length: int,
              positional: bool = False) -> np.ndarray:
  """[n, key_length] int32 key-word token ids of key codes: their base-W digits, W the words per
  position (num_key_words, or num_key_words // key_length when `positional`, position p then
  using key words p * W .. (p + 1) * W - 1; `CorpusSpec.positional_keys`)."""
  base = words_per_key_position(tokenizer, key_length, positional)
  powers = base ** np.arange(key_length - 1, -1, -1, dtype=np.int64)
  words = (np.asarray(codes, np.int64)[:, None] // powers) % base
  if positional:
    words = words + base * np.arange(key_length)
  return (tokenizer.key0_id + words).astype(np.int32)


def documents(tokenizer: SyntheticTokenizer, spec: CorpusSpec, docs) -> SyntheticCorpus:
  """The corpus of documents `docs` (global indices of the seed's document sequence, any order):
  row m of the result is document docs[m], identical however it is requested.

  Raises:
    ValueError: a bad spec, or an index outside [0, spec.max_docs(tokenizer)).
  """
  docs = np.asarray(docs, np.int64).reshape(-1)
  if docs.size == 0:
    raise ValueError("docs is empty")
  check_corpus_spec(tokenizer, spec, int(docs.max()) + 1)
  if docs.min() < 0:
    raise ValueError(f"document index {int(docs.min())} is negative")
  m, f, length = docs.size, spec.facts_per_doc, spec.doc_length
  facts = (docs[:, None] * f + np.arange(f)).reshape(-1)
  identifiers = document_identifiers(spec, docs)
  keys = key_words(tokenizer, fact_key_codes(tokenizer, spec, facts), spec.key_length,
                   spec.positional_keys)
  values = (tokenizer.value0_id + hash_draws(
      spec.seed, _STREAM_VALUE, facts[:, None], np.arange(spec.value_length)[None]) %
      np.uint64(tokenizer.num_value_words)).astype(np.int32)
  prefix, fact_len, id_len = spec.prefix_length, spec.fact_length, spec.id_length
  num_filler = length - 1 - id_len - f * fact_len
  max_gap = num_filler
  if spec.fact_span is not None:
    max_gap = min(num_filler, spec.fact_span - f * fact_len)
  # Fact j goes after gaps[j] filler words (sorted, so facts keep their order; may be adjacent).
  gaps = np.sort((hash_draws(spec.seed, _STREAM_GAP, docs[:, None], np.arange(f)[None])
                  % np.uint64(max_gap + 1)).astype(np.int64), axis=1)
  rows = np.empty((m, length), np.int32)
  digits = (identifiers[:, None] // 10 ** np.arange(spec.id_digits - 1, -1, -1)) % 10
  id_tokens = np.concatenate([np.full((m, 1), tokenizer.id_open_id, np.int64),
                              tokenizer.digit0_id + digits,
                              np.full((m, 1), tokenizer.id_close_id, np.int64)], axis=1)
  rows[:, 0] = tokenizer.doc_id
  key_offset = prefix + gaps + np.arange(f) * fact_len  # [m, f]
  fact_tokens = np.concatenate([np.full((m * f, 1), tokenizer.fact_id, np.int32), keys, values],
                               axis=1).reshape(m, f, fact_len)
  at = np.arange(m)[:, None, None]
  rows[at, key_offset[:, :, None] + np.arange(fact_len)] = fact_tokens
  # The identifier opens the document or directly follows the last fact (id_after_fact).
  id_offset = (key_offset[:, -1] + fact_len) if spec.id_after_fact else np.ones(m, np.int64)
  rows[np.arange(m)[:, None], id_offset[:, None] + np.arange(id_len)] = id_tokens
  if num_filler:
    p = np.arange(num_filler)
    filler = tokenizer.filler0_id + hash_draws(spec.seed, _STREAM_FILLER, docs[:, None], p[None]
                                               ) % np.uint64(tokenizer.num_filler_words)
    before = (gaps[:, None, :] <= p[None, :, None]).sum(-1)  # facts placed before filler p
    shift = fact_len * before
    if spec.id_after_fact:  # the identifier sits after the last fact
      shift = shift + id_len * (before == f)
    rows[np.arange(m)[:, None], prefix + p + shift] = filler
  return SyntheticCorpus(
      tokenizer=tokenizer, doc_tokens=rows, identifiers=identifiers, id_digits=spec.id_digits,
      keys=keys, values=values, key_doc=np.repeat(np.arange(m, dtype=np.int32), f),
      key_offset=key_offset.reshape(-1).astype(np.int32), seed=spec.seed, doc_index=docs)


def document_range(tokenizer: SyntheticTokenizer, spec: CorpusSpec, start: int,
                   stop: int) -> SyntheticCorpus:
  """Documents [start, stop) of the seed's document sequence (`documents`)."""
  start = int_at_least("start", start, minimum=0)
  if stop <= start:
    raise ValueError(f"stop={stop} must be > start={start}")
  return documents(tokenizer, spec, np.arange(start, stop))


def stream_documents(tokenizer: SyntheticTokenizer, spec: CorpusSpec, start: int, stop: int,
                     block_docs: int = 16384) -> Iterator[SyntheticCorpus]:
  """Documents [start, stop) in consecutive blocks of at most `block_docs` (each a
  `SyntheticCorpus` whose `doc_index` gives the global indices): memory stays O(block_docs)
  whatever stop - start is, and the concatenated blocks equal `document_range(start, stop)`."""
  block_docs = int_at_least("block_docs", block_docs)
  check_corpus_spec(tokenizer, spec, max(int(stop), 1))
  for lo in range(int(start), int(stop), block_docs):
    yield document_range(tokenizer, spec, lo, min(lo + block_docs, int(stop)))


def generate_corpus(tokenizer: SyntheticTokenizer, *, num_docs: int, doc_length: int = 64,
                    facts_per_doc: int = 1, key_length: int = 2, value_length: int = 1,
                    id_digits: int = 6, fact_span: int | None = None, seed: int = 0,
                    first_doc: int = 0, positional_keys: bool = False,
                    id_after_fact: bool = False) -> SyntheticCorpus:
  """Documents [first_doc, first_doc + num_docs) of the `CorpusSpec` made of the other
  arguments: same arguments, same arrays. Training uses the first documents of a seed; held-out
  memories start after them (other documents, other keys, other identifiers).

  Raises:
    ValueError: naming a parameter that is out of range, facts that do not fit in doc_length,
      or more documents than identifiers or unique keys.
  """
  num_docs = int_at_least("num_docs", num_docs)
  first_doc = int_at_least("first_doc", first_doc, minimum=0)
  spec = CorpusSpec(doc_length=doc_length, facts_per_doc=facts_per_doc, key_length=key_length,
                    value_length=value_length, id_digits=id_digits, fact_span=fact_span,
                    seed=seed, positional_keys=positional_keys, id_after_fact=id_after_fact)
  check_corpus_spec(tokenizer, spec, first_doc + num_docs)
  return document_range(tokenizer, spec, first_doc, first_doc + num_docs)


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """Static shapes and sampling of training batches.

  Attributes:
    batch_size: B samples per batch.
    docs_per_sample: N documents per sample: the positive plus N - 1 sampled negatives.
    doc_tokens: G, document slot length (>= the corpus doc_length); None: the doc_length.
    prompt_tokens: T, prompt length; None: the longest prompt of the corpus.
    head: template head token strings before the query (they do not see the memory).
    position_offset: positions after the head start at len(head) + position_offset (the
      official layout uses top_k; see `prompt_positions`).
    include_value: answer `[ id ] value <eos>` instead of `[ id ] <eos>`.
    include_identifier: False: answer `value <eos>` (needs include_value), RULER-style: the
      model reads the value word out of the routed document instead of copying the
      identifier's digits in order.
    seed: shuffling / negative sampling seed.
    global_positions: the global-RoPE ablation: document slot n takes positions
      len(head) + n * doc_length + 0..G-1 (the documents run on one after the other) and the
      prompt after the head continues after all of them (`position_offset` is then unused).
      False (the MSA default): every document at 0..G-1.
    hard_negatives: how many of the N - 1 negatives are documents whose key holds the most of
      the positive's key words, at any position (`hard_negative_docs`), the rest being random.
      In a memory of millions of documents the router's confusers are keys sharing a word with
      the question's, mostly at the other position (none there with `positional_keys`); random
      negatives almost never do.
    hard_negatives_after: batches of `SyntheticBatchSource` before this index use random
      negatives only (a curriculum: from the first step, hard negatives slow the router's
      learning; see configs/demo.py). `build_batch` itself always uses `hard_negatives`.
  """
  batch_size: int = 8
  docs_per_sample: int = 16
  doc_tokens: int | None = None
  prompt_tokens: int | None = None
  head: tuple[str, ...] = (BOS,)
  position_offset: int = 0
  include_value: bool = False
  include_identifier: bool = True
  seed: int = 0
  global_positions: bool = False
  hard_negatives: int = 0
  hard_negatives_after: int = 0


def _shapes(corpus: SyntheticCorpus, spec: BatchSpec) -> tuple[int, int]:
  """(G, T) for this corpus, validating the spec's sizes against it."""
  g = corpus.doc_length if spec.doc_tokens is None else int_at_least("doc_tokens",
                                                                    spec.doc_tokens)
  if g < corpus.doc_length:
    raise ValueError(f"doc_tokens={g} is shorter than the corpus doc_length={corpus.doc_length}")
  key_len, value_len = corpus.keys.shape[1], corpus.values.shape[1]
  if not (spec.include_value or spec.include_identifier):
    raise ValueError("include_identifier=False needs include_value=True: an answer needs the "
                     "identifier, the value or both")
  needed = (len(spec.head) + 1 + key_len + 1
            + (corpus.id_digits + 2 if spec.include_identifier else 0)
            + (value_len if spec.include_value else 0) + 1)
  t = needed if spec.prompt_tokens is None else int_at_least("prompt_tokens",
                                                             spec.prompt_tokens)
  if t < needed:
    raise ValueError(f"prompt_tokens={t} cannot hold the {needed}-token prompt "
                     "(head, query, answer marker, answer)")
  int_at_least("position_offset", spec.position_offset, minimum=0)
  return g, t


def _prompts(corpus: SyntheticCorpus, questions: Sequence[int], spec: BatchSpec,
             t: int) -> dict[str, np.ndarray]:
  """Prompt arrays [Q, T] of the given questions (plus answer_start [Q])."""
  tok = corpus.tokenizer
  head = [tok.token_to_id(w) for w in spec.head]
  if None in head:
    raise ValueError(f"head {spec.head} has a word outside the synthetic vocabulary")
  q_n = len(questions)
  tokens = np.full((q_n, t), tok.pad_id, np.int32)
  labels = np.full((q_n, t), IGNORE, np.int32)
  token_mask = np.zeros((q_n, t), bool)
  query_mask = np.zeros((q_n, t), bool)
  answer_start = np.zeros((q_n,), np.int32)
  for i, q in enumerate(questions):
    query = corpus.question_ids(int(q))
    answer = corpus.answer_ids(int(q), spec.include_value, spec.include_identifier)
    row = head + query + [tok.answer_id]
    start = len(row)
    row += answer
    tokens[i, :len(row)] = row
    token_mask[i, :len(row)] = True
    query_mask[i, len(head):len(head) + len(query)] = True
    labels[i, start:len(row)] = answer
    answer_start[i] = start
  positions = np.broadcast_to(prompt_positions(t, len(head), spec.position_offset),
                              (q_n, t)).copy()
  return dict(tokens=tokens, token_mask=token_mask, positions=positions, query_mask=query_mask,
              memory_index=np.full((q_n,), len(head), np.int32), labels=labels,
              answer_start=answer_start)


def _padded_docs(corpus: SyntheticCorpus, docs: np.ndarray, g: int) -> np.ndarray:
  out = np.full(docs.shape + (g,), corpus.tokenizer.pad_id, np.int32)
  out[..., :corpus.doc_length] = corpus.doc_tokens[docs]
  return out


def hard_negative_docs(corpus: SyntheticCorpus, question: int, count: int,
                       rng: np.random.Generator) -> np.ndarray:
  """Up to `count` documents (not the question's own) whose keys hold the most of the question's
  key words, at any position; ties are broken at random by `rng`.

  Any position: a router trained on random negatives reads a key as a bag of words, and its
  misses at 1M tokens are keys holding a question's word at the OTHER place (`k12 k40` for
  `k5 k12`; configs/demo.py, run H)."""
  key, own = corpus.keys[question], corpus.key_doc[question]
  # [Q] positions of the question's key whose word occurs anywhere in the other key.
  shared = (corpus.keys[:, None, :] == key[:, None]).any(-1).sum(axis=1)
  shared[corpus.key_doc == own] = 0
  candidates = np.flatnonzero(shared)
  order = np.lexsort((rng.random(candidates.size), -shared[candidates]))
  docs = corpus.key_doc[candidates[order]]
  _, first = np.unique(docs, return_index=True)  # each document once, at its best rank
  return docs[np.sort(first)][:count].astype(np.int64)


def build_batch(corpus: SyntheticCorpus, questions: Sequence[int], spec: BatchSpec,
                rng: np.random.Generator, rows: slice | None = None) -> MSABatch:
  """A training batch for `questions`: each sample's positive plus N - 1 random negatives.

  Args:
    corpus: the corpus.
    questions: B question indices.
    spec: shapes and options (its batch_size is not used here; B = len(questions)).
    rng: draws the negatives and the slot order (for all B samples, whatever `rows`).
    rows: build only these rows of the batch (e.g. this process's slice); None: all.

  Returns:
    An MSABatch of numpy arrays: doc_tokens [B, N, G] (B = the rows built), route_labels [B, N]
    with exactly one 1. Rows are identical to the same rows of the full batch.
  """
  n = int_at_least("docs_per_sample", spec.docs_per_sample)
  if n > corpus.num_docs:
    raise ValueError(f"docs_per_sample={n} exceeds the corpus' num_docs={corpus.num_docs}")
  g, t = _shapes(corpus, spec)
  b = len(questions)
  docs = np.empty((b, n), np.int64)
  route = np.zeros((b, n), np.int32)
  hard = int_at_least("hard_negatives", spec.hard_negatives, minimum=0)
  if hard > n - 1:
    raise ValueError(f"hard_negatives={hard} exceeds the docs_per_sample - 1 = {n - 1} negatives")
  for i, q in enumerate(questions):
    pos = int(corpus.key_doc[q])
    neg = rng.choice(corpus.num_docs - 1, size=n - 1, replace=False)
    neg = neg + (neg >= pos)  # skip the positive
    if hard:
      near = hard_negative_docs(corpus, int(q), hard, rng)
      neg = np.concatenate([near, neg[~np.isin(neg, near)]])[:n - 1]
    slots = rng.permutation(n)
    docs[i, slots] = np.concatenate([[pos], neg])
    route[i, slots[0]] = 1
  if rows is not None:
    questions, docs, route = list(questions)[rows], docs[rows], route[rows]
    b = len(questions)
  p = _prompts(corpus, questions, spec, t)
  doc_positions = None
  if spec.global_positions:
    h, length = len(spec.head), corpus.doc_length
    doc_positions = np.broadcast_to(
        h + np.arange(n)[:, None] * length + np.arange(g), (b, n, g)).astype(np.int32)
    p["positions"] = np.broadcast_to(prompt_positions(t, h, n * length), (b, t)).copy()
  return MSABatch(
      doc_tokens=_padded_docs(corpus, docs, g),
      doc_lengths=np.full((b, n), corpus.doc_length, np.int32),
      tokens=p["tokens"], token_mask=p["token_mask"], positions=p["positions"],
      query_mask=p["query_mask"], memory_index=p["memory_index"], labels=p["labels"],
      route_labels=route, doc_positions=doc_positions)


def process_rows(batch_size: int, process_index: int = 0, process_count: int = 1) -> slice:
  """Rows [p * B / P, (p + 1) * B / P) of a global batch of B rows: process p's share.

  Raises:
    ValueError: B not divisible by P, or p outside [0, P).
  """
  b = int_at_least("batch_size", batch_size)
  count = int_at_least("process_count", process_count)
  index = int_at_least("process_index", process_index, minimum=0)
  if index >= count:
    raise ValueError(f"process_index={index} must be < process_count={count}")
  if b % count:
    raise ValueError(f"global batch size {b} is not divisible by the {count} processes "
                     "(each process loads B / P rows)")
  local = b // count
  return slice(index * local, (index + 1) * local)


class SyntheticBatchSource:
  """Random access to training batches: `source[k]` is global batch k (epoch k // len).

  Each epoch visits the questions in a fresh permutation drawn from (seed, epoch), dropping the
  last Q % B; batch k's negatives come from (seed, k). So any batch can be rebuilt from its index.
  With `process_count` P > 1, `source[k]` holds only this process's B / P rows of batch k
  (`process_rows`); `questions(k)` stays global.

  Args:
    corpus: the corpus.
    spec: batch shapes and seed (`spec.batch_size` is the global batch size B).
    process_index, process_count: this process's rank and the number of processes.
  """

  def __init__(self, corpus: SyntheticCorpus, spec: BatchSpec, process_index: int = 0,
               process_count: int = 1):
    b = int_at_least("batch_size", spec.batch_size)
    int_at_least("seed", spec.seed, minimum=0)
    if b > corpus.num_questions:
      raise ValueError(f"batch_size={b} exceeds the corpus' {corpus.num_questions} questions")
    build_batch(corpus, [0], spec, np.random.default_rng(0))  # validates the spec early
    self.corpus = corpus
    self.spec = spec
    self.rows = process_rows(b, process_index, process_count)
    self.batches_per_epoch = corpus.num_questions // b
    self._perm_cache = (-1, None)  # (epoch, permutation), replaced as one object: thread-safe

  def __len__(self) -> int:
    return self.batches_per_epoch

  def _permutation(self, epoch: int) -> np.ndarray:
    cached_epoch, perm = self._perm_cache
    if cached_epoch != epoch:
      perm = np.random.default_rng([self.spec.seed, 0, epoch]).permutation(
          self.corpus.num_questions)
      self._perm_cache = (epoch, perm)
    return perm

  def questions(self, k: int) -> np.ndarray:
    """Question indices of global batch k."""
    k = int_at_least("batch index", k, minimum=0)
    epoch, i = divmod(k, self.batches_per_epoch)
    b = self.spec.batch_size
    return self._permutation(epoch)[i * b:(i + 1) * b]

  def __getitem__(self, k: int) -> MSABatch:
    rows = None if self.rows == slice(0, self.spec.batch_size) else self.rows
    spec = self.spec
    if spec.hard_negatives and k < spec.hard_negatives_after:
      spec = dataclasses.replace(spec, hard_negatives=0)
    return build_batch(self.corpus, self.questions(k), spec,
                       np.random.default_rng([self.spec.seed, 1, int(k)]), rows)


class SyntheticBatchIterator(IndexedBatchIterator):
  """Iterates over `SyntheticBatchSource` batches, with a small checkpointable state
  (`IndexedBatchIterator`: `{"seed", "epoch", "index"}`).

  Args:
    corpus: the corpus.
    spec: batch shapes and seed.
    num_epochs: stop after this many epochs; None: never stop.
    process_index, process_count: yield only this process's rows (see `SyntheticBatchSource`);
      the state is the same on every process.
  """

  def __init__(self, corpus: SyntheticCorpus, spec: BatchSpec, num_epochs: int | None = None,
               process_index: int = 0, process_count: int = 1):
    super().__init__(SyntheticBatchSource(corpus, spec, process_index, process_count), spec.seed,
                     num_epochs)


def grain_dataset(corpus: SyntheticCorpus, spec: BatchSpec, num_epochs: int | None = None,
                  process_index: int = 0, process_count: int = 1):
  """The same batches as `SyntheticBatchIterator`, as a `grain.MapDataset` (element k = batch k).

  Its iterator (`iter(ds)`) has grain's checkpointable state (`{"next_index": k}`), works with
  grain's orbax checkpoint handler, and composes with grain (`.to_iter_dataset()` for
  prefetching). With `process_count` P > 1, element k is this process's rows of global batch k
  (see `SyntheticBatchSource`), so every process has the same state.

  Raises:
    ImportError: grain is not installed (`pip install grain`).
  """
  try:
    import grain  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("grain_dataset needs grain: pip install grain (or use "
                      "SyntheticBatchIterator, which gives the same batches)") from e
  source = SyntheticBatchSource(corpus, spec, process_index, process_count)
  epochs = None if num_epochs is None else int_at_least("num_epochs", num_epochs)
  return (grain.MapDataset.range(len(source)).repeat(epochs)
          .map_with_index(lambda k, _: source[k]))


# --------------------------------------------------------------------------------------------
# Evaluation over the whole memory
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvalBatch:
  """Questions against the whole corpus memory.

  Attributes:
    batch: the MSABatch (N = all M documents, in corpus order, or one chunk of them).
    target_doc: [Q] corpus index of each question's document (its slot when N = M).
    answer_start: [Q] prompt index of the first answer token: generation is fed
      `tokens[q, :answer_start[q]]` and should produce `answer_tokens[q]`.
    answer_tokens: [Q, A] the expected answer (`[ id ] [value] <eos>`).
    doc_offset: corpus index of the batch's first document slot (0 unless chunked).
  """
  batch: MSABatch
  target_doc: np.ndarray
  answer_start: np.ndarray
  answer_tokens: np.ndarray
  doc_offset: int = 0


def corpus_memory(corpus: SyntheticCorpus, doc_tokens: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """The memory once: doc_tokens [M, G] and doc_lengths [M] (encode routing keys one time)."""
  g = corpus.doc_length if doc_tokens is None else int_at_least("doc_tokens", doc_tokens)
  if g < corpus.doc_length:
    raise ValueError(f"doc_tokens={g} is shorter than the corpus doc_length={corpus.doc_length}")
  return (_padded_docs(corpus, np.arange(corpus.num_docs), g),
          np.full((corpus.num_docs,), corpus.doc_length, np.int32))


def _eval_batch(corpus: SyntheticCorpus, questions: Sequence[int], spec: BatchSpec,
                start: int, stop: int) -> EvalBatch:
  questions = np.asarray(questions, np.int64).reshape(-1)
  if questions.size == 0:
    raise ValueError("questions is empty")
  bad = (questions < 0) | (questions >= corpus.num_questions)
  if bad.any():
    raise ValueError(f"question {int(questions[bad][0])} is not in [0, {corpus.num_questions})")
  g, t = _shapes(corpus, spec)
  q_n, n = questions.size, stop - start
  docs, lengths = corpus_memory(corpus, g)
  p = _prompts(corpus, questions.tolist(), spec, t)
  target = corpus.key_doc[questions].astype(np.int32)
  route = np.zeros((q_n, n), np.int32)
  inside = (target >= start) & (target < stop)
  route[np.flatnonzero(inside), target[inside] - start] = 1
  answers = np.stack([corpus.answer_ids(int(q), spec.include_value, spec.include_identifier)
                      for q in questions])
  batch = MSABatch(
      # Read-only broadcast views: the documents are shared by all samples.
      doc_tokens=np.broadcast_to(docs[start:stop], (q_n, n, g)),
      doc_lengths=np.broadcast_to(lengths[start:stop], (q_n, n)),
      tokens=p["tokens"], token_mask=p["token_mask"], positions=p["positions"],
      query_mask=p["query_mask"], memory_index=p["memory_index"], labels=p["labels"],
      route_labels=route)
  return EvalBatch(batch=batch, target_doc=target, answer_start=p["answer_start"],
                   answer_tokens=answers.astype(np.int32), doc_offset=start)


def whole_memory_batch(corpus: SyntheticCorpus, questions: Sequence[int],
                       spec: BatchSpec) -> EvalBatch:
  """Questions against all M documents: N = M, slot m is corpus document m.

  `spec.docs_per_sample`, `batch_size` and `seed` are not used. doc_tokens / doc_lengths are
  read-only broadcast views of one [M, G] memory (no copy per question on the host).

  Raises:
    ValueError: an empty question list or a question index out of range.
  """
  return _eval_batch(corpus, questions, spec, 0, corpus.num_docs)


def chunked_memory_batches(corpus: SyntheticCorpus, questions: Sequence[int], spec: BatchSpec,
                           chunk_docs: int) -> Iterator[EvalBatch]:
  """`whole_memory_batch` split over the documents: chunks of `chunk_docs` (the last smaller).

  Route labels mark the target only in the chunk holding it (others have none, so they are not
  `check_batch(..., need_route_labels=True)`-valid); merge per-chunk routing scores across
  chunks (by `doc_offset`) to rank all M documents.
  """
  chunk_docs = int_at_least("chunk_docs", chunk_docs)
  for start in range(0, corpus.num_docs, chunk_docs):
    yield _eval_batch(corpus, questions, spec, start, min(start + chunk_docs, corpus.num_docs))
