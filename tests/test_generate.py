"""Generation: cached decoding against naive recomputation, stop tokens, sampling, validation."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msa_jax.inference import SamplingConfig, generate, generate_text, sample_logits
from msa_jax.inference import decode
from msa_jax.inference.decode import pack_prompts, packed_width, packing_pays
from msa_jax.model import Transformer, get_preset
from tests.model_params import eager_init

PROMPT_LENGTHS = (3, 7, 11)
PROMPT_LEN = 12  # Tp: prompts are right-padded to this.
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def model():
  return Transformer(get_preset("tiny"))


@pytest.fixture(scope="module")
def params(model):
  return eager_init(model, jax.random.key(0))


@pytest.fixture(scope="module")
def prompts(model):
  """[B, Tp] prompts of different lengths; the padding is random junk, which must be ignored."""
  rs = np.random.RandomState(0)
  tokens = rs.randint(1, model.config.vocab_size, (len(PROMPT_LENGTHS), PROMPT_LEN))
  return tokens.astype(np.int32), np.array(PROMPT_LENGTHS, np.int32)


def _reference_decode(model, params, tokens, lengths, num_new, sample):
  """Naive decoding: every step reruns the model without a cache on prompt + generated so far.

  Each row's sequence sits at the start of a fixed [B, Tp + num_new] buffer (one compile); the
  zeros after it are invisible to its last position under the causal mask.

  Returns generated tokens [B, num_new] and the logits they were drawn from [num_new, B, V].
  """
  forward = jax.jit(lambda p, t: model.apply({"params": p}, t)[0])
  seqs = [list(row[:n]) for row, n in zip(tokens, lengths)]
  rows = np.arange(len(seqs))
  step_logits = []
  for step in range(num_new):
    buf = np.zeros((len(seqs), tokens.shape[1] + num_new), np.int32)
    for row, seq in zip(buf, seqs):
      row[:len(seq)] = seq
    last = forward(params, buf)[rows, [len(seq) - 1 for seq in seqs]]
    for seq, tok in zip(seqs, np.asarray(sample(last, step))):
      seq.append(int(tok))
    step_logits.append(np.asarray(last))
  return np.array([seq[n:] for seq, n in zip(seqs, lengths)]), np.stack(step_logits)


def _cached_logits(model, params, tokens, lengths, generated):
  """Replays `generated` [B, N] through the KV cache the way `generate` does (prefill, then token
  s at position/slot lengths + s) and returns the logits each token was drawn from [N, B, V]."""
  b, tp = tokens.shape
  num_new = generated.shape[1]

  @jax.jit
  def step(p, tok, pos, cache):
    return model.apply({"params": p}, tok, positions=pos, cache=cache, cache_index=pos[:, 0])

  positions = jnp.broadcast_to(jnp.arange(tp, dtype=jnp.int32), (b, tp))
  logits, cache = step(params, tokens, positions, model.init_cache(b, tp + num_new))
  out = [logits[np.arange(b), lengths - 1]]
  for s in range(num_new - 1):
    logits, cache = step(params, generated[:, s:s + 1], (lengths + s)[:, None], cache)
    out.append(logits[:, 0])
  return np.stack(out)


@pytest.mark.parametrize("pack", [False, True])
def test_greedy_matches_naive_recomputation(model, params, prompts, pack):
  tokens, lengths = prompts
  out = generate(model, params, tokens, lengths, jax.random.key(1),
                 SamplingConfig(max_new_tokens=NEW_TOKENS), pack=pack)
  ref_tokens, ref_logits = _reference_decode(
      model, params, tokens, lengths, NEW_TOKENS,
      lambda logits, step: jnp.argmax(logits, axis=-1))
  np.testing.assert_array_equal(np.asarray(out.tokens), ref_tokens)
  np.testing.assert_array_equal(np.asarray(out.lengths), [NEW_TOKENS] * len(lengths))
  cached = _cached_logits(model, params, tokens, lengths, ref_tokens)
  np.testing.assert_allclose(cached, ref_logits, atol=1e-5, rtol=0)


def test_sampling_matches_naive_recomputation(model, params, prompts):
  tokens, lengths = prompts
  rng = jax.random.key(7)
  sampling = SamplingConfig(temperature=1.3, top_p=0.9, top_k=200, max_new_tokens=NEW_TOKENS)
  out = generate(model, params, tokens, lengths, rng, sampling)
  ref_tokens, _ = _reference_decode(
      model, params, tokens, lengths, NEW_TOKENS,
      lambda logits, step: sample_logits(logits, jax.random.fold_in(rng, step), 1.3, 0.9, 200))
  np.testing.assert_array_equal(np.asarray(out.tokens), ref_tokens)
  # A different key gives different samples (the rng is actually used).
  other = generate(model, params, tokens, lengths, jax.random.key(8), sampling)
  assert not np.array_equal(np.asarray(other.tokens), ref_tokens)


def ynn_dot_fusions(hlo: str) -> int:
  """The number of YNNPACK fusions (kind "__ynn_fusion") in compiled HLO text that do a dot."""
  called = re.findall(r"calls=(%[\w.\-]+)[^\n]*\"kind\":\"__ynn_fusion\"", hlo)
  bodies = dict(re.findall(r"^(%[\w.\-]+) .*?{\n(.*?)\n}", hlo, re.S | re.M))
  return sum(" dot(" in bodies[name] for name in called)


def test_decode_programs_run_their_dots_on_eigen():
  """On CPU, `decode_jit` compiles without YNNPACK's dots (`decode_compiler_options`), which a
  plain jit uses; the program's other YNNPACK fusions and its values stay."""
  assert jax.default_backend() == "cpu"
  assert decode.decode_compiler_options() == {
      "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}

  def f(w, x):
    return jnp.sum(jnp.tanh(x @ w) ** 2, axis=-1)

  w, x = jax.random.normal(jax.random.key(0), (64, 96)), jax.random.normal(jax.random.key(1),
                                                                          (8, 64))
  plain, ours = jax.jit(f), decode.decode_jit(f)
  assert ynn_dot_fusions(plain.lower(w, x).compile().as_text()) == 1
  assert ynn_dot_fusions(ours.lower(w, x).compile().as_text()) == 0
  np.testing.assert_allclose(ours(w, x), plain(w, x), rtol=1e-5)


def test_pack_prompts_layout():
  tokens = np.array([[5, 6, 0, 0], [7, 8, 9, 0], [4, 0, 0, 0]], np.int32)
  lengths = np.array([2, 3, 1], np.int32)
  assert packed_width(lengths, 4) == 8 and packed_width(lengths, 1) == 6
  p = pack_prompts(tokens, lengths, 4)
  np.testing.assert_array_equal(p.tokens, [[5, 6, 7, 8, 9, 4, 0, 0]])
  np.testing.assert_array_equal(p.positions, [[0, 1, 0, 1, 2, 0, 0, 0]])
  np.testing.assert_array_equal(p.segments, [[1, 1, 2, 2, 2, 3, 0, 0]])
  # Cache slot t of prompt b reads packed token start_b + t (its last token past its length).
  np.testing.assert_array_equal(p.slots, [[0, 1, 1, 1], [2, 3, 4, 4], [5, 5, 5, 5]])
  np.testing.assert_array_equal(p.last, [1, 4, 5])


def test_packing_pays_only_when_it_saves_flops(model):
  cfg = model.config
  short_and_long = np.array([3, 60], np.int32)  # 64 packed vs 2 x 64 padded: fewer FLOPs
  assert packing_pays(cfg, short_and_long, 64, 16)
  equal = np.array([64, 64], np.int32)  # 128 packed vs 2 x 64: the same tokens, more pairs
  assert not packing_pays(cfg, equal, 64, 16)
  assert not packing_pays(cfg, np.array([5], np.int32), 16, 16)  # one prompt: nothing to gain


@pytest.mark.parametrize("bucket", [1, 5, 64])
def test_packed_prefill_equals_padded(model, params, prompts, bucket):
  """Sampling after the packed prefill: the same tokens as after the padded block's."""
  tokens, lengths = prompts
  sampling = SamplingConfig(temperature=1.3, top_p=0.9, max_new_tokens=NEW_TOKENS)
  want = generate(model, params, tokens, lengths, jax.random.key(3), sampling, pack=False)
  got = generate(model, params, tokens, lengths, jax.random.key(3), sampling, bucket, True)
  np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))


