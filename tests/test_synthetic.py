"""The synthetic memory task: tokenizer, corpus, training batches, iterator state, eval batches."""

import dataclasses

import jax
import numpy as np
import pytest

from msa_jax.data import synthetic
from msa_jax.data.synthetic import (BatchSpec, SyntheticBatchIterator, SyntheticBatchSource,
                                    SyntheticTokenizer, chunked_memory_batches, corpus_memory,
                                    generate_corpus, whole_memory_batch)
from msa_jax.model.batch import IGNORE, check_batch, prompt_positions

TOK = SyntheticTokenizer(num_filler_words=32, num_key_words=16, num_value_words=8)
SPEC = BatchSpec(batch_size=3, docs_per_sample=5, doc_tokens=40, prompt_tokens=16,
                 position_offset=4, include_value=True, seed=7)


@pytest.fixture(scope="module")
def corpus():
  return generate_corpus(TOK, num_docs=30, doc_length=36, facts_per_doc=3, key_length=2,
                         value_length=1, seed=3)


def _leaves(batch):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(batch)]


def _assert_same(a, b):
  la, lb = _leaves(a), _leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)


def test_tokenizer_roundtrip_and_vocab():
  assert TOK.vocab_size == 7 + 2 + 10 + 32 + 16 + 8
  assert TOK.pad_id == 0
  text = "<bos> <query> k3 k15 <answer> [ 0 4 2 7 ] v7 <eos>"
  ids = TOK.encode(text)
  assert TOK.decode(ids) == text
  assert TOK.decode(ids, skip_special_tokens=True) == "<query> k3 k15 <answer> [ 0 4 2 7 ] v7"
  assert max(ids) < TOK.vocab_size
  assert TOK.identifier_ids(42, 4) == TOK.encode("[ 0 0 4 2 ]")
  with pytest.raises(ValueError, match="'k99'"):
    TOK.encode("k99")
  with pytest.raises(ValueError, match="num_key_words must be an integer >= 1, got 0"):
    SyntheticTokenizer(num_key_words=0)


def test_corpus_is_deterministic(corpus):
  again = generate_corpus(TOK, num_docs=30, doc_length=36, facts_per_doc=3, seed=3)
  other = generate_corpus(TOK, num_docs=30, doc_length=36, facts_per_doc=3, seed=4)
  for name in ("doc_tokens", "identifiers", "keys", "values", "key_doc", "key_offset"):
    np.testing.assert_array_equal(getattr(corpus, name), getattr(again, name))
  assert not np.array_equal(corpus.doc_tokens, other.doc_tokens)


def test_corpus_keys_unique_and_held_by_their_document(corpus):
  assert corpus.num_questions == 90
  assert len({tuple(k) for k in corpus.keys.tolist()}) == 90
  assert len(set(corpus.identifiers.tolist())) == 30
  for q in range(corpus.num_questions):
    doc = corpus.doc_tokens[corpus.key_doc[q]]
    o = corpus.key_offset[q]
    fact = [TOK.fact_id, *corpus.keys[q], *corpus.values[q]]
    assert doc[o:o + len(fact)].tolist() == fact
    # The document starts with its identifier.
    assert doc[1:1 + corpus.id_digits + 2].tolist() == corpus.identifier_ids(corpus.key_doc[q])
  # One <fact> marker per fact, and key words appear nowhere else.
  assert ((corpus.doc_tokens == TOK.fact_id).sum(axis=1) == 3).all()
  is_key = (corpus.doc_tokens >= TOK.key0_id) & (corpus.doc_tokens < TOK.value0_id)
  assert is_key.sum() == corpus.keys.size


