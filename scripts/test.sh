#!/usr/bin/env bash
# Set up (idempotently) and run the whole test suite, integration tests included:
# the suite starts its own OpenBao server and SoftHSM2 token.
#
#   bash scripts/test.sh                 # ruff and mypy --strict, then everything under tests/
#   bash scripts/test.sh -m "not slow"   # quick run: pytest only, without the crash and scale tests
#   bash scripts/test.sh -k devstack -x  # arguments go to pytest (and skip the lint step)
#
# ruff and mypy read their settings from pyproject.toml; a finding fails the run.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

if [ "$#" -eq 0 ]; then
    lint_failed=0
    echo "test: ruff check" >&2
    .venv/bin/python -m ruff check . || lint_failed=1
    echo "test: mypy --strict keyops" >&2
    .venv/bin/python -m mypy --strict keyops || lint_failed=1
    if [ "$lint_failed" -ne 0 ]; then
        echo "test: ruff or mypy found problems (above); fix them before the tests run" >&2
        exit 1
    fi
    set -- tests
fi
exec .venv/bin/python -m pytest "$@"
