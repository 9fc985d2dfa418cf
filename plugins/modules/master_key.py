#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: master_key
short_description: Ensure the HSM master key exists and is registered; rotate it
author:
  - keyops contributors (!UNKNOWN)
version_added: 0.1.0
description:
  - Ensures the master key, an AES-256 key on the PKCS#11 token (sensitive, never extractable),
    exists and is registered in KV (C(master)), the root of every tenant's key hierarchy.
  - The registry gets a random id when it is made; every key it creates carries that id in its
    label (C(<prefix>-<registry id>-v<N>)) and its C(CKA_ID), so Vaults or namespaces sharing one
    token never use or destroy each other's keys. A key already on the token under such a name is
    refused, never adopted.
  - Keys are created with C(CKA_DESTROYABLE), C(CKA_MODIFIABLE) and C(CKA_COPYABLE) false where the
    token supports them (PKCS#11 v2.40), so a holder of the user PIN cannot delete them; removing
    one takes the token's security officer.
  - With O(rotate=true), creates the next master key version on the token, makes it primary and
    re-wraps every KEK of every tenant under it (the previous version turns C(decrypt_only) and is
    kept until nothing refers to it). An interrupted rotation is finished first.
extends_documentation_fragment:
  - keyops.kms.connection
  - keyops.kms.hsm
  - keyops.kms.attributes
notes:
  - O(rotate=true) without O(expect_version) rotates on every run. Give O(expect_version) (the
    primary version to replace) so that a re-run reports no change.
  - A registered master key missing from the token is an error, never silently replaced.
  - The HSM login happens before anything is written, so a wrong PIN changes nothing.
seealso:
  - module: keyops.kms.rotate
  - module: keyops.kms.key_info
  - name: PKCS#11 v2.40 base specification
    description: The token interface keyops uses for the master key.
    link: https://docs.oasis-open.org/pkcs11/pkcs11-base/v2.40/pkcs11-base-v2.40.html
attributes:
  check_mode:
    description: Reports whether the key would be created or rotated, and how many KEKs would be re-wrapped;
      changes nothing.
    support: full
  diff_mode:
    description: Shows the master key versions and their states, before and after; never key material.
    support: full
options:
  state:
    description: V(present) ensures the master key exists.
    type: str
    choices: [present]
    default: present
  rotate:
    description: Rotate the master key (see O(expect_version)).
    type: bool
    default: false
  expect_version:
    description: With O(rotate=true), rotate only while the primary master version is this one.
    type: int
  reason:
    description: Why, recorded in the audit trail.
    type: str
    default: on demand (ansible)
  init_mounts:
    description:
      - Create the KV version 2 mount (with keyops' history settings) and the Transit mount that keyops
        uses when they are missing, as C(keyops init) does; mounts already there are only checked.
      - A token that may not read C(sys/mounts) skips this step; a missing mount is then reported by
        name by the first request that needs it.
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: The master key exists (first run creates it)
  keyops.kms.master_key:

- name: Yearly master key rotation, exactly once per version
  keyops.kms.master_key:
    rotate: true
    expect_version: "{{ keyops_master_version }}"
    reason: annual rotation

- name: In a fresh namespace, with an administrator's token, the mounts and then the master key
  keyops.kms.master_key:
    namespace: team-a
    init_mounts: true

- name: Preview a rotation
  keyops.kms.master_key:
    rotate: true
    expect_version: 1
  check_mode: true
  diff: true
"""

RETURN = r"""
version:
  description: The primary master key version after the task (in check mode, that it would be).
  returned: always
  type: int
  sample: 2
label:
  description: Token label of the primary master key.
  returned: always
  type: str
  sample: keyops-master-3f9c2a7b1d4e5f60-v2
versions:
  description: Master key versions and their states after the task.
  returned: always
  type: list
  elements: dict
  sample:
    - {version: 1, label: keyops-master-3f9c2a7b1d4e5f60-v1, key_id: 3f9c2a7b1d4e5f6000000001,
       state: decrypt_only, created_at: "2024-01-07T10:00:00Z"}
    - {version: 2, label: keyops-master-3f9c2a7b1d4e5f60-v2, key_id: 3f9c2a7b1d4e5f6000000002,
       state: active, created_at: "2025-01-07T10:00:00Z"}
created:
  description: Whether the master key was (would be) created.
  returned: always
  type: bool
  sample: false
mounts:
  description: The KV and Transit mounts and whether each was (would be) created, with O(init_mounts=true).
  returned: always
  type: list
  elements: dict
  sample:
    - {path: keyops, engine: kv, action: unchanged}
    - {path: transit, engine: transit, action: create}
rotation:
  description: The rotation, with O(rotate=true); null otherwise.
  returned: always
  type: dict
  sample:
    changed: true
    old_version: 1
    new_version: 2
    tenants: 5
    rewrapped: 12
    resumed: false
    detail: created master v2 and re-wrapped 12 KEK versions of 5 tenants
"""

from ansible_collections.keyops.kms.plugins.module_utils._connection import KeyopsModule

try:
    from keyops.ops import master_keys, rotation
    from keyops.ops.mounts import init_mounts
    from keyops.ops.views import master_view, to_json
except ImportError:
    pass  # KeyopsModule reports the missing library


def predicted(registry, result, label):
    """The registry a dry-run rotation would leave: the new version primary, the old one decrypt_only."""
    versions = [dict(v, state="decrypt_only" if v["state"] == "active" else v["state"])
                for v in to_json(registry.versions) if v["version"] != result.new_version]
    versions.append({"version": result.new_version, "label": label(result.new_version), "state": "active",
                     "created_at": None})
    return {"primary": result.new_version, "versions": versions}


def main():
    module = KeyopsModule(
        argument_spec=dict(
            state=dict(type="str", default="present", choices=["present"]),
            rotate=dict(type="bool", default=False),
            expect_version=dict(type="int"),
            reason=dict(type="str", default="on demand (ansible)"),
            init_mounts=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    rotated = None
    with module.session() as k:
        mounts = init_mounts(k, dry_run=module.check_mode, required=False) if p["init_mounts"] else None
        # In check mode a KV mount that would be created holds no registry yet.
        kv_planned = module.check_mode and bool(
            mounts and any(m.engine == "kv" and m.action == "create" for m in mounts.mounts))
        found = None if kv_planned else k.read_master()
        before = found[0] if found else None
        if kv_planned:
            registry, created = master_keys.planned_first(k), True
        else:
            registry, created = k.ensure_master(dry_run=module.check_mode)
        # A master key this task has just created has nothing to rotate.
        if p["rotate"] and not created:
            rotated = rotation.rotate_master(k, dry_run=module.check_mode, expect_version=p["expect_version"],
                                             reason=p["reason"])
            if not module.check_mode:
                registry = k.read_master()[0]
        label = k.master_label
    if rotated is not None and rotated.changed and module.check_mode:
        after = predicted(registry, rotated, label)
    else:
        after = {"primary": registry.primary, "versions": to_json(registry.versions)}
    primary = [v for v in after["versions"] if v["version"] == after["primary"]][0]
    changed = created or bool(rotated and rotated.changed) or bool(mounts and mounts.changed)
    rotation_out = None
    if rotated is not None:
        rotation_out = {"changed": rotated.changed, "old_version": rotated.old_version,
                        "new_version": rotated.new_version, "tenants": len(rotated.tenants),
                        "rewrapped": rotated.rewrapped, "resumed": rotated.resumed, "detail": rotated.detail}
    after_view = {"exists": True, "primary": after["primary"],
                  "versions": {str(v["version"]): v["state"] for v in after["versions"]}}
    module.exit_json(changed=changed, version=after["primary"], label=primary["label"], versions=after["versions"],
                     created=created, rotation=rotation_out, mounts=to_json(mounts.mounts) if mounts else [],
                     **module.diff(master_view(before), after_view))


if __name__ == "__main__":
    main()
