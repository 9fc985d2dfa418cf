#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: transit_key
short_description: Idempotent Vault/OpenBao Transit keys of any name
author:
  - keyops contributors (!UNKNOWN)
version_added: 0.1.0
description:
  - Ensures a Transit key exists with the wanted type and settings (C(auto_rotate_period),
    C(min_decryption_version), C(min_encryption_version), C(deletion_allowed)), never exportable;
    rotates it on request and trims old versions; or deletes it.
  - Reads the key first and changes only what differs, so C(changed) is true only when something
    was (or, in check mode, would be) written. Every constraint Transit checks between the version
    settings is checked before the first write, so a bad request changes nothing.
  - Settings left unset are not managed (a new key gets Transit's defaults).
extends_documentation_fragment:
  - keyops.kms.connection
  - keyops.kms.hsm
  - keyops.kms.attributes
notes:
  - Returns the key's settings and version numbers only, never a raw Vault response (Transit
    answers can carry key material or plaintext).
  - The keys of keyops tenants of residence C(transit) are named C(keyops-<tenant>); this module
    refuses to delete one while its tenant exists.
seealso:
  - module: keyops.kms.tenant
  - name: OpenBao Transit secrets engine API
    description: Create, read, configure, rotate and trim keys.
    link: https://openbao.org/api-docs/secret/transit/
attributes:
  check_mode:
    description: Reports exactly the steps a real run would take (RV(actions)), and writes nothing.
    support: full
  diff_mode:
    description: Shows the key's settings and available versions before and after; never key material.
    support: full
options:
  name:
    description: The Transit key; 1-128 ASCII letters, digits, C(_), C(.) or C(-).
    type: str
    required: true
  state:
    description: V(present) creates or updates the key; V(absent) deletes it and every version.
    type: str
    choices: [present, absent]
    default: present
  type:
    description: Key type. A new key gets V(aes256-gcm96) when unset; an existing key's type cannot change.
    type: str
    choices: [aes128-gcm96, aes256-gcm96, chacha20-poly1305, ed25519, ecdsa-p256, ecdsa-p384, ecdsa-p521,
              rsa-2048, rsa-3072, rsa-4096, hmac]
  auto_rotate_period:
    description:
      - Period after which Transit rotates the key itself, as seconds or with a unit (V(24h), V(30d)).
        V(0) turns automatic rotation off. At least one hour.
    type: str
  min_decryption_version:
    description: Oldest version that may decrypt.
    type: int
  min_encryption_version:
    description: Oldest version that may encrypt; V(0) means the latest.
    type: int
  min_available_version:
    description:
      - Trim the key's versions below this one; they are destroyed for good. At most
        O(min_decryption_version) (and O(min_encryption_version) when it is not 0).
    type: int
    aliases: [trim_below]
  deletion_allowed:
    description:
      - Whether the key may be deleted. O(state=absent) needs it true, or this option set to true in
        the same task, as an explicit confirmation.
    type: bool
  exportable:
    description: Only V(false) is accepted; an exportable key is refused (Transit cannot take exportability back).
    type: bool
    default: false
  rotate:
    description: Add a new key version (see O(expect_version)). A key created by the same task is not rotated.
    type: bool
    default: false
  expect_version:
    description:
      - With O(rotate=true), rotate only while the latest version is this one, so that a re-run
        reports no change. Without it, O(rotate=true) rotates on every run.
    type: int
"""

EXAMPLES = r"""
- name: An encryption key for an application, rotated by Transit every 30 days
  keyops.kms.transit_key:
    name: payments
    type: aes256-gcm96
    auto_rotate_period: 30d
    deletion_allowed: false

- name: What would change? (check mode with diff)
  keyops.kms.transit_key:
    name: payments
    min_decryption_version: 3
  check_mode: true
  diff: true

- name: Rotate once (a re-run does nothing), stop decrypting with old versions and trim them
  keyops.kms.transit_key:
    name: payments
    rotate: true
    expect_version: 4
    min_decryption_version: 5
    min_encryption_version: 5
    min_available_version: 5

- name: A signing key
  keyops.kms.transit_key:
    name: release-signing
    type: ed25519

- name: Delete a key (explicitly allowed in the same task)
  keyops.kms.transit_key:
    name: old-app
    state: absent
    deletion_allowed: true
"""

RETURN = r"""
key:
  description: The key's settings and available versions after the task (in check mode, that it would have);
    null when absent.
  returned: always
  type: dict
  sample:
    name: payments
    type: aes256-gcm96
    latest_version: 5
    min_decryption_version: 5
    min_encryption_version: 5
    min_available_version: 5
    auto_rotate_period: 2592000
    deletion_allowed: false
    exportable: false
    allow_plaintext_backup: false
    imported: false
    versions: [5]
actions:
  description: The steps taken (in check mode, that would be taken), in order.
  returned: always
  type: list
  elements: str
  sample: [rotate, set min_decryption_version=5, set min_encryption_version=5, trim versions below 5]
notes:
  description: Why a requested step was not needed (for example, O(expect_version) no longer matched).
  returned: always
  type: list
  elements: str
  sample: ["not rotated: the latest version is 5, not 4"]
"""

from ansible_collections.keyops.kms.plugins.module_utils._connection import KeyopsModule

try:
    from keyops.ops.transit_keys import TransitKeySpec, apply, parse_duration
except ImportError:
    pass  # KeyopsModule reports the missing library


def view(key):
    return None if key is None else key.to_dict()


def main():
    module = KeyopsModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            type=dict(type="str", choices=["aes128-gcm96", "aes256-gcm96", "chacha20-poly1305", "ed25519",
                                           "ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "rsa-2048", "rsa-3072",
                                           "rsa-4096", "hmac"]),
            auto_rotate_period=dict(type="str"),
            min_decryption_version=dict(type="int"),
            min_encryption_version=dict(type="int"),
            min_available_version=dict(type="int", aliases=["trim_below"]),
            deletion_allowed=dict(type="bool"),
            exportable=dict(type="bool", default=False),
            rotate=dict(type="bool", default=False),
            expect_version=dict(type="int"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    with module.session() as k:
        period = p["auto_rotate_period"]
        spec = TransitKeySpec(
            name=p["name"], state=p["state"], type=p["type"],
            auto_rotate_period=None if period is None else parse_duration(period),
            min_decryption_version=p["min_decryption_version"], min_encryption_version=p["min_encryption_version"],
            min_available_version=p["min_available_version"], deletion_allowed=p["deletion_allowed"],
            exportable=p["exportable"], rotate=p["rotate"], expect_version=p["expect_version"])
        result = apply(k.store, spec, dry_run=module.check_mode)
    module.exit_json(changed=result.changed, key=view(result.after), actions=list(result.actions),
                     notes=list(result.notes),
                     **module.diff(view(result.before) or {"exists": False}, view(result.after) or {"exists": False}))


if __name__ == "__main__":
    main()
