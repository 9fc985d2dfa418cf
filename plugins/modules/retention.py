#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: retention
short_description: Retire key versions beyond each tenant's keep_versions once nothing refers to them
author:
  - keyops contributors (!UNKNOWN)
version_added: 0.1.0
description:
  - The Ansible face of C(keyops retention). For every tenant (or those of O(tenants)) whose policy sets
    C(keep_versions), keeps that many usable KEK and DEK versions (the primary among them) and retires older
    ones once no secret record, DEK version or caller outside the store refers to them; destroys versions
    retired C(destroy_after_days) ago, when the token has the destroy right (otherwise they are reported as due).
  - Run it after rotation and re-encryption, as C(rotate.yml) does, so that the versions the re-encryption
    freed are retired in the same run.
extends_documentation_fragment:
  - keyops.kms.connection
  - keyops.kms.hsm
  - keyops.kms.attributes
notes:
  - A version still referred to stays; RV(notes) says why. The guards are those of C(keyops retire) and
    C(keyops destroy), checked again as each version is retired.
  - When some tenant fails, the others still run; the task then fails, with RV(results) in its result.
seealso:
  - module: keyops.kms.rotate
  - module: keyops.kms.reencrypt
  - module: keyops.kms.declared_state
attributes:
  check_mode:
    description: Lists what would be retired or destroyed, changes nothing.
    support: full
  diff_mode:
    description: Shows each version's state before and after.
    support: full
options:
  tenants:
    description: The tenants to check; every tenant of the store when unset.
    type: list
    elements: str
"""

EXAMPLES = r"""
- name: Retire what keep_versions lets go, after the rotations and their re-encryption
  keyops.kms.retention:
    tenants: "{{ keyops_tenants | map(attribute='name') }}"

- name: What would be retired
  keyops.kms.retention:
  check_mode: true
"""

RETURN = r"""
results:
  description: Each version retired or destroyed (in check mode, that would be).
  returned: always
  type: list
  elements: dict
  sample:
    - {tenant: acme, level: dek, version: 1, action: retire, changed: true,
       detail: "DEK acme v1: decrypt_only -> retired"}
notes:
  description: Versions beyond C(keep_versions) that stay, and why.
  returned: always
  type: list
  elements: str
  sample: ["DEK acme v1 is beyond keep_versions 2 but stays: 4 secrets still refer to it"]
failures:
  description: Tenants whose retention failed, with the library's error code and message.
  returned: always
  type: list
  elements: dict
  sample:
    - {tenant: globex, error: permission_denied, message: "writing keyops/tenants/globex/keyring: ..."}
checked:
  description: How many tenants were checked.
  returned: always
  type: int
  sample: 3
summary:
  description: One line that says what happened.
  returned: always
  type: str
  sample: retention changed 1 key versions (3 tenants checked)
"""

from ansible_collections.keyops.kms.plugins.module_utils._connection import KeyopsModule

try:
    from keyops.ops.retention import apply_retention
except ImportError:
    pass  # KeyopsModule reports the missing library


def main():
    module = KeyopsModule(argument_spec=dict(tenants=dict(type="list", elements="str")), supports_check_mode=True)
    with module.session() as k:
        report = apply_retention(k, module.params["tenants"], dry_run=module.check_mode)
    results = [{"tenant": r.tenant, "level": r.level, "version": r.version, "action": r.action,
                "changed": r.changed, "detail": r.detail} for r in report.results]
    failures = [{"tenant": f.tenant, "error": f.code, "message": f.message} for f in report.failures]
    result = dict(changed=report.changed, results=results, notes=list(report.notes), failures=failures,
                  checked=report.checked, summary=report.summary())
    if module._diff:
        changed = [r for r in report.results if r.changed]
        result["diff"] = {"before": {f"{r.tenant} {r.level} v{r.version}": r.state_before for r in changed},
                          "after": {f"{r.tenant} {r.level} v{r.version}": r.state_after for r in changed}}
    module.exit_report(report, **result)


if __name__ == "__main__":
    main()
