#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: policy
short_description: Apply the Vault ACL policies generated from the keyops roles file
author:
  - keyops contributors (!UNKNOWN)
version_added: 0.1.0
description:
  - Renders one Vault ACL policy per global role (C(keyops-<role>)) and one per tenant role and
    tenant (C(keyops-app-<tenant>)) from the keyops roles file, and creates or updates those whose
    text differs from the server's. Policies already up to date are left alone.
  - With O(state=absent), removes the selected policies (for example those of an offboarded tenant).
  - The roles are C(app) (one tenant), C(rotation), C(auditor) and C(security-admin), plus any role
    an operator adds to the roles file; see C(docs/access.md) of keyops.
extends_documentation_fragment:
  - keyops.kms.connection
  - keyops.kms.hsm
  - keyops.kms.attributes
notes:
  - Needs a token of the C(security-admin) role (or root); other tokens are refused before any change.
  - A roles file with an unknown role, operation, capability or key fails the task and applies nothing.
seealso:
  - module: keyops.kms.tenant
  - module: keyops.kms.key_info
  - name: OpenBao policies
    description: How Vault/OpenBao ACL policies grant capabilities on paths.
    link: https://openbao.org/docs/concepts/policies/
attributes:
  check_mode:
    description: Reports which policies would be created, updated or removed, and changes nothing.
    support: full
  diff_mode:
    description: Shows the HCL of each changed policy before and after (policies hold no secret).
    support: full
options:
  roles:
    description: Only the policies of these roles. Every role of the roles file when unset.
    type: list
    elements: str
  tenants:
    description:
      - Tenants whose tenant-role policies (C(keyops-app-<tenant>)) are handled.
      - Every tenant found in Vault when unset; an empty list handles global roles only.
    type: list
    elements: str
  roles_file:
    description: The roles file. C(KEYOPS_ROLES_FILE), else the roles file packaged with keyops, when unset.
    type: path
  state:
    description: V(present) creates or updates the policies; V(absent) removes them.
    type: str
    choices: [present, absent]
    default: present
"""

EXAMPLES = r"""
- name: Policies of every role, for every tenant
  keyops.kms.policy:
  delegate_to: localhost

- name: Preview the app policies of two tenants (check mode, with the HCL diff)
  keyops.kms.policy:
    roles: [app]
    tenants: [acme, globex]
  check_mode: true
  diff: true

- name: With an operator's own roles file
  keyops.kms.policy:
    roles_file: /etc/keyops/roles.toml
    tenants: "{{ keyops_tenants | map(attribute='name') }}"

- name: Offboard a tenant's application policy
  keyops.kms.policy:
    roles: [app]
    tenants: [retired-customer]
    state: absent
"""

RETURN = r"""
policies:
  description: Each policy handled, with what was (or, in check mode, would be) done to it.
  returned: always
  type: list
  elements: dict
  sample:
    - {name: keyops-app-acme, action: create}
    - {name: keyops-auditor, action: unchanged}
    - {name: keyops-rotation, action: update}
history:
  description:
    - With O(state=present) and a security-admin token, the KV history kept of each tenant's keyring and usage
      document, the master registry and the mount's default for secrets (raised to keep enough versions for an
      administrator to restore one; never lowered), and what was (or would be) done.
  returned: always
  type: list
  elements: dict
  sample:
    - {path: keyops/tenants/acme/keyring, action: update, max_versions_before: 0, max_versions: 1000}
    - {path: keyops/config, action: unchanged, max_versions_before: 100, max_versions: 100}
created:
  description: Names of the policies created.
  returned: always
  type: list
  elements: str
  sample: [keyops-app-acme]
updated:
  description: Names of the policies updated.
  returned: always
  type: list
  elements: str
  sample: [keyops-rotation]
removed:
  description: Names of the policies removed (O(state=absent)).
  returned: always
  type: list
  elements: str
  sample: []
"""

from ansible_collections.keyops.kms.plugins.module_utils._connection import KeyopsModule

try:
    from keyops import access
except ImportError:
    pass  # KeyopsModule reports the missing library


def selected_policies(k, params):
    """Policy name -> HCL for the roles and tenants the task names."""
    roles = access.load_roles(params["roles_file"] or k.config.roles_file)
    tenants = params["tenants"]
    wanted = params["roles"]
    if tenants is None and any(r.scope == "tenant" for r in roles if wanted is None or r.name in wanted):
        tenants = k.list_tenants()
    return access.render_policies(roles, tenants or [], access.Mounts.from_config(k.config), only=wanted)


def main():
    module = KeyopsModule(
        argument_spec=dict(
            roles=dict(type="list", elements="str"),
            tenants=dict(type="list", elements="str"),
            roles_file=dict(type="path"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
        ),
        supports_check_mode=True,
    )
    p = module.params
    with module.session() as k:
        policies = selected_policies(k, p)
        if p["state"] == "absent":
            result = access.remove_policies(k, policies, dry_run=module.check_mode)
        else:
            result = access.apply_policies(k, policies, dry_run=module.check_mode)
        # As 'keyops policy apply': KV's history is what lets an administrator undo a bad write.
        history = access.HistoryResult((), module.check_mode)
        if p["state"] == "present" and k.principal.allows("history.config"):
            tenants = p["tenants"] if p["tenants"] is not None else k.list_tenants()
            history = access.ensure_history(k, tenants, dry_run=module.check_mode)
    changed = [c for c in result.changes if c.action != "unchanged"]
    module.exit_json(
        changed=result.changed or history.changed,
        history=[{"path": c.path, "action": c.action, "max_versions_before": c.before, "max_versions": c.after}
                 for c in history.changes],
        policies=[{"name": c.name, "action": c.action} for c in result.changes],
        created=result.names("create"), updated=result.names("update"), removed=result.names("delete"),
        **module.diff({c.name: c.before for c in changed}, {c.name: c.after for c in changed}))


if __name__ == "__main__":
    main()
