"""Tokenizer: a fast `tokenizers.Tokenizer` plus the special ids and chat template of a model.

Two sources:
  * a GGUF file's metadata (llama.cpp's key names), `Tokenizer.from_gguf_metadata` /
    `Tokenizer.from_gguf`. Only byte-level BPE ('tokenizer.ggml.model' == 'gpt2') is supported;
    the pre-tokenizer follows llama.cpp's table for 'tokenizer.ggml.pre'.
  * a Hugging Face model directory with a `tokenizer.json`, `Tokenizer.from_pretrained_dir`.

`encode` never runs the backend's post-processor; the BOS token is prepended here, from `add_bos`,
so a GGUF-built and a directory-built tokenizer behave the same way.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

from msa_jax.checkpoint.gguf_file import read_gguf_metadata

# llama.cpp token types ('tokenizer.ggml.token_type'; gguf.TokenType).
_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4

# Tokens that end a turn or a document, besides the declared EOS; each becomes a stop id when the
# vocabulary has it.
_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>",
                "<end_of_turn>")

# Split regexes, as in the installed transformers' Qwen2 tokenizer (PRETOKENIZE_REGEX) and GGUF
# tokenizer mapping (Llama-3); llama.cpp's own tables spell the same patterns without `(?i:...)`.
# They differ only in digits: Qwen2 splits every \p{N}, Llama-3 groups them by up to three.
QWEN2_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                     r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                      r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _gpt2_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
  """The GPT-2 regex ('s|'t|...| ?\\p{L}+| ?\\p{N}+|...), then the byte-to-unicode map."""
  return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_gpt2_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
  """llama.cpp runs `\\p{N}` first, so every digit is its own piece before the GPT-2 regex."""
  return pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
  ])


def _split_pre_tokenizer(regex: str) -> pre_tokenizers.PreTokenizer:
  return pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(regex), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
  ])


# 'tokenizer.ggml.pre' -> pre-tokenizer factory.
_PRE_TOKENIZERS = {
    "default": _gpt2_pre_tokenizer,
    "gpt2": _gpt2_pre_tokenizer,
    "smollm": _digits_then_gpt2_pre_tokenizer,
    "starcoder": _digits_then_gpt2_pre_tokenizer,
    "refact": _digits_then_gpt2_pre_tokenizer,
    "codeshell": _digits_then_gpt2_pre_tokenizer,
    "command-r": _digits_then_gpt2_pre_tokenizer,
    "qwen2": functools.partial(_split_pre_tokenizer, QWEN2_SPLIT_REGEX),
    "llama-bpe": functools.partial(_split_pre_tokenizer, LLAMA3_SPLIT_REGEX),
}
# llama.cpp: these take a piece that is a whole vocabulary entry as one token before any merge,
# and add BOS unless the file says otherwise.
_IGNORE_MERGES_PRE = frozenset({"llama-bpe"})
_ADD_BOS_DEFAULT_PRE = frozenset({"llama-bpe"})


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """A fast tokenizer with its special ids.

  Attributes:
    backend: the Rust tokenizer; special and user-defined tokens are registered as added tokens,
      so text like "<|im_start|>" encodes to one id.
    bos_id, eos_id, pad_id: special ids, None where the model has none.
    add_bos: whether `encode` prepends BOS by default.
    chat_template: jinja2 source of the chat template, or None.
    stop_ids: ids that end generation: EOS first, then turn/document end tokens of the vocabulary.
  """
  backend: tokenizers.Tokenizer
  bos_id: int | None = None
  eos_id: int | None = None
  pad_id: int | None = None
  add_bos: bool = False
  chat_template: str | None = None
  stop_ids: tuple[int, ...] = ()

  @property
  def vocab_size(self) -> int:
    """Number of ids, added tokens included."""
    return self.backend.get_vocab_size(with_added_tokens=True)

  def token_to_id(self, token: str) -> int | None:
    return self.backend.token_to_id(token)

  def id_to_token(self, token_id: int) -> str | None:
    return self.backend.id_to_token(token_id)

  def _bos_prefix(self, add_bos: bool | None) -> list[int]:
    wanted = self.add_bos if add_bos is None else add_bos
    return [self.bos_id] if wanted and self.bos_id is not None else []

  def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
    """Token ids of text; special tokens written in the text are matched as single ids.

    Args:
      text: the text.
      add_bos: prepend BOS (when the model has one); None means `self.add_bos`.
    """
    return self._bos_prefix(add_bos) + self.backend.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str], add_bos: bool | None = None) -> list[list[int]]:
    """`encode` on each text, run in parallel by the backend."""
    prefix = self._bos_prefix(add_bos)
    return [prefix + e.ids
            for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  @property
  def bos_token(self) -> str | None:
    return None if self.bos_id is None else self.backend.id_to_token(self.bos_id)

  @property
  def eos_token(self) -> str | None:
    return None if self.eos_id is None else self.backend.id_to_token(self.eos_id)

  def apply_chat_template(self, messages: Sequence[Mapping[str, Any]],
                          add_generation_prompt: bool = True, **kwargs: Any) -> str:
    """Renders a conversation with the model's chat template, the way transformers does.

    Args:
      messages: [{"role": ..., "content": ...}, ...].
      add_generation_prompt: append the header that opens the assistant's turn.
      **kwargs: more template variables (e.g. tools), passed through.

    Returns:
      The prompt text; encode it with `add_bos=False` when the template writes BOS itself.
    """
    if self.chat_template is None:
      raise ValueError("This tokenizer has no chat template (no 'tokenizer.chat_template' in the "
                       "GGUF metadata, nor 'chat_template' in tokenizer_config.json).")
    template = _compile_chat_template(self.chat_template)
    variables = {"bos_token": self.bos_token or "", "eos_token": self.eos_token or "", **kwargs}
    return template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                           **variables)

  @classmethod
  def from_gguf(cls, path: str | os.PathLike) -> Tokenizer:
    """The tokenizer of a GGUF file."""
    return cls.from_gguf_metadata(read_gguf_metadata(path, prefix="tokenizer."))

  @classmethod
  def from_gguf_metadata(cls, fields: Mapping[str, Any]) -> Tokenizer:
    """Builds the tokenizer a GGUF file describes, from its decoded metadata.

    Args:
      fields: metadata key -> value (str, int, bool, list), as `read_gguf_metadata` returns.

    Returns:
      The tokenizer, with token ids exactly as in the file.

    Raises:
      ValueError: a tokenizer model or pre-tokenizer type that is not supported.
      KeyError: the metadata has no token list.
    """
    model = fields.get("tokenizer.ggml.model")
    if model != "gpt2":
      raise ValueError(f"Unsupported GGUF tokenizer model 'tokenizer.ggml.model'={model!r}; "
                       "supported: ['gpt2'] (byte-level BPE).")
    pre = fields.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
      raise ValueError(f"Unsupported GGUF pre-tokenizer 'tokenizer.ggml.pre'={pre!r}; "
                       f"supported: {sorted(_PRE_TOKENIZERS)}.")
    if "tokenizer.ggml.tokens" not in fields:
      raise KeyError("GGUF metadata has no 'tokenizer.ggml.tokens'.")
    tokens = [str(t) for t in fields["tokenizer.ggml.tokens"]]
    token_types = [int(t) for t in fields.get("tokenizer.ggml.token_type", ())]
    merges = [_split_merge(m) for m in fields.get("tokenizer.ggml.merges", ())]

    # Tokens are stored already spelled in the byte-to-unicode alphabet; keep them as they are
    # so that every id means what it means in the file. (On a duplicate spelling the first id
    # is kept.)
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
      vocab.setdefault(token, index)
    bpe = models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                     end_of_word_suffix="", fuse_unk=False, byte_fallback=False,
                     ignore_merges=pre in _IGNORE_MERGES_PRE)
    backend = tokenizers.Tokenizer(bpe)
    backend.pre_tokenizer = _PRE_TOKENIZERS[pre]()
    backend.decoder = decoders.ByteLevel()

    # Control tokens (<|im_start|>, ...) and user-defined ones are matched whole in the text, as
    # llama.cpp does; they take the ids they already have in the vocabulary.
    control, user_defined = [], []
    for index, (token, token_type) in enumerate(zip(tokens, token_types)):
      if vocab.get(token) != index:
        continue
      if token_type == _TOKEN_TYPE_CONTROL:
        control.append(AddedToken(token, special=True, normalized=False))
      elif token_type == _TOKEN_TYPE_USER_DEFINED:
        user_defined.append(AddedToken(token, special=False, normalized=False))
    if control:
      backend.add_special_tokens(control)
    if user_defined:
      backend.add_tokens(user_defined)

    def token_id(key: str) -> int | None:
      value = fields.get(f"tokenizer.ggml.{key}")
      return None if value is None or not 0 <= int(value) < len(tokens) else int(value)

    bos_id, eos_id = token_id("bos_token_id"), token_id("eos_token_id")
    add_bos = fields.get("tokenizer.ggml.add_bos_token", pre in _ADD_BOS_DEFAULT_PRE)
    return cls(
        backend=backend,
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=token_id("padding_token_id"),
        add_bos=bool(add_bos),
        chat_template=fields.get("tokenizer.chat_template"),
        stop_ids=_stop_ids(backend, [eos_id] if eos_id is not None else []),
    )

  @classmethod
  def from_pretrained_dir(cls, path: str | os.PathLike) -> Tokenizer:
    """Loads a Hugging Face model directory's tokenizer.

    Reads `tokenizer.json`; `tokenizer_config.json` (bos/eos/pad tokens, add_bos_token,
    chat_template), `chat_template.jinja` and `generation_config.json` (eos_token_id, an int or
    a list, for stop ids) when present.

    Raises:
      FileNotFoundError: the directory has no tokenizer.json.
    """
    path = os.fspath(path)
    tokenizer_file = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(tokenizer_file):
      raise FileNotFoundError(f"No tokenizer.json in {path!r} (expected {tokenizer_file!r}).")
    backend = tokenizers.Tokenizer.from_file(tokenizer_file)
    config = _read_json(os.path.join(path, "tokenizer_config.json"))
    generation = _read_json(os.path.join(path, "generation_config.json"))

    def special_id(name: str) -> int | None:
      token = config.get(name)
      if isinstance(token, Mapping):  # {"content": ..., "__type": "AddedToken"}
        token = token.get("content")
      return backend.token_to_id(token) if isinstance(token, str) else None

    bos_id, eos_id = special_id("bos_token"), special_id("eos_token")
    pad_id = special_id("pad_token")
    if bos_id is None and isinstance(generation.get("bos_token_id"), int):
      bos_id = generation["bos_token_id"]
    if "add_bos_token" in config:
      add_bos = bool(config["add_bos_token"])
    else:  # the post-processor of tokenizer.json (e.g. Llama-3's template) may add BOS.
      add_bos = bos_id is not None and backend.encode("").ids[:1] == [bos_id]

    chat_template = _chat_template_from_config(config.get("chat_template"))
    jinja_file = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja_file):
      with open(jinja_file, encoding="utf-8") as f:
        chat_template = f.read()

    generation_eos = generation.get("eos_token_id")
    if isinstance(generation_eos, int):
      generation_eos = [generation_eos]
    declared = [i for i in [eos_id, *(generation_eos or ())] if isinstance(i, int)]
    if eos_id is None and declared:
      eos_id = declared[0]
    return cls(backend=backend, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, add_bos=add_bos,
               chat_template=chat_template, stop_ids=_stop_ids(backend, declared))


def _split_merge(merge: str) -> tuple[str, str]:
  """"a b" -> ("a", "b"); the separator is the first space after the first character."""
  cut = merge.find(" ", 1)
  if cut < 0:
    raise ValueError(f"Malformed BPE merge {merge!r} in the GGUF metadata.")
  return merge[:cut], merge[cut + 1:]


def _stop_ids(backend: tokenizers.Tokenizer, declared: Iterable[int]) -> tuple[int, ...]:
  """The declared ids, then the known end tokens the vocabulary has, without repeats."""
  found = [backend.token_to_id(t) for t in _STOP_TOKENS]
  return tuple(dict.fromkeys(i for i in [*declared, *found] if i is not None))


def _read_json(path: str) -> dict[str, Any]:
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _chat_template_from_config(value: Any) -> str | None:
  """A string, or the older list of {"name", "template"} entries (take "default")."""
  if isinstance(value, list):
    named = {entry.get("name"): entry.get("template") for entry in value}
    return named.get("default", next(iter(named.values()), None))
  return value


def _raise_exception(message: str) -> None:
  raise ValueError(f"Chat template error: {message}")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
  return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
  return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def _compile_chat_template(source: str):
  """A sandboxed jinja2 template with the settings and helpers HF chat templates expect."""
  from jinja2 import ext, sandbox  # pylint: disable=import-outside-toplevel

  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=[ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = _strftime_now
  return env.from_string(source)
