#!/usr/bin/env bash
# Run keyops' benchmarks (see docs/benchmarks.md). Starts and stops its own
# OpenBao + SoftHSM2 stack in a temporary folder; arguments go to benchmarks.run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PYTHON" ]; then
    echo "no $PYTHON: set up the project first (see README.md), or set PYTHON" >&2
    exit 2
fi
exec "$PYTHON" -m benchmarks.run "$@"
