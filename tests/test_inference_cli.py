"""The bank command line (`python -m msa_jax.bank --config=configs/bank.py:encode / :ask`).

Encodes a small jsonl corpus with a random tiny model (SmolLM2's tokenizer) and a 30-document
slice of NFCorpus with SmolLM2's first two layers under fresh routers, asks questions against
both banks (plain and with Memory Interleave), and checks the error messages.
"""

import io
import json
from pathlib import Path

import numpy as np
import pytest

from configs import bank as bank_config
from msa_jax import bank as cli
from tests import forked_commands, paths

# In the synthetic task's vocabulary (the tiny model's tokenizer here; loads instantly).
DOCS = [
    {"id": "apple", "title": "<doc>", "text": "<fact> k1 k2 v1 w3 w4 w5"},
    {"id": "paris", "text": "w1 w2 <fact> k3 k4 v2"},
    {"id": "jax", "title": "<doc>", "text": "<fact> k5 k6 v3 w7 w8 w9 w10 w11 w12"},
    {"id": "tea", "text": "w13 <fact> k7 k8 v4"},
    {"id": "moon", "text": "<fact> k9 k10 v5 w1"},
]
TINY = ["--config.model=tiny", "--config.tokenizer=synthetic"]
ENCODE = f"--config={paths.REPO / 'configs' / 'bank.py'}:encode"
ASK = f"--config={paths.REPO / 'configs' / 'bank.py'}:ask"


def _run(argv, capsys):
  code = cli.main(argv)
  out = capsys.readouterr()
  return code, out.out, out.err


def _jsonl(path: Path, rows) -> Path:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


@pytest.fixture(scope="module")
def tiny_bank(tmp_path_factory):
  root = tmp_path_factory.mktemp("cli")
  corpus = _jsonl(root / "docs.jsonl", DOCS)
  bank = root / "bank"
  assert cli.main([ENCODE, f"--config.corpus={corpus}", f"--config.bank={bank}", *TINY,
                   "--config.seed=3", "--config.msa.top_k=2", "--config.msa.chunk_size=4",
                   "--config.msa.router_layers=all", "--config.max_doc_tokens=16"]) == 0
  return root, corpus, bank


def test_encode_records_the_model_and_texts(tiny_bank):
  _, corpus, bank_dir = tiny_bank
  bank = cli.MemoryBank.open(bank_dir)
  assert bank.doc_ids == [d["id"] for d in DOCS]
  assert bank.texts([0, 1]) == ["<doc>\n<fact> k1 k2 v1 w3 w4 w5",
                                "w1 w2 <fact> k3 k4 v2"]
  meta = bank.metadata
  assert meta["model"] == {"kind": "tiny", "seed": 3, "num_layers": None,
                           "tokenizer": "synthetic",
                           "msa": {"top_k": 2, "chunk_size": 4, "router_layers": "all"}}
  assert meta["max_doc_tokens"] == 16 and meta["corpus"] == str(corpus.resolve())


@pytest.mark.slow
def test_ask_prints_routing_and_answer(tiny_bank, capsys):
  _, _, bank = tiny_bank
  code, out, err = _run([ASK, f"--config.bank={bank}", "--question=k3 k4", "--question=k7",
                         "--config.max_new_tokens=4", "--config.json=true",
                         "--config.all_layers=true"], capsys)
  assert code == 0, err
  lines = out.splitlines()
  results = json.loads(lines[-1])
  assert [r["question"] for r in results] == ["k3 k4", "k7"]
  for r in results:
    assert sorted(r["routed"]) == ["0", "1"]  # tiny has 2 layers, both router layers
    for routed in r["routed"].values():
      assert len(routed) == 2 and all(d in [x["id"] for x in DOCS] for d, _ in routed)
  assert "question 1: k3 k4" in lines
  assert any(line.startswith("  layer 0:") for line in lines)
  doc_line = next(line for line in lines if line.startswith("    1. "))
  doc_id = doc_line.split()[1]
  text = next(" ".join((d.get("title", "") + "\n" + d["text"]).split()) for d in DOCS
              if d["id"] == doc_id)
  assert doc_line.endswith(text[:80])
  assert sum(line.startswith("  answer: ") for line in lines) == 2
  # top_k can be changed at ask time (it is not part of the bank's fingerprint).
  code, out, _ = _run([ASK, f"--config.bank={bank}", "--question=k1", "--config.top_k=4",
                       "--config.max_new_tokens=2", "--config.json=true"], capsys)
  assert code == 0 and len(json.loads(out.splitlines()[-1])[0]["routed"]["0"]) == 4


