r"""`python -m msa_jax.bank`: encode a corpus into an MSA memory bank once, then ask questions
against it. An absl app; its config file is configs/bank.py, whose variant names the command
(`--help` lists the fields; any is overridable as `--config.FIELD=VALUE`).

Encode (stage 1) a corpus into a bank:

  python -m msa_jax.bank --config=configs/bank.py:encode \
      --config.corpus=../shared/data/beir/nfcorpus --config.bank=/tmp/nf \
      --config.model=smollm2 --config.num_layers=4 --config.msa.top_k=4 \
      --config.msa.chunk_size=16 --config.max_doc_tokens=128 --config.limit=1000

The corpus is a BEIR folder (corpus.jsonl of {"_id", "title", "text"}) or a .jsonl file of
{"id", "text"[, "title"]} objects. The model is a `python -m msa_jax.train` workdir
(`checkpoint_workdir`, its latest checkpoint or `step`), or `model`: "smollm2" (SmolLM2-135M-
Instruct, its first `num_layers` layers, fresh random MSA routers from `seed`), "tiny" (a random
`tiny` preset model over `tokenizer`: SmolLM2's vocabulary or the synthetic task's) or a
Hugging Face repo id (e.g. Qwen/Qwen3-0.6B, from the local HF cache; fresh routers), with the
`msa.*` MSAConfig fields. Documents are cut to `max_doc_tokens` tokens (`limit` keeps the first
ones) and written with `doc_template`; the bank commits every `commit_every` documents or
`commit_seconds` seconds.

Encoding never destroys committed data: the new bank is staged beside the old one
(manifest.next.json) and swapped in with one atomic rename when it is complete, so a kill at any
point leaves the old bank (or the new one) valid. Rerunning the same command after a kill
continues from the last commit (same corpus ids and texts, same model, checked); a bank of
another corpus or model is refused naming what differs (`overwrite=true` replaces it), and a
complete bank of the same corpus and model is left as it is. The config, the corpus (UTF-8,
file:line on errors; no empty texts) and the bank directory are all checked before the model is
built.

The bank's metadata records how to rebuild the model (the workdir and step, or model + seed +
MSA fields + layers + tokenizer) and the prompt template, so asking needs only the bank:

  python -m msa_jax.bank --config=configs/bank.py:ask --config.bank=/tmp/nf \
      --question="Do statins help?" [--question=...] [--config.questions_file=FILE] \
      [--config.interactive=true] [--config.top_k=8] [--config.max_new_tokens=32] \
      [--config.interleave=true --config.max_rounds=3] [--config.all_layers=true] \
      [--config.scan_decode=true]

The bank and its model are loaded once for all questions: the --question values, then the
lines of `questions_file` (UTF-8, blank lines skipped), then with `interactive` one question per
line from stdin until end of input; they are answered in batches of `batch_size`. Per question
it prints one line of the routed documents (each with how many router layers chose it) and a
preview of the first, then the answer (`all_layers`: every router layer's ranking with scores
and previews); with `interleave`, every Memory Interleave round (`msa_jax.inference.interleave`:
generated identifiers, appended documents, routing). An empty answer says why (the stop token
came first; a bank of model smollm2 / tiny has untrained routers). A question longer than the
model's positions allow (max_position minus the template, the memory offset and
`max_new_tokens`) keeps its first tokens, with a warning.
User errors (a bad flag or field, an empty question, a missing or corrupt bank, a bank of
another model, an empty corpus, a bad jsonl line, an unknown model) are checked before the
model is loaded where they can be, and end the program with status 2 and one `error: ...` line
(`--verbose`: with the traceback). `main(argv)` runs a command line in-process (tests).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from msa_jax import runtime, tasks, validation
from msa_jax.checkpoint import SMOLLM2, checkpoint_tokenizer, hub
from msa_jax.data import retrieval
from msa_jax.data.synthetic import SyntheticTokenizer
from msa_jax.inference import engine as engine_lib
from msa_jax.memory import encode as encode_lib
from msa_jax.inference import interleave as interleave_lib
from msa_jax.memory import bank as bank_lib
from msa_jax.memory.bank import BankError, MemoryBank, fingerprint_diff
from msa_jax.inference.sampling import SamplingConfig
from msa_jax.loading import pretrained, restore
from msa_jax.model import MSAConfig, MSATransformer, get_preset, init_params
from msa_jax.model.config import FIELD_DEFAULTS, split_msa_fields
from msa_jax.tasks import synthetic as tasks_synthetic

COMMANDS = ("encode", "ask")
MODELS = ("smollm2", "tiny")
TOKENIZERS = ("smollm2", "synthetic")
DEFAULT_TEMPLATE = tasks.Template().to_dict()  # of a backbone under fresh routers
PREVIEW_CHARS = 80


class CliError(validation.UserError):
  """A user error: printed as one `error: ...` line, exit status 2."""


def _log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Documents in corpus order: ids, titles ("" where none) and texts."""

  ids: list[str]
  titles: list[str]
  texts: list[str]


