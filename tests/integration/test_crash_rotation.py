"""Crash tests: KEK rotations (both residences) and master rotations killed with SIGKILL at random points.

Each kill runs the real CLI in a subprocess and kills it after a delay drawn
between 0 and the measured duration of an unkilled run. The clock runs while
the run holds its lease in KV (taken before its first change, released after
its last), so the kills land in the work rather than in the interpreter's
start-up and exit, which take longer than the work and vary more on a busy
machine. Then it checks,
around keyops where it matters:

* every secret still decrypts to its latest plaintext (a fresh process);
* re-running the same command (``--expect-version`` the primary the killed
  run started from) exits 0 (finished the job) or 3 (the killed run had
  finished it), and leaves exactly one new version: nothing lost, nothing
  done twice (no extra KEK, Transit or master version, no extra HSM key).

KEK rotation of residence ``kv`` is one atomic write, so its kills land
before or after it; residence ``transit`` and the master rotation have
several steps, and the tenants have enough DEK versions (or the mount enough
tenants) that many kills land between them. Kill points: 8 (kv) + 12
(transit) KEK rotations, 20 master rotations.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import hvac.exceptions
import pytest
from _rotation_support import (
    Isolated,
    check_secrets,
    check_tenants,
    fresh,
    isolated_mount,
    kv_version,
    raw_doc,
)
from _tenants import new_tenant
from softhsm_guard import token_object_kept

from keyops.config import Config
from keyops.model.keyring import Policy
from keyops.ops.front import MASTER_PATH, Keyops, MasterRegistry, transit_key_name
from keyops.ops.rotation import LOCKS_PATH, rotate, stale_dek_versions, stale_kek_versions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEK_KILLS = {"kv": 8, "transit": 12}
MASTER_KILLS = 20
MASTER_TENANTS = 12
TRANSIT_DEK_VERSIONS = 20


@pytest.fixture
def iso(stack: Any, config: Config, vault_client: Any) -> Iterator[Isolated]:
    with isolated_mount(stack, config, vault_client) as isolated:
        yield isolated


def start_cli(env: dict[str, str], args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "keyops.cli.main", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_lease(proc: subprocess.Popen[str], leased: Callable[[int], bool]) -> float | None:
    """Poll until the run holds its lease; the time it was seen, or None when the run ended first."""
    while proc.poll() is None:
        if leased(proc.pid):
            return time.monotonic()
        time.sleep(0.002)
    return None


def timed_run(env: dict[str, str], args: list[str], leased: Callable[[int], bool]) -> tuple[int, str, float]:
    """Run to the end: (exit code, output, seconds it held its lease: the work, without start-up and exit)."""
    proc = start_cli(env, args)
    seen = wait_for_lease(proc, leased)
    work = 0.0
    if seen is not None:
        while proc.poll() is None and leased(proc.pid):
            time.sleep(0.002)
        work = time.monotonic() - seen
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out + err, work


def kill_during(env: dict[str, str], args: list[str], leased: Callable[[int], bool], delay: float) -> int | None:
    """Start the command, SIGKILL it ``delay`` seconds after it took its lease; its exit code if it ended first."""
    with token_object_kept(env):
        proc = start_cli(env, args)
        seen = wait_for_lease(proc, leased)
        if seen is not None:
            try:
                proc.wait(timeout=max(0.0, seen + delay - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.communicate()
                return None
        proc.communicate()
        return proc.returncode


def lease_of(vault_client: Any, path: str, mount: str) -> Callable[[int], bool]:
    """``leased(pid)``: the lease at ``path`` is held by process ``pid`` (not by a killed predecessor)."""

    def leased(pid: int) -> bool:
        try:
            return int(raw_doc(vault_client, path, mount).get("pid", 0)) == pid
        except hvac.exceptions.InvalidPath:
            return False

    return leased


def crash_loop(env: dict[str, str], command: Callable[[int], list[str]], leased: Callable[[int], bool],
               primary: Callable[[], int], state: Callable[[int], str], check: Callable[[int, bool], None],
               touch: Callable[[int], None], kills: int, rng: random.Random) -> collections.Counter[str]:
    """Measure an unkilled run, then ``kills`` times: kill, check, re-run, check. Returns where kills landed.

    Delays are drawn between 0 and the median duration of the unkilled runs
    so far (every re-run that did the work is one), counted from the lease:
    the median follows the machine's load without chasing a single slow run.
    """
    start = primary()
    code, out, duration = timed_run(env, command(start), leased)
    assert code == 0, out
    durations = [duration]
    check(start, True)
    landed: collections.Counter[str] = collections.Counter()
    for i in range(kills):
        start = primary()
        touch(i)  # a new latest plaintext before each kill
        code = kill_during(env, command(start), leased, rng.uniform(0.0, statistics.median(durations)))
        where = state(start) if code is None else "finished"
        landed[where] += 1
        check(start, False)  # killed anywhere: everything decrypts; if the work was done, it was done once
        code, out, rerun = timed_run(env, command(start), leased)
        if where in ("not started", "interrupted"):
            assert code == 0, (where, out)
            durations.append(rerun)
        else:
            assert code == 3 and "nothing to do" in out, (where, out)
        check(start, True)  # the re-run finished the job: exactly one new version
        assert primary() == start + 1
    return landed


def assert_tenant_done(cfg: Config, vault_client: Any, tenant: str, kek: int, mount: str,
                       released: bool = True) -> None:
    keyring = fresh(cfg).read_keyring(tenant)[0]
    assert keyring.kek.primary == kek and keyring.kek.latest_version == kek  # nothing done twice
    assert not stale_dek_versions(keyring)
    if keyring.policy.kek_residence == "transit":
        info = vault_client.secrets.transit.read_key(name=transit_key_name(tenant))["data"]
        assert int(info["latest_version"]) == keyring.kek.primary_key.transit_version == kek
        assert int(info["min_decryption_version"]) == kek
    if released:  # (a run killed after its work still holds its lease, until a re-run takes it over)
        assert kv_version(vault_client, f"{LOCKS_PATH}/tenants/{tenant}", mount) == 0


@pytest.mark.parametrize("residence", ["kv", "transit"])
def test_kek_rotation_killed_at_random_points(iso: Isolated, vault_client: Any, residence: str) -> None:
    rng = random.Random(f"kek-{residence}-{os.getpid()}")
    cfg, mount = iso.config, iso.mount
    tenant = new_tenant(f"crash-{residence}")
    values: dict[str, bytes] = {}
    with Keyops(cfg) as k:
        k.create_tenant(tenant, Policy(kek_residence=residence))
        for _ in range(TRANSIT_DEK_VERSIONS - 1 if residence == "transit" else 2):
            rotate(k, tenant, "dek")
        for i in range(3):
            values[f"s{i}"] = f"{tenant} {i} v0".encode()
            k.put_secret(tenant, f"s{i}", values[f"s{i}"])

    def primary() -> int:
        return fresh(cfg).read_keyring(tenant)[0].kek.primary

    def state(start: int) -> str:
        keyring = fresh(cfg).read_keyring(tenant)[0]
        if keyring.kek.primary == start:
            return "not started"
        if stale_dek_versions(keyring):
            return "interrupted"
        if residence == "transit":
            info = vault_client.secrets.transit.read_key(name=transit_key_name(tenant))["data"]
            if int(info["min_decryption_version"]) < keyring.kek.primary_key.transit_version:
                return "interrupted"
        return "complete"

    def check(start: int, rerun: bool) -> None:
        """Secrets decrypt; once the rotation from ``start`` is complete, it made exactly one version."""
        check_secrets(cfg, tenant, values)
        done = state(start) == "complete"
        assert done or not rerun
        if done:
            assert_tenant_done(cfg, vault_client, tenant, start + 1, mount, released=rerun)

    def touch(i: int) -> None:
        name = f"s{i % 3}"
        values[name] = f"{tenant} {name} v{i + 1}".encode()
        with fresh(cfg) as writer:
            writer.put_secret(tenant, name, values[name])

    lease = f"{LOCKS_PATH}/tenants/{tenant}"
    landed = crash_loop(iso.env, lambda v: ["--detailed-exitcode", "rotate", "--tenant", tenant, "--level", "kek",
                                            "--expect-version", str(v)], lease_of(vault_client, lease, mount),
                        primary, state, check, touch, KEK_KILLS[residence], rng)
    print(f"KEK {residence}: kills landed {dict(landed)}")
    assert_tenant_done(cfg, vault_client, tenant, primary(), mount)
    assert sum(landed.values()) == KEK_KILLS[residence]


def test_master_rotation_killed_at_random_points(iso: Isolated, vault_client: Any) -> None:
    rng = random.Random(f"master-{os.getpid()}")
    cfg, mount = iso.config, iso.mount
    values: dict[str, dict[str, bytes]] = {}
    with Keyops(cfg) as k:
        for i in range(MASTER_TENANTS):
            residence = "transit" if i % 3 == 0 else "kv"
            tenant = new_tenant(f"mcrash{i}-{residence}")
            k.create_tenant(tenant, Policy(kek_residence=residence))
            rotate(k, tenant, "kek")  # two KEK versions each: more to re-wrap per keyring
            values[tenant] = {"s": f"{tenant} v0".encode()}
            k.put_secret(tenant, "s", values[tenant]["s"])
        hsm = k.hsm

        def registry() -> MasterRegistry:
            return MasterRegistry.from_dict(raw_doc(vault_client, MASTER_PATH, mount))

        def primary() -> int:
            return registry().primary

        def state(start: int) -> str:
            reg = registry()
            if reg.primary == start and max(v.version for v in reg.versions) == start:
                return "not started"
            if reg.primary == start:
                return "interrupted"  # claimed (pending), maybe with its HSM key
            keyrings = [fresh(cfg).read_keyring(t)[0] for t in values]
            return "interrupted" if any(stale_kek_versions(kr, reg.primary) for kr in keyrings) else "complete"

        def check(start: int, rerun: bool) -> None:
            """Secrets decrypt; once the rotation from ``start`` is complete, it made exactly one version."""
            check_tenants(cfg, values)
            done = state(start) == "complete"
            assert done or not rerun
            if done:
                reg = registry()
                assert reg.primary == start + 1
                assert max(v.version for v in reg.versions) == start + 1  # nothing claimed twice
                assert {v.state for v in reg.versions if v.version <= start} <= {"decrypt_only"}
                hsm.close()  # see keys another process created
                assert hsm.has_key(k.master_label(start + 1)) and not hsm.has_key(k.master_label(start + 2))
                if rerun:
                    assert kv_version(vault_client, f"{LOCKS_PATH}/master", mount) == 0

        def touch(i: int) -> None:
            tenant = list(values)[i % len(values)]
            values[tenant]["s"] = f"{tenant} v{i + 1}".encode()
            with fresh(cfg) as writer:
                writer.put_secret(tenant, "s", values[tenant]["s"])

        landed = crash_loop(iso.env, lambda v: ["--detailed-exitcode", "rotate", "--level", "master",
                                                "--expect-version", str(v)],
                            lease_of(vault_client, f"{LOCKS_PATH}/master", mount),
                            primary, state, check, touch, MASTER_KILLS, rng)
    print(f"master: kills landed {dict(landed)}")
    assert sum(landed.values()) == MASTER_KILLS
