"""Router adaptation (`msa_jax.train.router_adapt`, configs/router_adapt.py): the cached states,
the scores trained on, the bank built afterwards and the full model agree; the cache is reused
and invalidated by its fingerprint; BM25 hard negatives; the router bias in checkpoints."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import router_adapt as router_config
from msa_jax.checkpoint import msa as msa_ckpt
from msa_jax.data import hard_negatives
from msa_jax.data.retrieval import RetrievalData
from msa_jax.inference import engine as engine_lib
from msa_jax.memory import encode as encode_lib
from msa_jax.model import MSAConfig, MSATransformer, get_preset
from msa_jax.model.batch import MSABatch
from msa_jax.train import router_adapt
from msa_jax.train import state_cache

CFG = get_preset("tiny").replace(num_layers=3)
MSA = MSAConfig(router_layers=(1, 2), top_k=2, chunk_size=4, router_bias=True,
                query_reduce="mean", kernel_impl="xla")
G, N = 10, 5  # document slot length, documents


def _params(seed=0):
  """A tiny MSA model's parameters with non-zero router biases (as after training)."""
  model = MSATransformer(CFG, MSA)
  params = nn.unbox(model.init(jax.random.key(seed), *model.example_inputs())["params"])
  params = jax.tree.map(jnp.asarray, params)
  key = jax.random.key(seed + 1)
  for i in MSA.arch.router_layer_ids(CFG.num_layers):
    for name in ("router_q_proj", "router_k_proj"):
      key, sub = jax.random.split(key)
      bias = params[f"layers_{i}"]["attn"][name]["bias"]
      params[f"layers_{i}"]["attn"][name]["bias"] = jax.random.normal(sub, bias.shape)
  return params


def _docs(seed=0):
  rng = np.random.default_rng(seed)
  lengths = [10, 3, 7, 4, 9]  # partial last chunks included
  return [list(rng.integers(1, CFG.vocab_size, n)) for n in lengths]


def _prompts():
  heads = [[1, 2], [1, 2], [1, 2]]
  queries = [[5, 9, 11, 40], [77, 3], [8, 8, 100, 31, 2]]
  tails = [[6, 7], [6, 7], [6, 7]]
  return engine_lib.PromptBatch.from_segments(heads, queries, tails, position_offset=MSA.arch.top_k,
                                              length=12)


@pytest.mark.slow
def test_cached_states_bank_and_full_model_agree(tmp_path):
  params = _params()
  docs, prompts = _docs(), _prompts()
  layers = MSA.arch.router_layer_ids(CFG.num_layers)
  states = state_cache.doc_states(tmp_path, CFG, params, layers, MSA.arch.chunk_size, docs,
                                  max_tokens=G, batch_size=2, progress=None)
  qstates = state_cache.query_states(tmp_path, CFG, params, layers, prompts.tokens,
                                     prompts.token_mask, prompts.positions, prompts.query_mask,
                                     batch_size=2, progress=None)
  routers = router_adapt.router_params(params, layers)

  # The bank that stage-1 encoding builds holds the routing keys computed from the cache.
  lengths, num_chunks, arrays = encode_lib.encode_documents(CFG, MSA, params, docs,
                                                            max_tokens=G, batch_size=2,
                                                            progress=None)
  np.testing.assert_array_equal(num_chunks, states.num_chunks)
  for i in layers:
    keys = router_adapt.routing_keys(routers[i], jnp.asarray(states.chunks[i]), MSA.arch)
    np.testing.assert_allclose(arrays[i]["keys"], keys, atol=2e-5)

  # Scores trained on == the full model's routing of the same documents (first router layer:
  # its queries have seen no memory in either) == the engine's routing over the bank.
  batcher = router_adapt.StateBatcher(states, qstates, layers)
  q_states, q_mask = batcher.queries(np.arange(3))
  first = layers[0]
  ours = router_adapt.doc_scores(routers[first], q_states[first], q_mask,
                                 batcher.doc_chunks[first], batcher.chunk_mask, MSA.arch,
                                 CFG.head_dim)
  doc_tokens = np.zeros((3, N, G), np.int32)
  for n, d in enumerate(docs):
    doc_tokens[:, n, :len(d)] = d
  batch = MSABatch(doc_tokens=doc_tokens, doc_lengths=np.tile(lengths, (3, 1)),
                   tokens=prompts.tokens, token_mask=prompts.token_mask,
                   positions=prompts.positions, query_mask=prompts.query_mask,
                   memory_index=prompts.memory_index)
  full = jax.jit(MSATransformer(CFG, MSA).apply)({"params": params}, batch)  # 1 compile
  np.testing.assert_allclose(ours, full.routes[first].doc_scores, atol=2e-5)
  bank = encode_lib.create_bank(tmp_path / "bank", CFG, MSA, params)
  encode_lib.encode_corpus(bank, CFG, MSA, params, [f"d{n}" for n in range(N)], docs,
                           max_tokens=G, batch_size=2, progress=None)
  engine = engine_lib.MSAEngine(CFG, MSA, params, bank)
  routed = engine.prefill(prompts, keep_scores=True).memory
  np.testing.assert_allclose(ours, routed[first].doc_scores, atol=2e-5)


