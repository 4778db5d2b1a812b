#!/usr/bin/env bash
# Quickstart, main job: train MSA on the synthetic memory task (configs/demo.py, a few minutes on
# a 2-core CPU), then print the train-short/infer-long table (memories 1x to 1000x the training
# memory). Extra arguments go to `python -m msa_jax.train`, e.g. --config=configs/demo.py:global_rope
# or --workdir=DIR (default: ./workdirs/demo; rerunning resumes from it).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
install_requirements requirements.txt
workdir=./workdirs/demo
for arg in "$@"; do
  case "$arg" in --workdir=*) workdir="${arg#--workdir=}" ;; esac
done
exec python -m msa_jax.train --config=configs/demo.py --workdir="$workdir" "$@"
