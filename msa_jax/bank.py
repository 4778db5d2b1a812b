"""Command line for MSA memory banks: encode a corpus once, then ask questions against it.

Encode (stage 1) a corpus into a bank:

  python -m msa_jax.bank encode --corpus=../shared/data/beir/nfcorpus --bank=/tmp/nf \
      --model=smollm2 --num_layers=4 --msa.top_k=4 --msa.chunk_size=16 --seed=0 \
      --max_doc_tokens=128 --limit=1000

  --corpus      a BEIR folder (corpus.jsonl with {"_id", "title", "text"}) or a .jsonl file with
                one {"id", "text"[, "title"]} object a line.
  model, one of:
    --checkpoint_workdir=DIR   a `python -m msa_jax.train` workdir (latest checkpoint, or --step);
    --model=smollm2            SmolLM2-135M-Instruct backbone (first --num_layers layers) with
                               fresh random MSA routers from --seed;
    --model=tiny               a random `tiny` preset model (--seed) over --tokenizer
                               (smollm2: SmolLM2's vocabulary; synthetic: the synthetic task's).
    --model=ORG/NAME           a Hugging Face repo id (e.g. Qwen/Qwen3-0.6B) from the local HF
                               cache (downloaded when missing and online), fresh routers.
    --msa.FIELD=VALUE          MSAConfig fields for smollm2 / tiny (top_k, chunk_size,
                               router_layers="all" or "1,3", decouple_router, ...).
  --max_doc_tokens=G           documents are cut to G tokens; --limit=N keeps the first N;
  --doc_template               how a document is written, fields {index} {id} {title} {text}
                               (default "{title}\\n{text}", just "{text}" without a title);
  --overwrite                  replace an existing bank (or discard an unfinished encoding of
                               another corpus or model);
  --commit_every=N, --commit_seconds=S   commit after N documents or S seconds (4096, 30).

Encoding never destroys committed data: the new bank is staged beside the old one
(manifest.next.json) and swapped in with one atomic rename when it is complete, so a kill at any
point leaves the old bank (or the new one) valid. Rerunning the same command after a kill
continues from the last commit (same corpus ids and texts, same model, checked); a bank of
another corpus or model is refused naming what differs, and a complete bank of the same corpus
and model is left as it is. Flags, the corpus (UTF-8, file:line on errors; no empty texts) and
the bank directory are all checked before the model is built.

The bank's metadata records how to rebuild the model (the workdir and step, or model + seed +
MSA fields + layers + tokenizer) and the prompt template, so asking needs only the bank:

  python -m msa_jax.bank ask --bank=/tmp/nf --question="Do statins help?" \
      [--question=...] [--questions_file=FILE] [--interactive] [--top_k=8] \
      [--max_new_tokens=32] [--interleave [--max_rounds=3]] [--all_layers]

The bank and its model are loaded once for all questions: the --question values, then the
lines of --questions_file (UTF-8, blank lines skipped), then with --interactive one question per
line from stdin until end of input; they are answered in batches of --batch_size. Per question
it prints one line of the routed documents (each with how many router layers chose it) and a
preview of the first, then the answer (--all_layers: every router layer's ranking with scores
and previews); with --interleave, every Memory Interleave round (`msa_jax.inference.interleave`:
generated identifiers, appended documents, routing). An empty answer says why (the stop token
came first; a bank of --model=smollm2 / tiny has untrained routers). A question longer than the
model's positions allow (max_position minus the template, the memory offset and
--max_new_tokens) keeps its first tokens, with a warning.
User errors (a bad flag, an empty question, a missing or corrupt bank, a bank of another model,
an empty corpus, a bad jsonl line, an unknown --model) are checked before the model is loaded
where they can be, and end the program with status 2 and one `error: ...` line (`--verbose`:
with the traceback).
"""

from __future__ import annotations

import argparse
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

from msa_jax import runtime, validation
from msa_jax.checkpoint import hub
from msa_jax.data import retrieval
from msa_jax.data.synthetic import SyntheticTokenizer
from msa_jax.inference import engine as engine_lib
from msa_jax.inference import interleave as interleave_lib
from msa_jax.memory import bank as bank_lib
from msa_jax.memory.bank import BankError, MemoryBank, fingerprint_diff
from msa_jax.inference.sampling import SamplingConfig
from msa_jax.loading import pretrained, restore
from msa_jax.model import MSAConfig, MSATransformer, get_preset, init_params

