"""The inference path (bank -> routing -> prefill -> decode) against the training forward.

For the same documents and questions, encoding the documents into a `MemoryBank`, routing the
questions against it and prefilling must give the training forward's logits and selected
documents (the training forward sees all M documents in every sample). Greedy decoding must
pick, at every step, the training forward's argmax on the extended sequence.
"""

import jax
import numpy as np
import pytest

from msa_jax.inference import engine as engine_lib
from msa_jax.memory import encode as encode_lib
from msa_jax.memory.bank import BankError
from msa_jax.inference.sampling import SamplingConfig
from msa_jax.model import MSABatch, MSAConfig, MSATransformer, get_preset
from tests.model_params import eager_init

CFG = get_preset("tiny").replace(vocab_size=64, embed_dim=64, mlp_dim=128, num_layers=4,
                                 num_heads=4, num_kv_heads=2, head_dim=16)
HEAD = 1


def _docs(m=9, g=13, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, g + 1, size=m)
  lengths[0] = g
  return [rng.integers(1, CFG.vocab_size, size=int(n)).tolist() for n in lengths], g


def _prompts(msa, q=3, seed=1):
  rng = np.random.default_rng(seed)
  heads = [[1]] * q
  queries = [rng.integers(1, CFG.vocab_size, size=int(rng.integers(1, 4))).tolist()
             for _ in range(q)]
  tails = [rng.integers(1, CFG.vocab_size, size=int(rng.integers(1, 5))).tolist()
           for _ in range(q)]
  return engine_lib.PromptBatch.from_segments(heads, queries, tails, position_offset=msa.arch.top_k)


def _training_batch(docs, g, prompts):
  m = len(docs)
  q = prompts.tokens.shape[0]
  doc_tokens = np.zeros((q, m, g), np.int32)
  lengths = np.zeros((q, m), np.int32)
  for n, d in enumerate(docs):
    doc_tokens[:, n, :len(d)] = d
    lengths[:, n] = len(d)
  return MSABatch(doc_tokens=doc_tokens, doc_lengths=lengths, tokens=prompts.tokens,
                  token_mask=prompts.token_mask, positions=prompts.positions,
                  query_mask=prompts.query_mask, memory_index=prompts.memory_index)


def _training_forward(msa, params, batch):
  """The training model's forward, jitted (one compile instead of one per op: 3x less CPU)."""
  return jax.jit(MSATransformer(CFG, msa).apply)({"params": params}, batch)


def _setup(tmp_path, msa, seed=0, docs=None, bank_dtype="float32"):
  params = eager_init(MSATransformer(CFG, msa), jax.random.key(seed))
  if docs is None:
    docs, g = _docs()
  else:
    g = max(map(len, docs))
  bank = encode_lib.create_bank(tmp_path / "bank", CFG, msa, params, bank_dtype=bank_dtype)
  encode_lib.encode_corpus(bank, CFG, msa, params, [f"d{i}" for i in range(len(docs))], docs,
                           [f"text {i}" for i in range(len(docs))], max_tokens=g,
                           batch_size=4, commit_every=5, progress=None)
  return params, docs, g, bank


MSA_CASES = {
    "decoupled": MSAConfig(top_k=3, chunk_size=4),
    "coupled_mean": MSAConfig(top_k=2, chunk_size=3, decouple_router=False,
                              chunk_reduce="mean", head_reduce="max", query_reduce="mean"),
    "all_layers_last_query": MSAConfig(top_k=4, chunk_size=5, router_layers="all",
                                       query_reduce="last"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MSA_CASES))
def test_prefill_matches_training_forward(tmp_path, name):
  msa = MSA_CASES[name]
  params, docs, g, bank = _setup(tmp_path, msa)
  prompts = _prompts(msa)
  out = _training_forward(msa, params, _training_batch(docs, g, prompts))
  eng = engine_lib.MSAEngine(CFG, msa, params, bank, tile_chunks=4)
  pre = eng.prefill(prompts)
  mask = np.asarray(prompts.token_mask)
  err = np.abs(np.asarray(pre.logits) - np.asarray(out.logits))[mask].max()
  print(f"{name}: max |logits diff| = {err:.2e}")
  assert err < 2e-5
  assert sorted(pre.memory) == sorted(out.routes)
  for i, route in out.routes.items():
    np.testing.assert_array_equal(np.asarray(pre.memory[i].selected), np.asarray(route.selected))
    sel = np.asarray(route.selected)
    np.testing.assert_array_equal(np.asarray(pre.memory[i].doc_indices)[sel],
                                  np.asarray(route.indices)[sel])
    np.testing.assert_allclose(
        np.asarray(pre.memory[i].scores)[sel],
        np.take_along_axis(np.asarray(route.doc_scores), np.asarray(route.indices), 1)[sel],
        atol=1e-6)


