"""``keyops serve``: the HTTP API shaped as Vault's Transit API (docs/http-api.md)."""

from __future__ import annotations

import argparse
import ipaddress

from keyops.cli._common import set_command
from keyops.errors import InvalidInput

DEFAULT_LISTEN = "127.0.0.1:8200"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "serve", help="serve keyops through an HTTP API that Vault's Transit clients speak",
        description="Serve encrypt, decrypt, rewrap, datakey and keys under /v1/<mount>/ as Vault's Transit "
                    "API does (hvac, the vault/bao CLI and Vault SDKs work unchanged), the seed's "
                    "/api/v1/kek/{generate,rotate,status}, /v1/sys/health and Prometheus metrics. Callers "
                    "send their own Vault token; keyops looks it up and grants what its keyops roles grant. "
                    "This process's own Vault token (a rotation-role token, say) and the HSM PIN (for tenants "
                    "of residence kv) come from the usual environment. Stops cleanly on SIGTERM.")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help=f"address to listen on (default {DEFAULT_LISTEN}); plain HTTP only on loopback "
                             "unless --insecure-http")
    parser.add_argument("--tls-cert", metavar="FILE", help="TLS certificate chain (PEM)")
    parser.add_argument("--tls-key", metavar="FILE", help="TLS private key (PEM) of --tls-cert")
    parser.add_argument("--insecure-http", action="store_true",
                        help="allow plain HTTP on a non-loopback address (tokens would cross the network in clear)")
    parser.add_argument("--mount", default="transit", help="the mount path clients use (default transit)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--token-ttl", type=float, default=10.0, metavar="SECONDS",
                        help="how long a caller's token look-up is cached: a revoked token keeps working for "
                             "at most this long (default 10)")
    parser.add_argument("--max-body", type=int, default=1024 * 1024, metavar="BYTES",
                        help="largest request body accepted (default 1048576); larger ones get 413")
    parser.add_argument("--access-log", metavar="FILE",
                        help="append one JSON access record per request to FILE ('-': stderr)")
    parser.add_argument("--keyring-ttl", type=float, default=30.0, metavar="SECONDS",
                        help="how long a keyring is used before it is read again (default 30)")
    parser.add_argument("--stale-for", type=float, default=300.0, metavar="SECONDS",
                        help="while Vault is unreachable, keep serving keys already held for this long "
                             "(default 300; 0: never)")
    parser.add_argument("--unauthenticated-metrics", action="store_true",
                        help="serve /metrics without a token (by default a token with status.read is needed)")
    parser.add_argument("--grace", type=int, default=10, metavar="SECONDS",
                        help="on SIGTERM, how long requests in flight may finish (default 10)")
    set_command(parser, cmd_serve, json=False)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInput(f"--listen must be HOST:PORT (e.g. {DEFAULT_LISTEN}), not {text!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    from keyops.api.server import Settings, run

    host, port = parse_listen(args.listen)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise InvalidInput("--tls-cert and --tls-key go together")
    if not args.tls_cert and not is_loopback(host) and not args.insecure_http:
        raise InvalidInput(f"refusing plain HTTP on {host}, which is not a loopback address: callers' tokens "
                           "would cross the network in clear; give --tls-cert and --tls-key (or --insecure-http)")
    if not 1 <= args.workers <= 64:
        raise InvalidInput(f"--workers must be between 1 and 64, not {args.workers}")
    if args.token_ttl < 0 or args.keyring_ttl <= 0 or args.stale_for < 0 or args.grace < 0 or args.max_body < 1:
        raise InvalidInput("--token-ttl, --stale-for and --grace must not be negative; --keyring-ttl and "
                           "--max-body must be positive")
    settings = Settings(mount=args.mount.strip("/") or "transit", token_ttl=args.token_ttl, max_body=args.max_body,
                        access_log=args.access_log, keyring_ttl=args.keyring_ttl, stale_for=args.stale_for,
                        metrics_token=not args.unauthenticated_metrics)
    run(settings, host=host, port=port, workers=args.workers, tls_cert=args.tls_cert, tls_key=args.tls_key,
        grace=args.grace)
    return 0