def test_training_batch_layout(corpus):
  source = SyntheticBatchSource(corpus, SPEC)
  assert len(source) == 30  # 90 questions // 3
  batch = source[5]
  check_batch(batch, vocab_size=TOK.vocab_size, need_route_labels=True)
  assert batch.shape == (3, 5, 40, 16)
  assert (batch.route_labels.sum(axis=1) == 1).all()
  np.testing.assert_array_equal(batch.doc_lengths, 36)
  assert (batch.doc_tokens[..., 36:] == TOK.pad_id).all()
  head = len(SPEC.head)
  np.testing.assert_array_equal(batch.memory_index, head)
  np.testing.assert_array_equal(batch.positions[0], prompt_positions(16, head, 4))
  for i, q in enumerate(source.questions(5)):
    # The positive slot holds the key's document; the others do not contain the key.
    slot = int(np.argmax(batch.route_labels[i]))
    docs = batch.doc_tokens[i, :, :36]
    np.testing.assert_array_equal(docs[slot], corpus.doc_tokens[corpus.key_doc[q]])
    assert len({tuple(d) for d in docs.tolist()}) == 5
    # Query mask on `<query> key`, labels exactly on the answer tokens.
    query = corpus.question_ids(q)
    assert batch.tokens[i][batch.query_mask[i]].tolist() == query
    answer = corpus.answer_ids(q, include_value=True)
    trained = batch.labels[i] != IGNORE
    assert batch.labels[i][trained].tolist() == answer
    start = head + len(query) + 1
    assert trained.tolist() == [start <= t < start + len(answer) for t in range(16)]
    assert batch.tokens[i, start - 1] == TOK.answer_id
    np.testing.assert_array_equal(batch.tokens[i, trained], batch.labels[i, trained])
    assert batch.token_mask[i].sum() == start + len(answer)


def test_positive_slot_is_shuffled(corpus):
  source = SyntheticBatchSource(corpus, SPEC)
  slots = np.concatenate([np.argmax(source[k].route_labels, axis=1) for k in range(30)])
  assert len(set(slots.tolist())) == 5


def test_batches_are_deterministic_and_epochs_reshuffle(corpus):
  a, b = SyntheticBatchSource(corpus, SPEC), SyntheticBatchSource(corpus, SPEC)
  for k in (0, 7, 31):
    _assert_same(a[k], b[k])
  epoch0 = np.concatenate([a.questions(k) for k in range(30)])
  epoch1 = np.concatenate([a.questions(k) for k in range(30, 60)])
  assert sorted(epoch0.tolist()) == sorted(epoch1.tolist()) == list(range(90))
  assert epoch0.tolist() != epoch1.tolist()
  c = SyntheticBatchSource(corpus, BatchSpec(**{**SPEC.__dict__, "seed": 8}))
  assert c.questions(0).tolist() != a.questions(0).tolist()


def test_iterator_state_resumes_exactly(corpus):
  full = SyntheticBatchIterator(corpus, SPEC)
  reference = [next(full) for _ in range(35)]  # crosses an epoch boundary
  it = SyntheticBatchIterator(corpus, SPEC)
  for _ in range(28):
    next(it)
  state = it.get_state()
  assert state == {"seed": 7, "epoch": 0, "index": 28}
  resumed = SyntheticBatchIterator(corpus, SPEC)
  resumed.set_state(dict(state))
  for k in range(28, 35):
    _assert_same(next(resumed), reference[k])
  assert resumed.get_state() == {"seed": 7, "epoch": 1, "index": 5}
  with pytest.raises(ValueError, match="seed=8"):
    resumed.set_state({"seed": 8, "epoch": 0, "index": 0})
  with pytest.raises(ValueError, match="index=30"):
    resumed.set_state({"seed": 7, "epoch": 0, "index": 30})
  finite = SyntheticBatchIterator(corpus, SPEC, num_epochs=1)
  assert sum(1 for _ in finite) == 30


def test_grain_dataset_matches_iterator(corpus):
  grain = pytest.importorskip("grain")
  del grain
  ds = synthetic.grain_dataset(corpus, SPEC)
  it = iter(ds)
  plain = SyntheticBatchIterator(corpus, SPEC)
  for _ in range(3):
    _assert_same(next(it), next(plain))
  state = it.get_state()
  again = iter(synthetic.grain_dataset(corpus, SPEC))
  again.set_state(state)
  _assert_same(next(again), next(plain))


