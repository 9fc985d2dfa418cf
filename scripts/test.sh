#!/usr/bin/env bash
# Set up (idempotently) and run the whole test suite, integration tests included:
# the suite starts its own OpenBao server and SoftHSM2 token.
#
#   bash scripts/test.sh                 # everything under tests/
#   bash scripts/test.sh -k devstack -x  # arguments go to pytest
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

if [ "$#" -eq 0 ]; then
    set -- tests
fi
exec .venv/bin/python -m pytest "$@"
