"""``keyops migrate``: bring plaintext or Transit-encrypted KV secrets under keyops.

    keyops migrate --from PATH --tenant T [--mount M] [--field F] [--kind auto|plaintext|transit]
                   [--transit-key K] [--transit-mount M] [--transit-context TEXT]
                   [--cut-over | --move] [--workers N] [--batch-size N] [--job-id ID] [--purge-source]
                   [--dry-run] [--progress] [--json]

By default each source secret is copied into a keyops record, checked to
decrypt back to the original, and the source is left as it was: applications
reading it keep working. ``--cut-over`` then replaces each source whose record
is current (it still holds the source's value) by a marker, and skips any that
changed since the copy; ``--move`` does both in one pass. The original stays
in the source's KV version history until ``--purge-source`` destroys those
versions (see ``keyops.ops.migrate``). Exit codes (the table of ``keyops
rotate``): 0 done (with ``--dry-run``: something would change), 3 nothing to
do, 7 some secrets were skipped (listed; e.g. a keyops secret of that name
holds another value), otherwise the error's ``exit_code``.
"""

from __future__ import annotations

import argparse

from keyops.cli._common import open_keyops, print_json, set_command
from keyops.cli.reencrypt import EXIT_DONE, EXIT_NOTHING_TO_DO, progress_bar
from keyops.errors import Conflict
from keyops.ops.migrate import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, SOURCE_KINDS, MigrationResult, migrate

#: The CLI words for the library's modes.
_VERBS = {"copy": ("copy", "copied"), "cutover": ("cut over", "cut over"), "move": ("migrate", "migrated")}

EXIT_SKIPPED = Conflict.exit_code


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "migrate", help="bring plaintext or Transit-encrypted KV secrets under keyops (resumable)",
        description="Copy the secrets below a KV v2 path into a tenant's keyops records, leaving the sources as "
                    "they are; --cut-over then replaces each source whose copy is current by a keyops_migrated "
                    "marker. Exit codes: 0 done, 3 nothing to do, 7 some secrets skipped, others: the error's code.")
    parser.add_argument("--from", dest="source", required=True, metavar="PATH",
                        help="KV v2 path prefix of the secrets to migrate (names are relative to it)")
    parser.add_argument("--tenant", required=True, metavar="T")
    parser.add_argument("--mount", metavar="M", help="KV v2 mount of the source (default: the keyops mount)")
    parser.add_argument("--field", metavar="F", help="the data key holding the value (default: the only key, "
                        "else the whole data as JSON)")
    parser.add_argument("--kind", choices=SOURCE_KINDS, default="auto",
                        help="plaintext values, Transit ciphertexts (vault:vN:...), or auto-detect (default)")
    parser.add_argument("--transit-key", metavar="K", help="Transit key that encrypted the values")
    parser.add_argument("--transit-mount", metavar="M", help="Transit mount (default: the configured one)")
    parser.add_argument("--transit-context", metavar="TEXT",
                        help="associated data the values were encrypted with, if any")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, metavar="N")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N")
    parser.add_argument("--job-id", metavar="ID", help="resume (or start) this job")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--cut-over", dest="mode", action="store_const", const="cutover", default="copy",
                      help="replace each source whose keyops record is current by a marker (after a copy; a "
                      "source changed since its copy is skipped and left as it was)")
    mode.add_argument("--move", dest="mode", action="store_const", const="move",
                      help="copy and cut over in one pass: readers of the sources break at once")
    parser.add_argument("--purge-source", action="store_true",
                        help="with --cut-over or --move: afterwards, destroy the original versions of the sources "
                        "cut over (keeps the markers)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be migrated, write nothing")
    parser.add_argument("--progress", action="store_true",
                        help="progress bar on stderr even when stderr is not a terminal")
    set_command(parser, cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    with open_keyops() as k, progress_bar(args.progress) as bar:
        result = migrate(k, args.tenant, args.source, source_mount=args.mount, field=args.field, kind=args.kind,
                         transit_key=args.transit_key, transit_mount=args.transit_mount,
                         transit_context=args.transit_context, workers=args.workers, batch_size=args.batch_size,
                         dry_run=args.dry_run, job_id=args.job_id, progress=bar, purge_source=args.purge_source,
                         mode=args.mode)
    code = exit_code(result)
    if args.json:
        status = {EXIT_DONE: "done", EXIT_NOTHING_TO_DO: "nothing_to_do"}.get(code, "skipped")
        print_json({**result.to_dict(), "status": status})
    else:
        print(summary(result))
    return code


def exit_code(result: MigrationResult) -> int:
    if result.skipped:
        return EXIT_SKIPPED
    return EXIT_DONE if result.would_change else EXIT_NOTHING_TO_DO


def summary(r: MigrationResult) -> str:
    where = f"{r.mount}/{r.source}"
    verb, done = _VERBS.get(r.mode, _VERBS["move"])
    if r.dry_run:
        head = (f"dry run: would {verb} {r.migrated} of {r.total} secrets below {where} into tenant {r.tenant} "
                f"({r.from_plaintext} plaintext, {r.from_transit} Transit; {r.already_migrated} already {done})")
    elif not r.changed and not r.skipped:
        head = (f"nothing to do: all {r.total} secrets below {where} are already {done} into tenant {r.tenant}"
                if r.total else f"nothing to do: no secrets below {where}")
    else:
        head = (f"{done} {r.migrated} of {r.total} secrets below {where} into tenant {r.tenant} "
                f"({r.from_plaintext} plaintext, {r.from_transit} Transit; {r.already_migrated} already {done}); "
                f"job {r.job_id}" + (" (resumed)" if r.resumed else ""))
    lines = [head]
    if r.mode == "copy" and r.migrated:
        lines.append(f"the sources are unchanged and their readers keep working; once they read from keyops, "
                     f"replace the sources by markers: keyops migrate --from {r.source} --mount {r.mount} "
                     f"--tenant {r.tenant} --cut-over")
    elif r.purged:
        lines.append(f"{'would destroy' if r.dry_run else 'destroyed'} the original versions of {r.purged} "
                     "migrated sources (their markers stay)")
    elif not r.dry_run and r.migrated:
        lines.append("the originals stay in the sources' KV version history; destroy them with --purge-source "
                     "once the applications read from keyops")
    for s in r.skipped:
        lines.append(f"skipped {s.name}: {s.detail}")
    return "\n".join(lines)
