"""Long-text segmentation: hand-made cases and hypothesis properties (budget, coverage, overlap)."""

import math
import re

import pytest
from hypothesis import given, settings, strategies as st

from msa_jax.data import segment
from msa_jax.data.segment import segment_text
from msa_jax.data.synthetic import SyntheticTokenizer

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None)


class CharTokenizer:
  """One token per 3 characters: joined texts count more than their parts (non-additive)."""

  def encode(self, text):
    return list(range(math.ceil(len(text) / 3)))


class SubwordTokenizer:
  """Words cut into 4-character pieces, each punctuation mark a token."""

  def encode(self, text):
    return [p for w in re.findall(r"\w+|[^\w\s]", text) for p in re.findall(r".{1,4}", w)]


TOKENIZERS = {"words": None, "chars": CharTokenizer(), "subwords": SubwordTokenizer()}

_PIECES = ["a", "bb", "ccc", "word", "abcdefghijklmnopq", ".", "!", "?", ",", "'", ")", "é",
           " ", "  ", "\t", "\n", "\n\n", "\n \n", ". ", "? ", ".\n"]
texts = st.lists(st.sampled_from(_PIECES), max_size=120).map("".join)


def _counter(name):
  return segment.token_counter(TOKENIZERS[name])


def _check_common(text, segs, budget, count):
  for s in segs:
    assert s.text == text[s.start:s.end]
    assert s.text and s.text == s.text.strip()
    assert s.num_tokens == count(s.text) <= budget
    assert s.start <= s.new_start < s.end


def _check_cover(text, spans):
  """Ordered disjoint spans with only whitespace around and between them."""
  pos = 0
  for start, end in spans:
    assert start >= pos and not text[pos:start].strip()
    pos = end
  assert not text[pos:].strip()


@PROPERTY
@given(text=texts, budget=st.integers(1, 12), tokenizer=st.sampled_from(sorted(TOKENIZERS)))
def test_budget_and_reconstruction_without_overlap(text, budget, tokenizer):
  segs = segment_text(text, budget, tokenizer=TOKENIZERS[tokenizer])
  _check_common(text, segs, budget, _counter(tokenizer))
  assert all(s.new_start == s.start for s in segs)
  _check_cover(text, [(s.start, s.end) for s in segs])
  # The text, modulo whitespace at the boundaries.
  assert "".join("".join(s.text for s in segs).split()) == "".join(text.split())
  assert segment_text(text, budget, tokenizer=TOKENIZERS[tokenizer]) == segs  # deterministic


@PROPERTY
@given(text=texts, budget=st.integers(2, 12), data=st.data(),
       tokenizer=st.sampled_from(sorted(TOKENIZERS)))
def test_overlap(text, budget, data, tokenizer):
  overlap = data.draw(st.integers(1, budget - 1))
  count = _counter(tokenizer)
  segs = segment_text(text, budget, tokenizer=TOKENIZERS[tokenizer], overlap=overlap)
  _check_common(text, segs, budget, count)
  # The new parts alone cover the text once.
  _check_cover(text, [(s.new_start, s.end) for s in segs])
  for prev, seg in zip(segs, segs[1:]):
    if seg.start < seg.new_start:  # repeated text: a tail of the previous segment
      assert prev.start <= seg.start < prev.end
      assert not text[prev.end:seg.new_start].strip()
      if tokenizer == "words":
        assert count(text[seg.start:prev.end]) <= overlap
  assert segment_text(text, budget, tokenizer=TOKENIZERS[tokenizer], overlap=overlap) == segs


