"""NIAH tasks over the synthetic vocabulary: layout, depths, sizes, determinism and scoring."""

import dataclasses

import numpy as np
import pytest

from msa_jax.data.synthetic import FACT, SyntheticTokenizer
from msa_jax.data import niah

TOK = SyntheticTokenizer(num_filler_words=32, num_key_words=16, num_value_words=8)


def _check_task(task):
  assert len(TOK.encode(task.text)) == task.memory_tokens
  assert all(s.num_tokens <= task.doc_tokens for s in task.segments)
  assert " ".join(task.documents).split() == task.text.split()  # no overlap: a partition
  assert [n.start for n in task.needles] == sorted(n.start for n in task.needles)
  for needle in task.needles:
    sentence = f"{FACT} {needle.key} {needle.value}"
    assert task.text[needle.start:needle.end] == sentence
    assert len(needle.docs) == 1 and sentence in task.documents[needle.docs[0]]
  for q in task.questions:
    assert q.query == f"<query> {q.key}"
    assert q.values == tuple(task.needles[i].value for i in q.needles)
    assert all(task.needles[i].key == q.key for i in q.needles)


@pytest.mark.parametrize("preset", sorted(niah.PRESETS))
def test_presets(preset):
  spec = niah.PRESETS[preset]
  task = niah.build_niah(TOK, preset, memory_tokens=600, doc_tokens=48, seed=3)
  _check_task(task)
  assert len(task.needles) == spec.num_keys * spec.num_values
  assert len({n.key for n in task.needles}) == spec.num_keys
  assert len(task.questions) == spec.num_queries
  for q in task.questions:
    assert len(q.values) == len(set(q.values)) == spec.num_values
  assert len(task.segments) >= 600 // 48


def test_positional_keys_draw_each_position_from_its_own_words():
  spec = dataclasses.replace(niah.PRESETS["multikey"], num_keys=40, key_length=2,
                             positional_keys=True)
  task = niah.build_niah(TOK, spec, memory_tokens=2000, doc_tokens=48, seed=1)
  _check_task(task)
  base = TOK.num_key_words // 2
  keys = {n.key for n in task.needles}
  assert len(keys) == 40
  for key in keys:
    first, second = (int(w[1:]) for w in key.split())
    assert 0 <= first < base <= second < 2 * base, key
  # Without the option the same seed draws its key words from the whole list at each position.
  plain = niah.build_niah(TOK, dataclasses.replace(spec, positional_keys=False),
                          memory_tokens=2000, doc_tokens=48, seed=1)
  words = [int(w[1:]) for n in plain.needles for w in n.key.split()[:1]]
  assert max(words) >= base


def test_deterministic():
  a = niah.build_niah(TOK, "multikey", memory_tokens=500, doc_tokens=40, seed=7)
  b = niah.build_niah(TOK, "multikey", memory_tokens=500, doc_tokens=40, seed=7)
  c = niah.build_niah(TOK, "multikey", memory_tokens=500, doc_tokens=40, seed=8)
  assert a == b
  assert a.text != c.text


def test_controlled_depths():
  spec = dataclasses.replace(niah.PRESETS["multikey"], num_keys=3)
  task = niah.build_niah(TOK, spec, memory_tokens=1000, doc_tokens=64, seed=0,
                         depths=[1.0, 0.0, 0.5])
  _check_task(task)
  first, middle, last = task.needles
  assert first.start == 0 and first.depth == 0.0
  assert last.end == len(task.text) and last.depth == 1.0
  filler = 1000 - 3 * spec.needle_tokens
  before = len([w for w in task.text[:middle.start].split() if w.startswith("w")])  # filler
  assert abs(before - filler / 2) <= spec.max_sentence / 2
  # Needles are listed key by key: the first key is asked, and it is the needle at depth 1.
  assert task.questions[0].key == last.key
  assert task.questions[0].needle_docs == ((len(task.segments) - 1,),)