def test_stop_tokens(model, params, prompts):
  tokens, lengths = prompts
  base = np.asarray(generate(model, params, tokens, lengths, jax.random.key(1),
                             SamplingConfig(max_new_tokens=NEW_TOKENS)).tokens)
  # A token greedy decoding emits for the first time mid-way through row 1.
  k = next(k for k in range(2, NEW_TOKENS) if base[1, k] not in base[1, :k])
  stop, pad = int(base[1, k]), 5
  out = generate(model, params, tokens, lengths, jax.random.key(1),
                 SamplingConfig(max_new_tokens=NEW_TOKENS, stop_tokens=[stop], pad_id=pad))
  out_tokens, out_lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  for b, row in enumerate(base):
    hits = np.flatnonzero(row == stop)
    n = hits[0] + 1 if hits.size else NEW_TOKENS
    assert out_lengths[b] == n
    np.testing.assert_array_equal(out_tokens[b, :n], row[:n])
    assert (out_tokens[b, n:] == pad).all()
  assert out_lengths[1] == k + 1 and out_tokens[1, k] == stop

  # Every row stops at its first token.
  out = generate(model, params, tokens, lengths, jax.random.key(1),
                 SamplingConfig(max_new_tokens=NEW_TOKENS, stop_tokens=tuple(base[:, 0].tolist()),
                                pad_id=pad))
  np.testing.assert_array_equal(np.asarray(out.lengths), [1] * len(lengths))
  np.testing.assert_array_equal(np.asarray(out.tokens)[:, 0], base[:, 0])
  assert (np.asarray(out.tokens)[:, 1:] == pad).all()


