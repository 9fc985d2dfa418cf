#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: rotate
short_description: Rotate keyops keys on demand, or everything that is due across tenants
author:
  - keyops contributors (!UNKNOWN)
version_added: 0.1.0
description:
  - With O(level), rotates one level now. V(dek) makes a new DEK primary (older versions turn
    C(decrypt_only); re-encrypt the secrets with M(keyops.kms.reencrypt)). V(kek) makes a new KEK
    primary and re-wraps every DEK version under it, touching no secret. V(master) creates a new
    master key in the HSM and re-wraps every KEK of every tenant.
  - With O(due_only=true), one task checks every tenant (or those in O(tenants)) and the master
    key, and rotates only what the policies say is due (age against the periods, DEK usage against
    its cap); most runs find nothing due and report C(changed=false).
  - An interrupted rotation is finished first, by either form.
extends_documentation_fragment:
  - keyops.kms.connection
  - keyops.kms.hsm
  - keyops.kms.attributes
notes:
  - A rotation on demand without O(expect_version) rotates on every run, like any "do it now"
    action. Give O(expect_version) (the primary version you expect to replace) so that a re-run
    finds the primary moved on and reports no change, or use O(due_only=true).
  - When rotations of some tenants fail, the others still run; the task then fails, with
    RV(rotated) and RV(failures) in its result.
seealso:
  - module: keyops.kms.reencrypt
  - module: keyops.kms.key_info
  - module: keyops.kms.master_key
attributes:
  check_mode:
    description: The library plans the rotations without writing; RV(rotated) lists what would rotate and why.
    support: full
  diff_mode:
    description: Shows the primary version of each level that rotates, before and after; never key material.
    support: full
options:
  tenant:
    description: The tenant whose O(level) rotates. Mutually exclusive with O(tenants).
    type: str
  tenants:
    description:
      - Several tenants in one task. With O(level), each rotates that level. With O(due_only=true),
        only these are checked (every tenant when unset).
    type: list
    elements: str
  level:
    description: The level to rotate now. V(master) takes no tenant.
    type: str
    choices: [dek, kek, master]
  due_only:
    description: Rotate only what is due, across every tenant (or O(tenants)) and the master key.
    type: bool
    default: false
  include_master:
    description: With O(due_only=true), also check whether the master key is due.
    type: bool
    default: true
  expect_version:
    description:
      - Rotate only while the primary version of O(level) is this one (one tenant, or the master
        key). A re-run after the rotation then changes nothing.
    type: int
  reason:
    description: Why, recorded in the audit trail and in RV(rotated). Not used with O(due_only=true).
    type: str
    default: on demand (ansible)
"""

EXAMPLES = r"""
- name: Scheduled rotation; one task for every tenant, nothing happens most of the time
  keyops.kms.rotate:
    due_only: true
  register: rotation

- name: Re-encrypt the tenants whose DEK rotated
  keyops.kms.reencrypt:
    tenants: "{{ rotation.rotated | selectattr('level', 'eq', 'dek') | map(attribute='tenant') | unique }}"
  when: rotation.rotated | selectattr('level', 'eq', 'dek') | list | length > 0

- name: What would rotate? (check mode)
  keyops.kms.rotate:
    due_only: true
  check_mode: true
  register: plan

- name: Rotate acme's DEK now, exactly once however often the play runs
  keyops.kms.rotate:
    tenant: acme
    level: dek
    expect_version: 3
    reason: incident 2291

- name: Rotate the KEK of several tenants
  keyops.kms.rotate:
    tenants: [acme, globex]
    level: kek

- name: Rotate the HSM master key (re-wraps every KEK)
  keyops.kms.rotate:
    level: master
    expect_version: 1

- name: Scheduled rotation with the connection set once for the play
  hosts: localhost
  connection: local
  module_defaults:
    group/keyops.kms.all: "{{ keyops_connection }}"
  tasks:
    - name: Scheduled rotation
      keyops.kms.rotate:
        due_only: true
