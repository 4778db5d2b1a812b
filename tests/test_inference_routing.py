"""Bank routing (`msa_jax.memory.routing`) against the training path's routing math.

`route` streams a flat bank [C, J, D] in tiles; the oracle lays the same documents out as the
training batch [B, N, C_doc, J, D] and runs `routing.chunk_scores` -> `doc_scores` ->
`select_top_k`. Memory Parallel (`route_sharded`) runs on 8 fake CPU devices in a subprocess
(this file as a script) and must equal `route` bitwise.
"""

import json

import numpy as np
import pytest

from configs import routing_benchmark as bench_config
from tests.fake_devices import run_on_fake_devices

MODES = [(h, q, c) for h in ("mean", "max") for q in ("max", "mean", "last")
         for c in ("max", "mean")]
MESHES = {"memory8": {"memory": 8}, "data2_memory4": {"data": 2, "memory": 4}}


def random_bank(seed: int, chunks_per_doc, *, j: int = 2, d: int = 8, dup: tuple = ()):
  """A flat bank: documents with the given chunk counts (0 = absent), L2-normalised keys.

  `dup` = (a, b): document b gets a copy of document a's keys (needs equal chunk counts), a
  guaranteed score tie.
  """
  rng = np.random.default_rng(seed)
  n = np.asarray(chunks_per_doc)
  chunk_doc = np.repeat(np.arange(len(n)), n).astype(np.int32)
  keys = rng.normal(size=(len(chunk_doc), j, d)).astype(np.float32)
  keys /= np.linalg.norm(keys, axis=-1, keepdims=True)
  if dup:
    a, b = dup
    assert n[a] == n[b]
    keys[chunk_doc == b] = keys[chunk_doc == a]
  return keys, chunk_doc


def random_questions(seed: int, b: int = 3, t: int = 4, h: int = 4, d: int = 8):
  """Normalised routing queries; question 1 has one token, the last has none."""
  rng = np.random.default_rng(seed + 100)
  rq = rng.normal(size=(b, t, h, d)).astype(np.float32)
  rq /= np.linalg.norm(rq, axis=-1, keepdims=True)
  mask = rng.random((b, t)) < 0.6
  mask[:, 0] = True
  mask[1] = np.arange(t) == t - 2
  mask[-1] = False
  return rq, mask


def training_route(rq, mask, keys, chunk_doc, num_docs, top_k, head_reduce, query_reduce,
                   chunk_reduce, scale, doc_mask=None):
  """The oracle: the bank as a training batch through `msa_jax.model.routing` (`doc_mask` [B,
  M]: only those documents are in each question's batch; the others score -inf)."""
  import jax.numpy as jnp
  from msa_jax.model import routing
  b = rq.shape[0]
  counts = np.bincount(chunk_doc[chunk_doc >= 0], minlength=num_docs)
  cmax = max(int(counts.max()), 1)
  docs = np.zeros((num_docs, cmax) + keys.shape[1:], keys.dtype)
  chunks = np.arange(cmax) < counts[:, None]
  for doc in range(num_docs):
    docs[doc, :counts[doc]] = keys[chunk_doc == doc]
  docs_b = jnp.broadcast_to(docs, (b,) + docs.shape)
  chunks_b = jnp.broadcast_to(chunks, (b,) + chunks.shape)
  cs = routing.chunk_scores(jnp.asarray(rq), jnp.asarray(mask), docs_b, chunks_b, scale=scale,
                            head_reduce=head_reduce, query_reduce=query_reduce)
  ds = routing.doc_scores(cs, chunks_b, chunk_reduce)
  present = jnp.broadcast_to(counts > 0, (b, num_docs))
  if doc_mask is not None:
    present = present & jnp.asarray(doc_mask)
    ds = jnp.where(jnp.asarray(doc_mask), ds, -jnp.inf)
  idx, sel = routing.select_top_k(ds, present, top_k)
  return np.asarray(ds), np.asarray(idx), np.asarray(sel)


def max_finite_diff(a, b) -> float:
  """max |a - b| where b is finite; inf if a and b disagree on which entries are finite."""
  a, b = np.asarray(a), np.asarray(b)
  finite = np.isfinite(b)
  if not np.array_equal(a[~finite], b[~finite]):
    return float("inf")
  return float(np.abs(a[finite] - b[finite]).max(initial=0.0))