class _CharTokenizer:
  """One token per character: its code point."""

  def encode(self, text: str) -> list[int]:
    return [ord(c) for c in text]

  def decode(self, ids: list[int]) -> str:
    return "".join(map(chr, ids))


def test_generate_text(model, params):
  tok = _CharTokenizer()
  texts = ["hi!", "a longer prompt"]
  batch = np.zeros((2, 16), np.int32)
  for row, text in zip(batch, texts):
    row[:len(text)] = tok.encode(text)
  lengths = np.array([3, 15], np.int32)
  greedy = SamplingConfig(max_new_tokens=8)
  base = np.asarray(generate(model, params, batch, lengths, jax.random.key(0), greedy).tokens)
  assert generate_text(model, params, tok, texts, greedy, bucket=16) == [
      tok.decode(row.tolist()) for row in base]
  # Row 0 stops at its first token, which is not decoded.
  stopping = SamplingConfig(max_new_tokens=8, stop_tokens=(int(base[0, 0]),))
  out = generate_text(model, params, tok, texts, stopping, bucket=16)
  assert out[0] == ""
  with pytest.raises(ValueError, match="bucket must be an int >= 1, got 0"):
    generate_text(model, params, tok, texts, greedy, bucket=0)


def _draws(logits, temperature, top_p=1.0, top_k=0, num=20_000, seed=0):
  batch = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (num, len(logits)))
  return np.asarray(sample_logits(batch, jax.random.key(seed), temperature, top_p, top_k))


def test_sample_logits_greedy_is_argmax():
  logits = jax.random.normal(jax.random.key(0), (8, 50))
  out = sample_logits(logits, jax.random.key(1), 0.0, 0.5, 3)
  assert out.dtype == jnp.int32
  np.testing.assert_array_equal(out, jnp.argmax(logits, axis=-1))


@pytest.mark.parametrize("temperature", [0.1, 1.0, 100.0])
def test_sample_logits_top_k(temperature):
  logits = jax.random.normal(jax.random.key(0), (64, 50))
  np.testing.assert_array_equal(sample_logits(logits, jax.random.key(1), temperature, 1.0, 1),
                                jnp.argmax(logits, axis=-1))
  row = np.asarray(logits[0])
  drawn = set(_draws(row, temperature, top_k=3, num=2000).tolist())
  assert drawn <= set(np.argsort(row)[-3:].tolist())
  if temperature >= 1:
    assert len(drawn) == 3


# Probabilities deliberately not sorted: the nucleus is found in probability order.
_PROBS = np.array([0.15, 0.5, 0.05, 0.3])


