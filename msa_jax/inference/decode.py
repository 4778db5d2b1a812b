"""Plain autoregressive generation with a KV cache: one prefill, then a jitted decode loop.

The program runs the backbone's own layers (`Transformer`'s parameters, modules and math) with
a cache laid out for decoding rather than `Transformer.__call__`'s:
  * cache slots [B, J, S, D] (kv heads before slots), so each decode step's attention reads
    every head's keys as one contiguous block instead of transposing the cache each step;
  * one write slot shared by every row: the prompt fills slots 0..Tp-1 (right padding
    included, hidden by the mask), decode token s goes to slot Tp + s in every row, so the
    cache update is one in-place dynamic-update-slice (a per-row slot compiles to a scatter
    per layer and per step); RoPE positions stay per row (prompt length + s);
  * the LM head runs at each row's last prompt token only, not over the padded prompt, with
    the tied embedding transposed once per call rather than once per step.
SmolLM2-135M, batch 8, on 2 busy CPU cores (same process, interleaved): 0.18 s per decode
step with `Transformer.__call__`'s cache, 0.13-0.14 s with this one, identical tokens.
Concatenating the q/k/v and gate/up kernels into one matmul each was slower (0.18 s).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from msa_jax.inference.sampling import SamplingConfig, sample_logits
from msa_jax.model import attention, layers
from msa_jax.model.transformer import Transformer


class Tokenizer(Protocol):
  """What `generate_text` needs from a tokenizer."""

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: list[int]) -> str: ...


class GenerateOutput(NamedTuple):
  """tokens [B, max_new_tokens] int32 (pad_id after a row stops); lengths [B] int32 (the number
  of generated tokens per row, a final stop token included)."""

  tokens: jax.Array
  lengths: jax.Array


# One layer's decode cache: keys (post-RoPE) and values, each [B, J, S, D].
_Cache = tuple[tuple[jax.Array, jax.Array], ...]


class _State(NamedTuple):
  step: jax.Array     # [] int32: tokens emitted so far (same for every row).
  tokens: jax.Array   # [B, N] int32.
  lengths: jax.Array  # [B] int32.
  done: jax.Array     # [B] bool: the row has emitted a stop token.
  cache: _Cache


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """`attention.dot_product_attention` over a [B, J, S, D] cache: q [B, T, H, D], mask
  [B, T, S] -> [B, T, H, D] (logits and softmax in float32, scale 1/sqrt(D))."""
  b, t, h, d = q.shape
  j = k.shape[1]
  qg = q.reshape(b, t, j, h // j, d)
  logits = jnp.einsum("BTJRD,BJSD->BJRTS", qg, k,
                      preferred_element_type=jnp.float32) * (d ** -0.5)
  logits = jnp.where(mask[:, None, None, :, :], logits, attention._MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("BJRTS,BJSD->BTJRD", probs, v)
  return out.reshape(b, t, h, d).astype(q.dtype)


def _layers(model: Transformer, params: Any, tokens: jax.Array, positions: jax.Array,
            slot: jax.Array, mask: jax.Array, cache: _Cache) -> tuple[jax.Array, _Cache]:
  """The backbone up to its final norm for T new tokens [B, T] at `positions` [B, T], written
  into cache slots slot..slot+T-1 of every row; `mask` [B, T, S] says which slots each token
  sees. Returns (normed hidden states [B, T, E], updated cache)."""
  cfg = model.config
  kw = dict(dtype=model.dtype, param_dtype=model.param_dtype)
  attn = attention.Attention(
      embed_dim=cfg.embed_dim, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
      head_dim=cfg.head_dim, rope_theta=cfg.rope_theta, qk_norm=cfg.qk_norm,
      norm_eps=cfg.norm_eps, **kw)
  norm = layers.RMSNorm(cfg.norm_eps, **kw)
  mlp = layers.MLP(cfg.mlp_dim, **kw)
  x = layers.Embedder(cfg.vocab_size, cfg.embed_dim, **kw).apply(
      {"params": params["embed"]}, tokens, method="encode")
  new_cache = []
  for i, (k_cache, v_cache) in enumerate(cache):
    p = params[f"layers_{i}"]
    h = norm.apply({"params": p["attn_norm"]}, x)
    q, k, v = attn.apply({"params": p["attn"]}, h, positions, method="project")
    k_cache, v_cache = (
        jax.lax.dynamic_update_slice(buf, new.transpose(0, 2, 1, 3).astype(buf.dtype),
                                     (0, 0, slot, 0))
        for buf, new in ((k_cache, k), (v_cache, v)))
    x = x + attn.apply({"params": p["attn"]}, _attend(q, k_cache, v_cache, mask),
                       method="output")
    x = x + mlp.apply({"params": p["mlp"]}, norm.apply({"params": p["mlp_norm"]}, x))
    new_cache.append((k_cache, v_cache))
  return norm.apply({"params": params["final_norm"]}, x), tuple(new_cache)


def _lm_head(model: Transformer, params: Any) -> jax.Array:
  """The LM head as an [E, V] matrix in the compute dtype (the tied embedding transposed)."""
  if model.config.tie_embeddings:
    head = params["embed"]["embedding"].T
  else:
    head = params["lm_head"]["kernel"]
  return head.astype(model.dtype)


@functools.lru_cache(maxsize=32)
def _generate_fn(model: Transformer, sampling: SamplingConfig):
  """The jitted generation program for one (model, sampling) pair."""
  n = sampling.max_new_tokens
  cfg = model.config

  def run(params: Any, prompt_tokens: jax.Array, prompt_lengths: jax.Array,
          rng: jax.Array) -> GenerateOutput:
    b, tp = prompt_tokens.shape
    s = tp + n - 1  # the last generated token is never fed back
    stop_ids = jnp.asarray(sampling.stop_tokens, jnp.int32)
    head = _lm_head(model, params)
    logits_dtype = jnp.promote_types(model.dtype, jnp.float32)

    def logits(hidden):  # [B, E] -> [B, V]
      return jnp.dot(hidden.astype(model.dtype), head).astype(logits_dtype)

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

    shape = (b, cfg.num_kv_heads, s, cfg.head_dim)
    cache = tuple((jnp.zeros(shape, model.dtype), jnp.zeros(shape, model.dtype))
                  for _ in range(cfg.num_layers))
    positions = jnp.broadcast_to(jnp.arange(tp, dtype=jnp.int32), (b, tp))
    # Prompt token t sees slots <= t: its own row's earlier tokens, never the padding after it.
    causal = jnp.arange(s)[None, None, :] <= jnp.arange(tp)[None, :, None]
    hidden, cache = _layers(model, params, prompt_tokens, positions, jnp.int32(0),
                            jnp.broadcast_to(causal, (b, tp, s)), cache)
    last = jnp.take_along_axis(hidden, (prompt_lengths - 1)[:, None, None], axis=1)[:, 0]
    state = emit(_State(step=jnp.int32(0), tokens=jnp.full((b, n), sampling.pad_id, jnp.int32),
                        lengths=jnp.zeros((b,), jnp.int32), done=jnp.zeros((b,), bool),
                        cache=cache), logits(last))
    prompt_slots = jnp.arange(s)[None, :] < prompt_lengths[:, None]  # [B, S]

    def cond(state: _State) -> jax.Array:
      return (state.step < n) & ~jnp.all(state.done)

    def body(state: _State) -> _State:
      # Feed the previous token at position prompt_length + step - 1, slot tp + step - 1.
      tok = jax.lax.dynamic_index_in_dim(state.tokens, state.step - 1, axis=1)
      slot = tp + state.step - 1
      generated = (jnp.arange(s) >= tp) & (jnp.arange(s) <= slot)
      mask = (prompt_slots | generated[None, :])[:, None, :]
      hidden, cache = _layers(model, params, tok, (prompt_lengths + state.step - 1)[:, None],
                              slot, mask, state.cache)
      return emit(state._replace(cache=cache), logits(hidden[:, 0]))

    state = jax.lax.while_loop(cond, body, state)
    return GenerateOutput(state.tokens, state.lengths)

  return jax.jit(run)


def generate(model: Transformer, params: Any, prompt_tokens: jax.Array,
             prompt_lengths: jax.Array, rng: jax.Array,
             sampling: SamplingConfig) -> GenerateOutput:
  """Continues every prompt of a batch by `sampling.max_new_tokens` tokens.

  Compiled once per (model, sampling, shapes); call it eagerly (inputs are checked on the host).

  Args:
    model: the backbone.
    params: its parameters.
    prompt_tokens: [B, Tp] integer ids, right-padded (pad values are never attended to).
    prompt_lengths: [B] integers in [1, Tp], the true length of each prompt.
    rng: PRNG key; the token of step s is drawn with `jax.random.fold_in(rng, s)`.
    sampling: decoding settings.

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
  return _generate_fn(model, sampling)(params, jnp.asarray(tokens, jnp.int32),
                                       jnp.asarray(lengths, jnp.int32), rng)


