"""The MSA model against the official implementation's goldens, tensor by tensor.

Each golden case (../shared/data/golden/official-msa, README there) is converted from the
official flat layout with `from_official`, run through `MSATransformer` with the official
weights loaded by name (`checkpoint.msa`), and compared in float32 at atol 1e-5: every layer's
hidden states, the final hidden states and logits, per-layer chunk and document scores, the
selected documents, every loss, the official router-recall metric, and the gradient of the
total loss for every parameter. `-s` prints the worst error per tensor family.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from msa_jax.checkpoint import msa as msa_ckpt
from msa_jax.data.official import from_official
from msa_jax.model import msa as msa_model
from tests.paths import SHARED

GOLDEN = SHARED / "data" / "golden" / "official-msa"
CASES = {"case_a": "", "case_b": "", "case_c": "",
         "case_d_nodecouple_partial": "_d_nodecouple_partial"}
ATOL = 1e-5

pytestmark = pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"no goldens at {GOLDEN}")


def load_case(case):
  suffix = CASES[case]
  cfg, msa = msa_ckpt.msa_config_from_official(
      json.loads((GOLDEN / f"config{suffix}.json").read_text()))
  weights = "weights" if not suffix else f"case{suffix}_weights"
  tensors = safetensors.numpy.load_file(GOLDEN / f"{weights}.safetensors")
  params = msa_ckpt.official_to_params(tensors, cfg, msa)
  g = dict(np.load(GOLDEN / f"{case}.npz"))
  batch, index = from_official(
      g["input_ids"], g["attention_mask"], g["doc_ids"], g["position_ids"], labels=g["labels"],
      aux_labels=g["aux_labels"], answer_labels=g["batch_answer_labels"],
      train_qa_samples=g["train_qa_samples"])
  return cfg, msa, params, g, jax.tree.map(jnp.asarray, batch), index


def doc_table(scores_by_slot, index, width):
  """Our [B, N] per-slot scores -> the official [B, max_doc_id + 1] table (-inf elsewhere)."""
  out = np.full((scores_by_slot.shape[0], width), -np.inf, np.float32)
  for s, ids in enumerate(index.doc_ids):
    for n, doc in enumerate(ids):
      if doc:
        out[s, doc] = scores_by_slot[s, n]
  return out


def official_recall(tables, aux_labels, aux_len):
  """The official train_router_metrics: recall@min(n, #docs) = hits / min(#pos, 10)."""
  metrics = {}
  for table in tables:
    for s in range(table.shape[0]):
      z = table[s][np.isfinite(table[s])]
      y = aux_labels[s, :aux_len[s]]
      for n in (1, 5, 10):
        at = min(n, len(z))
        top = np.argsort(-z, kind="stable")[:at]
        metrics.setdefault(f"metric_recall_at_{at}", []).append(
            y[top].sum() / min(y.sum(), 10))
  return {k: float(np.mean(v)) for k, v in metrics.items()}


class Errors:
  """Worst absolute error per tensor family, printed at the end of a test."""

  def __init__(self, case):
    self.case, self.worst = case, {}

  def check(self, family, got, want, atol=ATOL):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (family, got.shape, want.shape)
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), finite, err_msg=family)
    err = float(np.abs(got[finite] - want[finite]).max()) if finite.any() else 0.0
    self.worst[family] = max(err, self.worst.get(family, 0.0))
    assert err <= atol, f"{self.case} {family}: max error {err:.3g} > {atol}"

  def report(self):
    for family, err in self.worst.items():
      print(f"{self.case} {family}: max err {err:.2e}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_matches_official(case):
  cfg, msa, params, g, batch, index = load_case(case)
  model = msa_model.MSATransformer(cfg, msa)
  apply = functools.partial(
      model.apply, doc_logits=True, mutable=["intermediates"],
      capture_intermediates=lambda m, _: isinstance(m, msa_model.MSADecoderLayer))
  out, state = jax.jit(apply)({"params": params}, batch)
  inter = state["intermediates"]
  length = g["input_ids"].shape[1]
  valid = g["attention_mask"] == 1
  err = Errors(case)

  def flat(docs, prompt):
    return index.scatter(np.asarray(docs), np.asarray(prompt), length)[valid]

  for i in range(cfg.num_layers):
    docs, x, _ = inter[f"layers_{i}"]["__call__"][0]
    err.check("layer outputs (hidden states)", flat(docs, x), g[f"L{i}_layer_out"][valid])
  err.check("final hidden states", flat(out.doc_hidden, out.hidden), g["final_hidden"][valid])
  err.check("logits", flat(out.doc_logits, out.logits), g["logits"][valid])

  assert sorted(out.routes) == g["docs_score_layers"].tolist()
  tables = []
  for layer, route in out.routes.items():
    width = g[f"docs_score_L{layer}"].shape[1]
    table = doc_table(np.asarray(route.doc_scores), index, width)
    tables.append(table)
    err.check("document scores", table, g[f"docs_score_L{layer}"])
    # Per-chunk scores, in the official flat chunk table's order.
    want = g[f"L{layer}_chunk_scores"]
    got = np.full_like(want, -np.inf)
    for s, c in zip(*np.nonzero(g["chunk_num_tokens"] > 0)):
      n = list(index.doc_ids[s]).index(g["chunk_doc_id"][s, c])
      ci = (g["chunk_first_pos"][s, c] - index.doc_index[s, n, 0]) // msa.arch.chunk_size
      got[s, c] = route.chunk_scores[s, n, ci]
    err.check("chunk scores", got, want)
    selected = np.where(route.selected, np.take_along_axis(index.doc_ids, route.indices, 1),
                        -1)
    np.testing.assert_array_equal(selected, g[f"L{layer}_selected_doc_ids"])
    np.testing.assert_array_equal(np.asarray(route.selected).sum(1),
                                  g[f"L{layer}_k_per_sample"])

  _, metrics = msa_model.compute_losses(out, batch, cfg, msa.loss)
  for name in ("loss", "lm_loss", "aux_loss", "answer_loss"):
    err.check("losses", metrics[name], g[name])
  assert float(g["reconstruction_loss"]) == 0.0
  for name, value in official_recall(tables, g["aux_labels"], g["aux_labels_len"]).items():
    err.check("official recall metric", value, g[name])
  err.report()


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_match_official(case):
  cfg, msa, params, _, batch, _ = load_case(case)
  model = msa_model.MSATransformer(cfg, msa)

  def total_loss(p):
    return msa_model.compute_losses(model.apply({"params": p}, batch), batch, cfg, msa.loss)[0]

  grads = msa_ckpt.params_to_official(jax.jit(jax.grad(total_loss))(params), cfg, msa)
  want = safetensors.numpy.load_file(GOLDEN / f"{case}_grads.safetensors")
  # The golden holds every trainable parameter; `temperature` is a frozen constant.
  assert set(grads) - {"temperature"} == set(want)
  err = Errors(case)
  for name, w in want.items():
    family = ("router projection gradients" if "router_" in name else
              "backbone gradients")
    err.check(family, grads[name], w)
  err.report()