def test_whole_memory_batch(corpus):
  questions = [0, 44, 89]
  ev = whole_memory_batch(corpus, questions, SPEC)
  check_batch(ev.batch, vocab_size=TOK.vocab_size, need_route_labels=True)
  assert ev.batch.shape == (3, 30, 40, 16)
  np.testing.assert_array_equal(ev.target_doc, corpus.key_doc[questions])
  np.testing.assert_array_equal(np.argmax(ev.batch.route_labels, axis=1), ev.target_doc)
  docs, lengths = corpus_memory(corpus, 40)
  np.testing.assert_array_equal(ev.batch.doc_tokens[1], docs)
  np.testing.assert_array_equal(ev.batch.doc_lengths[2], lengths)
  for i, q in enumerate(questions):
    s = ev.answer_start[i]
    assert ev.batch.tokens[i, s - 1] == TOK.answer_id
    assert ev.answer_tokens[i].tolist() == corpus.answer_ids(q, include_value=True)
    n = len(ev.answer_tokens[i])
    np.testing.assert_array_equal(ev.batch.tokens[i, s:s + n], ev.answer_tokens[i])
  chunks = list(chunked_memory_batches(corpus, questions, SPEC, chunk_docs=12))
  assert [c.batch.shape[1] for c in chunks] == [12, 12, 6]
  assert [c.doc_offset for c in chunks] == [0, 12, 24]
  merged = np.concatenate([np.asarray(c.batch.route_labels) for c in chunks], axis=1)
  np.testing.assert_array_equal(merged, ev.batch.route_labels)


def test_bad_parameters_raise(corpus):
  with pytest.raises(ValueError, match="num_docs must be an integer >= 1, got 0"):
    generate_corpus(TOK, num_docs=0)
  with pytest.raises(ValueError, match="doc_length=20 cannot hold facts_per_doc=4"):
    generate_corpus(TOK, num_docs=2, doc_length=20, facts_per_doc=4)
  with pytest.raises(ValueError, match="only 256 exist"):
    generate_corpus(TOK, num_docs=300, doc_length=16, key_length=2)
  with pytest.raises(ValueError, match="id_digits=1"):
    generate_corpus(TOK, num_docs=11, id_digits=1)
  with pytest.raises(ValueError, match="docs_per_sample=31"):
    SyntheticBatchSource(corpus, BatchSpec(docs_per_sample=31))
  with pytest.raises(ValueError, match="batch_size=91"):
    SyntheticBatchSource(corpus, BatchSpec(batch_size=91, docs_per_sample=2))
  with pytest.raises(ValueError, match="prompt_tokens=8"):
    SyntheticBatchSource(corpus, BatchSpec(docs_per_sample=2, prompt_tokens=8))
  with pytest.raises(ValueError, match="doc_tokens=10"):
    SyntheticBatchSource(corpus, BatchSpec(docs_per_sample=2, doc_tokens=10))
  with pytest.raises(ValueError, match="question 90"):
    whole_memory_batch(corpus, [90], SPEC)
  with pytest.raises(ValueError, match="chunk_docs must be an integer >= 1, got 0"):
    list(chunked_memory_batches(corpus, [0], SPEC, 0))


