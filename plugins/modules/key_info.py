#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: key_info
short_description: Versions, states, ages, usage and due rotations of keyops keys
author:
  - keyops contributors (!UNKNOWN)
version_added: 0.1.0
description:
  - Reports the master key registry and, for one tenant or every tenant, the KEK and DEK versions
    with their states, ages, DEK usage against its cap, when each level is next due and what is
    due now (and why).
  - Reads keyrings from KV only; needs no HSM access and never changes anything.
extends_documentation_fragment:
  - keyops.kms.connection
  - keyops.kms.hsm
  - keyops.kms.attributes
  - keyops.kms.attributes.read_only
notes:
  - Returns no key material; wrapped keys are not returned either.
seealso:
  - module: keyops.kms.rotate
  - module: keyops.kms.tenant
options:
  tenant:
    description: Report only this tenant. Every tenant when unset.
    type: str
"""

EXAMPLES = r"""
- name: Status of every tenant
  keyops.kms.key_info:
  register: keys

- name: Tenants with something due
  ansible.builtin.debug:
    msg: "{{ keys.due | map(attribute='tenant') | unique | list }}"

- name: One tenant's DEK versions
  keyops.kms.key_info:
    tenant: acme
  register: acme

- name: Fail when a DEK is past its usage threshold
  ansible.builtin.assert:
    that: acme.tenants[0].due | selectattr('reason', 'equalto', 'usage') | list | length == 0

- name: Status with the connection set once for the play
  hosts: localhost
  connection: local
  module_defaults:
    group/keyops.kms.all: "{{ keyops_connection }}"
  tasks:
    - name: Status
      keyops.kms.key_info:
"""

RETURN = r"""
master:
  description: The master key registry (null before the first tenant registers it).
  returned: always
  type: dict
  sample:
    registry_id: 3f9c2a7b1d4e5f60
    primary: 1
    period_days: 365
    versions:
      - version: 1
        label: keyops-master-3f9c2a7b1d4e5f60-v1
        key_id: 3f9c2a7b1d4e5f6000000001
        state: active
        created_at: "2025-01-07T10:00:00Z"
tenants:
  description: Status of each tenant reported.
  returned: always
  type: list
  elements: dict
  sample:
    - tenant: acme
      residence: kv
      created_at: "2025-01-07T10:00:00Z"
      policy: {kek_residence: kv, kek_period_days: 90, dek_period_days: 30, dek_usage_cap: 1073741824}
      kek:
        level: kek
        primary: 1
        period_days: 90
        next_due: "2025-04-07T10:00:00Z"
        versions:
          - {version: 1, state: active, created_at: "2025-01-07T10:00:00Z", age_days: 12.5, parent_version: 1,
             uses: null}
      dek:
        level: dek
        primary: 2
        period_days: 30
        next_due: "2025-02-16T10:00:00Z"
        versions:
          - {version: 1, state: decrypt_only, created_at: "2025-01-07T10:00:00Z", age_days: 12.5,
             parent_version: 1, uses: 8192}
          - {version: 2, state: active, created_at: "2025-01-17T10:00:00Z", age_days: 2.5,
             parent_version: 1, uses: 4096}
      dek_usage: 4096
      dek_usage_cap: 1073741824
      due: []
problems:
  description:
    - Tenants whose status could not be read (for example a corrupted keyring), each on its own; the other
      tenants are still reported in RV(tenants). The task does not fail for them.
  returned: always
  type: list
  elements: dict
  sample:
    - tenant: dd
      error: keyring_corrupt
      exit_code: 8
      message: "keyring of tenant 'dd' has schema '1' (a string); expected the number 1 (...)"
due:
  description: Everything due now across the tenants reported, with the reason (C(age) or C(usage)).
  returned: always
  type: list
  elements: dict
  sample:
    - tenant: globex
      level: dek
      version: 2
      reason: age
      detail: 31.2 days old, period 30 days
"""

from ansible_collections.keyops.kms.plugins.module_utils._connection import KeyopsModule

try:
    from keyops.ops.views import to_json
except ImportError:
    pass  # KeyopsModule reports the missing library


def main():
    module = KeyopsModule(
        argument_spec=dict(tenant=dict(type="str")),
        supports_check_mode=True,
    )
    with module.session() as k:
        statuses = k.status(module.params["tenant"])
        found = k.read_master()
    tenants = [to_json(s) for s in statuses]
    due = [dict(tenant=s["tenant"], **d) for s in tenants for d in s["due"]]
    master = to_json(found[0].to_dict()) if found else None
    if master is not None:
        master.pop("schema", None)
    problems = [to_json(p) for p in getattr(statuses, "problems", ())]
    module.exit_json(changed=False, master=master, tenants=tenants, due=due, problems=problems)


if __name__ == "__main__":
    main()
