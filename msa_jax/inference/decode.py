"""Autoregressive generation with a KV cache: the one decode loop of the backbone and of MSA.

`decode_loop` is the jitted loop both use (`generate` here for the backbone, the MSA engine's
`MSAEngine.generate` over routed memory); each step runs the model's own `decode_step` and
`head` (`model.apply(..., method=...)`, the layers training runs). The cache is laid out for
decoding rather than `Transformer.__call__`'s:
  * one cache for every layer, [L, B, J, S, D] arrays (kv heads before slots), so each decode
    step's attention reads every head's keys as one contiguous block instead of transposing
    the cache each step, and the scanned layers take their slices without a stack and unstack
    of per-layer caches at every step;
  * one write slot shared by every row: the prompt fills slots 0..Tp-1 (right padding
    included, hidden by `OwnSlots`), decode token s goes to slot Tp + s in every row, so the
    cache update is one in-place dynamic-update-slice of every layer's new k, v after the
    layer scan (a per-row slot compiles to a scatter per layer and per step); inside the scan
    the cache is only read and each layer's new k, v join its softmax beside it
    (`MSAAttention.decode_attention`); RoPE positions stay per row (prompt length + s);
  * the prefill runs on the prompts packed into one row when that is fewer FLOPs than the
    padded [B, Tp] block (`pack_prompts`, `packing_pays`), and the LM head at each row's last
    prompt token only;
  * routed memory (MSA) is read where it is, in the same softmax as the cache (no
    concatenated copy per step), or by the block-sparse kernel when `kernel_impl` says so;
  * on CPU the decode steps' layers are unrolled (the model's `scan_decode`, see
    `LayerStack.decode_step`) and the decode programs run their dots on Eigen instead of
    YNNPACK (`decode_jit`): SmolLM2, batch 8, 64 tokens, 2 cores of an AMD EPYC 7002
    (2026-12-05, same process, the same tokens): 5.88 s with the scanned layers on YNNPACK,
    5.03 s scanned on Eigen, 5.40 s unrolled on YNNPACK, 3.88 s unrolled on Eigen (HF
    transformers' `generate`: 7.96 s); batch 1: 3.40, 3.39, 1.89, 1.81 s (HF 4.00 s).
SmolLM2-135M, batch 8, on 2 busy CPU cores (same process, interleaved): 0.18 s per decode
step with `Transformer.__call__`'s cache, 0.13-0.14 s with this layout, identical tokens.
Concatenating the q/k/v and gate/up kernels into one matmul each was slower (0.18 s). On the
AMD host of 2026-12-05 (same process, 9 interleaved repeats, the benchmark's 8 prompts of
5-31 tokens, identical text): packing cut prefill + first token from 0.57-0.60 to 0.40-0.42
s (86 real tokens in a 96-token row instead of 8 x 32), and the whole 64-token call went from
4.44 to 3.99 s with the one cache (3.75 to 3.35 s in a second run). Tried and dropped: the
cache in the layer scan's carry (each layer writing its slot in place; slower on 2 threads,
its read waits for the write; reading first makes XLA copy the whole cache), the prefill
unrolled (0.12 s less prefill, 3 ms more per decode step), the layer scan unrolled by 2 or 3
(64 tokens 4.1 -> 6.1 s). The commands' malloc setting (`runtime.reuse_host_memory`) saves
0.2 s of each call's prefill (the stacked weights' pages). Writing each layer's new k, v into
its cache slice inside the layer scan copied the slice three times per layer and step; the
cache read-only in the scan and one write after it took the 64-token batch-8 call from 3.9
to 3.1 s (same process, 15 interleaved pairs, paired ratio 0.77, the same tokens), and the
tied LM head as a multiply-reduce (`layers.tied_logits`) another ~3 %.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from msa_jax.inference.sampling import SamplingConfig, sample_logits
from msa_jax.model import attention
from msa_jax.model import msa as msa_lib
from msa_jax.model.config import ModelConfig
from msa_jax.model.transformer import Transformer
from msa_jax.validation import optional_flag


# XLA:CPU's dots run on YNNPACK by default (the "individual dot" library fusion); Eigen's dot
# streams a decode step's weights from DRAM about twice as fast: SmolLM2's [8, 576] x [576,
# 1536] product 0.45 -> 0.24 ms, a 64-token batch-8 generate 5.40 -> 3.88 s with unrolled decode
# layers (batch 1: 1.89 -> 1.81 s; a padded 8 x 128-token prefill 1.68 -> 1.62 s), the same
# tokens (AMD EPYC 7002, 2 cores, 2026-12-05). The other YNNPACK fusion (reductions) stays:
# turning every one off made the whole call 2.4x slower (13.2 s). Only decode programs get it.
_CPU_DECODE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def decode_compiler_options() -> dict | None:
  """XLA options for the programs that decode (`decode_jit`): `_CPU_DECODE_OPTIONS` on a CPU
  backend whose jaxlib accepts them (an experimental option: a jaxlib without it keeps its
  defaults), else None."""
  if jax.default_backend() != "cpu":
    return None
  try:
    jax.jit(lambda x: x @ x, compiler_options=_CPU_DECODE_OPTIONS).lower(
        jnp.ones((2, 2), jnp.float32)).compile()
  except jax.errors.JaxRuntimeError:
    return None
  return dict(_CPU_DECODE_OPTIONS)


def decode_jit(fn):
  """`jax.jit(fn)` compiled with `decode_compiler_options()`: for a program whose time goes to
  decode steps (`generate`'s, `MSAEngine.generate`'s)."""
  return jax.jit(fn, compiler_options=decode_compiler_options())


class Tokenizer(Protocol):
  """What `generate_text` needs from a tokenizer."""

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: list[int]) -> str: ...


class GenerateOutput(NamedTuple):
  """tokens [B, max_new_tokens] int32 (pad_id after a row stops); lengths [B] int32 (the number
  of generated tokens per row, a final stop token included)."""

  tokens: jax.Array
  lengths: jax.Array


class _State(NamedTuple):
  step: jax.Array     # [] int32: tokens emitted so far (same for every row).
  tokens: jax.Array   # [B, N] int32.
  lengths: jax.Array  # [B] int32.
  done: jax.Array     # [B] bool: the row has emitted a stop token.
  cache: attention.KVCache  # the decode cache, [L, B, J, S, D] arrays.


def decode_slots(prompt_slots: int, sampling: SamplingConfig) -> int:
  """Cache slots for prompts right-padded to `prompt_slots` (the last token is never fed)."""
  return prompt_slots + sampling.max_new_tokens - 1


def decode_loop(model: msa_lib.LayerStack, params: Any, sampling: SamplingConfig,
                last_logits: jax.Array, cache: tuple, prompt_lengths: jax.Array,
                prompt_slots: int, last_positions: jax.Array, rng: jax.Array,
                memory: dict | None = None) -> GenerateOutput:
  """Samples `sampling.max_new_tokens` tokens per row after a prefill (call inside jit).

  Args:
    model, params: a backbone `Transformer` or an `MSATransformer` and its parameters.
    last_logits: [B, V] logits of each row's last prompt token (the prefill's).
    cache: the prefilled decode cache (`msa.prefill_cache` per layer) of
      `decode_slots(prompt_slots, sampling)` slots.
    prompt_lengths: [B] real prompt lengths; prompt_slots: Tp, the padded prompt length.
    last_positions: [B] RoPE position of each row's last prompt token.
    rng: PRNG key; the token of step s is drawn with `jax.random.fold_in(rng, s)`.
    memory: {router layer: RoutedBlocks} the generated tokens read (MSA), or None.

  Returns:
    GenerateOutput(tokens [B, N], lengths [B]); a row stops after a stop token.
  """
  n = sampling.max_new_tokens
  b = prompt_lengths.shape[0]
  stop_ids = jnp.asarray(sampling.stop_tokens, jnp.int32)
  variables = {"params": params}
  sees_memory = None if memory is None else jnp.ones((b, 1), bool)

  def emit(state: _State, logits: jax.Array) -> _State:
    """Samples token number `state.step` of every row from its logits [B, V]."""
    tok = sample_logits(logits, jax.random.fold_in(rng, state.step), sampling.temperature,
                        sampling.top_p, sampling.top_k)
    tok = jnp.where(state.done, sampling.pad_id, tok)
    return state._replace(
        step=state.step + 1,
        tokens=state.tokens.at[:, state.step].set(tok),
        lengths=state.lengths + (~state.done).astype(jnp.int32),
        done=state.done | jnp.any(tok[:, None] == stop_ids, axis=-1))

  def cond(state: _State) -> jax.Array:
    return (state.step < n) & ~jnp.all(state.done)

  def body(state: _State) -> _State:
    # Feed the previous token at position last + step, slot Tp + step - 1 of every row.
    tok = jax.lax.dynamic_index_in_dim(state.tokens, state.step - 1, axis=1)
    slot = prompt_slots + state.step - 1
    own = attention.OwnSlots.decode(prompt_lengths, prompt_slots, slot)
    x, cache = model.apply(variables, tok, (last_positions + state.step)[:, None], own,
                           state.cache, slot, memory, sees_memory, method="decode_step")
    logits = model.apply(variables, x, method="head")[:, 0]
    return emit(state._replace(cache=cache), logits)

  state = emit(_State(step=jnp.int32(0), tokens=jnp.full((b, n), sampling.pad_id, jnp.int32),
                      lengths=jnp.zeros((b,), jnp.int32), done=jnp.zeros((b,), bool),
                      cache=cache), last_logits)
  state = jax.lax.while_loop(cond, body, state)
  return GenerateOutput(state.tokens, state.lengths)


class PackedPrompts(NamedTuple):
  """B right-padded prompts packed back to back into one row of P tokens (`pack_prompts`;
  the prefill's input when that is less work than the padded [B, Tp] block, `packing_pays`).

  tokens, positions, segments: [1, P] int32 (segment b + 1 is prompt b; 0 pads the row to P);
  slots: [B, Tp] int32, the packed index of each prompt's cache slot (slots past a prompt's
  length repeat its last token; the decode mask hides them); last: [B] the packed index of
  each prompt's last token.
  """

  tokens: jax.Array
  positions: jax.Array
  segments: jax.Array
  slots: jax.Array
  last: jax.Array


def packed_width(lengths: np.ndarray, bucket: int) -> int:
  """P: the packed row's width, sum(lengths) rounded up to a multiple of `bucket`."""
  return -(-int(np.sum(lengths)) // bucket) * bucket


def packing_pays(cfg: ModelConfig, lengths: np.ndarray, prompt_slots: int,
                 bucket: int) -> bool:
  """Whether the packed row costs fewer prefill FLOPs than the padded [B, Tp] block: a token
  costs 2 W (W: one layer's weights), a pair of tokens that may see each other 4 H D, and
  the packed row's attention is dense over P (the segment mask hides the other prompts), so
  packing loses when the prompts are long and of nearly equal length."""
  weights, hd = cfg.layer_matmul_weights(), cfg.num_heads * cfg.head_dim

  def cost(rows: int, width: int) -> int:
    return rows * width * (2 * weights + 4 * hd * width)

  return cost(1, packed_width(lengths, bucket)) < cost(len(lengths), prompt_slots)


def pack_prompts(tokens: np.ndarray, lengths: np.ndarray, bucket: int) -> PackedPrompts:
  """Right-padded prompts [B, Tp] of `lengths` [B] packed into one row (`PackedPrompts`) of
  `packed_width(lengths, bucket)` tokens."""
  start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int32)
  packed = np.zeros((3, packed_width(lengths, bucket)), np.int32)  # tokens, positions, segments
  for row, (s, n) in enumerate(zip(start, lengths)):
    packed[:, s:s + n] = tokens[row, :n], np.arange(n), np.full(n, row + 1)
  slots = start[:, None] + np.minimum(np.arange(tokens.shape[1])[None, :], lengths[:, None] - 1)
  return PackedPrompts(*(jnp.asarray(a[None]) for a in packed), jnp.asarray(slots, jnp.int32),
                       jnp.asarray(start + lengths - 1, jnp.int32))