def _read_jsonl_corpus(path: Path, id_field: str, limit: int | None) -> Corpus:
  ids, titles, texts = [], [], []
  try:
    for row in retrieval.read_jsonl(path, (id_field, "text"), strings=("text",)):
      if limit is not None and len(ids) >= limit:
        break
      ids.append(str(row[id_field]))
      titles.append(str(row.get("title") or ""))
      texts.append(row["text"])
  except ValueError as e:
    raise CliError(str(e)) from None
  if not ids:
    raise CliError(f"{path} holds no documents")
  seen = set()
  for i, doc_id in enumerate(ids):
    if doc_id in seen:
      raise CliError(f"{path}: document id {doc_id!r} appears twice (document {i})")
    seen.add(doc_id)
  return Corpus(ids, titles, texts)


def read_corpus(path: str | os.PathLike, limit: int | None = None) -> Corpus:
  """A BEIR folder's corpus.jsonl ({"_id", "title", "text"}) or a .jsonl of {"id", "text"
  [, "title"]}, its first `limit` documents.

  Raises:
    CliError: nothing at `path`, an empty corpus, a bad line (file:line), a duplicate id.
  """
  p = Path(path)
  if p.is_dir():
    corpus = p / "corpus.jsonl"
    if not corpus.is_file():
      raise CliError(f"--config.corpus={path}: the folder has no corpus.jsonl (expected a BEIR "
                     "dataset folder or a .jsonl file)")
    return _read_jsonl_corpus(corpus, "_id", limit)
  if not p.is_file():
    raise CliError(f"--config.corpus={path} does not exist (expected a BEIR dataset folder or a "
                   ".jsonl file)")
  return _read_jsonl_corpus(p, "id", limit)


def document_text(template: str, index: int, doc_id: str, title: str, text: str) -> str:
  """One document written with `template` (a "{title}\\n" part is dropped without a title)."""
  if not title:
    template = template.replace("{title}\n", "").replace("{title} ", "")
  return template.format(index=index, id=doc_id, title=title, text=text)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Model:
  """What the engine needs, plus the prompt template and how the bank records the model."""

  config: Any
  msa: MSAConfig
  params: Any
  tokenizer: Any
  spec: dict
  template: dict


def msa_fields(section) -> dict[str, Any]:
  """The MSAConfig fields a config's `msa` section sets to other than MSAConfig's defaults
  (what a bank records), router_layers / aux_layers "1,3" as a tuple of layer indices."""
  out = {}
  for name, value in section.items():
    if name not in FIELD_DEFAULTS:
      try:
        split_msa_fields({name: value})
      except ValueError as e:
        raise CliError(f"--config.msa.{name}: {e}") from None
    if name in ("router_layers", "aux_layers") and value not in ("all", "upper_half"):
      try:
        value = tuple(int(x) for x in str(value).strip("()").split(",") if x.strip())
      except ValueError:
        raise CliError(f"--config.msa.{name}={value!r}: expected 'all', 'upper_half' or layer "
                       "indices like '1,3'") from None
    if value != FIELD_DEFAULTS[name]:
      out[name] = value
  return out


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str):
  """The named tokenizer (cached: SmolLM2's takes seconds to read from its GGUF file)."""
  if name == "smollm2":
    return checkpoint_tokenizer(SMOLLM2)
  if name == "synthetic":
    return SyntheticTokenizer()
  raise CliError(f"--config.tokenizer={name!r} is unknown; known: {list(TOKENIZERS)}")