def test_process_rows_concatenate_to_the_global_batch(corpus):
  spec = BatchSpec(**{**SPEC.__dict__, "batch_size": 6})
  full = SyntheticBatchIterator(corpus, spec)
  parts = [SyntheticBatchIterator(corpus, spec, process_index=p, process_count=3)
           for p in range(3)]
  for _ in range(17):  # crosses an epoch boundary (15 batches per epoch)
    whole, local = next(full), [next(it) for it in parts]
    assert local[0].tokens.shape[0] == 2
    for name, x in vars(whole).items():
      if x is not None:
        np.testing.assert_array_equal(np.concatenate([vars(b)[name] for b in local]), x)
  assert {str(it.get_state()) for it in parts} == {str(full.get_state())}
  ds = synthetic.grain_dataset(corpus, spec, process_index=2, process_count=3)
  _assert_same(ds[16], local[2])
  assert synthetic.process_rows(8, 1, 4) == slice(2, 4)
  with pytest.raises(ValueError, match="global batch size 6 is not divisible by the 4 processes"):
    SyntheticBatchIterator(corpus, spec, process_index=0, process_count=4)
  with pytest.raises(ValueError, match="process_index=3 must be < process_count=3"):
    synthetic.process_rows(6, 3, 3)


def test_global_positions_put_documents_and_prompt_on_one_axis(corpus):
  spec = BatchSpec(batch_size=2, docs_per_sample=3, position_offset=2)
  doc_wise = synthetic.build_batch(corpus, [0, 1], spec, np.random.default_rng(0))
  glob = synthetic.build_batch(corpus, [0, 1], BatchSpec(**{**spec.__dict__,
                                                          "global_positions": True}),
                               np.random.default_rng(0))
  assert doc_wise.doc_positions is None
  _assert_same(doc_wise.replace(positions=0), glob.replace(positions=0, doc_positions=None))
  length, g, t = corpus.doc_length, glob.doc_tokens.shape[2], glob.tokens.shape[1]
  want = 1 + np.arange(3)[:, None] * length + np.arange(g)  # after the 1-token head
  np.testing.assert_array_equal(glob.doc_positions, np.broadcast_to(want, (2, 3, g)))
  np.testing.assert_array_equal(glob.positions[0], prompt_positions(t, 1, 3 * length))
  check_batch(glob, vocab_size=corpus.tokenizer.vocab_size, need_route_labels=True)


def test_fact_span_keeps_facts_near_the_identifier():
  tok = synthetic.SyntheticTokenizer()
  c = synthetic.generate_corpus(tok, num_docs=50, doc_length=64, id_digits=4, fact_span=9,
                                seed=3)
  prefix = 3 + 4
  assert (c.key_offset >= prefix).all() and (c.key_offset + 4 <= prefix + 9).all()
  anywhere = synthetic.generate_corpus(tok, num_docs=50, doc_length=64, id_digits=4, seed=3)
  assert anywhere.key_offset.max() > prefix + 9
  with pytest.raises(ValueError, match="fact_span=3"):
    synthetic.generate_corpus(tok, num_docs=5, doc_length=64, id_digits=4, fact_span=3)


