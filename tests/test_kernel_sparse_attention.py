"""Top-k block-sparse attention kernel vs its jnp reference (interpret mode on CPU; compiled on
GPU), gradients through its custom VJP, and the per-sample memory -> bank mapping.

The jnp reference is itself pinned to a naive float64 numpy loop. Printed errors show with -s.
"""

import dataclasses
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from configs import kernel_benchmarks
from pallas_kernels.sparse_attention import (SparseAttentionBlockSizes, benchmark,
                                             per_sample_memory_to_bank, sparse_attention,
                                             sparse_attention_reference)
from tests.paths import REPO

TOL = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}


@dataclasses.dataclass(frozen=True)
class Case:
  """A batch of queries over own kv and a bank; tables are given per row b.

  Cases that differ only in data (offsets, lengths, tables, visibility) share shapes and
  static arguments, hence one compiled kernel: interpret-mode compiles dominate test time.
  """
  t: int = 8
  h: int = 4
  j: int = 2
  d: int = 16
  s: int = 16
  c: int = 48  # bank chunks
  max_doc_chunks: int = 6
  first: tuple = ((0, 10, 30), (5, 20, 0))  # [B, K]
  num: tuple = ((4, 1, 0), (9, 2, 3))  # 9 > max_doc_chunks: clipped to 6
  q_offset: tuple = (0, 0)
  kv_len: tuple = (8, 5)
  hidden: tuple = ((0, 2), (1, 1))  # (b, tokens before the memory): they see none of it
  gap: tuple = ()  # per row (hidden_start, hidden_stop): own slots in between are not seen
  heads_first: bool = False  # own k, v laid out [B, J, S, D] (a decode cache)
  dtype: type = jnp.float32
  block: SparseAttentionBlockSizes = SparseAttentionBlockSizes(16, 16, 16)


def make_inputs(case: Case, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  b = len(case.first)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), case.dtype)
  visible = np.ones((b, case.t), bool)
  for row, n in case.hidden:
    visible[row, :n] = False
  own = (b, case.j, case.s, case.d) if case.heads_first else (b, case.s, case.j, case.d)
  gap = {}
  if case.gap:
    gap = dict(hidden_start=jnp.asarray([g[0] for g in case.gap], jnp.int32),
               hidden_stop=jnp.asarray([g[1] for g in case.gap], jnp.int32))
  return dict(
      q=normal(b, case.t, case.h, case.d), k=normal(*own), v=normal(*own), **gap,
      bank_k=normal(case.c, case.j, case.d),
      bank_v=normal(case.c, case.j, case.d),
      doc_first_chunk=jnp.asarray(case.first, jnp.int32),
      doc_num_chunks=jnp.asarray(case.num, jnp.int32), memory_visible=jnp.asarray(visible),
      q_offset=jnp.asarray(case.q_offset, jnp.int32), kv_len=jnp.asarray(case.kv_len, jnp.int32))


def numpy_attention(x: dict, max_doc_chunks: int, heads_first: bool = False) -> np.ndarray:
  """Naive float64 loops: list every entry a query (b, t, h) sees, then a plain softmax."""
  f = {k: np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else np.asarray(v)
       for k, v in x.items()}
  if heads_first:
    f["k"], f["v"] = f["k"].transpose(0, 2, 1, 3), f["v"].transpose(0, 2, 1, 3)
  b = f["q"].shape[0]
  gap_lo = f.get("hidden_start", np.zeros(b, int))
  gap_hi = f.get("hidden_stop", np.zeros(b, int))
  b, t, h, d = f["q"].shape
  r = h // f["k"].shape[2]
  out = np.zeros((b, t, h, d))
  for bi in range(b):
    for ti in range(t):
      for hi in range(h):
        j = hi // r
        ks, vs = [], []
        if f["memory_visible"][bi, ti]:
          for first, n in zip(f["doc_first_chunk"][bi], f["doc_num_chunks"][bi]):
            for c in range(first, first + min(n, max_doc_chunks)):
              if not 0 <= c < len(f["bank_k"]):
                continue  # outside the bank: skipped
              ks.append(f["bank_k"][c, j])
              vs.append(f["bank_v"][c, j])
        for s in range(f["k"].shape[1]):
          if (s <= f["q_offset"][bi] + ti and s < f["kv_len"][bi]
              and not gap_lo[bi] <= s < gap_hi[bi]):
            ks.append(f["k"][bi, s, j])
            vs.append(f["v"][bi, s, j])
        if ks:
          logits = np.array(ks) @ f["q"][bi, ti, hi] / math.sqrt(d)
          p = np.exp(logits - logits.max())
          out[bi, ti, hi] = p @ np.array(vs) / p.sum()
  return out


