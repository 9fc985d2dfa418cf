"""``keyops kms serve``: the Kubernetes KMS v2 plugin for one tenant (one cluster). See docs/kms.md."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from typing import TYPE_CHECKING

from keyops.cli._common import open_keyops, set_command
from keyops.errors import InvalidInput, KeyopsError

if TYPE_CHECKING:
    from keyops.serve.tenant_keys import TenantKeys

DEFAULT_SOCKET = "/var/run/kmsplugin/keyops.sock"
#: How long the plugin decrypts from keys it already holds while Vault cannot be reached.
DEFAULT_STALE_FOR = 3600.0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kms = sub.add_parser("kms", help="the Kubernetes KMS v2 plugin")
    kms_sub = kms.add_subparsers(dest="kms_command", metavar="COMMAND", required=True)
    serve = kms_sub.add_parser(
        "serve", help="serve the KMS v2 gRPC API on a unix socket for one tenant",
        description="Serve Status, Encrypt and Decrypt of the Kubernetes KMS v2 API on a unix socket "
                    "(mode 0600) with the tenant's primary DEK; until SIGTERM, which removes the socket. "
                    "Refuses to start unless Vault, the HSM (residence kv) and an encrypt/decrypt round "
                    "trip work with this process's credentials.")
    serve.add_argument("--tenant", required=True, help="the keyops tenant of this Kubernetes cluster")
    serve.add_argument("--socket", default=DEFAULT_SOCKET, help=f"unix socket path (default {DEFAULT_SOCKET})")
    serve.add_argument("--workers", type=int, default=8, help="gRPC worker threads (default 8)")
    serve.add_argument("--stale-for", type=float, default=DEFAULT_STALE_FOR, metavar="SECONDS",
                       help="while Vault is unreachable, keep decrypting with the keys already held for this "
                            f"long (default {DEFAULT_STALE_FOR:.0f}; 0: never)")
    serve.add_argument("--rotate-due-every", type=float, default=0.0, metavar="SECONDS",
                       help="check this often whether the tenant's DEK or KEK is due (by age or uses) and "
                            "rotate it; needs the rotation role (default 0: leave rotation to "
                            "'keyops rotate --due')")
    serve.add_argument("--grace", type=float, default=5.0, metavar="SECONDS",
                       help="on SIGTERM, how long calls in flight may finish (default 5)")
    set_command(serve, cmd_serve, json=False)


def cmd_serve(args: argparse.Namespace) -> int:
    from keyops.auth import configured_methods
    from keyops.kms.plugin import KMS_CONTEXT, Plugin, run_until_signalled
    from keyops.serve.tenant_keys import TenantKeys
    from keyops.serve.token_keeper import TokenKeeper, keep_token_alive

    if not 1 <= args.workers <= 64:
        raise InvalidInput(f"--workers must be between 1 and 64, not {args.workers}")
    if args.stale_for < 0 or args.rotate_due_every < 0 or args.grace < 0:
        raise InvalidInput("--stale-for, --rotate-due-every and --grace must not be negative")
    logging.basicConfig(level=logging.INFO, format="keyops kms: %(levelname)s %(message)s", stream=sys.stderr)
    with open_keyops(stale_for=args.stale_for) as k:
        keys = TenantKeys(k, args.tenant, KMS_CONTEXT)
        current = keys.probe()  # no rights to the tenant, or a broken Vault or HSM: refuse to start
        stop = threading.Event()
        keeper = TokenKeeper(k.store, can_log_in=bool(configured_methods(k.config)))
        threading.Thread(target=keep_token_alive, args=(keeper, stop), name="kms-token", daemon=True).start()
        if args.rotate_due_every:
            threading.Thread(target=_rotate_while_serving, args=(keys, args.rotate_due_every, stop),
                             name="kms-rotate", daemon=True).start()
        plugin = Plugin(keys, args.socket, workers=args.workers)

        def ready() -> None:
            print(f"keyops kms: serving tenant {keys.tenant!r} on unix:{args.socket} (key id {current})",
                  file=sys.stderr, flush=True)

        try:
            run_until_signalled(plugin, grace=args.grace, ready=ready)
        finally:
            stop.set()
        calls = k.calls.snapshot()
    # What the plugin cost its backends, for operators (and benchmarks): the HSM and Vault call counts.
    hsm = sum(n for kind, n in calls.items() if kind.startswith("hsm."))
    print(f"keyops kms: stopped (HSM calls {hsm}, of them unwraps {calls.get('hsm.decrypt', 0)}; "
          f"Vault requests {sum(calls.values()) - hsm})", file=sys.stderr)
    return 0


def _rotate_while_serving(keys: TenantKeys, every: float, stop: threading.Event) -> None:
    log = logging.getLogger("keyops.kms")
    while not stop.wait(every):
        try:
            for change in keys.rotate_if_due():
                log.info("rotated %s of tenant %r", change, keys.tenant)
        except KeyopsError as exc:
            log.warning("rotation check of tenant %r failed: %s: %s", keys.tenant, exc.code, exc)
