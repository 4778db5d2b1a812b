#!/usr/bin/env bash
# Quickstart, tests: the default (CPU) pytest run. Extra arguments go to pytest.
#
# Tests run in parallel over the machine's cores (pytest-xdist, one worker per core, each test
# module on one worker so its module fixtures are built once). MSA_JAX_TEST_WORKERS=N sets the
# number of workers (0: one process, no xdist). Arguments that need one process (-s,
# --capture=no, --pdb) or choose the workers themselves (-n) go to pytest alone.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
install_requirements requirements-test.txt
workers="${MSA_JAX_TEST_WORKERS:-auto}"
for arg in "$@"; do
  case "$arg" in
    -s|--capture=no|--pdb|-n|-n*|--numprocesses*) workers=0 ;;
  esac
done
if [[ "$workers" == 0 ]]; then
  exec python -m pytest "$@"
fi
exec python -m pytest -n "$workers" --dist loadscope --no-loadscope-reorder "$@"
