"""Compile stage of the benchmark suite: how long a model takes to become usable.

Rows (seconds, one measurement each: these are one-off costs, with the persistent compilation
cache off so that every compile is real):

  train step lower / compile  one train step of the `qwen3_4b` preset with MSA (fwd + bwd +
                              AdamW, bf16 compute), traced from abstract shapes on the CPU
                              (nothing allocated): `jax.jit(step).lower(...)` and `.compile()`.
  smollm2-msa load            SmolLM2-135M's backbone read from its GGUF, tokenizer and fresh
                              routers (`loading.pretrained.load_params`: only the routers are
                              initialised); the baseline is the former way, `init_params` of the
                              whole model (compiling every initialiser) with the checkpoint
                              copied over it. Both include reading the checkpoint.
  smollm2-msa first question  a bank of 8 documents encoded, then one question routed and
                              answered (8 tokens): the engine's compiles dominate.

--quick uses the `tiny` preset's train step with 2 layers and SmolLM2's first 2 layers.

The model scans runs of alike layers (`LayerStack.scan_layers`); `train_step_compile(...,
scan_layers=False)` unrolls them, the former way. Before / after on the shared 2-core machine
at load average 14-19, one fresh process per measurement, interleaved (process CPU seconds of
lower + compile): qwen3_4b cut to 8 layers 30.6 -> 29.6; all 36 layers 145.0 -> 53.9 (wall 813 -> 289-296 s); SmolLM2-MSA
first question 16.3, 15.8 -> 9.8 CPU s (wall 105.6, 100.3 -> 69.7, 39.2 s). The table is in
docs/measurements.md, "Scanned layers".
"""

from __future__ import annotations

import os
import tempfile
import time

import flax.traverse_util
import jax
import jax.numpy as jnp

from msa_jax import runtime
from msa_jax.checkpoint import SMOLLM2, checkpoint_tokenizer, smollm2_path
from msa_jax.inference import engine
from msa_jax.memory import encode as encode_lib
from msa_jax.inference.sampling import SamplingConfig
from msa_jax.loading import pretrained
from msa_jax.memory.bank import MemoryBank
from msa_jax.model import MSABatch, MSAConfig, MSATransformer, get_preset, init_params
from msa_jax.train import optimizer as optim_lib
from msa_jax.train import step as step_lib

TRAIN_SHAPE = dict(batch=1, docs=4, doc_len=128, prompt_len=64)
DOCS = 8


def abstract_batch(batch: int, docs: int, doc_len: int, prompt_len: int) -> MSABatch:
  """ShapeDtypeStructs of a training batch (with LM and route labels)."""
  i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
  b1 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bool_)
  return MSABatch(doc_tokens=i32(batch, docs, doc_len), doc_lengths=i32(batch, docs),
                  tokens=i32(batch, prompt_len), token_mask=b1(batch, prompt_len),
                  positions=i32(batch, prompt_len), query_mask=b1(batch, prompt_len),
                  memory_index=i32(batch), labels=i32(batch, prompt_len),
                  route_labels=i32(batch, docs))


def train_step_compile(preset: str, num_layers: int | None = None,
                       scan_layers: bool = True) -> tuple[float, float]:
  """(lowering s, compile s) of one train step of `preset` with MSA, from abstract shapes
  (`scan_layers=False`: the layers unrolled, the former way)."""
  cfg = get_preset(preset)
  if num_layers:
    cfg = cfg.replace(num_layers=num_layers)
  msa = MSAConfig(top_k=2, chunk_size=32, kernel_impl="xla")
  model = MSATransformer(cfg, msa, dtype=jnp.bfloat16, param_dtype=jnp.float32,
                         scan_layers=scan_layers)
  tx = optim_lib.make_optimizer({})
  state = step_lib.abstract_train_state(model, tx)
  train_step = step_lib.make_train_step(model, cfg, msa.loss, tx, donate=False)
  start = time.perf_counter()
  lowered = train_step.lower(state, abstract_batch(**TRAIN_SHAPE))
  lowered_at = time.perf_counter()
  lowered.compile()
  return lowered_at - start, time.perf_counter() - lowered_at