def max_err(got, want) -> float:
  return float(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)).max())


CASES = {
    "prefill-f32": Case(),
    # A prompt chunk placed after earlier tokens of the cache (chunked prefill).
    # Also chunk ids outside the bank (45..50 of 48, and -2..3): those are skipped.
    "chunked-prefill-f32": Case(q_offset=(8, 3), kv_len=(16, 9), first=((0, 10, 45), (-2, 20, 0)),
                                num=((4, 1, 6), (9, 2, 3))),
    # Row 1 sees nothing at all (kv_len 0, memory hidden): it must output exactly 0.
    "nothing-visible": Case(kv_len=(16, 0), hidden=((0, 3), (1, 8))),
    # One new token at the end of a cache (q_offset = kv_len - 1); R = 4 heads per kv head.
    "decode-f32": Case(t=1, h=8, s=20, q_offset=(19, 6), kv_len=(20, 7), hidden=()),
    "decode-f32-splits": Case(t=1, h=8, s=20, q_offset=(19, 6), kv_len=(20, 7), hidden=(),
                              block=SparseAttentionBlockSizes(16, 16, 16, kv_splits=2)),
    # 12 tokens x R=2 = 24 rows: two row blocks; 40-chunk document over 3 block_c tiles; two
    # own tiles, the second partial; kv_splits=3 > K leaves a split with no document.
    "row-blocks-long-doc": Case(t=12, s=24, c=64, max_doc_chunks=40, first=((0, 45, 50),) * 2,
                                num=((40, 3, 14), (17, 0, 0)), q_offset=(12, 0),
                                kv_len=(24, 12), block=SparseAttentionBlockSizes(16, 16, 16, 3)),
    # R = 1, J = 3 (not a power of two), K = 1, block_c larger than any document.
    "mha-j3-k1-big-tile": Case(h=3, j=3, first=((3,), (0,)), num=((2,), (5,)),
                               block=SparseAttentionBlockSizes(16, 32, 32)),
    "prefill-bf16": Case(dtype=jnp.bfloat16, d=32),
    # A decode cache laid out heads first, with the padding after row 0's 5-token prompt (in
    # a 9-slot prompt area) hidden; row 1 hides nothing; two own tiles.
    "decode-heads-first-gap": Case(t=1, h=8, s=20, q_offset=(12, 9), kv_len=(13, 10),
                                   hidden=(), gap=((5, 9), (0, 0)), heads_first=True),
    "decode-bf16-splits": Case(t=1, h=8, d=32, s=20, q_offset=(19, 6), kv_len=(20, 7),
                               hidden=(), dtype=jnp.bfloat16,
                               block=SparseAttentionBlockSizes(16, 16, 16, kv_splits=4)),
}


@pytest.mark.parametrize("name", ["prefill-f32", "chunked-prefill-f32", "decode-heads-first-gap"])
def test_reference_matches_numpy_float64(name):
  case = CASES[name]
  x = make_inputs(case)
  got = sparse_attention_reference(**x, max_doc_chunks=case.max_doc_chunks,
                                   kv_heads_first=case.heads_first)
  want = numpy_attention(x, case.max_doc_chunks, case.heads_first)
  print(f"reference vs float64: {max_err(got, want):.2e}")
  assert got.shape == want.shape and max_err(got, want) < 1e-5


def check_kernel(case: Case, interpret: bool, x: dict | None = None):
  x = make_inputs(case) if x is None else x
  got = sparse_attention(**x, max_doc_chunks=case.max_doc_chunks, block=case.block,
                         kv_heads_first=case.heads_first, interpret=interpret)
  want = sparse_attention_reference(**x, max_doc_chunks=case.max_doc_chunks,
                                    kv_heads_first=case.heads_first)
  err = max_err(got, want)
  print(f"kernel vs reference: {err:.2e}")
  assert got.dtype == case.dtype and got.shape == want.shape
  assert np.isfinite(np.asarray(got, np.float32)).all()
  assert err <= TOL[case.dtype], err
  return got


@pytest.mark.parametrize("name", CASES)
def test_kernel_matches_reference(name):
  got = check_kernel(CASES[name], interpret=True)
  if name == "nothing-visible":
    assert not np.asarray(got)[1].any()


