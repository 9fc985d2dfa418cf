"""Small promises of the README, the inventories and the docs, checked where a running stack is not needed."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1].parent


def test_the_readme_mints_credentials_outside_the_checkout() -> None:
    for line in (REPO / "README.md").read_text().splitlines():
        if "policy mint" in line and "--output" in line:
            words = shlex.split(line.split("#", 1)[0])
            target = words[words.index("--output") + 1]
            assert target.startswith(("~/", "/")), line  # not a file in the repository's root
    names = ["app.token", "rotation.secret-id", "deploy/app.token", ".vault-token"]
    ignored = subprocess.run(["git", "check-ignore", *names], cwd=REPO, capture_output=True, text=True, check=False)
    assert ignored.stdout.split() == names, ignored.stderr  # a credential written there anyway is never committed


def test_no_inventory_sends_audit_events_in_the_clear_to_the_tls_port() -> None:
    targets = []
    for path in REPO.glob("inventories/*/group_vars/**/*.yml"):
        data = yaml.safe_load(path.read_text()) or {}
        target = (data.get("keyops_environment") or {}).get("KEYOPS_AUDIT_SYSLOG")
        if target:
            targets.append(target)
            assert not re.fullmatch(r"(tcp|udp)://.*:6514", target), f"{path}: {target}"
    assert targets  # the staging and prod inventories name one


def test_access_doc_says_the_rotation_role_reads_every_tenant_s_plaintext() -> None:
    text = (REPO / "docs" / "access.md").read_text()
    assert "The `rotation` role can read every tenant's plaintext" in text


def test_audit_doc_says_an_unwritable_log_refuses_the_operation() -> None:
    text = " ".join((REPO / "docs" / "audit.md").read_text().split())
    assert "an operation whose event could not be recorded does not run" in text
    assert "refuses the operation with `AuditError` (exit 40) and changes nothing" in text
