#!/usr/bin/env bash
# Regenerates the Python stubs of the Kubernetes KMS v2 API (keyops/kms/v2/api_pb2*.py) from
# keyops/kms/v2/api.proto. The stubs are committed, so that an install needs no protoc; a unit
# test checks that they match what this script generates from the committed .proto.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. keyops/kms/v2/api.proto
