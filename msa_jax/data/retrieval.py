"""Real-text retrieval data for MSA training: BEIR datasets and NQ320k, as MSABatches.

A dataset (`RetrievalData`) is a corpus (ordered document ids with a title and a text), queries
(id -> text) and graded relevance judgements per split (`qrels[split][qid][docid] = grade`).
`load_beir` (any BEIR dataset) and `load_nq320k` (NQ320k as the NCI preprocessing writes it) parse
the source files; they are the input code of the tfds builders in `msa_jax.datasets`, through
which training reads the data (`msa_jax.datasets.load_retrieval`: the corpus' titles and texts
are then columns read on demand from the prepared ArrayRecord files).

Training is generative retrieval with a memory. Document m gets the identifier text `[m]`
(its index in the corpus order; `RetrievalTask.doc_id_of` maps back to the dataset's id). Each
memory slot holds, tokenised and truncated to G tokens,

  [m] title
  text ...

and each prompt (T tokens, right-padded) is

  head (BOS + `spec.head`) | question_prefix + question | answer_marker | [m] <eos>
  memory_index = len(head), query_mask on the question part, labels (unshifted, IGNORE
  elsewhere) on `[m] <eos>`, where m is the query's best-graded relevant document.

A sample's N memory slots hold up to `max_positives` of its relevant documents (route label 1,
the target always among them) plus negatives drawn from the documents not judged relevant,
in a random slot order. Everything is a pure function of (seed, epoch, batch index), so
`RetrievalBatchIterator`'s small JSON state ({"seed", "epoch", "index"}) reproduces batches
after a restart; `grain_dataset` serves the same batches as a `grain.MapDataset`. Documents are
tokenised on first use and cached.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from msa_jax import validation
from msa_jax.data.iterator import IndexedBatchIterator
from msa_jax.model.batch import IGNORE, MSABatch, prompt_positions

NQ320K_FILES = {"corpus": "NQ_doc_content.tsv", "train": "nq_train_doc_newid.tsv",
                "dev": "nq_dev_doc_newid.tsv"}
NQ320K_HOWTO = (
    "NQ320k is not shipped (it is derived from Natural Questions, ~40 GB raw). Either (a) run "
    "the NCI preprocessing (github.com/solidsea98/Neural-Corpus-Indexer-NLP, "
    "Data_process/NQ_dataset/NQ_dataset_Process.ipynb) on NQ v1.0 simplified "
    "(ai.google.com/research/NaturalQuestions/download) and point --config.data.path at the "
    f"folder holding {', '.join(NQ320K_FILES.values())}; or (b) prepare tfds' "
    "natural_questions as ArrayRecord (`tfds build natural_questions --data_dir=DIR "
    "--file_format=array_record`, once, where TensorFlow and apache-beam are installed; "
    "reading it needs neither) and point --config.data.path at DIR.")


class Tokenizer(Protocol):
  """What the batches need from a tokenizer (e.g. `msa_jax.checkpoint.tokenizer.Tokenizer`)."""
  bos_id: int | None
  eos_id: int | None
  pad_id: int | None

  def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
    ...


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RetrievalData:
  """A retrieval dataset.

  Attributes:
    doc_ids: the corpus' document ids, in corpus order (document m is `doc_ids[m]`).
    titles: [M] document titles ("" where there is none): a tuple, or any sequence (e.g. a
      column read on demand from a tfds data source, `msa_jax.datasets`).
    texts: [M] document texts (likewise).
    queries: query id -> question text.
    qrels: split -> query id -> document id -> relevance grade (> 0: relevant).
    name: where the data came from (for messages).
  """
  doc_ids: tuple[str, ...]
  titles: Sequence[str]
  texts: Sequence[str]
  queries: Mapping[str, str]
  qrels: Mapping[str, Mapping[str, Mapping[str, int]]]
  name: str = ""

  def __post_init__(self):
    if not len(self.doc_ids) == len(self.titles) == len(self.texts):
      raise ValueError(f"{len(self.doc_ids)} doc_ids, {len(self.titles)} titles and "
                       f"{len(self.texts)} texts differ in number")
    index = {d: m for m, d in enumerate(self.doc_ids)}
    if len(index) != len(self.doc_ids):
      raise ValueError(f"{self.name}: duplicate document ids in the corpus")
    object.__setattr__(self, "doc_index", index)
    for split, judged in self.qrels.items():
      if not judged:
        raise ValueError(f"{self.name}: split {split!r} has no judgements")
      for qid, docs in judged.items():
        if qid not in self.queries:
          raise ValueError(f"{self.name}: split {split!r} judges unknown query {qid!r}")
        for d in docs:
          if d not in index:
            raise ValueError(f"{self.name}: split {split!r} query {qid!r} names unknown "
                             f"document {d!r}")

  @property
  def num_docs(self) -> int:
    return len(self.doc_ids)

  @property
  def corpus(self) -> dict[str, dict[str, str]]:
    """Document id -> {"title", "text"}, in corpus order."""
    return {d: {"title": t, "text": x} for d, t, x in zip(self.doc_ids, self.titles, self.texts)}

  def split(self, split: str) -> Mapping[str, Mapping[str, int]]:
    """qrels of one split; the error lists the known splits."""
    if split not in self.qrels:
      raise ValueError(f"{self.name}: no split {split!r}; known: {sorted(self.qrels)}")
    return self.qrels[split]


def _require_file(path: Path, what: str) -> Path:
  if not path.is_file():
    raise FileNotFoundError(f"missing {path}: expected {what}")
  return path


def read_jsonl(path: Path, fields: Sequence[str],
               strings: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
  """The JSON objects of a .jsonl file, blank lines skipped.

  Raises:
    ValueError: `path:line` of a line that is not UTF-8 (`validation.utf8_lines`), or not a
      JSON object holding every field of `fields`, with the fields of `strings` holding strings.
  """
  for line_no, line in validation.utf8_lines(path):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{line_no}: not a JSON object ({e.msg})") from None
    if (not isinstance(row, dict) or any(k not in row for k in fields)
        or any(not isinstance(row.get(k), str) for k in strings)):
      kinds = f" ({', '.join(map(repr, strings))} strings)" if strings else ""
      raise ValueError(f"{path}:{line_no}: expected a JSON object with fields "
                       f"{list(fields)}{kinds}")
    yield row


def _read_beir_qrels(path: Path, queries: Mapping[str, str],
                     doc_index: Mapping[str, int]) -> dict[str, dict[str, int]]:
  out: dict[str, dict[str, int]] = {}
  with open(path, encoding="utf-8", newline="") as f:
    for line_no, row in enumerate(csv.reader(f, delimiter="\t"), 1):
      if line_no == 1 and row and row[0] == "query-id":
        continue  # header
      if not row:
        continue
      if len(row) != 3:
        raise ValueError(f"{path}:{line_no}: expected 3 tab-separated fields "
                         f"(query-id, corpus-id, score), got {row}")
      qid, did, score = row
      try:
        grade = int(score)
      except ValueError:
        raise ValueError(f"{path}:{line_no}: score {score!r} is not an integer") from None
      if qid not in queries:
        raise ValueError(f"{path}:{line_no}: query {qid!r} is not in queries.jsonl")
      if did not in doc_index:
        raise ValueError(f"{path}:{line_no}: document {did!r} is not in corpus.jsonl")
      out.setdefault(qid, {})[did] = grade
  if not out:
    raise ValueError(f"{path}: the split has no judgements")
  return out


def beir_files(path: str | os.PathLike, splits: Sequence[str] | None = None
               ) -> tuple[Path, Path, list[Path]]:
  """(corpus.jsonl, queries.jsonl, qrels/<split>.tsv files) of a BEIR folder (see `load_beir`).

  Raises:
    FileNotFoundError: a missing folder or file (the message says what is expected).
  """
  root = Path(path)
  layout = "a BEIR dataset folder with corpus.jsonl, queries.jsonl and qrels/<split>.tsv"
  if not root.is_dir():
    raise FileNotFoundError(f"BEIR dataset folder {root} does not exist: expected {layout}")
  corpus = _require_file(root / "corpus.jsonl", "one JSON object {_id, title, text} a line")
  queries = _require_file(root / "queries.jsonl", "one JSON object {_id, text} a line")
  qrels_dir = root / "qrels"
  if splits is None:
    files = sorted(qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
    if not files:
      raise FileNotFoundError(f"no qrels/<split>.tsv files in {root}: expected {layout}")
  else:
    files = [_require_file(qrels_dir / f"{s}.tsv", "tab-separated query-id corpus-id score")
             for s in splits]
  return corpus, queries, files


def load_beir(path: str | os.PathLike, splits: Sequence[str] | None = None) -> RetrievalData:
  """Loads a dataset in the BEIR layout.

  Expected files under `path`:
    corpus.jsonl   one JSON object a line: {"_id", "title" (optional), "text"}
    queries.jsonl  one JSON object a line: {"_id", "text"}
    qrels/<split>.tsv  tab-separated with a header `query-id corpus-id score`.

  Args:
    path: the dataset folder (e.g. ../shared/data/beir/nfcorpus).
    splits: qrels splits to read (e.g. ["train", "test"]); None: every qrels/*.tsv.

  Raises:
    FileNotFoundError: a missing folder or file (the message says what is expected).
    ValueError: a malformed line (file:line), judgements naming unknown queries or documents,
      or an empty split.
  """
  root = Path(path)
  corpus, queries_file, files = beir_files(root, splits)
  doc_ids, titles, texts = [], [], []
  for row in read_jsonl(corpus, ("_id", "text")):
    doc_ids.append(str(row["_id"]))
    titles.append(str(row.get("title") or ""))
    texts.append(str(row["text"]))
  if not doc_ids:
    raise ValueError(f"{corpus} has no documents")
  queries = {str(r["_id"]): str(r["text"]) for r in read_jsonl(queries_file, ("_id", "text"))}
  index = {d: m for m, d in enumerate(doc_ids)}
  qrels = {f.stem: _read_beir_qrels(f, queries, index) for f in files}
  return RetrievalData(tuple(doc_ids), tuple(titles), tuple(texts), queries, qrels,
                       name=str(root))


def _split_title(doc: str) -> tuple[str, str]:
  """NCI writes a document as `title: abstract. content`; splits off the title."""
  title, sep, rest = doc.partition(": ")
  return (title.strip(), rest.strip()) if sep else ("", doc.strip())


def _read_tsv(path: Path, min_fields: int, what: str) -> Iterator[tuple[int, list[str]]]:
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      line = line.rstrip("\n")
      if not line.strip():
        continue
      row = line.split("\t")
      if len(row) < min_fields:
        raise ValueError(f"{path}:{line_no}: expected at least {min_fields} tab-separated "
                         f"fields ({what}), got {len(row)}")
      yield line_no, row


def nq320k_files(path: str | os.PathLike) -> list[Path]:
  """The NCI files of NQ320k under `path` (corpus, train, dev; see `load_nq320k`).

  Raises:
    FileNotFoundError: nothing at `path` or a missing file; the message says how to obtain
      NQ320k and which config field points to it.
  """
  root = Path(path)
  missing = [n for n in NQ320K_FILES.values() if not (root / n).is_file()]
  if missing:
    where = "does not exist" if not root.is_dir() else f"lacks {', '.join(missing)}"
    raise FileNotFoundError(f"NQ320k data folder {root} {where}.\n{NQ320K_HOWTO}")
  return [root / n for n in NQ320K_FILES.values()]


def load_nq320k(path: str | os.PathLike) -> RetrievalData:
  """Loads NQ320k in the layout of the NCI preprocessing (also used by DSI-style follow-ups).

  Expected files under `path` (NCI's Data_process/NQ_dataset/ output; no header lines):
    NQ_doc_content.tsv      `docid \\t \\t \\t title: abstract. content \\t \\t \\t en`: the
                            109,739 Wikipedia pages (deduplicated by title); fields 0 (integer
                            document id) and 3 (text) are used, the title is the text before
                            its first ": ".
    nq_train_doc_newid.tsv  `question \\t queryid \\t docid [\\t semantic id ...]`: 307,373
                            training questions with the document (field 2) that answers them.
    nq_dev_doc_newid.tsv    the same for the 7,830 dev questions.
  Extra columns (NCI's k-means semantic ids) are ignored; splits are "train" and "dev", each
  query relevant (grade 1) to its one document.

  Raises:
    FileNotFoundError: nothing at `path`, or a missing file (see `nq320k_files`).
    ValueError: a malformed line (file:line) or a question naming an unknown document.
  """
  root = Path(path)
  nq320k_files(root)
  doc_ids, titles, texts = [], [], []
  for _, row in _read_tsv(root / NQ320K_FILES["corpus"], 4, "docid, -, -, text"):
    title, text = _split_title(row[3])
    doc_ids.append(row[0].strip())
    titles.append(title)
    texts.append(text)
  index = {d: m for m, d in enumerate(doc_ids)}
  queries: dict[str, str] = {}
  qrels: dict[str, dict[str, dict[str, int]]] = {}
  for split in ("train", "dev"):
    file = root / NQ320K_FILES[split]
    judged: dict[str, dict[str, int]] = {}
    for line_no, row in _read_tsv(file, 3, "question, queryid, docid"):
      question, qid, did = row[0].strip(), row[1].strip(), row[2].strip()
      if did not in index:
        raise ValueError(f"{file}:{line_no}: document {did!r} is not in "
                         f"{NQ320K_FILES['corpus']}")
      qid = qid or f"{split}-{line_no}"
      queries.setdefault(qid, question)
      judged.setdefault(qid, {})[did] = 1
    if not judged:
      raise ValueError(f"{file}: the split has no questions")
    qrels[split] = judged
  return RetrievalData(tuple(doc_ids), tuple(titles), tuple(texts), queries, qrels,
                       name=str(root))


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RetrievalSpec:
  """Static shapes and text template of retrieval batches.

  Attributes:
    batch_size: B samples per batch.
    docs_per_sample: N memory slots per sample: positives plus sampled negatives.
    doc_tokens: G tokens per memory slot (documents are truncated to it).
    prompt_tokens: T prompt tokens (the question is truncated to fit).
    max_positives: relevant documents put in a sample's memory (the target always among them).
    head: text after BOS before the question (not seen by the memory; "" for BOS only).
    question_prefix: text before the question, part of the routing query.
    answer_marker: text after the question, before the target identifier.
    min_grade: qrels grade from which a document counts as relevant.
    position_offset: prompt positions after the head are shifted by this (see
      `prompt_positions`; the official layout uses top_k).
    seed: shuffling / negative sampling seed.
  """
  batch_size: int = 8
  docs_per_sample: int = 16
  doc_tokens: int = 128
  prompt_tokens: int = 64
  max_positives: int = 1
  head: str = ""
  question_prefix: str = "Question: "
  answer_marker: str = "\nDocument:"
  min_grade: int = 1
  position_offset: int = 0
  seed: int = 0

  def __post_init__(self):
    for name in ("batch_size", "docs_per_sample", "doc_tokens", "prompt_tokens",
                 "max_positives"):
      validation.int_at_least(f"RetrievalSpec.{name}", getattr(self, name))
    for name in ("position_offset", "seed"):
      validation.int_at_least(f"RetrievalSpec.{name}", getattr(self, name), minimum=0)


def identifier(doc: int) -> str:
  """The identifier text of corpus document `doc` (what the model generates)."""
  return f"[{int(doc)}]"


class RetrievalTask:
  """A dataset tokenised for MSA: identifiers, cached document tokens, prompts, batches.

  Args:
    data: the dataset.
    tokenizer: `encode(text, add_bos=...)` with `bos_id` / `eos_id` / `pad_id` (eos required).
    spec: shapes and template.

  Raises:
    ValueError: a tokenizer without EOS, N larger than the corpus, or a T too short for the
      longest identifier.
  """

  def __init__(self, data: RetrievalData, tokenizer: Tokenizer, spec: RetrievalSpec):
    if tokenizer.eos_id is None:
      raise ValueError("the tokenizer has no eos_id; the target identifier must end with EOS")
    if spec.docs_per_sample > data.num_docs:
      raise ValueError(f"docs_per_sample={spec.docs_per_sample} exceeds the corpus' "
                       f"{data.num_docs} documents ({data.name})")
    self.data = data
    self.tokenizer = tokenizer
    self.spec = spec
    self.pad_id = int(tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id)
    self.head_ids = list(tokenizer.encode(spec.head, add_bos=True))
    self.marker_ids = list(tokenizer.encode(spec.answer_marker, add_bos=False))
    longest = len(self.identifier_ids(data.num_docs - 1)) + 1
    needed = len(self.head_ids) + 1 + len(self.marker_ids) + longest
    if spec.prompt_tokens < needed:
      raise ValueError(f"prompt_tokens={spec.prompt_tokens} cannot hold head, one question "
                       f"token, answer marker and the longest identifier + EOS ({needed} tokens)")
    self._docs: dict[int, list[int]] = {}
    self._samples: dict[str, list[tuple[str, list[int], frozenset[int]]]] = {}

  def doc_id_of(self, doc: int) -> str:
    """The dataset's document id of corpus document `doc` (identifier `[doc]`)."""
    return self.data.doc_ids[doc]

  def identifier_ids(self, doc: int) -> list[int]:
    return list(self.tokenizer.encode(identifier(doc), add_bos=False))

  def doc_token_ids(self, doc: int) -> list[int]:
    """Tokens of memory document `doc`: identifier, title, text; truncated to G (cached)."""
    ids = self._docs.get(doc)
    if ids is None:
      g = self.spec.doc_tokens
      title, text = self.data.titles[doc], self.data.texts[doc]
      # Enough characters for G tokens (tokens are rarely under 1 character): no need to
      # tokenise a whole Wikipedia page.
      body = (f" {title}\n" if title else " ") + text[:8 * g]
      ids = (self.identifier_ids(doc) + list(self.tokenizer.encode(body, add_bos=False)))[:g]
      self._docs[doc] = ids
    return ids

  def samples(self, split: str) -> list[tuple[str, list[int], frozenset[int]]]:
    """(query id, positives best grade first, all judged documents) of the split's queries
    with a relevant document, in sorted query-id order."""
    if split not in self._samples:
      index = self.data.doc_index
      out = []
      for qid in sorted(self.data.split(split)):
        judged = self.data.split(split)[qid]
        pos = sorted((index[d] for d, g in judged.items() if g >= self.spec.min_grade),
                     key=lambda m: (-judged[self.data.doc_ids[m]], m))
        if pos:
          out.append((qid, pos, frozenset(index[d] for d in judged)))
      if not out:
        raise ValueError(f"{self.data.name}: split {split!r} has no query with a document of "
                         f"grade >= {self.spec.min_grade}")
      self._samples[split] = out
    return self._samples[split]

  def prompt(self, question: str, target: int) -> tuple[list[int], int, int, int]:
    """(tokens, query start, query end, answer start) of one prompt."""
    spec = self.spec
    answer = self.identifier_ids(target) + [int(self.tokenizer.eos_id)]
    query = list(self.tokenizer.encode(spec.question_prefix + question, add_bos=False))
    room = spec.prompt_tokens - len(self.head_ids) - len(self.marker_ids) - len(answer)
    query = query[:room] or [self.pad_id]
    q0 = len(self.head_ids)
    row = self.head_ids + query + self.marker_ids
    return row + answer, q0, q0 + len(query), len(row)

  def build_batch(self, split: str, sample_ids: Sequence[int], key: Sequence[int],
                  rows: slice | None = None) -> MSABatch:
    """An MSABatch of the split's samples `sample_ids` (indices into `samples(split)`).

    Args:
      split: the qrels split.
      sample_ids: the global batch's samples.
      key: seed of the batch; row r draws its negatives and slot order from (*key, r), so a
        row does not depend on the others.
      rows: build only these rows of the batch (a process's share); None: all.

    Returns:
      numpy arrays: doc_tokens [B, N, G], route_labels [B, N] (1 on the positives), tokens /
      labels [B, T].
    """
    spec = self.spec
    samples = self.samples(split)
    rows = range(len(sample_ids))[rows or slice(None)]
    sample_ids = [sample_ids[r] for r in rows]
    b, n, g, t = len(sample_ids), spec.docs_per_sample, spec.doc_tokens, spec.prompt_tokens
    m_docs = self.data.num_docs
    doc_tokens = np.full((b, n, g), self.pad_id, np.int32)
    doc_lengths = np.zeros((b, n), np.int32)
    route = np.zeros((b, n), np.int32)
    tokens = np.full((b, t), self.pad_id, np.int32)
    labels = np.full((b, t), IGNORE, np.int32)
    token_mask = np.zeros((b, t), bool)
    query_mask = np.zeros((b, t), bool)
    for i, (r, s) in enumerate(zip(rows, sample_ids)):
      rng = np.random.default_rng([*map(int, key), r])
      qid, pos, judged = samples[int(s)]
      pos = pos[:min(spec.max_positives, n)]
      need = n - len(pos)
      if m_docs - len(judged) < need:
        raise ValueError(f"query {qid!r}: only {m_docs - len(judged)} unjudged documents for "
                         f"{need} negatives (docs_per_sample={n})")
      draw = rng.choice(m_docs, size=min(m_docs, n + len(judged)), replace=False)
      neg = [int(d) for d in draw if int(d) not in judged][:need]
      slots = rng.permutation(n)
      for slot, doc in zip(slots, pos + neg):
        ids = self.doc_token_ids(doc)
        doc_tokens[i, slot, :len(ids)] = ids
        doc_lengths[i, slot] = len(ids)
      route[i, slots[:len(pos)]] = 1
      row, q0, q1, a0 = self.prompt(self.data.queries[qid], pos[0])
      tokens[i, :len(row)] = row
      token_mask[i, :len(row)] = True
      query_mask[i, q0:q1] = True
      labels[i, a0:len(row)] = row[a0:]
    head = len(self.head_ids)
    return MSABatch(
        doc_tokens=doc_tokens, doc_lengths=doc_lengths, tokens=tokens, token_mask=token_mask,
        positions=np.broadcast_to(prompt_positions(t, head, spec.position_offset),
                                  (b, t)).copy(),
        query_mask=query_mask, memory_index=np.full((b,), head, np.int32), labels=labels,
        route_labels=route)

  def eval_batches(self, split: str, num_batches: int, sample_ids: Sequence[int] | None = None,
                   rows: slice | None = None) -> list[MSABatch]:
    """Fixed evaluation batches: the first `num_batches` * B samples of `sample_ids` (default:
    the whole split, in query-id order), with negatives from a seed of their own; `rows` as in
    `build_batch`."""
    num_batches = validation.int_at_least("num_batches", num_batches)
    ids = np.arange(len(self.samples(split))) if sample_ids is None else np.asarray(sample_ids)
    b = self.spec.batch_size
    if len(ids) < b:
      raise ValueError(f"split {split!r} has {len(ids)} usable queries, fewer than "
                       f"batch_size={b}")
    return [self.build_batch(split, ids[k * b:(k + 1) * b], (self.spec.seed, 2, k), rows)
            for k in range(min(num_batches, len(ids) // b))]


def holdout_split(num_samples: int, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train, held-out) sample indices: a seeded random `holdout` of them held out (sorted)."""
  holdout = validation.int_at_least("holdout", holdout)
  if holdout >= num_samples:
    raise ValueError(f"holdout={holdout} leaves no training queries of {num_samples}")
  perm = np.random.default_rng([seed, 3]).permutation(num_samples)
  return np.sort(perm[holdout:]), np.sort(perm[:holdout])


class RetrievalBatchSource:
  """Random access to training batches: `source[k]` is global batch k (epoch k // len).

  Each epoch visits the samples in a permutation drawn from (seed, epoch), dropping the last
  (#samples % B); row r of batch k draws its negatives and slot order from (seed, k, r).

  Args:
    task: the tokenised task.
    split: the qrels split to train on.
    sample_ids: restrict to these indices of `task.samples(split)` (e.g. `holdout_split`'s
      training part); None: all.
    rows: build only these rows of every batch (a process's share); None: all.
  """

  def __init__(self, task: RetrievalTask, split: str, sample_ids: Sequence[int] | None = None,
               rows: slice | None = None):
    self.task = task
    self.split = split
    self.rows = rows
    n = len(task.samples(split))
    self.sample_ids = np.arange(n) if sample_ids is None else np.asarray(sample_ids, np.int64)
    b = task.spec.batch_size
    if b > len(self.sample_ids):
      raise ValueError(f"batch_size={b} exceeds the {len(self.sample_ids)} training queries of "
                       f"split {split!r}")
    self.batches_per_epoch = len(self.sample_ids) // b
    self._perm_cache = (-1, None)  # (epoch, permutation), replaced as one object: thread-safe

  def __len__(self) -> int:
    return self.batches_per_epoch

  def sample_ids_of(self, k: int) -> np.ndarray:
    """Sample indices of global batch k."""
    k = validation.int_at_least("batch index", k, minimum=0)
    epoch, i = divmod(k, self.batches_per_epoch)
    cached_epoch, perm = self._perm_cache
    if epoch != cached_epoch:
      perm = np.random.default_rng([self.task.spec.seed, 0, epoch]).permutation(self.sample_ids)
      self._perm_cache = (epoch, perm)
    b = self.task.spec.batch_size
    return perm[i * b:(i + 1) * b]

  def __getitem__(self, k: int) -> MSABatch:
    return self.task.build_batch(self.split, self.sample_ids_of(k),
                                 (self.task.spec.seed, 1, int(k)), self.rows)


class RetrievalBatchIterator(IndexedBatchIterator):
  """Iterates over `RetrievalBatchSource` batches with a JSON-able state
  (`IndexedBatchIterator`: `{"seed", "epoch", "index"}`)."""

  def __init__(self, source: RetrievalBatchSource, num_epochs: int | None = None):
    super().__init__(source, source.task.spec.seed, num_epochs)


def grain_dataset(source: RetrievalBatchSource, num_epochs: int | None = None):
  """The batches of `RetrievalBatchIterator(source)` as a `grain.MapDataset` (element k = batch
  k), whose iterator has grain's checkpointable state (`{"next_index": k}`)."""
  import grain  # pylint: disable=import-outside-toplevel
  epochs = None if num_epochs is None else validation.int_at_least("num_epochs", num_epochs)
  return (grain.MapDataset.range(len(source)).repeat(epochs)
          .map_with_index(lambda k, _: source[k]))


def split_counts(data: RetrievalData) -> dict[str, tuple[int, int]]:
  """split -> (queries, judgements): a quick summary of a dataset."""
  return {s: (len(j), sum(len(d) for d in j.values())) for s, j in data.qrels.items()}
