"""Config pieces shared by the config files (`from configs import common`; commands run from the
repository root, which puts it on the import path): a pretrained backbone (SmolLM2 GGUF) with
fresh MSA routers trained for generative retrieval (configs/beir.py, nq320k.py, router_adapt.py)
and the `:smoke` shrink. Not a config file itself (it has no `get_config`).
"""

import ml_collections


def retrieval_config(kind: str, path: str, *, train_split: str, eval_split: str | None,
                     steps: int = 2000) -> ml_collections.ConfigDict:
  """A pretrained backbone (SmolLM2 GGUF) with fresh MSA routers on its upper half, trained
  for generative retrieval (question -> document identifier) on `data.kind = kind`.

  Two phases as in the paper: router warm-up (0.1 * L_LM + L_aux at lr 1e-4) for the first
  half of `steps`, then L_LM + 0.1 * L_aux at lr 6e-6.
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dtype = "float32"  # compute dtype ("bfloat16" on GPUs); parameters stay float32
  c.model = ml_collections.ConfigDict(dict(
      # "smollm2" | a .gguf file | a HF checkpoint dir (e.g. Qwen3-0.6B); None: random init of
      # `preset` (vocab from the tokenizer). With a checkpoint, preset "" takes its architecture
      # (a preset name must match it). num_layers: keep only the first layers (None: all).
      # scan_layers: compile one layer per run of alike layers (False: unroll them).
      checkpoint="smollm2", preset="", num_layers=None, scan_layers=True))
  c.model.num_layers = ml_collections.FieldReference(None, field_type=int)
  c.msa = ml_collections.ConfigDict(dict(
      router_layers="upper_half", top_k=4, chunk_size=32, decouple_router=True,
      aux_loss="infonce", temperature=0.05, lm_weight=1.0, aux_weight=0.1, kernel_impl="auto"))
  c.data = ml_collections.ConfigDict(dict(
      kind=kind, path=path, train_split=train_split, eval_split=eval_split or "",
      eval_holdout=64, docs_per_sample=16, doc_tokens=256, prompt_tokens=64, max_positives=1,
      head="", question_prefix="Question: ", answer_marker="\nDocument:", seed=0,
      # Read through the dataset's tfds builder, prepared once into data_dir ("": the default,
      # ~/.cache/msa_jax/tfds or $MSA_JAX_TFDS_DIR), and grain (loader "python": the same
      # batches without grain).
      data_dir="", loader="grain"))
  half = steps // 2
  c.optim = ml_collections.ConfigDict(dict(
      weight_decay=0.01, grad_clip_norm=1.0, warmup_steps=0,
      phases=[dict(steps=half, learning_rate=1e-4, lm_weight=0.1, aux_weight=1.0),
              dict(steps=steps - half, learning_rate=6e-6, lm_weight=1.0, aux_weight=0.1)]))
  c.train = ml_collections.ConfigDict(dict(
      steps=steps, batch_size=8, log_every=20, eval_every=250, eval_batches=8,
      checkpoint_every=500, keep_checkpoints=2))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A few steps and one eval of `c` at tiny shapes (CPU tests)."""
  c.data.update(docs_per_sample=4, doc_tokens=32, prompt_tokens=40, eval_holdout=2)
  c.msa.update(top_k=2, chunk_size=16)
  c.model.num_layers = 4  # the backbone's first 4 layers (MSA on layers 2, 3): 3x faster
  c.train.update(steps=3, batch_size=2, log_every=1, eval_every=3, eval_batches=1,
                 checkpoint_every=3)
  c.optim.phases = [dict(steps=2, learning_rate=1e-4, lm_weight=0.1, aux_weight=1.0),
                    dict(steps=1, learning_rate=6e-6, lm_weight=1.0, aux_weight=0.1)]
  return c
