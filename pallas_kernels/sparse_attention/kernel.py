"""Top-k block-sparse attention kernel (paged style): memory blocks by index + own causal kv.

What it computes is `reference.sparse_attention_reference` (same signature, same math). How:

* Rows. The R query heads that share a kv head are folded with the tokens into rows
  (row = t * R + r), so a program reads each K/V tile once for its whole kv group (GQA) and a
  decode step (T = 1) still gives `dot` R rows (padded to >= 16). The grid is
  (B, J, row blocks of `block_q`, kv_splits). The wrapper precomputes two tiny per-row int32
  vectors: `end` = min(q_offset + t + 1, kv_len) (own slots s < end are visible) and `mem`
  (the token sees the memory); padding rows have end = 0, mem = 0.
* Memory. A loop over the K selected slots reads (doc_first_chunk, doc_num_chunks) from the
  [B, K] tables and walks that document's chunks in tiles of `block_c`, loading the pooled
  K̄/V̄ rows straight from the flat bank [C, J, D] with masked loads: no gathered or
  concatenated copy. Unused slots (0 chunks) and row blocks that see no memory do no work.
* Own context. A loop over tiles of `block_k` own slots up to the block's largest `end`
  (causal tiles past it are skipped), masked per row.
* One online softmax (float32 running max, sum and accumulator) across both loops; logits in
  float32, P cast to the value dtype for the second `dot`; rows that saw nothing output 0.
* Decode has few programs (B * J), so `kv_splits` > 1 adds a grid axis that splits a row
  block's entries (documents i = s, own tiles = s mod kv_splits) across programs, each writing
  a partial softmax (o, max, sum) that the wrapper merges in XLA (flash-decoding style).

Gradients: `sparse_attention` has a custom VJP whose forward is this kernel and whose
backward is **XLA, not Pallas**: `jax.vjp` of the reference (which gathers the selected blocks
and recomputes the dense softmax), giving d q, d k, d v, d bank_k, d bank_v (scatter-added into
the bank). A fused Pallas backward is future work; training shapes (K * Cd + S <= a few
thousand entries) keep the XLA backward affordable.

Backend: Pallas **Triton** lowering, chosen over Mosaic GPU, deliberately:

* Data-dependent block gathers are plain pointer arithmetic in Triton (a dynamic `pl.ds` start
  read from the doc table, a masked load). In Mosaic GPU they need hand-written TMA copies with
  barriers per gathered tile, and its wgmma wants 64-row tiles that decode (R rows) would waste.
  As DESIGN.md section 8 notes, no maintained Pallas GPU kernel does indexed attention, so
  there is no Mosaic GPU template to start from either.
* The body uses only the backend-neutral Pallas subset, so the same code runs in the generic
  interpret mode on CPU, which is how it is tested (no GPU here); a Mosaic GPU kernel's
  layouts and barriers are not checked by the CPU interpreter.
* Re-decided against the JAX 0.11.0 release notes (Pallas changelog, "Released with JAX
  0.11.0", July 2026): the Triton backend is deprecated there and is to be removed in a later
  version, but 0.11.x ships it, so it runs with the GPU machines' JAX 0.11.2; the notes after
  0.11.0 go on to deprecate the Triton-based ops of `jax.experimental.pallas.ops.gpu` and
  `pl.core_map` (for `pl.kernel`), i.e. new GPU work goes to Mosaic GPU. Decision: keep Triton
  while the supported range (jax < 0.13) still ships it, because it is the only backend this
  project can validate without a GPU, and the port below must land before a JAX that drops
  it is allowed. Seen on one H200 with JAX 0.11.2 (2026-12-04, `scripts/gpu_check.sh`): it
  compiles and runs, within 6.1e-5 of the XLA reference in bf16 (Qwen3-4B sizes, 16 routed
  documents of 64 chunks): decode B=8 0.177 ms (2.35x faster than XLA, 700 GB/s), prefill
  T=2048 0.751 ms (1.61x, 91.6 TFLOP/s = 9 % of the bf16 peak: the next thing to tune).
  JAX >= 0.10 sends a `pallas_call` without compiler params to Mosaic GPU, so
  `pltriton.CompilerParams` is passed explicitly.
* Triton's constraints (power-of-two tile sides >= 16, D a power of two) are checked by
  `SparseAttentionBlockSizes` and the wrapper. Without a GPU the tests still lower the kernel
  to Triton IR for CUDA (JAX 0.10 does that on CPU), catching unsupported primitives, dtype
  mismatches and non-power-of-two tensors; Triton's compilation to PTX needs the GPU.
* The Mosaic GPU port (`plgpu.kernel`; JAX's development head also deprecates `pallas_call`
  for Mosaic GPU) is the follow-up once a GPU is available to validate it; the wrapper,
  reference and tests stay.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import _common
from pallas_kernels.sparse_attention.inputs import check_inputs, default_scale, fill_defaults
from pallas_kernels.sparse_attention.reference import sparse_attention_reference


@dataclasses.dataclass(frozen=True)
class SparseAttentionBlockSizes:
  """Tiling and launch parameters of the sparse attention kernel.

  Attributes:
    block_q: query rows per program; a row is one (token, head of the kv group) pair, so a
      decode step (T = 1) with R heads per kv head fills R rows (padded to >= 16).
    block_c: memory chunks per step of the online softmax (one tile of a selected document).
    block_k: own kv slots per step of the online softmax.
    kv_splits: programs that share one row block's entries (flash-decoding style): split s
      takes the selected documents i = s and the own tiles = s (mod kv_splits), and the
      partial softmaxes are merged in XLA. Raise it when B * J * row blocks is too small to
      fill the GPU (decode).
    num_warps: Triton warps per program.
    num_stages: Triton software-pipelining depth of the kv loops.
  """
  block_q: int = 64
  block_c: int = 64
  block_k: int = 64
  kv_splits: int = 1
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    _common.check_block("block_q", self.block_q)
    _common.check_block("block_c", self.block_c)
    _common.check_block("block_k", self.block_k)
    if not isinstance(self.kv_splits, int) or isinstance(self.kv_splits, bool) or (
        self.kv_splits < 1):
      raise ValueError(f"kv_splits={self.kv_splits!r} must be an int >= 1")
    _common.check_launch(self.num_warps, self.num_stages)


def _online_step(carry, q, k_tile, v_tile, visible, scale, precision):
  """One online-softmax step over a [n, D] tile; visible is [rows, n] bool."""
  m, l, acc = carry
  s = lax.dot_general(q, k_tile, (((1,), (1,)), ((), ())), precision=precision,
                      preferred_element_type=jnp.float32) * scale
  s = jnp.where(visible, s, _common.NEG)
  m_new = jnp.maximum(m, s.max(axis=1))
  alpha = jnp.exp(m - m_new)
  p = jnp.where(visible, jnp.exp(s - m_new[:, None]), 0.0)
  l = alpha * l + p.sum(axis=1)
  pv = lax.dot_general(p.astype(v_tile.dtype), v_tile, (((1,), (0,)), ((), ())),
                       precision=precision, preferred_element_type=jnp.float32)
  return m_new, l, alpha[:, None] * acc + pv


def _attention_kernel(q_ref, end_ref, mem_ref, hide_lo_ref, hide_hi_ref, k_ref, v_ref, bank_k_ref,
                      bank_v_ref, first_ref, count_ref, *out_refs, num_slots: int,
                      max_doc_chunks: int, block_c: int, block_k: int, num_splits: int,
                      scale: float, precision):
  """One (b, j, row block, split) program.

  Refs: q_ref [rows, D], end_ref/mem_ref/hide_lo_ref/hide_hi_ref [rows] int32 (own slots
  hide_lo <= s < hide_hi are hidden), k_ref/v_ref [S, D] (this row's own kv
  for kv head j), bank_k_ref/bank_v_ref [C, D] (kv head j of the bank), first_ref/count_ref [K]
  int32. Outputs: o_ref [rows, D] (q dtype) when num_splits == 1; else this split's partial
  o [rows, D] f32 (normalised by its own sum), running max m [rows] and sum l [rows].
  Split s takes the memory slots i = s (mod num_splits) and the own tiles = s (mod num_splits).
  """
  rows, d = q_ref.shape
  bank_chunks = bank_k_ref.shape[0]
  q = q_ref[...]
  end = end_ref[...]
  hide_lo, hide_hi = hide_lo_ref[...], hide_hi_ref[...]
  mem = mem_ref[...] > 0
  split = pl.program_id(3) if num_splits > 1 else 0
  carry = (jnp.full((rows,), _common.NEG, jnp.float32), jnp.zeros((rows,), jnp.float32),
           jnp.zeros((rows, d), jnp.float32))
  any_mem = jnp.max(mem_ref[...]) > 0
  step = functools.partial(_online_step, q=q, scale=scale, precision=precision)

  def doc_body(it, carry):
    i = split + it * num_splits
    # The slot's chunks first + c, c < min(count, Cd), intersected with the bank [0, C): the
    # tiles start at lo >= 0 (interpret mode cannot read at a negative start) and stop at hi.
    first = first_ref[i]
    lo = jnp.maximum(first, 0)
    hi = jnp.minimum(first + jnp.clip(count_ref[i], 0, max_doc_chunks), bank_chunks)
    n = jnp.where(any_mem, jnp.maximum(hi - lo, 0), 0)

    def tile_body(tile, carry):
      off = tile * block_c
      ok = off + lax.broadcasted_iota(jnp.int32, (block_c,), 0) < n
      ok2 = jnp.broadcast_to(ok[:, None], (block_c, d))
      kt = _common.masked_load(bank_k_ref.at[pl.ds(lo + off, block_c), :], ok2)
      vt = _common.masked_load(bank_v_ref.at[pl.ds(lo + off, block_c), :], ok2)
      return step(carry, k_tile=kt, v_tile=vt, visible=mem[:, None] & ok[None, :])

    return lax.fori_loop(0, pl.cdiv(n, block_c), tile_body, carry)

  carry = lax.fori_loop(0, pl.cdiv(num_slots - split, num_splits), doc_body, carry)

  stop = jnp.max(end)

  def own_body(it, carry):
    off = (split + it * num_splits) * block_k
    slot = off + lax.broadcasted_iota(jnp.int32, (block_k,), 0)
    ok2 = jnp.broadcast_to((slot < stop)[:, None], (block_k, d))
    kt = _common.masked_load(k_ref.at[pl.ds(off, block_k), :], ok2)
    vt = _common.masked_load(v_ref.at[pl.ds(off, block_k), :], ok2)
    hidden = (slot[None, :] >= hide_lo[:, None]) & (slot[None, :] < hide_hi[:, None])
    return step(carry, k_tile=kt, v_tile=vt, visible=(slot[None, :] < end[:, None]) & ~hidden)

  own_tiles = jnp.maximum(pl.cdiv(stop, block_k) - split, 0)
  m, l, acc = lax.fori_loop(0, pl.cdiv(own_tiles, num_splits), own_body, carry)
  o = acc / jnp.where(l > 0, l, 1.0)[:, None]
  if num_splits == 1:
    out_refs[0][...] = o.astype(out_refs[0].dtype)
  else:
    o_ref, m_ref, l_ref = out_refs
    o_ref[...] = o
    m_ref[...] = m
    l_ref[...] = l


def _merge_splits(o, m, l):
  """Combine per-split partials [P, ..., D], [P, ...], [P, ...] into one softmax result."""
  m_all = m.max(axis=0)
  w = jnp.exp(m - m_all[None]) * l  # 0 for a split that saw nothing (l = 0)
  total = w.sum(axis=0)
  o = (w[..., None] * o).sum(axis=0)
  return o / jnp.where(total > 0, total, 1.0)[..., None]


def _row_layout(t: int, r: int, block: SparseAttentionBlockSizes) -> tuple[int, int]:
  """(rows per program, padded row count) for T tokens x R heads per kv group."""
  rows = min(block.block_q, max(16, _common.next_power_of_two(t * r)))
  return rows, -(-(t * r) // rows) * rows


def _forward(q, k, v, bank_k, bank_v, doc_first_chunk, doc_num_chunks, memory_visible,
             q_offset, kv_len, hidden_start, hidden_stop, *, max_doc_chunks, scale,
             kv_heads_first, block, interpret, debug):
  """The Pallas forward on validated, defaulted inputs."""
  b, t, h, d = q.shape
  s_len, j = (k.shape[2], k.shape[1]) if kv_heads_first else (k.shape[1], k.shape[2])
  c = bank_k.shape[0]
  num_slots = doc_first_chunk.shape[1]
  splits = block.kv_splits
  r = h // j
  rows, rows_pad = _row_layout(t, r, block)
  # [B, T, H, D] -> [B, J, T*R, D]: the rows of kv group j are (token, head-in-group).
  qr = q.reshape(b, t, j, r, d).transpose(0, 2, 1, 3, 4).reshape(b, j, t * r, d)
  qr = jnp.pad(qr, ((0, 0), (0, 0), (0, rows_pad - t * r), (0, 0)))
  tok = jnp.arange(t)
  end = jnp.minimum(q_offset[:, None] + tok[None, :] + 1, kv_len[:, None])
  end = jnp.clip(end, 0, s_len).astype(jnp.int32)  # [B, T]
  pad = ((0, 0), (0, rows_pad - t * r))
  end = jnp.pad(jnp.repeat(end, r, axis=1), pad)
  mem = jnp.pad(jnp.repeat(memory_visible.astype(jnp.int32), r, axis=1), pad)
  hide_lo, hide_hi = (jnp.broadcast_to(x.astype(jnp.int32)[:, None], end.shape)
                      for x in (hidden_start, hidden_stop))
  kernel = functools.partial(
      _attention_kernel, num_slots=num_slots, max_doc_chunks=max_doc_chunks,
      block_c=block.block_c, block_k=block.block_k, num_splits=splits, scale=scale,
      precision=_common.dot_precision(q.dtype))
  row_spec = pl.BlockSpec((None, rows), lambda bi, ji, i, p: (bi, i))
  if kv_heads_first:
    own_spec = pl.BlockSpec((None, None, s_len, d), lambda bi, ji, i, p: (bi, ji, 0, 0))
  else:
    own_spec = pl.BlockSpec((None, s_len, None, d), lambda bi, ji, i, p: (bi, 0, ji, 0))
  bank_spec = pl.BlockSpec((c, None, d), lambda bi, ji, i, p: (0, ji, 0))
  table_spec = pl.BlockSpec((None, num_slots), lambda bi, ji, i, p: (bi, 0))
  o_spec = pl.BlockSpec((None, None, rows, d), lambda bi, ji, i, p: (bi, ji, i, 0))
  if splits == 1:
    out_specs = o_spec
    out_shape = jax.ShapeDtypeStruct((b, j, rows_pad, d), q.dtype)
  else:
    part = (splits, b, j, rows_pad)
    out_specs = [
        pl.BlockSpec((None, None, None, rows, d), lambda bi, ji, i, p: (p, bi, ji, i, 0)),
        pl.BlockSpec((None, None, None, rows), lambda bi, ji, i, p: (p, bi, ji, i)),
        pl.BlockSpec((None, None, None, rows), lambda bi, ji, i, p: (p, bi, ji, i)),
    ]
    out_shape = [jax.ShapeDtypeStruct(part + (d,), jnp.float32),
                 jax.ShapeDtypeStruct(part, jnp.float32),
                 jax.ShapeDtypeStruct(part, jnp.float32)]
  out = pl.pallas_call(
      kernel,
      grid=(b, j, rows_pad // rows, splits),
      in_specs=[
          pl.BlockSpec((None, None, rows, d), lambda bi, ji, i, p: (bi, ji, i, 0)),
          row_spec, row_spec, row_spec, row_spec, own_spec, own_spec, bank_spec, bank_spec,
          table_spec, table_spec,
      ],
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=_common.compiler_params(block.num_warps, block.num_stages),
      interpret=interpret,
      debug=debug,
      name="msa_sparse_attention",
  )(qr, end, mem, hide_lo, hide_hi, k, v, bank_k, bank_v, doc_first_chunk.astype(jnp.int32),
    doc_num_chunks.astype(jnp.int32))
  if splits > 1:
    out = _merge_splits(*out).astype(q.dtype)
  out = out[:, :, :t * r].reshape(b, j, t, r, d).transpose(0, 2, 1, 3, 4)
  return out.reshape(b, t, h, d)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(static, q, k, v, bank_k, bank_v, doc_first_chunk, doc_num_chunks, memory_visible,
            q_offset, kv_len, hidden_start, hidden_stop):
  return _forward(q, k, v, bank_k, bank_v, doc_first_chunk, doc_num_chunks, memory_visible,
                  q_offset, kv_len, hidden_start, hidden_stop, **dict(static))


def _attend_fwd(static, q, k, v, bank_k, bank_v, *meta):
  out = _attend(static, q, k, v, bank_k, bank_v, *meta)
  return out, (q, k, v, bank_k, bank_v, meta)


def _attend_bwd(static, residuals, g):
  q, k, v, bank_k, bank_v, meta = residuals
  opts = dict(static)

  def ref(q, k, v, bank_k, bank_v):
    return sparse_attention_reference(q, k, v, bank_k, bank_v, *meta,
                                      max_doc_chunks=opts["max_doc_chunks"],
                                      scale=opts["scale"],
                                      kv_heads_first=opts["kv_heads_first"])

  _, vjp = jax.vjp(ref, q, k, v, bank_k, bank_v)
  return (*vjp(g), None, None, None, None, None, None, None)


_attend.defvjp(_attend_fwd, _attend_bwd)


@functools.partial(jax.jit, static_argnames=("max_doc_chunks", "scale", "kv_heads_first", "block",
                                             "interpret", "debug"))
def sparse_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bank_k: jax.Array,
    bank_v: jax.Array,
    doc_first_chunk: jax.Array,
    doc_num_chunks: jax.Array,
    memory_visible: jax.Array | None = None,
    q_offset: jax.Array | None = None,
    kv_len: jax.Array | None = None,
    hidden_start: jax.Array | None = None,
    hidden_stop: jax.Array | None = None,
    *,
    max_doc_chunks: int,
    scale: float | None = None,
    kv_heads_first: bool = False,
    block: SparseAttentionBlockSizes | None = None,
    interpret: bool = False,
    debug: bool = False,
) -> jax.Array:
  """Top-k block-sparse attention with the Pallas kernel (custom VJP, XLA backward).

  Args:
    q: [B, T, H, D] queries (T = 1 for decode); float32 or bfloat16.
    k: [B, S, J, D] own keys (the prompt's, or a decode cache), q's dtype.
    v: [B, S, J, D] own values.
    bank_k: [C, J, D] pooled keys of the memory bank (read in place, never copied).
    bank_v: [C, J, D] pooled values of the memory bank.
    doc_first_chunk: [B, K] int, first bank chunk of each selected document.
    doc_num_chunks: [B, K] int, its number of chunks (0: unused slot; clipped to
      max_doc_chunks). Chunk ids outside [0, C) are skipped (never read).
    memory_visible: [B, T] bool, tokens that see the memory (None: all).
    q_offset: [B] int, own slot of query token 0 (None: 0).
    kv_len: [B] int, valid own slots (None: S).
    hidden_start, hidden_stop: [B] int, own slots hidden_start <= s < hidden_stop are not
      seen (None: none; the padding between a right-padded prompt and its decoded tokens).
    max_doc_chunks: static bound on the chunks per document (the reference's gather size).
    scale: logit scale (None: 1/sqrt(D)).
    kv_heads_first: k and v are [B, J, S, D] (a decode cache's layout), read in place.
    block: tiling and launch parameters (`SparseAttentionBlockSizes()` when None).
    interpret: run the kernel in Pallas interpret mode (any backend, e.g. CPU).
    debug: print the kernel's jaxpr and lowered module.

  Returns:
    [B, T, H, D] in q's dtype; 0 for a query that sees nothing. Differentiable w.r.t. q, k,
    v, bank_k, bank_v (backward in XLA via the reference, see the module docstring).
  """
  memory_visible, q_offset, kv_len, hidden_start, hidden_stop = fill_defaults(
      q, k, memory_visible, q_offset, kv_len, hidden_start, hidden_stop, kv_heads_first)
  check_inputs(q, k, v, bank_k, bank_v, doc_first_chunk, doc_num_chunks, memory_visible,
               q_offset, kv_len, max_doc_chunks, scale, hidden_start, hidden_stop,
               kv_heads_first)
  d = q.shape[-1]
  if not _common.is_power_of_two(d) or d < 16:
    raise ValueError(f"head dim D={d} must be a power of two >= 16 for the kernel "
                     f"(q.shape={q.shape})")
  block = SparseAttentionBlockSizes() if block is None else block
  static = (("max_doc_chunks", max_doc_chunks), ("scale", default_scale(d, scale)),
            ("kv_heads_first", kv_heads_first), ("block", block), ("interpret", interpret),
            ("debug", debug))
  return _attend(static, q, k, v, bank_k, bank_v, doc_first_chunk, doc_num_chunks,
                 memory_visible, q_offset.astype(jnp.int32), kv_len.astype(jnp.int32),
                 hidden_start.astype(jnp.int32), hidden_stop.astype(jnp.int32))