def loss(fn, case: Case, x: dict, **kw):
  meta = {k: x[k] for k in ("doc_first_chunk", "doc_num_chunks", "memory_visible", "q_offset",
                            "kv_len")}

  def f(q, k, v, bank_k, bank_v):
    o = fn(q, k, v, bank_k, bank_v, **meta, max_doc_chunks=case.max_doc_chunks, **kw)
    return jnp.sum(jnp.sin(o.astype(jnp.float32)))
  return f


def test_gradients_match_reference(interpret=True):
  # The backward is the reference's whatever the forward's tiling: one case is enough here.
  case = CASES["prefill-f32"]
  x = make_inputs(case)
  args = [x[k] for k in ("q", "k", "v", "bank_k", "bank_v")]
  got = jax.jit(jax.grad(loss(sparse_attention, case, x, block=case.block, interpret=interpret),
                         argnums=range(5)))(*args)
  want = jax.jit(jax.grad(loss(sparse_attention_reference, case, x), argnums=range(5)))(*args)
  for name_, g, w in zip(("q", "k", "v", "bank_k", "bank_v"), got, want):
    print(f"d{name_}: {max_err(g, w):.2e}")
    assert g.shape == w.shape and max_err(g, w) < 1e-4, name_
  # Chunks no selected document covers get no gradient; selected ones do.
  used = np.zeros(case.c, bool)
  for firsts, nums in zip(case.first, case.num):
    for f0, n in zip(firsts, nums):
      used[f0:f0 + min(n, case.max_doc_chunks)] = True
  dbank = np.abs(np.asarray(got[3])).sum(axis=(1, 2))
  assert (dbank[~used] == 0).all() and (dbank[used] > 0).all()


def test_per_sample_memory_to_bank():
  case = Case()  # bank of B*N*Cd = 48 chunks, K = 3: Case()'s shapes, so its compiled kernel
  rng = np.random.default_rng(3)
  b, n, cd, j, d = 2, 4, case.max_doc_chunks, case.j, case.d
  counts = np.array([[6, 1, 2, 0], [2, 5, 6, 1]])
  chunk_mask = np.arange(cd)[None, None, :] < counts[:, :, None]
  mem_k = jnp.asarray(rng.normal(size=(b, n, cd, j, d)), jnp.float32)
  mem_v = jnp.asarray(rng.normal(size=(b, n, cd, j, d)), jnp.float32)
  doc_index = jnp.asarray([[2, 0, -1], [3, 1, 0]], jnp.int32)
  selected = jnp.asarray([[True, True, True], [True, True, False]])
  bank_k, bank_v, first, num = per_sample_memory_to_bank(mem_k, mem_v, jnp.asarray(chunk_mask),
                                                         doc_index, selected)
  assert bank_k.shape == (b * n * cd, j, d) == (case.c, j, d)
  np.testing.assert_array_equal(first, [[12, 0, 0], [42, 30, 24]])
  np.testing.assert_array_equal(num, [[2, 6, 0], [1, 5, 0]])
  # Same attention as over a bank that holds only the selected documents, packed.
  packed_k, packed_v, packed_first = [], [], []
  for bi in range(b):
    row = []
    for slot, ok in zip(np.asarray(doc_index[bi]), np.asarray(selected[bi])):
      row.append(sum(len(x) for x in packed_k))
      if ok and slot >= 0:
        packed_k.append(mem_k[bi, slot, :counts[bi, slot]])
        packed_v.append(mem_v[bi, slot, :counts[bi, slot]])
    packed_first.append(row)
  x = make_inputs(case)
  x.update(bank_k=bank_k, bank_v=bank_v, doc_first_chunk=first, doc_num_chunks=num)
  got = sparse_attention(**x, max_doc_chunks=cd, block=case.block, interpret=True)
  x.update(bank_k=jnp.concatenate(packed_k), bank_v=jnp.concatenate(packed_v),
           doc_first_chunk=jnp.asarray(packed_first, jnp.int32))
  want = sparse_attention_reference(**x, max_doc_chunks=cd)
  assert max_err(got, want) < 2e-5


def test_per_sample_memory_to_bank_bad_shapes():
  mem = jnp.zeros((2, 4, 3, 2, 16))
  with pytest.raises(ValueError, match=r"chunk_mask\.shape=\(2, 4\)"):
    per_sample_memory_to_bank(mem, mem, jnp.zeros((2, 4), bool), jnp.zeros((2, 3), jnp.int32))
  with pytest.raises(ValueError, match=r"doc_index\.shape=\(3, 3\)"):
    per_sample_memory_to_bank(mem, mem, jnp.zeros((2, 4, 3), bool), jnp.zeros((3, 3), jnp.int32))


