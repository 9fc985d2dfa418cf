"""The end of a key version's life: retire (no longer usable, kept for audit), then destroy.

A version is retired or destroyed only when nothing refers to it:

* a DEK version: no process can still encrypt under it, and no secret
  record refers to it. First the version is fenced in the tenant's usage
  document (``keyops.model.usage``: no reservation of it is granted any more),
  then the leases of reservations already granted are waited out (a
  long-lived writer stops encrypting under it, and its last write lands),
  and only then are the records read and counted (their ciphertexts name
  the version). Ciphertexts handed to callers outside the store cannot be
  counted: while any were made (``external`` uses), the version is refused
  unless the operator acknowledges them (``acknowledge_external``), once
  applications have rewrapped theirs (``Keyops.rewrap``, ``keyops rewrap``);
* a KEK version: no DEK version of the tenant (in the keyring);
* a master key version: no KEK version of any tenant.

The primary of a level is never retired or destroyed (rotate first), so a
tenant always keeps a usable primary key. Destruction is irreversible and
needs ``confirm=True`` (``--yes``); a destroyed DEK or KEK leaves only a
small tombstone in the keyring. A destroyed master key version is marked
``destroyed`` in the registry (keyops never uses it again), then its HSM key
is deleted only where keyops can and may: the key must be provably this
registry's (label and CKA_ID carry the registry id; keys made before registry
ids may be another Vault's too and are left alone), and the token must let a
PIN holder delete it (master keys are made non-destroyable where the token
allows; deleting those takes the token's security officer). The result's
``detail`` says which, and what removing the key takes. For residence
``transit``, the tenant's Transit key follows: ``min_decryption_version``
rises past retired versions and destroyed versions are trimmed.

Each step is a check-and-set write followed by idempotent backend work, so
a re-run after a crash finishes what is left (``changed`` then reports it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Literal

from keyops.errors import (
    ConfirmationRequired,
    HsmTokenNotConfigured,
    InvalidInput,
    KeyInUse,
    KeyNotFound,
    KeyStateError,
    NotFound,
)
from keyops.model.keyring import LEVELS, STATES, Keyring, format_time
from keyops.model.master import MasterRegistry
from keyops.model.names import validate_tenant, validate_version
from keyops.model.usage import CLOCK_SKEW_SECONDS, seconds_until
from keyops.ops.cas import retry_on_conflict
from keyops.ops.front import MASTER_PATH, Keyops
from keyops.ops.references import count_dek_references, count_kek_references, count_master_references
from keyops.ops.rotation import PENDING, sync_transit_key

#: A lease longer than this (a garbled usage document, or a writer with an absurd deadline)
#: is not waited out: retire refuses, naming when to try again.
MAX_LEASE_WAIT_SECONDS = 600.0
_log = logging.getLogger("keyops.ops.lifecycle")

Action = Literal["retire", "destroy"]
_TARGET: dict[str, str] = {"retire": "retired", "destroy": "destroyed"}


@dataclasses.dataclass(frozen=True)
class LifecycleResult:
    """What retire/destroy did (or would do). ``references``: what still refers to the version (0 to proceed)."""

    action: str
    tenant: str | None
    level: str
    version: int
    changed: bool
    state_before: str
    state_after: str
    references: int
    dry_run: bool
    detail: str = ""


WaitCallback = Callable[[float, str], None]


@dataclasses.dataclass(frozen=True)
class _Options:
    dry_run: bool
    acknowledge_external: bool
    on_wait: WaitCallback | None


def retire(k: Keyops, tenant: str | None, level: str, version: int, *, dry_run: bool = False,
           acknowledge_external: bool = False, on_wait: WaitCallback | None = None) -> LifecycleResult:
    """Make ``version`` unusable (kept for audit) once nothing refers to it.

    ``acknowledge_external``: a DEK version that encrypted for callers
    outside keyops' store is retired anyway (their ciphertexts stop
    decrypting). ``on_wait(seconds, why)`` is told before waiting out leases.
    """
    return _change(k, "retire", tenant, level, version, _Options(dry_run, acknowledge_external, on_wait))


#: How a library caller confirms, and looks first; a face passes its own words (the CLI: ``--yes``).
CONFIRM_HINT = ("confirm=True", "dry_run=True")


def destroy(k: Keyops, tenant: str | None, level: str, version: int, *, confirm: bool,
            dry_run: bool = False, acknowledge_external: bool = False,
            on_wait: WaitCallback | None = None, confirm_hint: tuple[str, str] = CONFIRM_HINT) -> LifecycleResult:
    """Destroy ``version``'s material for good; needs ``confirm=True`` (a dry run does not).

    ``confirm_hint``: how the caller spells "confirm" and "dry run", for the refusal's message.
    """
    if not confirm and not dry_run:
        where = "the master key" if level == "master" else f"tenant {tenant!r}"
        raise ConfirmationRequired(f"destroying {level} version {version} of {where} cannot be undone; "
                                   f"confirm with {confirm_hint[0]}, or look first with {confirm_hint[1]}")
    return _change(k, "destroy", tenant, level, version, _Options(dry_run, acknowledge_external, on_wait))


def _change(k: Keyops, action: Action, tenant: str | None, level: str, version: int,
            options: _Options) -> LifecycleResult:
    dry_run = options.dry_run
    if level not in LEVELS:
        raise InvalidInput(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    version = validate_version(version)
    if level == "master":
        if tenant is not None:
            raise InvalidInput("the master key belongs to no tenant; leave out the tenant (--tenant)")
        run = _change_master
    else:
        if tenant is None:
            raise InvalidInput(f"a {level} version belongs to a tenant; name it (--tenant)")
        tenant = validate_tenant(tenant)
        run = _change_tenant_key
    if dry_run:
        return run(k, action, tenant, level, version, options)
    with k.audited(action, tenant=tenant, level=level, versions=[version]) as event:
        result = run(k, action, tenant, level, version, options)
        event.update(changed=result.changed, state=result.state_after)
    return result


# --- DEK and KEK versions -------------------------------------------------------------------


def _change_tenant_key(k: Keyops, action: Action, tenant: str | None, level: str, version: int,
                       options: _Options) -> LifecycleResult:
    assert tenant is not None
    dry_run = options.dry_run
    target = _TARGET[action]
    keyring, revision = k.read_keyring(tenant)
    before = _state(keyring, level, version)
    if _at_or_past(before, target):
        # Already there; for a transit KEK the Transit key may still lag behind (a crash after the write).
        follow = [] if dry_run else _follow_transit(k, keyring, level, action)
        return LifecycleResult(action, tenant, level, version, bool(follow), before, before, 0, dry_run,
                               detail=_done_detail(action, level, version, tenant, before, follow))
    _check_not_primary(keyring, level, version)
    waited = ""
    if level == "dek":
        waited = _stop_encryptions(k, keyring, version, action, options)
        keyring, revision = k.read_keyring(tenant)  # counted after the fence and the leases, on a fresh keyring
        _check_not_primary(keyring, level, version)
    references = _tenant_references(k, keyring, level, version)
    if references:
        raise KeyInUse(_in_use_message(action, level, version, tenant, references))
    if dry_run:
        return LifecycleResult(action, tenant, level, version, True, before, target, 0, True,
                               detail=f"would {action} {level.upper()} v{version} of tenant {tenant} "
                                      f"({before} -> {target}){waited}")
    current = [(keyring, revision)]
    records = {version: references} if level == "dek" else {}

    def attempt() -> Keyring:
        if current:
            keyring, revision = current.pop()
        else:  # lost a race: decide again on a fresh read
            keyring, revision = k.read_keyring(tenant)
            if _at_or_past(_state(keyring, level, version), target):
                return keyring
        new = end_version(keyring, level, version, action, k.clock(), records)
        k.write_keyring(tenant, new, cas=revision)
        return new

    new = retry_on_conflict(attempt, f"the keyring of tenant {tenant!r} (nothing was {target})")
    follow = _follow_transit(k, new, level, action)
    if level == "dek" and action == "destroy":
        k.update_usage(tenant, lambda u: u.forget({version}))  # the document stays bounded
    detail = f"{_TARGET[action]} {level.upper()} v{version} of tenant {tenant} ({before} -> {target}){waited}"
    if follow:
        detail += "; " + "; ".join(follow)
    return LifecycleResult(action, tenant, level, version, True, before, target, 0, False, detail=detail)


def end_version(keyring: Keyring, level: str, version: int, action: Action, now: dt.datetime,
                dek_records: Mapping[int, int]) -> Keyring:
    """The keyring with ``version`` retired or destroyed, refused while anything refers to it. No I/O.

    The rules every retire and destroy of a tenant's key obeys: never the
    primary (``KeyStateError``), never a KEK that wraps a DEK version of the
    keyring, never a DEK that a secret record uses (``dek_records``: records
    per DEK version, as counted after the fence) (``KeyInUse``).
    """
    _check_not_primary(keyring, level, version)
    references = (count_kek_references(keyring) if level == "kek" else dek_records).get(version, 0)
    if references:
        raise KeyInUse(_in_use_message(action, level, version, keyring.tenant, references))
    return keyring.set_state(level, version, _TARGET[action], now)


def _stop_encryptions(k: Keyops, keyring: Keyring, version: int, action: Action, options: _Options) -> str:
    """Make sure no process can still encrypt under DEK ``version``: fence it, then wait out its leases.

    Returns a note for the result's detail. Refuses (``KeyInUse``) a version
    that encrypted for callers outside the store unless acknowledged, and
    a lease too long to wait for: before any write when the first read shows
    it, else after the fence, which only stops new reservations of a version
    that is no longer primary (so it changes nothing a caller relies on).
    """
    tenant = keyring.tenant
    usage = k.read_usage(tenant)[0].get(version)
    legacy = keyring.dek.get(version).uses
    if (usage.external or legacy) and not options.acknowledge_external:
        raise KeyInUse(_external_message(action, version, tenant, usage.external, legacy))
    end = usage.lease_end()
    wait = lease_wait(end)
    if end is not None and wait > MAX_LEASE_WAIT_SECONDS:
        raise _lease_too_long(action, version, tenant, end, "")
    if options.dry_run:
        return f"; would first wait {wait:.0f}s for live reservations of it to end" if wait else ""
    fenced = k.update_usage(tenant, lambda u: u.close(version, k.clock()))[0].get(version)
    if (fenced.external > usage.external) and not options.acknowledge_external:  # reserved since the first look
        raise KeyInUse(_external_message(action, version, tenant, fenced.external, legacy))
    end = fenced.lease_end()
    wait = lease_wait(end)
    if end is None or not wait:  # no wait without a lease
        return ""
    if wait > MAX_LEASE_WAIT_SECONDS:
        raise _lease_too_long(action, version, tenant, end, " (no new one is granted)")
    why = f"a process may still encrypt under DEK v{version} of tenant {tenant!r} until {format_time(end)}"
    _log.info("waiting %.0fs: %s", wait, why)
    if options.on_wait is not None:
        options.on_wait(wait, why)
    time.sleep(wait)
    return f"; waited {wait:.0f}s for live reservations of it to end"


def _lease_too_long(action: str, version: int, tenant: str, end: dt.datetime, note: str) -> KeyInUse:
    return KeyInUse(f"cannot {action} DEK v{version} of tenant {tenant!r} yet: a process holds a reservation "
                    f"of it until {format_time(end)}; retry after that{note}")


def lease_wait(end: dt.datetime | None) -> float:
    if end is None:
        return 0.0
    return seconds_until(end + dt.timedelta(seconds=CLOCK_SKEW_SECONDS), dt.datetime.now(dt.UTC))


def _external_message(action: str, version: int, tenant: str, external: int, legacy: int) -> str:
    if external:
        what = (f"up to {external} encryptions under it were handed to callers outside keyops' store "
                "(keyops encrypt, Keyops.encrypt), and keyops cannot count their ciphertexts")
    else:
        what = (f"it was used up to {legacy} times before keyops counted encryptions for callers outside its "
                "store, so ciphertexts kept by applications may exist")
    return (f"cannot {action} DEK v{version} of tenant {tenant!r}: {what}; have applications rewrap theirs "
            f"(keyops rewrap --tenant {tenant}, or Keyops.rewrap), then {action} with --acknowledge-external "
            "(acknowledge_external=True)")


def _state(keyring: Keyring, level: str, version: int) -> str:
    chain = keyring.chain(level)
    if any(t.version == version for t in chain.tombstones):
        return "destroyed"
    try:
        return chain.get(version).state
    except KeyNotFound:
        raise KeyNotFound(f"tenant {keyring.tenant!r} has no {level.upper()} version {version} (its versions: "
                          f"{', '.join(str(v.version) for v in chain.versions)})") from None


def _at_or_past(state: str, target: str) -> bool:
    return STATES.index(state) >= STATES.index(target)


def _check_not_primary(keyring: Keyring, level: str, version: int) -> None:
    if keyring.chain(level).primary == version:
        raise KeyStateError(f"{level.upper()} v{version} is the primary key of tenant {keyring.tenant!r}; rotate "
                            f"first (keyops rotate --tenant {keyring.tenant} --level {level}) so that the tenant "
                            "keeps a usable primary")


def _tenant_references(k: Keyops, keyring: Keyring, level: str, version: int) -> int:
    if level == "kek":
        return count_kek_references(keyring).get(version, 0)
    return count_dek_references(k, keyring.tenant).get(version, 0)


def _in_use_message(action: str, level: str, version: int, tenant: str, references: int) -> str:
    if level == "dek":
        return (f"cannot {action} DEK v{version} of tenant {tenant!r}: {references} secret "
                f"{'records still use' if references != 1 else 'record still uses'} it; re-encrypt first "
                f"(keyops reencrypt --tenant {tenant})")
    return (f"cannot {action} KEK v{version} of tenant {tenant!r}: {references} DEK "
            f"{'versions are' if references != 1 else 'version is'} still wrapped by it; finish the KEK rotation first "
            f"(keyops rotate --tenant {tenant} --level kek)")


def _follow_transit(k: Keyops, keyring: Keyring, level: str, action: Action) -> list[str]:
    if level != "kek" or keyring.policy.kek_residence != "transit":
        return []
    return sync_transit_key(k, keyring, trim=action == "destroy")


def _done_detail(action: str, level: str, version: int, tenant: str | None, state: str,
                 follow: list[str]) -> str:
    what = f"master key v{version}" if tenant is None else f"{level.upper()} v{version} of tenant {tenant}"
    if follow:
        return f"{what} was already {state}; finished: {'; '.join(follow)}"
    return f"nothing to do: {what} is already {state}"


# --- master key versions -----------------------------------------------------------------------


def _change_master(k: Keyops, action: Action, tenant: str | None, level: str, version: int,
                   options: _Options) -> LifecycleResult:
    dry_run = options.dry_run
    target = _TARGET[action]
    def attempt() -> LifecycleResult:  # every check again on the registry as read
        found = k.read_master()
        if found is None:
            raise NotFound("no master key is registered")
        registry, revision = found
        try:
            mv = registry.get(version)
        except KeyStateError:
            raise KeyNotFound(f"master key version {version} is not registered (versions: "
                              f"{', '.join(str(v.version) for v in registry.versions)})") from None
        if mv.state == PENDING:
            raise KeyStateError(f"master key v{version} is being created by a master rotation; finish it first "
                                "(keyops rotate --level master)")
        if _at_or_past(mv.state, target):
            done, notes = ([], []) if dry_run else _follow_hsm(k, registry, version, action)
            detail = _done_detail(action, "master", version, None, mv.state, done)
            return LifecycleResult(action, None, "master", version, bool(done), mv.state, mv.state, 0, dry_run,
                                   detail="; ".join([detail, *notes]))
        if registry.primary == version:
            raise KeyStateError(f"master key v{version} is the primary; rotate it first (keyops rotate --level "
                                "master) so that KEKs keep a usable master key")
        references = count_master_references(k).get(version, 0)
        if references:
            raise KeyInUse(f"cannot {action} master key v{version}: {references} KEK "
                           f"{'versions are' if references != 1 else 'version is'} still wrapped by it; finish "
                           "the master rotation first (keyops rotate --level master)")
        if dry_run:
            return LifecycleResult(action, None, "master", version, True, mv.state, target, 0, True,
                                   detail=f"would {action} master key v{version} ({mv.label}); "
                                          f"{mv.state} -> {target}")
        if action == "destroy" and mv.owned and mv.on_hsm and k.hierarchy.roots.on_configured_token(mv):
            k.hsm.login()  # the HSM work follows the write: a wrong PIN fails before it
        changed = dataclasses.replace(mv, state=target)
        # A registry written before ids gets one with this write (see MasterRegistry.with_id).
        new = registry.with_id().replace_version(changed.without_material() if action == "destroy" else changed)
        k.store.write(MASTER_PATH, new.to_dict(), cas=revision)
        done, notes = _follow_hsm(k, new, version, action)
        detail = "; ".join([f"{target} master key v{version} ({mv.label}); {mv.state} -> {target}", *done, *notes])
        return LifecycleResult(action, None, "master", version, True, mv.state, target, 0, False, detail=detail)

    return retry_on_conflict(attempt, f"the master key registry (master key v{version} was not {target})")


def _follow_hsm(k: Keyops, registry: MasterRegistry, version: int, action: Action) -> tuple[list[str], list[str]]:
    """After the registry says destroyed: delete the HSM key where keyops can and may (idempotent).

    Returns (what was done, notes on what was left and why).
    """
    if action != "destroy":
        return [], []
    mv = registry.get(version)
    if mv.root == "passphrase":
        return [], []  # its only copy, wrapped in the entry, went with the registry write (without_material)
    if mv.root == "transit":
        return [], [f"the KMS key {mv.params.get('key')!r} at {mv.params.get('addr')} is not keyops' to delete: its "
                    "operator may remove it once nothing else uses it"]
    if not mv.owned:
        return [], [f"HSM key {mv.label!r} stays on the token: it was made before master key registries had "
                    "ids, so it may be another Vault's or namespace's key too, and keyops never deletes it. Once "
                    "no registry on this token lists it, the token's administrator may delete it with the HSM's "
                    "own tools"]
    try:
        hsm = k.hierarchy.roots.hsm_for(mv)
    except HsmTokenNotConfigured:
        return [], [f"HSM key {mv.label!r} stays on token {mv.params.get('token')!r}, which keyops is not configured "
                    "for any more (a replaced token): keyops no longer uses it; retire that token with the HSM's own "
                    "tools"]
    removal = hsm.destroy_key(mv.label, key_id=bytes.fromhex(mv.key_id or ""))
    done = [f"HSM key {mv.label!r} deleted"] if removal.deleted else []
    notes = [_not_destroyable_note(mv.label, mv.key_id or "")] if removal.kept else []
    return done, notes


def _not_destroyable_note(label: str, key_id: str) -> str:
    return (f"HSM key {label!r} (CKA_ID {key_id}) stays on the token: it was made non-destroyable "
            "(CKA_DESTROYABLE and CKA_MODIFIABLE false), so no holder of the user PIN can delete it, keyops "
            "included; keyops no longer uses it. Deleting it takes the token's security officer: a network HSM's "
            "administration tools, or for SoftHSM2 re-initialising the token (softhsm2-util --init-token, SO PIN) "
            "or deleting the key's object file from the token folder")