def check_against_training(bank, questions, num_docs, top_k, mode, tile, scale=0.7,
                           kernel_impl="xla"):
  from msa_jax.memory.routing import route
  keys, chunk_doc = bank
  rq, mask = questions
  h, q, c = mode
  out = route(rq, mask, keys, chunk_doc, num_docs, top_k=top_k, scale=scale, head_reduce=h,
              query_reduce=q, chunk_reduce=c, tile_chunks=tile, kernel_impl=kernel_impl)
  ds, idx, sel = training_route(rq, mask, keys, chunk_doc, num_docs, top_k, h, q, c, scale)
  k = min(top_k, num_docs)
  assert out.doc_scores.shape == (rq.shape[0], num_docs) and out.indices.shape == (rq.shape[0], k)
  err = max_finite_diff(out.doc_scores, ds)
  print(f"{mode} tile={tile} {kernel_impl}: max |doc score error| = {err:.2e}")
  np.testing.assert_allclose(np.asarray(out.doc_scores), ds, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out.indices), idx)
  np.testing.assert_array_equal(np.asarray(out.selected), sel)
  np.testing.assert_array_equal(
      np.asarray(out.scores), np.take_along_axis(np.asarray(out.doc_scores), idx, axis=1))
  return out


# Ragged documents: 0 chunks (absent), 1 chunk, long ones; 2 and 6 tie (copied keys).
RAGGED = (3, 1, 5, 0, 2, 7, 5, 1, 0, 4)


@pytest.mark.parametrize("mode", MODES, ids=["-".join(m) for m in MODES])
def test_route_matches_training_path(mode):
  bank = random_bank(0, RAGGED, dup=(2, 6))
  tile = (1, 4, 7, 28, 64)[MODES.index(mode) % 5]  # C = 28: divisors and not, and > C
  check_against_training(bank, random_questions(0), len(RAGGED), 4, mode, tile)


@pytest.mark.parametrize("mode", MODES, ids=["-".join(m) for m in MODES])
def test_kernel_route_matches_training_and_xla(mode):
  """kernel_impl="pallas" (the routing-score kernel, interpret mode on CPU): the training
  path's selection, and the XLA path's, on a bank with a tie (documents 2 and 6)."""
  bank = random_bank(8, RAGGED, d=16, dup=(2, 6))
  questions = random_questions(8, d=16)
  out = check_against_training(bank, questions, len(RAGGED) + 2, 5, mode, 4,
                               kernel_impl="pallas")
  xla = check_against_training(bank, questions, len(RAGGED) + 2, 5, mode, 4)
  np.testing.assert_array_equal(np.asarray(out.indices), np.asarray(xla.indices))
  np.testing.assert_allclose(np.asarray(out.doc_scores), np.asarray(xla.doc_scores), rtol=1e-6,
                             atol=1e-6)


@pytest.mark.parametrize("mode", MODES, ids=["-".join(m) for m in MODES])
def test_automatic_tile_and_given_chunk_counts(mode):
  """tile_chunks=None (`auto_tile_chunks`, here one tile: the bank is small) and the bank's own
  chunk counts give the training path's routing; the counts change nothing (bitwise)."""
  from msa_jax.memory.routing import route
  bank = random_bank(12, RAGGED, dup=(2, 6))
  questions = random_questions(12)
  out = check_against_training(bank, questions, len(RAGGED), 4, mode, None)
  h, q, c = mode
  counted = route(*questions, *bank, len(RAGGED), top_k=4, scale=0.7, head_reduce=h,
                  query_reduce=q, chunk_reduce=c,
                  chunk_counts=np.bincount(bank[1], minlength=len(RAGGED)))
  for field in out._fields:
    np.testing.assert_array_equal(np.asarray(getattr(counted, field)),
                                  np.asarray(getattr(out, field)))


@pytest.mark.parametrize("mode", [("mean", "max", "mean"), ("max", "last", "max")],
                         ids=["mean-max-mean", "max-last-max"])
def test_automatic_tiles_split_the_bank_evenly(monkeypatch, mode):
  """An automatic size of 8 chunks cuts a 31-chunk bank into 4 tiles of 8 (the last overlaps
  the third by a chunk, which it drops): still the training path's routing."""
  from msa_jax.memory import routing as bank_routing
  monkeypatch.setattr(bank_routing, "MIN_TILE_CHUNKS", 1)
  monkeypatch.setattr(bank_routing, "TILE_SCORE_BYTES", 4 * 12 * 8)
  monkeypatch.setattr(bank_routing, "KEYS_BOUND_COLUMNS", 0)
  monkeypatch.setattr(bank_routing, "WHOLE_BANK_BYTES", 0)
  # 3 questions: head mean, 4 tokens -> 12 score columns; head max, "last" folded to 1 token,
  # 4 heads -> 12 too. Keys: J = 2, D = 8, float32.
  docs = RAGGED + (3,)  # 31 chunks: a bank shape no other test compiles `route` for
  assert bank_routing.auto_tile_chunks(12, 2 * 8 * 4, sum(docs)) == 8
  check_against_training(random_bank(13, docs), random_questions(13), len(docs), 4, mode, None)