BAD = [
    (dict(q=np.zeros((2, 8, 4))), r"q\.shape=\(2, 8, 4\)"),
    (dict(k=np.zeros((3, 8, 2, 16))), r"k\.shape=\(3, 8, 2, 16\)"),
    (dict(v=np.zeros((2, 7, 2, 16))), r"v\.shape=\(2, 7, 2, 16\)"),
    (dict(k=np.zeros((2, 8, 3, 16)), v=np.zeros((2, 8, 3, 16))), r"H=4 .* J=3"),
    (dict(bank_k=np.zeros((48, 1, 16))), r"bank_k\.shape=\(48, 1, 16\)"),
    (dict(bank_v=np.zeros((40, 2, 16))), r"bank_v\.shape=\(40, 2, 16\)"),
    (dict(bank_v=np.zeros((48, 2, 16), jnp.bfloat16)), r"share one float dtype"),
    (dict(doc_num_chunks=np.zeros((2, 2), np.int32)), r"doc_num_chunks\.shape=\(2, 2\)"),
    (dict(doc_first_chunk=np.zeros((2, 3), np.float32)), r"doc_first_chunk\.dtype=float32"),
    (dict(memory_visible=np.ones((2, 8), np.int32)), r"memory_visible .*dtype=int32"),
    (dict(q_offset=np.zeros((3,), np.int32)), r"q_offset\.shape=\(3,\)"),
    (dict(kv_len=np.zeros((2,), np.float32)), r"kv_len\.dtype=float32"),
    (dict(max_doc_chunks=0), r"max_doc_chunks=0"),
    (dict(doc_first_chunk=np.zeros((2, 0), np.int32), doc_num_chunks=np.zeros((2, 0), np.int32)),
     r"empty input"),
]


@pytest.mark.parametrize("fn", [sparse_attention, sparse_attention_reference])
@pytest.mark.parametrize("change,match", BAD)
def test_bad_inputs_name_the_value(fn, change, match):
  args = dict(make_inputs(Case()), max_doc_chunks=6)
  args.update({k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in change.items()})
  with pytest.raises(ValueError, match=match):
    fn(**args, interpret=True)


@pytest.mark.parametrize("kw,match", [
    (dict(block_q=8), r"block_q=8 must be a power of two >= 16"),
    (dict(block_c=24), r"block_c=24"),
    (dict(block_k=0), r"block_k=0"),
    (dict(kv_splits=0), r"kv_splits=0"),
    (dict(num_warps=6), r"num_warps=6"),
])
def test_bad_block_sizes(kw, match):
  with pytest.raises(ValueError, match=match):
    SparseAttentionBlockSizes(**kw)


def test_kernel_impl_resolution():
  """`resolves_to_pallas`, the one kernel_impl rule: "pallas" always (the kernel then checks the
  head dim), "xla" never, "auto" on a GPU for head dims the kernels take."""
  gpu = jax.default_backend() == "gpu"
  assert pallas_kernels.resolves_to_pallas("pallas", 64)
  assert pallas_kernels.resolves_to_pallas("pallas", 24)
  assert not pallas_kernels.resolves_to_pallas("xla", 64)
  assert pallas_kernels.resolves_to_pallas("auto", 64) == gpu
  assert not pallas_kernels.resolves_to_pallas("auto", 24)
  assert not pallas_kernels.resolves_to_pallas("auto", 8)


def test_kernel_needs_power_of_two_head_dim():
  x = make_inputs(Case(d=24))
  with pytest.raises(ValueError, match=r"head dim D=24"):
    sparse_attention(**x, max_doc_chunks=6, interpret=True)


