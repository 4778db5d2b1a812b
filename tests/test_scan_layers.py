"""Scanned layers (`scan_layers=True`, the default) against unrolled layers: the same logits,
routes and gradients, the same staged methods (inference), the official goldens, and a traced
program that does not grow with depth."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msa_jax.model import ModelConfig, Transformer, abstract_params
from msa_jax.model import attention
from msa_jax.model import msa as msa_lib
from msa_jax.model.msa import MSATransformer, RoutedBlocks, compute_losses
from tests import test_msa_goldens as goldens
from tests.model_params import eager_init
from tests.test_msa_model import CFG, MSA, init, make_batch, outputs_loss_and_grads

SIX = CFG.replace(num_layers=6)


def both(cls, *args, **kw):
  """(unrolled model, scanned model); the scanned one scans its decode steps too (on CPU they
  unroll by default, `LayerStack.decode_step`)."""
  return (cls(*args, scan_layers=False, **kw),
          cls(*args, scan_layers=True, scan_decode=True, **kw))


def assert_trees_close(a, b, atol=0.0):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol,
                                                       rtol=0), a, b)


def test_runs_split_at_every_change_of_kind():
  assert msa_lib._runs(range(2, 8), lambda i: i >= 5) == [[2, 3, 4], [5, 6, 7]]
  assert msa_lib._runs(range(4), lambda i: i % 2) == [[0], [1], [2], [3]]
  assert msa_lib._runs(range(0), lambda i: 0) == []
  tree = {"a": jnp.arange(3), "b": None}
  stacked = msa_lib.stack_layers([tree, {"a": jnp.arange(3) + 1, "b": None}])
  assert stacked["a"].shape == (2, 3) and stacked["b"] is None
  assert_trees_close(msa_lib.unstack_layers(stacked, 2)[0], tree)


@pytest.mark.parametrize("msa", [
    # runs: layers 0-2 plain, 3-5 routers
    pytest.param(MSA, id="upper_half", marks=pytest.mark.slow),
    # runs [0], [1, 2], [3], [4], [5], another loss; remat (checkpointing the scan body)
    # against the unrolled layers without it: two programs, float32 rounding (parallel test
    # runs' single-threaded dots: up to 3.3e-6 apart)
    pytest.param(MSA.replace(router_layers=(1, 2, 4), decouple_router=False,
                             batch_negatives=True, remat=True, aux_loss="bce",
                             cosine_routing=None), id="split_runs_remat_bce",
                 marks=pytest.mark.slow),
])
def test_scan_equals_unrolled_forward_routes_and_grads(msa):
  batch = make_batch()
  unrolled, scanned = both(MSATransformer, SIX, msa)
  unrolled = unrolled.clone(msa=msa.replace(remat=False))
  params = init(unrolled, batch)
  assert_trees_close(init(scanned, batch), params)  # creating parameters unrolls
  (want, l0, g0), (got, l1, g1) = (outputs_loss_and_grads(m, msa, params, batch, SIX,
                                                          doc_logits=True)
                                   for m in (unrolled, scanned))
  assert sorted(got.routes) == sorted(want.routes) == list(msa.arch.router_layer_ids(6))
  for i, route in want.routes.items():
    np.testing.assert_array_equal(got.routes[i].indices, route.indices)
    np.testing.assert_array_equal(got.routes[i].selected, route.selected)
    np.testing.assert_allclose(got.routes[i].doc_scores, route.doc_scores, atol=1e-6)
  for name in ("logits", "hidden", "doc_hidden", "doc_logits"):
    np.testing.assert_allclose(getattr(got, name), getattr(want, name), atol=1e-5, rtol=0)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  assert_trees_close(g1, g0, atol=1e-5)
  assert float(np.abs(g1["layers_4"]["attn"]["q_proj"]["kernel"]).max()) > 0


def routed_blocks(seed, b, k, c, cfg):
  rng = np.random.default_rng(seed)
  shape = (b, k * c, cfg.num_kv_heads, cfg.head_dim)
  return RoutedBlocks(k=jnp.asarray(rng.normal(size=shape), jnp.float32),
                      v=jnp.asarray(rng.normal(size=shape), jnp.float32),
                      num_chunks=jnp.asarray(rng.integers(0, c + 1, (b, k)), jnp.int32))


@pytest.mark.slow
def test_staged_methods_scan_equals_unrolled():
  batch = make_batch()
  unrolled, scanned = both(MSATransformer, SIX, MSA)
  params = init(unrolled, batch)

  def run(m, method, *args, static=()):  # static: argument numbers of the method's ints
    fn = jax.jit(functools.partial(m.apply, method=method),
                 static_argnums=tuple(i + 1 for i in static))
    return fn({"params": params}, *args)

  # Stage 1: documents -> the router layers' memory; states entering chosen layers.
  docs = batch.doc_tokens[0]
  doc_positions = jnp.broadcast_to(jnp.arange(docs.shape[1]), docs.shape)
  want, got = (run(m, "document_memory", docs, batch.doc_lengths[0], doc_positions)
               for m in (unrolled, scanned))
  assert sorted(got) == [3, 4, 5]
  assert_trees_close(got, want, atol=1e-5)
  ids = (1, 2, 5)
  want, got = (run(m, "document_states", docs, batch.doc_lengths[0], doc_positions, ids,
                   static=(3,))
               for m in (unrolled, scanned))
  assert sorted(got) == list(ids)
  assert_trees_close(got, want, atol=1e-5)
  mask = attention.causal_mask(batch.tokens.shape[1])
  want, got = (run(m, "prompt_states", batch.tokens, batch.positions, mask, ids, static=(3,))
               for m in (unrolled, scanned))
  assert_trees_close(got, want, atol=1e-5)

  # The prompt through a range of layers (routers 3 and 5 over memory, 4 without), no cache.
  b, t = batch.tokens.shape
  x = run(unrolled, "embed_tokens", batch.tokens)
  own = attention.OwnSlots.prefill(jnp.array([t, t - 2]))
  memory = {3: routed_blocks(1, b, 2, 3, SIX), 5: routed_blocks(2, b, 2, 3, SIX)}
  visible = jnp.arange(t)[None, :] >= 1
  for start, stop in ((0, 6), (1, 5), (3, 6)):
    want, got = (run(m, "prompt_layers", start, stop, x, batch.positions, own,
                     {i: v for i, v in memory.items() if start <= i < stop}, visible,
                     static=(0, 1)) for m in (unrolled, scanned))
    assert len(got[1]) == stop - start
    assert_trees_close(got, want, atol=1e-5)

  # Decode steps over a prefilled per-layer cache.
  _, kvs = run(unrolled, "prompt_layers", 0, 6, x, batch.positions, own, memory, visible,
               static=(0, 1))
  cache = msa_lib.prefill_cache(kvs, t + 2)
  tok = batch.tokens[:, :1]
  dec_own = attention.OwnSlots.decode(own.length, t, t)
  want, got = (run(m, "decode_step", tok, jnp.full((b, 1), t), dec_own, cache, t, memory,
                   jnp.ones((b, 1), bool)) for m in (unrolled, scanned))
  assert got[1].k.shape[0] == 6
  assert_trees_close(got, want, atol=1e-5)


@pytest.mark.slow
def test_backbone_scan_equals_unrolled_with_and_without_cache():
  cfg = ModelConfig(vocab_size=97, embed_dim=32, mlp_dim=64, num_layers=5, num_heads=4,
                    num_kv_heads=2, head_dim=8)
  unrolled, scanned = both(Transformer, cfg)
  params = eager_init(unrolled, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, cfg.vocab_size)
  segments = jnp.array([[1] * 9, [1] * 4 + [2] * 3 + [0] * 2])
  want, got = (jax.jit(m.apply)({"params": params}, tokens, segment_ids=segments)[0]
               for m in (unrolled, scanned))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  cache = unrolled.init_cache(2, 12)
  index = jnp.array([0, 3])
  want, got = (jax.jit(m.apply)({"params": params}, tokens, cache=cache, cache_index=index)
               for m in (unrolled, scanned))
  assert_trees_close(got, want, atol=1e-5)


@pytest.mark.parametrize("scan_layers, scan_decode, scans", [
    (True, None, False),  # the default on CPU: decode steps unrolled
    (True, True, True), (True, False, False), (False, True, False), (False, None, False)])
def test_decode_step_scans_as_scan_decode_says(scan_layers, scan_decode, scans):
  """`scan_decode` picks the decode step's layer loop (None: unrolled on a CPU backend, the
  tests' backend); the rest of the model keeps `scan_layers`."""
  assert jax.default_backend() == "cpu"
  cfg = ModelConfig(vocab_size=97, embed_dim=32, mlp_dim=64, num_layers=3, num_heads=4,
                    num_kv_heads=2, head_dim=8)
  model = Transformer(cfg, scan_layers=scan_layers, scan_decode=scan_decode)
  params = abstract_params(model)  # shapes (boxed: `apply` unboxes them)
  cache = msa_lib.prefill_cache([attention.KVCache(jnp.zeros((2, 4, 2, 8)),
                                                   jnp.zeros((2, 4, 2, 8)))] * 3, 6)
  own = attention.OwnSlots.decode(jnp.array([4, 2]), 4, 4)

  def primitives(method, *args):
    jaxpr = jax.make_jaxpr(functools.partial(model.apply, method=method))({"params": params},
                                                                         *args)
    return str(jaxpr)

  decode = primitives("decode_step", jnp.zeros((2, 1), jnp.int32), jnp.full((2, 1), 4), own,
                      cache, 4)
  assert (" scan[" in decode) == scans
  tokens = jnp.zeros((2, 4), jnp.int32)
  forward = primitives("__call__", tokens)
  assert (" scan[" in forward) == scan_layers


