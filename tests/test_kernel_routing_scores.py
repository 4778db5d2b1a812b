"""Fused routing-score kernel vs its jnp reference (interpret mode on CPU; compiled on GPU).

The jnp reference is itself pinned to a naive float64 numpy loop. Printed errors show with -s.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import kernel_benchmarks
from pallas_kernels.routing_scores import (RoutingBlockSizes, benchmark, chunks_to_docs, kernel,
                                           routing_chunk_scores, routing_chunk_scores_reference,
                                           routing_doc_scores, routing_doc_scores_reference)

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


@dataclasses.dataclass(frozen=True)
class Case:
  b: int = 2
  t: int = 5
  h: int = 4
  j: int = 2
  d: int = 16
  docs: tuple[int, ...] = (1, 5, 17, 2, 1, 9)  # chunks per document, in bank order
  pad: int = 3  # trailing padding chunks (chunk_doc = -1)
  num_docs: int = 8  # > len(docs): the extra documents have no chunk
  dtype: type = jnp.float32
  head_reduce: str = "mean"
  query_reduce: str = "max"
  chunk_reduce: str = "max"
  block: RoutingBlockSizes = RoutingBlockSizes(block_c=16, block_rows=16)


def make_inputs(case: Case, seed: int = 0):
  """Unit-norm queries/keys, a ragged bank; question 1 (when B > 2) has no valid token."""
  rng = np.random.default_rng(seed)

  def unit(shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)

  chunk_doc = np.concatenate([np.repeat(np.arange(len(case.docs)), case.docs),
                              -np.ones(case.pad, np.int64)]).astype(np.int32)
  mask = rng.random((case.b, case.t)) < 0.7
  mask[:, 0] = True
  if case.b > 2:
    mask[1] = False
  q = jnp.asarray(unit((case.b, case.t, case.h, case.d)), case.dtype)
  keys = jnp.asarray(unit((len(chunk_doc), case.j, case.d)), case.dtype)
  return q, jnp.asarray(mask), keys, jnp.asarray(chunk_doc)


def numpy_routing(q, mask, keys, chunk_doc, num_docs, scale, head_reduce, query_reduce,
                  chunk_reduce):
  """Naive float64 loops over questions and chunks: the definition, nothing clever."""
  q, keys = np.asarray(q, np.float64), np.asarray(keys, np.float64)
  mask, chunk_doc = np.asarray(mask), np.asarray(chunk_doc)
  b, _, h, _ = q.shape
  r = h // keys.shape[1]
  chunks = np.full((b, len(chunk_doc)), -np.inf)
  for bi in range(b):
    tokens = np.nonzero(mask[bi])[0]
    for c in range(len(chunk_doc)):
      if chunk_doc[c] < 0:
        continue
      s = np.array([[scale * q[bi, t, hh] @ keys[c, hh // r] for hh in range(h)]
                    for t in range(q.shape[1])])
      per_token = s.mean(axis=1) if head_reduce == "mean" else s.max(axis=1)
      if query_reduce == "mean":
        chunks[bi, c] = per_token[tokens].sum() / max(len(tokens), 1)
      elif len(tokens) == 0:
        chunks[bi, c] = -np.inf
      else:
        chunks[bi, c] = per_token[tokens].max() if query_reduce == "max" else per_token[tokens[-1]]
  docs = np.full((b, num_docs), -np.inf)
  for d in range(num_docs):
    members = np.nonzero(chunk_doc == d)[0]
    if len(members):
      docs[:, d] = (chunks[:, members].max(axis=1) if chunk_reduce == "max"
                    else chunks[:, members].mean(axis=1))
  return docs, chunks


def assert_scores_close(got, want, atol, what):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (what, got.shape, want.shape)
  np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=what)
  finite = np.isfinite(want)
  assert np.isfinite(got[finite]).all(), what
  err = np.abs(got[finite] - want[finite]).max(initial=0.0)
  print(f"{what}: max |diff| {err:.2e}")
  assert err <= atol, (what, err)


@pytest.mark.parametrize("head_reduce,query_reduce,chunk_reduce", [
    ("mean", "max", "max"), ("max", "mean", "mean"), ("mean", "last", "mean"),
    ("max", "last", "max")])  # every value of every reduce at least once
def test_reference_matches_numpy_float64(head_reduce, query_reduce, chunk_reduce):
  case = Case(b=3)
  q, mask, keys, chunk_doc = make_inputs(case)
  kw = dict(scale=0.7, head_reduce=head_reduce, query_reduce=query_reduce,
            chunk_reduce=chunk_reduce)
  docs, chunks = routing_doc_scores_reference(q, mask, keys, chunk_doc, case.num_docs,
                                              return_chunk_scores=True, **kw)
  want_docs, want_chunks = numpy_routing(q, mask, keys, chunk_doc, case.num_docs, **kw)
  assert_scores_close(chunks, want_chunks, 1e-5, "reference chunks")
  assert_scores_close(docs, want_docs, 1e-5, "reference docs")


CASES = {
    "f32-mean-max-max": Case(),
    "f32-max-mean-mean": Case(head_reduce="max", query_reduce="mean", chunk_reduce="mean",
                              block=RoutingBlockSizes(block_c=32, block_rows=16)),
    # 3 questions of T_pad=8 in 16-row blocks: two row blocks; question 1 has no valid token.
    "f32-row-blocks-last": Case(b=3, t=7, query_reduce="last"),
    "f32-row-blocks-mean": Case(b=3, t=7, query_reduce="mean", chunk_reduce="mean"),
    # T_pad = 32 > block_rows: two 16-token segments; J = 3 kv heads (not a power of two).
    "f32-long-question-j3": Case(b=1, t=20, h=6, j=3, head_reduce="max", query_reduce="last"),
    # 3 questions of T_pad = 64 in 16-row programs: 4 segments each, reduced by the wrapper.
    "f32-long-questions-max": Case(b=3, t=40, query_reduce="max"),
    "f32-long-questions-mean": Case(b=3, t=40, head_reduce="max", query_reduce="mean",
                                    chunk_reduce="mean"),
    # R = 1, one partial tile larger than the bank, padding chunks only at the end.
    "f32-r1-one-tile": Case(h=2, j=2, docs=(3, 1, 30), pad=1, num_docs=3,
                            block=RoutingBlockSizes(block_c=64, block_rows=32)),
    "bf16-mean-max-max": Case(h=8, d=32, dtype=jnp.bfloat16),
    "bf16-max-last-mean": Case(b=3, h=8, d=32, dtype=jnp.bfloat16, head_reduce="max",
                               query_reduce="last", chunk_reduce="mean"),
}


def check_kernel(case: Case, interpret: bool):
  q, mask, keys, chunk_doc = make_inputs(case)
  kw = dict(scale=0.7, head_reduce=case.head_reduce, query_reduce=case.query_reduce,
            chunk_reduce=case.chunk_reduce, return_chunk_scores=True)
  docs, chunks = routing_doc_scores(q, mask, keys, chunk_doc, case.num_docs, block=case.block,
                                    interpret=interpret, **kw)
  want_docs, want_chunks = routing_doc_scores_reference(q, mask, keys, chunk_doc, case.num_docs,
                                                        **kw)
  assert docs.dtype == jnp.float32 and chunks.dtype == jnp.float32
  assert_scores_close(chunks, want_chunks, TOL[case.dtype], "kernel chunks")
  assert_scores_close(docs, want_docs, TOL[case.dtype], "kernel docs")


@pytest.mark.parametrize("name", CASES)
def test_kernel_matches_reference(name):
  check_kernel(CASES[name], interpret=True)


def test_padding_chunks_anywhere_are_ignored():
  case = Case()  # the static arguments of CASES["f32-mean-max-max"]: one compile for both
  q, mask, keys, chunk_doc = make_inputs(case)
  holes = chunk_doc.at[jnp.array([0, 7, 20])].set(-1)  # inside documents, and a 1-chunk doc
  kw = dict(scale=0.7, return_chunk_scores=True)
  got, chunks = routing_doc_scores(q, mask, keys, holes, case.num_docs, block=case.block,
                                   interpret=True, **kw)
  want, _ = routing_doc_scores_reference(q, mask, keys, holes, case.num_docs, **kw)
  assert_scores_close(got, want, 1e-5, "holes")
  assert np.isneginf(np.asarray(chunks)[:, [0, 7, 20]]).all()
  assert np.isneginf(np.asarray(got)[:, 0]).all()  # document 0's only chunk is padding


BAD = [
    (dict(q=np.zeros((2, 5, 4))), r"q\.shape=\(2, 5, 4\)"),
    (dict(keys=np.zeros((38, 2, 8))), r"keys\.shape=\(38, 2, 8\)"),
    (dict(keys=np.zeros((38, 3, 16))), r"H=4 .* J=3"),
    (dict(q_mask=np.ones((2, 4), bool)), r"q_mask\.shape=\(2, 4\)"),
    (dict(q_mask=np.ones((2, 5), np.int32)), r"q_mask\.dtype=int32"),
    (dict(chunk_doc=np.zeros(37, np.int32)), r"chunk_doc\.shape=\(37,\)"),
    (dict(chunk_doc=np.zeros(38, np.float32)), r"chunk_doc\.dtype=float32"),
    (dict(keys=np.zeros((38, 2, 16), jnp.bfloat16)), r"q\.dtype=float32 and keys\.dtype=bfloat16"),
    (dict(num_docs=0), r"num_docs=0"),
    (dict(keys=np.zeros((0, 2, 16)), chunk_doc=np.zeros(0, np.int32)), r"empty input"),
    (dict(head_reduce="sum"), r"head_reduce='sum'"),
    (dict(query_reduce="first"), r"query_reduce='first'"),
    (dict(chunk_reduce="min"), r"chunk_reduce='min'"),
]


@pytest.mark.parametrize("fn", [routing_doc_scores, routing_doc_scores_reference])
@pytest.mark.parametrize("change,match", BAD)
def test_bad_inputs_name_the_value(fn, change, match):
  q, mask, keys, chunk_doc = make_inputs(Case())
  args = dict(q=q, q_mask=mask, keys=keys, chunk_doc=chunk_doc, num_docs=8, scale=1.0)
  args.update({k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in change.items()})
  with pytest.raises(ValueError, match=match):
    fn(**args, interpret=True)


@pytest.mark.parametrize("kw,match", [
    (dict(block_c=24), r"block_c=24 must be a power of two >= 16"),
    (dict(block_c=8), r"block_c=8"),
    (dict(block_rows=0), r"block_rows=0"),
    (dict(num_warps=3), r"num_warps=3"),
    (dict(num_stages=0), r"num_stages=0"),
])
def test_bad_block_sizes(kw, match):
  with pytest.raises(ValueError, match=match):
    RoutingBlockSizes(**kw)


def test_kernel_needs_power_of_two_head_dim():
  case = Case(d=24)
  q, mask, keys, chunk_doc = make_inputs(case)
  with pytest.raises(ValueError, match=r"head dim D=24"):
    routing_doc_scores(q, mask, keys, chunk_doc, 8, scale=1.0, interpret=True)


@pytest.mark.parametrize("head_reduce,query_reduce", [("mean", "max"), ("max", "mean"),
                                                      ("mean", "last")])
def test_gradients_are_the_references(head_reduce, query_reduce):
  """`routing_chunk_scores` has a custom VJP (XLA backward): its gradients w.r.t. q and keys,
  through a segment reduce to documents, are the reference's; padding chunks get none."""
  case = Case(b=3, head_reduce=head_reduce, query_reduce=query_reduce)
  q, mask, keys, chunk_doc = make_inputs(case)
  kw = dict(scale=0.7, head_reduce=head_reduce, query_reduce=query_reduce)
  w = jnp.asarray(np.random.default_rng(3).normal(size=(case.b, case.num_docs)), jnp.float32)

  def loss(fn):
    def f(q, keys):
      docs = chunks_to_docs(fn(q, mask, keys, chunk_doc, **kw), chunk_doc, case.num_docs, "max")
      return jnp.sum(jnp.where(jnp.isfinite(docs), docs * w, 0.0))
    return jax.grad(f, argnums=(0, 1))(q, keys)

  got = loss(functools.partial(routing_chunk_scores, block=case.block, interpret=True))
  want = loss(routing_chunk_scores_reference)
  for g, r in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(got[1])).sum() > 0
  assert (np.asarray(got[1])[np.asarray(chunk_doc) < 0] == 0).all()