def load_smollm2(num_layers: int | None, full_init: bool):
  """(config, msa, params, tokenizer) of SmolLM2 under fresh routers; `full_init`: the former
  way (initialise everything, then overwrite the backbone)."""
  tokenizer = checkpoint_tokenizer(SMOLLM2)
  cfg, backbone = pretrained.load_backbone(SMOLLM2, num_layers)
  msa = MSAConfig()
  model = MSATransformer(cfg, msa)
  if full_init:
    flat = flax.traverse_util.flatten_dict(init_params(model, jax.random.key(0)))
    theirs = flax.traverse_util.flatten_dict(backbone)
    params = flax.traverse_util.unflatten_dict(
        {p: v if pretrained.is_fresh(p) else jnp.asarray(theirs[p], v.dtype)
         for p, v in flat.items()})
  else:
    params = pretrained.load_params(model, jax.random.key(0), backbone)
  jax.block_until_ready(params)
  return cfg, msa, params, tokenizer


def first_question(cfg, msa, params, tokenizer, directory) -> str:
  """Encodes DOCS short documents into a bank, asks one question; returns the answer."""
  texts = [f"Document {i}: the secret number of box {i} is {i * 7 + 3}." for i in range(DOCS)]
  tokens = [tokenizer.encode(t) for t in texts]
  bank = encode_lib.create_bank(os.path.join(directory, "bank"), cfg, msa, params, staged=True)
  encode_lib.encode_corpus(bank, cfg, msa, params, [str(i) for i in range(DOCS)], tokens,
                           texts, max_tokens=max(map(len, tokens)), batch_size=DOCS, progress=None)
  bank.publish()
  bank = MemoryBank.open(os.path.join(directory, "bank"))
  question = tokenizer.encode("What is the secret number of box 5?")
  prompts = engine.PromptBatch.from_segments([[]], [question], [tokenizer.encode(" Answer:")],
                                             position_offset=msa.arch.top_k)
  out, lengths, _ = engine.MSAEngine(cfg, msa, params, bank).generate(
      prompts, SamplingConfig(max_new_tokens=8))
  return tokenizer.decode([int(t) for t in out[0, :lengths[0]]])


def _timed(fn, *args):
  start = time.perf_counter()
  out = fn(*args)
  return out, time.perf_counter() - start


def run(quick: bool) -> list[dict]:
  """Rows for the train step's lowering and compile, SmolLM2-MSA's load and first question."""
  with runtime.compilation_cache_off():  # every compile is real
    return _rows(quick)


def _rows(quick: bool) -> list[dict]:
  preset, layers = ("tiny", 2) if quick else ("qwen3_4b", None)
  rows = []
  lower_s, compile_s = train_step_compile(preset, layers)
  name = f"{preset}{f' ({layers} layers)' if layers else ''} train step"
  rows.append(dict(stage="compile", case=f"{name}: lower", ours_s=lower_s, baseline="-",
                   baseline_s=None, flops=None))
  rows.append(dict(stage="compile", case=f"{name}: compile", ours_s=compile_s, baseline="-",
                   baseline_s=None, flops=None))
  try:
    smollm2_path()
  except FileNotFoundError:
    return rows
  smol_layers = 2 if quick else None
  pretrained.load_backbone(SMOLLM2, smol_layers)  # both read a warm file cache
  _, before_s = _timed(load_smollm2, smol_layers, True)
  loaded, load_s = _timed(load_smollm2, smol_layers, False)
  rows.append(dict(stage="compile", case="smollm2-msa load", ours_s=load_s,
                   baseline="full init + overwrite", baseline_s=before_s, flops=None))
  with tempfile.TemporaryDirectory() as directory:
    _, ask_s = _timed(first_question, *loaded, directory)
  rows.append(dict(stage="compile", case="smollm2-msa first question", ours_s=ask_s,
                   baseline="-", baseline_s=None, flops=None))
  return rows