MODELS = ("smollm2", "tiny")
TOKENIZERS = ("smollm2", "synthetic")
DEFAULT_TEMPLATE = {"head": "", "question_prefix": "Question: ", "answer_marker": "\nAnswer:"}
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
      raise CliError(f"--corpus={path}: the folder has no corpus.jsonl (expected a BEIR "
                     "dataset folder or a .jsonl file)")
    return _read_jsonl_corpus(corpus, "_id", limit)
  if not p.is_file():
    raise CliError(f"--corpus={path} does not exist (expected a BEIR dataset folder or a "
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


def _msa_value(name: str, text: str, default: Any) -> Any:
  """A --msa.NAME string as the type of the field's default."""
  if name in ("router_layers", "aux_layers"):
    if text in ("all", "upper_half"):
      return text
    try:
      return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
      raise CliError(f"--msa.{name}={text!r}: expected 'all', 'upper_half' or layer indices "
                     "like '1,3'") from None
  if isinstance(default, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise CliError(f"--msa.{name}={text!r}: expected true or false")
    return text.lower() in ("true", "1")
  try:
    return type(default)(text)
  except ValueError:
    raise CliError(f"--msa.{name}={text!r}: expected a {type(default).__name__}") from None


def parse_msa_flags(pairs: list[str]) -> dict[str, Any]:
  """["top_k=4", ...] (from --msa.top_k=4) -> {"top_k": 4, ...}, typed like MSAConfig."""
  defaults = {f.name: f.default for f in dataclasses.fields(MSAConfig)}
  out = {}
  for pair in pairs:
    name, _, text = pair.partition("=")
    if name not in defaults:
      raise CliError(f"--msa.{name}: MSAConfig has no field {name!r}; known: "
                     f"{sorted(defaults)}")
    out[name] = _msa_value(name, text, defaults[name])
  return out


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str):
  """The named tokenizer (cached: SmolLM2's takes seconds to read from its GGUF file)."""
  if name == "smollm2":
    return pretrained.checkpoint_tokenizer(pretrained.SMOLLM2)
  if name == "synthetic":
    return SyntheticTokenizer()
  raise CliError(f"--tokenizer={name!r} is unknown; known: {list(TOKENIZERS)}")


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
    data = trained.config.get("data", {})
    template = {k: str(data.get(k, v)) for k, v in DEFAULT_TEMPLATE.items()}
    if data.get("kind") == "synthetic":
      template = {"head": "", "question_prefix": "<query> ", "answer_marker": "<answer>"}
    spec = dict(spec, step=trained.step)
    return Model(trained.model_config, trained.msa, trained.params, trained.tokenizer, spec,
                 template)
  if kind not in MODELS + ("hf",):
    raise CliError(f"--model={kind!r} is unknown; known: {list(MODELS)} (or "
                   "--checkpoint_workdir)")
  msa = MSAConfig(**{k: tuple(v) if isinstance(v, list) else v
                     for k, v in spec.get("msa", {}).items()})
  seed = int(spec.get("seed", 0))
  if kind in ("smollm2", "hf"):
    name = spec["repo"] if kind == "hf" else pretrained.SMOLLM2
    _log(f"[model] reading the {name} tokenizer")
    tokenizer = (pretrained.checkpoint_tokenizer(name) if kind == "hf"
                 else _tokenizer("smollm2"))
    _log(f"[model] reading the {name} backbone weights")
    cfg, backbone = pretrained.load_backbone(name, spec.get("num_layers"))
    _log("[model] initialising MSA parameters (compiling the initialiser)")
    params = init_params(MSATransformer(cfg, msa), jax.random.key(seed))
    params = pretrained.merge_backbone(params, backbone)
  else:
    tokenizer = _tokenizer(spec.get("tokenizer", "smollm2"))
    cfg = get_preset("tiny").replace(vocab_size=tokenizer.vocab_size)
    if spec.get("num_layers"):
      cfg = cfg.replace(num_layers=int(spec["num_layers"]))
    _log("[model] initialising a random tiny model")
    params = init_params(MSATransformer(cfg, msa), jax.random.key(seed))
  template = dict(DEFAULT_TEMPLATE)
  if spec.get("tokenizer") == "synthetic":
    template = {"head": "", "question_prefix": "<query> ", "answer_marker": "<answer>"}
  return Model(cfg, msa, params, tokenizer, spec, template)


def _encode_spec(args) -> dict:
  if args.checkpoint_workdir and args.model:
    raise CliError("give either --checkpoint_workdir or --model, not both")
  if args.checkpoint_workdir:
    if args.msa:
      raise CliError("--msa.* flags apply to --model only; a workdir has its own MSA config")
    return {"kind": "workdir", "workdir": str(Path(args.checkpoint_workdir).resolve()),
            "step": args.step}
  if not args.model:
    raise CliError("give a model: --checkpoint_workdir=DIR, --model=smollm2 or --model=tiny")
  if hub.is_repo_id(args.model):
    hub.resolve(args.model, "--model")  # fails at once, naming the flag, when not available
    return {"kind": "hf", "repo": args.model, "seed": args.seed,
            "msa": parse_msa_flags(args.msa), "num_layers": args.num_layers}
  if args.model not in MODELS:
    raise CliError(f"--model={args.model!r} is unknown; known: {list(MODELS)}, org/name (or "
                   "--checkpoint_workdir)")
  spec = {"kind": args.model, "seed": args.seed, "msa": parse_msa_flags(args.msa),
          "num_layers": args.num_layers}
  if args.model == "tiny":
    spec["tokenizer"] = args.tokenizer
  return spec


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def _check_encode_flags(args) -> None:
  for name in ("max_doc_tokens", "batch_size", "commit_every"):
    if getattr(args, name) < 1:
      raise CliError(f"--{name}={getattr(args, name)} must be >= 1")
  if args.limit is not None and args.limit < 1:
    raise CliError(f"--limit={args.limit} must be >= 1")
  if not args.commit_seconds > 0:
    raise CliError(f"--commit_seconds={args.commit_seconds} must be > 0")


def documents_record(ids: list[str], texts: list[str]) -> dict:
  """What identifies an encoded corpus: its document count and digests of its ids and of the
  texts as written (template applied), compared when an encoding is continued."""
  def digest(items):
    h = hashlib.sha256()
    for item in items:
      h.update(item.encode("utf-8") + b"\0")
    return h.hexdigest()
  return {"count": len(ids), "ids_sha256": digest(ids), "texts_sha256": digest(texts)}


def _bank_record(spec: dict, args, documents: dict) -> dict:
  """The metadata fields that must match for a bank to be continued (or found complete)."""
  return {"model": spec, "max_doc_tokens": args.max_doc_tokens, "documents": documents}


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
    raise CliError(f"--bank={path}: {e}") from None
  if MemoryBank.has_staged(path):
    try:
      staged = MemoryBank.open(path, staged=True, verify=False)
      diff = _record_diff(staged.metadata, want)
    except (BankError, ValueError, OSError) as e:
      diff = [f"unreadable ({e})"]
    if not diff:
      return "continue"
    if not overwrite:
      raise CliError(f"--bank={path} holds an unfinished encoding of another corpus or model "
                     f"({'; '.join(diff[:4])}); rerun its own command to finish it, or pass "
                     "--overwrite to discard it")
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
    raise CliError(f"a memory bank already exists at --bank={path} and holds another corpus or "
                   f"model ({'; '.join(diff[:4])}); pass --overwrite to replace it (the old "
                   "bank stays readable until the new one is complete)")
  return "new"


def encode(args) -> MemoryBank | None:
  """`encode`: corpus -> bank (see the module docstring).

  Every check of the flags, the corpus and the bank directory happens before the model is
  built. The new bank is staged beside any existing one and published in one atomic step at
  the end; a killed run is continued by rerunning the same command.
  """
  _check_encode_flags(args)
  spec = _encode_spec(args)
  path = Path(args.bank)
  corpus = read_corpus(args.corpus, args.limit)
  texts = [document_text(args.doc_template, i, d, t, x)
           for i, (d, t, x) in enumerate(zip(corpus.ids, corpus.titles, corpus.texts))]
  blank = [i for i, text in enumerate(texts) if not text.strip()]
  if blank:
    raise CliError(f"--corpus={args.corpus}: document {corpus.ids[blank[0]]!r} (number "
                   f"{blank[0]}) has an empty text" + (f", and {len(blank) - 1} more"
                                                         if len(blank) > 1 else ""))
  want = _bank_record(spec, args, documents_record(corpus.ids, texts))
  plan = _plan_encode(path, want, args.overwrite)
  if plan == "done":
    _log(f"[encode] {path} already holds these {len(corpus.ids)} documents encoded by this "
         "model: nothing to do (--overwrite re-encodes them)")
    return MemoryBank.open(path, verify=False)
  _log(f"[encode] {len(corpus.ids)} documents from {args.corpus}")
  start = time.perf_counter()
  model = build_model(spec)
  _log(f"[encode] model {spec['kind']} ready in {time.perf_counter() - start:.1f}s "
       f"({model.config.num_layers} layers, router layers "
       f"{list(model.msa.router_layer_ids(model.config.num_layers))})")
  g = args.max_doc_tokens
  tokens = []
  for i, text in enumerate(texts):
    ids = list(model.tokenizer.encode(text[:16 * g], add_bos=False))[:g]
    if not ids:
      raise CliError(f"document {corpus.ids[i]!r} (number {i}) has no tokens")
    tokens.append(ids)
  metadata = dict(_bank_record(model.spec, args, want["documents"]), template=model.template,
                  corpus=str(Path(args.corpus).resolve()), doc_template=args.doc_template)
  bank = None
  if plan == "continue":
    bank = MemoryBank.open(path, staged=True, verify=False)
    diff = fingerprint_diff(bank.fingerprint, json.loads(json.dumps(engine_lib.bank_fingerprint(
        model.config, model.msa, model.params, jnp.float32))))
    if diff and not args.overwrite:
      raise CliError(f"--bank={path}: its unfinished encoding was made with other parameters "
                     f"({'; '.join(diff[:4])}); pass --overwrite to discard it")
    if diff or bank.doc_ids != corpus.ids[:bank.num_docs]:
      bank = None
    else:
      _log(f"[encode] continuing the unfinished encoding in {path}: {bank.num_docs} of "
           f"{len(corpus.ids)} documents are committed")
  if bank is None:
    bank = engine_lib.create_bank(path, model.config, model.msa, model.params,
                                  overwrite=True, metadata=metadata, staged=True)
  done = bank.num_docs
  stats = engine_lib.encode_corpus(
      bank, model.config, model.msa, model.params, corpus.ids[done:], tokens[done:],
      texts[done:], max_tokens=g, batch_size=args.batch_size, commit_every=args.commit_every,
      commit_seconds=args.commit_seconds, progress=sys.stderr)
  bank.publish()
  _log(f"[encode] {bank.num_docs} documents ({bank.num_chunks} chunks) in {stats.seconds:.1f}s "
       f"({stats.tokens_per_second:,.0f} tokens/s) -> {args.bank}")
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
  """Every router layer's routed documents, one line each (`ask --all_layers`)."""
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
    raise CliError(f"--bank={path} does not exist (create it with `encode`)")
  bank = MemoryBank.open(path)
  meta = bank.metadata
  if not isinstance(meta, dict) or "model" not in meta:
    raise CliError(f"bank {path} has no model record in its metadata (it was not written by "
                   "`msa_jax.bank encode`)")
  return bank


def read_questions(args) -> list[str]:
  """--question values, then --questions_file's non-blank lines (UTF-8, errors as file:line).

  Raises:
    CliError: an empty --question, an unreadable file or one without questions, nothing to ask
      (and no --interactive).
  """
  questions = []
  for i, q in enumerate(args.question, 1):
    if not q.strip():
      raise CliError(f"--question number {i} is empty")
    questions.append(q)
  if args.questions_file:
    lines = validation.read_utf8_lines(args.questions_file, "--questions_file")
    from_file = [text for _, text in lines if text.strip()]
    if not from_file:
      raise CliError(f"--questions_file={args.questions_file} holds no questions (one per line)")
    questions += from_file
  if not questions and not args.interactive:
    raise CliError("give --question=..., --questions_file=FILE (one question a line) or "
                   "--interactive")
  return questions


def check_ask_flags(args) -> None:
  """Sizes of `ask` (before the bank or the model is opened)."""
  for name in ("max_new_tokens", "max_rounds", "batch_size"):
    validation.check_at_least(f"--{name}", getattr(args, name), 1)
  validation.check_at_least("--top_k", args.top_k, 1, optional=True)


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
    why += ("; this bank's model has untrained MSA routers (--model=smollm2: fresh random "
            "routers), so the routed documents are arbitrary and the backbone was never "
            "taught to read them: train one (python -m msa_jax.train) and encode with "
            "--checkpoint_workdir")
  elif kind == "tiny":
    why += "; this bank's model is random (--model=tiny): it is for testing the machinery"
  return why


@dataclasses.dataclass
class AskSession:
  """A bank and its model, loaded once, answering any number of questions."""

  bank: MemoryBank
  model: Model
  engine: Any
  template: dict
  offset: int
  args: Any

  @classmethod
  def open(cls, args) -> AskSession:
    bank = open_bank(args.bank)
    spec = bank.metadata["model"]
    _log(f"[ask] loading the model ({spec.get('kind')}) of {args.bank}...")
    start = time.perf_counter()
    model = build_model(spec)
    template = dict(bank.metadata.get("template") or DEFAULT_TEMPLATE)
    for name in ("question_prefix", "answer_marker"):
      if getattr(args, name) is not None:
        template[name] = getattr(args, name)
    offset = model.msa.top_k  # the layout the model was built / trained with
    msa = model.msa if args.top_k is None else model.msa.replace(top_k=args.top_k)
    engine = engine_lib.MSAEngine(model.config, msa, model.params, bank)
    _log(f"[ask] ready in {time.perf_counter() - start:.1f}s ({bank.num_docs} documents); the "
         "first answer compiles the model")
    return cls(bank, model, engine, template, offset, args)

  @property
  def stops(self) -> tuple[int, ...]:
    tok = self.model.tokenizer
    return tuple(dict.fromkeys([int(t) for t in [tok.eos_id, *getattr(tok, "stop_ids", ())]
                                if t is not None]))

  def answer(self, questions: list[str], first_number: int = 1) -> list[dict]:
    """Answers `questions` in batches of --batch_size, printing each; returns the records."""
    out = []
    size = self.args.batch_size
    for lo in range(0, len(questions), size):
      batch = questions[lo:lo + size]
      padded = batch + [batch[-1]] * (min(size, len(questions)) - len(batch))  # one shape
      run = self._interleave if self.args.interleave else self._plain
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
              - self.args.max_new_tokens)
    if budget < 1:
      raise CliError(f"--max_new_tokens={self.args.max_new_tokens} leaves no room for a "
                     f"question within the model's {cfg.max_position} positions")
    queries = []
    for n, q in enumerate(questions, first_number):
      ids = list(tok.encode(self.template["question_prefix"] + q, add_bos=False))
      if not ids:
        raise CliError(f"question {n} ({q[:40]!r}) has no tokens")
      ids, warning = validation.truncate_tokens(
          ids, budget, f"question {n}", f"the model's {cfg.max_position} positions minus the "
          f"template, the memory offset and --max_new_tokens={self.args.max_new_tokens}")
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
    if self.args.all_layers:
      _print_routed(self.bank, routed, indent)
    else:
      _print_compact(self.bank, routed, indent, self.engine.msa.top_k)

  def _plain(self, questions: list[str], first_number: int, real: int) -> list[dict]:
    tok = self.model.tokenizer
    head, queries, marker = self._query_tokens(questions, first_number, real)
    pad = tok.pad_id if tok.pad_id is not None else (tok.eos_id or 0)
    prompts = engine_lib.PromptBatch.from_segments([head] * len(queries), queries,
                                                   [marker] * len(queries),
                                                   position_offset=self.offset, pad_id=int(pad))
    stops = self.stops
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=self.args.max_new_tokens,
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
        max_rounds=self.args.max_rounds, max_new_tokens=self.args.max_new_tokens,
        id_kind=self.args.id_kind, head=t["head"], question_prefix=t["question_prefix"],
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