def build_model(spec: dict) -> Model:
  """The model a bank's metadata (or the encode flags) describe.

  spec: {"kind": "workdir", "workdir", "step"} or {"kind": "smollm2" | "tiny", "seed", "msa",
  "num_layers" (smollm2), "tokenizer" (tiny)}.
  """
  kind = spec.get("kind")
  if kind == "workdir":
    _log(f"[model] restoring the checkpoint of {spec['workdir']}")
    try:
      trained = restore.load_trained(spec["workdir"], spec.get("step"))
    except FileNotFoundError as e:
      raise CliError(str(e)) from None
    data = trained.config.data
    template = tasks.get(data.kind).template(data).to_dict()  # the run's prompt layout
    spec = dict(spec, step=trained.step)
    return Model(trained.model_config, trained.msa, trained.params, trained.tokenizer, spec,
                 template)
  if kind not in MODELS + ("hf",):
    raise CliError(f"--config.model={kind!r} is unknown; known: {list(MODELS)} (or "
                   "--config.checkpoint_workdir)")
  msa = MSAConfig(**{k: tuple(v) if isinstance(v, list) else v
                     for k, v in spec.get("msa", {}).items()})
  seed = int(spec.get("seed", 0))
  if kind in ("smollm2", "hf"):
    name = spec["repo"] if kind == "hf" else SMOLLM2
    _log(f"[model] reading the {name} tokenizer")
    tokenizer = (checkpoint_tokenizer(name) if kind == "hf"
                 else _tokenizer("smollm2"))
    _log(f"[model] reading the {name} backbone weights")
    cfg, backbone = pretrained.load_backbone(name, spec.get("num_layers"))
    _log("[model] initialising the MSA routers")
    params = pretrained.load_params(MSATransformer(cfg, msa), jax.random.key(seed), backbone)
  else:
    tokenizer = _tokenizer(spec.get("tokenizer", "smollm2"))
    cfg = get_preset("tiny").replace(vocab_size=tokenizer.vocab_size)
    if spec.get("num_layers"):
      cfg = cfg.replace(num_layers=int(spec["num_layers"]))
    _log("[model] initialising a random tiny model")
    params = init_params(MSATransformer(cfg, msa), jax.random.key(seed))
  template = dict(DEFAULT_TEMPLATE)
  if spec.get("tokenizer") == "synthetic":
    template = tasks_synthetic.TEMPLATE.to_dict()
  return Model(cfg, msa, params, tokenizer, spec, template)


def _encode_spec(config) -> dict:
  if config.checkpoint_workdir and config.model:
    raise CliError("give either --config.checkpoint_workdir or --config.model, not both")
  msa = msa_fields(config.msa)
  if config.checkpoint_workdir:
    if msa:
      raise CliError("--config.msa.* fields apply to --config.model only; a workdir has its own "
                     "MSA config")
    return {"kind": "workdir", "workdir": str(Path(config.checkpoint_workdir).resolve()),
            "step": config.step}
  if not config.model:
    raise CliError("give a model: --config.checkpoint_workdir=DIR, --config.model=smollm2 or "
                   "--config.model=tiny")
  if hub.is_repo_id(config.model):
    hub.resolve(config.model, "--config.model")  # fails at once, naming the flag, when missing
    return {"kind": "hf", "repo": config.model, "seed": config.seed, "msa": msa,
            "num_layers": config.num_layers}
  if config.model not in MODELS:
    raise CliError(f"--config.model={config.model!r} is unknown; known: {list(MODELS)}, "
                   "org/name (or --config.checkpoint_workdir)")
  spec = {"kind": config.model, "seed": config.seed, "msa": msa,
          "num_layers": config.num_layers}
  if config.model == "tiny":
    spec["tokenizer"] = config.tokenizer
  return spec


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def _check_encode_config(config) -> None:
  if not config.corpus:
    raise CliError("--config.corpus is required (a BEIR dataset folder or a .jsonl file)")
  for name in ("max_doc_tokens", "batch_size", "commit_every"):
    if config[name] < 1:
      raise CliError(f"--config.{name}={config[name]} must be >= 1")
  if config.limit is not None and config.limit < 1:
    raise CliError(f"--config.limit={config.limit} must be >= 1")
  if not config.commit_seconds > 0:
    raise CliError(f"--config.commit_seconds={config.commit_seconds} must be > 0")


def documents_record(ids: list[str], texts: list[str]) -> dict:
  """What identifies an encoded corpus: its document count and digests of its ids and of the
  texts as written (template applied), compared when an encoding is continued."""
  def digest(items):
    h = hashlib.sha256()
    for item in items:
      h.update(item.encode("utf-8") + b"\0")
    return h.hexdigest()
  return {"count": len(ids), "ids_sha256": digest(ids), "texts_sha256": digest(texts)}


