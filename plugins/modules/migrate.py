#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: migrate
short_description: Bring plaintext or Transit-encrypted KV secrets under keyops
author:
  - keyops contributors (!UNKNOWN)
version_added: 0.1.0
description:
  - Every secret below O(source) in a KV version 2 mount becomes the keyops record
    C(secrets/<tenant>/<name>) of O(tenant), C(name) being its path below O(source). The value is
    O(field) of the secret's data, else its only key's value, else the whole data as JSON.
  - Values of the form C(vault:vN:...) are Transit ciphertexts (O(kind=auto) or V(transit)); they
    are decrypted through Transit with O(transit_key), or directly by keyops when the key is the
    tenant's own Transit KEK.
  - With O(mode=copy) (the default) each record is written, read back and checked to decrypt to the
    original, and the source is left as it was, so applications still reading it keep working. A
    second copy changes nothing, or brings the records up to date with sources that changed.
  - O(mode=cutover) is the separate, explicit step that replaces each source by a C(keyops_migrated)
    marker, once the applications read from keyops. It replaces only a source whose keyops record
    still holds the source's current value, with check-and-set on the version it read; a source
    changed since its copy is skipped (reason C(stale)) and left as it was, one never copied is
    skipped (reason C(not_copied)). O(mode=move) copies and cuts over in one pass.
  - The original stays in the source's KV history until O(purge_source=true) destroys those
    versions. Resumable from a checkpoint; a second run changes nothing.
extends_documentation_fragment:
  - keyops.kms.connection
  - keyops.kms.hsm
  - keyops.kms.attributes
notes:
  - A keyops record of the same name that holds another value is never overwritten; that source is
    reported in RV(skipped) (reason C(exists)) and left as it was.
seealso:
  - module: keyops.kms.secret
  - module: keyops.kms.tenant
  - name: OpenBao Transit secrets engine
    description: The C(vault:vN:) ciphertexts this module can migrate.
    link: https://openbao.org/docs/secrets/transit/
attributes:
  check_mode:
    description: Reads and decrypts every source, writes nothing, and counts what would be migrated.
    support: full
  diff_mode:
    description: Shows how many sources below O(source) are migrated, before and after; never a value.
    support: full
options:
  tenant:
    description: The tenant that receives the secrets; it must exist.
    type: str
    required: true
  source:
    description: KV path prefix of the secrets to migrate, relative to O(source_mount), e.g. C(legacy/app1).
    type: str
    required: true
  source_mount:
    description: KV version 2 mount of O(source). The keyops mount (O(kv_mount)) when unset.
    type: str
  field:
    description: Key of the secrets' data to migrate; the other keys stay in the source.
    type: str
  kind:
    description:
      - What the values are. V(auto) takes C(vault:vN:) values as Transit ciphertexts and the rest as
        plaintext; V(plaintext) and V(transit) insist on one kind (other values are skipped).
    type: str
    choices: [auto, plaintext, transit]
    default: auto
  transit_key:
    description:
      - Transit key that encrypted the values (in the Transit mount O(transit_mount)). The tenant's
        own Transit key by default for a tenant of residence C(transit).
    type: str
  transit_context:
    description: Associated data the values were encrypted with in Transit, if any.
    type: str
  mode:
    description:
      - V(copy) writes the keyops records and leaves the sources as they were; V(cutover) replaces
        each source whose record is current by a marker; V(move) does both in one pass (readers of
        the sources break at once).
    type: str
    choices: [copy, cutover, move]
    default: copy
  purge_source:
    description:
      - Destroy the original versions of each source cut over afterwards (the marker stays). Only with
        O(mode=cutover) or O(mode=move).
    type: bool
    default: false
  workers:
    description: Secrets migrated in parallel.
    type: int
    default: 4
  batch_size:
    description: Secrets listed and checkpointed per batch.
    type: int
    default: 100
  job_id:
    description: Resume (or start under this id) that migration job.
    type: str
"""

EXAMPLES = r"""
- name: Copy an application's plaintext KV secrets into tenant acme (the sources stay as they are)
  keyops.kms.migrate:
    tenant: acme
    source: legacy/app1
    source_mount: secret
    field: password

- name: Once the application reads from keyops, replace the sources by markers
  keyops.kms.migrate:
    tenant: acme
    source: legacy/app1
    source_mount: secret
    field: password
    mode: cutover