def test_sizes_and_suite():
  assert niah.memory_sizes(300) == [300, 3000, 30000]
  assert niah.memory_sizes(5, num_scales=2, factor=4) == [5, 20]
  tasks = niah.build_suite(TOK, "single", base_tokens=300, doc_tokens=64, samples_per_size=2,
                           seed=1)
  assert [t.memory_tokens for t in tasks] == [300, 300, 3000, 3000, 30000, 30000]
  for task in tasks:
    _check_task(task)
  assert tasks[0].text != tasks[1].text
  again = niah.build_suite(TOK, "single", base_tokens=300, doc_tokens=64, num_scales=1,
                           samples_per_size=2, seed=1)
  assert again == tasks[:2]  # sizes and samples do not shift each other's seeds


def test_overlap_puts_needles_in_several_documents():
  task = niah.build_niah(TOK, "multivalue", memory_tokens=2000, doc_tokens=32, seed=5,
                         overlap=12)
  assert all(s.num_tokens <= 32 for s in task.segments)
  for needle in task.needles:
    assert needle.docs and all(needle.docs[i] + 1 == needle.docs[i + 1]
                               for i in range(len(needle.docs) - 1))
    for d in needle.docs:
      assert task.text[needle.start:needle.end] in task.documents[d]
  assert any(len(n.docs) > 1 for n in task.needles)


def test_answer_scores():
  assert niah.answer_scores("v3 <eos>", ["v3"]) == {"exact_match": 1.0, "value_recall": 1.0}
  assert niah.answer_scores("<answer> v31", ["v3"]) == {"exact_match": 0.0, "value_recall": 0.0}
  assert niah.answer_scores("v1 v3", ["v3", "v1"]) == {"exact_match": 1.0, "value_recall": 1.0}
  assert niah.answer_scores("v1 v3 v5", ["v3", "v1"]) == {"exact_match": 0.0,
                                                          "value_recall": 1.0}
  assert niah.answer_scores(["v1", "v2"], ["v1", "v3", "v4", "v2"])["value_recall"] == 0.5
  assert niah.answer_scores("v1 v2", ["v2 v1"]) == {"exact_match": 1.0, "value_recall": 0.0}
  with pytest.raises(ValueError, match="no value"):
    niah.answer_scores("v1", [])


def test_routing_and_task_scores():
  task = niah.build_niah(TOK, "multivalue", memory_tokens=800, doc_tokens=40, seed=2)
  (q,) = task.questions
  assert niah.routing_recall(q, q.doc_ids) == 1.0
  one = q.needle_docs[0][0]
  expected = sum(one in docs for docs in q.needle_docs) / len(q.needle_docs)
  assert niah.routing_recall(q, [one]) == expected
  assert niah.score_task(task, [q.answer], [list(q.doc_ids)]) == {
      "exact_match": 1.0, "value_recall": 1.0, "routing_recall": 1.0}
  assert niah.score_task(task, ["v0"]).keys() == {"exact_match", "value_recall"}
  with pytest.raises(ValueError, match="expected 1 answers"):
    niah.score_task(task, ["v0", "v1"])
  with pytest.raises(ValueError, match=r"routed document ids \[999\] are outside"):
    niah.score_task(task, routed_docs=[[999]])


@pytest.mark.parametrize("kwargs, match", [
    (dict(spec="nope"), "unknown NIAH preset 'nope'"),
    (dict(memory_tokens=7), "memory_tokens=7 cannot hold 4 needles of 4 tokens"),
    (dict(doc_tokens=3), "doc_tokens=3 cannot hold a 4-token needle"),
    (dict(depths=[0.5]), r"depths=\[0.5\] must be 4 numbers in \[0, 1\]"),
    (dict(depths=[0.1, 0.2, 0.3, 1.5]), "must be 4 numbers in"),
    (dict(spec=niah.NiahSpec(num_keys=1, num_queries=2)), "num_queries=2 exceeds"),
    (dict(spec=niah.NiahSpec(num_keys=300)), r"only 256 exist \(16 key words per position"),
    (dict(spec=niah.NiahSpec(num_keys=65, positional_keys=True)),
     r"only 64 exist \(8 key words per position \*\* key_length=2"),
    (dict(spec=niah.NiahSpec(num_values=9)), r"only 8 exist \(num_value_words=8"),
    (dict(spec=niah.NiahSpec(max_sentence=2)), r"empty ranges: sentence \[6, 2\]"),
    (dict(seed=-1), "seed must be an integer >= 0, got -1"),
])
def test_invalid_arguments(kwargs, match):
  args = dict(spec="multivalue", memory_tokens=200, doc_tokens=32, seed=0)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    niah.build_niah(TOK, args.pop("spec"), **args)


