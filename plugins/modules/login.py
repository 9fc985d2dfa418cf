#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: login
short_description: Log in to Vault once and return the token for a play's later keyops tasks
author:
  - keyops contributors (!UNKNOWN)
version_added: 0.1.0
description:
  - Logs in with the configured auth method (AppRole, JWT/OIDC, Kubernetes; see O(auth_method)) and returns
    the token, so that the play's later keyops tasks use it (C(token), C(auth_method=token)) instead of each
    logging in again. A single-use AppRole secret id allows one login, and so one task without this step.
  - With no auth method configured (V(auto) and no role), checks the configured token (O(token),
    O(token_file), C(~/.vault-token)) and returns it, so that a play written for a login also runs with a token.
  - Shaped like M(community.hashi_vault.vault_login); returns the token itself, not Vault's raw answer.
extends_documentation_fragment:
  - keyops.kms.connection
  - keyops.kms.hsm
  - keyops.kms.attributes
notes:
  - 'The result is always hidden from Ansible''s output and logs (as with C(no_log) on the task) by the
    module''s action plugin, at every verbosity; it stays available to C(register).'
  - Reports C(changed=false), since a login changes nothing that keyops manages.
seealso:
  - module: community.hashi_vault.vault_login
  - module: keyops.kms.rotate
attributes:
  check_mode:
    description: Runs in check mode, without a login that would spend anything.
    support: partial
    details:
      - In check mode an AppRole, JWT or Kubernetes login is not performed (it would spend a secret id use and
        make a token) and RV(token) is null; a token is still checked. Put C(check_mode=false) on the task so
        that a play run with C(--check) still gets a token for its later tasks.
  diff_mode:
    description: Changes nothing, so there is nothing to diff.
    support: none
options: {}
"""

EXAMPLES = r"""
- name: Log in with a GitLab CI id token (id_tokens variable KEYOPS_JWT)
  keyops.kms.login:
    auth_method: jwt
    jwt_role: keyops-rotation
  register: keyops_login
  check_mode: false

- name: Pass the token to a single task explicitly
  keyops.kms.key_info:
    token: "{{ keyops_login.token }}"
    auth_method: token

- name: Log in once, then every keyops task of the play uses the token
  hosts: keyops
  gather_facts: false
  module_defaults:
    group/keyops.kms.all: "{{ keyops_connection | combine(keyops_session) }}"
  vars:
    # Empty until the login ran (the login task itself logs in with keyops_connection).
    keyops_session: >-
      {{ {'token': keyops_login.token, 'auth_method': 'token'} if keyops_login.token | default('') else {} }}
  tasks:
    - name: Log in to Vault (AppRole secret id from VAULT_SECRET_ID or VAULT_SECRET_ID_FILE)
      keyops.kms.login:
      register: keyops_login
      check_mode: false

    - name: Rotate what is due
      keyops.kms.rotate:
        due_only: true

    - name: Re-encrypt (the same token; no second login)
      keyops.kms.reencrypt:
        tenants: [acme]
"""

RETURN = r"""
token:
  description: The Vault token. Hidden from every output; null in check mode for a login method.
  returned: always
  type: str
  sample: null
method:
  description: The method used, V(token) when an existing token was checked.
  returned: always
  type: str
  sample: approle
mount:
  description: Mount path of the auth method (null for V(token)).
  returned: always
  type: str
  sample: approle-keyops
accessor:
  description: The token's accessor (for audit and revocation; not a secret). Null in check mode for a login method.
  returned: always
  type: str
  sample: 5ZbcGuxfzLCgEb3v1FQZAs2H
policies:
  description: The token's policies.
  returned: always
  type: list
  elements: str
  sample: [default, keyops-rotation]
ttl:
  description: Seconds the token lives (0 for a token without expiry).
  returned: always
  type: int
  sample: 3600
renewable:
  description: Whether the token can be renewed.
  returned: always
  type: bool
  sample: true
"""

from ansible_collections.keyops.kms.plugins.module_utils._connection import KeyopsModule, build_config

try:
    from keyops.ops.login import login, planned_method
except ImportError:
    pass  # KeyopsModule reports the missing library


def main():
    module = KeyopsModule(argument_spec={}, supports_check_mode=True)
    with module.errors():
        config = build_config(module.params)
        method = planned_method(config)
        if module.check_mode and method != "token":
            module.exit_json(changed=False, token=None, method=method, mount=None, accessor=None, policies=[],
                             ttl=0, renewable=False)
        result = login(config)
    # A token given as the (no_log) token option would otherwise come back masked; the action
    # plugin hides the whole result instead.
    module.no_log_values.discard(result.token)
    module.exit_json(changed=False, token=result.token, **result.view())


if __name__ == "__main__":
    main()
