#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: declared_state
short_description: Make Vault and the HSM match a declaration of tenants, policies and seed secrets (plan, then apply)
author:
  - keyops contributors (!UNKNOWN)
version_added: 0.1.0
description:
  - The Ansible face of C(keyops plan) and C(keyops apply), over the same library function. Compares the
    declaration (the inventory's C(keyops_tenants), C(keyops_rotation_policies), C(keyops_master) and
    C(keyops_access)) with what the store holds, and carries out the steps, in order. Creates the HSM master
    key and the tenants, updates policies, rotates what the declared policy makes due, re-encrypts, retires
    what C(keep_versions) lets go, creates missing seed secrets.
  - Seed secrets are create-only. A seed that is already stored is left as it is, so a value the application
    has changed since is never overwritten; O(tenants[].secrets[].enforce=true) overwrites a stored value that
    differs from the declared one. RV(seeds) names every seed written (or, in check mode, that would be).
  - Tenants in Vault that the declaration does not name are drift. They are reported (RV(drift), and a
    warning in the play) and left as they are, unless O(prune=true).
  - Every step is idempotent and check-and-set; a run stopped half-way is finished by the next.
extends_documentation_fragment:
  - keyops.kms.connection
  - keyops.kms.hsm
  - keyops.kms.attributes
notes:
  - The declaration is checked as a whole before anything is read or written; an error names the variable and
    field (for example C(keyops_tenants[1].policy)) and nothing changes.
  - Seed values are never returned or shown, only their names.
  - Reads every secret record of the declared tenants once, to count what each step does to the data.
seealso:
  - module: keyops.kms.tenant
  - module: keyops.kms.secret
  - module: keyops.kms.retention
attributes:
  check_mode:
    description: Returns the plan (RV(steps)), changes nothing; C(changed) when the plan has steps.
    support: full
  diff_mode:
    description:
      - Shows each policy change as lines (tenant policy fields, generated Vault policies as a unified diff,
        the master key period), never key material or seed values.
    support: full