@pytest.mark.slow
def test_greedy_decoding_matches_training_argmax(tmp_path, monkeypatch):
  """With the decode steps' layers scanned (`scan_decode=True`; the unrolled default decodes in
  the other engine tests, and test_scan_layers checks the two step for step)."""
  msa = MSA_CASES["decoupled"]
  params, docs, g, bank = _setup(tmp_path, msa)
  prompts = _prompts(msa, q=4, seed=3)
  eng = engine_lib.MSAEngine(CFG, msa, params, bank, scan_decode=True)
  decoders = []
  loop = engine_lib.decode.decode_loop
  monkeypatch.setattr(engine_lib.decode, "decode_loop",
                      lambda model, *a, **kw: decoders.append(model) or loop(model, *a, **kw))
  n = 6
  tokens, lengths, pre = eng.generate(prompts, SamplingConfig(temperature=0.0, max_new_tokens=n,
                                                              stop_tokens=(), pad_id=0))
  assert [m.scan_decode for m in decoders] == [True]
  assert tokens.shape == (4, n) and (lengths == n).all()
  # The training forward on prompt + generated tokens (the query tokens are unchanged).
  p_len = np.asarray(prompts.token_mask).sum(1)
  t = prompts.tokens.shape[1] + n
  ext = np.zeros((4, t), np.int32)
  qm = np.zeros((4, t), bool)
  for r in range(4):
    ext[r, :p_len[r]] = np.asarray(prompts.tokens)[r, :p_len[r]]
    ext[r, p_len[r]:p_len[r] + n] = tokens[r]
    qm[r, :prompts.tokens.shape[1]] = np.asarray(prompts.query_mask)[r]
  positions = np.where(np.arange(t) < HEAD, np.arange(t), np.arange(t) + msa.arch.top_k)
  prompts2 = engine_lib.PromptBatch(
      tokens=ext, token_mask=np.arange(t) < (p_len + n)[:, None],
      positions=np.broadcast_to(positions, (4, t)).astype(np.int32), query_mask=qm,
      memory_index=np.asarray(prompts.memory_index))
  out = _training_forward(msa, params, _training_batch(docs, g, prompts2))
  logits = np.asarray(out.logits)
  for r in range(4):
    want = logits[r, p_len[r] - 1:p_len[r] - 1 + n].argmax(-1)
    np.testing.assert_array_equal(tokens[r], want)


@pytest.mark.slow
def test_top_k_larger_than_bank_uses_every_document(tmp_path):
  msa = MSAConfig(top_k=8, chunk_size=4)
  docs, _ = _docs(m=3)
  params, docs, g, bank = _setup(tmp_path, msa, docs=docs)
  prompts = _prompts(msa)
  pre = engine_lib.MSAEngine(CFG, msa, params, bank).prefill(prompts)
  out = _training_forward(msa, params, _training_batch(docs, g, prompts))
  for mem in pre.memory.values():
    assert mem.doc_indices.shape == (3, 3) and bool(np.asarray(mem.selected).all())
  err = np.abs(np.asarray(pre.logits) - np.asarray(out.logits))[np.asarray(prompts.token_mask)]
  assert err.max() < 2e-5
  ids = engine_lib.routed_doc_ids(bank, next(iter(pre.memory.values())))
  assert all(sorted(row) == ["d0", "d1", "d2"] for row in ids)


@pytest.mark.slow
def test_bf16_bank_stays_close(tmp_path):
  msa = MSA_CASES["decoupled"]
  params, docs, g, bank = _setup(tmp_path, msa, bank_dtype="bfloat16")
  prompts = _prompts(msa)
  pre = engine_lib.MSAEngine(CFG, msa, params, bank).prefill(prompts)
  out = _training_forward(msa, params, _training_batch(docs, g, prompts))
  err = np.abs(np.asarray(pre.logits) - np.asarray(out.logits))[np.asarray(prompts.token_mask)]
  assert err.max() < 5e-2


@pytest.mark.slow
def test_bank_from_another_model_is_refused(tmp_path):
  msa = MSA_CASES["decoupled"]
  _, _, _, bank = _setup(tmp_path, msa, seed=0)
  other = eager_init(MSATransformer(CFG, msa), jax.random.key(1))
  with pytest.raises(BankError, match="another model"):
    engine_lib.MSAEngine(CFG, msa, other, bank)
  with pytest.raises(BankError, match="chunk_size"):
    engine_lib.MSAEngine(CFG, msa.replace(chunk_size=8), other, bank)