def test_ask_with_interleave(tiny_bank, capsys):
  _, _, bank = tiny_bank
  code, out, err = _run([ASK, f"--config.bank={bank}", "--question=k9 k10",
                         "--config.interleave=true", "--config.max_rounds=2",
                         "--config.max_new_tokens=3", "--config.json=true"], capsys)
  assert code == 0, err
  result = json.loads(out.splitlines()[-1])[0]
  assert result["status"] in cli.interleave_lib.STATUSES
  assert "round 1: generated" in out and "[interleave] round 1" in err


@pytest.mark.slow
def test_encode_beir_slice_with_smollm2_and_ask(tmp_path, capsys):
  beir = paths.SHARED / "data" / "beir" / "nfcorpus"
  bank = tmp_path / "nf"
  code, _, err = _run([ENCODE, f"--config.corpus={beir}", f"--config.bank={bank}",
                       "--config.model=smollm2", "--config.num_layers=2", "--config.seed=0",
                       "--config.msa.top_k=3", "--config.msa.chunk_size=16",
                       "--config.max_doc_tokens=64", "--config.limit=30",
                       "--config.batch_size=8"], capsys)
  assert code == 0, err
  assert "[encode] 30 documents from" in err and "[encode] 30/30 documents" in err
  first = json.loads(open(beir / "corpus.jsonl").readline())
  opened = cli.MemoryBank.open(bank)
  assert opened.num_docs == 30 and opened.doc_ids[0] == first["_id"]
  assert opened.texts([0])[0] == f"{first['title']}\n{first['text']}"
  code, out, err = _run([ASK, f"--config.bank={bank}", "--question=Do statins reduce cancer risk?",
                         "--config.max_new_tokens=3", "--config.all_layers=true",
                         "--config.scan_decode=true"], capsys)
  assert code == 0, err
  assert "  layer 1:" in out and "    3. " in out and "  answer: " in out


# --- errors ---


def test_missing_and_corrupt_bank(tiny_bank, tmp_path, capsys):
  code, _, err = _run([ASK, f"--config.bank={tmp_path / 'nope'}", "--question=x"], capsys)
  assert code == 2 and "does not exist" in err
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "manifest.json").write_text("{not json")
  code, _, err = _run([ASK, f"--config.bank={broken}", "--question=x"], capsys)
  assert code == 2 and "is not valid JSON" in err
  # A shard file changed after the commit.
  _, corpus, _ = tiny_bank
  bank = tmp_path / "bank"
  assert cli.main([ENCODE, f"--config.corpus={corpus}", f"--config.bank={bank}", *TINY,
                   "--config.max_doc_tokens=8"]) == 0
  docs = next(bank.glob("shard-*")) / "docs.json"
  docs.write_text(docs.read_text().replace("k3 k4", "k4 k3"))
  code, _, err = _run([ASK, f"--config.bank={bank}", "--question=x"], capsys)
  assert code == 2 and "error:" in err and "docs.json" in err


def test_bank_of_another_model(tiny_bank, tmp_path, capsys):
  _, corpus, _ = tiny_bank
  bank = tmp_path / "bank"
  assert cli.main([ENCODE, f"--config.corpus={corpus}", f"--config.bank={bank}", *TINY,
                   "--config.seed=0", "--config.max_doc_tokens=8"]) == 0
  manifest = bank / "manifest.json"
  data = json.loads(manifest.read_text())
  data["metadata"]["model"]["seed"] = 1  # as if the bank had been written for another model
  manifest.write_text(json.dumps(data))
  code, _, err = _run([ASK, f"--config.bank={bank}", "--question=x"], capsys)
  assert code == 2 and "encoded with another model" in err
  # Encoding over an existing bank needs --overwrite.
  code, _, err = _run([ENCODE, f"--config.corpus={corpus}", f"--config.bank={bank}", *TINY,
                       "--config.max_doc_tokens=8"], capsys)
  assert code == 2 and "overwrite" in err