def _prefill(model: Transformer, variables, prompt_tokens, prompt_lengths, packed):
  """(last prompt token's hidden state [B, 1, E], each layer's KVCache [B, Tp, J, D]) of the
  right-padded prompts, computed on the padded block or, given `packed`, on the packed row."""
  num_layers = model.config.num_layers
  if packed is None:
    b, tp = prompt_tokens.shape
    positions = jnp.broadcast_to(jnp.arange(tp, dtype=jnp.int32), (b, tp))
    x = model.apply(variables, prompt_tokens, method="embed_tokens")
    x, kvs = model.apply(variables, 0, num_layers, x, positions,
                         attention.OwnSlots.prefill(prompt_lengths), method="prompt_layers")
    return jnp.take_along_axis(x, (prompt_lengths - 1)[:, None, None], axis=1), kvs
  x = model.apply(variables, packed.tokens, method="embed_tokens")
  mask = attention.causal_mask(packed.tokens.shape[1], packed.segments)
  x, kvs = model.apply(variables, 0, num_layers, x, packed.positions, mask,
                       method="prompt_layers")
  kvs = [attention.KVCache(kv.k[0, packed.slots], kv.v[0, packed.slots]) for kv in kvs]
  return x[0, packed.last][:, None], kvs


@functools.lru_cache(maxsize=32)
def _generate_fn(model: Transformer, sampling: SamplingConfig):
  """The jitted generation program (prefill + `decode_loop`) for one (model, sampling)."""

  def run(params: Any, prompt_tokens: jax.Array, prompt_lengths: jax.Array, rng: jax.Array,
          packed: PackedPrompts | None) -> GenerateOutput:
    tp = prompt_tokens.shape[1]
    variables = {"params": params}
    last, kvs = _prefill(model, variables, prompt_tokens, prompt_lengths, packed)
    last_logits = model.apply(variables, last, method="head")[:, 0]
    cache = msa_lib.prefill_cache(kvs, decode_slots(tp, sampling))
    return decode_loop(model, params, sampling, last_logits, cache, prompt_lengths, tp,
                       prompt_lengths - 1, rng)

  return decode_jit(run)


