"""Retrieval metrics from rankings and graded relevance judgements (qrels).

Inputs are plain containers, so any retriever (BM25, MSA's router, generative retrieval) and any
loader can be scored the same way:

  rankings = {query_id: [doc_id, ...]}             best first, no repeats
  qrels    = {query_id: {doc_id: grade, ...}}      integer grades; grade <= 0 is non-relevant

Metrics are named `<kind>@<k>`:

  hit@k     1 if a relevant document is among the first k, else 0.
  recall@k  relevant documents among the first k / all relevant documents of the query.
  mrr@k     1 / rank of the first relevant document if it is within the first k, else 0.
  ndcg@k    DCG@k / IDCG@k with the trec_eval (and BEIR) definition: the gain of a document is
            its grade, the document at rank r (from 1) is discounted by log2(r + 1), and the
            ideal ranking sorts the query's judged grades in decreasing order.

Each metric is computed per query and averaged over the queries that have at least one relevant
document (queries whose judgements are all non-relevant carry no signal and are skipped, as
trec_eval skips queries without relevant documents). Documents without a judgement are
non-relevant.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from msa_jax.validation import is_int

DEFAULT_METRICS = ("hit@1", "recall@1", "recall@5", "recall@10", "recall@100", "mrr@10",
                   "ndcg@10")
METRIC_KINDS = ("hit", "recall", "mrr", "ndcg")

Rankings = Mapping[Hashable, Sequence[Hashable]]
Qrels = Mapping[Hashable, Mapping[Hashable, int]]

_METRIC_RE = re.compile(r"^(?P<kind>[a-z]+)@(?P<k>[0-9]+)$")


@dataclasses.dataclass(frozen=True)
class RetrievalScores:
  """Averaged (and optionally per-query) metric values.

  Attributes:
    mean: metric name -> mean over the evaluated queries.
    num_queries: how many queries were averaged (those with a relevant document).
    per_query: query id -> {metric name -> value}, when asked for; else None.
  """
  mean: dict[str, float]
  num_queries: int
  per_query: dict[Hashable, dict[str, float]] | None = None


def parse_metric(name: str) -> tuple[str, int]:
  """`"ndcg@10"` -> `("ndcg", 10)`.

  Raises:
    ValueError: a name that is not `<kind>@<k>` with a known kind and k >= 1.
  """
  match = _METRIC_RE.match(name) if isinstance(name, str) else None
  if match is None or match["kind"] not in METRIC_KINDS or int(match["k"]) < 1:
    raise ValueError(f"metric {name!r} is not '<kind>@<k>' with kind in {METRIC_KINDS} and "
                     "k >= 1 (e.g. 'ndcg@10')")
  return match["kind"], int(match["k"])


def _grade(query_id: Hashable, doc_id: Hashable, grade) -> int:
  if not is_int(grade):
    raise ValueError(f"qrels[{query_id!r}][{doc_id!r}] = {grade!r} is not an integer grade")
  return int(grade)


def relevant_grades(qrels: Qrels) -> dict[Hashable, dict[Hashable, int]]:
  """The positive judgements of each query (queries left with none are dropped).

  Raises:
    ValueError: empty qrels, a non-integer grade, or no query with a relevant document.
  """
  if not qrels:
    raise ValueError("qrels is empty: nothing to evaluate against")
  relevant = {}
  for query_id, judged in qrels.items():
    grades = {d: _grade(query_id, d, g) for d, g in judged.items()}
    positive = {d: g for d, g in grades.items() if g > 0}
    if positive:
      relevant[query_id] = positive
  if not relevant:
    raise ValueError(f"none of the {len(qrels)} qrels queries has a relevant document "
                     "(grade > 0)")
  return relevant


def dcg(gains: Sequence[float]) -> float:
  """Discounted cumulative gain of gains listed by rank: sum_r gain_r / log2(r + 1), r from 1."""
  return float(sum(g / math.log2(r + 2) for r, g in enumerate(gains)))


def query_metrics(ranking: Sequence[Hashable], relevant: Mapping[Hashable, int],
                  metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, float]:
  """Metric values of one query.

  Args:
    ranking: document ids, best first.
    relevant: doc id -> grade (> 0) of the query's relevant documents (at least one).
    metrics: metric names (see the module docstring).

  Raises:
    ValueError: no relevant document, a repeated document in the ranking, a bad metric name.
  """
  if not relevant:
    raise ValueError("a query needs at least one relevant document to be scored")
  if len(set(ranking)) != len(ranking):
    seen, repeats = set(), []
    for d in ranking:
      if d in seen:
        repeats.append(d)
      seen.add(d)
    raise ValueError(f"the ranking repeats documents {repeats[:5]}")
  gains = [float(relevant.get(d, 0)) for d in ranking]
  first_hit = next((r for r, g in enumerate(gains) if g > 0), None)  # 0-based rank
  ideal = sorted((float(g) for g in relevant.values()), reverse=True)
  values = {}
  for name in metrics:
    kind, k = parse_metric(name)
    if kind == "hit":
      values[name] = float(first_hit is not None and first_hit < k)
    elif kind == "recall":
      values[name] = sum(g > 0 for g in gains[:k]) / len(relevant)
    elif kind == "mrr":
      values[name] = 1.0 / (first_hit + 1) if first_hit is not None and first_hit < k else 0.0
    else:  # ndcg
      values[name] = dcg(gains[:k]) / dcg(ideal[:k])
  return values


def evaluate(rankings: Rankings, qrels: Qrels, metrics: Sequence[str] = DEFAULT_METRICS, *,
             per_query: bool = False, missing_as_empty: bool = False) -> RetrievalScores:
  """Scores rankings against graded qrels, averaged over queries with a relevant document.

  Args:
    rankings: query id -> document ids, best first (any length; each metric cuts at its k).
    qrels: query id -> {doc id -> integer grade}; grade <= 0 means non-relevant.
    metrics: metric names, e.g. `DEFAULT_METRICS`.
    per_query: also return every evaluated query's values.
    missing_as_empty: score an evaluated query that has no ranking as an empty ranking (all
      metrics 0) instead of raising.

  Returns:
    The averages (and per-query values) over the queries of `qrels` with a relevant document.
    Rankings of judged queries without a relevant document are ignored.

  Raises:
    ValueError: empty qrels or rankings, rankings for queries absent from qrels, an evaluated
      query without a ranking (unless `missing_as_empty`), a non-integer grade, a repeated
      document in a ranking, or a bad metric name.
  """
  if not metrics:
    raise ValueError("metrics is empty")
  for name in metrics:
    parse_metric(name)
  relevant = relevant_grades(qrels)
  if not rankings:
    raise ValueError("rankings is empty: no query was ranked")
  unknown = [q for q in rankings if q not in qrels]
  if unknown:
    raise ValueError(f"{len(unknown)} ranked queries are not in qrels, e.g. {unknown[:5]}")
  missing = [q for q in relevant if q not in rankings]
  if missing and not missing_as_empty:
    raise ValueError(f"{len(missing)} of the {len(relevant)} queries with relevant documents "
                     f"have no ranking, e.g. {missing[:5]} (pass missing_as_empty=True to score "
                     "them as empty rankings)")
  values = {}
  for query_id, grades in relevant.items():
    try:
      values[query_id] = query_metrics(rankings.get(query_id, ()), grades, metrics)
    except ValueError as e:
      raise ValueError(f"query {query_id!r}: {e}") from None
  mean = {name: float(np.mean([v[name] for v in values.values()])) for name in metrics}
  return RetrievalScores(mean=mean, num_queries=len(values),
                         per_query=values if per_query else None)
