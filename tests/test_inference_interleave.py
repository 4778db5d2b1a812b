"""Memory Interleave (`msa_jax.inference.interleave`) with a tiny random MSA model and a real bank.

A random model rarely writes identifiers, so the control-flow tests script the generated token
ids (overriding `MemoryInterleave.generate_tokens` only, after the real engine has routed and
decoded the round); prompts, routing and bank look-ups stay real.
"""

import jax
import numpy as np
import pytest

from msa_jax.data.synthetic import SyntheticTokenizer
from msa_jax.inference import engine as engine_lib
from msa_jax.memory import encode as encode_lib
from msa_jax.inference import interleave as il
from msa_jax.model import MSAConfig, MSATransformer, get_preset
from tests.model_params import eager_init

TOK = SyntheticTokenizer(num_filler_words=8, num_key_words=8, num_value_words=4)
CFG = get_preset("tiny").replace(vocab_size=TOK.vocab_size, embed_dim=32, mlp_dim=64,
                                 num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8)
MSA = MSAConfig(top_k=3, chunk_size=4, router_layers="all")
NUM_DOCS = 8


def _doc_text(m: int) -> str:
  rng = np.random.default_rng(m)
  words = [f"w{int(i)}" for i in rng.integers(0, 8, size=5 + m)]
  return " ".join(["<fact>", f"k{m}", f"v{m % 4}"] + words)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
  params = eager_init(MSATransformer(CFG, MSA), jax.random.key(0))
  path = tmp_path_factory.mktemp("interleave") / "bank"
  bank = encode_lib.create_bank(path, CFG, MSA, params)
  texts = [_doc_text(m) for m in range(NUM_DOCS)]
  texts[6] = None  # stored without text
  tokens = [TOK.encode(_doc_text(m)) for m in range(NUM_DOCS)]
  encode_lib.encode_corpus(bank, CFG, MSA, params, [f"{m:04d}" for m in range(NUM_DOCS)],
                           tokens, texts, max_tokens=16, batch_size=4, progress=None)
  return engine_lib.MSAEngine(CFG, MSA, params, bank)


CONFIG = il.InterleaveConfig(max_rounds=3, max_new_tokens=16, question_prefix="<query> ",
                             answer_marker="<answer>")


class Scripted(il.MemoryInterleave):
  """Generates with the real engine, then replaces each row's tokens by a scripted reply.

  script: question text -> one reply per round (words; "" is an immediate EOS).
  """

  def __init__(self, engine, config, script):
    super().__init__(engine, TOK, config)
    self.script = script
    self.calls = []  # (prompts, prefill output, question of each row)

  def generate_tokens(self, prompts, sampling, rng):
    tokens, lengths, pre = super().generate_tokens(prompts, sampling, rng)
    tokens, lengths = np.array(tokens), np.array(lengths)
    rows = []
    for r in range(tokens.shape[0]):
      query = np.asarray(prompts.tokens)[r][np.asarray(prompts.query_mask)[r]].tolist()
      question = next(q for q in self.script
                      if query[:len(TOK.encode("<query> " + q))] == TOK.encode("<query> " + q))
      rows.append(question)
      reply = TOK.encode(self.script[question][sum(question in c[2] for c in self.calls)])
      reply = (reply + [TOK.eos_id])[:sampling.max_new_tokens]
      tokens[r] = sampling.pad_id
      tokens[r, :len(reply)] = reply
      lengths[r] = len(reply)
    self.calls.append((prompts, pre, rows))
    return tokens, lengths, pre


@pytest.mark.slow
def test_random_model_runs_to_a_defined_status(engine):
  results = il.MemoryInterleave(engine, TOK, CONFIG).run(["k1 k2", "k3", "k5 k0 k7"])
  assert len(results) == 3
  for res in results:
    assert res.status in il.STATUSES and 1 <= len(res.rounds) <= CONFIG.max_rounds
    for rnd in res.rounds:
      assert sorted(rnd.routed) == list(MSA.arch.router_layer_ids(CFG.num_layers))
      for routed in rnd.routed.values():
        assert len(routed) == MSA.arch.top_k
        assert all(d in engine.bank.doc_ids for d, _ in routed)
        scores = [s for _, s in routed]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.slow