def _check_bucket(bucket) -> None:
  if not (isinstance(bucket, int) and not isinstance(bucket, bool) and bucket >= 1):
    raise ValueError(f"bucket must be an int >= 1, got {bucket!r}")


def generate(model: Transformer, params: Any, prompt_tokens: jax.Array,
             prompt_lengths: jax.Array, rng: jax.Array, sampling: SamplingConfig,
             bucket: int = 16, pack: bool | None = None) -> GenerateOutput:
  """Continues every prompt of a batch by `sampling.max_new_tokens` tokens.

  The prefill runs on the prompts packed back to back into one row of sum(prompt_lengths)
  tokens rounded up to a multiple of `bucket` (`pack_prompts`) when that is fewer FLOPs than
  the padded [B, Tp] block (`packing_pays`), so padding costs nothing there; decoding then
  reads the same [B, Tp]-slot cache either way. Compiled once per (model, sampling, shapes,
  packed width); call it eagerly (inputs are checked on the host).

  Args:
    model: the backbone.
    params: its parameters.
    prompt_tokens: [B, Tp] integer ids, right-padded (pad values are never attended to).
    prompt_lengths: [B] integers in [1, Tp], the true length of each prompt.
    rng: PRNG key; the token of step s is drawn with `jax.random.fold_in(rng, s)`.
    sampling: decoding settings.
    bucket: the packed row's width granularity in tokens.
    pack: prefill on the packed row (True), on the padded block (False), or whichever is
      fewer FLOPs (None). Both give the same tokens up to float rounding.

  Returns:
    GenerateOutput(tokens [B, max_new_tokens] int32, lengths [B] int32).
  """
  tokens, lengths = np.asarray(prompt_tokens), np.asarray(prompt_lengths)
  if tokens.ndim != 2 or lengths.ndim != 1:
    raise ValueError(f"prompt_tokens must be [B, Tp] and prompt_lengths [B], got shapes "
                     f"{tokens.shape} and {lengths.shape}")
  b, tp = tokens.shape
  if b == 0 or lengths.shape[0] != b:
    raise ValueError(f"batch sizes must match and be > 0: prompt_tokens {tokens.shape}, "
                     f"prompt_lengths {lengths.shape}")
  for name, array in (("prompt_tokens", tokens), ("prompt_lengths", lengths)):
    if not np.issubdtype(array.dtype, np.integer):
      raise ValueError(f"{name} must have an integer dtype, got {array.dtype}")
  if lengths.min() < 1 or lengths.max() > tp:
    raise ValueError(f"prompt_lengths must be in [1, {tp}], got {lengths.tolist()}")
  vocab = model.config.vocab_size
  for name, ids in (("prompt_tokens", tokens.ravel().tolist()),
                    ("stop_tokens", sampling.stop_tokens), ("pad_id", [sampling.pad_id])):
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
      raise ValueError(f"{name} must be in [0, {vocab}), got {bad[0]!r}")
  _check_bucket(bucket)
  pack = optional_flag("pack", pack)
  if pack is None:
    pack = packing_pays(model.config, lengths, tp, bucket)
  packed = pack_prompts(tokens, lengths, bucket) if pack else None
  return _generate_fn(model, sampling)(params, jnp.asarray(tokens, jnp.int32),
                                       jnp.asarray(lengths, jnp.int32), rng, packed)


