"""Retrieval metrics: hand-computed cases, input checks, and pytrec_eval (trec_eval) as oracle."""

import math

import numpy as np
import pytest

from msa_jax.evaluation import metrics

QRELS = {"q1": {"a": 2, "b": 1, "c": 0}, "q2": {"x": 1}, "q3": {"z": 0}}
RANKINGS = {"q1": ["c", "b", "d", "a"], "q2": ["y", "z", "x"], "q3": ["z"]}


def test_hand_computed_values():
  scores = metrics.evaluate(RANKINGS, QRELS, per_query=True)
  # q3 has no relevant document: not averaged.
  assert scores.num_queries == 2
  assert set(scores.per_query) == {"q1", "q2"}
  q1, q2 = scores.per_query["q1"], scores.per_query["q2"]
  # q1: relevant a (2), b (1); ranked c, b, d, a -> gains 0, 1, 0, 2.
  assert q1["hit@1"] == 0 and q1["recall@1"] == 0
  assert q1["recall@5"] == q1["recall@10"] == q1["recall@100"] == 1
  assert q1["mrr@10"] == 0.5
  ndcg1 = (1 / math.log2(3) + 2 / math.log2(5)) / (2 / math.log2(2) + 1 / math.log2(3))
  assert q1["ndcg@10"] == pytest.approx(ndcg1, abs=1e-12)
  assert ndcg1 == pytest.approx(0.567207, abs=1e-6)
  # q2: relevant x, ranked third.
  assert q2 == {"hit@1": 0, "recall@1": 0, "recall@5": 1, "recall@10": 1, "recall@100": 1,
                "mrr@10": 1 / 3, "ndcg@10": pytest.approx(0.5, abs=1e-12)}
  assert scores.mean["mrr@10"] == pytest.approx((0.5 + 1 / 3) / 2)
  assert scores.mean["ndcg@10"] == pytest.approx((ndcg1 + 0.5) / 2)
  assert metrics.evaluate(RANKINGS, QRELS).per_query is None


def test_cutoffs():
  relevant = {"a": 1, "b": 3}
  ranking = ["x", "y", "a", "z", "b"]
  got = metrics.query_metrics(ranking, relevant, ("hit@2", "hit@3", "recall@3", "recall@5",
                                                  "mrr@2", "mrr@3", "ndcg@1", "ndcg@3"))
  assert got["hit@2"] == 0 and got["hit@3"] == 1
  assert got["recall@3"] == 0.5 and got["recall@5"] == 1
  assert got["mrr@2"] == 0 and got["mrr@3"] == pytest.approx(1 / 3)
  assert got["ndcg@1"] == 0
  assert got["ndcg@3"] == pytest.approx((1 / 2) / (3 + 1 / math.log2(3)))
  perfect = metrics.query_metrics(["b", "a"], relevant, ("ndcg@10", "hit@1", "mrr@10"))
  assert perfect == {"ndcg@10": pytest.approx(1.0), "hit@1": 1.0, "mrr@10": 1.0}


@pytest.mark.parametrize("rankings, qrels, match", [
    ({"q9": ["a"]}, {"q1": {"a": 1}}, r"1 ranked queries are not in qrels, e.g. \['q9'\]"),
    ({"q1": ["a"]}, {}, "qrels is empty"),
    ({}, {"q1": {"a": 1}}, "rankings is empty"),
    ({"q1": ["a"]}, {"q1": {"a": 0}}, r"none of the 1 qrels queries has a relevant document"),
    ({"q1": ["a"]}, {"q1": {"a": 1}, "q2": {"b": 1}}, r"1 of the 2 queries .* e.g. \['q2'\]"),
    ({"q1": ["a", "b", "a"]}, {"q1": {"a": 1}}, r"query 'q1': the ranking repeats .*\['a'\]"),
    ({"q1": ["a"]}, {"q1": {"a": 1.5}}, r"qrels\['q1'\]\['a'\] = 1.5 is not an integer grade"),
])
def test_refuses_mismatched_inputs(rankings, qrels, match):
  with pytest.raises(ValueError, match=match):
    metrics.evaluate(rankings, qrels)


def test_bad_metric_names_and_missing_as_empty():
  for name in ("ndcg", "ndcg@0", "map@10", "NDCG@10"):
    with pytest.raises(ValueError, match="is not '<kind>@<k>'"):
      metrics.parse_metric(name)
  scores = metrics.evaluate({"q1": ["a"]}, {"q1": {"a": 1}, "q2": {"b": 1}},
                            ("hit@1",), per_query=True, missing_as_empty=True)
  assert scores.per_query == {"q1": {"hit@1": 1.0}, "q2": {"hit@1": 0.0}}
  assert scores.mean == {"hit@1": 0.5}


def test_matches_trec_eval():
  """pytrec_eval (trec_eval's C code) on random graded qrels and rankings."""
  pytrec_eval = pytest.importorskip("pytrec_eval")
  rng = np.random.default_rng(0)
  docs = [f"d{i}" for i in range(150)]
  qrels, rankings = {}, {}
  for q in range(60):
    judged = rng.choice(docs, size=int(rng.integers(1, 30)), replace=False)
    grades = rng.integers(0, 4, size=len(judged))
    grades[0] = max(grades[0], 1)  # at least one relevant document
    qrels[f"q{q}"] = {d: int(g) for d, g in zip(judged, grades)}
    rankings[f"q{q}"] = list(rng.permutation(docs)[:int(rng.integers(1, 150))])
  ours = metrics.evaluate(rankings, qrels, per_query=True).per_query

  def run(depth):  # distinct decreasing scores, so trec_eval keeps our order
    return {q: {d: float(len(r) - i) for i, d in enumerate(r[:depth])}
            for q, r in rankings.items()}

  full = pytrec_eval.RelevanceEvaluator(
      qrels, {"ndcg_cut.10", "recall.1,5,10,100", "P.1"}).evaluate(run(1000))
  top10 = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run(10))
  assert set(full) == set(ours)
  for q, mine in ours.items():
    assert mine["ndcg@10"] == pytest.approx(full[q]["ndcg_cut_10"], abs=1e-6)
    assert mine["hit@1"] == pytest.approx(full[q]["P_1"], abs=1e-9)
    for k in (1, 5, 10, 100):
      assert mine[f"recall@{k}"] == pytest.approx(full[q][f"recall_{k}"], abs=1e-9)
    assert mine["mrr@10"] == pytest.approx(top10[q]["recip_rank"], abs=1e-9)
