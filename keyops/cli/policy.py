"""``keyops policy roles|operations|render|apply|mint|whoami|root-kms``: roles as Vault ACL policies."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from keyops import access
from keyops.cli._common import EXIT_NOTHING_TO_DO, open_keyops, print_json, set_command
from keyops.config import Config
from keyops.errors import InvalidInput
from keyops.files import write_file_atomic
from keyops.ops.front import Keyops

HSM_WORDS = {"never": "no", "kv-residence": "for residence kv", "always": "yes"}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("policy", help="roles, the Vault policies made from them, and credentials bound to them")
    psub = parser.add_subparsers(dest="policy_command", metavar="ACTION", required=True)

    roles = psub.add_parser("roles", help="list the roles of the roles file and whether they need the HSM PIN")
    _roles_file_flag(roles)
    set_command(roles, cmd_roles, data_output=True)

    ops = psub.add_parser("operations", help="list the operations roles can grant, with their Vault paths")
    set_command(ops, cmd_operations, data_output=True)

    render = psub.add_parser("render", help="print the HCL policies (no change anywhere)")
    _selection_flags(render)
    set_command(render, cmd_render, data_output=True)

    apply = psub.add_parser("apply", help="create or update the policies in Vault (unchanged ones are left alone)")
    _selection_flags(apply)
    apply.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    set_command(apply, cmd_apply)

    mint = psub.add_parser("mint", help="mint a token or AppRole secret id bound to a role's policy")
    mint.add_argument("--role", required=True)
    mint.add_argument("--tenant", help="the tenant of a tenant role (app)")
    kind = mint.add_mutually_exclusive_group()
    kind.add_argument("--token", dest="kind", action="store_const", const="token", help="a token (default)")
    kind.add_argument("--approle", dest="kind", action="store_const", const="approle",
                      help="an AppRole keyops-<role>[-<tenant>] and a new secret id")
    mint.add_argument("--ttl", default="1h", help="token TTL (AppRole: the TTL of tokens it issues); default 1h")
    mint.add_argument("--orphan", action="store_true", help="token: not revoked with the token that minted it")
    mint.add_argument("--output", required=True, metavar="FILE",
                      help="file that receives the token or secret id (created with mode 0600; never printed)")
    mint.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    _roles_file_flag(mint)
    set_command(mint, cmd_mint, kind="token")

    whoami = psub.add_parser("whoami", help="the caller's token accessor and keyops roles (no secret shown)")
    set_command(whoami, cmd_whoami, data_output=True)

    root_kms = psub.add_parser("root-kms", help="print the HCL policy of the KMS token (KEYOPS_ROOT=transit), to "
                                                "apply on the KMS; no change anywhere")
    set_command(root_kms, cmd_root_kms)


def _roles_file_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--roles-file", help="roles file (default: $KEYOPS_ROLES_FILE or the packaged roles.toml)")


def _selection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", action="append", dest="roles", metavar="ROLE",
                        help="only this role (repeatable); default: every role")
    parser.add_argument("--tenant", action="append", dest="tenants", metavar="TENANT",
                        help="tenant for tenant roles (repeatable); default: every tenant in Vault")
    _roles_file_flag(parser)


def _load_roles(args: argparse.Namespace, config: Config | None = None) -> access.Roles:
    path = getattr(args, "roles_file", None) or (config.roles_file if config else None)
    return access.load_roles(path)


def cmd_roles(args: argparse.Namespace) -> int:
    roles = _load_roles(args, Config.load())
    rows = [{"name": r.name, "scope": r.scope, "hsm_pin": r.hsm, "description": r.description,
             "operations": sorted(r.operations), "granted": sorted(r.granted),
             "policy": f"{access.POLICY_PREFIX}-{r.name}" + ("-<tenant>" if r.scope == "tenant" else "")}
            for r in roles]
    if args.json:
        print_json({"source": roles.source, "roles": rows})
        return 0
    print(f"roles from {roles.source}:")
    for row in rows:
        print(f"  {row['name']:<16} {row['scope']:<7} PIN: {HSM_WORDS[row['hsm_pin']]:<17} policy {row['policy']}")
        print(f"      {', '.join(row['operations'])}")
    return 0


def cmd_operations(args: argparse.Namespace) -> int:
    mounts = access.Mounts.from_config(Config.load())
    rows: list[dict[str, Any]] = []
    for op in access.OPERATIONS.values():
        rules = access.policy_rules(access.Role("x", "tenant", (op.name,)), "<tenant>", mounts) \
            if op.tenant_scoped else access.policy_rules(access.Role("x", "global", (op.name,)), None, mounts)
        rows.append({"name": op.name, "description": op.description, "tenant_scoped": op.tenant_scoped,
                     "hsm_pin": op.hsm, "implies": list(op.implies),
                     "paths": {p: list(c) for p, c in rules.items()}})
    if args.json:
        print_json(rows)
        return 0
    for row in rows:
        print(f"{row['name']:<16} {row['description']}; PIN: {HSM_WORDS[row['hsm_pin']]}")
        for path, caps in row["paths"].items():
            print(f"    {path}  [{', '.join(caps)}]")
    return 0


def _policies(args: argparse.Namespace, k: Keyops | None, config: Config) -> dict[str, str]:
    roles = _load_roles(args, config)
    wanted = args.roles
    needs_tenants = any(r.scope == "tenant" for r in roles if wanted is None or r.name in wanted)
    tenants = args.tenants
    if tenants is None:
        tenants = []
        if needs_tenants:
            if k is None:
                raise InvalidInput("name the tenants (--tenant) or give Vault access to list them")
            tenants = k.list_tenants()
    return access.render_policies(roles, tenants, access.Mounts.from_config(config), only=wanted)


def cmd_render(args: argparse.Namespace) -> int:
    config = Config.load()
    if args.tenants is None:
        with open_keyops() as k:
            policies = _policies(args, k, config)
    else:
        policies = _policies(args, None, config)
    if args.json:
        print_json(policies)
    else:
        print("\n".join(policies.values()), end="")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    with open_keyops() as k:
        policies = _policies(args, k, k.config)
        result = access.apply_policies(k, policies, dry_run=args.dry_run)
        # Policies limit who may write; KV's history is what lets an administrator undo a bad write.
        history = access.HistoryResult((), args.dry_run)
        if k.principal.allows("history.config"):
            tenants = args.tenants if args.tenants is not None else k.list_tenants()
            history = access.ensure_history(k, tenants, dry_run=args.dry_run)
    if args.json:
        print_json({"changed": result.changed or history.changed, "dry_run": result.dry_run,
                    "changes": [{"policy": c.name, "action": c.action} for c in result.changes],
                    "history": [{"path": c.path, "action": c.action, "max_versions_before": c.before,
                                 "max_versions": c.after} for c in history.changes]})
        return 0 if result.changed or history.changed else EXIT_NOTHING_TO_DO
    verb = {"create": "would create" if args.dry_run else "created",
            "update": "would update" if args.dry_run else "updated", "unchanged": "unchanged"}
    for change in result.changes:
        print(f"{verb[change.action]:<13} {change.name}")
    for kept in history.changes:
        if kept.action != "unchanged":
            before = kept.before or "the mount's default"
            print(f"{'would keep' if args.dry_run else 'kept':<13} {kept.after} versions of {kept.path} "
                  f"(was {before}{'' if kept.cas_required_before is None else '; check-and-set required'})")
    if not result.changed and not history.changed:
        print("nothing to do: every policy and KV history setting is up to date")
        return EXIT_NOTHING_TO_DO
    return 0


def cmd_mint(args: argparse.Namespace) -> int:
    output = Path(args.output)
    with open_keyops() as k:
        roles = _load_roles(args, k.config)
        role = roles.get(args.role)
        access.policy_name(role, args.tenant)  # a tenant where one is needed, none where not: before minting
        if output.exists() and not args.force:
            raise InvalidInput(f"{output} exists; choose another --output or pass --force")
        if args.kind == "approle":
            creds = access.ensure_approle(k, roles, args.role, args.tenant, token_ttl=args.ttl)
            assert creds.secret_id is not None
            write_file_atomic(output, creds.secret_id + "\n")
            answer: dict[str, Any] = {"kind": "approle", "approle": creds.role_name, "role_id": creds.role_id,
                      "policies": list(creds.policies), "secret_id_accessor": creds.secret_id_accessor,
                      "secret_id_file": str(output), "approle_changed": creds.changed}
        else:
            token = access.mint_token(k, roles, args.role, args.tenant, ttl=args.ttl, orphan=args.orphan)
            write_file_atomic(output, token.token + "\n")
            answer = {"kind": "token", "accessor": token.accessor, "policies": list(token.policies),
                      "ttl": token.ttl, "token_file": str(output)}
    if args.json:
        print_json(answer)
    elif args.kind == "approle":
        print(f"AppRole {answer['approle']} (role id {answer['role_id']}); secret id written to {output} "
              f"(accessor {answer['secret_id_accessor']})")
    else:
        print(f"token with policies {', '.join(answer['policies'])} written to {output} "
              f"(accessor {answer['accessor']}, ttl {answer['ttl']} s)")
    return 0


def cmd_whoami(args: argparse.Namespace) -> int:
    with open_keyops() as k:
        principal = k.principal
    answer = {"actor": principal.actor, "accessor": principal.accessor, "approle": principal.approle,
              "roles": principal.roles, "root": principal.root, "checked_by_keyops": principal.complete,
              "operations": sorted({op for g in principal.grants for op in g.operations})}
    if args.json:
        print_json(answer)
        return 0
    print(f"actor:  {principal.actor}")
    print(f"roles:  {', '.join(principal.roles) or '(none of keyops)'}")
    if not principal.complete and not principal.root:
        print("note:   the token holds policies keyops did not generate; Vault alone decides what it may do")
    return 0


def cmd_root_kms(args: argparse.Namespace) -> int:
    config = Config.load()
    hcl = access.render_root_kms_policy(config.root_transit_mount, config.root_transit_key)
    if args.json:
        print_json({access.ROOT_KMS_POLICY: hcl})
    else:
        print(hcl, end="")
    return 0
