# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

"""Vault/OpenBao connection and auth options, documented once.

``keyops.kms.connection`` is for modules and the lookup alike; the lookup
adds ``keyops.kms.connection.plugins``, which gives each option its C(env)
entries (module docs may not carry C(env): modules read the same variables
as argument-spec fallbacks, see plugins/module_utils/_connection.py).
"""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  url:
    description:
      - Address of the Vault or OpenBao server, for example C(https://vault.example.com:8200).
      - When unset, C(VAULT_ADDR), then C(BAO_ADDR); else C(https://127.0.0.1:8200).
    type: str
  token:
    description:
      - Vault token. Prefer C(VAULT_TOKEN) in the environment or O(token_file) to a literal.
      - When unset, C(VAULT_TOKEN), then C(BAO_TOKEN); then O(token_file); then C(~/.vault-token).
    type: str
  token_file:
    description:
      - File holding the Vault token on one line. keyops refuses a file that group or others may read.
      - When unset, C(KEYOPS_VAULT_TOKEN_FILE).
    type: path
  namespace:
    description:
      - Vault Enterprise namespace.
      - When unset, C(VAULT_NAMESPACE), then C(BAO_NAMESPACE).
    type: str
  ca_cert:
    description:
      - CA bundle that signed the server's certificate.
      - When unset, C(VAULT_CACERT), then C(BAO_CACERT); else the system's trust store.
    type: path
  validate_certs:
    description:
      - Verify the server's TLS certificate.
      - When unset, C(true) unless C(VAULT_SKIP_VERIFY) (or C(BAO_SKIP_VERIFY)) is true.
    type: bool
  auth_method:
    description:
      - How to authenticate.
      - V(auto) uses a token when one is configured (O(token), O(token_file), C(~/.vault-token)),
        else AppRole when O(role_id) is set.
      - V(token) ignores AppRole settings; V(approle) logs in with O(role_id) and O(secret_id)
        and ignores any token in the environment.
    type: str
    choices: [auto, token, approle]
    default: auto
  role_id:
    description:
      - AppRole role id.
      - When unset, C(VAULT_ROLE_ID), then C(KEYOPS_APPROLE_ROLE_ID).
    type: str
  secret_id:
    description:
      - AppRole secret id.
      - When unset, C(VAULT_SECRET_ID), then C(KEYOPS_APPROLE_SECRET_ID).
    type: str
  approle_mount:
    description:
      - Mount path of the AppRole auth method.
      - When unset, C(KEYOPS_APPROLE_MOUNT); else C(approle).
    type: str
  kv_mount:
    description:
      - KV version 2 mount where keyops keeps keyrings, jobs and secret records.
      - When unset, C(KEYOPS_KV_MOUNT); else C(keyops).
    type: str
  transit_mount:
    description:
      - Transit mount of the KEKs of residence C(transit), and of the keys that M(keyops.kms.transit_key) manages.
      - When unset, C(KEYOPS_TRANSIT_MOUNT); else C(transit).
    type: str
"""

    PLUGINS = r"""
options:
  url:
    env:
      - name: VAULT_ADDR
      - name: BAO_ADDR
  token:
    env:
      - name: VAULT_TOKEN
      - name: BAO_TOKEN
  token_file:
    env:
      - name: KEYOPS_VAULT_TOKEN_FILE
  namespace:
    env:
      - name: VAULT_NAMESPACE
      - name: BAO_NAMESPACE
  ca_cert:
    env:
      - name: VAULT_CACERT
      - name: BAO_CACERT
  role_id:
    env:
      - name: VAULT_ROLE_ID
      - name: KEYOPS_APPROLE_ROLE_ID
  secret_id:
    env:
      - name: VAULT_SECRET_ID
      - name: KEYOPS_APPROLE_SECRET_ID
  approle_mount:
    env:
      - name: KEYOPS_APPROLE_MOUNT
  kv_mount:
    env:
      - name: KEYOPS_KV_MOUNT
  transit_mount:
    env:
      - name: KEYOPS_TRANSIT_MOUNT
"""
