"""MSA model properties: configs, pooling, padding invariance, jit once, bf16, remat."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msa_jax.model import ModelConfig
from msa_jax.model import attention
from msa_jax.model import msa as msa_lib
from msa_jax.model import routing
from msa_jax.model.batch import IGNORE, MSABatch, global_doc_positions, prompt_positions
from msa_jax.model.config import MSAConfig
from msa_jax.model.msa import MSADecoderLayer, MSATransformer, compute_losses
from tests.model_params import eager_init

CFG = ModelConfig(vocab_size=97, embed_dim=32, mlp_dim=64, num_layers=4, num_heads=4,
                  num_kv_heads=2, head_dim=8, tie_embeddings=False)
MSA = MSAConfig(top_k=2, chunk_size=3)


def make_batch(seed=0, b=2, n=3, g=7, t=6, lengths=((7, 5, 2), (4, 7, 0))):
  rng = np.random.default_rng(seed)
  labels = np.full((b, t), IGNORE, np.int32)
  labels[:, t - 2:] = rng.integers(0, CFG.vocab_size, (b, 2))
  return MSABatch(
      doc_tokens=jnp.asarray(rng.integers(0, CFG.vocab_size, (b, n, g)), jnp.int32),
      doc_lengths=jnp.asarray(lengths, jnp.int32)[:b, :n],
      tokens=jnp.asarray(rng.integers(0, CFG.vocab_size, (b, t)), jnp.int32),
      token_mask=jnp.ones((b, t), bool),
      positions=jnp.asarray(prompt_positions(t, np.ones(b, int), 2)),
      query_mask=jnp.asarray(np.arange(t) < t - 2).repeat(b).reshape(t, b).T,
      memory_index=jnp.ones((b,), jnp.int32),
      labels=jnp.asarray(labels),
      route_labels=jnp.asarray([[0, 1, 0], [1, 0, 0]], jnp.int32)[:b, :n])


def init(model, batch, seed=0):
  """The parameters `model.init` makes with `seed` (they depend on the model and the seed, not
  on the batch's values: `init_params` with the smallest inputs gives the same), made once per
  equal model and seed in a worker, op by op (`tests.model_params.eager_init`)."""
  del batch
  return jax.tree.map(lambda x: x, _init_once(model, seed))  # a tree of its own per caller


@functools.lru_cache(maxsize=None)
def _init_once(model, seed):
  return eager_init(model, jax.random.key(seed))


def forward(model, params, batch):
  return jax.jit(model.apply)({"params": params}, batch)


def outputs_loss_and_grads(model, msa, params, batch, cfg=CFG, **apply_kwargs):
  """(outputs, loss, gradients) of `model`: one compiled program, not a forward and a
  gradient program."""
  def loss(p):
    out = model.apply({"params": p}, batch, **apply_kwargs)
    return compute_losses(out, batch, cfg, msa.loss)[0], out
  (value, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return out, value, grads


def grad_fn(model, msa, params, batch, cfg=CFG):
  """(loss, gradients) of `model`."""
  return outputs_loss_and_grads(model, msa, params, batch, cfg)[1:]


def test_router_and_aux_layer_selection():
  assert MSAConfig().arch.router_layer_ids(4) == (2, 3)
  assert MSAConfig().arch.router_layer_ids(5) == (2, 3, 4)
  assert MSAConfig(router_layers="all").arch.router_layer_ids(3) == (0, 1, 2)
  assert MSAConfig(router_layers=[3, 1]).arch.router_layer_ids(4) == (1, 3)
  # The official aux rule: router layers at or above num_layers // 2 only.
  assert MSAConfig(router_layers="all").aux_layer_ids(4) == (2, 3)
  assert MSAConfig(router_layers="all", aux_layers="all").aux_layer_ids(4) == (0, 1, 2, 3)
  with pytest.raises(ValueError, match=r"indices must be in \[0, 4\); bad: \[4\]"):
    MSAConfig(router_layers=(1, 4)).arch.router_layer_ids(4)
  with pytest.raises(ValueError, match=r"aux_layers \[1\] are not router layers"):
    MSAConfig(router_layers=(2, 3), aux_layers=(1, 2)).aux_layer_ids(4)
  with pytest.raises(ValueError, match="head_reduce='sum'"):
    MSAConfig(head_reduce="sum")
  with pytest.raises(ValueError, match="aux_loss='nce'"):
    MSAConfig(aux_loss="nce")
  with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
    MSAConfig(chunk_size=0)


@pytest.mark.slow
def test_params_are_the_backbones_plus_router_projections():
  batch = make_batch()
  params = init(MSATransformer(CFG, MSA), batch)
  attn2 = params["layers_2"]["attn"]
  assert attn2["router_q_proj"]["kernel"].shape == (32, 4, 8)
  assert attn2["router_k_proj"]["kernel"].shape == (32, 2, 8)
  assert "router_q_proj" not in params["layers_1"]["attn"]
  no_router = jax.eval_shape(MSATransformer(CFG, MSA.replace(decouple_router=False)).init,
                             jax.random.key(0), batch)["params"]
  assert "router_q_proj" not in no_router["layers_2"]["attn"]
  boxed = jax.eval_shape(MSATransformer(CFG, MSA).init, jax.random.key(0), batch)["params"]
  axes = nn.get_partition_spec(boxed)
  assert tuple(axes["layers_2"]["attn"]["router_k_proj"]["kernel"]) == (
      "embed", "kv_heads", "head_dim")


def test_chunk_mean_handles_partial_chunks():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 7, 3)).astype(np.float32)
  lengths = np.array([7, 4])
  got = np.asarray(routing.chunk_mean(jnp.asarray(x), jnp.asarray(lengths), 3))
  assert got.shape == (2, 3, 3)
  np.testing.assert_allclose(got[0, 2], x[0, 6], rtol=1e-6)  # 1-token last chunk
  np.testing.assert_allclose(got[1, 0], x[1, :3].mean(0), rtol=1e-6)
  np.testing.assert_allclose(got[1, 1], x[1, 3], rtol=1e-6)  # padding never leaks in
  np.testing.assert_array_equal(got[1, 2], 0.0)
  np.testing.assert_array_equal(
      routing.chunk_mask(jnp.asarray(lengths), 7, 3), [[True] * 3, [True, True, False]])


@pytest.mark.slow
def test_padding_changes_nothing():
  """More padding (documents, document length, prompt length) gives identical results."""
  batch = make_batch()
  model = MSATransformer(CFG, MSA)
  params = init(model, batch)
  out = forward(model, params, batch)

  def pad(x, widths, value=0):
    return jnp.pad(x, widths, constant_values=value)

  big = batch.replace(
      doc_tokens=pad(batch.doc_tokens, ((0, 0), (0, 2), (0, 4)), 5),
      doc_lengths=pad(batch.doc_lengths, ((0, 0), (0, 2))),
      tokens=pad(batch.tokens, ((0, 0), (0, 3)), 7),
      token_mask=pad(batch.token_mask, ((0, 0), (0, 3))),
      positions=pad(batch.positions, ((0, 0), (0, 3))),
      query_mask=pad(batch.query_mask, ((0, 0), (0, 3)), True),  # masked by token_mask
      labels=pad(batch.labels, ((0, 0), (0, 3)), IGNORE),
      route_labels=pad(batch.route_labels, ((0, 0), (0, 2))))
  out_big = forward(model, params, big)
  np.testing.assert_allclose(out_big.logits[:, :6], out.logits, atol=1e-5)
  np.testing.assert_allclose(out_big.doc_hidden[:, :3, :7], out.doc_hidden, atol=1e-5)
  for layer in (2, 3):
    np.testing.assert_allclose(out_big.routes[layer].doc_scores[:, :3],
                               out.routes[layer].doc_scores, atol=1e-6)
    np.testing.assert_array_equal(out_big.routes[layer].indices, out.routes[layer].indices)
  np.testing.assert_allclose(compute_losses(out_big, big, CFG, MSA.loss)[0],
                             compute_losses(out, batch, CFG, MSA.loss)[0], rtol=1e-5)


@pytest.mark.slow
def test_memory_reaches_prompt_only_in_router_layers_and_after_memory_index():
  batch = make_batch()
  model = MSATransformer(CFG, MSA.replace(router_layers=(3,)))
  params = init(model, batch)
  out = forward(model, params, batch)
  other_docs = batch.replace(doc_tokens=(batch.doc_tokens + 1) % CFG.vocab_size)
  out2 = forward(model, params, other_docs)
  # Token 0 is before the memory (memory_index = 1): the documents cannot affect it.
  np.testing.assert_allclose(out2.logits[:, 0], out.logits[:, 0], atol=1e-6)
  assert np.abs(np.asarray(out2.logits[:, 1:] - out.logits[:, 1:])).max() > 1e-3
  # Below the router layer (3), no prompt token has read the documents.
  def layer2_prompt(b):
    _, state = jax.jit(functools.partial(
        model.apply, mutable=["intermediates"],
        capture_intermediates=lambda m, _: isinstance(m, MSADecoderLayer)))(
            {"params": params}, b)
    return state["intermediates"]["layers_2"]["__call__"][0][1]
  np.testing.assert_array_equal(layer2_prompt(other_docs), layer2_prompt(batch))


@pytest.mark.slow
def test_top_k_larger_than_documents_selects_them_all():
  batch = make_batch()
  model = MSATransformer(CFG, MSA.replace(top_k=10))
  out = forward(model, init(model, batch), batch)
  route = out.routes[3]
  assert route.indices.shape == (2, 3)  # K = min(top_k, N)
  np.testing.assert_array_equal(route.selected, [[True] * 3, [True, True, False]])
  assert sorted(np.asarray(route.indices[1, :2]).tolist()) == [0, 1]


@pytest.mark.slow
def test_document_positions_default_to_document_wise_rope():
  batch = make_batch()
  model = MSATransformer(CFG, MSA)
  params = init(model, batch)
  g = batch.doc_tokens.shape[2]
  explicit = batch.replace(doc_positions=jnp.broadcast_to(jnp.arange(g), (2, 3, g)))
  np.testing.assert_array_equal(forward(model, params, batch).logits,
                                forward(model, params, explicit).logits)
  shifted = batch.replace(doc_positions=global_doc_positions(batch.doc_lengths, g, 3))
  np.testing.assert_array_equal(shifted.doc_positions[0, :, 0], [3, 10, 15])
  assert np.abs(np.asarray(forward(model, params, shifted).logits
                           - forward(model, params, batch).logits)).max() > 1e-4
  np.testing.assert_array_equal(prompt_positions(6, 2, 16), [0, 1, 18, 19, 20, 21])


@pytest.mark.slow
def test_forward_and_grad_trace_once_per_shape():
  model = MSATransformer(CFG, MSA)
  batch = make_batch()
  params = init(model, batch)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, batch):
    def loss(p):
      return compute_losses(model.apply({"params": p}, batch), batch, CFG, MSA.loss)[0]
    return jax.value_and_grad(loss)(params)

  for seed in range(3):  # new values, same shapes: no retrace
    step(params, make_batch(seed))
  chex.clear_trace_counter()


@pytest.mark.slow
def test_bf16_compute_with_fp32_params():
  batch = make_batch()
  ref_model = MSATransformer(CFG, MSA)
  params = init(ref_model, batch)
  model = MSATransformer(CFG, MSA, dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.float32
             for x in jax.tree.leaves(jax.eval_shape(model.init, jax.random.key(0), batch)))
  out, _, grads = outputs_loss_and_grads(model, MSA, params, batch)
  ref = forward(ref_model, params, batch)
  assert out.logits.dtype == jnp.float32 and out.doc_hidden.dtype == jnp.bfloat16
  scale = float(np.abs(np.asarray(ref.logits)).max())
  assert float(np.abs(np.asarray(out.logits - ref.logits)).max()) < 0.05 * scale
  for layer in (2, 3):
    np.testing.assert_allclose(out.routes[layer].doc_scores, ref.routes[layer].doc_scores,
                               atol=0.03)
  assert all(g.dtype == jnp.float32 and np.isfinite(np.asarray(g)).all()
             for g in jax.tree.leaves(grads))


@pytest.mark.slow
def test_bce_bias_and_router_projections_train_through_the_aux_loss():
  """The BCE bias and the router projections get their gradients through the aux loss (remat
  against no remat: the remat case of tests/test_scan_layers.py)."""
  batch = make_batch()
  msa = MSA.replace(aux_loss="bce")
  params = init(MSATransformer(CFG, msa), batch)
  _, g0 = grad_fn(MSATransformer(CFG, msa), msa, params, batch)
  assert float(np.abs(g0["aux_bias"])) > 0  # the BCE bias trains through the aux loss
  # Router projections learn only through the aux loss.
  lm_only = msa.replace(aux_weight=0.0)
  _, g = grad_fn(MSATransformer(CFG, lm_only), lm_only, params, batch)
  assert float(np.abs(g["layers_3"]["attn"]["router_q_proj"]["kernel"]).max()) == 0.0
  assert float(np.abs(g0["layers_3"]["attn"]["router_q_proj"]["kernel"]).max()) > 0.0


@pytest.mark.slow
def test_abstract_init_of_msa_presets():
  """Qwen3-4B with MSA on its upper half: shapes only, no allocation."""
  from msa_jax.model import abstract_params, count_params, get_preset
  cfg = get_preset("qwen3_4b")
  model = MSATransformer(cfg, MSAConfig())
  params = abstract_params(model)  # boxed with their logical axes (`param_logical_axes`)
  backbone = 4_022_468_096
  routers = 18 * 2560 * (32 + 8) * 128  # layers 18..35: router_q [E, H*D] + router_k [E, J*D]
  assert count_params(params) == backbone + routers
  axes = nn.get_partition_spec(params)
  assert tuple(axes["layers_35"]["attn"]["router_q_proj"]["kernel"]) == (
      "embed", "q_heads", "head_dim")


@pytest.mark.slow
def test_pallas_kernel_switch_gives_the_same_model():
  """kernel_impl="pallas" (both kernels, interpret mode on CPU) vs "xla": same outputs,
  routing and gradients (the decoupled router; the coupled one hands the same kernels the
  attention's own projections, and the kernels' tests cover their inputs and gradients)."""
  batch = make_batch()
  cfg = CFG.replace(head_dim=16)  # the kernel's smallest head dim
  params = init(MSATransformer(cfg, MSA), batch)
  results = {}
  for impl in ("xla", "pallas"):
    msa = MSA.replace(kernel_impl=impl)
    model = MSATransformer(cfg, msa)
    results[impl] = outputs_loss_and_grads(model, msa, params, batch, cfg)
  (out_x, loss_x, grad_x), (out_p, loss_p, grad_p) = results["xla"], results["pallas"]
  np.testing.assert_allclose(out_p.logits, out_x.logits, atol=2e-5)
  np.testing.assert_allclose(loss_p, loss_x, rtol=1e-6)
  for layer in (2, 3):
    np.testing.assert_allclose(out_p.routes[layer].chunk_scores,
                               out_x.routes[layer].chunk_scores, atol=1e-6)
    np.testing.assert_array_equal(out_p.routes[layer].indices, out_x.routes[layer].indices)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), grad_p, grad_x)
  assert MSAConfig().runtime.kernel_impl == "auto"
  with pytest.raises(ValueError, match="kernel_impl='triton'"):
    MSAConfig(kernel_impl="triton")


@pytest.mark.slow
def test_batch_negatives_rank_each_positive_against_the_whole_batch():
  """Batch scores: diagonal blocks are the per-sample scores, off-diagonal blocks what the
  query scores against the other sample's documents (checked by swapping the samples'
  documents); the loss is InfoNCE over B * N documents
  with copies of a sample's positive left out."""
  msa = MSA.replace(batch_negatives=True, aux_weight=1.0, lm_weight=0.0)
  batch = make_batch(lengths=((7, 5, 2), (4, 7, 3)))
  # Sample 1's slot 2 holds a copy of sample 0's positive (slot 1): left out of sample 0's
  # ranking, an ordinary negative of sample 1.
  tokens = batch.doc_tokens.at[1, 2].set(batch.doc_tokens[0, 1])
  batch = batch.replace(doc_tokens=tokens, doc_lengths=batch.doc_lengths.at[1, 2].set(5))
  model = MSATransformer(CFG, msa)
  params = init(model, batch)
  out = forward(model, params, batch)
  swapped = batch.replace(doc_tokens=batch.doc_tokens[::-1], doc_lengths=batch.doc_lengths[::-1])
  out_swapped = forward(MSATransformer(CFG, MSA), params, swapped)
  temperature = msa.loss.temperature
  expected = []
  for layer in (2, 3):
    scores = np.asarray(out.routes[layer].batch_scores)
    assert scores.shape == (2, 6)
    np.testing.assert_allclose(scores[0, :3], out.routes[layer].doc_scores[0], atol=1e-6)
    np.testing.assert_allclose(scores[1, 3:], out.routes[layer].doc_scores[1], atol=1e-6)
    if layer == 2:  # the first router layer's queries do not depend on the memory read
      np.testing.assert_allclose(scores[0, 3:], out_swapped.routes[layer].doc_scores[0],
                                 atol=1e-5)
      np.testing.assert_allclose(scores[1, :3], out_swapped.routes[layer].doc_scores[1],
                                 atol=1e-5)
    for row, positive, keep in ((0, 1, [0, 1, 2, 3, 4]), (1, 3, [0, 1, 2, 3, 4, 5])):
      z = scores[row, keep] / temperature
      expected.append(np.log(np.exp(z - z.max()).sum()) + z.max() - scores[row, positive] /
                      temperature)
  _, metrics = compute_losses(out, batch, CFG, msa.loss)
  np.testing.assert_allclose(metrics["aux_loss"], np.mean(expected), rtol=1e-5)
  _, per_sample = compute_losses(out, batch, CFG,
                                 MSA.replace(aux_weight=1.0, lm_weight=0.0).loss)
  assert abs(float(per_sample["aux_loss"]) - float(metrics["aux_loss"])) > 1e-3
  assert metrics["recall@1"] == per_sample["recall@1"]