def test_corpus_and_flag_errors(tmp_path, capsys):
  bank = f"--config.bank={tmp_path / 'bank'}"
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  code, _, err = _run([ENCODE, f"--config.corpus={empty}", bank, *TINY,
                       "--config.max_doc_tokens=8"], capsys)
  assert code == 2 and "holds no documents" in err
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps(DOCS[0]) + "\n" + '{"id": "x", "text": \n')
  code, _, err = _run([ENCODE, f"--config.corpus={bad}", bank, *TINY,
                       "--config.max_doc_tokens=8"], capsys)
  assert code == 2 and f"{bad}:2: not a JSON object" in err
  _jsonl(bad, [DOCS[0], {"id": "y"}])
  code, _, err = _run([ENCODE, f"--config.corpus={bad}", bank, *TINY,
                       "--config.max_doc_tokens=8"], capsys)
  assert code == 2 and f"{bad}:2: expected a JSON object" in err
  good = _jsonl(tmp_path / "good.jsonl", DOCS)
  code, _, err = _run([ENCODE, f"--config.corpus={good}", bank, "--config.model=gpt5",
                       "--config.max_doc_tokens=8"], capsys)
  assert code == 2 and "--config.model='gpt5' is unknown" in err
  code, _, err = _run([ENCODE, f"--config.corpus={good}", bank, *TINY, "--config.msa.topk=3",
                       "--config.max_doc_tokens=8"], capsys)
  assert code == 2 and err == ("error: --config.msa.topk: config.msa has no field 'topk' (did you "
                               "mean 'top_k'?)\n")
  code, _, err = _run([ENCODE, f"--config.corpus={tmp_path / 'none.jsonl'}", bank, *TINY,
                       "--config.max_doc_tokens=8"], capsys)
  assert code == 2 and "does not exist" in err
  assert not (tmp_path / "bank").exists()


def test_module_entry_point(tmp_path):
  # Both commands forked from one interpreter (tests/forked_commands.py): one start-up.
  missing, helpshort = forked_commands.run_commands(
      [["msa_jax.bank", "--config=configs/bank.py:ask", f"--config.bank={tmp_path / 'none'}",
        "--question=x"], ["msa_jax.bank", "--helpshort"]], timeout=240, JAX_PLATFORMS="cpu")
  assert missing[0] == 2 and missing[2].strip().endswith(
      "(create it with --config=configs/bank.py:encode)")
  # --help names the config file and lists its fields.
  assert "configs/bank.py:ask" in helpshort[1]
  assert "max_doc_tokens=0" in helpshort[1] and "msa.chunk_size=64" in helpshort[1]


# --- ask: many questions per model load, checks before loading ---


class _Calls:
  """Counts build_model calls, delegating to the real one."""

  def __init__(self, real):
    self.real, self.count = real, 0

  def __call__(self, spec):
    self.count += 1
    return self.real(spec)


@pytest.mark.slow
def test_ask_questions_file_and_stdin_with_one_model_load(tiny_bank, tmp_path, capsys,
                                                          monkeypatch):
  _, _, bank = tiny_bank
  questions = tmp_path / "questions.txt"
  questions.write_text("k3 k4\n\nk7\nk1 k2\n")  # the blank line is skipped
  calls = _Calls(cli.build_model)
  monkeypatch.setattr(cli, "build_model", calls)
  stdin = io.StringIO("k9 k10\n\nk7\n")
  config = bank_config.get_config("ask")
  config.update(bank=str(bank), questions_file=str(questions), interactive=True, max_new_tokens=3,
                batch_size=2)
  results = cli.ask(config, ["k1"], stdin=stdin)
  out = capsys.readouterr().out
  assert calls.count == 1
  assert [r["question"] for r in results] == ["k1", "k3 k4", "k7", "k1 k2", "k9 k10", "k7"]
  assert [line.split(": ", 1)[1] for line in out.splitlines()
          if line.startswith("question ")] == [r["question"] for r in results]
  assert [line.split()[1] for line in out.splitlines() if line.startswith("question ")] == [
      f"{n}:" for n in range(1, 7)]
  # In a batch of 2 (file) or alone (stdin), a question gets the same routing and answer.
  batched, alone = results[2], results[5]
  assert alone["answer"] == batched["answer"]
  for layer, routed in alone["routed"].items():
    assert [d for d, _ in routed] == [d for d, _ in batched["routed"][layer]]
    np.testing.assert_allclose([s for _, s in routed],
                               [s for _, s in batched["routed"][layer]], rtol=1e-5)
  # By default one line per question names the routed documents, with the layers choosing each.
  votes = cli.compact_routing({int(k): v for k, v in alone["routed"].items()})
  compact = [line for line in out.splitlines() if line.startswith("  routed by 2 router")]
  assert len(compact) == 6 and "  layer 0:" not in out
  assert compact[5].startswith(f"  routed by 2 router layer(s): {votes[0][0]} ({votes[0][1]}/2)")