@pytest.mark.slow
def test_traced_program_does_not_grow_with_depth():
  """Scanned, a deeper model traces the same matmuls (one layer body per run); only the
  stacking of its parameters grows."""
  batch = make_batch()

  def equations(num_layers, scan):
    cfg = CFG.replace(num_layers=num_layers)
    model = MSATransformer(cfg, MSA, scan_layers=scan)
    params = jax.eval_shape(lambda: init(model, batch))
    jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, batch).logits)(params)
    return str(jaxpr).count("dot_general")

  assert equations(4, True) == equations(12, True)
  assert equations(12, False) > 2 * equations(4, False)


@pytest.mark.slow
@pytest.mark.skipif(not goldens.GOLDEN.is_dir(), reason=f"no goldens at {goldens.GOLDEN}")
@pytest.mark.parametrize("case", sorted(goldens.CASES))
def test_scanned_forward_matches_official(case):
  """The goldens' final states, logits, scores and selections with the layers scanned
  (test_msa_goldens captures per-layer outputs, which unrolls them)."""
  cfg, msa, params, g, batch, index = goldens.load_case(case)
  model = MSATransformer(cfg, msa)
  assert model.scan_layers
  out = jax.jit(functools.partial(model.apply, doc_logits=True))({"params": params}, batch)
  length = g["input_ids"].shape[1]
  valid = g["attention_mask"] == 1
  err = goldens.Errors(case)
  flat = lambda docs, x: index.scatter(np.asarray(docs), np.asarray(x), length)[valid]
  err.check("final hidden states", flat(out.doc_hidden, out.hidden), g["final_hidden"][valid])
  err.check("logits", flat(out.doc_logits, out.logits), g["logits"][valid])
  assert sorted(out.routes) == g["docs_score_layers"].tolist()
  for layer, route in out.routes.items():
    width = g[f"docs_score_L{layer}"].shape[1]
    err.check("document scores", goldens.doc_table(np.asarray(route.doc_scores), index, width),
              g[f"docs_score_L{layer}"])
    selected = np.where(route.selected, np.take_along_axis(index.doc_ids, route.indices, 1),
                        -1)
    np.testing.assert_array_equal(selected, g[f"L{layer}_selected_doc_ids"])
  _, metrics = compute_losses(out, batch, cfg, msa.loss)
  for name in ("loss", "lm_loss", "aux_loss", "answer_loss"):
    err.check("losses", metrics[name], g[name])