def test_benchmark_small_mode_runs():
  # Decode only (each mode compiles the kernel and the reference); prefill's inputs below.
  config = kernel_benchmarks.get_config("small")
  config.sparse_attention.update(ragged=True, modes="decode")
  [result] = benchmark.run(config)
  assert result["max_abs_err"] < 1e-5 and result["tflops"] > 0 and result["kv_splits"] > 1
  args = benchmark.parse_config(kernel_benchmarks.get_config("small"))
  x = benchmark.make_inputs("prefill", args)
  flops, nbytes = benchmark.work(x, args)
  t, full = args.prefill_tokens, args.top_k * args.doc_chunks
  assert flops == 4 * args.dim * args.heads * (t * full + t * (t + 1) // 2) and nbytes > 0


def test_benchmark_config_defaults_are_the_kernels_and_bad_fields_are_named():
  config = kernel_benchmarks.get_config()
  blocks = {f: config.sparse_attention[f] for f in ("block_q", "block_c", "block_k", "num_warps",
                                                    "num_stages")}
  assert SparseAttentionBlockSizes(**blocks) == SparseAttentionBlockSizes()
  config.sparse_attention.modes = "decode,train"
  with pytest.raises(ValueError, match=r"--config.sparse_attention.modes='decode,train'"):
    benchmark.run(config)
  config = kernel_benchmarks.get_config()
  config.sparse_attention.top_k = 0
  with pytest.raises(ValueError, match=r"--config.sparse_attention.top_k=0"):
    benchmark.run(config)


@pytest.mark.slow
def test_benchmark_help_names_the_config_file():
  """Both kernel benchmarks are absl apps: --help names configs/kernel_benchmarks.py."""
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  for kernel in ("routing_scores", "sparse_attention"):
    proc = subprocess.run([sys.executable, "-m", f"pallas_kernels.{kernel}.benchmark",
                           "--helpshort"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert "configs/kernel_benchmarks.py" in proc.stdout, proc.stderr[-3000:]
    assert f"{kernel}.dim=" in proc.stdout and "iters=20" in proc.stdout


def gpu_case(mode: str, dtype, splits: int = 1) -> Case:
  """Qwen3-4B-like heads (H=32, J=8, D=128), 16 documents of up to 64 chunks in a 4K bank."""
  rng = np.random.default_rng(1)
  first = tuple(map(tuple, rng.integers(0, 4096 - 64, size=(2, 16))))
  num = rng.integers(0, 65, size=(2, 16))
  num[:, -2:] = 0
  common = dict(h=32, j=8, d=128, c=4096, max_doc_chunks=64, first=first,
                num=tuple(map(tuple, num)), dtype=dtype)
  if mode == "decode":
    return Case(t=1, s=1000, q_offset=(999, 300), kv_len=(1000, 301), hidden=(),
                block=SparseAttentionBlockSizes(kv_splits=splits), **common)
  return Case(t=300, s=300, q_offset=(0, 0), kv_len=(300, 250), hidden=((0, 40),),
              block=SparseAttentionBlockSizes(kv_splits=splits), **common)


GPU_CASES = {
    "decode-bf16": gpu_case("decode", jnp.bfloat16),
    "decode-bf16-splits8": gpu_case("decode", jnp.bfloat16, 8),
    "decode-f32-splits4": gpu_case("decode", jnp.float32, 4),
    "prefill-bf16-gpu": gpu_case("prefill", jnp.bfloat16),
    "prefill-f32-gpu": gpu_case("prefill", jnp.float32),
}


# JAX 0.10 lowers Pallas to Triton IR without a GPU (compute capability 9.0 assumed); 0.11
# wants a real or abstract GPU device for that step.
needs_triton_lowering = pytest.mark.skipif(
    jax.__version_info__ >= (0, 11) and not any(d.platform == "gpu" for d in jax.devices()),
    reason="JAX >= 0.11 lowers Pallas Triton kernels only with a GPU device")


@needs_triton_lowering
@pytest.mark.parametrize("name", ["prefill-bf16", "decode-f32-splits", "mha-j3-k1-big-tile",
                                  "decode-bf16-splits8", "prefill-f32-gpu"])
def test_kernel_lowers_to_triton_for_cuda(name):
  """The GPU path up to Triton IR (unsupported ops, dtypes, non-power-of-two tiles), on CPU."""
  case = {**CASES, **GPU_CASES}[name]
  x = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), make_inputs(case))
  fn = jax.jit(lambda x: sparse_attention(**x, max_doc_chunks=case.max_doc_chunks,
                                          block=case.block))
  text = fn.trace(x).lower(lowering_platforms=("cuda",)).as_text()
  assert "triton" in text


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_CASES)
def test_kernel_matches_reference_compiled(name):
  check_kernel(GPU_CASES[name], interpret=False)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["prefill-f32", "decode-bf16-splits", "row-blocks-long-doc",
                                  "mha-j3-k1-big-tile", "nothing-visible"])
def test_small_cases_compiled(name):
  check_kernel(CASES[name], interpret=False)


@pytest.mark.gpu
def test_gradients_compiled():
  test_gradients_match_reference(interpret=False)