- name: Preview (check mode counts what would move; nothing is written)
  keyops.kms.migrate:
    tenant: acme
    source: legacy/app1
    source_mount: secret
  check_mode: true
  register: plan

- name: Values encrypted by Transit key app1, then purge the originals
  keyops.kms.migrate:
    tenant: acme
    source: legacy/app1-encrypted
    source_mount: secret
    kind: transit
    transit_key: app1
    mode: move
    purge_source: true
"""

RETURN = r"""
tenant:
  description: The tenant the secrets are brought under.
  returned: always
  type: str
  sample: acme
job_id:
  description: The job's id (checkpoint C(tenants/<tenant>/jobs/<job_id>)).
  returned: always
  type: str
  sample: migrate-20250107T100000Z-91be
source:
  description: The source prefix, as normalised.
  returned: always
  type: str
  sample: legacy/app1
mount:
  description: The source's KV mount.
  returned: always
  type: str
  sample: secret
total:
  description: Source secrets seen.
  returned: always
  type: int
  sample: 40
mode:
  description: The mode of the run.
  returned: always
  type: str
  sample: copy
migrated:
  description:
    - Secrets migrated by this run (in check mode, that would be); with O(mode=copy), records
      written, with O(mode=cutover), sources replaced by their marker.
  returned: always
  type: int
  sample: 38
already_migrated:
  description: Sources already done (copy mode, a record holding the value; otherwise a marker).
  returned: always
  type: int
  sample: 0
from_plaintext:
  description: Of RV(migrated), how many were plaintext.
  returned: always
  type: int
  sample: 30
from_transit:
  description: Of RV(migrated), how many were Transit ciphertexts.
  returned: always
  type: int
  sample: 8
skipped:
  description: Sources left as they were, with the reason; never a value.
  returned: always
  type: list
  elements: dict
  sample:
    - {name: db/password, reason: exists, detail: "keyops record db/password holds another value"}
purged:
  description: Sources whose original versions were destroyed (O(purge_source=true)).
  returned: always
  type: int
  sample: 0
resumed:
  description: Whether an interrupted job was resumed.
  returned: always
  type: bool
  sample: false
"""

from ansible_collections.keyops.kms.plugins.module_utils._connection import KeyopsModule

try:
    from keyops.ops.migrate import migrate
    from keyops.ops.views import to_json
except ImportError:
    pass  # KeyopsModule reports the missing library

_FIELDS = ("tenant", "job_id", "source", "mount", "total", "migrated", "already_migrated", "from_plaintext",
           "from_transit", "vanished", "purged", "resumed", "mode")


def main():
    module = KeyopsModule(
        argument_spec=dict(
            tenant=dict(type="str", required=True),
            source=dict(type="str", required=True),
            source_mount=dict(type="str"),
            field=dict(type="str"),
            kind=dict(type="str", default="auto", choices=["auto", "plaintext", "transit"]),
            transit_key=dict(type="str", no_log=False),
            transit_context=dict(type="str"),
            mode=dict(type="str", default="copy", choices=["copy", "cutover", "move"]),
            purge_source=dict(type="bool", default=False),
            workers=dict(type="int", default=4),
            batch_size=dict(type="int", default=100),
            job_id=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    with module.session() as k:
        result = migrate(k, p["tenant"], p["source"], source_mount=p["source_mount"], field=p["field"],
                         kind=p["kind"], transit_key=p["transit_key"], transit_context=p["transit_context"],
                         workers=p["workers"], batch_size=p["batch_size"], dry_run=module.check_mode,
                         job_id=p["job_id"], purge_source=p["purge_source"], mode=p["mode"])
    view = {name: getattr(result, name) for name in _FIELDS}
    view["skipped"] = to_json(result.skipped)
    changed = result.would_change  # in check mode: what the run would change
    where = f"{result.mount}/{result.source}"
    before = {where: {"migrated": result.already_migrated, "not_migrated": result.migrated,
                      "original_versions_purged": 0}}
    after = {where: {"migrated": result.already_migrated + result.migrated, "not_migrated": 0,
                     "original_versions_purged": result.purged}}
    module.exit_json(changed=changed, **view, **(module.diff(before, after) if changed else {}))


if __name__ == "__main__":
    main()