def generate_text(model: Transformer, params: Any, tokenizer: Tokenizer, prompts: list[str],
                  sampling: SamplingConfig, rng: jax.Array | None = None,
                  bucket: int = 16) -> list[str]:
  """Generates a continuation of each prompt and returns it as text.

  Prompts are padded with `sampling.pad_id` to the longest one's length rounded up to a
  multiple of `bucket` tokens: prompts of similar lengths share one compiled program, and the
  prefill runs at most bucket - 1 positions past the longest prompt (the LM head runs at the
  last real token of each row only). A final stop token is not decoded.

  Args:
    model: the backbone.
    params: its parameters.
    tokenizer: anything with `encode(str) -> list[int]` and `decode(list[int]) -> str`.
    prompts: the texts to continue; each must encode to at least one token.
    sampling: decoding settings (stop tokens included).
    rng: PRNG key; defaults to `jax.random.key(0)`.
    bucket: prompt padding granularity in tokens.

  Returns:
    One continuation per prompt.
  """
  if not (isinstance(bucket, int) and bucket >= 1):
    raise ValueError(f"bucket must be an int >= 1, got {bucket!r}")
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
                 jax.random.key(0) if rng is None else rng, sampling)
  texts = []
  for row, length in zip(np.asarray(out.tokens), np.asarray(out.lengths)):
    ids = row[:length].tolist()
    if ids and ids[-1] in sampling.stop_tokens:
      ids.pop()
    texts.append(tokenizer.decode(ids))
  return texts