def test_id_after_fact_puts_the_identifier_after_the_last_fact():
  """`id_after_fact`: `<doc> filler <fact> key value [ id ] filler`, with the same documents'
  keys, values, identifiers and filler words as the default layout, which stays
  `<doc> [ id ] filler <fact> ...`."""
  tok = SyntheticTokenizer(num_filler_words=64, num_key_words=384, num_value_words=32)
  for facts, span in ((1, 8), (2, None), (3, 20)):
    spec = synthetic.CorpusSpec(doc_length=64, facts_per_doc=facts, id_digits=5,
                                fact_span=span, positional_keys=True, seed=2)
    after_spec = dataclasses.replace(spec, id_after_fact=True)
    old = synthetic.document_range(tok, spec, 10, 210)
    new = synthetic.document_range(tok, after_spec, 10, 210)
    assert after_spec.prefix_length == 1 and spec.prefix_length == 8
    for name in ("identifiers", "keys", "values", "key_doc"):
      np.testing.assert_array_equal(getattr(old, name), getattr(new, name), err_msg=name)
    assert len(set(new.identifiers.tolist())) == 200
    assert len({tuple(k) for k in new.keys.tolist()}) == 200 * facts
    fact_len, id_len = 1 + 2 + 1, 2 + 5
    # Old layout: the identifier opens the document (unchanged by default).
    assert (old.doc_tokens[:, 0] == tok.doc_id).all()
    for m in range(200):
      assert old.doc_tokens[m, 1:1 + id_len].tolist() == old.identifier_ids(m)
    offsets = new.key_offset.reshape(200, facts)
    np.testing.assert_array_equal(offsets[:, 1:] - offsets[:, :-1] >= fact_len, True)
    for m in range(200):
      row = new.doc_tokens[m]
      assert row[0] == tok.doc_id
      for j in range(facts):
        q = m * facts + j
        o = offsets[m, j]
        assert row[o:o + fact_len].tolist() == [tok.fact_id, *new.keys[q], *new.values[q]]
      end = offsets[m, -1] + fact_len
      assert row[end:end + id_len].tolist() == new.identifier_ids(m)
      # Exactly one identifier, right after the last fact.
      assert (row == tok.id_open_id).sum() == 1 and (row == tok.id_close_id).sum() == 1
      # The filler words are the default layout's, in the same order.
      is_filler = lambda r: r[(r >= tok.filler0_id) & (r < tok.filler0_id
                                                          + tok.num_filler_words)].tolist()
      assert is_filler(row) == is_filler(old.doc_tokens[m])
      assert len(is_filler(row)) == 64 - 1 - id_len - facts * fact_len
    if span is not None:  # facts within the span after `<doc>`, the identifier right after
      assert (offsets >= 1).all() and (offsets[:, -1] + fact_len <= 1 + span).all()
  # The demo's layout: the fact and the identifier fit in the first 16-token chunk.
  spec = synthetic.CorpusSpec(doc_length=64, id_digits=5, fact_span=8, positional_keys=True,
                              id_after_fact=True)
  c = synthetic.document_range(tok, spec, 0, 500)
  assert (c.key_offset + 4 + 7 <= 16).all()
  with pytest.raises(ValueError, match="doc_length=11 cannot hold"):
    synthetic.document_range(tok, dataclasses.replace(spec, doc_length=11, fact_span=None),
                             0, 2)


def test_keyed_permutation_is_a_bijection():
  for size in (1, 2, 7, 1000, 4097):
    image = synthetic.keyed_permutation(np.arange(size), size, seed=5, stream=1)
    assert sorted(image.tolist()) == list(range(size))
  a = synthetic.keyed_permutation(np.arange(1000), 1000, seed=5, stream=1)
  assert not np.array_equal(a, synthetic.keyed_permutation(np.arange(1000), 1000, 6, 1))
  assert not np.array_equal(a, np.arange(1000))  # not the identity
  with pytest.raises(ValueError, match=r"\[0, 10\)"):
    synthetic.keyed_permutation([10], 10, 0, 0)


def test_documents_are_computed_independently_of_each_other():
  spec = synthetic.CorpusSpec(doc_length=40, facts_per_doc=2, key_length=3, id_digits=7,
                              seed=11)
  tok = SyntheticTokenizer(num_filler_words=32, num_key_words=64, num_value_words=8)
  whole = synthetic.document_range(tok, spec, 100, 160)
  blocks = list(synthetic.stream_documents(tok, spec, 100, 160, block_docs=25))
  assert [b.num_docs for b in blocks] == [25, 25, 10]
  assert [int(b.doc_index[0]) for b in blocks] == [100, 125, 150]
  for name in ("doc_tokens", "identifiers", "keys", "values", "key_offset"):
    np.testing.assert_array_equal(np.concatenate([getattr(b, name) for b in blocks]),
                                  getattr(whole, name))
  picked = synthetic.documents(tok, spec, [159, 100, 130])
  np.testing.assert_array_equal(picked.doc_tokens, whole.doc_tokens[[59, 0, 30]])
  np.testing.assert_array_equal(picked.keys[0:2], whole.keys[118:120])
  np.testing.assert_array_equal(picked.keys[4:6], whole.keys[60:62])
  assert picked.answer_ids(2) == whole.answer_ids(0)  # question 2: document 100's first
  # A far document (the last that exists) without building the ones before it.
  far = synthetic.documents(tok, spec, [131_071])  # the last of 64 ** 3 // 2
  assert far.doc_tokens[0, 1:10].tolist() == far.identifier_ids(0)
  # generate_corpus is a range of the same sequence.
  gen = synthetic.generate_corpus(tok, num_docs=60, doc_length=40, facts_per_doc=2,
                                  key_length=3, id_digits=7, seed=11, first_doc=100)
  np.testing.assert_array_equal(gen.doc_tokens, whole.doc_tokens)
  with pytest.raises(ValueError, match="id_digits=2 gives 100 identifiers"):
    synthetic.documents(tok, synthetic.CorpusSpec(id_digits=2), [100])


