"""Property test: the batched, jitted MSA forward and losses against a naive float64 reference.

Hypothesis draws random layouts (batch size, documents per sample, document lengths that are
and are not multiples of the chunk size, right-padded prompts, memory_index, routing-query
masks, labels, routing labels) for each of a small set of configurations covering every
routing mode, aux loss, router-layer spec, tied/untied heads and document-wise/global RoPE.
`tests/msa_reference.py` recomputes every sample with plain loops in float64.

To keep compile time low, each configuration has one fixed padded shape (B, N, G, T) and its
forward and `compute_losses` are jitted together once (with LLVM optimisation off, which
halves CPU compile time; the HLO passes still run); examples vary only the content.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msa_jax.model.batch import IGNORE, MSABatch, check_batch
from msa_jax.model.config import ModelConfig, MSAConfig
from msa_jax.model.msa import MSAOutput, MSATransformer, compute_losses
from tests import msa_reference as ref

MODEL = ModelConfig(vocab_size=64, embed_dim=32, mlp_dim=48, num_layers=3, num_heads=4,
                    num_kv_heads=2, head_dim=8, rope_theta=100.0)
EXAMPLES_PER_CASE = 12
TIE_GAP = 1e-4  # top-k boundaries closer than this may legitimately flip between fp32/fp64
ATOL = {"logits": 1e-4, "doc_hidden": 1e-4, "doc_scores": 1e-5, "loss": 1e-4}
MAX_ERR = {name: 0.0 for name in ATOL}  # reported at the end of the module


@dataclasses.dataclass(frozen=True)
class Case:
  """One static configuration and its shape (B samples, N slots, G tokens, T prompt tokens)."""

  msa: MSAConfig
  shape: tuple[int, int, int, int]
  tie: bool = True
  global_positions: bool = False

  @property
  def config(self) -> ModelConfig:
    return MODEL.replace(tie_embeddings=self.tie)


CASES = {
    "decoupled-infonce": Case(MSAConfig(top_k=2, chunk_size=3), shape=(2, 4, 9, 8)),
    "decoupled-focal-headmax-querymean-all": Case(
        MSAConfig(router_layers="all", aux_layers="all", top_k=5, chunk_size=4,
                  head_reduce="max", query_reduce="mean", chunk_reduce="mean",
                  aux_loss="infonce_focal", focal_gamma=1.5, temperature=0.7),
        shape=(3, 3, 7, 6), tie=False, global_positions=True),
    "nondecoupled-infonce-decouple-last": Case(
        MSAConfig(router_layers=(0, 2), aux_layers="all", top_k=1, chunk_size=2,
                  decouple_router=False, query_reduce="last",
                  aux_loss="infonce_decouple", aux_weight=0.5),
        shape=(1, 4, 9, 8)),
    "nondecoupled-bce-chunkmean": Case(
        MSAConfig(top_k=3, chunk_size=5, decouple_router=False, head_reduce="max",
                  chunk_reduce="mean", aux_loss="bce", lm_weight=0.7),
        shape=(2, 3, 7, 6), tie=False, global_positions=True),
    "decoupled-decouple-focal-p1": Case(
        MSAConfig(router_layers="all", aux_layers="all", top_k=4, chunk_size=1,
                  query_reduce="last", chunk_reduce="mean",
                  aux_loss="infonce_decouple_focal", temperature=0.1),
        shape=(3, 4, 9, 8)),
    "nondecoupled-infonce-querymean": Case(
        MSAConfig(router_layers="all", aux_layers=(2,), top_k=2, chunk_size=3,
                  decouple_router=False, query_reduce="mean", temperature=0.2),
        shape=(1, 3, 7, 6), tie=False),
    "decoupled-bce-layer1": Case(
        MSAConfig(router_layers=(1,), top_k=1, chunk_size=2, head_reduce="max",
                  aux_loss="bce"),
        shape=(2, 4, 9, 8), global_positions=True),
    "router-below-aux-layers": Case(  # aux_layers "upper_half" of router (0,) is empty: aux 0
        MSAConfig(router_layers=(0,), top_k=5, chunk_size=4, decouple_router=False),
        shape=(3, 3, 7, 6)),
}


# ----------------------------------------------------------------------------------- params


def _abstract_batch(case: Case) -> MSABatch:
  b, n, g, t = case.shape
  i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)  # noqa: E731
  bools = lambda *s: jax.ShapeDtypeStruct(s, jnp.bool_)  # noqa: E731
  return MSABatch(doc_tokens=i32(b, n, g), doc_lengths=i32(b, n), tokens=i32(b, t),
                  token_mask=bools(b, t), positions=i32(b, t), query_mask=bools(b, t),
                  memory_index=i32(b), labels=i32(b, t), route_labels=i32(b, n),
                  doc_positions=i32(b, n, g) if case.global_positions else None)


def _fill(path: tuple[str, ...], shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
  """A random float32 value for one parameter (fan-in scaled kernels, norm scales around 1,
  a non-trivial BCE bias); router projections get extra spread so scores rarely tie."""
  name = path[-2] if len(path) > 1 else path[-1]
  if path[-1] == "scale":
    return (1.0 + 0.3 * rng.standard_normal(shape)).astype(np.float32)
  if name == "embed":
    return (0.5 * rng.standard_normal(shape)).astype(np.float32)
  if name == "aux_bias":
    return np.float32(0.4)
  fan_in = int(np.prod(shape[:2 if name == "o_proj" else 1]))
  std = (2.0 if name.startswith("router_") else 1.0) / np.sqrt(fan_in)
  return (std * rng.standard_normal(shape)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def case_params(name: str) -> dict:
  """Seeded random float32 parameters with the model's own tree (from `init`'s shapes)."""
  case = CASES[name]
  model = MSATransformer(case.config, case.msa)
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), _abstract_batch(case)))
  rng = np.random.default_rng(sorted(CASES).index(name))
  flat, tree = jax.tree_util.tree_flatten_with_path(shapes["params"])
  return jax.tree.unflatten(tree, [_fill(tuple(k.key for k in path), x.shape, rng)
                                   for path, x in flat])


@functools.lru_cache(maxsize=None)
def compiled(name: str):
  """The case's jitted forward + losses: (params, batch) -> (MSAOutput, metrics)."""
  case = CASES[name]
  model = MSATransformer(case.config, case.msa)

  def run(params, batch):
    out = model.apply({"params": params}, batch)
    return out, compute_losses(out, batch, case.config, case.msa.loss)[1]

  return jax.jit(run, compiler_options={"xla_backend_optimization_level": 0})


