"""``keyops reencrypt``: move every secret of a tenant to its primary DEK (resumable).

    keyops reencrypt --tenant T [--workers N] [--batch-size N] [--job-id ID] [--dry-run] [--progress] [--json]

A re-run without ``--job-id`` resumes the tenant's unfinished job. Exit codes
(the table of ``keyops rotate``): 0 done (with ``--dry-run``: something would
move), 0 (3 with ``--detailed-exitcode``) nothing to do (every secret already under the primary DEK; or the
named job had finished), otherwise the error's ``exit_code`` (``keyops.errors``).
A progress bar with rate and ETA goes to stderr when stderr is a terminal,
or with ``--progress``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

from keyops.cli._common import EXIT_NOTHING_TO_DO, open_keyops, print_json, set_command
from keyops.ops.progress import ProgressBar
from keyops.ops.reencrypt import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, ReencryptResult, reencrypt

EXIT_DONE = 0
__all__ = ["EXIT_DONE", "EXIT_NOTHING_TO_DO", "progress_bar"]  # keyops.cli.migrate takes these from here


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "reencrypt", help="move every secret of a tenant to its primary DEK (resumable)",
        description="Re-encrypt a tenant's secrets under its primary DEK, with check-and-set per record, a "
                    "checkpoint in KV and a verification pass. Exit codes: 0 done, 0 (3 with --detailed-exitcode) "
                    "nothing to do, "
                    "others: the error's code.")
    parser.add_argument("--tenant", required=True, metavar="T")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, metavar="N",
                        help=f"parallel workers (default {DEFAULT_WORKERS})")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                        help=f"names listed and checkpointed per batch (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--job-id", metavar="ID", help="resume (or start) this job instead of the tenant's "
                        "unfinished one")
    parser.add_argument("--dry-run", action="store_true", help="count what would move, write nothing")
    parser.add_argument("--progress", action="store_true",
                        help="progress bar on stderr even when stderr is not a terminal")
    set_command(parser, cmd_reencrypt)


@contextlib.contextmanager
def progress_bar(forced: bool) -> Iterator[ProgressBar | None]:
    if not (forced or sys.stderr.isatty()):
        yield None
        return
    bar = ProgressBar(sys.stderr)
    try:
        yield bar
    finally:
        bar.close()


def cmd_reencrypt(args: argparse.Namespace) -> int:
    with open_keyops() as k, progress_bar(args.progress) as bar:
        result = reencrypt(k, args.tenant, workers=args.workers, batch_size=args.batch_size, job_id=args.job_id,
                           dry_run=args.dry_run, progress=bar)
    code = exit_code(result)
    if args.json:
        print_json({**result.to_dict(), "status": "done" if code == EXIT_DONE else "nothing_to_do"})
    else:
        print(summary(result))
    return code


def exit_code(result: ReencryptResult) -> int:
    if result.dry_run:
        return EXIT_DONE if result.rewritten else EXIT_NOTHING_TO_DO
    return EXIT_DONE if result.changed else EXIT_NOTHING_TO_DO


def summary(r: ReencryptResult) -> str:
    refs = ", ".join(f"v{v}: {n}" for v, n in sorted(r.references.items())) or "none"
    if r.dry_run:
        lines = [f"dry run: would re-encrypt {r.rewritten} of {r.total} secrets of tenant {r.tenant} to DEK "
                 f"v{r.dek_version} ({r.already_current} already there); nothing written",
                 f"records per DEK version now: {refs}"]
    elif not r.changed:
        lines = [f"nothing to do: all {r.total} secrets of tenant {r.tenant} are under DEK v{r.dek_version} or newer"
                 + (f" (job {r.job_id} had finished)" if r.resumed else ""),
                 f"records per DEK version: {refs}"]
    else:
        late = f", {r.rewritten_late} more found behind by the verification" if r.rewritten_late else ""
        lines = [f"re-encrypted {r.rewritten} of {r.total} secrets of tenant {r.tenant} to DEK v{r.dek_version} "
                 f"({r.already_current} already there, {r.redone_after_conflict} redone after a concurrent "
                 f"change{late}); job {r.job_id}" + (" (resumed)" if r.resumed else ""),
                 f"records per DEK version: {refs}"]
    if r.unreferenced:
        versions = ", ".join(str(v) for v in r.unreferenced)
        when = "would then refer" if r.dry_run else "refers"
        lines.append(f"no secret {when} to DEK version(s) {versions}: retire with "
                     f"'keyops retire --tenant {r.tenant} --level dek --version N'")
    for version, uses in sorted(r.external.items()):
        lines.append(f"but DEK v{version} encrypted up to {uses} values for callers outside keyops' store: "
                     f"applications must rewrap the ciphertexts they keep (keyops rewrap --tenant {r.tenant}) "
                     "before it is retired with --acknowledge-external")
    return "\n".join(lines)
