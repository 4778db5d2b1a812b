#!/usr/bin/env bash
# Quickstart, tests: the default (CPU) pytest run. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
install_requirements requirements-test.txt
exec python -m pytest "$@"
