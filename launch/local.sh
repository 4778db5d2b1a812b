#!/usr/bin/env bash
# N JAX processes on this machine (CPU by default), e.g. to check multi-host code paths:
#   bash launch/local.sh 2 python -m msa_jax.train --config=configs/demo.py --workdir=/tmp/run
# Each process gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, which
# msa_jax.runtime.distributed.initialize() reads. Logs: <workdir or .>/process_<i>.log.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: bash launch/local.sh NUM_PROCESSES COMMAND..." >&2
  exit 2
fi
num=$1; shift
if ! [[ "$num" =~ ^[1-9][0-9]*$ ]]; then
  echo "NUM_PROCESSES must be a positive integer, got '$num'" >&2
  exit 2
fi
port=${JAX_PORT:-$((20000 + RANDOM % 20000))}
export JAX_COORDINATOR_ADDRESS="127.0.0.1:${port}" JAX_NUM_PROCESSES="$num"
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
logdir=${LOG_DIR:-.}
mkdir -p "$logdir"
pids=()
for ((i = 0; i < num; i++)); do
  JAX_PROCESS_ID=$i "$@" >"$logdir/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed; see $logdir/process_$i.log" >&2
    status=1
  fi
done
exit $status
