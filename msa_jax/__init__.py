"""msa_jax: Memory Sparse Attention (MSA) in JAX/Flax.

Packages, from the top layer down (each imports only the ones below it; the import-linter
contract in pyproject.toml enforces it, see README "Architecture"):
  entry points  train (`python -m msa_jax.train`), evaluate, generate, bank, scale, benchmarks
  train         the training loop, steps, optimiser, metrics, workdir binding, router adaptation
  evaluation    retrieval metrics, extrapolation tables, the evaluate and NIAH runners
  inference     the MSA engine (prefill/decode over routed memory), KV-cached decoding, sampling
  loading       the model of a config, pretrained backbones, trained workdirs
  memory        the on-disk bank of document states and routing over it
  datasets      tensorflow-datasets builders (no TensorFlow)
  data          synthetic/NIAH/retrieval task data, segmentation, BM25, hard negatives
  checkpoint    HF safetensors, GGUF, tokenizers, HF ids, orbax train-state checkpoints
  model         the backbone and MSA layers, routing math, losses
  pallas_kernels (top-level package) routing-score and block-sparse attention kernels
  runtime       compilation cache, meshes and shardings, multi-process setup
  validation    user errors, readers, formatting
"""

__version__ = "0.1.0"