@pytest.mark.slow
def test_general_score_path_matches_the_full_model(tmp_path):
  """Per-token scores (any head / query reduce, as the bank routing computes them)."""
  params, docs, prompts = _params(), _docs(), _prompts()
  msa = MSA.replace(head_reduce="max", query_reduce="max")
  states = state_cache.doc_states(tmp_path, CFG, params, (1,), msa.arch.chunk_size, docs,
                                  max_tokens=G, batch_size=2, progress=None)
  qstates = state_cache.query_states(tmp_path, CFG, params, (1,), prompts.tokens,
                                     prompts.token_mask, prompts.positions, prompts.query_mask,
                                     batch_size=2, progress=None)
  batcher = router_adapt.StateBatcher(states, qstates, (1,))
  q_states, q_mask = batcher.queries(np.arange(3))
  ours = router_adapt.doc_scores(router_adapt.router_params(params, (1,))[1], q_states[1], q_mask,
                                 batcher.doc_chunks[1], batcher.chunk_mask, msa.arch, CFG.head_dim)
  doc_tokens = np.zeros((3, N, G), np.int32)
  for n, d in enumerate(docs):
    doc_tokens[:, n, :len(d)] = d
  batch = MSABatch(doc_tokens=doc_tokens, doc_lengths=np.tile([len(d) for d in docs], (3, 1)),
                   tokens=prompts.tokens, token_mask=prompts.token_mask,
                   positions=prompts.positions, query_mask=prompts.query_mask,
                   memory_index=prompts.memory_index)
  full = jax.jit(MSATransformer(CFG, msa).apply)({"params": params}, batch)
  np.testing.assert_allclose(ours, full.routes[1].doc_scores, atol=2e-5)


@pytest.mark.slow
def test_state_cache_reuse_and_fingerprint(tmp_path):
  params, docs = _params(), _docs()
  kw = dict(max_tokens=G, batch_size=2, progress=None)
  first = state_cache.doc_states(tmp_path, CFG, params, (1, 2), MSA.arch.chunk_size, docs, **kw)
  assert not first.reused and state_cache.size_bytes(first) > 0
  again = state_cache.doc_states(tmp_path, CFG, params, (2,), MSA.arch.chunk_size, docs, **kw)
  assert again.reused
  np.testing.assert_array_equal(again.chunks[2], first.chunks[2])
  # Router parameters are not part of the fingerprint (the states do not depend on them) ...
  other_router = jax.tree.map(lambda x: x, params)
  other_router["layers_1"]["attn"]["router_k_proj"]["kernel"] *= 2
  assert state_cache.doc_states(tmp_path, CFG, other_router, (1, 2), MSA.arch.chunk_size, docs,
                                **kw).reused
  # ... but the backbone below the layer, the documents and P are.
  changed = jax.tree.map(lambda x: x, params)
  changed["layers_0"]["mlp"]["up_proj"]["kernel"] *= 1.5
  redo = state_cache.doc_states(tmp_path, CFG, changed, (1, 2), MSA.arch.chunk_size, docs, **kw)
  assert not redo.reused
  assert not np.allclose(redo.chunks[2], first.chunks[2])
  assert not state_cache.doc_states(tmp_path, CFG, params, (1,), MSA.arch.chunk_size,
                                    docs[:4] + [[3, 4]], **kw).reused
  assert not state_cache.doc_states(tmp_path, CFG, params, (1,), 2, docs, **kw).reused