@pytest.mark.parametrize("preset", sorted(niah.PRESETS))
def test_streamed_niah_places_needles_in_computed_documents(preset):
  spec = niah.PRESETS[preset]
  task = niah.build_streamed_niah(TOK, preset, memory_tokens=64 * 500 + 10, doc_tokens=64,
                                  seed=4, id_digits=5, needle_span=12)
  assert task.num_docs == 500 and task.memory_tokens == 64 * 500
  assert len(task.needles) == spec.num_needles and len(task.questions) == spec.num_queries
  assert len({n.doc for n in task.needles}) == spec.num_needles  # one needle per document
  docs = task.document_tokens(0, 500)
  blocks = list(task.stream(block_docs=128))
  assert [lo for lo, _ in blocks] == [0, 128, 256, 384]
  np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), docs)
  fact = TOK.token_to_id(FACT)
  assert (docs == fact).sum() == spec.num_needles
  for n in task.needles:
    assert 8 <= n.offset and n.offset + spec.needle_tokens <= 8 + 12
    words = TOK.decode(docs[n.doc, n.offset:n.offset + spec.needle_tokens])
    assert words == f"{FACT} {n.key} {n.value}"
  ids = task.identifiers(np.arange(500))
  assert np.unique(ids).size == 500
  assert TOK.decode(docs[7, :8]) == "<doc> [ " + " ".join(str(ids[7]).zfill(5)) + " ]"
  for q in task.questions:
    assert q.values == tuple(task.needles[i].value for i in q.needles)
    assert q.needle_docs == tuple((task.needles[i].doc,) for i in q.needles)
  again = niah.build_streamed_niah(TOK, preset, memory_tokens=64 * 500, doc_tokens=64, seed=4,
                                   id_digits=5, needle_span=12)
  assert again.needles == task.needles
  np.testing.assert_array_equal(again.document_tokens(250, 260), docs[250:260])
  scores = niah.score_task(task, [q.answer for q in task.questions],
                           [list(docs) for docs in (q.doc_ids for q in task.questions)])
  assert scores == {"exact_match": 1.0, "value_recall": 1.0, "routing_recall": 1.0}


def test_streamed_niah_at_100m_tokens_without_the_haystack():
  task = niah.build_streamed_niah(TOK, "multikey", memory_tokens=100_000_000, doc_tokens=64,
                                  seed=0, id_digits=7, depths=[0.0, 0.5, 1.0, 1.0])
  assert task.num_docs == 1_562_500
  # Depth 1.0 twice: the second needle wraps to the next free document (0 is taken: 1).
  assert sorted(n.doc for n in task.needles) == [0, 1, 781_250, 1_562_499]
  last = task.document_tokens(1_562_490, 1_562_500)
  assert last.shape == (10, 64) and (last == TOK.token_to_id(FACT)).sum() >= 1
  with pytest.raises(ValueError, match="id_digits=2 gives only 100"):
    niah.build_streamed_niah(TOK, "single", memory_tokens=6464, doc_tokens=64, id_digits=2)
  with pytest.raises(ValueError, match="fewer than the 4 needles"):
    niah.build_streamed_niah(TOK, "multikey", memory_tokens=192, doc_tokens=64)
  with pytest.raises(ValueError, match=r"document range \[5, 5\)"):
    task.document_tokens(5, 5)