def test_benchmark_small_mode_runs():
  results = benchmark.run(kernel_benchmarks.get_config("small"))
  assert len(results) == 1 and results[0]["max_abs_err"] < 1e-5 and results[0]["gbps"] > 0


def test_benchmark_config_defaults_are_the_kernels_and_bad_fields_are_named():
  config = kernel_benchmarks.get_config()
  blocks = {f: config.routing_scores[f] for f in ("block_c", "block_rows", "num_warps",
                                                  "num_stages")}
  assert RoutingBlockSizes(**blocks) == RoutingBlockSizes()
  config.routing_scores.head_reduce = "sum"
  with pytest.raises(ValueError, match=r"--config.routing_scores.head_reduce='sum' must be one "
                                       r"of \['mean', 'max'\]"):
    benchmark.run(config)
  config = kernel_benchmarks.get_config()
  config.routing_scores.chunks = "1e6"
  with pytest.raises(ValueError, match=r"--config.routing_scores.chunks='1e6'"):
    benchmark.run(config)
  config = kernel_benchmarks.get_config()
  config.routing_scores.heads = 6
  with pytest.raises(ValueError, match=r"heads=6 must be a multiple of "
                                       r"--config.routing_scores.kv_heads=8"):
    benchmark.run(config)


GPU_CASES = {
    "bf16-qwen3-4b-mean": Case(b=2, t=16, h=32, j=8, d=128, docs=(1, 3, 64, 7) * 300, pad=5,
                               num_docs=1300, dtype=jnp.bfloat16,
                               block=RoutingBlockSizes()),
    "f32-max-last-mean": Case(b=3, t=12, h=16, j=8, d=64, docs=(2, 9, 33) * 100, pad=17,
                              num_docs=301, head_reduce="max", query_reduce="last",
                              chunk_reduce="mean", block=RoutingBlockSizes(block_c=256)),
    # The engine's prefill at Qwen3-0.6B sizes: 8 whole 512-token prompts route (8 tokens of
    # each valid). As one 512-row program per question it asked for 320 KiB of shared memory.
    "bf16-prompts-512": Case(b=8, t=512, h=16, j=8, d=128, docs=(8,) * 500, pad=0,
                             num_docs=500, dtype=jnp.bfloat16, block=RoutingBlockSizes()),
    "bf16-rows-64-smollm": Case(b=5, t=20, h=9, j=3, d=64, docs=(4, 1, 16) * 200, pad=0,
                                num_docs=600, dtype=jnp.bfloat16, query_reduce="mean",
                                block=RoutingBlockSizes(block_rows=64, num_warps=8)),
}