def ask(args, stdin=None) -> list[dict]:
  """`ask`: routed documents and answers for every question (see the module docstring); the
  bank and the model are loaded once, after every flag and question has been checked."""
  check_ask_flags(args)
  questions = read_questions(args)
  session = AskSession.open(args)
  out = session.answer(questions) if questions else []
  if args.interactive:
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
# Flags
# --------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors (a `CliError`) and a did-you-mean for unknown flags."""

  def error(self, message: str):
    if message.startswith("unrecognized arguments: "):
      known = [o for a in self._actions for o in a.option_strings]
      for sub in self._subparsers._group_actions if self._subparsers else []:
        for parser in sub.choices.values():
          known += [o for a in parser._actions for o in a.option_strings]
      first = message.split(": ", 1)[1].split()[0].partition("=")[0]
      message += validation.did_you_mean(first, set(known) - {"-h", "--help"})
    raise CliError(f"{self.prog}: {message}")


def make_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="python -m msa_jax.bank", allow_abbrev=False,
                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--compilation_cache", help=runtime.FLAG_HELP)
  sub = parser.add_subparsers(dest="command", required=True)
  enc = sub.add_parser("encode", help="encode a corpus into a memory bank", allow_abbrev=False)
  enc.add_argument("--corpus", required=True)
  enc.add_argument("--bank", required=True)
  enc.add_argument("--checkpoint_workdir")
  enc.add_argument("--step", type=int, default=None)
  enc.add_argument("--model")
  enc.add_argument("--seed", type=int, default=0)
  enc.add_argument("--num_layers", type=int, default=None,
                   help="keep only the first layers of the model (smollm2, tiny)")
  enc.add_argument("--tokenizer", default="smollm2", help=f"for --model=tiny: {TOKENIZERS}")
  enc.add_argument("--max_doc_tokens", type=int, required=True)
  enc.add_argument("--limit", type=int, default=None)
  enc.add_argument("--batch_size", type=int, default=16)
  enc.add_argument("--doc_template", default="{title}\n{text}")
  enc.add_argument("--overwrite", action="store_true")
  enc.add_argument("--commit_every", type=int, default=4096,
                   help="commit the bank after this many documents ...")
  enc.add_argument("--commit_seconds", type=float, default=30.0,
                   help="... or after this many seconds of encoding, whichever comes first")
  a = sub.add_parser("ask", help="route questions against a bank and answer them",
                     allow_abbrev=False)
  a.add_argument("--bank", required=True)
  a.add_argument("--question", action="append", default=[])
  a.add_argument("--questions_file", default=None, help="one question a line (UTF-8)")
  a.add_argument("--interactive", action="store_true",
                 help="then read questions from stdin, one a line, until end of input")
  a.add_argument("--batch_size", type=int, default=8, help="questions answered together")
  a.add_argument("--all_layers", action="store_true",
                 help="show every router layer's routed documents (default: one compact line)")
  a.add_argument("--top_k", type=int, default=None)
  a.add_argument("--max_new_tokens", type=int, default=32)
  a.add_argument("--interleave", action="store_true")
  a.add_argument("--max_rounds", type=int, default=3)
  a.add_argument("--id_kind", default="index", choices=("index", "id"),
                 help="what generated identifiers name: a bank position or a bank id")
  a.add_argument("--question_prefix", default=None)
  a.add_argument("--answer_marker", default=None)
  a.add_argument("--json", action="store_true", help="also print the results as one JSON line")
  return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
  """Flags; `--msa.FIELD=VALUE` pairs are collected into `args.msa`, `--verbose` (anywhere) into
  `args.verbose`."""
  msa, rest = [], []
  verbose = "--verbose" in argv
  for arg in (a for a in argv if a != "--verbose"):
    if arg.startswith("--msa."):
      if "=" not in arg:
        raise CliError(f"{arg}: write --msa.FIELD=VALUE")
      msa.append(arg[len("--msa."):])
    else:
      rest.append(arg)
  args = make_parser().parse_args(rest)
  args.msa, args.verbose = msa, verbose
  if msa and args.command != "encode":
    raise CliError("--msa.* flags belong to `encode`")
  return args


def main(argv: list[str] | None = None) -> int:
  """Runs a command; a user error (bad flag or input, missing or foreign bank, bad settings
  named by their checks) prints one `error: ...` line and returns 2 (`--verbose`: with the
  traceback)."""
  argv = sys.argv[1:] if argv is None else argv
  try:
    args = parse_args(argv)
    runtime.enable_compilation_cache(args.compilation_cache)
    if args.command == "encode":
      encode(args)
    else:
      results = ask(args)
      if args.json:
        print(json.dumps(results))
  except (BankError, *validation.USER_ERRORS) as e:
    return validation.report(e, verbose="--verbose" in argv)
  return 0


if __name__ == "__main__":
  sys.exit(main())