def test_centre_init_centres_the_projected_states(tmp_path):
  params = _params()
  layers = (1, 2)
  docs = state_cache.doc_states(tmp_path, CFG, params, layers, MSA.arch.chunk_size, _docs(),
                                max_tokens=G, batch_size=2, progress=None)
  p = _prompts()
  queries = state_cache.query_states(tmp_path, CFG, params, layers, p.tokens, p.token_mask,
                                     p.positions, p.query_mask, progress=None)
  centred = router_adapt._centre(router_adapt.router_params(params, layers), docs, queries)
  for i in layers:
    k = router_adapt._project(centred[i]["router_k_proj"], jnp.asarray(docs.chunks[i]),
                              "...E,EJD->...JD")
    q = router_adapt._project(centred[i]["router_q_proj"], jnp.asarray(queries.tokens[i]),
                              "...E,EHD->...HD")
    np.testing.assert_allclose(k.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(q.mean(0), 0, atol=1e-5)


def test_infonce_masks_other_positives():
  scores = jnp.asarray([[1.0, 0.5, 0.9], [0.1, 0.2, 0.3]])
  target = jnp.asarray([0, 2])
  exclude = jnp.asarray([[False, False, True], [False, False, False]])
  got = router_adapt.infonce(scores, target, exclude, 0.5)
  row0 = -jax.nn.log_softmax(jnp.asarray([1.0, 0.5]) / 0.5)[0]
  row1 = -jax.nn.log_softmax(scores[1] / 0.5)[2]
  np.testing.assert_allclose(got, (row0 + row1) / 2, rtol=1e-6)


def _toy_data():
  return RetrievalData(
      doc_ids=("a", "b", "c", "d"), titles=("", "", "", ""),
      texts=("apples grow on trees", "bananas are yellow fruit", "apple pie recipe with apples",
             "cars drive on roads"),
      queries={"q1": "apple trees", "q2": "yellow bananas"},
      qrels={"train": {"q1": {"a": 1}, "q2": {"b": 1, "d": 0}}})


def test_bm25_negatives_drop_judged_documents():
  negatives = hard_negatives.bm25_negatives(_toy_data(), "train", depth=4, stemmer=None)
  assert list(negatives["q1"]) == [2]  # "apple pie ..." is the near miss; "a" is judged
  assert 1 not in negatives["q2"] and 3 not in negatives["q2"]  # judged (grade 0 too)
  with pytest.raises(ValueError, match="depth=0"):
    hard_negatives.bm25_negatives(_toy_data(), "train", depth=0)
  rng = np.random.default_rng(0)
  drawn = hard_negatives.sample_negatives(rng, [np.array([2]), np.array([], np.int64)], 3, 4,
                                          [{0}, {1, 3}])
  assert drawn.shape == (2, 3) and drawn[0, 0] == 2
  assert not set(drawn[0]) & {0} and not set(drawn[1]) & {1, 3}


def test_router_bias_official_names_roundtrip():
  params = _params()
  tensors = msa_ckpt.params_to_official(params, CFG, MSA)
  bias = tensors["model.layers.1.self_attn.router_q_proj.0.bias"]
  assert bias.shape == (CFG.num_heads * CFG.head_dim,)
  back = msa_ckpt.official_to_params(tensors, CFG, MSA)
  np.testing.assert_array_equal(back["layers_2"]["attn"]["router_k_proj"]["bias"],
                                params["layers_2"]["attn"]["router_k_proj"]["bias"])


def test_config_parses():
  c = router_config.get_config()
  assert c.mode == "router_adapt" and c.msa.router_bias and c.msa.query_reduce == "mean"
  assert router_config.get_config("smoke").data.kind == "nq320k"
  with pytest.raises(ValueError, match="unknown variant 'nope'"):
    router_config.get_config("nope")


@pytest.mark.slow
def test_smoke_trains_reuses_states_and_evaluates(tmp_path):
  """configs/router_adapt.py:smoke end to end: states cached then reused by a second run, a
  checkpoint that `msa_jax.evaluate` loads and ranks with beside BM25."""
  from configs import evaluate as evaluate_config  # pylint: disable=import-outside-toplevel
  from msa_jax.evaluation import run as run_lib  # pylint: disable=import-outside-toplevel
  from msa_jax.train.loop import train_and_evaluate  # pylint: disable=import-outside-toplevel
  c = router_config.get_config("smoke")
  c.adapt.cache_dir = str(tmp_path / "cache")
  first = train_and_evaluate(c, tmp_path / "run1")
  assert not first["states_reused"] and np.isfinite(first["aux_loss"])
  second = train_and_evaluate(c, tmp_path / "run2")
  assert second["states_reused"]
  assert second["eval_ndcg@10_sum"] == pytest.approx(first["eval_ndcg@10_sum"])
  e = evaluate_config.get_config("smoke")
  e.checkpoint_workdir = str(tmp_path / "run1")
  e.scaling.enabled = False
  e.generative = "no"
  results = run_lib.evaluate(e, tmp_path / "eval")
  methods = results["splits"]["dev"]["methods"]
  assert {"bm25", "msa_router_sum", "msa_router_layer2", "msa_router_layer3"} <= set(methods)
  assert json.loads((tmp_path / "eval" / "results.json").read_text())["router_layers"] == [2, 3]
