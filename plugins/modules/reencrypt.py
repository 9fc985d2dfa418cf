#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: reencrypt
short_description: Re-encrypt tenants' secrets to their primary DEK, resumably
author:
  - keyops contributors (!UNKNOWN)
version_added: 0.1.0
description:
  - Moves every secret of each tenant to the tenant's primary DEK, with a pool of workers, in
    batches, each record written with check-and-set (a secret an application changes meanwhile
    keeps the application's value).
  - The job keeps a checkpoint in KV (C(tenants/<tenant>/jobs/<id>)); a killed run resumes from it.
    A verification pass counts the records per DEK version and names the old DEK versions that
    nothing refers to any more (RV(results[].unreferenced)), ready for retirement.
  - One task handles many tenants (O(tenants)), one after the other, in one module run.
extends_documentation_fragment:
  - keyops.kms.connection
  - keyops.kms.hsm
  - keyops.kms.attributes
notes:
  - Secrets already under the primary DEK are left alone, so a re-run reports C(changed=false).
  - When the job of one tenant fails, the other tenants still run; the task then fails, with
    RV(results) and RV(failures) in its result.
seealso:
  - module: keyops.kms.rotate
  - module: keyops.kms.key_info
attributes:
  check_mode:
    description: Reads and decrypts every record, writes nothing, and counts what would be re-encrypted.
    support: full
  diff_mode:
    description:
      - Shows, for each tenant with records to move, its primary DEK version and how many records are under
        it and under older DEK versions, before and after; never a value.
    support: full
options:
  tenant:
    description: The tenant. Mutually exclusive with O(tenants).
    type: str
  tenants:
    description: Several tenants in one task.
    type: list
    elements: str
  workers:
    description: Records moved in parallel, per tenant.
    type: int
    default: 4
  tenant_workers:
    description:
      - Tenants of O(tenants) re-encrypted at once, each with its own O(workers). A failing tenant is
        reported in RV(failures) and the others still run.
    type: int
    default: 8
  batch_size:
    description: Records listed and checkpointed per batch.
    type: int
    default: 100
  job_id:
    description:
      - Resume (or start under this id) that job of O(tenant). Without it, the tenant's unfinished
        re-encryption is resumed, else a new job starts. A finished job is reported as it finished.
    type: str
"""

EXAMPLES = r"""
- name: Re-encrypt the secrets of every tenant whose DEK rotated, in one task
  keyops.kms.reencrypt:
    tenants: "{{ rotated_tenants }}"
    workers: 8
  register: reencrypted

- name: How many records would move? (check mode)
  keyops.kms.reencrypt:
    tenant: acme
  check_mode: true
  register: plan

- name: Resume a job that was killed
  keyops.kms.reencrypt:
    tenant: acme
    job_id: reencrypt-20250107T100000Z-3f2a
"""

RETURN = r"""
results:
  description: One entry per tenant, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    tenant:
      description: The tenant.
      type: str
      sample: acme
    job_id:
      description: The job's id (its checkpoint is C(tenants/<tenant>/jobs/<job_id>)).
      type: str
      sample: reencrypt-20250107T100000Z-3f2a
    dek_version:
      description: The primary DEK the records were moved to.
      type: int
      sample: 4
    total:
      description: Records seen.
      type: int
      sample: 1200
    rewritten:
      description: Records re-encrypted (in check mode, that would be).
      type: int
      sample: 1180
    already_current:
      description: Records already under the primary DEK.
      type: int
      sample: 20
    redone_after_conflict:
      description: Records an application changed meanwhile, moved again from the new value.
      type: int
      sample: 0
    references:
      description: Records per DEK version after the job.
      type: dict
      sample: {"4": 1200}
    unreferenced:
      description: Older DEK versions that no record refers to any more (candidates for retirement).
      type: list
      elements: int
      sample: [3]
    resumed:
      description: Whether an interrupted job was resumed.
      type: bool
      sample: false
    changed:
      description: Whether this tenant's job wrote a record.
      type: bool
      sample: true
failures:
  description: Tenants whose job failed, with the library's error code and message (the checkpoint keeps
    their progress).
  returned: always
  type: list
  elements: dict
  sample: []
rewritten:
  description: Records re-encrypted across all tenants (in check mode, that would be).
  returned: always
  type: int
  sample: 1180
"""

from ansible_collections.keyops.kms.plugins.module_utils._connection import KeyopsModule

try:
    from keyops.ops.reencrypt import reencrypt_tenants
    from keyops.ops.views import reencrypt_diff
except ImportError:
    pass  # KeyopsModule reports the missing library

_FIELDS = ("tenant", "job_id", "dek_version", "total", "rewritten", "already_current", "redone_after_conflict",
           "vanished", "rewritten_late", "resumed", "references", "unreferenced")


def result_view(outcome):
    view = outcome.result.to_dict()
    return {**{name: view[name] for name in _FIELDS}, "changed": outcome.changed}


def failure_view(failure):
    return {"tenant": failure.tenant, "error": failure.error, "message": failure.message}


def main():
    module = KeyopsModule(
        argument_spec=dict(
            tenant=dict(type="str"),
            tenants=dict(type="list", elements="str"),
            workers=dict(type="int", default=4),
            tenant_workers=dict(type="int", default=8),
            batch_size=dict(type="int", default=100),
            job_id=dict(type="str"),
        ),
        mutually_exclusive=[("tenant", "tenants"), ("job_id", "tenants")],
        required_one_of=[("tenant", "tenants")],
        supports_check_mode=True,
    )
    p = module.params
    with module.session() as k:
        report = reencrypt_tenants(k, [p["tenant"]] if p["tenant"] else p["tenants"],
                                   tenant_workers=p["tenant_workers"], workers=p["workers"],
                                   batch_size=p["batch_size"], job_id=p["job_id"], dry_run=module.check_mode)
    module.exit_report(report, changed=report.changed,
                       results=[result_view(o) for o in report.outcomes if not o.failed],
                       failures=[failure_view(f) for f in report.failures], rewritten=report.rewritten,
                       **module.diff(*reencrypt_diff(report.outcomes)))


if __name__ == "__main__":
    main()
