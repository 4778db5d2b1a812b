"""Memory Parallel through the engine: `MSAEngine(..., mesh=...)` against the one-device engine.

A subprocess (this file as a script) sees 8 fake CPU devices, encodes one bank, and prefills the
same prompts with the single-device engine and with engines whose routing keys are sharded over
a `memory` axis of 8 (and of 4 next to a `data` axis of 2). Documents have 1 to 5 chunks, so
an even split of the chunks would cut documents; `shard_bank` must keep them whole. The selected
documents must be identical and the logits equal to 1e-6.
"""

import json

import numpy as np
import pytest

from tests.fake_devices import run_on_fake_devices

MESHES = {"memory8": {"memory": 8}, "data2_memory4": {"data": 2, "memory": 4}}
MSA_CASES = ("decoupled", "all_layers_mean")


def _worker() -> None:
  """Prefills with each engine; prints one JSON line of comparisons."""
  import tempfile

  import jax
  jax.config.update("jax_default_matmul_precision", "highest")
  from msa_jax.inference import engine as engine_lib
  from msa_jax.memory import encode as encode_lib
  from msa_jax.model import MSAConfig, MSATransformer, get_preset, init_params
  from msa_jax.runtime.sharding import make_mesh

  cfg = get_preset("tiny").replace(vocab_size=64, embed_dim=32, mlp_dim=64, num_layers=3,
                                   num_heads=4, num_kv_heads=2, head_dim=8)
  cases = {"decoupled": MSAConfig(top_k=3, chunk_size=4),
           "all_layers_mean": MSAConfig(top_k=5, chunk_size=3, router_layers="all",
                                        chunk_reduce="mean", query_reduce="mean")}
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 16, size=23)
  docs = [rng.integers(1, 64, size=int(n)).tolist() for n in lengths]
  q = 5
  prompts = engine_lib.PromptBatch.from_segments(
      [[1]] * q, [rng.integers(1, 64, size=int(rng.integers(1, 5))).tolist() for _ in range(q)],
      [rng.integers(1, 64, size=3).tolist() for _ in range(q)], position_offset=3)
  result = {"devices": jax.device_count()}
  for name, msa in cases.items():
    params = init_params(MSATransformer(cfg, msa), jax.random.key(0))
    with tempfile.TemporaryDirectory() as tmp:
      bank = encode_lib.create_bank(f"{tmp}/bank", cfg, msa, params)
      encode_lib.encode_corpus(bank, cfg, msa, params, [f"d{i}" for i in range(len(docs))],
                               docs, max_tokens=16, batch_size=8, progress=None)
      chunk_doc = bank.chunk_doc()
      base = engine_lib.MSAEngine(cfg, msa, params, bank, tile_chunks=4).prefill(prompts)
      for mesh_name, shape in MESHES.items():
        mesh = make_mesh(shape)
        s = shape["memory"]
        eng = engine_lib.MSAEngine(cfg, msa, params, bank, mesh=mesh, tile_chunks=4)
        out = eng.prefill(prompts)
        keys = eng._routing_keys(msa.arch.router_layer_ids(cfg.num_layers)[0])[0]
        mask = np.asarray(prompts.token_mask)
        same = lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b)))
        result[f"{name}/{mesh_name}"] = {
            "straddles_even_split": bool(any(
                chunk_doc[i * len(chunk_doc) // s - 1] == chunk_doc[i * len(chunk_doc) // s]
                for i in range(1, s))),
            "key_shards": len({str(x.index) for x in keys.addressable_shards}),
            "max_logit_diff": float(np.abs(np.asarray(out.logits)
                                           - np.asarray(base.logits))[mask].max()),
            "layers_equal": sorted(out.memory) == sorted(base.memory),
            "indices_equal": all(same(out.memory[i].doc_indices, base.memory[i].doc_indices)
                                 for i in base.memory),
            "selected_equal": all(same(out.memory[i].selected, base.memory[i].selected)
                                  for i in base.memory),
            "max_score_diff": max(float(np.abs(np.asarray(out.memory[i].scores)
                                               - np.asarray(base.memory[i].scores)).max())
                                  for i in base.memory),
            "routed_ids": [engine_lib.routed_doc_ids(bank, out.memory[i]) for i in out.memory],
            "base_ids": [engine_lib.routed_doc_ids(bank, base.memory[i]) for i in base.memory],
        }
  print(json.dumps(result))


@pytest.fixture(scope="module")
def worker_result():
  return run_on_fake_devices(__file__)


@pytest.mark.slow
def test_worker_sees_eight_devices(worker_result):
  assert worker_result["devices"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("mesh", sorted(MESHES))
@pytest.mark.parametrize("case", MSA_CASES)
def test_sharded_engine_equals_single_device(worker_result, mesh, case):
  r = worker_result[f"{case}/{mesh}"]
  print(f"{case}/{mesh}: max |logits diff| = {r['max_logit_diff']:.1e}, "
        f"max |score diff| = {r['max_score_diff']:.1e}")
  assert r["straddles_even_split"]  # the test bank does exercise whole-document sharding
  assert r["key_shards"] == MESHES[mesh]["memory"]
  assert r["layers_equal"] and r["indices_equal"] and r["selected_equal"], r
  assert r["routed_ids"] == r["base_ids"]
  assert r["max_logit_diff"] <= 1e-6, r
  assert r["max_score_diff"] <= 1e-6, r


if __name__ == "__main__":
  _worker()