# --------------------------------------------------------------------------------- layouts


@st.composite
def sample_layouts(draw, case: Case) -> dict:
  """The structure of one sample: documents, prompt length, masks and labels."""
  _, n_max, g_max, t_max = case.shape
  num_docs = draw(st.integers(1, n_max))
  t_real = draw(st.integers(2, t_max))
  return {
      "lengths": draw(st.lists(st.integers(1, g_max), min_size=num_docs, max_size=num_docs)),
      "t_real": t_real,
      "memory_index": draw(st.integers(0, t_real)),  # t_real: no token sees the memory
      "queries": draw(st.sets(st.integers(0, t_real - 1), min_size=1)),
      "labelled": draw(st.sets(st.integers(0, t_real - 1))),
      "positives": draw(st.sets(st.integers(0, num_docs - 1), min_size=1)),
      "position_offset": draw(st.integers(0, 5)),
      "doc_start": draw(st.integers(0, 20)),
  }


@st.composite
def batches(draw, case: Case) -> dict:
  """A numpy batch of the case's shape; token ids and padding content come from a drawn seed."""
  b, n, g, t = case.shape
  layouts = [draw(sample_layouts(case)) for _ in range(b)]
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  v = MODEL.vocab_size
  f = {
      "doc_tokens": rng.integers(0, v, (b, n, g)),  # garbage past each length too
      "doc_lengths": np.zeros((b, n)),
      "tokens": rng.integers(0, v, (b, t)),
      "token_mask": np.zeros((b, t), bool),
      "positions": np.zeros((b, t)),
      "query_mask": rng.random((b, t)) < 0.5,  # stray query flags on pads must not count
      "memory_index": np.zeros((b,)),
      "labels": np.full((b, t), IGNORE),
      "route_labels": rng.integers(0, 2, (b, n)),  # garbage on unused slots
  }
  for i, lay in enumerate(layouts):
    k, tr, mi = len(lay["lengths"]), lay["t_real"], lay["memory_index"]
    f["doc_lengths"][i, :k] = lay["lengths"]
    f["token_mask"][i, :tr] = True
    # The official layout: a head at 0..mi-1, a gap (where the memory sits), then the rest.
    f["positions"][i] = np.where(np.arange(t) < mi, np.arange(t),
                                 np.arange(t) + lay["position_offset"])
    f["query_mask"][i, :tr] = False
    f["query_mask"][i, sorted(lay["queries"])] = True
    f["memory_index"][i] = mi
    for j in lay["labelled"]:
      f["labels"][i, j] = rng.integers(0, v)
    f["route_labels"][i, :k] = 0
    f["route_labels"][i, sorted(lay["positives"])] = 1
  if case.global_positions:  # global RoPE: each document starts where the previous one ended
    starts = np.array([lay["doc_start"] for lay in layouts])
    first = np.cumsum(f["doc_lengths"], -1) - f["doc_lengths"] + starts[:, None]
    f["doc_positions"] = first[..., None] + np.arange(g)
  return {k: (x if x.dtype == bool else x.astype(np.int32)) for k, x in f.items()}