def test_answer_query_loss_ranks_each_answer_token_against_the_batch():
  """`answer_query_weight`: each token that predicts an answer token is its own routing query
  (its scores equal the batch scores of a query mask holding only it), ranked by InfoNCE
  against the whole batch like the routing loss; L_aux gains w times their mean."""
  w = 0.5
  msa = MSA.replace(batch_negatives=True, answer_query_weight=w, aux_weight=1.0, lm_weight=0.0)
  batch = make_batch(lengths=((7, 5, 2), (4, 7, 3)))
  model = MSATransformer(CFG, msa)
  params = init(model, batch)
  out = forward(model, params, batch)
  plain = forward(MSATransformer(CFG, MSA.replace(batch_negatives=True)), params, batch)
  assert plain.routes[2].token_scores is None
  t = batch.tokens.shape[1]
  for token in (0, t - 3, t - 1):  # layer 2: the first router layer, its queries read no memory
    one = batch.replace(query_mask=jnp.broadcast_to(jnp.arange(t) == token, (2, t)))
    np.testing.assert_allclose(out.routes[2].token_scores[:, token],
                               forward(model, params, one).routes[2].batch_scores, atol=1e-6)
  temperature = msa.loss.temperature
  expected = []
  for layer in (2, 3):
    scores = np.asarray(out.routes[layer].token_scores)
    assert scores.shape == (2, t, 6)
    per_token = []
    for row, positive in ((0, 1), (1, 3)):
      for token in (t - 3, t - 2):  # the labels are on the last two tokens
        z = scores[row, token] / temperature
        per_token.append(np.log(np.exp(z - z.max()).sum()) + z.max() - z[positive])
    expected.append(np.mean(per_token))
  _, metrics = compute_losses(out, batch, CFG, msa.loss)
  _, without = compute_losses(out, batch, CFG, msa.replace(answer_query_weight=0.0).loss)
  np.testing.assert_allclose(metrics["answer_query_loss"], np.mean(expected), rtol=1e-5)
  np.testing.assert_allclose(metrics["aux_loss"],
                             without["aux_loss"] + w * np.mean(expected), rtol=1e-5)
  with pytest.raises(ValueError, match="answer_query_weight=0.5 needs batch_negatives=True"):
    MSAConfig(answer_query_weight=0.5)
  with pytest.raises(ValueError, match="answer_query_weight must be >= 0, got -1"):
    MSAConfig(answer_query_weight=-1, batch_negatives=True)


