"""Checkpoints named by Hugging Face repo id (`Qwen/Qwen3-0.6B`): resolved to a local snapshot.

`resolve("Qwen/Qwen3-0.6B")` returns the snapshot folder from the local Hugging Face cache
(`HF_HUB_CACHE`, or `HF_HOME`/hub; offline with `HF_HUB_OFFLINE=1`) and downloads what is missing
when the Hub is reachable: the config, the safetensors weights and the tokenizer files only.
An existing local path is never taken for a repo id.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# What load_hf_checkpoint and Tokenizer.from_pretrained_dir read.
PATTERNS = ("config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
            "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "chat_template.jinja")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def is_repo_id(spec: str | os.PathLike) -> bool:
  """Whether `spec` reads as `org/name` and is neither an existing local path nor a `.gguf`
  file name."""
  text = str(spec)
  return (bool(_REPO_ID.fullmatch(text)) and not text.endswith(".gguf")
          and not Path(text).exists())


def resolve(repo_id: str, what: str = "checkpoint") -> Path:
  """The local snapshot folder of the Hugging Face repo `repo_id` (cached, else downloaded).

  Args:
    repo_id: `org/name`.
    what: how the caller names the value, for the error (e.g. "model.checkpoint").

  Raises:
    FileNotFoundError: the repo is neither in the cache nor downloadable (offline, unreachable,
      unknown or gated); one line saying how to download it.
  """
  import huggingface_hub  # pylint: disable=import-outside-toplevel
  from huggingface_hub import constants  # pylint: disable=import-outside-toplevel
  try:
    return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=list(PATTERNS)))
  except Exception as e:  # pylint: disable=broad-except  (the hub raises many kinds)
    reason = "offline (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else type(e).__name__
    raise FileNotFoundError(
        f"{what}={repo_id!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
        f"could not be downloaded ({reason}); download it with `hf download {repo_id}` "
        f"(older huggingface_hub: `huggingface-cli download {repo_id}`), or pass a local "
        "directory") from None
