"""Configs parse, and the main job runs end to end from the command line."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from msa_jax import generate
from msa_jax import validation
from msa_jax.train import loop
from msa_jax.train import metrics as metrics_lib
from msa_jax.train import workdir as workdir_lib
from tests import forked_commands
from tests.paths import REPO

# Every config file (configs/common.py holds the pieces they share).
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.py") if p.name != "common.py")


def load_config_module(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_names_its_command(path):
  module = load_config_module(path)
  config = module.get_config()
  assert config.to_dict()
  assert f"--config=configs/{path.name}" in module.__doc__


def test_config_help_names_the_file_and_lists_its_fields():
  text = validation.config_help("Generation config", "configs/generate.py", "configs/x.py")
  assert text.startswith("Generation config: an ml_collections config file, read "
                         "configs/generate.py or configs/x.py")
  assert "--config.FIELD=VALUE" in text
  assert "Fields of configs/generate.py: " in text and "sampling.max_new_tokens=24" in text
  assert "chat=False" in text and "checkpoint=''" in text
  missing = validation.config_help("Bank", "configs/nope.py")
  assert "configs/nope.py" in missing and "Fields of" not in missing


def test_generate_config_variants():
  module = load_config_module(REPO / "configs" / "generate.py")
  assert module.get_config("chat").chat
  with pytest.raises(ValueError, match="unknown variant 'nope'"):
    module.get_config("nope")


def test_run_rejects_empty_prompts():
  config = load_config_module(REPO / "configs" / "generate.py").get_config()
  with pytest.raises(ValueError, match="prompts must be non-empty strings"):
    generate.run(config, prompts=[""])
  with pytest.raises(ValueError, match="prompts must be non-empty strings"):
    generate.run(config, prompts=["  "])


@pytest.mark.parametrize("bad", ["yes", 1])
def test_run_rejects_a_bad_scan_decode(bad):
  config = load_config_module(REPO / "configs" / "generate.py").get_config()
  assert config.scan_decode is None
  # Built from a dict (as a notebook may): no field types to refuse the value.
  config = ml_collections.ConfigDict(dict(config.to_dict(), scan_decode=bad))
  with pytest.raises(validation.UserError,
                     match=re.escape(f"scan_decode={bad!r} must be one of [None, True, False]")):
    generate.run(config)


def test_check_choice_tells_flags_from_numbers():
  validation.check_choice("--config.scan_decode", True, (None, True, False))
  validation.check_choice("--config.n", 1, (1, 2))
  for bad in (1, 0, "True"):
    with pytest.raises(validation.UserError,
                       match=re.escape(f"--config.scan_decode={bad!r} must be one of")):
      validation.check_choice("--config.scan_decode", bad, (None, True, False))
  with pytest.raises(validation.UserError, match="--config.n=True must be one of"):
    validation.check_choice("--config.n", True, (1, 2))


def test_int_checks_take_numpy_integers_and_refuse_bools():
  for good in (0, 3, np.int32(3), np.uint8(3)):
    assert validation.is_int(good)
  for bad in (True, False, 3.0, np.float32(3), "3", None):
    assert not validation.is_int(bad)
  value = validation.int_at_least("budget", np.int64(5), 2)
  assert value == 5 and type(value) is int
  for bad, minimum in ((True, 1), (1, 2), (2.0, 1), (-1, 0)):
    with pytest.raises(ValueError, match=re.escape(
        f"budget must be an integer >= {minimum}, got {bad!r}")):
      validation.int_at_least("budget", bad, minimum)


@pytest.mark.slow
def test_generate_cli_answers_a_factual_prompt(smollm2_gguf):
  """The command line, with the scanned decode (`--config.scan_decode=True`: the unrolled
  default's own greedy tokens are tested against HF transformers in test_gguf.py)."""
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run(
      [sys.executable, "-m", "msa_jax.generate", "--config=configs/generate.py",
       "--config.sampling.max_new_tokens=6", "--prompt=The capital of France is",
       "--config.scan_decode=True"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  assert ">>> The capital of France is\n Paris" in result.stdout
  assert "loaded SmolLM2-135M-Instruct (GGUF)" in result.stdout


# --- checks before anything is loaded (msa_jax.validation, msa_jax.train.workdir) ---


def _demo(variant="smoke"):
  from configs import demo  # pylint: disable=import-outside-toplevel
  return demo.get_config(variant)


@pytest.mark.parametrize("field, value, message", [
    ("train.steps", -1, "train.steps=-1 must be a number >= 1"),
    ("train.batch_size", 0, "train.batch_size=0 must be a number >= 1"),
    ("msa.top_k", 0, "msa.top_k=0 must be a number >= 1"),
    ("train.steps", 7, "optim.phases cover 3 + 3 = 6 steps but train.steps=7; lengthen the "
                       "last phase (--config.optim.phases[1].steps=4)"),
    ("data.num_docs", 0, "data.num_docs=0 must be a number >= 1"),
])
def test_train_config_checks(field, value, message):
  config = _demo()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(validation.UserError, match=re.escape(message)):
    validation.check_train_config(config)


def test_fewer_steps_than_the_phases_stop_early():
  config = _demo()
  config.train.steps = 3  # the first of two 3-step phases: a run stopped early, resumable
  validation.check_train_config(config)


def test_config_paths_and_did_you_mean():
  config = _demo()
  validation.check_config_path(config, "train.steps")
  with pytest.raises(validation.UserError, match=re.escape(
      "--config.train.stepz: config.train has no field 'stepz' (did you mean 'steps'?)")):
    validation.check_config_path(config, "train.stepz")
  with pytest.raises(validation.UserError, match=re.escape("config has no field 'zzz'; known: [")):
    validation.check_config_path(config, "zzz.steps")


def test_paths_and_text_inputs(tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("x")
  with pytest.raises(validation.UserError, match="is a file; give a directory"):
    validation.check_output_dir(afile)
  with pytest.raises(validation.UserError, match="is under .*afile, which is a file"):
    validation.check_output_dir(afile / "sub")
  assert validation.check_output_dir(tmp_path / "new" / "dir") == tmp_path / "new" / "dir"
  text = tmp_path / "t.txt"
  text.write_bytes(b"one\r\ntwo \xc3\xa9\n\xff three\n")
  with pytest.raises(validation.UserError, match=re.escape(f"{text}:3: not UTF-8 text (byte "
                                                           "0xff at column 1)")):
    validation.read_utf8_lines(text, "--x")
  text.write_bytes(b"one\r\ntwo \xc3\xa9\n")
  assert validation.read_utf8_lines(text, "--x") == [(1, "one"), (2, "two é")]
  ids, warning = validation.truncate_tokens(range(10), 4, "question 2", "because")
  assert ids == [0, 1, 2, 3] and warning == ("warning: question 2 has 10 tokens but only 4 fit "
                                             "(because); kept its first 4")
  assert validation.truncate_tokens([1, 2], 4, "q", "r") == ([1, 2], None)


def test_user_errors_print_one_line(capsys):
  assert validation.report(validation.UserError("bad\n  value")) == 2
  assert capsys.readouterr().err == "error: bad value\n"
  assert validation.report(KeyError("missing")) == 2
  assert capsys.readouterr().err == "error: missing\n"


def test_workdir_is_bound_to_its_config(tmp_path):
  workdir = tmp_path / "run"
  assert workdir_lib.bind(_demo(), workdir) == {}
  recorded = (workdir / "config.json").read_text()
  # The full demo config in the smoke run's workdir: refused, every differing field named.
  with pytest.raises(validation.UserError) as e:
    workdir_lib.bind(_demo(None), workdir, latest_step=6)
  message = str(e.value)
  for field in ("data.num_docs: 64 -> 4000", "data.eval_docs: 16 -> 128",
                "optim.phases[0].steps: 3 -> 500"):
    assert field in message
  assert "train.steps" not in message and "5 field(s)" in message
  seeded = _demo()
  seeded.seed = 1
  with pytest.raises(validation.UserError, match=r"1 field\(s\) .*seed: 0 -> 1"):
    workdir_lib.bind(seeded, workdir)
  # More steps (the last phase longer), other cadences and evaluation sizes: an extension.
  longer = _demo()
  longer.train.update(steps=10, log_every=1, eval_batches=4)
  longer.optim.phases[1]["steps"] = 7
  changes = workdir_lib.bind(longer, workdir, latest_step=6)
  assert changes == {"optim.phases[1].steps": (3, 7), "train.eval_batches": (2, 4),
                     "train.log_every": (2, 1), "train.steps": (6, 10)}
  assert (workdir / "config.json").read_text() == recorded  # the record is never rewritten
  history = [json.loads(line) for line in
             (workdir / workdir_lib.HISTORY_FILE).read_text().splitlines()]
  assert [h["start_step"] for h in history] == [0, 6]
  assert history[1]["changes"]["train.steps"] == [6, 10] and history[0]["changes"] == {}
  # A changed first phase is another optimisation; fewer steps than trained are refused.
  shifted = _demo()
  shifted.optim.phases[0]["steps"], shifted.optim.phases[1]["steps"] = 2, 4
  with pytest.raises(validation.UserError, match=r"optim.phases\[0\].steps: 3 -> 2"):
    workdir_lib.bind(shifted, workdir)
  with pytest.raises(validation.UserError, match="has a checkpoint at step 8; give "
                                                  "train.steps >= 8"):
    workdir_lib.bind(_demo(), workdir, latest_step=8)


def test_training_refuses_before_loading(tmp_path, monkeypatch):
  def not_called(*args):
    raise AssertionError("data or model loaded before the checks")

  monkeypatch.setattr(loop.data_lib, "make_data", not_called)
  monkeypatch.setattr(loop, "build_model", not_called)
  workdir = tmp_path / "run"
  workdir_lib.bind(_demo(None), workdir)  # a workdir of the full demo
  with pytest.raises(validation.UserError, match="holds a run of another config"):
    loop.train_and_evaluate(_demo(), workdir)
  assert json.loads((workdir / "config.json").read_text())["data"]["num_docs"] == 4000
  bad = _demo()
  bad.msa.top_k = 0
  with pytest.raises(validation.UserError, match="msa.top_k=0"):
    loop.train_and_evaluate(bad, tmp_path / "other")
  assert not (tmp_path / "other").exists()


def test_compact_training_line():
  values = {"loss": 2.3456, "aux_loss": 0.5, "recall@1": 0.75, "lm_weight": 1.0,
            "answer_loss": 0.0, "grad_norm": 3.0, "tokens_per_s": 12345.0}
  assert metrics_lib.format_line("train", 100, values, total=400, eta_s=185) == (
      "[train] step 100 | loss 2.346 | aux_loss 0.5 | recall@1 0.75 | 12.3k tok/s | 25% ETA "
      "3m05s")
  assert metrics_lib.format_line("eval", 5, {"loss": 1.0, "recall@5": 1.0}) == (
      "[eval] step 5 | loss 1")
  assert metrics_lib.format_duration(7322) == "2h02m"


# --- each command: a bad flag is one line and exit status 2, before any model is loaded ---

BAD_FLAGS = {
    "unknown_field": (
        ["msa_jax.train", "--config=configs/demo.py:smoke", "--config.train.stepz=5"],
        "--config.train.stepz: config.train has no field 'stepz' (did you mean 'steps'?)"),
    "steps": (["msa_jax.train", "--config=configs/demo.py:smoke", "--config.train.steps=-1"],
              "train.steps=-1 must be a number >= 1"),
    "top_k": (["msa_jax.train", "--config=configs/demo.py:smoke", "--config.msa.top_k=0"],
              "msa.top_k=0 must be a number >= 1"),
    "workdir_file": (["msa_jax.train", "--config=configs/demo.py:smoke", "--workdir=README.md"],
                     "--workdir=README.md is a file; give a directory"),
    "evaluate": (["msa_jax.evaluate", "--config=configs/evaluate.py", "--config.top_n=0"],
                 "top_n=0 must be a number >= 1"),
    "generate": (["msa_jax.generate", "--config=configs/generate.py",
                  "--config.sampling.max_new_tokens=0"],
                 "sampling.max_new_tokens must be an int >= 1, got 0"),
    "niah": (["msa_jax.niah", "--config=configs/niah.py", "--config.random_model=tiny",
              "--config.variants=singel"],
             "--config.variants: 'singel' is not a NIAH variant (did you mean 'single'?)"),
}


@pytest.fixture(scope="module")
def bad_flag_runs(tmp_path_factory):
  """{case: (exit status, stdout, stderr, its tmp folder)} of every BAD_FLAGS command, all
  forked from one interpreter (tests/forked_commands.py)."""
  commands, folders = [], {}
  for name, (args, _) in BAD_FLAGS.items():
    tmp = folders[name] = tmp_path_factory.mktemp(name)
    if args[0] != "msa_jax.generate" and not any(a.startswith("--workdir") for a in args):
      args = [*args, f"--workdir={tmp / 'w'}"]
    if args[0] == "msa_jax.evaluate":
      workdir_lib.bind(_demo(), tmp / "trained")
      args.append(f"--config.checkpoint_workdir={tmp / 'trained'}")
    commands.append(args)
  runs = forked_commands.run_commands(commands, JAX_PLATFORMS="cpu")
  return {name: (*run, folders[name]) for name, run in zip(BAD_FLAGS, runs)}


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_flags_exit_2_with_one_line(bad_flag_runs, case):
  status, stdout, stderr, tmp = bad_flag_runs[case]
  assert status == 2, stderr[-2000:]
  assert stdout == "" and stderr == f"error: {BAD_FLAGS[case][1]}\n"
  assert not (tmp / "w").exists()
