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
      - For an HA cluster, every node's address, comma-separated (or C(KEYOPS_VAULT_ADDRS) in the environment,
        which wins); keyops sends to the active node, follows failovers and retries what is safe to repeat.
      - When unset, C(VAULT_ADDR), then C(BAO_ADDR); else C(https://127.0.0.1:8200).
    type: str
  token:
    description:
      - 'Vault token. Prefer C(VAULT_TOKEN) in the environment, O(token_file), or the C(token) that one
        M(keyops.kms.login) task per play returns (C(token: "{{ keyops_login.token }}")) to a literal.'
      - With a token, the task does not log in with an auth method (unless O(auth_method) names one).
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
        else logs in with the one auth method whose role is set (O(role_id), O(jwt_role) or O(kubernetes_role)).
      - V(token) ignores AppRole settings; V(approle), V(jwt) and V(kubernetes) log in with that method
        and ignore any token in the environment.
      - Each task that logs in spends a login (a use of a single-use AppRole secret id); log in once per
        play with M(keyops.kms.login) and pass its token to the later tasks.
    type: str
    choices: [auto, token, approle, jwt, kubernetes]
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
  secret_id_file:
    description:
      - File holding the AppRole secret id on one line (C(keyops policy mint --approle) writes one).
        keyops refuses a file that group or others may read. O(secret_id) wins when both are set.
      - When unset, C(VAULT_SECRET_ID_FILE), then C(KEYOPS_APPROLE_SECRET_ID_FILE).
    type: path
  approle_mount:
    description:
      - Mount path of the AppRole auth method.
      - When unset, C(KEYOPS_APPROLE_MOUNT); else C(approle).
    type: str
  jwt_role:
    description:
      - Role of the JWT/OIDC auth method to log in with a CI system's OIDC token (GitHub Actions, GitLab CI).
      - When unset, C(KEYOPS_JWT_ROLE).
    type: str
  jwt:
    description:
      - The signed JWT to log in with. Prefer the environment or O(jwt_file) to a literal.
      - When unset, C(KEYOPS_JWT).
    type: str
  jwt_file:
    description:
      - File holding the JWT; keyops refuses a file that group or others may read. O(jwt) wins when both are set.
      - When unset, C(KEYOPS_JWT_FILE).
    type: path
  jwt_mount:
    description:
      - Mount path of the JWT/OIDC auth method.
      - When unset, C(KEYOPS_JWT_MOUNT); else C(jwt).
    type: str
  kubernetes_role:
    description:
      - Role of the Kubernetes auth method, for jobs that run in a cluster.
      - When unset, C(KEYOPS_KUBERNETES_ROLE).
    type: str
  kubernetes_token_file:
    description:
      - The pod's service-account token.
      - When unset, C(KEYOPS_KUBERNETES_TOKEN_FILE); else C(/var/run/secrets/kubernetes.io/serviceaccount/token).
    type: path
  kubernetes_mount:
    description:
      - Mount path of the Kubernetes auth method.
      - When unset, C(KEYOPS_KUBERNETES_MOUNT); else C(kubernetes).
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
  secret_id_file:
    env:
      - name: VAULT_SECRET_ID_FILE
      - name: KEYOPS_APPROLE_SECRET_ID_FILE
  approle_mount:
    env:
      - name: KEYOPS_APPROLE_MOUNT
  jwt_role:
    env:
      - name: KEYOPS_JWT_ROLE
  jwt:
    env:
      - name: KEYOPS_JWT
  jwt_file:
    env:
      - name: KEYOPS_JWT_FILE
  jwt_mount:
    env:
      - name: KEYOPS_JWT_MOUNT
  kubernetes_role:
    env:
      - name: KEYOPS_KUBERNETES_ROLE
  kubernetes_token_file:
    env:
      - name: KEYOPS_KUBERNETES_TOKEN_FILE
  kubernetes_mount:
    env:
      - name: KEYOPS_KUBERNETES_MOUNT
  kv_mount:
    env:
      - name: KEYOPS_KV_MOUNT
  transit_mount:
    env:
      - name: KEYOPS_TRANSIT_MOUNT
"""
