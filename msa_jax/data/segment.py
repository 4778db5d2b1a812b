"""Splitting one long text into memory documents of at most `budget` tokens.

Tokens are counted by a tokenizer (`len(tokenizer.encode(text))`; pass one whose `encode` adds no
BOS, or the count includes it) or, without one, as whitespace-separated words. The text is cut
into pieces, largest first:

  1. paragraphs: separated by a blank line (a newline, optional spaces, a newline);
  2. sentences: a run of `.`, `!` or `?` (with closing quotes or brackets after it) followed by
     whitespace ends a sentence, and so does a line break;
  3. hard splits: a sentence longer than the budget is cut between words into the longest runs
     of at most `budget - overlap` tokens (room is left for the overlap), and a single word
     longer than that (only possible with a tokenizer) into the longest character runs that fit.

A paragraph that fits in the budget stays whole (it is one block); a longer one contributes its
sentences (and hard-split pieces) as separate blocks. Segments are then filled greedily, in text
order, with whole blocks. Block sizes are the sums of their pieces' token counts, and every
segment's own text is counted again: when a tokenizer counts a joined text higher than the sum
(subword merges across a boundary), pieces are moved to the next segment until it fits. So every
segment has at most `budget` tokens, counted on its exact text.

With `overlap > 0`, each segment after the first starts by repeating the end of the previous
segment: the longest run of its trailing pieces (whole sentences where possible) whose token
counts add up to at most `overlap`, or, when even the last piece is longer, the longest run of
that piece's trailing words that fits. Repeated text is dropped, from its start, where it would
push the segment over the budget. Every segment holds at least one piece not in the previous
one, so segmentation always ends.

A segment's text is the exact slice `text[start:end]` of the input (no whitespace at either end),
and the input is never rewritten: without overlap, the segments in order cover every
non-whitespace character once, and only whitespace lies between them. The result depends only on
the arguments.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from collections.abc import Callable
from typing import Any

from msa_jax.validation import int_at_least

_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s)|\n")
_WORD = re.compile(r"\S+")


@dataclasses.dataclass(frozen=True)
class Segment:
  """One memory document cut from a longer text.

  Attributes:
    text: `source[start:end]`.
    start: character offset of its first character in the source text.
    end: character offset just past its last character.
    new_start: the first character not repeated from the previous segment (== start without
      overlap); `source[new_start:end]` of all segments cover the text once.
    num_tokens: its token count (<= the budget).
  """
  text: str
  start: int
  end: int
  new_start: int
  num_tokens: int


@dataclasses.dataclass(frozen=True)
class _Piece:
  start: int
  end: int
  count: int


def token_counter(tokenizer: Any = None) -> Callable[[str], int]:
  """`len(tokenizer.encode(text))`, or the number of whitespace-separated words without one.

  Raises:
    TypeError: a tokenizer without an `encode` method.
  """
  if tokenizer is None:
    return lambda text: len(text.split())
  if not callable(getattr(tokenizer, "encode", None)):
    raise TypeError(f"tokenizer {tokenizer!r} has no encode(text) method")
  return lambda text: len(tokenizer.encode(text))


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
  """The span without leading and trailing whitespace (start == end when nothing is left)."""
  while start < end and text[start].isspace():
    start += 1
  while end > start and text[end - 1].isspace():
    end -= 1
  return start, end


def _cut(text: str, start: int, end: int, cuts: list[int]) -> list[tuple[int, int]]:
  """Non-empty stripped spans between consecutive cut positions."""
  bounds = [start, *cuts, end]
  spans = [_strip(text, a, b) for a, b in zip(bounds[:-1], bounds[1:])]
  return [(a, b) for a, b in spans if a < b]


def paragraph_spans(text: str) -> list[tuple[int, int]]:
  """Character spans of the paragraphs of `text` (blank-line separated, stripped)."""
  cuts = [p for m in _PARAGRAPH_BREAK.finditer(text) for p in (m.start(), m.end())]
  bounds = [0, *cuts, len(text)]
  spans = [_strip(text, bounds[i], bounds[i + 1]) for i in range(0, len(bounds), 2)]
  return [(a, b) for a, b in spans if a < b]


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
  """Character spans of the sentences of `text[start:end]` (stripped)."""
  end = len(text) if end is None else end
  cuts = [m.end() for m in _SENTENCE_END.finditer(text, start, end)]
  return _cut(text, start, end, cuts)


def _split_chars(text: str, start: int, end: int, budget: int,
                 count: Callable[[str], int]) -> list[_Piece]:
  """A word over budget, cut into the longest character runs that fit (binary search)."""
  pieces = []
  while start < end:
    first = count(text[start:start + 1])
    if first > budget:
      raise ValueError(f"character {text[start]!r} at offset {start} alone counts {first} "
                       f"tokens, more than the {budget} a hard split may hold (budget - overlap)")
    lo, hi = start + 1, end  # text[start:lo] fits; find the largest fitting end in [lo, hi]
    while lo < hi:
      mid = (lo + hi + 1) // 2
      if count(text[start:mid]) <= budget:
        lo = mid
      else:
        hi = mid - 1
    pieces.append(_Piece(start, lo, count(text[start:lo])))
    start = lo
  return pieces


def _split_words(text: str, start: int, end: int, budget: int,
                 count: Callable[[str], int]) -> list[_Piece]:
  """A sentence over budget, cut between words into the longest runs that fit."""
  words = []  # pieces of at most the budget: whole words, or parts of an over-long word
  for m in _WORD.finditer(text, start, end):
    c = count(m.group())
    if c <= budget:
      words.append(_Piece(m.start(), m.end(), c))
    else:
      words.extend(_split_chars(text, m.start(), m.end(), budget, count))
  pieces, i = [], 0
  while i < len(words):
    j, total = i + 1, words[i].count
    while j < len(words) and total + words[j].count <= budget:
      total += words[j].count
      j += 1
    while True:  # the joined run may count more than the sum; shrink until it fits
      c = count(text[words[i].start:words[j - 1].end])
      if c <= budget or j == i + 1:
        break
      j -= 1
    pieces.append(_Piece(words[i].start, words[j - 1].end, c))
    i = j
  return pieces


def _blocks(text: str, budget: int, split_budget: int,
            count: Callable[[str], int]) -> tuple[list[_Piece], list[int]]:
  """All pieces in text order, and for each the index just past the end of its block.

  Sentences over `budget` are hard-split into pieces of at most `split_budget` tokens.
  """
  pieces, block_end = [], []
  for p_start, p_end in paragraph_spans(text):
    para = []
    for s_start, s_end in sentence_spans(text, p_start, p_end):
      c = count(text[s_start:s_end])
      if c <= budget:
        para.append(_Piece(s_start, s_end, c))
      else:
        para.extend(_split_words(text, s_start, s_end, split_budget, count))
    first = len(pieces)
    pieces.extend(para)
    if sum(p.count for p in para) <= budget:
      block_end.extend([len(pieces)] * len(para))
    else:
      block_end.extend(range(first + 1, len(pieces) + 1))
  return pieces, block_end


def _overlap_tail(text: str, pieces: list[_Piece], overlap: int,
                  count: Callable[[str], int]) -> list[_Piece]:
  """The longest run of trailing pieces within `overlap` tokens, else of trailing words."""
  tail, total = [], 0
  for piece in reversed(pieces):
    if total + piece.count > overlap:
      break
    tail.insert(0, piece)
    total += piece.count
  if tail or not pieces:
    return tail
  last = pieces[-1]
  best = None
  for m in reversed(list(_WORD.finditer(text, last.start, last.end))):
    c = count(text[m.start():last.end])
    if c > overlap:
      break
    best = _Piece(m.start(), last.end, c)
  return [best] if best is not None else []


def segment_text(text: str, budget: int, *, tokenizer: Any = None,
                 overlap: int = 0) -> list[Segment]:
  """Splits `text` into segments of at most `budget` tokens (see the module docstring).

  Args:
    text: the long text.
    budget: the most tokens a segment may have.
    tokenizer: anything with `encode(text) -> ids`; None counts whitespace-separated words.
    overlap: tokens repeated from the end of the previous segment, in [0, budget).

  Returns:
    The segments in text order; [] for an empty or all-whitespace text.

  Raises:
    ValueError: `text` not a string, a budget below 1, an overlap outside [0, budget), or a
      single character that alone counts more than `budget - overlap` tokens.
  """
  if not isinstance(text, str):
    raise ValueError(f"text must be a string, got {type(text).__name__}")
  budget = int_at_least("budget", budget, 1)
  overlap = int_at_least("overlap", overlap, 0)
  if overlap >= budget:
    raise ValueError(f"overlap={overlap} must be smaller than budget={budget}")
  count = token_counter(tokenizer)
  pieces, block_end = _blocks(text, budget, budget - overlap, count)
  prefix = [0]
  for piece in pieces:
    prefix.append(prefix[-1] + piece.count)

  segments, i, repeat = [], 0, []
  while i < len(pieces):
    repeat = list(repeat)
    total, j = sum(p.count for p in repeat), i
    while j < len(pieces):
      size = prefix[block_end[j]] - prefix[j]
      while j == i and repeat and total + size > budget:  # new text has priority
        total -= repeat.pop(0).count
      if total + size > budget:
        break
      total, j = total + size, block_end[j]
    while True:  # count the exact text; a tokenizer may count the join above the sum
      start = repeat[0].start if repeat else pieces[i].start
      num_tokens = count(text[start:pieces[j - 1].end])
      if num_tokens <= budget:
        break
      if repeat:
        repeat.pop(0)
      elif j > i + 1:
        j -= 1
      else:  # a lone piece was counted on its own text when it was made
        raise AssertionError(f"piece {pieces[i]} counts {num_tokens} > budget={budget}")
    end = pieces[j - 1].end
    segments.append(Segment(text=text[start:end], start=start, end=end,
                            new_start=pieces[i].start, num_tokens=num_tokens))
    if overlap:
      repeat = _overlap_tail(text, repeat + pieces[i:j], overlap, count)
    i = j
  return segments


def segments_containing(segments: list[Segment], start: int, end: int) -> list[int]:
  """Indices of the segments that hold all of `source[start:end]` (several with overlap)."""
  first = bisect.bisect_left([s.end for s in segments], end)
  found = []
  for k in range(first, len(segments)):
    if segments[k].start > start:
      break
    found.append(k)
  return found