def test_scripted_rounds_known_unknown_repeated_empty_answer(engine):
  script = {
      "k1 k2": ["[ 0 0 0 3 ]", "[ 0 0 0 5 ] [ 9 9 9 9 ]", "v1 v2"],
      "k3": ["[ 9 9 9 9 ]"],
      "k4": ["[ 0 0 0 3 ]", "[ 0 0 0 3 ]"],
      "k5": [""],
      "k6": ["[ 0 0 0 6 ]"],
  }
  runner = Scripted(engine, CONFIG, script)
  res = dict(zip(script, runner.run(list(script))))
  # Rounds in lockstep; finished questions drop out.
  assert [c[2] for c in runner.calls] == [list(script), ["k1 k2", "k4"], ["k1 k2"]]

  a = res["k1 k2"]
  assert (a.status, a.answer, a.doc_ids) == ("answered", "v1 v2", ["0003", "0005"])
  assert [r.kind for r in a.rounds] == ["ids", "ids", "answer"]
  assert a.rounds[0].text == "[ 0 0 0 3 ]" and a.rounds[0].stopped
  assert a.rounds[1].doc_ids == ["0005"] and a.rounds[1].unknown == ["9999"]
  assert res["k3"].status == "unknown_id" and res["k3"].rounds[0].unknown == ["9999"]
  assert res["k4"].status == "repeated_id" and res["k4"].rounds[1].repeated == ["0003"]
  assert (res["k5"].status, res["k5"].answer) == ("empty", "")
  assert res["k6"].status == "no_text" and res["k6"].rounds[0].no_text == ["0006"]

  # Round 2's routing query is the question plus document 0003's original text.
  prompts, pre, rows = runner.calls[1]
  row = rows.index("k1 k2")
  query = np.asarray(prompts.tokens)[row][np.asarray(prompts.query_mask)[row]].tolist()
  assert query == TOK.encode("<query> k1 k2") + TOK.encode("\n" + _doc_text(3))
  assert TOK.decode(np.asarray(prompts.tokens)[row][np.asarray(prompts.token_mask)[row]]
                    ).endswith("<answer>")
  # Round 3 appends document 0005 after 0003.
  prompts3 = runner.calls[2][0]
  query3 = np.asarray(prompts3.tokens)[0][np.asarray(prompts3.query_mask)[0]].tolist()
  assert query3 == query + TOK.encode(_doc_text(5))
  # The recorded routing is the engine's routing of that very prompt.
  direct = engine.prefill(prompts)
  for layer, mem in direct.memory.items():
    want = engine_lib.routed_doc_ids(engine.bank, mem)[row]
    assert [d for d, _ in a.rounds[1].routed[layer]] == want
    np.testing.assert_allclose([s for _, s in a.rounds[1].routed[layer]],
                               np.asarray(mem.scores)[row], atol=1e-6)


@pytest.mark.slow
def test_round_limit_and_index_identifiers(engine):
  script = {"k1": ["[ 0 0 0 1 ]", "[ 0 0 0 2 ]", "v0"]}
  cfg2 = il.InterleaveConfig(max_rounds=2, max_new_tokens=8, question_prefix="<query> ")
  res = Scripted(engine, cfg2, script).run(["k1"])[0]
  assert (res.status, res.answer, res.doc_ids) == ("max_rounds", None, ["0001", "0002"])
  # BEIR-style: the number is a position in bank order; out of range is unknown.
  by_index = il.InterleaveConfig(id_kind="index", max_new_tokens=8, question_prefix="<query> ")
  res = Scripted(engine, by_index, {"k2": ["[ 4 ] [ 2 0 ]", "v1"]}).run(["k2"])[0]
  assert res.status == "answered" and res.doc_ids == ["0004"]
  assert res.rounds[0].unknown == ["20"]


@pytest.mark.slow
def test_parsing_and_normalisation(engine):
  cfg = il.InterleaveConfig()
  assert il.parse_identifiers("[ 0 4 2 7 ]", cfg) == ["[ 0 4 2 7 ]"]
  assert il.parse_identifiers("[12], [7];", cfg) == ["[12]", "[7]"]
  assert il.parse_identifiers("[12] the answer", cfg) is None
  assert il.parse_identifiers(" , ", cfg) == []
  assert il.normalise_identifier("[ 0 4 2 7 ]", cfg) == "0427"
  assert il.resolve_identifier("[ 0 0 0 7 ]", engine.bank, cfg) == "0007"
  assert il.resolve_identifier("[ 0 0 7 ]", engine.bank, cfg) is None
  assert il.resolve_identifier("[7]", engine.bank, il.InterleaveConfig(id_format="{:0>4}")) \
      == "0007"
  assert il.resolve_identifier("[7]", engine.bank, il.InterleaveConfig(id_kind="index")) \
      == "0007"


@pytest.mark.slow
def test_bad_settings_are_named(engine):
  with pytest.raises(ValueError, match="max_rounds=0"):
    il.InterleaveConfig(max_rounds=0)
  with pytest.raises(ValueError, match="id_kind='name'"):
    il.InterleaveConfig(id_kind="name")
  with pytest.raises(ValueError, match="needs a group"):
    il.InterleaveConfig(id_pattern=r"\[\d+\]")
  with pytest.raises(ValueError, match="delimiter 'SEP'"):
    il.MemoryInterleave(engine, TOK, il.InterleaveConfig(delimiters=("SEP",)))
  with pytest.raises(ValueError, match="question 1"):
    il.MemoryInterleave(engine, TOK, CONFIG.__class__(max_new_tokens=2)).run(["k1", ""])
