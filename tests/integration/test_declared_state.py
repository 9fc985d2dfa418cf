"""Declared state end to end: keyops plan/apply, drift, saved plans, retention and the docs/ci pipelines.

One OpenBao and SoftHSM2 of this module's own (started here, not the
session's), so that its plans see only the tenants these tests made and the
counts are exact. Everything goes through the ``keyops`` command as CI runs
it; results are checked with hvac and the CLI's own reads.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keyops.dev.stack import DevStack, free_port
from tests.integration.test_login import AUDIENCE, ISSUER, sign_jwt

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CI = REPO / "docs" / "ci"
KV = "keyops"


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    devstack = DevStack(tmp_path_factory.mktemp("keyops-declared"), port=free_port(), die_with_parent=True)
    try:
        devstack.up()
        yield devstack
    finally:
        devstack.down()


@pytest.fixture(scope="module")
def env(own_stack: DevStack) -> dict[str, str]:
    out = {**os.environ, **own_stack.env(), "PYTHONPATH": str(REPO), "NO_COLOR": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return out


@pytest.fixture(scope="module")
def vault(own_stack: DevStack) -> Any:
    import hvac
    import requests

    session = requests.Session()
    session.trust_env = False
    return hvac.Client(url=own_stack.addr, token=own_stack.env()["VAULT_TOKEN"], session=session)


def keyops(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "keyops.cli.main", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=300, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def keyring(vault: Any, tenant: str) -> tuple[dict[str, Any], int]:
    found = vault.secrets.kv.v2.read_secret_version(path=f"tenants/{tenant}/keyring", mount_point=KV,
                                                    raise_on_deleted_version=True)["data"]
    return found["data"], found["metadata"]["version"]


def backdate_primary_dek(vault: Any, tenant: str, days: float) -> None:
    doc, version = keyring(vault, tenant)
    stamp = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for kv in doc["dek"]["versions"]:
        if kv["version"] == doc["dek"]["primary"]:
            kv["created_at"] = stamp
    vault.secrets.kv.v2.create_or_update_secret(path=f"tenants/{tenant}/keyring", secret=doc, cas=version,
                                                mount_point=KV)


def usable(vault: Any, tenant: str, level: str) -> list[int]:
    doc = keyring(vault, tenant)[0]
    return sorted(v["version"] for v in doc[level]["versions"] if v["state"] in ("active", "decrypt_only"))


def declaration(tmp: Path, names: list[str], **extra: str) -> Path:
    a, b, c = names
    path = tmp / "keys.yml"
    path.write_text(textwrap.dedent(f"""\
        policies:
          standard: {{kek_period_days: 90, dek_period_days: 30, keep_versions: 2}}
        tenants:
          - name: {a}
            residence: kv
            policy: {{kek_period_days: 90, dek_period_days: 30, dek_usage_cap: 1000000, keep_versions: 2}}
            secrets:
              - {{name: db/password, value_env: SEED_DB}}
          - name: {b}
            residence: transit
            policy: standard
          - name: {c}
            policy: standard
        """) + "".join(extra.values()))
    return path


# --- the whole loop -------------------------------------------------------------------------------------


def test_the_whole_loop(env: dict[str, str], vault: Any, tmp_path: Path) -> None:
    names = [f"loop{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    keys = declaration(tmp_path, names)
    run_env = {**env, "SEED_DB": "seed-" + uuid.uuid4().hex}

    first = keyops(run_env, "plan", "-f", str(keys), "--detailed-exitcode")
    assert first.returncode == 2, first.stderr
    for name in names:
        assert re.search(rf"create_tenant +{name} +create tenant {name}: KEK v1", first.stdout), first.stdout
    assert f"create_secret  {names[0]}/db/password" in first.stdout
    assert "create_master" in first.stdout and "Plan: 5 changes." in first.stdout
    assert run_env["SEED_DB"] not in first.stdout + first.stderr

    applied = keyops(run_env, "apply", "-f", str(keys))
    assert applied.returncode == 0, applied.stderr
    assert keyops(run_env, "secret", "get", names[0], "db/password").stdout == run_env["SEED_DB"]
    assert keyops(run_env, "plan", "-f", str(keys), "--detailed-exitcode").returncode == 0

    # An application changes the seeded password: create-only seeds leave it alone.
    assert keyops(run_env, "secret", "put", names[0], "db/password", stdin="rotated-by-app").returncode == 0
    for i in range(3):
        assert keyops(run_env, "secret", "put", names[0], f"app/{i}", stdin=f"value-{i}").returncode == 0
    again = keyops(run_env, "plan", "-f", str(keys), "--detailed-exitcode")
    assert again.returncode == 0, again.stdout
    assert keyops(run_env, "secret", "get", names[0], "db/password").stdout == "rotated-by-app"

    # A DEK aged past its period: the plan shows exactly that rotation, its reason and its secret count.
    backdate_primary_dek(vault, names[0], 31)
    due = keyops(run_env, "plan", "-f", str(keys), "--detailed-exitcode", "--json")
    assert due.returncode == 2
    steps = json.loads(due.stdout)["steps"]
    assert [(s["action"], s["target"]) for s in steps] == [("rotate", names[0]), ("reencrypt", names[0])]
    assert steps[0]["level"] == "dek" and (steps[0]["version"], steps[0]["new_version"]) == (1, 2)
    assert steps[0]["reason"].startswith("due by age: 31.0 days old, period 30 days")
    assert steps[0]["count"] == 4 and steps[0]["summary"].startswith(f"DEK {names[0]} v1->v2: 4 secrets to re-encrypt")
    assert steps[1]["count"] == 4

    # A tenant made by hand is drift: shown, not a change, removed only with --prune.
    stray = f"stray-{uuid.uuid4().hex[:6]}"
    assert keyops(run_env, "tenant", "create", stray).returncode == 0
    drift = keyops(run_env, "plan", "-f", str(keys))
    assert re.search(rf"drift +{stray} +tenant {stray} exists in Vault but is not declared", drift.stdout)
    assert "apply --prune deletes it" in drift.stdout
    done = keyops(run_env, "apply", "-f", str(keys))
    assert done.returncode == 0, done.stderr
    assert usable(vault, names[0], "dek") == [1, 2] and keyring(vault, stray)[1] >= 1
    after = keyops(run_env, "plan", "-f", str(keys), "--detailed-exitcode")
    assert after.returncode == 0, after.stdout  # drift alone is no change
    assert stray in after.stdout

    # A declaration with an error names the file, the line and the field; nothing is applied.
    bad = tmp_path / "bad.yml"
    bad.write_text(keys.read_text().replace("dek_usage_cap: 1000000, keep_versions: 2",
                                            "dek_usage_cap: 1000000, keep_versions: 0")
                   + f"  - name: {names[2]}x\n    residence: hsm\n")
    before = {n: keyring(vault, n)[1] for n in names}
    failed = keyops(run_env, "apply", "-f", str(bad))
    assert failed.returncode == 2
    assert f"{bad}:6: tenants[0].policy.keep_versions: must be a whole number between 1 and 32" in failed.stderr
    assert f"{bad}:15: tenants[3].residence: must be one of kv, transit, not 'hsm'" in failed.stderr, failed.stderr
    assert keyops(run_env, "plan", "-f", str(bad), "--detailed-exitcode").returncode == 1
    assert {n: keyring(vault, n)[1] for n in names} == before


def test_a_saved_plan_is_refused_once_the_state_moved(env: dict[str, str], vault: Any, tmp_path: Path) -> None:
    names = [f"saved{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    keys = declaration(tmp_path, names)
    run_env = {**env, "SEED_DB": "s-" + uuid.uuid4().hex}
    assert keyops(run_env, "apply", "-f", str(keys)).returncode == 0
    backdate_primary_dek(vault, names[1], 40)
    plan = tmp_path / "plan.json"
    assert keyops(run_env, "plan", "-f", str(keys), "--out", str(plan), "--detailed-exitcode").returncode == 2
    assert run_env["SEED_DB"] not in plan.read_text()
    assert keyops(run_env, "rotate", "--tenant", names[2], "--level", "dek").returncode == 0  # someone else acts
    refused = keyops(run_env, "apply", str(plan))
    assert refused.returncode == 7 and f"keyring of {names[2]} KV version" in refused.stderr, refused.stderr
    assert usable(vault, names[1], "dek") == [1]  # nothing applied
    assert keyops(run_env, "plan", "-f", str(keys), "--out", str(plan)).returncode == 0
    assert keyops(run_env, "apply", str(plan)).returncode == 0
    assert usable(vault, names[1], "dek") == [1, 2]


# --- retention ------------------------------------------------------------------------------------------


def test_keep_2_leaves_exactly_2_usable_and_never_retires_what_is_referred_to(
        env: dict[str, str], vault: Any, tmp_path: Path) -> None:
    names = [f"keep{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    keys = declaration(tmp_path, names)
    run_env = {**env, "SEED_DB": "k-" + uuid.uuid4().hex}
    tenant = names[0]
    assert keyops(run_env, "apply", "-f", str(keys)).returncode == 0
    for i in range(3):
        keyops(run_env, "secret", "put", tenant, f"r/{i}", stdin=f"v{i}")
    for level in ("dek", "dek", "kek", "kek"):
        assert keyops(run_env, "rotate", "--tenant", tenant, "--level", level).returncode == 0
    assert usable(vault, tenant, "dek") == [1, 2, 3] and usable(vault, tenant, "kek") == [1, 2, 3]

    # DEK v1 is beyond "keep 2" but 4 records still use it: it stays; KEK v1 wraps no DEK any more: retired.
    early = keyops(run_env, "retention", "--json")
    assert early.returncode == 0, early.stderr
    report = json.loads(early.stdout)
    assert [(r["level"], r["version"]) for r in report["results"] if r["tenant"] == tenant] == [("kek", 1)]
    assert any(f"DEK {tenant} v1 is beyond keep_versions 2 but stays: 4 secrets" in n for n in report["notes"])
    assert usable(vault, tenant, "dek") == [1, 2, 3] and usable(vault, tenant, "kek") == [2, 3]

    # After the re-encryption, the next scheduled run retires DEK v1: exactly 2 usable, everything decrypts.
    assert keyops(run_env, "reencrypt", "--tenant", tenant).returncode == 0
    assert keyops(run_env, "retention").returncode == 0
    assert usable(vault, tenant, "dek") == [2, 3] and usable(vault, tenant, "kek") == [2, 3]
    for i in range(3):
        assert keyops(run_env, "secret", "get", tenant, f"r/{i}").stdout == f"v{i}"
    assert keyops(run_env, "--detailed-exitcode", "retention").returncode == 3
    assert keyops(run_env, "plan", "-f", str(keys), "--detailed-exitcode").returncode == 0


# --- the CI pipelines' commands, with a JWT login ---------------------------------------------------------


def pipeline_stages() -> dict[str, str]:
    """Trigger -> the keyops-ci.sh stage its job runs, read from both pipeline files."""
    gh = yaml.safe_load((CI / "github-actions.yml").read_text())
    gl = yaml.safe_load((CI / "gitlab-ci.yml").read_text())
    triggers = gh.get("on", gh.get(True))
    assert {"pull_request", "push", "schedule"} <= set(triggers)
    found: dict[str, str] = {}
    for job in gh["jobs"].values():
        runs = [s["run"] for s in job["steps"] if "keyops-ci.sh" in s.get("run", "")]
        assert len(runs) == 1 and job["permissions" if "permissions" in job else "runs-on"]
        found["github:" + job["if"]] = runs[0].split()[-1]
    for name, job in gl.items():
        if name.startswith("keyops-"):
            assert job["extends"] == ".keyops" and "KEYOPS_JWT" in gl[".keyops"]["id_tokens"]
            found["gitlab:" + job["rules"][0]["if"]] = job["script"][0].split()[-1]
    assert sorted(found.values()) == ["apply", "apply", "plan", "plan", "scheduled", "scheduled"], found
    assert gh["permissions"]["id-token"] == "write"
    return found


@pytest.fixture(scope="module")
def jwt_roles(vault: Any, own_stack: DevStack, env: dict[str, str]) -> tuple[rsa.RSAPrivateKey, str]:
    """OpenBao's JWT auth with a key made here, and the pipelines' roles bound to keyops' generated policies."""
    assert keyops(env, "policy", "apply").returncode == 0
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    mount = "jwt-ci"
    vault.sys.enable_auth_method("jwt", path=mount)
    vault.auth.jwt.configure(jwt_validation_pubkeys=[public], bound_issuer=ISSUER, path=mount)
    for role, policy in (("keyops-plan", "keyops-rotation"), ("keyops-apply", "keyops-security-admin"),
                         ("keyops-rotation", "keyops-rotation")):
        vault.auth.jwt.create_role(role, user_claim="sub", allowed_redirect_uris=[], role_type="jwt",
                                   bound_audiences=[AUDIENCE], bound_claims={"project": "keyops"},
                                   token_policies=[policy], token_ttl="10m", path=mount)
    return key, mount