def test_keys_and_identifiers_unique_at_100m_tokens():
  """The 1,562,500 documents of a 100M-token memory (64 tokens each) of the scale configs'
  vocabulary: computed without generating the documents."""
  from configs import demo  # pylint: disable=import-outside-toplevel
  d = demo.get_config("scale").data
  tok = SyntheticTokenizer(d.num_filler_words, d.num_key_words, d.num_value_words)
  spec = synthetic.CorpusSpec(doc_length=d.doc_length, facts_per_doc=d.facts_per_doc,
                              key_length=d.key_length, id_digits=d.id_digits, seed=d.seed,
                              positional_keys=d.get("positional_keys", False))
  num_docs = 100_000_000 // 64
  assert spec.max_docs(tok) >= num_docs
  docs = np.arange(num_docs)
  ids = synthetic.document_identifiers(spec, docs)
  assert ids.min() >= 0 and ids.max() < 10 ** d.id_digits
  assert np.unique(ids).size == num_docs
  codes = synthetic.fact_key_codes(tok, spec, np.arange(num_docs * d.facts_per_doc))
  assert np.unique(codes).size == num_docs * d.facts_per_doc
  # The codes are the keys actually written: a sample of documents holds exactly them.
  sample = synthetic.documents(tok, spec, docs[::100_000])
  np.testing.assert_array_equal(
      sample.keys,
      synthetic.key_words(tok, codes[::100_000], d.key_length,
                          d.get("positional_keys", False)))
  np.testing.assert_array_equal(sample.identifiers, ids[::100_000])


def test_positional_keys_have_unique_bags_of_words():
  """Each key position draws from its own block of key words: all keys of the vocabulary exist,
  once each, and no two keys hold the same words in another order."""
  tok = SyntheticTokenizer(num_filler_words=16, num_key_words=12, num_value_words=4)
  spec = synthetic.CorpusSpec(doc_length=24, key_length=2, id_digits=3, positional_keys=True,
                              seed=5)
  assert spec.num_keys(tok) == 36 and spec.max_docs(tok) == 36
  corpus = synthetic.document_range(tok, spec, 0, 36)
  words = corpus.keys - tok.key0_id
  assert words[:, 0].min() >= 0 and words[:, 0].max() < 6  # first position: k0..k5
  assert words[:, 1].min() >= 6 and words[:, 1].max() < 12  # second position: k6..k11
  assert len({tuple(k) for k in words.tolist()}) == 36
  assert len({frozenset(k) for k in words.tolist()}) == 36
  # The documents hold their keys; the keys are the ones key_words writes.
  for q in range(corpus.num_questions):
    off = corpus.key_offset[q]
    assert corpus.doc_tokens[corpus.key_doc[q], off + 1:off + 3].tolist() == (
        corpus.keys[q].tolist())
  codes = synthetic.fact_key_codes(tok, spec, np.arange(36))
  np.testing.assert_array_equal(corpus.keys,
                                synthetic.key_words(tok, codes, 2, positional=True))
  with pytest.raises(ValueError, match="only 36 exist"):
    synthetic.document_range(tok, spec, 0, 37)
  with pytest.raises(ValueError, match="positional_keys needs num_key_words >= key_length"):
    synthetic.documents(SyntheticTokenizer(num_key_words=2), dataclasses.replace(
        spec, key_length=3, doc_length=30), [0])
  # Without positional_keys the same vocabulary holds 12 ** 2 keys.
  assert dataclasses.replace(spec, positional_keys=False).num_keys(tok) == 144


