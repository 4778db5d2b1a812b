"""The synthetic memory task (key -> document identifier), small enough for a 2-core CPU.

  python -m msa_jax.train --config=configs/demo.py --workdir=/tmp/msa_demo

Documents are `<doc> [ id ] filler ... <fact> key value ... filler`; a question names a key
and the model must route to the document holding it and generate its identifier. About
4.5 minutes on a 2-core CPU: held-out routing recall@1 0.67, recall@5 0.98 over 16 documents
(measured). The training corpus is large (4,000 documents, so most key pairs are seen) because a
small one gets memorised: the router then fails on held-out documents. Variant `:smoke` runs a
few steps (for tests). Rerunning the same command resumes from the workdir.
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
      router_layers="upper_half", top_k=2, chunk_size=16, decouple_router=True,
      aux_loss="infonce", temperature=0.05, lm_weight=1.0, aux_weight=1.0,
      kernel_impl="auto"))
  c.data = ml_collections.ConfigDict(dict(
      kind="synthetic", num_docs=4000, eval_docs=128, doc_length=64, docs_per_sample=8,
      facts_per_doc=1, fact_span=9, key_length=2, id_digits=4, include_value=False, seed=0,
      rope="document",
      num_filler_words=64, num_key_words=128, num_value_words=32,
      loader="python"))  # or "grain": same batches, grain iterator state in the checkpoints
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, schedule="cosine", warmup_steps=50, total_steps=1500,
      end_lr_factor=0.05, weight_decay=0.01, grad_clip_norm=1.0))
  c.train = ml_collections.ConfigDict(dict(
      steps=1500, batch_size=8, log_every=50, eval_every=500, eval_batches=8,
      checkpoint_every=500, keep_checkpoints=2))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # After training: held-out memories of x * docs_per_sample documents (train short, infer
  # long), printed as a table and written to <workdir>/extrapolation.json.
  c.extrapolation = ml_collections.ConfigDict(dict(multipliers=(1, 10, 100, 1000),
                                                   questions=64))
  if arg == "smoke":
    c.data.num_docs, c.data.eval_docs = 64, 16
    c.train.update(steps=6, log_every=2, eval_every=3, eval_batches=2, checkpoint_every=3)
    c.optim.update(warmup_steps=2, total_steps=6)
    c.extrapolation.update(multipliers=(1, 2), questions=8)
  elif arg == "global_rope":  # the ablation: documents and prompt on one position axis
    c.data.rope = "global"
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r} for configs/demo.py; known: 'smoke', 'global_rope'")
  return c
