"""Memory banks (`python -m msa_jax.bank`): encode a corpus once, then ask questions against it.

The variant names the command (`:encode` is the default):

  # stage 1: a corpus into a bank (SmolLM2's first 4 layers under fresh routers)
  python -m msa_jax.bank --config=configs/bank.py:encode \
      --config.corpus=../shared/data/beir/nfcorpus --config.bank=/tmp/nf \
      --config.model=smollm2 --config.num_layers=4 --config.msa.top_k=4 \
      --config.msa.chunk_size=16 --config.max_doc_tokens=128 --config.limit=1000
  # a trained workdir's model instead
  python -m msa_jax.bank --config=configs/bank.py:encode --config.corpus=docs.jsonl \
      --config.bank=/tmp/b --config.checkpoint_workdir=/tmp/msa_beir
  # stage 2: questions against the bank (the bank records its model and prompt template)
  python -m msa_jax.bank --config=configs/bank.py:ask --config.bank=/tmp/nf \
      --question="Do statins reduce cancer risk?" [--question=...] \
      [--config.questions_file=FILE] [--config.interactive=true] [--config.interleave=true]

See `msa_jax.bank` for what each command prints and checks.
"""

import ml_collections

COMMANDS = ("encode", "ask")


def _encode() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.command = "encode"
  c.bank = ""  # the bank directory (required)
  # A BEIR folder (corpus.jsonl of {"_id", "title", "text"}) or a .jsonl of {"id", "text"
  # [, "title"]} (required).
  c.corpus = ""
  # The model, one of: a `python -m msa_jax.train` workdir (its latest checkpoint, or `step`);
  # model = "smollm2" (SmolLM2-135M-Instruct, fresh random routers from `seed`), "tiny" (a random
  # `tiny` preset model over `tokenizer`: "smollm2" or "synthetic") or a Hugging Face repo id
  # ("Qwen/Qwen3-0.6B", from the local HF cache; fresh routers).
  c.checkpoint_workdir = ""
  c.step = ml_collections.FieldReference(None, field_type=int)
  c.model = ""
  c.seed = 0
  c.num_layers = ml_collections.FieldReference(None, field_type=int)  # keep the first layers
  c.tokenizer = "smollm2"
  # MSAConfig fields of a smollm2 / tiny / repo-id model (a workdir has its own); router_layers:
  # "upper_half", "all" or layer indices "1,3".
  c.msa = ml_collections.ConfigDict(dict(
      router_layers="upper_half", top_k=16, chunk_size=64, decouple_router=True,
      router_bias=False, head_reduce="mean", query_reduce="max", chunk_reduce="max",
      # unset: as the aux loss (cosine for InfoNCE); True/False decides the routing math
      cosine_routing=ml_collections.FieldReference(None, field_type=bool)))
  c.max_doc_tokens = 0  # documents are cut to this many tokens (required, >= 1)
  c.limit = ml_collections.FieldReference(None, field_type=int)  # keep the first documents
  c.batch_size = 16
  c.doc_template = "{title}\n{text}"  # fields {index} {id} {title} {text}
  c.overwrite = False  # replace a bank of another corpus or model (or its unfinished encoding)
  c.commit_every = 4096  # commit after this many documents ...
  c.commit_seconds = 30.0  # ... or this many seconds of encoding, whichever comes first
  return c


def _ask() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.command = "ask"
  c.bank = ""  # the bank directory (required)
  # Questions: the --question flags, then this file's non-blank lines (UTF-8), then with
  # `interactive` one a line from stdin until end of input.
  c.questions_file = ""
  c.interactive = False
  c.batch_size = 8  # questions answered together
  c.all_layers = False  # every router layer's ranking (default: one compact line)
  c.top_k = ml_collections.FieldReference(None, field_type=int)  # None: the bank model's top_k
  c.max_new_tokens = 32
  c.interleave = False  # Memory Interleave rounds
  c.max_rounds = 3
  c.id_kind = "index"  # what generated identifiers name: "index" (bank position) or "id"
  # The prompt template (None: the one the bank records).
  c.question_prefix = ml_collections.FieldReference(None, field_type=str)
  c.answer_marker = ml_collections.FieldReference(None, field_type=str)
  c.json = False  # also print the results as one JSON line
  # The decode steps' layer loop: None unrolls it on CPU (faster steps, a longer first
  # compile), True scans it (a one-shot question starts sooner). `MSAEngine(scan_decode=...)`.
  c.scan_decode = ml_collections.FieldReference(None, field_type=bool)
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg in (None, "", "encode"):
    return _encode()
  if arg == "ask":
    return _ask()
  raise ValueError(f"unknown variant {arg!r} for configs/bank.py; known: {list(COMMANDS)}")
