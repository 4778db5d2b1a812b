"""The synthetic memory task (key -> document identifier), small enough for a 2-core CPU.

  python -m msa_jax.train --config=configs/demo.py --workdir=/tmp/msa_demo
  python -m msa_jax.train --config=configs/demo.py:global_rope --workdir=/tmp/msa_demo_global

Documents are `<doc> [ id ] filler <fact> key value filler`; a question names a key and the
model must route to the document holding it and generate its identifier. After training, the
train-short/infer-long table asks held-out questions against memories of 1x to 1000x the
training memory through the inference engine. Measured on a 2-core CPU: 4 min 46 s; held-out
identifier accuracy 0.98 / 0.94 / 0.73 / 0.44 at 1x / 10x / 100x / 1000x (512 to 512,000
memory tokens), routing recall@1 0.98 / 0.94 / 0.73 / 0.44.

Choices that make a 2-layer model learn this (each found by a failed run): a large training
corpus (4,000 documents; with 512 the router memorises its key pairs); the fact inside the
identifier's chunk (`fact_span`: pooled memory keeps no token order across chunks, and a
2-layer model cannot carry the identifier's digit order into a later chunk); top_k 1 (with two
routed documents the LM never learned which one to copy from); and router warm-up on the
routing loss alone before the LM loss joins. Variants: `:global_rope` (the ablation: its
routing extrapolates, identifier copying is not learned), `:smoke` (a few steps, for tests).
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
      kind="synthetic", num_docs=4000, eval_docs=128, doc_length=64, docs_per_sample=8,
      facts_per_doc=1, fact_span=6, key_length=3, id_digits=7, include_value=False, seed=0,
      rope="document",  # 7 digits, 128 ** 3 keys: a 100M-token memory (1.6M documents) fits
      num_filler_words=64, num_key_words=128, num_value_words=32,
      loader="python"))  # or "grain": same batches, grain iterator state in the checkpoints
  # The paper's two phases, at demo scale: router warm-up on the aux loss alone, then both.
  # The LM loss from the start teaches the model to ignore a memory the untrained router fills
  # with the wrong documents (its identifier loss then stays at chance).
  c.optim = ml_collections.ConfigDict(dict(
      weight_decay=0.01, grad_clip_norm=1.0, end_lr_factor=0.05,
      phases=[dict(steps=500, learning_rate=1e-3, lm_weight=0.0, aux_weight=1.0,
                   warmup_steps=50, schedule="constant"),
              dict(steps=2500, learning_rate=1e-3, lm_weight=1.0, aux_weight=1.0,
                   warmup_steps=50, schedule="cosine")]))
  c.train = ml_collections.ConfigDict(dict(
      steps=3000, batch_size=8, log_every=100, eval_every=1000, eval_batches=8,
      checkpoint_every=1000, keep_checkpoints=2))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # After training: held-out memories of x * docs_per_sample documents (train short, infer
  # long), printed as a table and written to <workdir>/extrapolation.json.
  c.extrapolation = ml_collections.ConfigDict(dict(multipliers=(1, 10, 100, 2000),
                                                   questions=64))
  if arg == "smoke":
    c.data.num_docs, c.data.eval_docs = 64, 16
    c.train.update(steps=6, log_every=2, eval_every=3, eval_batches=2, checkpoint_every=3)
    c.optim.phases = [dict(steps=3, learning_rate=1e-3, lm_weight=0.0, aux_weight=1.0,
                           warmup_steps=1, schedule="constant"),
                      dict(steps=3, learning_rate=1e-3, lm_weight=1.0, aux_weight=1.0,
                           warmup_steps=1, schedule="cosine")]
    c.extrapolation.update(multipliers=(1, 2), questions=8)
  elif arg == "scale":  # longer training for the 10M / 100M-token memories
    pass
  elif arg == "global_rope":  # the ablation: documents and prompt on one position axis
    c.data.rope = "global"
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r} for configs/demo.py; known: 'smoke', 'scale', "
                     "'global_rope'")
  return c
