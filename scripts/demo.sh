#!/usr/bin/env bash
# The main job, from a fresh clone, in one command:
#
#   bash scripts/demo.sh
#
# 1. set up (idempotent): .venv with keyops, Ansible, and SoftHSM2 from Debian if missing;
# 2. bring up the local stack: a real OpenBao server (raft storage) and a SoftHSM2 token under
#    ./.keyops ($KEYOPS_STATE_DIR to put it elsewhere);
# 3. install the collection keyops.kms from this checkout into .keyops/collections (git ignores it);
# 4. run, against inventories/dev: ansible/site.yml (master key, tenants, seed secrets),
#    ansible/rotate.yml (rotate what is due, re-encrypt after DEK rotations) and ansible/status.yml.
#
# Safe to run again: every step is idempotent (a second site.yml reports changed=0).
# Stop the stack afterwards with: .venv/bin/keyops dev down
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

step() { printf '\n==> %s\n' "$*" >&2; }

step "set-up (scripts/setup.sh)"
bash scripts/setup.sh

export PATH="$root/.venv/bin:$PATH"

step "local stack: OpenBao + SoftHSM2 (keyops dev up)"
keyops dev up

# This shell now talks to the dev stack only: its address, token file, HSM
# token and PIN file (no secret is printed). Credentials of another Vault that
# the calling shell may hold must not reach it.
unset VAULT_ROLE_ID VAULT_SECRET_ID KEYOPS_APPROLE_ROLE_ID KEYOPS_APPROLE_SECRET_ID VAULT_NAMESPACE BAO_NAMESPACE
eval "$(keyops dev env)"

step "collection keyops.kms from this checkout into .keyops/collections"
export ANSIBLE_COLLECTIONS_PATH="$root/.keyops/collections"
ansible-galaxy collection install "$root" -p "$ANSIBLE_COLLECTIONS_PATH" --force

export ANSIBLE_CONFIG="$root/ansible.cfg"
for playbook in site rotate status; do
    step "ansible-playbook -i inventories/dev ansible/$playbook.yml"
    ansible-playbook -i inventories/dev "ansible/$playbook.yml"
done

step "done; stop the stack with: .venv/bin/keyops dev down"