def test_auto_tile_chunks():
  """The whole bank when its GEMM is keys-bound (<= KEYS_BOUND_COLUMNS score columns) or its
  keys and scores fit WHOLE_BANK_BYTES; else powers of two sized by the tile's float32 scores
  (TILE_SCORE_BYTES) and keys (TILE_KEY_BYTES), at least MIN_TILE_CHUNKS."""
  from msa_jax.memory.routing import (KEYS_BOUND_COLUMNS, MIN_TILE_CHUNKS, TILE_KEY_BYTES,
                                      TILE_SCORE_BYTES, WHOLE_BANK_BYTES, auto_tile_chunks)
  row = 2 * 64 * 4  # J = 2, D = 64, float32 keys
  big = 10 * WHOLE_BANK_BYTES // row  # chunks of a bank beyond WHOLE_BANK_BYTES
  for columns in (1, 3, 16, 32, 33, 100, 128, 1000, 10 ** 6):
    tile = auto_tile_chunks(columns, row, big)
    if columns <= KEYS_BOUND_COLUMNS:
      assert tile == big
      continue
    assert tile & (tile - 1) == 0 and tile >= MIN_TILE_CHUNKS
    assert tile == MIN_TILE_CHUNKS or (tile * 4 * columns <= TILE_SCORE_BYTES
                                       and tile * row <= TILE_KEY_BYTES)
    assert tile == MIN_TILE_CHUNKS or 2 * tile * 4 * columns > TILE_SCORE_BYTES or (
        2 * tile * row > TILE_KEY_BYTES)
  # The benchmark's banks (J = 2, D = 64, T = 16, head mean): one question streams any bank in
  # one step; 8 questions take 1M tokens (15,625 chunks, 8 MiB of keys) in one step and 10M
  # tokens in tiles of 4,096 chunks (2 MiB of scores).
  assert auto_tile_chunks(16, row, 156_250) == 156_250
  assert auto_tile_chunks(8 * 16, row, 15_625) == 15_625
  assert auto_tile_chunks(8 * 16, row, 156_250) == 4096
  # A small bank with many columns: whole while its scores fit too (8 MB), else tiles.
  assert auto_tile_chunks(1000, row, 2048) == 2048
  assert auto_tile_chunks(4096, row, 2048) == MIN_TILE_CHUNKS  # 32 MiB of scores
  assert auto_tile_chunks(10 ** 6, row, big) == MIN_TILE_CHUNKS
  # 16-bit keys always take tiles (the GEMM converts them), sized as above: 8 MiB of keys at
  # one question, 2 MiB of scores at 8.
  assert auto_tile_chunks(16, row // 2, 156_250, half_keys=True) == 32768
  assert auto_tile_chunks(8 * 16, row // 2, 15_625, half_keys=True) == 4096


@pytest.mark.parametrize("kernel_impl", ["xla", "pallas", "auto"])
def test_kernel_impl_picks_the_scorer(kernel_impl):
  """The compiled program holds a Pallas call iff the kernel was asked for ("auto" takes the
  kernel on GPU only)."""
  import jax
  from msa_jax.memory.routing import route
  keys, chunk_doc = random_bank(9, (2, 3), d=16)
  rq, mask = random_questions(9, d=16)
  jaxpr = jax.make_jaxpr(lambda *a: route(*a, 2, top_k=1, scale=1.0, kernel_impl=kernel_impl))(
      rq, mask, keys, chunk_doc)
  wants = kernel_impl == "pallas" or (kernel_impl == "auto" and jax.default_backend() == "gpu")
  assert ("pallas_call" in str(jaxpr)) == wants


@pytest.mark.parametrize("tile", [1, 3, 5, 14, 28, 100])
@pytest.mark.parametrize("head_reduce", ["mean", "max"])
def test_tile_size_does_not_change_the_result(tile, head_reduce):
  """Same selection, scores equal up to float rounding (a GEMM's summation order may depend on
  its shape: a 1-chunk tile is a matrix-vector product)."""
  bank = random_bank(1, RAGGED)
  out = check_against_training(bank, random_questions(1), len(RAGGED), 3,
                               (head_reduce, "max", "mean"), tile)
  from msa_jax.memory.routing import route
  ref = route(*random_questions(1), *bank, len(RAGGED), top_k=3, scale=0.7,
              head_reduce=head_reduce, chunk_reduce="mean", tile_chunks=28)
  np.testing.assert_allclose(np.asarray(out.doc_scores), np.asarray(ref.doc_scores), rtol=1e-6,
                             atol=1e-7)
  np.testing.assert_array_equal(np.asarray(out.indices), np.asarray(ref.indices))


@pytest.mark.parametrize("head_reduce", ["mean", "max"])
def test_negative_scale(head_reduce):
  """scale < 0 flips the order: "max" over heads of the scaled dots is scale * min of the dots."""
  bank = random_bank(7, RAGGED)
  check_against_training(bank, random_questions(7), len(RAGGED), 4, (head_reduce, "max", "max"),
                         8, scale=-1.3)


def test_ties_go_to_the_lower_document():
  bank = random_bank(2, RAGGED, dup=(2, 6))
  out = check_against_training(bank, random_questions(2), len(RAGGED), len(RAGGED),
                               ("mean", "max", "max"), 4)
  ds = np.asarray(out.doc_scores)
  assert (ds[:-1, 2] == ds[:-1, 6]).all()
  for row in np.asarray(out.indices)[:-1]:
    assert list(row).index(2) + 1 == list(row).index(6)
  # The question without routing tokens scores every document -inf: a tie of all.
  assert list(np.asarray(out.indices)[-1]) == list(range(len(RAGGED)))


def test_top_k_larger_than_the_bank():
  bank = random_bank(3, (2, 0, 3))
  out = check_against_training(bank, random_questions(3), 3, 5, ("mean", "max", "max"), 2)
  assert out.indices.shape == (3, 3)
  assert np.asarray(out.selected).tolist() == [[True, True, False]] * 3
  assert np.asarray(out.indices)[0, 2] == 1 and np.isneginf(np.asarray(out.scores)[:, 2]).all()


@pytest.mark.parametrize("chunk_reduce, counts", [("max", False), ("mean", True)],
                         ids=["max-counted_here", "mean-chunk_counts"])
def test_valid_slots_with_and_without_a_question_lacking_tokens(chunk_reduce, counts):
  """`route` reads the valid slots off the selected ranks and counts the documents present
  only when some question has every score -inf (`routing._selected`): the same selection as
  the training path either way. Two absent documents, top_k above the 3 present; a per-question
  `doc_mask` leaves question 1 only absent documents (no valid slot, every score -inf)."""
  from msa_jax.memory.routing import route
  chunks = (2, 0, 3, 0, 1)
  m = len(chunks)
  keys, chunk_doc = random_bank(5, chunks)
  rq, mask = random_questions(5, b=4)  # the last question has no routing token
  doc_mask = np.ones((4, m), bool)
  doc_mask[1] = np.asarray(chunks) == 0
  kw = dict(top_k=4, scale=0.7, chunk_reduce=chunk_reduce,
            chunk_counts=np.bincount(chunk_doc, minlength=m) if counts else None)
  for qs, dm in ((slice(0, 4), None), (slice(0, 3), None), (slice(0, 3), doc_mask[:3])):
    out = route(rq[qs], mask[qs], keys, chunk_doc, m, doc_mask=dm, **kw)
    ds, idx, sel = training_route(rq[qs], mask[qs], keys, chunk_doc, m, 4, "mean", "max",
                                  chunk_reduce, 0.7, doc_mask=dm)
    np.testing.assert_array_equal(np.asarray(out.selected), sel)
    np.testing.assert_array_equal(np.asarray(out.indices)[sel], idx[sel])
    np.testing.assert_allclose(np.asarray(out.doc_scores), ds, rtol=1e-6, atol=1e-6)
  assert np.asarray(out.selected).sum(axis=1).tolist() == [3, 0, 3]


@pytest.mark.parametrize("kernel_impl", ["xla", "pallas"])
@pytest.mark.parametrize("per_question", [False, True], ids=["shared_mask", "per_question"])
def test_doc_mask_routes_as_if_the_documents_were_removed(kernel_impl, per_question):
  """`doc_mask`: a masked document is never in a valid slot and scores -inf; the valid slots,
  their scores and every document score equal routing over the bank with the masked documents'
  chunks removed (made padding rows), and the training path's selection over the kept ones.

  The last question has no routing token (every score -inf, a tie of all): there the valid
  slots are the first kept documents by index, where the bank without the documents would
  list removed (now absent) ones too, so it is only checked for never selecting a masked one.
  """
  from msa_jax.memory.routing import route
  keys, chunk_doc = random_bank(11, RAGGED, d=16, dup=(2, 6))
  rq, mask = random_questions(11, b=4, d=16)
  m, b = len(RAGGED), rq.shape[0]
  rng = np.random.default_rng(11)
  doc_mask = rng.random((b, m) if per_question else (m,)) < 0.6
  doc_mask[..., [2, 6]] = True  # keep the tie
  doc_mask[..., 0] = False  # a long document
  rows = np.broadcast_to(doc_mask, (b, m))
  kw = dict(top_k=5, scale=0.7, chunk_reduce="mean", tile_chunks=4, kernel_impl=kernel_impl)
  out = route(rq, mask, keys, chunk_doc, m, doc_mask=doc_mask, **kw)
  idx, sel = np.asarray(out.indices), np.asarray(out.selected)
  ds, scores = np.asarray(out.doc_scores), np.asarray(out.scores)
  for q in range(b):
    assert rows[q][idx[q][sel[q]]].all(), (q, idx[q], sel[q])
    assert np.isneginf(ds[q][~rows[q]]).all()
    assert sel[q].sum() == min(5, np.sum(rows[q] & (np.asarray(RAGGED) > 0)))
  for q in range(b - 1):
    removed = np.where(rows[q][chunk_doc], chunk_doc, -1).astype(np.int32)
    ref = route(rq, mask, keys, removed, m, **kw)  # the same batch: the same GEMM shapes
    np.testing.assert_array_equal(sel[q], np.asarray(ref.selected)[q])
    np.testing.assert_array_equal(idx[q][sel[q]], np.asarray(ref.indices)[q][sel[q]])
    np.testing.assert_array_equal(scores[q][sel[q]], np.asarray(ref.scores)[q][sel[q]])
    np.testing.assert_array_equal(ds[q], np.asarray(ref.doc_scores)[q])
  t_ds, t_idx, t_sel = training_route(rq, mask, keys, chunk_doc, m, 5, "mean", "max", "mean",
                                      0.7, doc_mask=rows)
  np.testing.assert_allclose(ds[:-1], t_ds[:-1], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(sel, t_sel)
  for q in range(b - 1):
    np.testing.assert_array_equal(idx[q][sel[q]], t_idx[q][t_sel[q]])


def test_doc_mask_must_name_the_bank_documents():
  from msa_jax.memory.routing import route
  keys, chunk_doc = random_bank(5, (2, 3))
  rq, mask = random_questions(5)
  with pytest.raises(ValueError, match=r"doc_mask must be bool \[2\] or \[3, 2\] .*; got "
                                       r"bool \(3,\)"):
    route(rq, mask, keys, chunk_doc, 2, top_k=1, scale=1.0, doc_mask=np.ones(3, bool))
  with pytest.raises(ValueError, match=r"got float32 \(2,\)"):
    route(rq, mask, keys, chunk_doc, 2, top_k=1, scale=1.0, doc_mask=np.ones(2, np.float32))


def test_padding_rows_and_bfloat16():
  import jax.numpy as jnp
  from msa_jax.memory.routing import route
  keys, chunk_doc = random_bank(4, RAGGED)
  rq, mask = random_questions(4)
  pad_keys = np.concatenate([keys[:9], np.ones_like(keys[:3]), keys[9:], keys[:2]])
  pad_doc = np.concatenate([chunk_doc[:9], [-1] * 3, chunk_doc[9:], [-1] * 2]).astype(np.int32)
  kw = dict(top_k=4, scale=1.0, chunk_reduce="mean", tile_chunks=8)
  a = route(rq, mask, keys, chunk_doc, len(RAGGED), **kw)
  b = route(rq, mask, pad_keys, pad_doc, len(RAGGED), **kw)
  np.testing.assert_allclose(np.asarray(b.doc_scores), np.asarray(a.doc_scores), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(b.indices), np.asarray(a.indices))
  c = route(jnp.asarray(rq, jnp.bfloat16), mask, jnp.asarray(keys, jnp.bfloat16), chunk_doc,
            len(RAGGED), **kw)
  assert c.doc_scores.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(c.doc_scores), np.asarray(a.doc_scores), atol=3e-2)


@pytest.mark.parametrize("kernel_impl", ["xla", "pallas"])
def test_a_bfloat16_bank_as_bits(kernel_impl):
  """`host_keys` hands a bfloat16 bank over as uint16 bit patterns (on CPU): the same result,
  bit for bit, as the bfloat16 keys themselves."""
  import jax.numpy as jnp
  from msa_jax.memory.routing import host_keys, route
  keys, chunk_doc = random_bank(10, RAGGED, d=16)
  rq, mask = random_questions(10, d=16)
  keys16, rq16 = keys.astype(jnp.bfloat16), jnp.asarray(rq, jnp.bfloat16)
  bits = host_keys(keys16)
  assert bits.dtype == np.uint16 and np.shares_memory(bits, keys16)
  kw = dict(top_k=4, scale=1.0, chunk_reduce="mean", tile_chunks=8, kernel_impl=kernel_impl)
  a = route(rq16, mask, keys16, chunk_doc, len(RAGGED), **kw)
  b = route(rq16, mask, bits, chunk_doc, len(RAGGED), **kw)
  for field in a._fields:
    np.testing.assert_array_equal(np.asarray(getattr(b, field)), np.asarray(getattr(a, field)))
  assert host_keys(keys).dtype == np.float32  # float32 banks go as they are
  with pytest.raises(ValueError, match="needs 16-bit float queries; got rq.dtype=float32"):
    route(rq, mask, bits, chunk_doc, len(RAGGED), top_k=1, scale=1.0)


def test_bad_arguments_are_named():
  from msa_jax.memory.routing import layout_bank, route
  keys, chunk_doc = random_bank(5, (2, 3))
  rq, mask = random_questions(5)
  with pytest.raises(ValueError, match="top_k=0"):
    route(rq, mask, keys, chunk_doc, 2, top_k=0, scale=1.0)
  with pytest.raises(ValueError, match="tile_chunks=0"):
    route(rq, mask, keys, chunk_doc, 2, top_k=1, scale=1.0, tile_chunks=0)
  with pytest.raises(ValueError, match=r"chunk_counts.shape=\(3,\) must be \[num_docs\]=\(2,\)"):
    route(rq, mask, keys, chunk_doc, 2, top_k=1, scale=1.0, chunk_counts=np.ones(3, np.int32))
  with pytest.raises(ValueError, match="chunk_reduce='sum'"):
    route(rq, mask, keys, chunk_doc, 2, top_k=1, scale=1.0, chunk_reduce="sum")
  with pytest.raises(ValueError, match="kernel_impl='triton'"):
    route(rq, mask, keys, chunk_doc, 2, top_k=1, scale=1.0, kernel_impl="triton")
  with pytest.raises(ValueError, match="document 0 has non-contiguous"):
    layout_bank(keys, np.array([0, 1, 0, 1, 1]), 2)


def test_layout_bank_keeps_documents_whole():
  from msa_jax.memory.routing import check_no_straddling, layout_bank
  keys, chunk_doc = random_bank(6, (1, 9, 2, 2, 0, 3, 1))  # 18 chunks: doc 1 > 18 / 4
  out_keys, out_doc = layout_bank(keys, chunk_doc, 4, tile_chunks=4)
  length = out_doc.shape[0] // 4
  assert out_doc.shape[0] % 4 == 0 and length % 4 == 0
  check_no_straddling(out_doc, 4)
  np.testing.assert_array_equal(out_doc[out_doc >= 0], chunk_doc)
  np.testing.assert_array_equal(out_keys[out_doc >= 0], keys)
  assert (out_keys[out_doc < 0] == 0).all()
  with pytest.raises(ValueError, match="document 1 straddles the boundary of memory shards 0"):
    check_no_straddling(np.r_[chunk_doc, [-1, -1]], 4)


@pytest.mark.parametrize("devices,impl", [(0, "auto"), (1, "auto"), (0, "pallas")])
def test_benchmark_small_mode_runs(devices, impl, capsys):
  from msa_jax.inference import routing_benchmark
  config = bench_config.get_config("small")
  config.memory_devices = devices
  config.kernel_impl = impl
  rows = routing_benchmark.run(config)
  assert [r["tokens"] for r in rows] == [2048, 8192]
  assert [r["chunks"] for r in rows] == [128, 512] and [r["docs"] for r in rows] == [32, 128]
  for r in rows:
    assert r["seconds"] > 0 and r["bank_bytes"] == r["chunks"] * (2 * 16 * 4 + 4)
  out = capsys.readouterr().out
  assert "memory tokens" in out
  assert ("(route_sharded)" if devices else "(route)") in out and f"kernel_impl={impl}" in out


def test_benchmark_paper_flags():
  from msa_jax.inference import routing_benchmark
  args = bench_config.get_config("paper")
  routing_benchmark.check_config(args)
  assert (args.tokens, args.heads, args.kv_heads, args.dim, args.dtype, args.router_layers) == (
      "100000000", 32, 8, 128, "bfloat16", 18)
  assert routing_benchmark.bank_shape(100_000_000, args) == (1_562_500, 195_313)
  args.update(heads=6, kv_heads=4)
  with pytest.raises(ValueError, match="--config.heads=6 must be a multiple of "
                                       "--config.kv_heads=4"):
    routing_benchmark.check_config(args)


def test_benchmark_tile_defaults_to_routes_automatic_tile():
  from msa_jax.inference import routing_benchmark
  from msa_jax.memory import routing
  args = bench_config.get_config()
  assert args.tile_chunks == 0 and routing_benchmark.tile_chunks(args) is None
  args.memory_devices = 2
  assert routing_benchmark.tile_chunks(args) == routing.DEFAULT_TILE_CHUNKS
  args.tile_chunks = 512
  assert routing_benchmark.tile_chunks(args) == 512
  args.tile_chunks = -1
  with pytest.raises(ValueError, match="--config.tile_chunks"):
    routing_benchmark.check_config(args)


# ----------------------------------------------------------------------------------------------
# Memory Parallel on 8 fake CPU devices.

SHARDED_CASES = [  # (mode, top_k, tile)
    (("mean", "max", "max"), 4, 2),
    (("mean", "max", "mean"), 4, 3),
    (("max", "mean", "mean"), 20, 2),
    (("max", "last", "max"), 6, 1),
]
# 31 chunks: documents 1 and 5 longer than a shard of 8 / 4 chunks, 2 and 8 tie (copied keys).
SHARDED_DOCS = (2, 9, 3, 0, 1, 6, 0, 2, 3, 1, 4)


def _worker() -> None:
  """Routes on each mesh, compares with single-device `route`; prints one JSON line."""
  import jax
  import jax.numpy as jnp
  jax.config.update("jax_default_matmul_precision", "highest")
  from msa_jax.memory.routing import host_keys, layout_bank, route, route_sharded, shard_bank
  from msa_jax.runtime.sharding import make_mesh

  keys, chunk_doc = random_bank(7, SHARDED_DOCS, dup=(2, 8))
  num_docs = len(SHARDED_DOCS)
  rq, mask = random_questions(7, b=4)
  result = {"devices": jax.device_count()}
  for name, shape in MESHES.items():
    mesh = make_mesh(shape)
    shards = shape["memory"]
    for mode, top_k, tile in SHARDED_CASES:
      h, q, c = mode
      kw = dict(top_k=top_k, scale=0.5, head_reduce=h, query_reduce=q, chunk_reduce=c,
                tile_chunks=tile)
      s_keys, s_doc = shard_bank(mesh, keys, chunk_doc, tile_chunks=tile)
      got = route_sharded(mesh, rq, mask, s_keys, s_doc, num_docs, **kw)
      laid = layout_bank(keys, chunk_doc, shards, tile_chunks=tile)
      same_bank = route(rq, mask, *laid, num_docs, **kw)
      flat = route(rq, mask, keys, chunk_doc, num_docs, **kw)
      lean = route_sharded(mesh, rq, mask, s_keys, s_doc, num_docs, return_doc_scores=False,
                           **kw)
      eq = lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b)))
      result[f"{name}/{'-'.join(mode)}/k{top_k}/t{tile}"] = {
          "keys_shards": len({str(s.index) for s in s_keys.addressable_shards}),
          "bitwise": all(eq(getattr(got, f), getattr(same_bank, f)) for f in got._fields),
          "lean_equal": eq(lean.indices, got.indices) and eq(lean.scores, got.scores)
                        and lean.doc_scores is None,
          "indices_equal_flat": eq(got.indices, flat.indices),
          "selected_equal_flat": eq(got.selected, flat.selected),
          "max_diff_flat": max_finite_diff(got.doc_scores, flat.doc_scores),
          "tie_adjacent": all(list(r).index(2) + 1 == list(r).index(8)
                              for r in np.asarray(got.indices)[:3] if 2 in r and 8 in r),
      }
    doc_mask = np.random.default_rng(3).random((4, num_docs)) < 0.5  # per question
    kw = dict(top_k=4, scale=0.5, chunk_reduce="mean", tile_chunks=2)
    got = route_sharded(mesh, rq, mask, *shard_bank(mesh, keys, chunk_doc, tile_chunks=2),
                        num_docs, doc_mask=doc_mask, **kw)
    same_bank = route(rq, mask, *layout_bank(keys, chunk_doc, shards, tile_chunks=2), num_docs,
                      doc_mask=doc_mask, **kw)
    result[f"{name}/doc_mask"] = {
        "bitwise": all(np.array_equal(np.asarray(getattr(got, f)), np.asarray(getattr(
            same_bank, f))) for f in got._fields),
        "masked_never_selected": all(
            doc_mask[q][np.asarray(got.indices)[q][np.asarray(got.selected)[q]]].all()
            for q in range(4))}
    k16, d16 = random_bank(7, SHARDED_DOCS, d=16, dup=(2, 8))
    q16 = random_questions(7, b=4, d=16)
    kw = dict(top_k=4, scale=0.5, chunk_reduce="mean", tile_chunks=2)
    got = route_sharded(mesh, *q16, *shard_bank(mesh, k16, d16, tile_chunks=2), num_docs,
                        kernel_impl="pallas", **kw)
    flat = route(*q16, k16, d16, num_docs, **kw)
    result[f"{name}/pallas"] = {
        "indices_equal_flat": bool(np.array_equal(np.asarray(got.indices), flat.indices)),
        "max_diff_flat": max_finite_diff(got.doc_scores, flat.doc_scores)}
    k_bf16, q_bf16 = k16.astype(jnp.bfloat16), jnp.asarray(q16[0], jnp.bfloat16)
    floats = route_sharded(mesh, q_bf16, q16[1], *shard_bank(mesh, k_bf16, d16, tile_chunks=2),
                           num_docs, **kw)
    bits = route_sharded(mesh, q_bf16, q16[1],
                         *shard_bank(mesh, host_keys(k_bf16), d16, tile_chunks=2), num_docs,
                         **kw)
    result[f"{name}/bits_equal_floats"] = all(
        np.array_equal(np.asarray(getattr(bits, f)), np.asarray(getattr(floats, f)))
        for f in bits._fields)
    bad_doc = np.r_[chunk_doc, [-1] * (-len(chunk_doc) % shards)]
    bad_keys = np.zeros((len(bad_doc),) + keys.shape[1:], np.float32)
    try:
      route_sharded(mesh, rq, mask, bad_keys, bad_doc, num_docs, top_k=2, scale=1.0)
      result[f"{name}/straddle_error"] = ""
    except ValueError as e:
      result[f"{name}/straddle_error"] = str(e)
    try:
      route_sharded(mesh, rq, mask, *shard_bank(mesh, keys, chunk_doc, tile_chunks=2), num_docs,
                    top_k=2, scale=1.0, tile_chunks=None)
      result[f"{name}/no_tile_error"] = ""
    except ValueError as e:
      result[f"{name}/no_tile_error"] = str(e)
  print(json.dumps(result))