def _bank_record(spec: dict, config, documents: dict) -> dict:
  """The metadata fields that must match for a bank to be continued (or found complete)."""
  return {"model": spec, "max_doc_tokens": config.max_doc_tokens, "documents": documents}


def _record_diff(meta: Any, want: dict) -> list[str]:
  """Where a bank's metadata differs from `want` (a workdir spec without a step matches any)."""
  meta = meta if isinstance(meta, dict) else {}
  have = {k: meta.get(k) for k in want}
  model = dict(have["model"] or {})
  if want["model"].get("kind") == "workdir" and want["model"].get("step") is None:
    model.pop("step", None)
    want = dict(want, model={k: v for k, v in want["model"].items() if k != "step"})
  have["model"] = model
  return fingerprint_diff(have, json.loads(json.dumps(want)))


def _plan_encode(path: Path, want: dict, overwrite: bool) -> str:
  """What `encode` does with the bank directory, decided before any model is built.

  Returns "new" (stage a fresh bank), "continue" (a staged bank of this corpus and model) or
  "done" (the published bank already holds it). Raises CliError for a bank that would be lost or
  is of another corpus or model (unless `overwrite`), or a directory that is not a bank's.
  """
  try:
    bank_lib.check_bank_dir(path)
  except FileExistsError as e:
    raise CliError(f"--config.bank={path}: {e}") from None
  if MemoryBank.has_staged(path):
    try:
      staged = MemoryBank.open(path, staged=True, verify=False)
      diff = _record_diff(staged.metadata, want)
    except (BankError, ValueError, OSError) as e:
      diff = [f"unreadable ({e})"]
    if not diff:
      return "continue"
    if not overwrite:
      raise CliError(f"--config.bank={path} holds an unfinished encoding of another corpus or "
                     f"model ({'; '.join(diff[:4])}); rerun its own command to finish it, or "
                     "pass --config.overwrite=true to discard it")
    _log(f"[encode] discarding the unfinished encoding in {path} ({'; '.join(diff[:2])})")
    return "new"
  if (path / bank_lib.MANIFEST).exists() and not overwrite:
    try:
      bank = MemoryBank.open(path, verify=False)
      diff = _record_diff(bank.metadata, want)
    except (BankError, ValueError, OSError) as e:
      diff = [f"unreadable ({e})"]
    if not diff:
      return "done"
    raise CliError(f"a memory bank already exists at --config.bank={path} and holds another "
                   f"corpus or model ({'; '.join(diff[:4])}); pass --config.overwrite=true to "
                   "replace it (the old bank stays readable until the new one is complete)")
  return "new"


