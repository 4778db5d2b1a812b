"""BM25 baseline: exact deterministic top-k, a toy corpus, and BEIR NFCorpus (test split)."""

import csv
import json

import numpy as np
import pytest

from msa_jax.data import bm25
from msa_jax.evaluation import metrics
from tests.paths import SHARED

NFCORPUS = SHARED / "data" / "beir" / "nfcorpus"


def _read_nfcorpus():
  """corpus {id: {title, text}}, queries {id: text}, test qrels (H1's loader will replace this)."""
  corpus, queries, qrels = {}, {}, {}
  with open(NFCORPUS / "corpus.jsonl", encoding="utf-8") as f:
    for line in f:
      doc = json.loads(line)
      corpus[doc["_id"]] = {"title": doc.get("title", ""), "text": doc["text"]}
  with open(NFCORPUS / "queries.jsonl", encoding="utf-8") as f:
    for line in f:
      query = json.loads(line)
      queries[query["_id"]] = query["text"]
  with open(NFCORPUS / "qrels" / "test.tsv", encoding="utf-8") as f:
    rows = csv.reader(f, delimiter="\t")
    next(rows)  # header
    for query_id, doc_id, grade in rows:
      qrels.setdefault(query_id, {})[doc_id] = int(grade)
  return corpus, queries, qrels


@pytest.fixture(scope="module")
def nfcorpus():
  if not (NFCORPUS / "corpus.jsonl").is_file():
    pytest.skip(f"BEIR NFCorpus not found at {NFCORPUS}")
  return _read_nfcorpus()


def test_top_k_is_exact_with_ties():
  scores = np.array([0.0, 2.0, 1.0, 2.0, 1.0, 1.0, 3.0, 0.0])
  assert bm25.top_k(scores, 3).tolist() == [6, 1, 3]
  assert bm25.top_k(scores, 4).tolist() == [6, 1, 3, 2]
  assert bm25.top_k(scores, 5).tolist() == [6, 1, 3, 2, 4]
  assert bm25.top_k(scores, 100).tolist() == [6, 1, 3, 2, 4, 5]  # zero scores not retrieved
  assert bm25.top_k(np.zeros(4), 2).tolist() == []


def test_toy_corpus():
  corpus = {
      "cats": {"title": "Cats", "text": "Cats purr and chase mice."},
      "dogs": {"title": "Dogs", "text": "Dogs bark at the mailman."},
      "both": "Cats and dogs can live together.",
      "none": {"text": "Completely unrelated sentence about stars."},
  }
  retriever = bm25.BM25Retriever(corpus)
  assert retriever.search("why do cats purr", k=10)[0] == "cats"
  assert set(retriever.search("cats dogs", k=10)) == {"cats", "dogs", "both"}
  assert retriever.search("the of and", k=10) == []  # stopwords only
  assert retriever.search("zebra", k=10) == []  # unknown word
  assert retriever.query_terms("The cats, THE DOGS!") == ["cats", "dogs"]
  with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
    retriever.search("cats", k=0)
  with pytest.raises(ValueError, match="corpus is empty"):
    bm25.BM25Retriever({})
  with pytest.raises(ValueError, match="no string 'text'"):
    bm25.BM25Retriever({"a": {"title": "only a title"}})
  with pytest.raises(ValueError, match=r"1 query ids have no query text, e.g. \['q9'\]"):
    bm25.bm25_rankings(corpus, {"q1": "cats"}, query_ids=["q9"])
  assert bm25.document_text({"title": "T", "text": "x"}) == "T x"


def test_nfcorpus_bm25(nfcorpus):
  """Published BM25 (BEIR, Elasticsearch) nDCG@10 on NFCorpus test: 0.325."""
  corpus, queries, qrels = nfcorpus
  rankings = bm25.bm25_rankings(corpus, queries, k=100, query_ids=sorted(qrels))
  assert all(len(r) <= 100 for r in rankings.values())
  scores = metrics.evaluate(rankings, qrels)
  print("NFCorpus test BM25 (no stemmer):", scores.mean, scores.num_queries)
  assert scores.num_queries == 323
  assert scores.mean["ndcg@10"] == pytest.approx(0.3064, abs=2e-3)
  assert scores.mean["recall@100"] == pytest.approx(0.2358, abs=2e-3)
  assert scores.mean["mrr@10"] == pytest.approx(0.5186, abs=2e-3)
  # Deterministic: the same rankings again.
  again = bm25.bm25_rankings(corpus, queries, k=100, query_ids=sorted(qrels)[:40])
  assert all(again[q] == rankings[q] for q in again)


def test_nfcorpus_bm25_stemmed_matches_published(nfcorpus):
  pytest.importorskip("Stemmer", reason="PyStemmer (optional) gives the Snowball stemmer")
  corpus, queries, qrels = nfcorpus
  rankings = bm25.bm25_rankings(corpus, queries, k=100, query_ids=sorted(qrels),
                                stemmer="english")
  scores = metrics.evaluate(rankings, qrels)
  print("NFCorpus test BM25 (Snowball stemmer):", scores.mean)
  assert 0.32 <= scores.mean["ndcg@10"] <= 0.33
  assert scores.mean["ndcg@10"] == pytest.approx(0.3217, abs=2e-3)
  with pytest.raises(ValueError, match="no stemmer for language 'klingon'"):
    bm25.snowball_stemmer("klingon")