"""

RETURN = r"""
rotated:
  description: Each rotation done (in check mode, that would be done), with why.
  returned: always
  type: list
  elements: dict
  sample:
    - tenant: acme
      level: dek
      old_version: 3
      new_version: 4
      reason: "due: age: 31.0 days old, period 30 days"
      detail: created DEK v4 of tenant acme, wrapped by KEK v2
      resumed: false
      rewrapped: 0
    - tenant: null
      level: master
      old_version: 1
      new_version: 2
      reason: on demand (ansible)
      detail: created master v2 and re-wrapped 12 KEK versions of 5 tenants
      resumed: false
      rewrapped: 12
unchanged:
  description: Rotations asked for that had nothing to do (O(expect_version) no longer matched).
  returned: always
  type: list
  elements: dict
  sample:
    - {tenant: acme, level: dek, old_version: 4, new_version: 4, reason: on demand (ansible),
       detail: "the primary DEK is v4, not v3", resumed: false, rewrapped: 0}
failures:
  description: Tenants (or the master key) whose rotation failed, with the library's error code and message.
  returned: always
  type: list
  elements: dict
  sample:
    - {tenant: globex, level: kek, error: permission_denied, message: "writing keyops/tenants/globex/keyring: ..."}
checked:
  description: With O(due_only=true), how many tenants were checked.
  returned: when O(due_only=true)
  type: int
  sample: 42
summary:
  description: One line that says what happened.
  returned: always
  type: str
  sample: rotated 1 key (42 tenants and the master key checked)
"""

from ansible_collections.keyops.kms.plugins.module_utils._connection import KeyopsModule

try:
    from keyops.errors import InvalidInput
    from keyops.ops import rotation
    from keyops.ops.views import rotation_diff, to_json
except ImportError:
    pass  # KeyopsModule reports the missing library

_FIELDS = ("tenant", "level", "old_version", "new_version", "reason", "detail", "resumed", "rewrapped")


def rotation_view(result):
    view = to_json(result)
    return {name: view.get(name) for name in _FIELDS}


def main():
    module = KeyopsModule(
        argument_spec=dict(
            tenant=dict(type="str"),
            tenants=dict(type="list", elements="str"),
            level=dict(type="str", choices=["dek", "kek", "master"]),
            due_only=dict(type="bool", default=False),
            include_master=dict(type="bool", default=True),
            expect_version=dict(type="int"),
            reason=dict(type="str", default="on demand (ansible)"),
        ),
        mutually_exclusive=[("tenant", "tenants"), ("level", "due_only"), ("expect_version", "due_only"),
                            ("expect_version", "tenants")],
        required_one_of=[("level", "due_only")],
        supports_check_mode=True,
    )
    p = module.params
    tenants = [p["tenant"]] if p["tenant"] else p["tenants"]
    if p["level"] == "master" and tenants:
        module.fail_keyops(InvalidInput("level master rotates the HSM master key of every tenant; give no tenant"))
    if p["level"] in ("dek", "kek") and not tenants:
        module.fail_keyops(InvalidInput(f"level {p['level']} needs tenant or tenants (or use due_only: true)"))
    extra = {}
    with module.session() as k:
        if p["due_only"]:
            report = rotation.rotate_due(k, dry_run=module.check_mode, tenants=tenants or None,
                                         include_master=p["include_master"])
            extra["checked"] = report.tenants_checked
        else:
            report = rotation.rotate_tenants(k, tenants or [], p["level"], dry_run=module.check_mode,
                                             expect_version=p["expect_version"], reason=p["reason"])
    module.exit_report(report, changed=report.changed, rotated=[rotation_view(r) for r in report.rotated],
                       unchanged=[rotation_view(r) for r in report.unchanged], failures=to_json(report.failures),
                       summary=report.summary(), **extra, **module.diff(*rotation_diff(report.rotations)))


if __name__ == "__main__":
    main()