def encode(config) -> MemoryBank | None:
  """`encode`: corpus -> bank (see the module docstring).

  Every check of the flags, the corpus and the bank directory happens before the model is
  built. The new bank is staged beside any existing one and published in one atomic step at
  the end; a killed run is continued by rerunning the same command.
  """
  _check_encode_config(config)
  spec = _encode_spec(config)
  path = Path(config.bank)
  corpus = read_corpus(config.corpus, config.limit)
  texts = [document_text(config.doc_template, i, d, t, x)
           for i, (d, t, x) in enumerate(zip(corpus.ids, corpus.titles, corpus.texts))]
  blank = [i for i, text in enumerate(texts) if not text.strip()]
  if blank:
    raise CliError(f"--config.corpus={config.corpus}: document {corpus.ids[blank[0]]!r} (number "
                   f"{blank[0]}) has an empty text" + (f", and {len(blank) - 1} more"
                                                         if len(blank) > 1 else ""))
  want = _bank_record(spec, config, documents_record(corpus.ids, texts))
  plan = _plan_encode(path, want, config.overwrite)
  if plan == "done":
    _log(f"[encode] {path} already holds these {len(corpus.ids)} documents encoded by this "
         "model: nothing to do (--config.overwrite=true re-encodes them)")
    return MemoryBank.open(path, verify=False)
  _log(f"[encode] {len(corpus.ids)} documents from {config.corpus}")
  start = time.perf_counter()
  model = build_model(spec)
  _log(f"[encode] model {spec['kind']} ready in {time.perf_counter() - start:.1f}s "
       f"({model.config.num_layers} layers, router layers "
       f"{list(model.msa.arch.router_layer_ids(model.config.num_layers))})")
  g = config.max_doc_tokens
  tokens = []
  for i, text in enumerate(texts):
    ids = list(model.tokenizer.encode(text[:16 * g], add_bos=False))[:g]
    if not ids:
      raise CliError(f"document {corpus.ids[i]!r} (number {i}) has no tokens")
    tokens.append(ids)
  metadata = dict(_bank_record(model.spec, config, want["documents"]), template=model.template,
                  corpus=str(Path(config.corpus).resolve()), doc_template=config.doc_template)
  bank = None
  if plan == "continue":
    bank = MemoryBank.open(path, staged=True, verify=False)
    diff = fingerprint_diff(bank.fingerprint, json.loads(json.dumps(encode_lib.bank_fingerprint(
        model.config, model.msa.arch, model.params, jnp.float32))))
    if diff and not config.overwrite:
      raise CliError(f"--config.bank={path}: its unfinished encoding was made with other "
                     f"parameters ({'; '.join(diff[:4])}); pass --config.overwrite=true to "
                     "discard it")
    if diff or bank.doc_ids != corpus.ids[:bank.num_docs]:
      bank = None
    else:
      _log(f"[encode] continuing the unfinished encoding in {path}: {bank.num_docs} of "
           f"{len(corpus.ids)} documents are committed")
  if bank is None:
    bank = encode_lib.create_bank(path, model.config, model.msa, model.params,
                                  overwrite=True, metadata=metadata, staged=True)
  done = bank.num_docs
  stats = encode_lib.encode_corpus(
      bank, model.config, model.msa, model.params, corpus.ids[done:], tokens[done:],
      texts[done:], max_tokens=g, batch_size=config.batch_size, commit_every=config.commit_every,
      commit_seconds=config.commit_seconds, progress=sys.stderr)
  bank.publish()
  _log(f"[encode] {bank.num_docs} documents ({bank.num_chunks} chunks) in {stats.seconds:.1f}s "
       f"({stats.tokens_per_second:,.0f} tokens/s) -> {config.bank}")
  return bank


def _preview(text: str | None, chars: int = PREVIEW_CHARS) -> str:
  if text is None:
    return "(no text stored)"
  flat = " ".join(text.split())
  return flat[:chars]


def _shorten(question: str, chars: int = 120) -> str:
  """A question as echoed: its first `chars` characters (and its length when longer)."""
  flat = " ".join(question.split())
  return flat if len(flat) <= chars else f"{flat[:chars]}... ({len(question):,} characters)"


def _print_routed(bank: MemoryBank, routed: dict[int, list[tuple[str, float]]],
                  indent: str) -> None:
  """Every router layer's routed documents, one line each (`ask` with --config.all_layers=true)."""
  for layer in sorted(routed):
    print(f"{indent}layer {layer}:")
    for rank, (doc_id, score) in enumerate(routed[layer], 1):
      text = bank.texts([bank.doc_index(doc_id)])[0]
      print(f"{indent}  {rank}. {doc_id}  {score:+.4f}  {_preview(text)}")


def compact_routing(routed: dict[int, list[tuple[str, float]]]) -> list[tuple[str, int, float]]:
  """(bank id, how many router layers routed it, its best score), most layers first, then by
  best score."""
  votes: dict[str, list[float]] = {}
  for docs in routed.values():
    for doc_id, score in docs:
      votes.setdefault(doc_id, []).append(score)
  return sorted(((d, len(s), max(s)) for d, s in votes.items()), key=lambda r: (-r[1], -r[2]))


def _print_compact(bank: MemoryBank, routed: dict[int, list[tuple[str, float]]], indent: str,
                   limit: int) -> None:
  """One line of the documents the router layers chose (with how many layers chose each) and
  a preview of the first one."""
  ranked = compact_routing(routed)
  if not ranked:
    print(f"{indent}routed: nothing")
    return
  shown = ", ".join(f"{d} ({n}/{len(routed)})" for d, n, _ in ranked[:limit])
  more = f", +{len(ranked) - limit} more" if len(ranked) > limit else ""
  print(f"{indent}routed by {len(routed)} router layer(s): {shown}{more}")
  first = ranked[0][0]
  print(f"{indent}  {first}: {_preview(bank.texts([bank.doc_index(first)])[0], 100)}")


