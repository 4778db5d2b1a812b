#!/usr/bin/env bash
# Quickstart, main job: generate text with the real SmolLM2-135M-Instruct on CPU.
# Extra arguments go to `python -m msa_jax.generate` (e.g. --config=configs/generate.py:chat).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
install_requirements requirements.txt
exec python -m msa_jax.generate --config=configs/generate.py "$@"
