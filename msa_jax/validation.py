"""Checks shared by every command: flags, config fields, paths and text inputs, before any model
is loaded, and how a user error ends a command (one `error: ...` line on stderr, exit status 2).

Every command is an absl app reading an ml_collections config file (`--config=configs/X.py`,
`--config.FIELD=VALUE` overrides; `config_help` writes the flag's help: the file to read and its
fields) and starts through `run_app(main)`: flag parsing errors (an unknown flag,
`--config.train.stepz=5` with a did-you-mean, a value of the wrong type) and `UserError`s raised
by `main` are reported in one line; `--verbose` shows the traceback instead.
`parse_in_process(argv, define)` parses a command line into fresh flags, so that a command can
run more than once in one process (the bank command's `main(argv)`, tests).

Library callers get `UserError`, a `ValueError`, from the `check_*` functions. `is_int` and
`int_at_least` are the integer checks the library's own modules share (a numpy integer counts,
a bool does not; a plain `ValueError`), `optional_flag` their check of a None / True / False
argument, `same_value` the equality that tells a bool from a number.
"""

from __future__ import annotations

import difflib
import numbers
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

EXIT_USER_ERROR = 2


class UserError(ValueError):
  """A bad flag, config field, path or input: one `error: ...` line, exit status 2."""


# Errors that name a bad input of the user's (raised by our checks and loaders) rather than a bug.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError)


def report(error: BaseException, verbose: bool = False, stream=None) -> int:
  """Prints `error: <message>` (the traceback first when `verbose`); returns the exit status."""
  stream = sys.stderr if stream is None else stream
  if verbose:
    traceback.print_exception(error, file=stream)
  message = " ".join(str(error).split()) or type(error).__name__
  if isinstance(error, KeyError) and message[:1] in "'\"" and message[-1:] == message[:1]:
    message = message[1:-1]  # str(KeyError) quotes its message
  print(f"error: {message}", file=stream, flush=True)
  return EXIT_USER_ERROR


def did_you_mean(name: str, known: Iterable[str]) -> str:
  """` (did you mean 'x'?)` for the closest known name, else `; known: [...]`."""
  known = sorted(known)
  close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
  return f" (did you mean {close[0]!r}?)" if close else f"; known: {known}"


# --------------------------------------------------------------------------------------------
# Numbers and config fields
# --------------------------------------------------------------------------------------------