def open_bank(path: str) -> MemoryBank:
  if not Path(path).exists():
    raise CliError(f"--config.bank={path} does not exist (create it with "
                   "--config=configs/bank.py:encode)")
  bank = MemoryBank.open(path)
  meta = bank.metadata
  if not isinstance(meta, dict) or "model" not in meta:
    raise CliError(f"bank {path} has no model record in its metadata (it was not written by "
                   "`python -m msa_jax.bank --config=configs/bank.py:encode`)")
  return bank


def read_questions(config, given: list[str]) -> list[str]:
  """The `given` --question values, then --config.questions_file's non-blank lines (UTF-8,
  errors as file:line).

  Raises:
    CliError: an empty --question, an unreadable file or one without questions, nothing to ask
      (and no --config.interactive).
  """
  questions = []
  for i, q in enumerate(given, 1):
    if not q.strip():
      raise CliError(f"--question number {i} is empty")
    questions.append(q)
  if config.questions_file:
    lines = validation.read_utf8_lines(config.questions_file, "--config.questions_file")
    from_file = [text for _, text in lines if text.strip()]
    if not from_file:
      raise CliError(f"--config.questions_file={config.questions_file} holds no questions (one "
                     "per line)")
    questions += from_file
  if not questions and not config.interactive:
    raise CliError("give --question=..., --config.questions_file=FILE (one question a line) or "
                   "--config.interactive=true")
  return questions


def check_ask_config(config) -> None:
  """Sizes and choices of `ask` (before the bank or the model is opened)."""
  for name in ("max_new_tokens", "max_rounds", "batch_size"):
    validation.check_at_least(f"--config.{name}", config[name], 1)
  validation.check_at_least("--config.top_k", config.top_k, 1, optional=True)
  validation.check_choice("--config.id_kind", config.id_kind, ("index", "id"))
  validation.check_choice("--config.scan_decode", config.scan_decode, (None, True, False))


def empty_answer_reason(generated: list[int], stops: tuple[int, ...], tok, spec: dict) -> str:
  """Why an answer came out empty: what the model generated, and whether its routers (or the
  whole model) are untrained."""
  if not generated:
    why = "nothing was generated"
  elif generated[0] in stops:
    why = f"the first generated token was the stop token {tok.decode([generated[0]])!r}"
  else:
    why = f"the generated tokens {generated[:8]} decode to no text (special tokens only)"
  kind = spec.get("kind")
  if kind == "smollm2":
    why += ("; this bank's model has untrained MSA routers (--config.model=smollm2: fresh "
            "random routers), so the routed documents are arbitrary and the backbone was never "
            "taught to read them: train one (python -m msa_jax.train) and encode with "
            "--config.checkpoint_workdir")
  elif kind == "tiny":
    why += "; this bank's model is random (--config.model=tiny): it is for testing the machinery"
  return why