def generate_text(model: Transformer, params: Any, tokenizer: Tokenizer, prompts: list[str],
                  sampling: SamplingConfig, rng: jax.Array | None = None,
                  bucket: int = 16) -> list[str]:
  """Generates a continuation of each prompt and returns it as text.

  Prompts are padded with `sampling.pad_id` to the longest one's length rounded up to a
  multiple of `bucket` tokens, so prompts of similar lengths share one compiled program; the
  prefill runs on them packed into one row (rounded up to `bucket` as well) when that is less
  work (see `generate`), and the LM head at the last real token of each prompt only. A final
  stop token is not decoded.

  Args:
    model: the backbone.
    params: its parameters.
    tokenizer: anything with `encode(str) -> list[int]` and `decode(list[int]) -> str`.
    prompts: the texts to continue; each must encode to at least one token.
    sampling: decoding settings (stop tokens included).
    rng: PRNG key; defaults to `jax.random.key(0)`.
    bucket: prompt padding (and packed row) granularity in tokens.

  Returns:
    One continuation per prompt.
  """
  _check_bucket(bucket)
  if not prompts:
    return []
  encoded = [list(tokenizer.encode(text)) for text in prompts]
  for text, ids in zip(prompts, encoded):
    if not ids:
      raise ValueError(f"prompt {text!r} encodes to no tokens")
  tp = -(-max(map(len, encoded)) // bucket) * bucket
  tokens = np.full((len(encoded), tp), sampling.pad_id, np.int32)
  for row, ids in zip(tokens, encoded):
    row[:len(ids)] = ids
  out = generate(model, params, tokens, np.array([len(ids) for ids in encoded], np.int32),
                 jax.random.key(0) if rng is None else rng, sampling, bucket)
  texts = []
  for row, length in zip(np.asarray(out.tokens), np.asarray(out.lengths)):
    ids = row[:length].tolist()
    if ids and ids[-1] in sampling.stop_tokens:
      ids.pop()
    texts.append(tokenizer.decode(ids))
  return texts