@pytest.mark.slow
def test_empty_bank_is_refused_at_routing(tmp_path):
  msa = MSA_CASES["decoupled"]
  params = eager_init(MSATransformer(CFG, msa), jax.random.key(0))
  bank = encode_lib.create_bank(tmp_path / "bank", CFG, msa, params)
  eng = engine_lib.MSAEngine(CFG, msa, params, bank)
  with pytest.raises(BankError, match="empty"):
    eng.prefill(_prompts(msa))


@pytest.mark.parametrize("bad", ["yes", 1, 0.0])  # 1 == True, 0.0 == False: still no flags
def test_engine_rejects_a_bad_scan_decode(bad):
  with pytest.raises(ValueError, match=f"scan_decode must be None, True or False, got {bad!r}"):
    engine_lib.MSAEngine(CFG, MSAConfig(), None, None, scan_decode=bad)


def test_encode_documents_rejects_bad_input():
  msa = MSA_CASES["decoupled"]
  params = eager_init(MSATransformer(CFG, msa), jax.random.key(0))
  with pytest.raises(ValueError, match="document 1 has no tokens"):
    encode_lib.encode_documents(CFG, msa, params, [[1, 2], []], max_tokens=4, progress=None)
  with pytest.raises(ValueError, match="max_tokens=0"):
    encode_lib.encode_documents(CFG, msa, params, [[1, 2]], max_tokens=0, progress=None)


@pytest.mark.slow
def test_kernels_forced_on_equal_kernels_off(tmp_path):
  """kernel_impl="pallas" (the block-sparse attention kernel in interpret mode on CPU, over
  the routed blocks and the decode cache in place) vs "xla": the same selections, prefill
  logits within float tolerance and the same greedy tokens."""
  msa = MSA_CASES["decoupled"].replace(kernel_impl="xla")
  params, docs, g, bank = _setup(tmp_path, msa)
  prompts = _prompts(msa, q=2, seed=5)
  sampling = SamplingConfig(temperature=0.0, max_new_tokens=3, stop_tokens=(), pad_id=0)
  out = {}
  for impl in ("xla", "pallas"):
    eng = engine_lib.MSAEngine(CFG, msa.replace(kernel_impl=impl), params, bank)
    out[impl] = eng.generate(prompts, sampling)
  (tok_x, len_x, pre_x), (tok_p, len_p, pre_p) = out["xla"], out["pallas"]
  mask = np.asarray(prompts.token_mask)
  err = np.abs(np.asarray(pre_p.logits) - np.asarray(pre_x.logits))[mask].max()
  print(f"kernel on vs off: max |logits diff| = {err:.2e}")
  assert err < 2e-5
  for i in pre_x.memory:
    np.testing.assert_array_equal(np.asarray(pre_p.memory[i].doc_indices),
                                  np.asarray(pre_x.memory[i].doc_indices))
    np.testing.assert_array_equal(np.asarray(pre_p.memory[i].selected),
                                  np.asarray(pre_x.memory[i].selected))
  np.testing.assert_array_equal(tok_p, tok_x)
  np.testing.assert_array_equal(len_p, len_x)


def test_engine_calls_do_not_retrace(tmp_path):
  """Every jitted stage is traced once per static configuration and shape: more prefills and
  generations of other questions of the same shape (also through a new engine on the same
  model) trace nothing."""
  msa = MSA_CASES["decoupled"]
  params, _, _, bank = _setup(tmp_path, msa)
  sampling = SamplingConfig(temperature=0.0, max_new_tokens=2, stop_tokens=(), pad_id=0)

  def prompts(seed):  # 3 questions of 7 tokens: head 1, query 2, tail 4
    ids = np.random.default_rng(seed).integers(1, CFG.vocab_size, size=(3, 6)).tolist()
    return engine_lib.PromptBatch.from_segments([[1]] * 3, [r[:2] for r in ids],
                                                [r[2:] for r in ids],
                                                position_offset=msa.arch.top_k)

  engine_lib.MSAEngine(CFG, msa, params, bank).generate(prompts(0), sampling)
  before = dict(engine_lib.TRACES)
  assert before["segment"] > 0 and before["decode"] > 0
  eng = engine_lib.MSAEngine(CFG, msa, params, bank)
  for seed in (1, 2):
    eng.generate(prompts(seed), sampling)
  engine_lib.MSAEngine(CFG, msa, params, bank).generate(prompts(3), sampling)
  assert dict(engine_lib.TRACES) == before
