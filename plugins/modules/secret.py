#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: secret
short_description: Store, read or delete a tenant's secret, encrypted under its DEK
author:
  - keyops contributors (!UNKNOWN)
version_added: 0.1.0
description:
  - V(present) encrypts O(value) with the tenant's primary DEK and stores the record in KV
    (C(secrets/<tenant>/<name>)) with check-and-set. Nothing is written, and C(changed) is false,
    when the stored record already decrypts to O(value).
  - V(get) reads and decrypts the secret and returns it as RV(value).
  - V(absent) removes the record and its KV history.
extends_documentation_fragment:
  - keyops.kms.connection
  - keyops.kms.hsm
  - keyops.kms.attributes
notes:
  - O(value) is a C(no_log) option, so Ansible masks it in every output.
  - 'The result of V(get) is always hidden from Ansible''s output and logs (as with C(no_log) on
    the task) by the module''s action plugin, at every verbosity; it stays available to
    C(register). Put C(no_log: true) on every task that uses the registered value, too.'
  - To read secrets in templates and variables, see the P(keyops.kms.secret#lookup) lookup.
seealso:
  - plugin: keyops.kms.secret
    plugin_type: lookup
  - module: keyops.kms.tenant
  - module: keyops.kms.migrate
attributes:
  check_mode:
    description:
      - V(present) and V(absent) report whether they would write or delete, and change nothing.
        V(get) reads as usual.
    support: full
  diff_mode:
    description:
      - Shows whether the record exists, its KV version and the DEK version it is encrypted
        with, before and after; never the value.
    support: full
options:
  tenant:
    description: The tenant that owns the secret; it must exist (M(keyops.kms.tenant)).
    type: str
    required: true
  name:
    description:
      - The secret's name; C(/)-separated segments of ASCII letters, digits and C(_.@+=,-),
        with no empty, C(.) or C(..) segment.
    type: str
    required: true
  value:
    description:
      - The plaintext to store. Required with O(state=present). Text, stored as UTF-8.
    type: str
  state:
    description: V(present) stores O(value); V(get) returns the value; V(absent) deletes the secret.
    type: str
    choices: [present, absent, get]
    default: present
"""

EXAMPLES = r"""
- name: Store the database password (no change when it is already stored)
  keyops.kms.secret:
    tenant: acme
    name: db/password
    value: "{{ vault_db_password }}"
  delegate_to: localhost

- name: Would this write? (check mode with diff shows versions, never the value)
  keyops.kms.secret:
    tenant: acme
    name: db/password
    value: "{{ vault_db_password }}"
  check_mode: true
  diff: true

- name: Read a secret; the task's output is hidden, the registered value is not
  keyops.kms.secret:
    tenant: acme
    name: db/password
    state: get
  register: db_password

- name: Use it, with no_log on the consuming task too
  ansible.builtin.template:
    src: app.conf.j2
    dest: /etc/app/app.conf
    mode: "0600"
  vars:
    password: "{{ db_password.value }}"
  no_log: true

- name: Delete a secret
  keyops.kms.secret:
    tenant: acme
    name: db/old-password
    state: absent
"""

RETURN = r"""
tenant:
  description: The tenant.
  returned: always
  type: str
  sample: acme
name:
  description: The secret's name.
  returned: always
  type: str
  sample: db/password
exists:
  description: Whether the secret exists after the task (in check mode, would exist).
  returned: always
  type: bool
  sample: true
kv_version:
  description:
    - KV version of the record after the task; null when it is absent, or not yet written in check mode.
  returned: always
  type: int
  sample: 3
dek_version:
  description: Version of the DEK the stored record is encrypted with; null when unknown or absent.
  returned: always
  type: int
  sample: 2
value:
  description:
    - The decrypted secret, with O(state=get). Hidden from all output; use it through C(register).
    - Base64 of the bytes when they are not valid UTF-8 (then RV(value_encoding) is V(base64)).
  returned: when O(state=get)
  type: str
  sample: correct horse battery staple
value_encoding:
  description: V(utf-8), or V(base64) when the stored bytes are not valid UTF-8.
  returned: when O(state=get)
  type: str
  sample: utf-8
"""

import base64

from ansible_collections.keyops.kms.plugins.module_utils._connection import KeyopsModule


def record_view(record):
    if record is None:
        return {"exists": False, "kv_version": None, "dek_version": None}
    return {"exists": True, "kv_version": record.kv_version, "dek_version": record.dek_version}


def main():
    module = KeyopsModule(
        argument_spec=dict(
            tenant=dict(type="str", required=True),
            name=dict(type="str", required=True),
            value=dict(type="str", no_log=True),
            state=dict(type="str", default="present", choices=["present", "absent", "get"]),
        ),
        required_if=[("state", "present", ["value"])],
        supports_check_mode=True,
    )
    p = module.params
    tenant, name, state = p["tenant"], p["name"], p["state"]
    with module.session() as k:
        if state == "get":
            raw = k.get_secret(tenant, name)
            record = k.read_record(tenant, name)
            try:
                value, encoding = raw.decode("utf-8"), "utf-8"
            except UnicodeDecodeError:
                value, encoding = base64.b64encode(raw).decode("ascii"), "base64"
            module.exit_json(changed=False, tenant=tenant, name=name, value=value, value_encoding=encoding,
                             **record_view(record))
        before = record_view(k.read_record(tenant, name))
        if state == "absent":
            changed = k.delete_secret(tenant, name, dry_run=module.check_mode)
            after = record_view(None)
        else:
            result = k.put_secret(tenant, name, p["value"], dry_run=module.check_mode)
            changed = result.changed
            after = {"exists": True, "kv_version": result.version if not (changed and module.check_mode) else None,
                     "dek_version": result.dek_version}
    module.exit_json(changed=changed, tenant=tenant, name=name, **after, **module.diff(before, after))


if __name__ == "__main__":
    main()