@dataclasses.dataclass
class AskSession:
  """A bank and its model, loaded once, answering any number of questions."""

  bank: MemoryBank
  model: Model
  engine: Any
  template: dict
  offset: int
  config: Any

  @classmethod
  def open(cls, config) -> AskSession:
    bank = open_bank(config.bank)
    spec = bank.metadata["model"]
    _log(f"[ask] loading the model ({spec.get('kind')}) of {config.bank}...")
    start = time.perf_counter()
    model = build_model(spec)
    template = dict(bank.metadata.get("template") or DEFAULT_TEMPLATE)
    for name in ("question_prefix", "answer_marker"):
      if getattr(config, name) is not None:
        template[name] = getattr(config, name)
    offset = model.msa.arch.top_k  # the layout the model was built / trained with
    msa = model.msa if config.top_k is None else model.msa.replace(top_k=config.top_k)
    engine = engine_lib.MSAEngine(model.config, msa, model.params, bank,
                                  scan_decode=config.scan_decode)
    _log(f"[ask] ready in {time.perf_counter() - start:.1f}s ({bank.num_docs} documents); the "
         "first answer compiles the model")
    return cls(bank, model, engine, template, offset, config)

  @property
  def stops(self) -> tuple[int, ...]:
    tok = self.model.tokenizer
    return tuple(dict.fromkeys([int(t) for t in [tok.eos_id, *getattr(tok, "stop_ids", ())]
                                if t is not None]))

  def answer(self, questions: list[str], first_number: int = 1) -> list[dict]:
    """Answers `questions` in batches of --config.batch_size, printing each; returns the records."""
    out = []
    size = self.config.batch_size
    for lo in range(0, len(questions), size):
      batch = questions[lo:lo + size]
      padded = batch + [batch[-1]] * (min(size, len(questions)) - len(batch))  # one shape
      run = self._interleave if self.config.interleave else self._plain
      out += run(padded, first_number + lo, len(batch))[:len(batch)]
    return out

  def _query_tokens(self, questions: list[str], first_number: int, real: int
                    ) -> tuple[list, list, list]:
    """(head, query, marker) token lists; a question longer than the model's positions allow is
    cut to its first tokens, with a warning (for the first `real` questions: the others pad
    the batch)."""
    tok, cfg = self.model.tokenizer, self.model.config
    head = list(tok.encode(self.template["head"], add_bos=True))
    marker = list(tok.encode(self.template["answer_marker"], add_bos=False))
    budget = (cfg.max_position - self.offset - len(head) - len(marker)
              - self.config.max_new_tokens)
    if budget < 1:
      raise CliError(f"--config.max_new_tokens={self.config.max_new_tokens} leaves no room for a "
                     f"question within the model's {cfg.max_position} positions")
    queries = []
    for n, q in enumerate(questions, first_number):
      ids = list(tok.encode(self.template["question_prefix"] + q, add_bos=False))
      if not ids:
        raise CliError(f"question {n} ({q[:40]!r}) has no tokens")
      ids, warning = validation.truncate_tokens(
          ids, budget, f"question {n}", f"the model's {cfg.max_position} positions minus the "
          f"template, the memory offset and --config.max_new_tokens={self.config.max_new_tokens}")
      if warning and n - first_number < real:
        _log(warning)
      queries.append(ids)
    return head, queries, marker

  def _routed(self, pre, row: int) -> dict[int, list[tuple[str, float]]]:
    routed = {}
    for layer, mem in pre.memory.items():
      doc_ids = engine_lib.routed_doc_ids(self.bank, mem)[row]
      routed[layer] = [(d, float(s)) for d, s in zip(doc_ids, np.asarray(mem.scores)[row])]
    return routed

  def _show_routing(self, routed, indent: str) -> None:
    if self.config.all_layers:
      _print_routed(self.bank, routed, indent)
    else:
      _print_compact(self.bank, routed, indent, self.engine.msa.arch.top_k)

  def _plain(self, questions: list[str], first_number: int, real: int) -> list[dict]:
    tok = self.model.tokenizer
    head, queries, marker = self._query_tokens(questions, first_number, real)
    pad = tok.pad_id if tok.pad_id is not None else (tok.eos_id or 0)
    prompts = engine_lib.PromptBatch.from_segments([head] * len(queries), queries,
                                                   [marker] * len(queries),
                                                   position_offset=self.offset, pad_id=int(pad))
    stops = self.stops
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=self.config.max_new_tokens,
                              stop_tokens=stops, pad_id=int(pad))
    tokens, lengths, pre = self.engine.generate(prompts, sampling)
    out = []
    for n, q in enumerate(questions[:real]):
      generated = [int(t) for t in tokens[n, :lengths[n]]]
      answer = tok.decode([t for t in generated if t not in stops], skip_special_tokens=True)
      routed = self._routed(pre, n)
      print(f"question {first_number + n}: {_shorten(q)}")
      self._show_routing(routed, "  ")
      record = {"question": q, "routed": {str(k): v for k, v in routed.items()},
                "answer": answer}
      if answer.strip():
        print(f"  answer: {answer}")
      else:
        record["empty_reason"] = empty_answer_reason(generated, stops, tok,
                                                     self.model.spec)
        print(f"  answer: (empty: {record['empty_reason']})")
      out.append(record)
    return out

  def _interleave(self, questions: list[str], first_number: int, real: int) -> list[dict]:
    t = self.template
    cfg = interleave_lib.InterleaveConfig(
        max_rounds=self.config.max_rounds, max_new_tokens=self.config.max_new_tokens,
        id_kind=self.config.id_kind, head=t["head"], question_prefix=t["question_prefix"],
        answer_marker=t["answer_marker"], position_offset=self.offset)
    self._query_tokens(questions, first_number, real)  # refuses / warns like the plain path
    results = interleave_lib.MemoryInterleave(self.engine, self.model.tokenizer, cfg).run(
        questions, progress=sys.stderr)
    out = []
    for n, res in enumerate(results[:real], first_number):
      print(f"question {n}: {_shorten(res.question)}")
      for r, rnd in enumerate(res.rounds, 1):
        print(f"  round {r}: generated {rnd.text!r} ({rnd.kind})")
        self._show_routing(rnd.routed, "    ")
        if rnd.kind == "ids":
          print(f"    appended {rnd.doc_ids}, unknown {rnd.unknown}, repeated {rnd.repeated}")
      print(f"  status: {res.status}")
      print(f"  answer: {res.answer}")
      out.append(interleave_lib.result_to_json(res))
    return out


