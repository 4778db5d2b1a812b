"""The synthetic memory task (key -> value of the document holding it), for a 2-core CPU.

  python -m msa_jax.train --config=configs/demo.py --workdir=/tmp/msa_demo
  python -m msa_jax.train --config=configs/demo.py:global_rope --workdir=/tmp/msa_demo_global
  python -m msa_jax.train --config=configs/demo.py:top4 --workdir=/tmp/msa_demo_top4
  python -m msa_jax.train --config=configs/demo.py:scale --workdir=/tmp/msa_scale  # 7-digit ids

Documents are `<doc> [ id ] filler <fact> k k k v filler` (3 key words of 128, a value word of
256, 5-digit identifiers), streamed from (seed, index) (`synthetic.CorpusSpec`): training uses
documents 0..19,999, the held-out eval and the train-short/infer-long table the documents after
them. A question names a key; the model routes to the document holding it (top_k 1) and answers
its value (`value <eos>`). The table asks held-out questions against memories of 1x / 10x /
100x / 2000x the 512-token training memory (up to 1,024,000 tokens, 16,000 documents) through
the inference engine (bank, routing over the whole bank, generation).

Measured, 2-core CPU shared with 6 other jobs (load average 10-14), each run ~24 min wall
(solo ~5x faster); recall@1 / answer at 1x, 10x, 100x, 2000x:
  E (this config): RESULT_E
  D (no hard negatives, identifier answers `[ 5 digits ]`): recall@1 0.914 / 0.727 / 0.375 /
    0.164; identifier never copied (LM loss at chance, 1.43-1.45, for all 1,800 LM steps: id acc
    0.000).
  C (hard negatives from step 0, identifier answers): router stalls (aux loss 0.6-1.0, in-batch
    recall@1 0.5-0.75 at step 1,600; stopped).
  B (7-digit identifiers, hard negatives from step 0, 500 warm-up steps at 1e-3): in-batch
    recall@1 0.375-0.5 at step 1,100, LM at chance (stopped).
  Before this task (4-digit ids, 2-word keys from 128 words, 4,000 documents, no hard
    negatives; it cannot go past 10,000 documents): recall@1 = id acc 0.98 / 0.94 / 0.73 / 0.44
    at 1x / 10x / 100x / 1000x, 4 min 46 s solo.
What mattered: router warm-up on the routing loss alone before the LM loss joins (the LM loss
from the start teaches the model to ignore a memory the untrained router fills with wrong
documents); the fact inside the identifier's chunk (`fact_span`); hard negatives only after the
warm-up (`hard_negatives_after`: from step 0 they stall the router, run C; without them routing
does not survive 16,000 documents, run D); a training corpus far larger than the steps' positives
(20,000 documents: no key is memorised). What failed: copying a 5- or 7-digit identifier from a
pooled chunk (runs B-D), hence value answers. Not run for lack of CPU time: `:top4` (top_k 4,
the LM must pick the right one of 4 routed documents) and `:global_rope` at these sizes.
Variants combine with commas (`:top4,global_rope`); `:smoke` is a few steps for tests.
Rerunning the same command resumes from the workdir.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dtype = "float32"  # compute dtype; parameters stay float32
  c.model = ml_collections.ConfigDict(dict(
      preset="tiny",  # vocab_size comes from the tokenizer
      overrides=dict(embed_dim=128, mlp_dim=256, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=32, max_position=4096)))
  c.msa = ml_collections.ConfigDict(dict(
      router_layers="upper_half", top_k=1, chunk_size=16, decouple_router=True,
      aux_loss="infonce", temperature=0.05, lm_weight=1.0, aux_weight=1.0,
      kernel_impl="auto"))
  c.data = ml_collections.ConfigDict(dict(
      kind="synthetic", num_docs=20000, eval_docs=128, doc_length=64, docs_per_sample=8,
      facts_per_doc=1, fact_span=8, key_length=3, id_digits=5, include_value=True,
      include_identifier=False, seed=0, rope="document",
      num_filler_words=64, num_key_words=128, num_value_words=256, hard_negatives=3,
      hard_negatives_after=1200,
      loader="python"))  # or "grain": same batches, grain iterator state in the checkpoints
  # The paper's two phases, at demo scale: router warm-up on the aux loss alone, then both.
  # The LM loss from the start teaches the model to ignore a memory the untrained router fills
  # with the wrong documents (its identifier loss then stays at chance).
  c.optim = ml_collections.ConfigDict(dict(
      weight_decay=0.01, grad_clip_norm=1.0, end_lr_factor=0.05,
      phases=[dict(steps=1200, learning_rate=2e-3, lm_weight=0.0, aux_weight=1.0,
                   warmup_steps=50, schedule="constant"),
              dict(steps=1800, learning_rate=1e-3, lm_weight=1.0, aux_weight=1.0,
                   warmup_steps=50, schedule="cosine")]))
  c.train = ml_collections.ConfigDict(dict(
      steps=3000, batch_size=8, log_every=100, eval_every=1000, eval_batches=8,
      checkpoint_every=1000, keep_checkpoints=2))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # After training: held-out memories of x * docs_per_sample documents (train short, infer
  # long), printed as a table and written to <workdir>/extrapolation.json.
  c.extrapolation = ml_collections.ConfigDict(dict(multipliers=(1, 10, 100, 2000),
                                                   questions=128))
  variants = [v for v in (arg or "").split(",") if v]
  for variant in variants:
    if variant not in VARIANTS:
      raise ValueError(f"unknown variant {variant!r} for configs/demo.py; known: "
                       f"{', '.join(repr(v) for v in VARIANTS)} (comma-separated to combine)")
    VARIANTS[variant](c)
  return c


def _smoke(c: ml_collections.ConfigDict) -> None:
  """A few steps, for tests."""
  c.data.num_docs, c.data.eval_docs = 64, 16
  c.train.update(steps=6, log_every=2, eval_every=3, eval_batches=2, checkpoint_every=3)
  c.optim.phases = [dict(steps=3, learning_rate=1e-3, lm_weight=0.0, aux_weight=1.0,
                         warmup_steps=1, schedule="constant"),
                    dict(steps=3, learning_rate=1e-3, lm_weight=1.0, aux_weight=1.0,
                         warmup_steps=1, schedule="cosine")]
  c.extrapolation.update(multipliers=(1, 2), questions=8)


def _scale(c: ml_collections.ConfigDict) -> None:
  """7-digit identifiers (10M and 100M-token memories: 156,250 and 1,562,500 documents; the
  128 ** 3 keys hold them too) and a longer schedule."""
  c.data.update(id_digits=7, fact_span=6)
  c.train.steps = 8000
  c.optim.phases[0]["steps"], c.optim.phases[1]["steps"] = 2500, 5500


def _top4(c: ml_collections.ConfigDict) -> None:
  """Routes 4 documents: the LM must copy from the right one of them."""
  c.msa.top_k = 4


def _global_rope(c: ml_collections.ConfigDict) -> None:
  """The ablation: documents and prompt on one running position axis."""
  c.data.rope = "global"


VARIANTS = {"smoke": _smoke, "scale": _scale, "top4": _top4, "global_rope": _global_rope}