def test_answer_attention_loss_reads_the_positive_among_the_samples_chunks():
  """`answer_attention_weight`: the memory logits are the attention's own q.k/sqrt(D) over the
  chunks of all the sample's documents (an oracle from the staged methods: the prompt states
  entering the first router layer, its q projection, the documents' pooled k); the loss is,
  per head, -log of the softmax mass on the positive's chunks, over the tokens that predict
  an answer of the samples with a positive; L_aux gains w times it."""
  w = 0.5
  msa = MSA.replace(answer_attention_weight=w, aux_weight=1.0, lm_weight=0.0)
  batch = make_batch()
  model = MSATransformer(CFG, msa)
  params = init(model, batch)
  out = forward(model, params, batch)
  assert forward(MSATransformer(CFG, MSA), params, batch).routes[2].memory_logits is None
  b, n, g, t = batch.shape
  c = -(-g // MSA.arch.chunk_size)
  h, d, r = CFG.num_heads, CFG.head_dim, CFG.num_heads // CFG.num_kv_heads
  apply = functools.partial(model.apply, {"params": params})
  x = apply(batch.tokens, batch.positions, batch.token_mask[:, None, :] & np.tri(t, dtype=bool),
            (2,), method=MSATransformer.prompt_states)[2]
  project = lambda m, x, p: m.layers[2].attn.project(x, p)
  q = np.asarray(apply(x, batch.positions, method=project)[0])
  logits = np.asarray(out.routes[2].memory_logits)
  assert logits.shape == (b, t, h, n * c)
  for s in range(b):
    mem = apply(batch.doc_tokens[s], batch.doc_lengths[s], jnp.broadcast_to(jnp.arange(g), (n, g)),
                method=MSATransformer.document_memory)[2]
    for doc in range(n):
      for chunk in range(c):
        got = logits[s, :, :, doc * c + chunk]
        if not mem.chunks[doc, chunk]:
          assert (got == np.finfo(np.float32).min).all()
          continue
        k = np.asarray(mem.k[doc, chunk])  # [J, D]
        want = np.einsum("thd,hd->th", q[s], np.repeat(k, r, axis=0)) / np.sqrt(d)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

  def lse(a, keep):
    top = np.where(keep, a, -np.inf).max(-1, keepdims=True)
    return np.log(np.where(keep, np.exp(a - top), 0).sum(-1)) + top[..., 0]

  # Sample 0's positive is its document 1; sample 1 has none (it adds no term).
  batch = batch.replace(route_labels=jnp.asarray([[0, 1, 0], [0, 0, 0]], jnp.int32))
  positive = np.repeat([False, True, False], c)
  expected = []
  for layer in (2, 3):
    z = np.asarray(out.routes[layer].memory_logits[0], np.float64)  # [T, H, N*C]
    valid = z > np.finfo(np.float32).min
    per_head = lse(z, valid) - lse(z, positive & valid)
    expected.append(per_head[t - 3:t - 1].mean())  # the labels are on the last two tokens
  assert min(expected) > 0.1
  _, metrics = compute_losses(out, batch, CFG, msa.loss)
  _, without = compute_losses(out, batch, CFG, msa.replace(answer_attention_weight=0.0).loss)
  np.testing.assert_allclose(metrics["answer_attention_loss"], np.mean(expected), rtol=1e-5)
  np.testing.assert_allclose(metrics["aux_loss"], without["aux_loss"] + w * np.mean(expected),
                             rtol=1e-5)
  # Without the LM loss, only it reaches the attention's q and k projections (the decoupled
  # router has its own): finite gradients past the masked chunks.
  grads = grad_fn(model, msa, params, batch)[1]
  for name in ("q_proj", "k_proj"):
    g = np.asarray(grads["layers_2"]["attn"][name]["kernel"])
    assert np.isfinite(g).all() and np.abs(g).max() > 1e-6
  with pytest.raises(ValueError, match="answer_attention_weight must be >= 0, got -1"):
    MSAConfig(answer_attention_weight=-1)


def test_routed_attention_takes_a_dense_mask_but_not_into_the_kernel():
  """A dense own mask (the packed prefill's) gives what the equal `OwnSlots` give; the Pallas
  kernel path refuses it with one line."""
  rng = np.random.default_rng(0)
  b, t, h, j, d = 2, 5, 4, 2, 8
  q = jnp.asarray(rng.normal(size=(b, t, h, d)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(b, t, j, d)), jnp.float32) for _ in range(2))
  own = attention.OwnSlots.prefill(jnp.array([5, 3]))
  memory = msa_lib.RoutedBlocks(k=jnp.asarray(rng.normal(size=(b, 6, j, d)), jnp.float32),
                                v=jnp.asarray(rng.normal(size=(b, 6, j, d)), jnp.float32),
                                num_chunks=jnp.array([[3, 1], [0, 2]], jnp.int32))
  visible = jnp.ones((b, t), bool)
  want, got = (msa_lib.routed_attention(q, k, v, o, memory, visible, heads_first=False,
                                        use_pallas=False) for o in (own, own.mask(t, t)))
  np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match="takes OwnSlots, not a dense mask"):
    msa_lib.routed_attention(q, k, v, own.mask(t, t), memory, visible, heads_first=False,
                             use_pallas=True)