@pytest.fixture(scope="module")
def worker_result():
  return run_on_fake_devices(__file__)


@pytest.mark.slow
def test_worker_sees_eight_devices(worker_result):
  assert worker_result["devices"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("mesh", sorted(MESHES))
@pytest.mark.parametrize("case", SHARDED_CASES, ids=lambda c: str(c))
def test_route_sharded_equals_route(worker_result, mesh, case):
  mode, top_k, tile = case
  r = worker_result[f"{mesh}/{'-'.join(mode)}/k{top_k}/t{tile}"]
  assert r["keys_shards"] == MESHES[mesh]["memory"]
  assert r["bitwise"], r  # same laid-out bank: identical doc scores, indices, scores, slots
  assert r["lean_equal"], r
  assert r["indices_equal_flat"] and r["selected_equal_flat"], r  # the unpadded bank
  assert r["max_diff_flat"] <= 1e-6, r
  assert r["tie_adjacent"], r


@pytest.mark.slow
@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_route_sharded_with_the_kernel(worker_result, mesh):
  """Each shard scores its chunks with the routing-score kernel: the XLA path's selection."""
  r = worker_result[f"{mesh}/pallas"]
  assert r["indices_equal_flat"] and r["max_diff_flat"] <= 1e-6, r


@pytest.mark.slow
@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_route_sharded_with_a_doc_mask(worker_result, mesh):
  """A per-question `doc_mask` over a sharded bank: bitwise `route` on the same laid-out bank."""
  r = worker_result[f"{mesh}/doc_mask"]
  assert r["bitwise"] and r["masked_never_selected"], r


@pytest.mark.slow
@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_route_sharded_a_bfloat16_bank_as_bits(worker_result, mesh):
  assert worker_result[f"{mesh}/bits_equal_floats"]


@pytest.mark.slow
@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_route_sharded_rejects_straddling_documents(worker_result, mesh):
  assert "straddles the boundary of memory shards" in worker_result[f"{mesh}/straddle_error"]


@pytest.mark.slow
@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_route_sharded_needs_the_layout_tile(worker_result, mesh):
  """No automatic tile across shards: the tiles must be the ones the bank was laid out with."""
  assert "tile_chunks=None: route_sharded needs the tile its bank was laid out with" in (
      worker_result[f"{mesh}/no_tile_error"])


if __name__ == "__main__":
  _worker()