@pytest.mark.parametrize("flags, message", [
    (["--question="], "--question number 1 is empty"),
    (["--question=x", "--question= "], "--question number 2 is empty"),
    (["--question=x", "--config.top_k=0"], "--config.top_k=0 must be a number >= 1"),
    (["--question=x", "--config.max_new_tokens=0"],
     "--config.max_new_tokens=0 must be a number >= 1"),
    (["--question=x", "--config.batch_size=0"], "--config.batch_size=0 must be a number >= 1"),
    (["--questionz=x"], "Unknown command line flag 'questionz'. Did you mean: question ?"),
    (["--config.top_kk=3"], "--config.top_kk: config has no field 'top_kk' (did you mean "
                            "'top_k'?)"),
    (["--question=x", "--config.id_kind=name"], "--config.id_kind='name' must be one of"),
    ([], "give --question=..., --config.questions_file=FILE"),
    (["--config.questions_file=NOPE"], "--config.questions_file=NOPE does not exist"),
])
def test_ask_refuses_bad_flags_before_loading(tiny_bank, capsys, monkeypatch, flags, message):
  _, _, bank = tiny_bank

  def not_called(*args):
    raise AssertionError("the bank or model was loaded before the flags were checked")

  monkeypatch.setattr(cli, "build_model", not_called)
  monkeypatch.setattr(cli, "open_bank", not_called)
  code, out, err = _run([ASK, f"--config.bank={bank}", *flags], capsys)
  assert code == 2 and out == ""
  assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_questions_file_errors_name_file_and_line(tiny_bank, tmp_path, capsys, monkeypatch):
  _, _, bank = tiny_bank
  monkeypatch.setattr(cli, "build_model", lambda spec: pytest.fail("model loaded"))
  bad = tmp_path / "q.txt"
  bad.write_bytes("k1\nk2 café\n".encode("utf-8") + b"k3 caf\xe9\n")
  code, _, err = _run([ASK, f"--config.bank={bank}", f"--config.questions_file={bad}"], capsys)
  assert code == 2 and err == f"error: {bad}:3: not UTF-8 text (byte 0xe9 at column 7)\n"
  bad.write_text("\n  \n")
  code, _, err = _run([ASK, f"--config.bank={bank}", f"--config.questions_file={bad}"], capsys)
  assert code == 2 and "holds no questions" in err


@pytest.mark.slow
def test_long_question_is_cut_with_a_warning(tiny_bank, capsys):
  _, _, bank = tiny_bank
  words = " ".join(["k1"] * 3000)  # 3000 tokens; the tiny model has 2048 positions
  code, out, err = _run([ASK, f"--config.bank={bank}", f"--question={words}", "--question=k3",
                         "--config.max_new_tokens=2", "--config.json=true"], capsys)
  assert code == 0, err
  warnings = [line for line in err.splitlines() if line.startswith("warning:")]
  # 2048 positions - head (<bos>) - memory offset (top_k 2) - marker (<answer>) - 2 new tokens
  # (3,001 tokens: the template's "<query> " prefix and the 3,000 words)
  assert len(warnings) == 1 and warnings[0].startswith(
      "warning: question 1 has 3,001 tokens but only 2,042 fit (the model's 2048 positions")
  assert warnings[0].endswith("kept its first 2,042")
  assert len(json.loads(out.splitlines()[-1])) == 2
  assert f"question 1: {words[:120]}... ({len(words):,} characters)" in out.splitlines()


def test_empty_answer_says_why(tiny_bank):
  tok = cli._tokenizer("synthetic")
  stops = (tok.eos_id,)
  why = cli.empty_answer_reason([tok.eos_id, 5], stops, tok, {"kind": "smollm2"})
  assert why.startswith(f"the first generated token was the stop token {tok.decode([tok.eos_id])!r}")
  assert "untrained MSA routers" in why
  assert cli.empty_answer_reason([], stops, tok, {"kind": "workdir"}) == "nothing was generated"
  assert "model is random" in cli.empty_answer_reason([tok.eos_id], stops, tok, {"kind": "tiny"})
