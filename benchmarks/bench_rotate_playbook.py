"""ansible/rotate.yml over 1, 10, 100 and 1,000 tenants: whole-process time of ansible-playbook.

    .venv/bin/python benchmarks/bench_rotate_playbook.py                 # 1, 10, 100, 1,000 tenants
    .venv/bin/python benchmarks/bench_rotate_playbook.py --tenants 1,10 --secrets 1 --repeat 3

rotate.yml checks every tenant with ONE keyops.kms.rotate task (due_only) and
re-encrypts every tenant whose DEK rotated with ONE keyops.kms.reencrypt
task, so its time should grow far less than the number of tenants: the goals
are 100 tenants in under 3x the time of 1 (issue 4) and 1,000 within 5x
(issue 13). (One task per tenant would cost
about 0.5 s per tenant: the module's start, importing hvac and cryptography.)

What is measured, per size N (fresh tenants each time, on one stack):

* ``due``: every tenant's DEK is past due (its created_at moved 31 days back
  by an independent hvac client); one run rotates N DEKs and re-encrypts the
  N x ``--secrets`` records. Checked afterwards: every DEK is at version 2
  and every record is encrypted with it.
* ``nothing due``: the same run again; checks N tenants, changes nothing
  (changed=0 is checked).
* ``start``: ansible-playbook of a play with one debug task (the floor).

The stack is a real OpenBao (raft storage on disk) and SoftHSM2 token in a
temporary folder (``keyops.dev.stack``), stopped at the end. Wall-clock times
of the whole ansible-playbook process; the median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
HOST = "keyops-dev"
_RECAP = re.compile(rf"^{HOST}\s+:\s+ok=(\d+)\s+changed=(\d+).*failed=(\d+)", re.MULTILINE)


def playbook_env(stack: Any, collections: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "KEYOPS_", "ANSIBLE_"))}
    env.update({
        "KEYOPS_STATE_DIR": str(stack.state_dir),
        "ANSIBLE_COLLECTIONS_PATH": str(collections),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    return env


def run_playbook(playbook: Path, env: dict[str, str], vars_file: Path | None = None) -> tuple[float, int]:
    """Seconds of the whole ansible-playbook process, and the tasks it changed."""
    cmd = [str(VENV_BIN / "ansible-playbook"), "-i", str(REPO / "inventories" / "dev"), str(playbook)]
    if vars_file is not None:
        cmd += ["-e", f"@{vars_file}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    found = _RECAP.search(proc.stdout)
    if proc.returncode != 0 or found is None or found.group(3) != "0":
        sys.exit(f"{playbook.name} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    return seconds, int(found.group(2))


def make_tenants(k: Any, names: list[str], secrets_per_tenant: int) -> None:
    from keyops.model.keyring import Policy
    from keyops.ops.provision import provision_tenants

    report = provision_tenants(
        k, ((name, [(f"app/secret-{i}", os.urandom(24).hex()) for i in range(secrets_per_tenant)])
            for name in names), policy=Policy(kek_period_days=90, dek_period_days=30))
    if report.failures:
        sys.exit(f"provisioning failed: {report.failures[0]}")


def backdate_deks(client: Any, names: list[str], days: int = 31) -> None:
    stamp = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for name in names:
        path = f"tenants/{name}/keyring"
        found = client.secrets.kv.v2.read_secret_version(path=path, mount_point="keyops",
                                                         raise_on_deleted_version=True)
        doc = found["data"]["data"]
        for version in doc["dek"]["versions"]:
            if version["version"] == doc["dek"]["primary"]:
                version["created_at"] = stamp
        client.secrets.kv.v2.create_or_update_secret(path=path, secret=doc, mount_point="keyops",
                                                     cas=found["data"]["metadata"]["version"])


def check_rotated(client: Any, names: list[str], secrets_per_tenant: int) -> None:
    for name in names:
        doc = client.secrets.kv.v2.read_secret_version(path=f"tenants/{name}/keyring", mount_point="keyops",
                                                       raise_on_deleted_version=True)["data"]["data"]
        if doc["dek"]["primary"] != 2:
            sys.exit(f"tenant {name}: DEK primary is v{doc['dek']['primary']}, expected v2")
        for i in range(secrets_per_tenant):
            record = client.secrets.kv.v2.read_secret_version(
                path=f"secrets/{name}/app/secret-{i}", mount_point="keyops",
                raise_on_deleted_version=True)["data"]["data"]
            if record["dek_version"] != 2:
                sys.exit(f"tenant {name}: secret app/secret-{i} is still on DEK v{record['dek_version']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", default="1,10,100,1000",
                        help="comma-separated sizes (default 1,10,100,1000)")
    parser.add_argument("--secrets", type=int, default=2, help="secrets per tenant (default 2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size; the median is reported")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    sizes = [int(n) for n in args.tenants.split(",")]

    import hvac
    import requests

    from keyops.dev.stack import DevStack, free_port

    with tempfile.TemporaryDirectory(prefix="keyops-bench-") as tmp:
        tmpdir = Path(tmp)
        stack = DevStack(tmpdir / "stack", port=free_port(), die_with_parent=True)
        stack.up()
        try:
            # SoftHSM2 reads its configuration once per process: set it before the library opens the HSM.
            os.environ["SOFTHSM2_CONF"] = str(stack.softhsm_conf)
            from keyops.ops.front import Keyops

            k = Keyops(stack.config())
            session = requests.Session()
            session.trust_env = False
            client = hvac.Client(url=stack.addr, token=stack.env()["VAULT_TOKEN"], session=session)
            collections = tmpdir / "collections"
            subprocess.run([str(VENV_BIN / "ansible-galaxy"), "collection", "install", str(REPO), "-p",
                            str(collections)], check=True, capture_output=True, env={
                                **os.environ, "ANSIBLE_COLLECTIONS_PATH": str(collections)})
            env = playbook_env(stack, collections, tmpdir / "ansible-home")
            floor_play = tmpdir / "floor.yml"
            floor_play.write_text("- hosts: keyops\n  gather_facts: false\n  tasks:\n"
                                  "    - ansible.builtin.debug: {msg: start}\n")
            start_s = statistics.median(run_playbook(floor_play, env)[0] for _ in range(max(args.repeat, 3)))

            rows = []
            for n in sizes:
                due_times, idle_times = [], []
                for _ in range(args.repeat):
                    names = [f"b{n}-{i:03d}-{uuid.uuid4().hex[:6]}" for i in range(n)]
                    make_tenants(k, names, args.secrets)
                    backdate_deks(client, names)
                    vars_file = tmpdir / f"vars-{n}.json"
                    vars_file.write_text(json.dumps({"keyops_tenants": [
                        {"name": name, "residence": "kv", "policy": "standard", "secrets": []} for name in names]}))
                    seconds, changed = run_playbook(REPO / "ansible" / "rotate.yml", env, vars_file)
                    check_rotated(client, names, args.secrets)
                    due_times.append(seconds)
                    seconds, changed = run_playbook(REPO / "ansible" / "rotate.yml", env, vars_file)
                    if changed:
                        sys.exit(f"rotate.yml with nothing due changed {changed} tasks over {n} tenants")
                    idle_times.append(seconds)
                rows.append({"tenants": n, "secrets": n * args.secrets, "due_s": statistics.median(due_times),
                             "nothing_due_s": statistics.median(idle_times)})
            k.close()
        finally:
            stack.down()

    base_due, base_idle = rows[0]["due_s"], rows[0]["nothing_due_s"]
    print(f"machine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}; "
          f"ansible-playbook start (one debug task): {start_s:.2f} s; {args.secrets} secrets per tenant; "
          f"median of {args.repeat}")
    print()
    print(f"| tenants | secrets re-encrypted | rotate.yml, every DEK due | x {sizes[0]} tenant(s) "
          f"| rotate.yml, nothing due | x {sizes[0]} tenant(s) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['tenants']} | {row['secrets']} | {row['due_s']:.2f} s | {row['due_s'] / base_due:.2f} "
              f"| {row['nothing_due_s']:.2f} s | {row['nothing_due_s'] / base_idle:.2f} |")
    if args.json:
        print(json.dumps({"start_s": start_s, "secrets_per_tenant": args.secrets, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
