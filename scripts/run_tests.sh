#!/usr/bin/env bash
# Run the test suite on CPU in the project venv (bootstrapped on first use).
# Usage: bash scripts/run_tests.sh [pytest args...]
#   bash scripts/run_tests.sh -k gae -x                  # all of tests/, filtered
#   bash scripts/run_tests.sh tests/test_config.py -x    # naming a test path runs only that path
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh test

# `tests` is the default target unless an argument already names a test file or folder (path::node allowed).
targets=(tests)
for arg in "$@"; do
    if [[ "$arg" != -* && -e "${arg%%::*}" ]]; then
        targets=()
        break
    fi
done
exec "$MINDRLHF_PYTHON" -m pytest ${targets[@]+"${targets[@]}"} -q "$@"
