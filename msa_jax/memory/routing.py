"""Stage 2 of MSA inference: route questions against a whole memory bank (paper section 3.4).

The bank holds, per router layer, the L2-normalised pooled routing keys `keys` [C, J, D] of all
C chunks of all M documents (a document's chunks contiguous) and `chunk_doc` [C] int, the
document of each chunk (-1 marks a padding row). `route` scores Q questions against it with
exactly the training math (`msa_jax.model.routing.chunk_scores` -> `doc_scores` ->
`select_top_k`), but streams the bank in fixed-size tiles of chunks, so its memory is
O(Q * tile * T * H + Q * M) for a given tile whatever C is:

  for each tile of chunks:   per-chunk scores [Q, tile] (head reduce, query reduce)
                             scattered into per-document running max / sum [Q, M]
  documents:                 max, or sum / number of chunks (-inf with no chunk)
  selection:                 top K = min(top_k, M) documents; slot i valid iff i < documents
                             present (and not masked out); ties go to the lower document index.

`doc_mask` ([M] or [B, M] bool, True = may be selected) restricts each question to a subset of
the bank (a memory-size sweep, or per-question exclusions) without re-laying it out: a masked
document scores -inf, ranks below every unmasked one and never fills a valid slot, so the
valid slots and document scores equal routing over the bank with those documents removed.

A tile is scored by one GEMM and one unmasked max (`pallas_kernels.routing_scores.xla`, the
op's home): with head_reduce="mean" each kv group's R query heads are summed before the dot
(the mean is linear), so the GEMM is [tile, J * D] x [J * D, B * T], R times fewer FLOPs than
scoring every head; "max" keeps every head's dot (one GEMM per kv head). A query reduce that
is exact on the queries ("last", and "mean" with the head mean) is done before the GEMM (T
times fewer columns); for a query max the masked tokens' queries are copies of a valid one's,
so no mask pass over the scores is needed. Scores equal the training path's up to float
rounding (a few ulps: the summation order differs), so two documents whose scores differ by
less than that could rank in the other order; documents with identical keys still tie exactly
(their chunks go through the same GEMM) and ties go to the lower index. The GEMM's summation
order may depend on its shape, so changing `tile_chunks` can move a score by an ulp.

The tile (`tile_chunks=None`, the default) is chosen by `auto_tile_chunks`: for float32 keys,
the whole bank in one step when its GEMM is keys-bound (up to 32 score columns: two
questions of 16 routing tokens with the head mean) or the bank is small (keys and scores
within 16 MiB); else, and for 16-bit keys, tiles sized by what one step writes and reads (~2
MiB of float32 scores, at most 8 MiB of keys; B = 8: 4,096 chunks at the benchmark's sizes),
the bank cut into equal tiles of at most that (ceil(C / size) of them, so the last one does
not overlap the one before by up to a whole tile). A tile is a slice XLA copies out of the
bank, which costs as much as a keys-bound GEMM reading it; many score columns over a bank
beyond the cache, and keys the GEMM converts, gain more from tiles that stay in cache. A
question without a valid token (-inf with a query max) is masked once, on its document
scores, not on every tile's chunk scores. The valid slots come from the selected ranks (a
document with chunks has a finite score); the count of documents present, a pass over every
document (and over `chunk_doc` unless the caller passes the bank's `chunk_counts`, as the
engine does: `MemoryBank.chunk_counts`), runs only when a question has no valid token or no
allowed document with chunks (`_select`), and the chunk counts otherwise only for a chunk
mean. The program is short:
routing one question is 8 XLA:CPU operations ("thunks"; 18 before, 2026-12-06), few enough
for XLA to run them in the calling thread instead of its thread pool; with the scatter's
ids taken as they are (out-of-range ids dropped by the scatter) and the selection's
reductions in a branch, 1M tokens at B = 8 took ~10 % less time (10 operations; 15 before),
one question within noise of before (2-core AMD EPYC Zen 2, jax 0.10.2; the profile: the
GEMM with its fused query max ~14 % above the bare GEMM, the scatter ~25 us, top-k ~7 us).

`kernel_impl` ("auto" | "xla" | "pallas", as `MSARuntime.kernel_impl`) picks the scorer:
"pallas" (or "auto" on a GPU, for a head dim the kernel takes: a power of two >= 16) scores
the whole bank with the fused Pallas routing-score kernel (`routing_doc_scores`; interpret
mode where there is no GPU) and reduces chunks to documents with a segment max / mean; it
holds the [Q, C] float32 chunk scores (J * D * itemsize / 4 times smaller than the keys) in
place of the tiles. Its scores equal the XLA path's up to float rounding (the kernel sums the
kv heads' dots in its own order), so the same caveat on near-ties applies; `tile_chunks` is
unused there.

On CPU the scatter applies a tile's chunks in order, so a document's sum is the left fold of
its chunk scores in bank order. (On GPU the scatter-add of a "mean" reduction may add a
document's chunks in any order: equal to ~1 ulp.)

Memory Parallel (`route_sharded`) splits the chunks over the `memory` axis of a mesh. Choice:
**no document straddles two shards.** `layout_bank` packs whole documents into S contiguous
shards of equal size (a multiple of the tile), padding each shard's end with rows of
chunk_doc = -1; `shard_bank` lays out and `device_put`s a bank that way. Each shard then owns
complete documents, so its local document scores are final: it takes a local top-K, the
candidates of all shards are all-gathered, and a merge by (score desc, document asc) gives the
global top-K. With the same tile size, a sharded bank gives bitwise the single-device result on
that bank (`route(..., keys, chunk_doc)` on the laid-out arrays): every chunk score, every
document's max / left-fold sum and every tie are computed the same way. A bank whose document
straddles a shard boundary is rejected (checked on the host when `chunk_doc` is concrete).

Letters as in `msa_jax.model`: B questions (Q above), T routing-query tokens, H query heads,
J kv heads, R = H / J, D head dim, C chunks, M (here `num_docs`) documents, K selected.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import pallas_kernels
from pallas_kernels.routing_scores.kernel import routing_doc_scores
from pallas_kernels.routing_scores.xla import (check_inputs, no_valid_token, query_operand,
                                               score_columns, tile_chunk_scores)

NEG_INF = float("-inf")
KERNEL_IMPLS = ("auto", "xla", "pallas")
BITS = jnp.dtype(jnp.uint16)  # a 16-bit float bank given as its bit patterns (`host_keys`)
DEFAULT_TILE_CHUNKS = 2048  # Memory Parallel's tile (and shard length unit) by default


def bank_tile_chunks(tile_chunks: int | None, sharded: bool) -> int | None:
  """The tile a bank is routed with: `tile_chunks` when given; else `route`'s automatic tile
  (None) on one device, and DEFAULT_TILE_CHUNKS for a sharded bank (`layout_bank` lays its
  shards out in whole tiles)."""
  if tile_chunks is not None:
    return tile_chunks
  return DEFAULT_TILE_CHUNKS if sharded else None


TILE_SCORE_BYTES = 2 << 20  # `auto_tile_chunks`: float32 scores one tile's GEMM writes
TILE_KEY_BYTES = 8 << 20  # ... and the keys one tile reads
MIN_TILE_CHUNKS = 256
KEYS_BOUND_COLUMNS = 32  # at most this many score columns: the whole bank in one step
WHOLE_BANK_BYTES = 16 << 20  # ... and a bank whose keys and scores both fit this


def auto_tile_chunks(score_columns: int, key_row_bytes: int, chunks: int,
                     half_keys: bool = False) -> int:
  """The largest tile `route` uses for a bank of `chunks` chunks when `tile_chunks` is None
  (`route` then cuts the bank into equal tiles of at most this).

  Float32 keys: the whole bank in one step (`chunks`) when its GEMM is keys-bound (at most
  KEYS_BOUND_COLUMNS float32 scores per chunk: up to two questions of 16 routing tokens with
  the head mean; the scores, if XLA writes them, then hold at most that many floats per
  chunk, a quarter of the keys at J * D = 128) or when the bank's keys and scores both fit
  WHOLE_BANK_BYTES; else the largest power of two of chunks whose scores (`score_columns` per
  chunk) fit TILE_SCORE_BYTES and whose keys (`key_row_bytes` per chunk) fit TILE_KEY_BYTES,
  at least MIN_TILE_CHUNKS. 16-bit keys (`half_keys`) always take the tiles: the GEMM converts
  them, and a bank given as bits is reinterpreted by a copy, so one step over the whole bank
  converts or copies all of it at once (10M tokens, B = 1, bfloat16 bits: 21.6 ms in one
  step, 13.7 in 16,384-chunk tiles; 1M tokens, B = 8: 7.4 against 6.4 in tiles of 4,096).

  A tile is sliced out of the bank, and XLA:CPU copies the slice: on this project's 2-core
  AMD EPYC (Zen 2, 16 MiB L3; jax 0.10, 2026-12-05, one router layer, T = 16, J * D = 128,
  float32) that copy ran at ~9 GB/s, as long as a one-question GEMM over the same keys, and
  the tiles' GEMMs were less efficient than one: at 1M tokens one step took 0.52 / 2.0 / 3.6
  ms at B = 1 / 4 / 8 against 1.0-2.2 / 3.9 / 5.0 with 4,096-16,384-chunk tiles, and at 10M
  tokens 9.7 / 16 ms at B = 1 / 2 against 15 / 20-22. Many columns over a bank beyond the
  cache are the other way round (10M tokens, B = 4 / 8: one step 31 / 51 ms, 8,192 / 4,096
  chunk tiles 25 / 37 ms; the whole-bank GEMM re-reads keys that no longer stay in cache).
  """
  whole = chunks * max(key_row_bytes, 4 * score_columns) <= WHOLE_BANK_BYTES
  if not half_keys and (score_columns <= KEYS_BOUND_COLUMNS or whole):
    return chunks
  tile = min(TILE_SCORE_BYTES // (4 * max(score_columns, 1)),
             TILE_KEY_BYTES // max(key_row_bytes, 1))
  return max(MIN_TILE_CHUNKS, 1 << max(tile, 1).bit_length() - 1)


class RouteResult(NamedTuple):
  """Routing of B questions against a bank of M documents.

  Attributes:
    doc_scores: [B, M] float32 document scores, -inf for documents with no chunk.
    indices: [B, K] int32 selected documents by descending score, K = min(top_k, M).
    scores: [B, K] float32 their scores.
    selected: [B, K] bool, slot i is valid iff i < number of documents present in the bank.
  """

  doc_scores: jax.Array
  indices: jax.Array
  scores: jax.Array
  selected: jax.Array


def _check_route_args(rq, query_mask, keys, chunk_doc, num_docs, top_k, scale, head_reduce,
                      query_reduce, chunk_reduce, tile_chunks, kernel_impl, doc_mask) -> None:
  if keys.dtype == BITS and jnp.dtype(rq.dtype).itemsize != 2:
    raise ValueError(f"keys.dtype=uint16 (a 16-bit float bank's bit patterns, `host_keys`) "
                     f"needs 16-bit float queries; got rq.dtype={rq.dtype}")
  check_inputs(rq, query_mask, jax.ShapeDtypeStruct(keys.shape, _key_dtype(rq, keys)),
               chunk_doc, num_docs, scale, head_reduce, query_reduce, chunk_reduce)
  if kernel_impl not in KERNEL_IMPLS:
    raise ValueError(f"kernel_impl={kernel_impl!r}; expected one of {KERNEL_IMPLS}")
  for name, value, auto in (("top_k", top_k, False), ("tile_chunks", tile_chunks, True)):
    if auto and value is None:
      continue
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{name}={value!r} must be a static int >= 1"
                       f"{' (or None: automatic)' if auto else ''}")
  if doc_mask is not None and (jnp.dtype(doc_mask.dtype) != jnp.bool_ or doc_mask.shape not in (
      (num_docs,), (rq.shape[0], num_docs))):
    raise ValueError(f"doc_mask must be bool [{num_docs}] or [{rq.shape[0]}, {num_docs}] "
                     f"(documents, or questions x documents); got {doc_mask.dtype} "
                     f"{tuple(doc_mask.shape)}")


def _allowed(doc_mask, b: int, num_docs: int) -> jax.Array:
  """[B, M] bool: the documents each question may select (`doc_mask` broadcast; all if None)."""
  if doc_mask is None:
    return jnp.ones((b, num_docs), jnp.bool_)
  return jnp.broadcast_to(jnp.asarray(doc_mask, jnp.bool_), (b, num_docs))


def _doc_accumulate(rq, query_mask, keys, chunk_doc, num_docs, *, scale, head_reduce,
                    query_reduce, chunk_reduce, tile_chunks):
  """Per-document running max or sum [B, M] over the bank, streamed tile by tile.

  The last tile is the bank's last `tile` rows (its start clamped), with the rows an earlier
  tile already covered dropped (their ids set to -1); padding rows (chunk_doc < 0) and ids
  >= M are out of bounds, which the scatter ignores (`_scatter_docs`). A question with no valid
  token (query max) keeps its token 0's scores here; the caller sets them to -inf (on the
  document scores, once: `_mask_empty`).
  """
  c = keys.shape[0]
  dtype = _key_dtype(rq, keys)
  q = query_operand(rq, query_mask, keys.shape[1], scale=scale, head_reduce=head_reduce,
                    query_reduce=query_reduce, dtype=dtype)
  if tile_chunks is None:  # the bank in equal tiles of at most the automatic size
    target = auto_tile_chunks(score_columns(q), math.prod(keys.shape[1:]) * dtype.itemsize, c,
                              half_keys=dtype.itemsize == 2)
    tile = -(-c // -(-c // target))
  else:
    tile = min(tile_chunks, c)
  num_tiles = -(-c // tile)
  b = rq.shape[0]
  chunk_doc = chunk_doc.astype(jnp.int32)
  init = jnp.full((b, num_docs), NEG_INF if chunk_reduce == "max" else 0.0, jnp.float32)
  # A 16-bit bank is sliced as bits: XLA:CPU (jax 0.10) otherwise converts the whole bank to
  # float32 before the loop (each tile back after), which made bfloat16 routing 4.8x slower.
  # The bitcast here still copies the bank once per call; `host_keys` banks skip that.
  bits = keys if keys.dtype == BITS or dtype.itemsize != 2 else jax.lax.bitcast_convert_type(
      keys, BITS)

  def body(i, acc):
    nominal = i * tile
    start = jnp.minimum(nominal, c - tile)
    k = jax.lax.dynamic_slice_in_dim(bits, start, tile, axis=0)
    k = k if k.dtype == dtype else jax.lax.bitcast_convert_type(k, dtype)
    doc = jax.lax.dynamic_slice_in_dim(chunk_doc, start, tile, axis=0)
    if num_tiles > 1:  # the last tile's rows an earlier one covered
      doc = jnp.where(start + jnp.arange(tile) >= nominal, doc, -1)
    s = tile_chunk_scores(q, k, scale=scale, head_reduce=head_reduce, mask_empty=False)
    return _scatter_docs(acc, doc, s, chunk_reduce)

  return jax.lax.fori_loop(0, num_tiles, body, init)


def _mask_empty(doc_scores: jax.Array, empty: jax.Array) -> jax.Array:
  """Document scores [B, M] with the questions `empty` [B] (no valid token) at -inf."""
  return jnp.where(empty[:, None], NEG_INF, doc_scores)


_DOC_SCATTER = jax.lax.ScatterDimensionNumbers(
    update_window_dims=(0,), inserted_window_dims=(1,), scatter_dims_to_operand_dims=(1,))


def _scatter_docs(acc: jax.Array, doc: jax.Array, s: jax.Array, chunk_reduce: str) -> jax.Array:
  """acc [B, M] raised to (max) or increased by (sum) the chunk scores s [B, n] of chunks of
  documents doc [n]; an id outside [0, M) (padding rows: -1) is dropped by the scatter itself
  (no pass over the ids to redirect it)."""
  scatter = jax.lax.scatter_max if chunk_reduce == "max" else jax.lax.scatter_add
  return scatter(acc, doc[:, None], s, _DOC_SCATTER,
                 mode=jax.lax.GatherScatterMode.FILL_OR_DROP)


def _key_dtype(rq, keys) -> jnp.dtype:
  """The keys' float dtype: their own, or the queries' for a bank given as bit patterns."""
  return jnp.dtype(rq.dtype if keys.dtype == BITS else keys.dtype)


def host_keys(keys: np.ndarray) -> np.ndarray:
  """A host bank's keys as `route` reads them fastest on this backend, without a copy.

  On CPU a 16-bit float bank becomes a uint16 view of its bit patterns (`route` then slices
  tiles of bits and reinterprets each; handing it the floats costs a bank-sized copy per call);
  anything else is returned as it is. Pass queries of the bank's float dtype with it.
  """
  keys = np.asarray(keys)
  half = keys.dtype in (np.dtype(np.float16), np.dtype(jnp.bfloat16))
  return keys.view(np.uint16) if half and jax.default_backend() == "cpu" else keys


def count_chunks(chunk_doc: jax.Array, num_docs: int) -> jax.Array:
  """[M] int32 number of chunks of each document (padding rows and ids >= M ignored): what
  `route` takes as `chunk_counts` from a caller that routes one bank many times."""
  valid = (chunk_doc >= 0) & (chunk_doc < num_docs)
  seg = jnp.where(valid, chunk_doc, num_docs).astype(jnp.int32)
  return jax.ops.segment_sum(valid.astype(jnp.int32), seg, num_segments=num_docs)


def _finish_docs(acc: jax.Array, count: jax.Array, chunk_reduce: str) -> jax.Array:
  """Running max / sum [B, M] and chunk counts [M] -> document scores (`routing.doc_scores`)."""
  if chunk_reduce == "max":  # a document without chunks was never raised from -inf
    return acc
  return jnp.where(count > 0, acc / jnp.maximum(count, 1), NEG_INF)


def _bank_doc_scores(rq, query_mask, keys, chunk_doc, num_docs, *, scale, head_reduce,
                     query_reduce, chunk_reduce, tile_chunks, kernel_impl, count=None):
  """(document scores [B, M], chunks per document [M]) of a (local) bank, either scorer; a
  question without a valid token (`no_valid_token`) is not yet at -inf (`_mask_empty`).
  `count` is computed from chunk_doc when None and a chunk mean needs it, else returned as
  given (None included)."""
  if count is None and chunk_reduce == "mean":
    count = count_chunks(chunk_doc, num_docs)
  if pallas_kernels.resolves_to_pallas(kernel_impl, rq.shape[-1]):
    if keys.dtype == BITS:
      keys = jax.lax.bitcast_convert_type(keys, rq.dtype)
    doc_scores = routing_doc_scores(
        rq, query_mask, keys, chunk_doc, num_docs, scale=scale, head_reduce=head_reduce,
        query_reduce=query_reduce, chunk_reduce=chunk_reduce,
        interpret=jax.default_backend() != "gpu")
    return doc_scores, count  # (the kernel has set the empty questions' scores to -inf)
  acc = _doc_accumulate(rq, query_mask, keys, chunk_doc, num_docs, scale=scale,
                        head_reduce=head_reduce, query_reduce=query_reduce,
                        chunk_reduce=chunk_reduce, tile_chunks=tile_chunks)
  return _finish_docs(acc, count, chunk_reduce), count


def sort_keys(scores: jax.Array) -> jax.Array:
  """float32 -> int32 keys in `lax.top_k`'s order (a total order: -0.0 just below +0.0; -inf
  above int32 min). (A `+ 0.0` to merge the zeros would be simplified away under jit.)"""
  bits = jax.lax.bitcast_convert_type(scores.astype(jnp.float32), jnp.int32)
  return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def _top_k(doc_scores: jax.Array, owned: jax.Array, k: int):
  """Top k owned documents (`owned` [B, M] or [M]) by (score desc, index asc): (ranks,
  indices, scores) [B, k]; `sort_keys(ranks)` orders them across shards.

  Selected by a float32 `lax.top_k` (equal values: lower index first), XLA:CPU's fast top-k
  (an int32 one sorts every row: 100x slower at 20k documents). Its rank puts an owned -inf
  score at -float32 max and a document not owned at -inf, below every owned one. The order is
  (score desc, index asc) for every score above -float32 max (scores are bounded dot
  products, never that low, nor NaN), -0.0 below +0.0 (`lax.top_k`'s total order, as the
  training path's and `sort_keys`, which merges shards).
  """
  low = jnp.finfo(jnp.float32).min
  rank = jnp.where(owned, jnp.maximum(doc_scores, low), NEG_INF)
  top, idx = jax.lax.top_k(rank, k)
  return top, idx.astype(jnp.int32), jnp.take_along_axis(doc_scores, idx, axis=-1)


def _select(doc_scores: jax.Array, query_mask: jax.Array, query_reduce: str,
            count: jax.Array | None, doc_mask, chunk_doc: jax.Array, num_docs: int,
            k: int) -> RouteResult:
  """`route`'s result from its document scores [B, M] (a question without a valid token,
  `no_valid_token`, not yet at -inf).

  First as if every question had a valid token and an allowed document with chunks: the top
  k of the scores (with `doc_mask`, of `_top_k`'s ranks: allowed documents without chunks
  above those not allowed), slot i valid iff its score is finite (a document with chunks
  scores finite, one without -inf). A batch where a question has no valid token or its best
  slot is not finite takes a branch that sets such questions' scores to -inf, selects again
  and counts the allowed documents with chunks (a pass over every document, and over
  chunk_doc when `count` is None: `count_chunks`) for the valid slots. The usual program is
  then shorter (see the module docstring): routing one question takes 8 XLA:CPU operations
  (the first valid token, the queries, the GEMM, the scatter and its init, top-k, the branch
  and its condition), the most XLA runs in the calling thread. The questions without a valid
  token are found from the mask in the condition and again in the branch: one value used in
  both would be one more operation.
  """
  b = doc_scores.shape[0]
  # The rank of an allowed document without chunks (-inf: its score; with a mask, `_top_k`'s).
  absent = NEG_INF if doc_mask is None else jnp.finfo(jnp.float32).min
  allowed = None if doc_mask is None else _allowed(doc_mask, b, num_docs)

  def select(ds):
    """(document scores, indices, scores, ranks)."""
    if allowed is None:  # ranks are the scores: -inf (no chunks) ties go to the lower index
      top, idx = jax.lax.top_k(ds, k)
      return ds, idx, top, top
    ds = jnp.where(allowed, ds, NEG_INF)
    rank, idx, scores = _top_k(ds, allowed, k)
    return ds, idx, scores, rank

  ds, idx, scores, rank = select(doc_scores)

  def counted():
    ds, idx, scores, rank = select(_mask_empty(doc_scores, no_valid_token(query_mask,
                                                                          query_reduce)))
    n = count_chunks(chunk_doc, num_docs) if count is None else count
    present = jnp.sum((n > 0) & _allowed(doc_mask, b, num_docs), axis=-1)
    return ds, idx, scores, jnp.where(rank[:, :1] > absent, rank > absent,
                                      jnp.arange(k)[None, :] < present[:, None])

  # The barrier keeps XLA's top-k a top-k: with the condition reading the sorted values
  # directly, XLA:CPU sorted every document (the top-k pattern is a sort read by slices only).
  # The valid slots are compared inside the usual branch: outside it, one more operation.
  rank = jax.lax.optimization_barrier(rank)
  unusual = jnp.any(no_valid_token(query_mask, query_reduce) | (rank[:, 0] <= absent))
  return RouteResult(*jax.lax.cond(unusual, counted, lambda: (ds, idx, scores, rank > absent)))


@functools.partial(jax.jit, static_argnames=(
    "num_docs", "top_k", "scale", "head_reduce", "query_reduce", "chunk_reduce", "tile_chunks",
    "kernel_impl"))
def route(rq: jax.Array, query_mask: jax.Array, keys: jax.Array, chunk_doc: jax.Array,
          num_docs: int, *, top_k: int, scale: float, head_reduce: str = "mean",
          query_reduce: str = "max", chunk_reduce: str = "max",
          tile_chunks: int | None = None, kernel_impl: str = "xla",
          doc_mask: jax.Array | None = None,
          chunk_counts: jax.Array | None = None) -> RouteResult:
  """Routes B questions against a whole bank of one router layer (single device).

  Args:
    rq: [B, T, H, D] routing queries (L2-normalised by the caller where the model does).
    query_mask: [B, T] bool, each question's routing-query tokens.
    keys: [C, J, D] pooled routing keys of every chunk of the bank; rq's dtype, or for a
      16-bit float bank its bit patterns as uint16 (`host_keys`: faster on CPU).
    chunk_doc: [C] int, document (0 .. num_docs-1) of each chunk, -1 for padding rows.
    num_docs: static number of documents M.
    top_k: documents to select (K = min(top_k, M)).
    scale: multiplies every dot product (`MSAArch.routing_scale`).
    head_reduce: "mean" | "max" over the H heads.
    query_reduce: "max" | "mean" | "last" over the routing-query tokens.
    chunk_reduce: "max" | "mean" over a document's chunks.
    tile_chunks: chunks scored per step; peak memory grows with it, not with C. None: the
      bank in equal steps of at most `auto_tile_chunks` chunks (float32 keys: the whole bank
      for one or two questions or a bank within 16 MiB; else ~2 MiB of scores each).
    kernel_impl: "xla" (tiled GEMMs), "pallas" (the routing-score kernel; interpret mode
      without a GPU) or "auto" (the kernel on a GPU); see the module docstring.
    doc_mask: [M] or [B, M] bool, the documents each question may select (None: all). A
      masked document's score is -inf and it never fills a valid slot.
    chunk_counts: [M] int, the number of chunks of each document in chunk_doc (a bank's
      `MemoryBank.chunk_counts`), or None to count them here when needed (a scatter over
      all C ids: for a chunk mean, and for a question whose every score is -inf). Not
      checked.

  Returns:
    A `RouteResult`; equal to `routing.select_top_k(routing.doc_scores(routing.chunk_scores(
    ...)))` of the training path on the same documents (with `doc_mask`: on the documents it
    keeps).
  """
  _check_route_args(rq, query_mask, keys, chunk_doc, num_docs, top_k, scale, head_reduce,
                    query_reduce, chunk_reduce, tile_chunks, kernel_impl, doc_mask)
  if chunk_counts is not None and chunk_counts.shape != (num_docs,):
    raise ValueError(f"chunk_counts.shape={tuple(chunk_counts.shape)} must be [num_docs]="
                     f"{(num_docs,)}")
  doc_scores, count = _bank_doc_scores(
      rq, query_mask, keys, chunk_doc, num_docs, scale=scale, head_reduce=head_reduce,
      query_reduce=query_reduce, chunk_reduce=chunk_reduce, tile_chunks=tile_chunks,
      kernel_impl=kernel_impl, count=None if chunk_counts is None else chunk_counts.astype(
          jnp.int32))
  return _select(doc_scores, query_mask, query_reduce, count, doc_mask, chunk_doc, num_docs,
                 min(top_k, num_docs))


# ----------------------------------------------------------------------------------------------
# Memory Parallel


def layout_bank(keys: np.ndarray, chunk_doc: np.ndarray, num_shards: int, *,
                tile_chunks: int = DEFAULT_TILE_CHUNKS) -> tuple[np.ndarray, np.ndarray]:
  """Packs a bank into `num_shards` equal contiguous shards, no document straddling two.

  Shard s starts at the first document boundary at or after s * (chunks / num_shards); every
  shard is padded at its end to the same length, a multiple of `tile_chunks`, with zero keys
  and chunk_doc = -1 (so `route` on the result uses the same tiles as each shard). Padding
  rows of the input are dropped first. Document order is kept.

  Args:
    keys: [C, J, D] routing keys (numpy or a host-fetchable array).
    chunk_doc: [C] int, each document's chunks contiguous; -1 for padding rows.
    num_shards: S, the size of the mesh's memory axis.
    tile_chunks: the tile size `route_sharded` will use.

  Returns:
    (keys [S * L, J, D], chunk_doc [S * L] int32) with L the per-shard length.
  """
  if not isinstance(num_shards, int) or num_shards < 1:
    raise ValueError(f"num_shards={num_shards!r} must be an int >= 1")
  if not isinstance(tile_chunks, int) or tile_chunks < 1:
    raise ValueError(f"tile_chunks={tile_chunks!r} must be an int >= 1")
  keys, chunk_doc = np.asarray(keys), np.asarray(chunk_doc)
  if keys.ndim != 3 or chunk_doc.shape != keys.shape[:1]:
    raise ValueError(f"keys.shape={keys.shape} must be [C, J, D] and chunk_doc.shape="
                     f"{chunk_doc.shape} [C]")
  real = chunk_doc >= 0
  keys, chunk_doc = keys[real], chunk_doc[real].astype(np.int32)
  c = chunk_doc.shape[0]
  starts = np.flatnonzero(np.r_[True, chunk_doc[1:] != chunk_doc[:-1]]) if c else np.zeros(0, int)
  docs, runs = np.unique(chunk_doc[starts], return_counts=True)
  if (runs > 1).any():
    raise ValueError(f"document {int(docs[runs > 1][0])} has non-contiguous chunks; a "
                     "document's chunks must be contiguous")
  bounds = np.r_[starts, c]  # where a shard may start: document starts, and the end
  ideal = np.arange(1, num_shards) * c / num_shards
  cuts = np.r_[0, bounds[np.searchsorted(bounds, ideal, side="left")], c].astype(int)
  length = -(-max(int(np.diff(cuts).max()), 1) // tile_chunks) * tile_chunks
  out_keys = np.zeros((num_shards * length,) + keys.shape[1:], keys.dtype)
  out_doc = np.full((num_shards * length,), -1, np.int32)
  for s in range(num_shards):
    lo, hi = cuts[s], cuts[s + 1]
    out_keys[s * length: s * length + hi - lo] = keys[lo:hi]
    out_doc[s * length: s * length + hi - lo] = chunk_doc[lo:hi]
  return out_keys, out_doc


def shard_bank(mesh: Mesh, keys, chunk_doc, *, axis_name: str = "memory",
               tile_chunks: int = DEFAULT_TILE_CHUNKS) -> tuple[jax.Array, jax.Array]:
  """`layout_bank` for the mesh's `axis_name` axis, then `device_put` sharded over it.

  The arrays are replicated over the mesh's other axes.
  """
  _check_axis(mesh, axis_name)
  keys, chunk_doc = layout_bank(keys, chunk_doc, mesh.shape[axis_name], tile_chunks=tile_chunks)
  spec = NamedSharding(mesh, P(axis_name))
  return jax.device_put(keys, spec), jax.device_put(chunk_doc, spec)


def _check_axis(mesh: Mesh, axis_name: str) -> None:
  if axis_name not in mesh.shape:
    raise ValueError(f"axis_name={axis_name!r} is not an axis of the mesh {dict(mesh.shape)}")


def check_no_straddling(chunk_doc, num_shards: int) -> None:
  """Raises ValueError if a document has chunks on both sides of a shard boundary.

  Compares, for consecutive shards, the last real document of one and the first of the next.
  """
  doc = np.asarray(chunk_doc).reshape(num_shards, -1)
  for s in range(num_shards - 1):
    left, right = doc[s][doc[s] >= 0], doc[s + 1][doc[s + 1] >= 0]
    if len(left) and len(right) and left[-1] == right[0]:
      raise ValueError(f"document {int(left[-1])} straddles the boundary of memory shards {s} "
                       f"and {s + 1}; lay the bank out with layout_bank / shard_bank")


def _host_value(x) -> np.ndarray | None:
  """x on the host, or None under an outer jit or when other processes hold parts of it."""
  try:
    return np.asarray(x) if getattr(x, "is_fully_addressable", True) else None
  except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
    return None


def _merge(top: jax.Array, idx: jax.Array, scores: jax.Array, k: int):
  """Candidates [B, N] -> the first k by (sort key desc, index asc)."""
  _, idx, scores = jax.lax.sort((~top, idx, scores), dimension=-1, num_keys=2)
  return idx[:, :k], scores[:, :k]


def route_sharded(mesh: Mesh, rq: jax.Array, query_mask: jax.Array, keys: jax.Array,
                  chunk_doc: jax.Array, num_docs: int, *, top_k: int, scale: float,
                  head_reduce: str = "mean", query_reduce: str = "max",
                  chunk_reduce: str = "max", tile_chunks: int = DEFAULT_TILE_CHUNKS,
                  axis_name: str = "memory", return_doc_scores: bool = True,
                  kernel_impl: str = "xla", doc_mask: jax.Array | None = None) -> RouteResult:
  """`route` with the bank's chunks sharded over the mesh axis `axis_name` (Memory Parallel).

  The bank must be laid out with no document straddling shards (`shard_bank` / `layout_bank`
  with the same `tile_chunks`); questions are replicated. Each shard scores its chunks, takes a
  local top-K of the documents it owns (a document with no chunk anywhere is owned by shard 0),
  and the S * K candidates are all-gathered and merged. Results equal `route` on the same
  laid-out bank bitwise. The straddling check runs on the host when `chunk_doc` is a concrete,
  fully addressable array (not under an outer `jit`).

  Args:
    mesh: a mesh with an axis `axis_name` (other axes replicate the work).
    rq, query_mask, keys, chunk_doc, num_docs, top_k, scale, head_reduce, query_reduce,
      chunk_reduce, tile_chunks, kernel_impl, doc_mask: as in `route` (the mask indexes the
      bank's documents, replicated); C must be a multiple of the axis size.
    axis_name: the memory axis.
    return_doc_scores: also all-reduce the [B, M] document scores (else `doc_scores` is None).

  Returns:
    A `RouteResult`, replicated over the mesh.
  """
  _check_route_args(rq, query_mask, keys, chunk_doc, num_docs, top_k, scale, head_reduce,
                    query_reduce, chunk_reduce, tile_chunks, kernel_impl, doc_mask)
  if tile_chunks is None:
    raise ValueError("tile_chunks=None: route_sharded needs the tile its bank was laid out "
                     "with (shard_bank / layout_bank; DEFAULT_TILE_CHUNKS by default)")
  _check_axis(mesh, axis_name)
  shards = mesh.shape[axis_name]
  if keys.shape[0] % shards:
    raise ValueError(f"C={keys.shape[0]} chunks must be a multiple of the {shards} shards of "
                     f"axis {axis_name!r}; lay the bank out with layout_bank / shard_bank")
  host_doc = _host_value(chunk_doc)
  if host_doc is not None:
    check_no_straddling(host_doc, shards)
  allowed = _allowed(doc_mask, rq.shape[0], num_docs)
  return _route_sharded(
      mesh, rq, query_mask, keys, chunk_doc, allowed, num_docs, top_k=top_k, scale=float(scale),
      head_reduce=head_reduce, query_reduce=query_reduce, chunk_reduce=chunk_reduce,
      tile_chunks=tile_chunks, axis_name=axis_name, return_doc_scores=return_doc_scores,
      kernel_impl=kernel_impl)


@functools.partial(jax.jit, static_argnames=(
    "mesh", "num_docs", "top_k", "scale", "head_reduce", "query_reduce", "chunk_reduce",
    "tile_chunks", "axis_name", "return_doc_scores", "kernel_impl"))
def _route_sharded(mesh, rq, query_mask, keys, chunk_doc, allowed, num_docs, *, top_k, scale,
                   head_reduce, query_reduce, chunk_reduce, tile_chunks, axis_name,
                   return_doc_scores, kernel_impl):
  k = min(top_k, num_docs)

  def local(rq, query_mask, keys, chunk_doc, allowed):
    doc_scores, count = _bank_doc_scores(
        rq, query_mask, keys, chunk_doc, num_docs, scale=scale, head_reduce=head_reduce,
        query_reduce=query_reduce, chunk_reduce=chunk_reduce, tile_chunks=tile_chunks,
        kernel_impl=kernel_impl, count=count_chunks(chunk_doc, num_docs))
    doc_scores = _mask_empty(doc_scores, no_valid_token(query_mask, query_reduce))
    doc_scores = jnp.where(allowed, doc_scores, NEG_INF)
    total = jax.lax.psum(count, axis_name)
    first = jax.lax.axis_index(axis_name) == 0
    owned = ((count > 0) | ((total == 0) & first)) & allowed
    top, idx, scores = _top_k(doc_scores, owned, k)
    top = sort_keys(top)
    gather = lambda x: jnp.moveaxis(jax.lax.all_gather(x, axis_name), 0, 1).reshape(
        x.shape[0], -1)
    indices, scores = _merge(gather(top), gather(idx), gather(scores), k)
    present = jnp.sum((total > 0) & allowed, axis=-1)
    selected = jnp.arange(k)[None, :] < present[:, None]
    docs = jax.lax.pmax(doc_scores, axis_name) if return_doc_scores else None
    return RouteResult(docs, indices, scores, selected)

  # check_vma=False: all_gather's result is the same on every shard, but the replication
  # checker types it as varying (and the per-shard running max / sum carry with it).
  out_specs = RouteResult(P() if return_doc_scores else None, P(), P(), P())
  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(axis_name), P(axis_name), P()),
                       out_specs=out_specs, check_vma=False)(rq, query_mask, keys, chunk_doc,
                                                             allowed)