def ask(config, questions: list[str] = (), stdin=None) -> list[dict]:
  """`ask`: routed documents and answers for the --question values and the config's (see the
  module docstring); the bank and the model are loaded once, after every field and question has
  been checked."""
  check_ask_config(config)
  questions = read_questions(config, list(questions))
  session = AskSession.open(config)
  out = session.answer(questions) if questions else []
  if config.interactive:
    out += _interactive(session, sys.stdin if stdin is None else stdin, len(out) + 1)
  return out


def _interactive(session: AskSession, stream, first_number: int) -> list[dict]:
  """Answers one question per line read from `stream` until end of input."""
  interactive = hasattr(stream, "isatty") and stream.isatty()
  out = []
  while True:
    if interactive:
      print("question (Ctrl-D to quit)> ", end="", file=sys.stderr, flush=True)
    line = stream.readline()
    if not line:
      return out
    if not line.strip():
      _log("(an empty question is not asked)")
      continue
    out += session.answer([line.rstrip("\r\n")], first_number + len(out))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def define_flags(flag_values, sys_argv: list[str] | None = None):
  """The command's flags on `flag_values`: `--config` (configs/bank.py:encode or :ask, with
  `--config.FIELD=VALUE` overrides read from `sys_argv`, default the process's) and the
  repeatable `--question`. Returns their holders."""
  config = config_flags.DEFINE_config_file(
      "config", None, validation.config_help("The bank command", "configs/bank.py:encode",
                                             "configs/bank.py:ask"),
      flag_values=flag_values, lock_config=True, sys_argv=sys_argv)
  question = flags.DEFINE_multi_string("question", [], "A question for `ask` (repeatable).",
                                       flag_values=flag_values)
  return config, question


def run(config, questions: list[str] | tuple[str, ...] = (), stdin=None):
  """Runs `config.command` ("encode": returns the bank; "ask": prints the answers, and with
  `config.json` one JSON line of them, and returns them). Refuses before any work a config
  without a command or bank, and questions given to `encode`."""
  if config is None:
    raise CliError("--config is required: --config=configs/bank.py:encode or "
                   "--config=configs/bank.py:ask")
  validation.check_choice("--config.command", config.get("command"), COMMANDS)
  if not config.bank:
    raise CliError("--config.bank is required (the bank directory)")
  if config.command == "encode":
    if questions:
      raise CliError("--question belongs to `ask` (--config=configs/bank.py:ask)")
    return encode(config)
  results = ask(config, list(questions), stdin=stdin)
  if config.json:
    print(json.dumps(results))
  return results


def _app_main(argv: list[str]) -> None:
  """`python -m msa_jax.bank`: the absl app."""
  if len(argv) > 1:
    raise CliError(f"unexpected arguments: {argv[1:]}")
  runtime.start_command()
  run(flags.FLAGS.config, flags.FLAGS.question)


def main(argv: list[str], stdin=None) -> int:
  """The command line `argv` (without the program name) run in this process, as
  `python -m msa_jax.bank` runs it; returns the exit status: a user error (a bad flag or input,
  a missing or foreign bank, bad settings named by their checks) prints one `error: ...` line
  and returns 2 (`--verbose`: with the traceback)."""
  try:
    (config, question), rest = validation.parse_in_process(["msa_jax.bank", *argv],
                                                           define_flags)
    if len(rest) > 1:
      raise CliError(f"unexpected arguments: {rest[1:]}")
    run(config.value, question.value, stdin=stdin)
  except (BankError, *validation.USER_ERRORS) as e:
    return validation.report(e, verbose="--verbose" in argv)
  return 0


if __name__ == "__main__":
  define_flags(flags.FLAGS)  # only when run as a program: importing defines no flags
  validation.run_app(_app_main)
