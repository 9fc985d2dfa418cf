# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

"""Vault/OpenBao connection and auth options, documented once.

``keyops.kms.connection`` is for modules; ``keyops.kms.connection.plugins``
is the same text with C(env) entries, for the lookup (module docs may not
carry C(env); modules read the same variables as argument-spec fallbacks).
"""

from __future__ import annotations

import textwrap

import yaml

_OPTIONS = r"""
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

#: option -> environment variables, first set wins (the lookup's C(env) entries).
ENV = {
    "url": ["VAULT_ADDR", "BAO_ADDR"],
    "token": ["VAULT_TOKEN", "BAO_TOKEN"],
    "token_file": ["KEYOPS_VAULT_TOKEN_FILE"],
    "namespace": ["VAULT_NAMESPACE", "BAO_NAMESPACE"],
    "ca_cert": ["VAULT_CACERT", "BAO_CACERT"],
    "role_id": ["VAULT_ROLE_ID", "KEYOPS_APPROLE_ROLE_ID"],
    "secret_id": ["VAULT_SECRET_ID", "KEYOPS_APPROLE_SECRET_ID"],
    "approle_mount": ["KEYOPS_APPROLE_MOUNT"],
    "kv_mount": ["KEYOPS_KV_MOUNT"],
    "transit_mount": ["KEYOPS_TRANSIT_MOUNT"],
}


def with_env(options_yaml, env):
    """The options as plugin docs: each option gains its C(env) entries."""
    options = yaml.safe_load(options_yaml)
    for name, names in env.items():
        options[name]["env"] = [{"name": n} for n in names]
    return yaml.safe_dump({"options": options}, sort_keys=False)


class ModuleDocFragment:
    DOCUMENTATION = "options:\n" + textwrap.indent(_OPTIONS.strip("\n"), "  ") + "\n"

    PLUGINS = with_env(_OPTIONS, ENV)