def test_hard_negatives_share_key_words_with_the_positive():
  tok = SyntheticTokenizer(num_filler_words=16, num_key_words=8, num_value_words=4)
  corpus = generate_corpus(tok, num_docs=300, doc_length=24, key_length=3, id_digits=3, seed=2)
  spec = BatchSpec(batch_size=4, docs_per_sample=6, hard_negatives=3, seed=1)
  batch = SyntheticBatchSource(corpus, spec)[0]
  questions = SyntheticBatchSource(corpus, spec).questions(0)
  key_at = {int(d): corpus.keys[q] for q, d in enumerate(corpus.key_doc)}
  for i, q in enumerate(questions):
    key = corpus.keys[q]
    docs = [int(np.flatnonzero((corpus.doc_tokens == row).all(1))[0])
            for row in batch.doc_tokens[i, :, :24]]
    assert len(set(docs)) == 6 and docs[int(np.argmax(batch.route_labels[i]))] == corpus.key_doc[q]
    def common(other):  # the question's key words found anywhere in `other`
      return int(np.isin(key, other).sum())
    shared = sorted((common(key_at[d]) for d in docs if d != corpus.key_doc[q]), reverse=True)
    # The 3 hard negatives share as many key words as the corpus' 3 nearest other keys.
    best = sorted((common(corpus.keys[j]) for j in range(corpus.num_questions)
                   if corpus.key_doc[j] != corpus.key_doc[q]), reverse=True)[:3]
    assert shared[:3] == best
  # The curriculum: random negatives before batch `hard_negatives_after`, hard ones from it.
  late = BatchSpec(**{**spec.__dict__, "hard_negatives_after": 5})
  plain = BatchSpec(**{**spec.__dict__, "hard_negatives": 0})
  _assert_same(SyntheticBatchSource(corpus, late)[4], SyntheticBatchSource(corpus, plain)[4])
  _assert_same(SyntheticBatchSource(corpus, late)[5], SyntheticBatchSource(corpus, spec)[5])
  assert not np.array_equal(SyntheticBatchSource(corpus, plain)[5].doc_tokens,
                            SyntheticBatchSource(corpus, spec)[5].doc_tokens)
  with pytest.raises(ValueError, match="hard_negatives=6 exceeds"):
    SyntheticBatchSource(corpus, BatchSpec(docs_per_sample=6, hard_negatives=6))


def test_value_only_answers(corpus):
  spec = BatchSpec(batch_size=2, docs_per_sample=3, include_value=True, include_identifier=False)
  batch = synthetic.build_batch(corpus, [4, 7], spec, np.random.default_rng(0))
  check_batch(batch, vocab_size=TOK.vocab_size, need_route_labels=True)
  for i, q in enumerate([4, 7]):
    trained = batch.labels[i] != IGNORE
    assert batch.labels[i][trained].tolist() == [*corpus.values[q], TOK.eos_id]
    assert batch.tokens[i][np.flatnonzero(trained)[0] - 1] == TOK.answer_id
  assert batch.tokens.shape[1] == 1 + 3 + 1 + 1 + 1  # head, query, <answer>, value, <eos>
  with pytest.raises(ValueError, match="include_identifier=False needs include_value=True"):
    synthetic.build_batch(corpus, [4], BatchSpec(docs_per_sample=3, include_identifier=False),
                          np.random.default_rng(0))
  with pytest.raises(ValueError, match="needs the identifier, the value or both"):
    corpus.answer_ids(0, include_value=False, include_identifier=False)