@pytest.mark.parametrize("temperature,top_p,nucleus", [
    (1.0, 0.7, [1, 3]),      # 0.5 + 0.3 reaches 0.7
    (1.0, 0.4, [1]),         # the top token alone reaches 0.4
    (1.0, 1.0, [0, 1, 2, 3]),
    (2.0, 0.7, [0, 1, 3]),   # tempered probs ~ [.207, .379, .120, .294]: top 2 only .673
])
def test_sample_logits_top_p(temperature, top_p, nucleus):
  draws = _draws(np.log(_PROBS), temperature, top_p)
  assert set(draws.tolist()) == set(nucleus)
  tempered = _PROBS ** (1 / temperature)
  expected = np.zeros_like(tempered)
  expected[nucleus] = tempered[nucleus] / tempered[nucleus].sum()
  # Binomial std <= 0.0036 at 20k draws; 0.015 is > 4 sigma, well below any real bug.
  np.testing.assert_allclose(np.bincount(draws, minlength=4) / draws.size, expected, atol=0.015)


@pytest.mark.parametrize("temperature", [0.7, 2.0])
def test_sample_logits_temperature_frequencies(temperature):
  logits = np.array([1.0, 0.5, -0.3, 2.0, 0.0])
  draws = _draws(logits, temperature, seed=3)
  expected = np.asarray(jax.nn.softmax(logits / temperature))
  np.testing.assert_allclose(np.bincount(draws, minlength=5) / draws.size, expected, atol=0.015)


@pytest.mark.parametrize("kwargs,bad", [
    (dict(temperature=-0.1), "temperature.*-0.1"),
    (dict(temperature=float("nan")), "temperature.*nan"),
    (dict(top_p=0.0), "top_p.*0.0"),
    (dict(top_p=1.5), "top_p.*1.5"),
    (dict(top_k=-1), "top_k.*-1"),
    (dict(top_k=2.5), "top_k.*2.5"),
    (dict(max_new_tokens=0), "max_new_tokens.*0"),
    (dict(stop_tokens=(1, -2)), "stop_tokens.*-2"),
    (dict(stop_tokens=5), "stop_tokens.*5"),
    (dict(pad_id=-1), "pad_id.*-1"),
])
def test_sampling_config_validation(kwargs, bad):
  with pytest.raises(ValueError, match=bad):
    SamplingConfig(**kwargs)


def test_sampling_config_coerces_stop_tokens():
  config = SamplingConfig(stop_tokens=[3, np.int64(4)])
  assert config.stop_tokens == (3, 4)
  assert hash(config) == hash(SamplingConfig(stop_tokens=(3, 4)))


@pytest.mark.parametrize("tokens,lengths,sampling,bad", [
    (np.ones(4, np.int32), [2], SamplingConfig(), "shapes (4,)"),
    (np.ones((2, 4), np.int32), [2, 2, 2], SamplingConfig(), "prompt_lengths (3,)"),
    (np.ones((2, 4), np.int32), [0, 2], SamplingConfig(), "[0, 2]"),
    (np.ones((2, 4), np.int32), [5, 2], SamplingConfig(), "[5, 2]"),
    (np.ones((2, 4), np.float32), [1, 2], SamplingConfig(), "float32"),
    (np.full((2, 4), 600, np.int32), [1, 2], SamplingConfig(), "600"),
    (np.ones((2, 4), np.int32), [1, 2], SamplingConfig(stop_tokens=(9999,)), "9999"),
    (np.ones((2, 4), np.int32), [1, 2], SamplingConfig(), "bucket must be an int >= 1, got 0"),
    (np.ones((2, 4), np.int32), [1, 2], SamplingConfig(), "bucket must be an int >= 1, got True"),
])
def test_generate_validation(model, params, tokens, lengths, sampling, bad):
  bucket = (True if bad.endswith("True") else 0) if "bucket" in bad else 16
  with pytest.raises(ValueError, match=re.escape(bad)):
    generate(model, params, tokens, np.array(lengths, np.int32), jax.random.key(0), sampling,
             bucket)


@pytest.mark.parametrize("bad", ["yes", 1])
def test_generate_rejects_a_bad_pack(model, params, prompts, bad):
  tokens, lengths = prompts
  with pytest.raises(ValueError, match=f"pack must be None, True or False, got {bad!r}"):
    generate(model, params, tokens, lengths, jax.random.key(0), SamplingConfig(), pack=bad)
