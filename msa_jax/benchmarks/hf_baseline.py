"""HF transformers' model of a GGUF file (the encoding and generation baselines), converted once.

transformers converts a GGUF file slowly: SmolLM2-135M took ~28 s of CPU, 14 s of it parsing
the file's metadata twice (`gguf.GGUFReader`, once for the config, once for the weights) and
8 s rebuilding gguf's tensor-name map for each of the model's 397 modules. Within a conversion
both are read-only and the same each time, so in `causal_lm`'s conversion one reader per file
and one map per architecture serve every call (`gguf_parsed_once`; ~11 s, the same tensors). The
baseline is the model transformers converts, so its conversion is kept as a HF checkpoint
(config.json and float32 safetensors) and loaded from there by later runs (~1 s): in
`$MSA_JAX_HF_CACHE` (default `$XDG_CACHE_HOME/msa_jax/hf`, else `~/.cache/msa_jax/hf`; `off`:
convert every time), one folder per GGUF file, keyed by its resolved path, size and
modification time. The folder is written under a temporary name and renamed when complete, so
a killed run leaves no half-written checkpoint behind. One process converts a file at a time
(an exclusive lock on `.<folder>.lock` beside it, released by the kernel if the process dies):
processes that ask for the same file meanwhile wait, then load the saved conversion, instead
of each converting it (the test suite's workers start several baselines at once).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from msa_jax.runtime.cache import user_cache_dir

CACHE_ENV = "MSA_JAX_HF_CACHE"
OFF = "off"


def cache_dir() -> Path | None:
  value = os.environ.get(CACHE_ENV, "")
  if value.strip().lower() == OFF:
    return None
  return Path(value).expanduser() if value else user_cache_dir("hf")


def _key(path: Path) -> str:
  real = os.path.realpath(path)
  stat = os.stat(real)
  digest = hashlib.sha256(f"{real}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
  return f"{Path(real).stem}-{digest[:16]}"


def _save(model, folder: Path) -> None:
  """A HF checkpoint of `model`: transformers' `save_pretrained` refuses a model converted from
  GGUF (it counts as quantised), though its tensors are plain float32."""
  import safetensors.torch  # pylint: disable=import-outside-toplevel

  config = model.config.to_dict()
  config.pop("quantization_config", None)
  (folder / "config.json").write_text(json.dumps(config, indent=1))
  tied = model.config.tie_word_embeddings
  state = {name: x.contiguous() for name, x in model.state_dict().items()
           if not (tied and name == "lm_head.weight")}
  safetensors.torch.save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


@contextlib.contextmanager
def _exclusive(path: Path):
  """Holds an exclusive lock on the file `path` (created if missing) for the block; without
  one where it cannot be created (a read-only cache: nothing is saved there either)."""
  try:
    f = open(path, "a+b")  # pylint: disable=consider-using-with
  except OSError:
    yield
    return
  with f:
    fcntl.flock(f, fcntl.LOCK_EX)
    yield


def lock_file(saved: Path) -> Path:
  """The lock a conversion into `saved` holds."""
  return saved.parent / f".{saved.name}.lock"


@contextlib.contextmanager
def gguf_parsed_once():
  """Within the block, `gguf.GGUFReader(path)` returns one reader per (path, mode) and
  `gguf.get_tensor_name_map(arch, n_blocks)` one map per arguments; both are restored after.

  transformers looks both up in the `gguf` module at each call and only reads them (a reader's
  fields and memory-mapped tensors, a map's `get_name`)."""
  import gguf  # pylint: disable=import-outside-toplevel

  real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
  readers = {}

  def reader(path, mode="r"):
    key = (os.path.realpath(path), mode)
    if key not in readers:
      readers[key] = real_reader(path, mode)
    return readers[key]

  gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(real_map)
  try:
    yield
  finally:
    gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_map


def causal_lm(gguf_path: str | os.PathLike):
  """transformers' `AutoModelForCausalLM` of `gguf_path` in float32, eval mode."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  path = Path(gguf_path)
  def convert():
    with gguf_parsed_once():
      return transformers.AutoModelForCausalLM.from_pretrained(
          path.parent, gguf_file=path.name, dtype=torch.float32).eval()
  root = cache_dir()
  if root is None:
    return convert()
  saved = root / _key(path)
  root.mkdir(parents=True, exist_ok=True)
  with _exclusive(lock_file(saved)):
    if not (saved / "config.json").is_file():
      model = convert()
      tmp = Path(tempfile.mkdtemp(dir=root, prefix=".incomplete-"))
      try:
        _save(model, tmp)
        tmp.rename(saved)
      except OSError:  # not saved (disk full, or a process without the lock saved it first)
        pass
      finally:
        shutil.rmtree(tmp, ignore_errors=True)
      return model
  return transformers.AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).eval()
