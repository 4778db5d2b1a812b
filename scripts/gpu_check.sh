#!/usr/bin/env bash
# The GPU check as one command on the device machine (see scripts/gpu_check.py):
#   scripts/gpu_check.sh              # on one H200, carry .whl (WORKSPACE.md "GPU checks")
#   scripts/gpu_check.sh --cpu_smoke  # every part at tiny sizes on the CPU
# Installs the carried wheels (.whl/*.whl: ml_collections, gguf) into /tmp/site when present,
# then writes gpu_check.json + gpu_check.log to $OUT (else ./gpu_check_out).
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
PY="${PYTHON:-$(command -v python3 || command -v python)}"
exec "$PY" scripts/gpu_check.py "$@"
