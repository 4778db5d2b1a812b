"""Memory Interleave (paper section 3.5): generative retrieval and context expansion in rounds.

For multi-hop questions the model alternates between writing document identifiers and reading
the documents they name. One round, for every question still open (rounds run in lockstep over
the batch, finished questions drop out):

  1. prompt = head | question_prefix + question + appended documents | answer_marker, with the
     question and the appended documents as the routing query (`PromptBatch.from_segments`);
  2. `MSAEngine.generate` routes that prompt against the bank (every router layer) and decodes
     up to `max_new_tokens` tokens or a delimiter / stop token;
  3. the generated text is parsed: if it consists only of identifiers (`id_pattern`, separated
     by whitespace or `id_separators`), each identifier is normalised and looked up in the bank,
     the original text of every new document is appended to the question (`doc_template`) and
     the next round starts; anything else is the final answer.

Identifier normalisation: the pattern's first group with all whitespace removed, then
`id_kind="id"`: `id_format.format(body)` is a bank document id (synthetic `[ 0 4 2 7 ]` ->
"0427"), or `id_kind="index"`: int(body) is a position in bank order (the BEIR / NQ320k
training target `[123]` names the corpus' document 123, which `encode` stores in corpus order).

Defined outcomes (`InterleaveResult.status`), never an exception for what the model writes:
  answered      the model wrote something that is not an identifier list (the answer);
  empty         the model wrote nothing (a stop token first, or only whitespace);
  unknown_id    an identifier round named only documents the bank does not hold;
  repeated_id   an identifier round named only documents appended before;
  no_text       an identifier round named only documents stored without text;
  max_rounds    `max_rounds` rounds generated identifiers without an answer.
Unknown, repeated and text-less identifiers are recorded per round; a round that names at
least one new document with a text goes on. A question ending with no new document stops,
since a greedy model would write the same identifiers again.

Usage:
  interleaver = MemoryInterleave(engine, tokenizer, InterleaveConfig(max_rounds=3))
  for result in interleaver.run(["<query> k1 k2"]):
    print(result.status, result.answer, [r.doc_ids for r in result.rounds])
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from msa_jax.inference.engine import MSAEngine, PrefillOutput, PromptBatch, routed_doc_ids
from msa_jax.inference.sampling import SamplingConfig
from msa_jax.validation import is_int

STATUSES = ("answered", "empty", "unknown_id", "repeated_id", "no_text", "max_rounds")
SYNTHETIC_ID_PATTERN = r"\[((?:\s*\d)+)\s*\]"  # `[ 0 4 2 7 ]` and `[123]` alike


@dataclasses.dataclass(frozen=True)
class InterleaveConfig:
  """How questions, identifiers and retrieved documents are written (frozen, hashable).

  Attributes:
    max_rounds: generation rounds per question (>= 1); the last one may still name documents
      (they are resolved and recorded, status `max_rounds`).
    max_new_tokens: tokens generated per round, a final delimiter included.
    delimiters: token strings that end an identifier round (each must be one token of the
      tokenizer); the tokenizer's stop tokens (EOS) always end a round too.
    id_pattern: regular expression of one identifier; its first group is the identifier body.
    id_separators: characters allowed between identifiers besides whitespace.
    id_kind: "id" (the body names a bank document id) or "index" (a position in bank order).
    id_format: `id_format.format(body)` gives the bank id (id_kind="id"), e.g. "doc{}".
    doc_template: what is appended to the question for a retrieved document; fields `{id}`
      (bank id), `{identifier}` (as generated) and `{text}` (the bank's original text).
    max_doc_tokens: appended documents are cut to this many tokens (None: whole text).
    head: prompt text after BOS, before the question (not routed, does not see memory).
    question_prefix: text before the question (part of the routing query).
    answer_marker: text after the question and its documents (sees memory, does not route).
    position_offset: prompt positions after the head are shifted by this (None: top_k, the
      official layout).
    temperature: sampling temperature (0: greedy).
    pad_to: prompt length is rounded up to a multiple of this (fewer recompiles).
  """

  max_rounds: int = 3
  max_new_tokens: int = 32
  delimiters: tuple[str, ...] = ()
  id_pattern: str = SYNTHETIC_ID_PATTERN
  id_separators: str = ",;"
  id_kind: str = "id"
  id_format: str = "{}"
  doc_template: str = "\n{text}"
  max_doc_tokens: int | None = None
  head: str = ""
  question_prefix: str = ""
  answer_marker: str = ""
  position_offset: int | None = None
  temperature: float = 0.0
  pad_to: int = 16

  def __post_init__(self):
    for name in ("max_rounds", "max_new_tokens", "pad_to"):
      value = getattr(self, name)
      if not (is_int(value) and value >= 1):
        raise ValueError(f"InterleaveConfig.{name}={value!r} must be an int >= 1")
    if self.max_doc_tokens is not None and not (is_int(self.max_doc_tokens)
                                                and self.max_doc_tokens >= 1):
      raise ValueError(f"InterleaveConfig.max_doc_tokens={self.max_doc_tokens!r} must be None "
                       "or an int >= 1")
    if self.id_kind not in ("id", "index"):
      raise ValueError(f"InterleaveConfig.id_kind={self.id_kind!r} must be 'id' or 'index'")
    try:
      pattern = re.compile(self.id_pattern)
    except re.error as e:
      raise ValueError(f"InterleaveConfig.id_pattern={self.id_pattern!r} is not a regular "
                       f"expression ({e})") from None
    if pattern.groups < 1:
      raise ValueError(f"InterleaveConfig.id_pattern={self.id_pattern!r} needs a group around "
                       "the identifier body")
    if isinstance(self.delimiters, str):
      raise ValueError(f"InterleaveConfig.delimiters={self.delimiters!r} must be a tuple of "
                       "token strings, not a string")
    if self.position_offset is not None and not (is_int(self.position_offset)
                                                 and self.position_offset >= 0):
      raise ValueError(f"InterleaveConfig.position_offset={self.position_offset!r} must be "
                       "None or an int >= 0")


@dataclasses.dataclass
class Round:
  """One generation round of one question.

  Attributes:
    text: the generated text (delimiter / stop token excluded).
    token_ids: the generated token ids (the same).
    stopped: whether a delimiter or stop token ended it (else `max_new_tokens` did).
    kind: "ids" (an identifier list), "answer" or "empty".
    identifiers: the identifiers as generated (kind "ids").
    doc_ids: bank ids of the documents appended after this round.
    unknown: identifiers the bank does not hold (normalised).
    repeated: bank ids named again after an earlier round (or twice in this one).
    no_text: bank ids of named documents stored without text.
    routed: router layer -> [(bank id, score)] of this round's routed documents, best first.
  """

  text: str
  token_ids: list[int]
  stopped: bool
  kind: str
  identifiers: list[str] = dataclasses.field(default_factory=list)
  doc_ids: list[str] = dataclasses.field(default_factory=list)
  unknown: list[str] = dataclasses.field(default_factory=list)
  repeated: list[str] = dataclasses.field(default_factory=list)
  no_text: list[str] = dataclasses.field(default_factory=list)
  routed: dict[int, list[tuple[str, float]]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class InterleaveResult:
  """What Memory Interleave did for one question.

  Attributes:
    question: the question text.
    rounds: the generation rounds, in order.
    answer: the final answer text (status "answered"; "" for "empty"), else None.
    status: one of `STATUSES`.
    doc_ids: every appended document's bank id, in order.
  """

  question: str
  rounds: list[Round]
  answer: str | None
  status: str
  doc_ids: list[str]


def parse_identifiers(text: str, config: InterleaveConfig) -> list[str] | None:
  """The identifiers of `text` if it is only identifiers (and separators), else None.

  Returns [] for text with nothing but whitespace / separators.
  """
  pattern = re.compile(config.id_pattern)
  found = [m.group(0) for m in pattern.finditer(text)]
  rest = pattern.sub(" ", text)
  rest = rest.translate({ord(c): " " for c in config.id_separators})
  return found if not rest.strip() else None


def normalise_identifier(identifier: str, config: InterleaveConfig) -> str:
  """The body of one identifier without whitespace (`[ 0 4 2 7 ]` -> "0427")."""
  m = re.fullmatch(config.id_pattern, identifier.strip())
  if m is None:
    raise ValueError(f"{identifier!r} does not match id_pattern={config.id_pattern!r}")
  return re.sub(r"\s+", "", m.group(1))


def resolve_identifier(identifier: str, bank, config: InterleaveConfig) -> str | None:
  """The bank id an identifier names, or None if the bank holds no such document."""
  body = normalise_identifier(identifier, config)
  if config.id_kind == "index":
    try:
      index = int(body)
    except ValueError:
      return None
    return bank.doc_ids[index] if 0 <= index < bank.num_docs else None
  doc_id = config.id_format.format(body)
  try:
    bank.doc_index(doc_id)
  except KeyError:
    return None
  return doc_id


class MemoryInterleave:
  """Memory Interleave over an `MSAEngine` (see the module docstring).

  Args:
    engine: the engine (model + bank) that routes and generates.
    tokenizer: `encode(text, add_bos=...)`, `decode(ids, skip_special_tokens=...)`, `bos_id`,
      `eos_id`, `pad_id`, `token_to_id` and optionally `stop_ids`.
    config: the interleave settings.

  Raises:
    ValueError: a delimiter that is not a single token, or a tokenizer without EOS or stops.
  """

  def __init__(self, engine: MSAEngine, tokenizer, config: InterleaveConfig = InterleaveConfig()):
    self.engine, self.tokenizer, self.config = engine, tokenizer, config
    stops = [int(t) for t in getattr(tokenizer, "stop_ids", ()) or ()]
    if tokenizer.eos_id is not None:
      stops.insert(0, int(tokenizer.eos_id))
    for d in config.delimiters:
      tid = tokenizer.token_to_id(d)
      if tid is None:
        raise ValueError(f"delimiter {d!r} is not a single token of the tokenizer")
      stops.append(int(tid))
    if not stops:
      raise ValueError("the tokenizer has no EOS / stop tokens and no delimiters were given: "
                       "rounds could not end")
    self.stop_tokens = tuple(dict.fromkeys(stops))
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    self.pad_id = int(pad if pad is not None else 0)
    self.sampling = SamplingConfig(temperature=config.temperature,
                                   max_new_tokens=config.max_new_tokens,
                                   stop_tokens=self.stop_tokens, pad_id=self.pad_id)
    self.head_ids = list(tokenizer.encode(config.head, add_bos=True))
    self.marker_ids = list(tokenizer.encode(config.answer_marker, add_bos=False))

  # --- the one model call (tests override it to script generations) ---

  def generate_tokens(self, prompts: PromptBatch, sampling: SamplingConfig, rng: jax.Array
                      ) -> tuple[np.ndarray, np.ndarray, PrefillOutput]:
    """(tokens [Q, n], lengths [Q], prefill output) for one round: `MSAEngine.generate`."""
    return self.engine.generate(prompts, sampling, rng)

  # --- prompt building ---

  def document_ids(self, doc_id: str, identifier: str, text: str) -> list[int]:
    """Tokens appended to the question for one retrieved document."""
    piece = self.config.doc_template.format(id=doc_id, identifier=identifier, text=text)
    ids = list(self.tokenizer.encode(piece, add_bos=False))
    n = self.config.max_doc_tokens
    return ids if n is None else ids[:n]

  def build_prompts(self, queries: Sequence[Sequence[int]]) -> PromptBatch:
    """Prompts head | query | answer_marker for the given query tokens."""
    cfg = self.config
    t = len(self.head_ids) + max(map(len, queries)) + len(self.marker_ids)
    t = -(-t // cfg.pad_to) * cfg.pad_to
    offset = self.engine.msa.arch.top_k if cfg.position_offset is None else cfg.position_offset
    n = len(queries)
    return PromptBatch.from_segments([self.head_ids] * n, queries, [self.marker_ids] * n,
                                     position_offset=offset, pad_id=self.pad_id, length=t)

  # --- the rounds ---

  def _routed(self, pre: PrefillOutput) -> list[dict[int, list[tuple[str, float]]]]:
    """Per question: router layer -> [(bank id, score)] best first."""
    out = None
    for layer, mem in pre.memory.items():
      ids = routed_doc_ids(self.engine.bank, mem)
      scores = np.asarray(mem.scores)
      if out is None:
        out = [{} for _ in ids]
      for r, row in enumerate(ids):
        out[r][layer] = [(d, float(s)) for d, s in zip(row, scores[r])]
    return out or []

  def _round(self, tokens: np.ndarray, length: int, seen: set[str], routed
             ) -> tuple[Round, dict[str, str]]:
    """Parses one question's generation and resolves its identifiers (no appending).

    Returns the round and {bank id: identifier as generated} of its new documents.
    """
    ids = [int(t) for t in tokens[:length]]
    stopped = bool(ids) and ids[-1] in self.stop_tokens
    if stopped:
      ids = ids[:-1]
    text = self.tokenizer.decode(ids, skip_special_tokens=True)
    rnd = Round(text=text, token_ids=ids, stopped=stopped, kind="answer", routed=routed)
    new = {}
    if not text.strip():
      rnd.kind = "empty"
      return rnd, new
    found = parse_identifiers(text, self.config)
    if not found:
      return rnd, new
    rnd.kind, rnd.identifiers = "ids", found
    bank = self.engine.bank
    for ident in found:
      doc_id = resolve_identifier(ident, bank, self.config)
      if doc_id is None:
        rnd.unknown.append(normalise_identifier(ident, self.config))
      elif doc_id in seen or doc_id in rnd.doc_ids:
        rnd.repeated.append(doc_id)
      elif bank.texts([bank.doc_index(doc_id)])[0] is None:
        rnd.no_text.append(doc_id)
      else:
        rnd.doc_ids.append(doc_id)
        new[doc_id] = ident
    return rnd, new

  def run(self, questions: Sequence[str], rng: jax.Array | None = None,
          progress=None) -> list[InterleaveResult]:
    """Memory Interleave for a batch of questions (see the module docstring).

    Args:
      questions: question texts (each must give at least one token).
      rng: sampling key (used when temperature > 0); round r uses fold_in(rng, r).
      progress: a stream for one line per round, or None.

    Returns:
      One `InterleaveResult` per question, in order.
    """
    cfg, tok, bank = self.config, self.tokenizer, self.engine.bank
    queries = [list(tok.encode(cfg.question_prefix + q, add_bos=False)) for q in questions]
    for i, (q, ids) in enumerate(zip(questions, queries)):
      if not ids:
        raise ValueError(f"question {i} ({q!r}) has no tokens: nothing to route with")
    rng = jax.random.key(0) if rng is None else rng
    results = [InterleaveResult(question=q, rounds=[], answer=None, status="", doc_ids=[])
               for q in questions]
    active = list(range(len(questions)))
    for r in range(cfg.max_rounds):
      if not active:
        break
      prompts = self.build_prompts([queries[i] for i in active])
      tokens, lengths, pre = self.generate_tokens(prompts, self.sampling,
                                                  jax.random.fold_in(rng, r))
      tokens, lengths = np.asarray(tokens), np.asarray(lengths)
      routed = self._routed(pre)
      still = []
      for row, i in enumerate(active):
        res = results[i]
        rnd, new = self._round(tokens[row], int(lengths[row]), set(res.doc_ids),
                               routed[row])
        res.rounds.append(rnd)
        if rnd.kind == "empty":
          res.status, res.answer = "empty", ""
        elif rnd.kind == "answer":
          res.status, res.answer = "answered", rnd.text
        else:
          for doc_id in rnd.doc_ids:
            index = bank.doc_index(doc_id)
            queries[i] = queries[i] + self.document_ids(doc_id, new[doc_id],
                                                        bank.texts([index])[0])
            res.doc_ids.append(doc_id)
          if not rnd.doc_ids:
            res.status = ("unknown_id" if rnd.unknown else
                          "repeated_id" if rnd.repeated else "no_text")
          elif r == cfg.max_rounds - 1:
            res.status = "max_rounds"
          else:
            still.append(i)
      if progress is not None:
        print(f"[interleave] round {r + 1}: {len(active)} questions, {len(still)} go on "
              f"(prompt length {prompts.tokens.shape[1]})", file=progress, flush=True)
      active = still
    return results


def result_to_json(result: InterleaveResult) -> dict[str, Any]:
  """A JSON-serialisable dict of a result (router layer keys become strings)."""
  out = dataclasses.asdict(result)
  for rnd in out["rounds"]:
    rnd["routed"] = {str(k): [list(p) for p in v] for k, v in rnd["routed"].items()}
  return out
