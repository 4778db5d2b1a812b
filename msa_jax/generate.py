"""Generate text with a pretrained backbone: `python -m msa_jax.generate --config=configs/generate.py`.

See configs/generate.py for the variants. `run(config)` is the importable entry point that tests
and notebooks call. Prompts, dtype and sampling settings are checked before the checkpoint is
loaded; user errors print one `error: ...` line and exit with status 2 (`--verbose`: traceback).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from absl import flags
import jax
from ml_collections import config_flags

from msa_jax import runtime, validation
from msa_jax.checkpoint import load_checkpoint
from msa_jax.checkpoint.hf import dtype_from_name
from msa_jax.inference import SamplingConfig, generate_text
from msa_jax.model import Transformer

def check_config(config, prompts: Sequence[str]) -> None:
  """Prompts, dtype and sampling settings (before anything is loaded).

  Raises:
    UserError: an empty prompt, an unknown dtype, a bad sampling setting or scan_decode.
  """
  if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
    raise validation.UserError(f"prompts must be non-empty strings, got {list(prompts)!r}")
  for name in ("dtype", "param_dtype"):
    try:
      dtype_from_name(config[name])
    except ValueError as e:
      raise validation.UserError(f"{name}: {e}") from None
  try:
    SamplingConfig(**config.sampling.to_dict())
  except ValueError as e:
    raise validation.UserError(f"sampling.{e}") from None
  validation.check_choice("scan_decode", config.get("scan_decode"), (None, True, False))


def run(config, prompts: Sequence[str] | None = None) -> list[str]:
  """Loads config.checkpoint and returns one continuation per prompt (printing progress)."""
  prompts = list(prompts or config.prompts)
  check_config(config, prompts)
  dtype, param_dtype = dtype_from_name(config.dtype), dtype_from_name(config.param_dtype)
  print(f"loading {config.checkpoint or 'SmolLM2-135M-Instruct (GGUF)'}...", flush=True)
  start = time.perf_counter()
  cfg, params, tokenizer = load_checkpoint(config.checkpoint or None, dtype=param_dtype)
  print(f"loaded {config.checkpoint or 'SmolLM2-135M-Instruct (GGUF)'}: {cfg.num_layers} layers, "
        f"embed {cfg.embed_dim}, vocab {cfg.vocab_size} in {time.perf_counter() - start:.1f} s "
        f"on {jax.devices()[0].platform}", flush=True)
  if config.chat:
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}]) for p in prompts]
  sampling = SamplingConfig(**config.sampling.to_dict(), stop_tokens=tokenizer.stop_ids,
                            pad_id=tokenizer.pad_id or 0)
  model = Transformer(cfg, dtype=dtype, param_dtype=param_dtype,
                      scan_decode=config.get("scan_decode"))
  print("compiling and generating...", flush=True)
  start = time.perf_counter()
  texts = generate_text(model, params, tokenizer, prompts, sampling,
                        rng=jax.random.key(config.seed))
  elapsed = time.perf_counter() - start
  print(f"generated {len(prompts)} x up to {sampling.max_new_tokens} tokens in {elapsed:.1f} s "
        "(including compilation)", flush=True)
  return texts


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise validation.UserError(f"unexpected arguments: {argv[1:]}")
  runtime.start_command()
  config, prompts = flags.FLAGS.config, flags.FLAGS.prompt
  for prompt, text in zip(prompts or config.prompts, run(config, prompts)):
    print(f"\n>>> {prompt}\n{text}")


if __name__ == "__main__":
  # Flags are defined only when run as a program (tests and notebooks import this module).
  config_flags.DEFINE_config_file(
      "config", "configs/generate.py", validation.config_help("Generation config",
                                                              "configs/generate.py"))
  flags.DEFINE_multi_string("prompt", None, "Prompt(s); overrides config.prompts.")
  validation.run_app(main)