def test_paragraphs_then_sentences_then_words():
  text = "One two three.\n\nFour five six seven.\n\nEight nine."
  # Each paragraph fits alone, two do not fit together: one segment per paragraph.
  assert [s.text for s in segment_text(text, 5)] == [
      "One two three.", "Four five six seven.", "Eight nine."]
  # Budget 6: paragraphs are packed whole; the second one is not split to fill the first.
  assert [s.text for s in segment_text(text, 6)] == [
      "One two three.", "Four five six seven.\n\nEight nine."]
  # A paragraph over the budget is cut at sentence ends (then its sentences pack greedily).
  para = "Alpha beta. Gamma delta epsilon! Zeta?\nEta theta iota kappa."
  assert [s.text for s in segment_text(para, 4)] == [
      "Alpha beta.", "Gamma delta epsilon! Zeta?", "Eta theta iota kappa."]
  # A sentence over the budget is cut between words.
  assert [s.text for s in segment_text("a b c d e f g.", 3)] == ["a b c", "d e f", "g."]
  # Spans index the original text; whitespace between segments is dropped.
  segs = segment_text("  x y.\n\n  z  ", 2)
  assert [(s.text, s.start, s.end) for s in segs] == [("x y.", 2, 6), ("z", 10, 11)]


def test_overlap_takes_whole_sentences_then_words():
  text = "S1 a. S2 b c. S3 d e f. S4 g."
  segs = segment_text(text, 7, overlap=5)
  # Whole trailing sentences of at most 5 words ("S1 a. S2 b c."), cut from the front to fit.
  assert [(s.text, text[s.new_start:s.end]) for s in segs] == [
      ("S1 a. S2 b c.", "S1 a. S2 b c."),
      ("S2 b c. S3 d e f.", "S3 d e f."),
      ("S3 d e f. S4 g.", "S4 g.")]
  # The last sentence is longer than the overlap: its trailing words are repeated.
  segs = segment_text("p q r s t u. v w.", 6, overlap=2)
  assert [s.text for s in segs] == ["p q r s t u.", "t u. v w."]


def test_tokenizer_counts_and_long_words():
  tok = SyntheticTokenizer()
  text = "w1 w2 w3\nk1 k2 v3\n\nw4 w5"
  segs = segment_text(text, 4, tokenizer=tok)
  assert [s.text for s in segs] == ["w1 w2 w3", "k1 k2 v3", "w4 w5"]
  assert [s.num_tokens for s in segs] == [3, 3, 2]
  # A word longer than the budget is cut into characters runs (3 characters per token here).
  segs = segment_text("abcdefghij klm", 2, tokenizer=CharTokenizer())
  assert [s.text for s in segs] == ["abcdef", "ghij", "klm"]


@pytest.mark.parametrize("text", ["", " ", "\n\n\t  \n"])
def test_empty_text(text):
  assert segment_text(text, 3) == []
  assert segment_text(text, 3, overlap=2) == []


def test_invalid_arguments():
  for budget in (0, -1, 2.5, True, None):
    with pytest.raises(ValueError, match=f"budget must be an integer >= 1, got {budget!r}"):
      segment_text("a b", budget)
  with pytest.raises(ValueError, match="overlap must be an integer >= 0, got -1"):
    segment_text("a b", 3, overlap=-1)
  with pytest.raises(ValueError, match="overlap=3 must be smaller than budget=3"):
    segment_text("a b", 3, overlap=3)
  with pytest.raises(ValueError, match="text must be a string, got list"):
    segment_text(["a"], 3)
  with pytest.raises(TypeError, match="has no encode"):
    segment_text("a", 3, tokenizer=object())

  class Wide:
    def encode(self, text):
      return [0, 0] * len(text)

  with pytest.raises(ValueError, match="character 'a' at offset 0 alone counts 2 tokens"):
    segment_text("a", 1, tokenizer=Wide())


def test_segments_containing():
  text = "a b. c d. e f."
  segs = segment_text(text, 4, overlap=2)
  assert [s.text for s in segs] == ["a b. c d.", "c d. e f."]
  assert segment.segments_containing(segs, text.index("c"), text.index("d.") + 2) == [0, 1]
  assert segment.segments_containing(segs, 0, 4) == [0]
  assert segment.segments_containing(segs, text.index("e"), len(text)) == [1]
  assert segment.segments_containing(segs, 0, len(text)) == []