# ------------------------------------------------------------------------------ comparison


def _record(family: str, got, want) -> float:
  err = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)),
                     initial=0.0))
  MAX_ERR[family] = max(MAX_ERR[family], err)
  return err


def _close(family: str, got, want, what: str, scale: float = 1.0):
  err = _record(family, got, want)
  assert err <= ATOL[family] * scale, f"{what}: max |error| {err:.3g} > {ATOL[family] * scale}"


def _sample(f: dict, i: int) -> dict:
  s = {k: x[i] for k, x in f.items()}
  s.setdefault("doc_positions", None)
  return s


def _ours(route, i: int) -> list:
  return [int(j) for j, used in zip(route.indices[i], route.selected[i]) if used]


def _check_selection(got: list, scores: np.ndarray, want: list, top_k: int, what: str) -> bool:
  """Asserts our selection matches; returns False when a near-tie made the sets differ."""
  k = min(top_k, len(scores))
  assert len(got) == k, f"{what}: selected {got}, expected {k} documents"
  assert all(j < len(scores) for j in got), f"{what}: selected an absent slot in {got}"
  if set(got) == set(want):
    return True
  ranked = np.sort(scores)[::-1]
  gap = ranked[k - 1] - ranked[k] if k < len(scores) else np.inf
  assert gap <= TIE_GAP, f"{what}: selected {got}, reference {want} (scores {scores})"
  np.testing.assert_allclose(np.sort(scores[got]), np.sort(scores[want]), atol=TIE_GAP,
                             err_msg=what)
  return False


def _compare(name: str, f: dict):
  case = CASES[name]
  cfg, msa = case.config, case.msa
  check_batch(MSABatch(**f), vocab_size=cfg.vocab_size, need_route_labels=True)
  params = case_params(name)
  out, metrics = jax.device_get(compiled(name)(params, MSABatch(**f)))
  params64 = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  results, samples = [], []
  for i in range(case.shape[0]):
    s = _sample(f, i)
    res = ref.forward_sample(params64, cfg, msa, s)
    exact = True
    for layer, want in res.selected.items():
      exact &= _check_selection(_ours(out.routes[layer], i), res.doc_scores[layer], want,
                                msa.arch.top_k, f"sample {i} layer {layer} selection")
    if not exact:  # a near-tie went the other way: rerun the reference with our selection
      forced = {layer: _ours(route, i) for layer, route in out.routes.items()}
      res = ref.forward_sample(params64, cfg, msa, s, force_selection=forced)
    results.append(res)
    samples.append(s)
    _compare_sample(case, out, res, s, i)
  for key, value in ref.losses(results, samples, params64, cfg, msa).items():
    _close("loss", metrics[key], value,
           f"{key} (got {float(metrics[key]):.6g}, want {value:.6g})", max(1.0, abs(value)))


def _compare_sample(case: Case, out: MSAOutput, res: ref.SampleResult, s: dict, i: int):
  real = s["token_mask"]
  scale = max(1.0, float(np.abs(res.logits[real]).max()))
  _close("logits", out.logits[i][real], res.logits[real], f"sample {i} logits", scale)
  _close("logits", out.logits[i][~real], res.logits[~real], f"sample {i} pad logits", scale)
  for j, want in enumerate(res.doc_hidden):
    _close("doc_hidden", out.doc_hidden[i, j, :len(want)], want, f"sample {i} doc {j} hidden",
           max(1.0, float(np.abs(want).max())))
  n = len(res.doc_hidden)
  assert sorted(out.routes) == ref.router_layers(case.config, case.msa)
  for layer, want in res.doc_scores.items():
    got = out.routes[layer].doc_scores[i]
    _close("doc_scores", got[:n], want, f"sample {i} layer {layer} doc scores")
    assert np.all(np.isneginf(got[n:])), f"absent slots must score -inf, got {got[n:]}"


# ------------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module", autouse=True)
def report_max_errors():
  yield
  print("\nmax |error| vs the float64 reference: "
        + ", ".join(f"{k} {v:.2e}" for k, v in MAX_ERR.items()))


@pytest.mark.parametrize("name", sorted(CASES))
def test_msa_matches_naive_reference(name):
  case = CASES[name]

  @settings(max_examples=EXAMPLES_PER_CASE, deadline=None, derandomize=True, database=None)
  @given(batches(case))
  def check(batch):
    _compare(name, batch)

  check()
