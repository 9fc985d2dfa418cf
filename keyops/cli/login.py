"""``keyops login``: log in to Vault once and write the token file later commands use.

The file is ``~/.vault-token`` (``KEYOPS_VAULT_TOKEN_FILE`` names another),
the one the ``vault`` and ``bao`` CLIs read too, written with mode 0600 from
the start. Secrets come from the environment or files, never from the
command line; the token itself is printed only with ``--print-token``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from keyops import auth
from keyops.cli._common import print_json, set_command
from keyops.config import Config
from keyops.errors import InvalidInput
from keyops.ops.login import LoginResult, login, store_token

LOGIN_SCHEMA = 1
#: --role and --mount set these fields, by method.
_ROLE = {"approle": "approle_role_id", "jwt": "jwt_role", "kubernetes": "kubernetes_role"}
_MOUNT = {"approle": "approle_mount", "jwt": "jwt_mount", "kubernetes": "kubernetes_mount"}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "login", help="log in to Vault and write the token file (0600) that keyops and bao use",
        description="Log in with an auth method (AppRole, JWT/OIDC for CI, Kubernetes) or check a token, and "
                    "write the token to ~/.vault-token (KEYOPS_VAULT_TOKEN_FILE, or --token-file) with mode 0600. "
                    "Later keyops commands (and bao/vault) without VAULT_TOKEN use it. Credentials come from the "
                    "environment (VAULT_ROLE_ID, VAULT_SECRET_ID, KEYOPS_JWT_ROLE, KEYOPS_JWT, ...) or files.")
    parser.add_argument("--method", choices=auth.AUTH_METHODS, default=None,
                        help="auth method (default KEYOPS_AUTH_METHOD, else auto: the one method configured, or "
                             "the token when none is)")
    parser.add_argument("--role", help="AppRole role id, JWT role or Kubernetes role (needs --method)")
    parser.add_argument("--mount", help="mount path of the auth method (needs --method)")
    parser.add_argument("--secret-id-file", help="AppRole secret id file, readable only by its owner")
    parser.add_argument("--jwt-file", help="file holding the JWT (a CI system's OIDC token), owner-only")
    parser.add_argument("--kubernetes-token-file", help="service-account token (default: the pod's own)")
    parser.add_argument("--token-stdin", action="store_true",
                        help="--method token: read the token to check and store from stdin")
    parser.add_argument("--token-file", help="write the token here instead of KEYOPS_VAULT_TOKEN_FILE or "
                                             "~/.vault-token (later commands need KEYOPS_VAULT_TOKEN_FILE then)")
    parser.add_argument("--no-store", action="store_true", help="write no token file")
    parser.add_argument("--print-token", action="store_true",
                        help="print the token itself on stdout (for a variable of your own); off by default")
    set_command(parser, cmd_login)


def login_config(args: argparse.Namespace) -> Config:
    """The environment's configuration with the command's options over it."""
    config = Config.load()
    method = args.method or config.auth_method
    changes: dict[str, Any] = {}
    for option, fields in (("role", _ROLE), ("mount", _MOUNT)):
        value = getattr(args, option)
        if value is None:
            continue
        if method not in fields:
            raise InvalidInput(f"--{option} needs --method {'|'.join(fields)}")
        changes[fields[method]] = value
    for option, field in (("secret_id_file", "approle_secret_id_file"), ("jwt_file", "jwt_file"),
                          ("kubernetes_token_file", "kubernetes_token_file")):
        if getattr(args, option):
            changes[field] = getattr(args, option)
    return config.replace(**changes)


def cmd_login(args: argparse.Namespace) -> int:
    config = login_config(args)
    token = None
    if args.token_stdin:
        if (args.method or config.auth_method) != "token":
            raise InvalidInput("--token-stdin needs --method token")
        token = sys.stdin.readline().strip()
        if not token:
            raise InvalidInput("--token-stdin: no token on stdin")
    result = login(config, args.method, token=token)
    where = None if args.no_store else store_token(result, args.token_file or config.token_file_path, config)
    if args.json:
        view: dict[str, Any] = {"schema": LOGIN_SCHEMA, **result.view(), "token_file": str(where) if where else None}
        if args.print_token:
            view["token"] = result.token
        print_json(view)
        return 0
    if args.print_token:
        print(result.token)
    print(summary(result, where), file=sys.stderr)
    return 0


def summary(result: LoginResult, where: object) -> str:
    how = "token" if result.method == "token" else f"{auth.NAMES[result.method]} at auth/{result.mount}"
    ttl = f"{result.ttl} s" if result.ttl else "no expiry"
    stored = f"; token written to {where} (mode 0600)" if where else "; no token file written"
    return (f"logged in with {how}: accessor {result.accessor}, policies {', '.join(result.policies) or '-'}, "
            f"ttl {ttl}{', renewable' if result.renewable else ''}{stored}")
