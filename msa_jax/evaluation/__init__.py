"""Evaluation: retrieval metrics (`metrics`), a BM25 baseline (`bm25`, needs bm25s) and
needle-in-a-haystack tasks over the synthetic vocabulary (`niah`)."""