# JAX 0.10 lowers Pallas to Triton IR without a GPU (compute capability 9.0 assumed); 0.11
# wants a real or abstract GPU device for that step.
needs_triton_lowering = pytest.mark.skipif(
    jax.__version_info__ >= (0, 11) and not any(d.platform == "gpu" for d in jax.devices()),
    reason="JAX >= 0.11 lowers Pallas Triton kernels only with a GPU device")


@pytest.mark.parametrize("b, t, block_rows, want", [
    (1, 5, 16, (8, 1, 16, 2)),      # short questions share a program
    (3, 7, 16, (8, 1, 16, 4)),
    (1, 20, 16, (16, 2, 16, 2)),    # a long one is cut into block_rows-token segments
    (8, 512, 64, (64, 8, 64, 64)),  # the engine's 512-token prompts: 64 rows per program
])
def test_layout_bounds_the_rows_of_a_program(b, t, block_rows, want):
  """(segment, splits, rows, padded segments): rows <= block_rows whatever T is (a program's
  query operand, hence its shared memory, is bounded); segments fill whole programs."""
  got = kernel._layout(b, t, RoutingBlockSizes(block_rows=block_rows))
  assert got == want
  segment, splits, rows, s_pad = got
  assert segment * splits >= t and rows <= max(block_rows, 16)
  assert s_pad % (rows // segment) == 0


@needs_triton_lowering
@pytest.mark.parametrize("name", ["f32-long-question-j3", "bf16-max-last-mean",
                                  "bf16-prompts-512", "bf16-qwen3-4b-mean",
                                  "bf16-rows-64-smollm"])
def test_kernel_lowers_to_triton_for_cuda(name):
  """The GPU path up to Triton IR (unsupported ops, dtypes, non-power-of-two tiles), on CPU."""
  case = {**CASES, **GPU_CASES}[name]
  c = sum(case.docs) + case.pad
  args = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in (
      ((case.b, case.t, case.h, case.d), case.dtype), ((case.b, case.t), jnp.bool_),
      ((c, case.j, case.d), case.dtype), ((c,), jnp.int32))]
  fn = jax.jit(lambda *a: routing_doc_scores(
      *a, case.num_docs, scale=0.7, head_reduce=case.head_reduce,
      query_reduce=case.query_reduce, chunk_reduce=case.chunk_reduce, block=case.block))
  assert "triton" in fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_CASES)
def test_kernel_matches_reference_compiled(name):
  check_kernel(GPU_CASES[name], interpret=False)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["f32-mean-max-max", "bf16-max-last-mean", "f32-long-question-j3"])
def test_small_cases_compiled(name):
  check_kernel(CASES[name], interpret=False)