def is_int(value: Any) -> bool:
  """`value` is an integer (a Python or numpy one) and not a bool (`True == 1`, but no count)."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def int_at_least(name: str, value: Any, minimum: int = 1) -> int:
  """`value` as an int, or a ValueError naming `name` if it is not an integer >= minimum."""
  if not is_int(value) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def optional_flag(name: str, value: Any) -> bool | None:
  """`value` if it is None, True or False, else a ValueError naming `name` (1 and 0 are no
  flags, though they compare equal to True and False)."""
  if not (value is None or isinstance(value, bool)):
    raise ValueError(f"{name} must be None, True or False, got {value!r}")
  return value


def same_value(a: Any, b: Any) -> bool:
  """`a == b`, where a bool equals only a bool (`1 == True`, but 1 is no flag)."""
  return a == b and isinstance(a, bool) == isinstance(b, bool)


def check_at_least(name: str, value: Any, low: int | float, *, optional: bool = False) -> None:
  """`name` is a number >= low (None allowed when `optional`)."""
  if optional and value is None:
    return
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
    raise UserError(f"{name}={value!r} must be a number >= {low}")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
  """`value` is one of `choices` (`same_value`: a bool matches only a bool)."""
  if not any(same_value(value, c) for c in choices):
    raise UserError(f"{name}={value!r} must be one of {list(choices)}")


def check_config_path(config, dotted: str, flag: str = "--config") -> None:
  """`dotted` ("train.steps") names a field of `config`; else a did-you-mean error."""
  node, walked = config, []
  for part in dotted.split("."):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      where = ".".join([flag.lstrip("-")] + walked)
      raise UserError(f"{flag}.{dotted}: {where} has no field {part!r}"
                      + did_you_mean(part, keys))
    node = node[part]
    walked.append(part)


def _get(config, dotted: str, default: Any = None) -> Any:
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node.keys():
      return default
    node = node[part]
  return node


def check_msa_fields(msa) -> None:
  """MSAConfig fields given as a config section (before MSAConfig is built)."""
  if msa is None:
    return
  for name in ("top_k", "chunk_size"):
    if name in msa.keys():
      check_at_least(f"msa.{name}", msa[name], 1)
  if "temperature" in msa.keys():
    if not isinstance(msa.temperature, (int, float)) or msa.temperature <= 0:
      raise UserError(f"msa.temperature={msa.temperature!r} must be > 0")


def check_phases(phases: Sequence[Mapping[str, Any]], steps: int) -> None:
  """`optim.phases`: each phase trains >= 1 step and together they cover `train.steps`.

  Fewer steps than the phases hold is a run stopped early inside its schedule (a rerun with
  more steps continues it with the same schedule); more would train past the schedule's end
  on the last phase's final learning rate, which is refused.
  """
  if not phases:
    return
  for i, phase in enumerate(phases):
    check_at_least(f"optim.phases[{i}].steps", phase.get("steps"), 1)
  total = sum(int(p["steps"]) for p in phases)
  if steps > total:
    counts = " + ".join(str(int(p["steps"])) for p in phases)
    last = len(phases) - 1
    raise UserError(f"optim.phases cover {counts} = {total} steps but train.steps={steps}; "
                    f"lengthen the last phase (--config.optim.phases[{last}].steps="
                    f"{int(phases[-1]['steps']) + steps - total})")


def check_train_config(config) -> None:
  """A `python -m msa_jax.train` config: sizes >= 1, top_k >= 1, phases covering the steps."""
  t = config.train
  check_at_least("train.steps", t.steps, 1)
  check_at_least("train.batch_size", t.batch_size, 1)
  check_at_least("train.log_every", t.log_every, 1)
  check_at_least("train.eval_every", t.eval_every, 1)
  check_at_least("train.eval_batches", t.eval_batches, 0)
  check_at_least("train.checkpoint_every", t.checkpoint_every, 0)
  check_at_least("train.keep_checkpoints", t.keep_checkpoints, 1)
  check_msa_fields(_get(config, "msa"))
  phases = _get(config, "optim.phases")
  check_phases([dict(p) for p in phases] if phases else [], t.steps)
  accum = _get(config, "optim.grad_accum_steps", 1)
  check_at_least("optim.grad_accum_steps", accum, 1)
  data = config.data
  for name in ("num_docs", "eval_docs", "doc_length", "docs_per_sample", "doc_tokens",
               "prompt_tokens", "max_positives", "id_digits", "key_length"):
    if name in data.keys() and data[name] is not None:
      check_at_least(f"data.{name}", data[name], 0 if name == "eval_docs" else 1)


def check_evaluate_config(config, workdir) -> None:
  """A `python -m msa_jax.evaluate` config and workdir (configs/evaluate.py's fields)."""
  check_output_dir(workdir)
  # (its checkpoint is looked for after the dataset is read, before the model is loaded)
  check_workdir_of_training(config.checkpoint_workdir, "--config.checkpoint_workdir",
                            checkpoint=False)
  check_at_least("checkpoint_step", config.checkpoint_step, 0, optional=True)
  for name in ("max_queries", "corpus_cap"):
    check_at_least(name, config[name], 0)
  for name in ("encode_batch_size", "query_batch_size", "top_n"):
    check_at_least(name, config[name], 1)
  check_choice("generative", config.generative, ("auto", "yes", "no"))
  if config.bank_path:
    check_output_dir(config.bank_path, "--config.bank_path")
  sc = config.scaling
  check_at_least("scaling.base_docs", sc.base_docs, 1)
  check_at_least("scaling.factor", sc.factor, 2)
  check_at_least("scaling.max_docs", sc.max_docs, 0)


# --------------------------------------------------------------------------------------------
# Paths and text inputs
# --------------------------------------------------------------------------------------------


def check_output_dir(path: str | os.PathLike | None, flag: str = "--workdir") -> Path:
  """A directory we may create or write into: not a file, nor under one."""
  if not path:
    raise UserError(f"{flag} is required")
  p = Path(path)
  for parent in [p, *p.parents]:
    if parent.exists() and not parent.is_dir():
      what = "is a file" if parent == p else f"is under {parent}, which is a file"
      raise UserError(f"{flag}={path} {what}; give a directory")
    if parent.exists():
      if not os.access(parent, os.W_OK):
        raise UserError(f"{flag}={path}: {parent} is not writable")
      break
  return p


def check_workdir_of_training(path: str | os.PathLike | None,
                              flag: str = "--checkpoint_workdir", checkpoint: bool = True
                              ) -> Path:
  """A `python -m msa_jax.train` workdir with its config.json and (`checkpoint`) at least one
  finished checkpoint."""
  if not path:
    raise UserError(f"{flag} is required")
  p = Path(path)
  if not p.is_dir():
    raise UserError(f"{flag}={path} is not a directory (a workdir of python -m msa_jax.train)")
  if not (p / "config.json").is_file():
    raise UserError(f"{flag}={path} has no config.json: not a workdir of "
                    "python -m msa_jax.train (or its run has not started)")
  ckpts = p / "checkpoints"
  if checkpoint and (not ckpts.is_dir() or not any(c.name.isdigit() for c in ckpts.iterdir())):
    raise UserError(f"{flag}={path} has no finished checkpoint yet")
  return p


def utf8_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
  """(line number, text without its line break) of each line of a UTF-8 text file, read one
  at a time.

  Raises:
    UserError: `path:line` of the first line that is not UTF-8 (byte and column).
  """
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise UserError(f"{path}:{number}: not UTF-8 text (byte 0x{raw[e.start]:02x} at "
                        f"column {e.start + 1})") from None
      yield number, text.rstrip("\r\n")


def read_utf8_lines(path: str | os.PathLike, flag: str) -> list[tuple[int, str]]:
  """`utf8_lines` of the file the flag `flag` names; a missing path or a folder is reported
  with the flag."""
  p = Path(path)
  if not p.is_file():
    raise UserError(f"{flag}={path} does not exist" if not p.exists()
                    else f"{flag}={path} is not a file")
  return list(utf8_lines(p))


def truncate_tokens(ids: Sequence[int], limit: int, what: str, reason: str,
                    rule: str = "first") -> tuple[list[int], str | None]:
  """Cuts `ids` to `limit` tokens (their `rule` = "first" or "last" ones); returns (ids, a
  warning saying so and why only `limit` fit, or None)."""
  ids = list(ids)
  if len(ids) <= limit:
    return ids, None
  kept = ids[:limit] if rule == "first" else ids[-limit:]
  return kept, (f"warning: {what} has {len(ids):,} tokens but only {limit:,} fit ({reason}); "
                f"kept its {rule} {limit:,}")


# --------------------------------------------------------------------------------------------
# absl apps
# --------------------------------------------------------------------------------------------


REPO_ROOT = Path(__file__).resolve().parents[1]


def _load_config_file(spec: str):
  """The ConfigDict of a `--config=path.py[:arg]` value (as config_flags loads it)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_checked_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _flat_fields(config, prefix: str = "") -> list[str]:
  """`name=default` for every leaf field of `config`, dotted, in the config's order."""
  out = []
  for name, value in config.items(preserve_field_references=False):
    if hasattr(value, "items"):
      out += _flat_fields(value, f"{prefix}{name}.")
    else:
      out.append(f"{prefix}{name}={value!r}")
  return out


def config_help(what: str, *specs: str) -> str:
  """The help text of an entry point's `--config` flag: what it configures, the config file(s)
  to read (`specs`, "configs/x.py[:variant]" relative to the repository) and the first one's
  fields with their defaults, each overridable as `--config.FIELD=VALUE`."""
  text = f"{what}: an ml_collections config file, read {' or '.join(specs)} (its docstring has "
  text += "the commands and variants); override any field with --config.FIELD=VALUE."
  path, _, arg = specs[0].partition(":")
  try:
    config = _load_config_file(str(REPO_ROOT / path) + (f":{arg}" if arg else ""))
  except Exception:  # pylint: disable=broad-except
    return text  # an installed package without the repository's configs/
  return text + f" Fields of {specs[0]}: " + ", ".join(_flat_fields(config)) + "."


def _explain_flag_error(argv: Sequence[str], error: BaseException, fv=None) -> str:
  """One line for a flag parsing failure: an unknown `--config.a.b` field gets a did-you-mean
  against the config file's fields; a failing config file, its own error's last line."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  fv = flags.FLAGS if fv is None else fv
  files = {}  # config flag name -> its file spec
  for arg in argv[1:]:
    name, _, value = arg[2:].partition("=")
    if arg.startswith("--") and name in fv and value.partition(":")[0].endswith(".py"):
      files[name] = value
  for arg in argv[1:]:
    name = arg[2:].partition("=")[0]
    flag, _, dotted = name.partition(".")
    if arg.startswith("--") and dotted and flag in files:
      try:
        config = _load_config_file(files[flag])
      except Exception:  # pylint: disable=broad-except
        break  # the file itself fails: reported below
      try:
        check_config_path(config, dotted, f"--{flag}")
      except UserError as e:
        return str(e)
  text = str(error)
  if len(text) > 1 and text[0] in "'\"" and text[-1] == text[0]:  # a quoted KeyError
    text = text[1:-1]
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if "Error whilst parsing config file" in text and lines:  # the config's own error, last line
    return re.sub(r"^\w+(Error|Exception): ", "", lines[-1])
  message = " ".join(lines)
  if isinstance(error, flags.Error) and "Unknown command line flag" in message:
    return message + " (--helpshort lists the flags)"
  return message


def flag_error(argv: Sequence[str], error: BaseException, fv=None) -> UserError:
  """A flag parsing failure of `argv` (parsed into `fv`, default the global absl flags) as a
  one-line `UserError` (`--verbose` in argv: the traceback is printed first)."""
  if "--verbose" in argv:
    traceback.print_exception(error, file=sys.stderr)
  try:
    message = _explain_flag_error(argv, error, fv)
  except Exception:  # pylint: disable=broad-except
    message = " ".join(str(error).split())
  return UserError(message)


def parse_flags(argv: list[str]) -> list[str]:
  """`app.run`'s flags_parser: absl parsing with one-line errors (exit status 2)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    print(f"error: {flag_error(argv, e)}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def parse_in_process(argv: Sequence[str], define: Callable[[Any, list[str]], Any]
                     ) -> tuple[Any, list[str]]:
  """Parses a command line (`argv`, program name first) the way its absl app would, into fresh
  flag values, so that a command can run more than once in one process (tests, notebooks).

  Args:
    argv: the command line.
    define: defines the command's flags on the given `absl.flags.FlagValues` (config flags read
      their `--config.x=y` overrides from the given argv) and returns their holders.

  Returns:
    (what `define` returned, the positional arguments with the program name first).

  Raises:
    UserError: a flag parsing failure, explained in one line (as `parse_flags` does).
  """
  from absl import flags  # pylint: disable=import-outside-toplevel
  argv = list(argv)
  fv = flags.FlagValues()
  flags.DEFINE_bool("verbose", False, "Show tracebacks of user errors.", flag_values=fv)
  holders = define(fv, argv)
  try:
    rest = fv(argv)
  except Exception as e:  # pylint: disable=broad-except
    raise flag_error(argv, e, fv) from None
  return holders, rest


def run_app(main: Callable[[list[str]], Any]) -> None:
  """`absl.app.run(main)` with `--verbose`, one-line flag errors and user errors from `main`
  (`USER_ERRORS`) reported as `error: ...` with exit status 2. Log messages below WARNING
  (orbax's lines per checkpoint save and restore) are hidden unless `--verbosity` is given:
  the commands' own progress lines go to stdout."""
  from absl import app, flags, logging  # pylint: disable=import-outside-toplevel
  if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool("verbose", False, "Show tracebacks of user errors.")

  def wrapped(argv):
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except USER_ERRORS as e:
      sys.exit(report(e, flags.FLAGS.verbose))

  app.run(wrapped, flags_parser=parse_flags)


def format_duration(seconds: float) -> str:
  """`42s`, `3m05s`, `2h07m`."""
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
