"""Hard negatives for retrieval training: documents a lexical retriever ranks high for a query
but that the qrels do not judge relevant.

  negatives = hard_negatives.bm25_negatives(data, "train", depth=100)
  negatives["PLAIN-4"]  # corpus indices, BM25 order, judged documents removed

Retrieval models learn much more from such near misses than from random documents (which a
router separates after a few hundred steps). Mining uses the BM25 of `msa_jax.data.bm25`
over `title + text` of the whole corpus; it needs only the training split's queries and qrels,
so the test queries stay unseen. Any `RetrievalData` works (BEIR, NQ320k).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from msa_jax.data.retrieval import RetrievalData
from msa_jax.data import bm25 as bm25_lib


def bm25_negatives(data: RetrievalData, split: str, *, depth: int = 100,
                   query_ids: Sequence[str] | None = None, stemmer: str | None = "english"
                   ) -> dict[str, np.ndarray]:
  """{query id: corpus indices of its top-`depth` BM25 documents that the split does not
  judge for it (any grade), best first} for the split's queries (or `query_ids`).

  Raises:
    ValueError: depth < 1, or a query id the split does not judge.
  """
  if depth < 1:
    raise ValueError(f"depth={depth} must be >= 1")
  judged = data.split(split)
  qids = sorted(judged) if query_ids is None else list(query_ids)
  unknown = [q for q in qids if q not in judged]
  if unknown:
    raise ValueError(f"split {split!r} does not judge queries {unknown[:5]}")
  rankings = bm25_lib.bm25_rankings(data.corpus, data.queries, k=depth, query_ids=qids,
                                    stemmer=stemmer)
  index = data.doc_index
  return {q: np.array([index[d] for d in rankings.get(q, []) if d not in judged[q]], np.int64)
          for q in qids}


def sample_negatives(rng: np.random.Generator, pools: Sequence[np.ndarray], per_query: int,
                     num_docs: int, exclude: Sequence[Mapping[int, object] | set[int]]
                     ) -> np.ndarray:
  """[len(pools), per_query] negatives: drawn from each query's pool (without replacement
  while it lasts), topped up with uniform documents outside `exclude[i]` when the pool is
  short."""
  out = np.empty((len(pools), per_query), np.int64)
  for r, pool in enumerate(pools):
    take = rng.choice(pool, min(per_query, len(pool)), replace=False) if len(pool) else []
    row = list(take)
    while len(row) < per_query:
      d = int(rng.integers(num_docs))
      if d not in exclude[r]:
        row.append(d)
    out[r] = row
  return out