options:
  tenants:
    description: The declared tenants (the inventory's C(keyops_tenants)).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Tenant name (1-63 lowercase letters, digits, C(-) or C(_)).
        type: str
        required: true
      residence:
        description: Where the tenant's KEK lives, V(kv) or V(transit); V(kv) when unset. Fixed once the tenant exists.
        type: str
      policy:
        description:
          - The name of a policy of O(policies), or the policy's fields themselves
            (C(kek_period_days), C(dek_period_days), C(dek_usage_cap), C(keep_versions), C(destroy_after_days)).
          - C(standard) when unset and O(policies) has it. A field left out is not managed.
        type: raw
      secrets:
        description: Seed secrets of the tenant.
        type: list
        elements: dict
        suboptions:
          name:
            description: Secret name (a path such as C(db/password)).
            type: str
            required: true
          value:
            description: The value; stored encrypted, never shown. Exactly one of O(tenants[].secrets[].value),
              O(tenants[].secrets[].value_env) and O(tenants[].secrets[].value_file).
            type: str
          value_env:
            description: An environment variable of the module's process that holds the value.
            type: str
          value_file:
            description: A file that holds the value (one trailing newline dropped).
            type: str
          enforce:
            description: Overwrite a stored value that differs from the declared one. By default a seed is
              create-only.
            type: bool
  policies:
    description: Named policies (the inventory's C(keyops_rotation_policies)).
    type: dict
    default: {}
  master:
    description: Master key settings (the inventory's C(keyops_master)), such as C(period_days).
    type: dict
  access:
    description:
      - Access settings (the inventory's C(keyops_access)); C(roles) keeps these roles' generated Vault
        policies for the declared tenants.
    type: dict
  prune:
    description: Delete (crypto-shred) the tenants in Vault that the declaration does not name. Irreversible.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Apply the inventory's declaration
  keyops.kms.declared_state:
    tenants: "{{ keyops_tenants }}"
    policies: "{{ keyops_rotation_policies }}"
  delegate_to: localhost

- name: The plan only, with policy diffs
  keyops.kms.declared_state:
    tenants: "{{ keyops_tenants }}"
    policies: "{{ keyops_rotation_policies }}"
  check_mode: true
  diff: true
  register: plan

- name: One seed that the declaration owns, overwritten when an application changed it
  keyops.kms.declared_state:
    tenants:
      - name: acme
        policy: {kek_period_days: 90, dek_period_days: 30, keep_versions: 2}
        secrets:
          - {name: api/key, value_env: ACME_API_KEY, enforce: true}
"""

RETURN = r"""
summary:
  description: One line that says what happened (in check mode, what the plan holds).
  returned: always
  type: str
  sample: "applied: 3 changes, 1 undeclared tenant (drift)"
changes:
  description: How many steps change something (drift does not count).
  returned: always
  type: int
  sample: 3
steps:
  description: The plan's steps, in the order they run, each with what it does to the data.
  returned: always
  type: list
  elements: dict
  sample:
    - {action: rotate, target: acme, tenant: acme, level: dek, version: 5, new_version: 6, count: 12034,
       reason: "due by age: 31.0 days old, period 30 days",
       summary: "DEK acme v5->v6: 12,034 secrets to re-encrypt; v4 becomes retirable once done"}
    - {action: create_secret, target: acme/db/password, tenant: acme,
       summary: "create seed secret acme/db/password (create-only: a value already there is never overwritten)"}
drift:
  description: Tenants in Vault that the declaration does not name.
  returned: always
  type: list
  elements: str
  sample: [stray]
seeds:
  description: Seed secrets created and overwritten by this run (in check mode, that would be), by name.
  returned: always
  type: dict
  sample: {create: [acme/db/password], overwrite: [acme/api/key]}
notes:
  description: What stays and why (a version beyond C(keep_versions) that something still refers to).
  returned: always
  type: list
  elements: str
  sample: ["DEK acme v1 is beyond keep_versions 2 but stays: 4 secrets still refer to it"]
prune:
  description: Whether undeclared tenants were planned for deletion.
  returned: always
  type: bool
  sample: false
outcomes:
  description: Each step carried out, whether it changed something, and the library's detail.
  returned: when not in check mode
  type: list
  elements: dict
  sample:
    - {action: create_tenant, target: acme, changed: true, detail: ""}
"""

from ansible_collections.keyops.kms.plugins.module_utils._connection import KeyopsModule

try:
    from keyops.declare import validate
    from keyops.declare.views import drift_warning, plan_diffs, plan_view, seed_names, summary
    from keyops.ops.plan import apply, make_plan
except ImportError:
    pass  # KeyopsModule reports the missing library

SOURCE = "the inventory"
#: The module's options under the variable names an inventory uses, so that errors name those.
VARIABLES = {"tenants": "keyops_tenants", "policies": "keyops_rotation_policies", "master": "keyops_master",
             "access": "keyops_access"}
SEED_SPEC = dict(name=dict(type="str", required=True), value=dict(type="str", no_log=True),
                 value_env=dict(type="str", no_log=False), value_file=dict(type="str"), enforce=dict(type="bool"))
TENANT_SPEC = dict(name=dict(type="str", required=True), residence=dict(type="str"), policy=dict(type="raw"),
                   secrets=dict(type="list", elements="dict", no_log=False, options=SEED_SPEC))


def given(value):
    """The value without the unset suboptions Ansible fills in as None (the schema reads absence)."""
    if isinstance(value, dict):
        return {k: given(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [given(v) for v in value]
    return value


def main():
    module = KeyopsModule(
        argument_spec=dict(
            tenants=dict(type="list", elements="dict", default=[], options=TENANT_SPEC),
            policies=dict(type="dict", default={}),
            master=dict(type="dict"),
            access=dict(type="dict"),
            prune=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    data = {VARIABLES[o]: given(p[o]) for o in VARIABLES if p[o] is not None}
    with module.errors():
        declaration = validate(data, SOURCE)
    extra = {}
    with module.session() as k:
        if module.check_mode:
            plan = make_plan(k, declaration, prune=p["prune"])
            changed, seeds = bool(plan.changes), seed_names(plan.changes)
            line = summary(plan)
        else:
            result = apply(k, declaration, prune=p["prune"])
            plan, changed = result.plan, result.changed
            seeds = seed_names(o.step for o in result.outcomes if o.changed)
            line = summary(plan, applied=changed)
            extra["outcomes"] = [{"action": o.step.action, "target": o.step.target, "changed": o.changed,
                                  "detail": o.detail} for o in result.outcomes]
    warning = drift_warning(plan)
    if warning:
        module.warn(warning)
    view = plan_view(plan)
    view["seeds"] = seeds
    if module._diff and changed:
        extra["diff"] = plan_diffs(plan)
    module.exit_json(changed=changed, summary=line, **view, **extra)


if __name__ == "__main__":
    main()
