"""The backbone against the official MSA goldens (../shared/data/golden/official-msa).

In the official training forward (design/official-semantics.md sections 4-5), document tokens
attend causally within their own document at document-local positions in every layer, and the
other tokens (template, query, answer) attend causally among themselves in the non-router layers
(0 and 1 here). That is our backbone with one segment per document and one for the rest, at the
golden's position ids; routed attention (layers 2, 3 for non-document tokens) is MSA's, not
the backbone's. So the goldens pin down:
  * every non-pad token's output of layers 0 and 1;
  * document tokens' final hidden states and logits (through all four layers).
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from msa_jax.checkpoint import hf
from msa_jax.model import Transformer
from tests.paths import SHARED

GOLDEN = SHARED / "data" / "golden" / "official-msa"
CASES = {"case_a": "", "case_b": "", "case_c": "",
         "case_d_nodecouple_partial": "_d_nodecouple_partial"}
ATOL = 1e-5


def load_backbone(suffix: str):
  config = json.loads((GOLDEN / f"config{suffix}.json").read_text())
  config["model_type"] = "qwen3"  # model_type 'msa' wraps a Qwen3 backbone
  cfg = hf.config_from_hf(config)
  weights = "weights" if not suffix else f"case{suffix}_weights"
  tensors = safetensors.numpy.load_file(GOLDEN / f"{weights}.safetensors")
  backbone = {k: v for k, v in tensors.items() if "router_" not in k and k != "temperature"}
  return cfg, hf.hf_to_params(backbone, cfg, source="official MSA weights")


@pytest.mark.parametrize("case", sorted(CASES))
def test_backbone_matches_official_goldens(case):
  if not GOLDEN.is_dir():
    pytest.skip(f"official goldens not found at {GOLDEN}")
  cfg, params = load_backbone(CASES[case])
  g = np.load(GOLDEN / f"{case}.npz")
  doc_ids, valid = g["doc_ids"], g["attention_mask"] == 1
  segments = np.where(valid, np.where(doc_ids > 0, doc_ids, doc_ids.max() + 1), 0)
  (logits, _), state = Transformer(cfg).apply(
      {"params": params}, jnp.asarray(g["input_ids"], jnp.int32),
      positions=jnp.asarray(g["position_ids"], jnp.int32),
      segment_ids=jnp.asarray(segments, jnp.int32),
      capture_intermediates=lambda _, method: method in ("__call__", "backbone"),
      mutable=["intermediates"])
  inter = state["intermediates"]
  docs = valid & (doc_ids > 0)
  checks = {
      "layer 0 output": (inter["layers_0"]["backbone"][0][0], g["hf_hidden_states_1"], valid),
      "layer 1 output": (inter["layers_1"]["backbone"][0][0], g["hf_hidden_states_2"], valid),
      "final hidden (documents)": (inter["final_norm"]["__call__"][0], g["final_hidden"], docs),
      "logits (documents)": (logits, g["logits"], docs),
  }
  for what, (got, want, where) in checks.items():
    err = float(np.abs(np.asarray(got)[where] - want[where]).max())
    print(f"{case} {what}: max err {err:.2e}")
    assert err <= ATOL, f"{case} {what}: {err}"
