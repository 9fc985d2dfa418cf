#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: tenant
short_description: Ensure a keyops tenant keyring exists with its rotation policy, or is removed
author:
  - keyops contributors (!UNKNOWN)
version_added: 0.1.0
description:
  - Creates a tenant's keyring with its first KEK (wrapped by the HSM master key) and first DEK, or
    changes the policy of an existing tenant (KEK and DEK periods, DEK usage cap), or removes the
    keyring of a tenant that has no secrets left.
  - A keyring left half-made by an interrupted run is completed.
  - Options left unset keep an existing tenant's value; a new tenant gets the documented defaults.
extends_documentation_fragment:
  - keyops.kms.connection
  - keyops.kms.hsm
  - keyops.kms.attributes
notes:
  - The KEK residence cannot change in place; create another tenant and migrate its secrets.
  - O(state=absent) refuses while the tenant still has secrets, and leaves the Transit key of a
    residence C(transit) tenant in place (remove it with M(keyops.kms.transit_key) if wanted).
seealso:
  - module: keyops.kms.master_key
  - module: keyops.kms.rotate
  - module: keyops.kms.key_info
  - name: OpenBao KV version 2
    description: The secrets engine that holds keyrings (C(tenants/<name>/keyring)) with check-and-set.
    link: https://openbao.org/docs/secrets/kv/kv-v2/
attributes:
  check_mode:
    description: Reports what would be created, changed or removed, and changes nothing.
    support: full
  diff_mode:
    description: Shows the policy and the KEK and DEK versions with their states before and after; never key material.
    support: full
options:
  name:
    description: The tenant; 1-63 lowercase ASCII letters, digits, C(-) or C(_).
    type: str
    required: true
    aliases: [tenant]
  state:
    description: V(present) creates or updates the tenant; V(absent) removes its keyring.
    type: str
    choices: [present, absent]
    default: present
  residence:
    description:
      - Where the tenant's KEK lives. V(kv) wraps it with the HSM master key in KV; V(transit)
        also imports it into a non-exportable Transit key C(keyops-<name>), so that applications
        unwrap DEKs through Transit without HSM access.
      - V(kv) for a new tenant when unset.
    type: str
    choices: [kv, transit]
  kek_period_days:
    description: Days after which the primary KEK is due for rotation. V(90) for a new tenant when unset.
    type: int
  dek_period_days:
    description: Days after which the primary DEK is due for rotation. V(30) for a new tenant when unset.
    type: int
  dek_usage_cap:
    description:
      - Encryptions a DEK may perform; it is due for rotation at 90% of the cap and refuses to
        encrypt at the cap. V(1073741824) (2^30) for a new tenant when unset; at most 2^32 - 1.
    type: int
"""

EXAMPLES = r"""
- name: Tenants with their rotation policies
  keyops.kms.tenant:
    name: "{{ item.name }}"
    residence: "{{ item.residence | default('kv') }}"
    kek_period_days: "{{ item.kek_period_days | default(90) }}"
    dek_period_days: "{{ item.dek_period_days | default(30) }}"
  loop: "{{ keyops_tenants }}"
  delegate_to: localhost

- name: Preview a policy change (check mode, with the diff)
  keyops.kms.tenant:
    name: acme
    dek_period_days: 7
  check_mode: true
  diff: true

- name: Remove a tenant that has no secrets left
  keyops.kms.tenant:
    name: retired-customer
    state: absent
"""

RETURN = r"""
tenant:
  description: The tenant's name.
  returned: always
  type: str
  sample: acme
exists:
  description: Whether the tenant exists after the task (in check mode, would exist).
  returned: always
  type: bool
  sample: true
policy:
  description: The tenant's policy after the task.
  returned: when O(state=present)
  type: dict
  sample:
    kek_residence: kv
    kek_period_days: 90
    dek_period_days: 30
    dek_usage_cap: 1073741824
kek_version:
  description: Primary KEK version; null in check mode for a tenant that does not exist yet.
  returned: when O(state=present)
  type: int
  sample: 1
dek_version:
  description: Primary DEK version; null in check mode for a tenant that does not exist yet.
  returned: when O(state=present)
  type: int
  sample: 1
"""

from ansible_collections.keyops.kms.plugins.module_utils._connection import KeyopsModule

try:
    from keyops.errors import TenantNotFound
    from keyops.model.keyring import Policy
    from keyops.ops.views import keyring_view
except ImportError:
    pass  # KeyopsModule reports the missing library

POLICY_OPTIONS = {"kek_period_days": "kek_period_days", "dek_period_days": "dek_period_days",
                  "dek_usage_cap": "dek_usage_cap", "residence": "kek_residence"}


def wanted_policy(params, current):
    """The policy the task asks for: its options over the current policy (or the defaults)."""
    base = current.to_dict() if current is not None else Policy().to_dict()
    for option, field in POLICY_OPTIONS.items():
        if params[option] is not None:
            base[field] = params[option]
    return Policy.from_dict(base)


def ensure_present(k, name, params, check_mode):
    try:
        before = k.get_tenant(name)
    except TenantNotFound:
        before = None
    if before is None or before.dek.empty:
        result = k.create_tenant(name, wanted_policy(params, before.policy if before else None),
                                 dry_run=check_mode)
        return before, result.keyring, result.changed
    result = k.update_policy(name, wanted_policy(params, before.policy), dry_run=check_mode)
    return before, result.keyring, result.changed


def main():
    module = KeyopsModule(
        argument_spec=dict(
            name=dict(type="str", required=True, aliases=["tenant"]),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            residence=dict(type="str", choices=["kv", "transit"]),
            kek_period_days=dict(type="int"),
            dek_period_days=dict(type="int"),
            dek_usage_cap=dict(type="int"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    name = p["name"]
    with module.session() as k:
        if p["state"] == "absent":
            try:
                before = k.get_tenant(name)
            except TenantNotFound:
                before = None
            changed = k.delete_tenant(name, dry_run=module.check_mode)
            module.exit_json(changed=changed, tenant=name, exists=False,
                             **module.diff(keyring_view(before), keyring_view(None)))
        before, after, changed = ensure_present(k, name, p, module.check_mode)
    after_view = keyring_view(after) if after is not None else {
        "exists": True, "policy": wanted_policy(p, None).to_dict()}
    module.exit_json(
        changed=changed, tenant=name, exists=True, policy=after_view["policy"],
        kek_version=after.kek.primary if after is not None and not after.kek.empty else None,
        dek_version=after.dek.primary if after is not None and not after.dek.empty else None,
        **module.diff(keyring_view(before), after_view))


if __name__ == "__main__":
    main()