def ci_script(env: dict[str, str], stage: str, role: str, key: rsa.RSAPrivateKey, mount: str,
              work: Path) -> subprocess.CompletedProcess[str]:
    home = work / f"home-{stage}"
    home.mkdir(exist_ok=True)
    jwt = sign_jwt(key)
    token_file = work / f"oidc-{stage}"
    token_file.write_text(jwt)
    token_file.chmod(0o600)
    ci_env = {k: v for k, v in env.items() if k not in ("VAULT_TOKEN", "BAO_TOKEN", "KEYOPS_VAULT_TOKEN_FILE")}
    ci_env.update(HOME=str(home), KEYOPS_JWT_ROLE=role, KEYOPS_JWT_FILE=str(token_file), KEYOPS_JWT_MOUNT=mount,
                  KEYOPS_CI_OUT=str(work / "out"), KEYOPS_DECLARATION=str(work / "keys.yml"))
    proc = subprocess.run(["bash", str(CI / "keyops-ci.sh"), stage], env=ci_env, cwd=work, capture_output=True,
                          text=True, timeout=600, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert jwt not in proc.stdout + proc.stderr
    return proc


def test_the_ci_pipelines_commands_run_green_with_a_jwt_login(
        env: dict[str, str], vault: Any, tmp_path: Path, jwt_roles: tuple[rsa.RSAPrivateKey, str]) -> None:
    stages = pipeline_stages()
    key, mount = jwt_roles
    names = [f"ci{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    declaration(tmp_path, names)
    base = {**env, "SEED_DB": "ci-" + uuid.uuid4().hex}
    roles = {"plan": "keyops-plan", "apply": "keyops-apply", "scheduled": "keyops-rotation"}
    # A pull request: the plan, and its summary for the job page.
    plan = ci_script(base, "plan", roles["plan"], key, mount, tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert f"create_tenant  {names[0]}" in plan.stdout
    assert "### keyops plan" in (tmp_path / "out" / "summary.md").read_text()
    # The merge to main: plan, then that saved plan applied.
    apply = ci_script(base, "apply", roles["apply"], key, mount, tmp_path)
    assert apply.returncode == 0, apply.stderr
    assert all(keyring(vault, n)[1] >= 1 for n in names)
    # The schedule: a DEK due, rotated and its secrets re-encrypted in the same run; retention after it.
    for i in range(2):
        keyops(base, "secret", "put", names[2], f"s/{i}", stdin=f"x{i}")
    backdate_primary_dek(vault, names[2], 45)
    scheduled = ci_script(base, "scheduled", roles["scheduled"], key, mount, tmp_path)
    assert scheduled.returncode == 0, scheduled.stderr
    assert usable(vault, names[2], "dek") == [1, 2]
    assert "2 of 2" in scheduled.stdout or "re-encrypted 2" in scheduled.stdout, scheduled.stdout
    assert keyops(base, "plan", "-f", str(tmp_path / "keys.yml"), "--detailed-exitcode").returncode == 0
    assert set(stages.values()) == {"plan", "apply", "scheduled"}
