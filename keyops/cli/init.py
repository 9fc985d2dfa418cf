"""``keyops init [--dry-run] [--json]``: the KV v2 and Transit mounts keyops uses, in a fresh Vault or namespace.

Thin over ``keyops.ops.mounts.init_mounts``. Exit 0 when the mounts are in
place afterwards (made now or already there), so that a provisioning script
may run it every time; with ``--detailed-exitcode``, 3 when both were already
there, as every command says "nothing to do". ``--json`` says what changed.
"""

from __future__ import annotations

import argparse

from keyops.access import Mounts
from keyops.cli._common import EXIT_NOTHING_TO_DO, open_keyops, print_json, set_command
from keyops.cli._output import note
from keyops.errors import AuditChainBroken
from keyops.ops.mounts import InitResult, init_mounts


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "init", help="create the KV v2 and Transit mounts keyops uses (KEYOPS_KV_MOUNT, KEYOPS_TRANSIT_MOUNT)",
        description="Create the KV v2 mount (with keyops' history settings) and the Transit mount when they "
                    "are missing, in VAULT_NAMESPACE when set; needs a token that may enable secrets engines. "
                    "Idempotent. Exit codes: 0 the mounts are in place (with --detailed-exitcode: 3 when they "
                    "already were), 15 a mount of the wrong kind is in the "
                    "way, 14 the token may not manage mounts.")
    parser.add_argument("--dry-run", action="store_true", help="say what would be created, change nothing")
    set_command(parser, cmd_init)


def cmd_init(args: argparse.Namespace) -> int:
    from keyops import audit

    # In a fresh Vault or namespace the audit trail cannot record anything yet: its chain's head lives
    # in the KV mount and its key in the Transit mount made here. So the mounts (and the audit key, for a
    # keyed trail) are made first, and their events are recorded right after, once the trail can be.
    with open_keyops(with_audit=False) as bare:
        result = init_mounts(bare, dry_run=args.dry_run)
        trail = audit.sink_from_config(bare.config)
        key_name = Mounts.from_config(bare.config).audit_key
        keyed = trail is not None and trail.log is not None and trail.log.keyed
        key_created = False
        if keyed and not args.dry_run:
            bare.authorize("audit.init")
            key_created = audit.ensure_audit_key(bare.store, key_name)
    if trail is not None and not args.dry_run and (result.changed or key_created):
        try:
            _record(result, key_created, key_name)
        except AuditChainBroken:
            kv_made = any(m.action == "create" and m.engine == "kv" for m in result.mounts)
            if not kv_made:
                raise
            # The chain's head lived in the KV mount that was just made again, empty: the mounts are in
            # place (this command's job), and `keyops restore` brings the head back before it records.
            note(f"keyops: note: the audit chain's head was kept in KV mount {bare.config.kv_mount!r}, which "
                 "was just created empty, so these mount events are only in the server's audit device; "
                 "'keyops restore BACKUP' brings the head back (docs/runbooks/backup-restore.md)")
    changed = result.changed or key_created
    if args.json:
        print_json({"command": "init", "changed": changed, "dry_run": result.dry_run, "result": result,
                    "audit_key_created": key_created})
    else:
        print(result.detail)
        if key_created:
            print(f"created the audit chain's Transit key {bare.config.transit_mount}/{key_name}")
    return 0 if changed else EXIT_NOTHING_TO_DO


def _record(result: InitResult, key_created: bool, key_name: str) -> None:
    with open_keyops() as k:
        for mount in result.mounts:
            if mount.action == "create":
                with k.audited("mount.enable", level="policy", path=mount.path, engine=mount.engine,
                               recorded="after the fact: the trail needs this mount"):
                    pass
        if key_created:
            with k.audited("audit.init", level="audit", audit_key=key_name, created=True):
                pass
