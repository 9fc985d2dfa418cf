"""The encrypt/decrypt hot path against the real servers: fast, and exactly as strict as the slow path.

The hot path skips validation, keyring look-ups and the lock when a tenant's
cached state is fresh; these tests prove that what it skips is never a check
that matters: usage is never undercounted (threads, caps), a keyring change
is seen within the TTL (or at once when made in this process), and every
input gets the same answer as the fully checked path.
"""

from __future__ import annotations

import threading
import time

import pytest
from _tenants import created_tenant

from keyops import crypto
from keyops.config import Config
from keyops.errors import DecryptionError, InvalidInput, KeyopsError, KeyStateError, UsageCapReached
from keyops.model.keyring import Policy
from keyops.ops import reservations
from keyops.ops.front import Keyops, b64e

pytestmark = pytest.mark.integration

CONTEXT = b"secret:hot/path"


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Reservations of 50 uses, so that a few thousand encryptions cross many blocks."""
    monkeypatch.setattr(reservations, "FIRST_RESERVATION", 50)
    monkeypatch.setattr(reservations, "MAX_RESERVATION", 50)
    return 50


def add_dek_version(k: Keyops, tenant: str) -> int:
    """A new primary DEK written straight to the keyring (no rotation code involved)."""
    keyring, version = k.read_keyring(tenant)
    new = keyring.dek.latest_version + 1
    wrapped = k.hierarchy.kek_wrapper(keyring, keyring.kek.primary).wrap(crypto.generate_key(),
                                                                 crypto.key_context(tenant, "dek", new))
    k.write_keyring(tenant, keyring.add_version("dek", b64e(wrapped), keyring.kek.primary, k.clock()), cas=version)
    return new


def dek_version_of(ciphertext: bytes | str) -> int:
    return crypto.Ciphertext.parse(ciphertext).dek_version


def test_threads_never_undercount_uses(config: Config, small_blocks: int) -> None:
    threads, per_thread = 4, 600
    with Keyops(config) as k:
        tenant = created_tenant(k, "hot")
        results: list[list[bytes | str]] = [[] for _ in range(threads)]

        def work(i: int) -> None:
            for n in range(per_thread):
                encrypt = k.encrypt_bytes if n % 2 else k.encrypt
                results[i].append(encrypt(tenant, f"{i}:{n}".encode(), CONTEXT))

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        done = sum(len(r) for r in results)
        assert done == threads * per_thread
        usage = Keyops(config).read_usage(tenant)[0].get(1)
        # Reserved in Vault before spent: an upper bound, never less.
        assert usage.reserved >= done and usage.external == usage.reserved
        assert k.calls.snapshot()["kv.write"] >= done // small_blocks  # many blocks were crossed
        for i, cts in enumerate(results):
            for n, ct in enumerate(cts):
                assert k.decrypt(tenant, ct, CONTEXT) == f"{i}:{n}".encode()


def test_usage_cap_stops_the_hot_path(config: Config, small_blocks: int) -> None:
    cap = 2 * small_blocks + 20
    with Keyops(config) as k:
        tenant = created_tenant(k, "hot", Policy(dek_usage_cap=cap))
        done = 0
        with pytest.raises(UsageCapReached):
            for _ in range(cap + 10):
                k.encrypt_bytes(tenant, b"x", CONTEXT)
                done += 1
        assert done == cap
        with pytest.raises(UsageCapReached):  # and stays stopped, text form too
            k.encrypt(tenant, b"x", CONTEXT)
        assert k.read_usage(tenant)[0].get(1).reserved == cap
        assert k.read_keyring(tenant)[0].dek.primary_key.uses == 0  # the keyring is only read by encryptions


def test_keyring_change_elsewhere_is_seen_after_the_ttl(config: Config) -> None:
    ttl = 0.3
    with Keyops(config, keyring_ttl=ttl) as k, Keyops(config) as other:
        tenant = created_tenant(other, "hot")
        old = k.encrypt_bytes(tenant, b"old", CONTEXT)
        assert k.decrypt(tenant, old, CONTEXT) == b"old"  # both paths warm
        new_version = add_dek_version(other, tenant)
        keyring, version = other.read_keyring(tenant)
        other.write_keyring(tenant, keyring.set_state("dek", dek_version_of(old), "retired", other.clock()),
                            cas=version)
        time.sleep(ttl + 0.2)
        with pytest.raises(KeyStateError):
            k.decrypt(tenant, old, CONTEXT)
        with pytest.raises(KeyStateError):
            k.decrypt(tenant, crypto.Ciphertext.from_bytes(old).to_text(), CONTEXT)
        assert dek_version_of(k.encrypt_bytes(tenant, b"new", CONTEXT)) == new_version
        assert dek_version_of(k.encrypt(tenant, b"new", CONTEXT)) == new_version


def test_keyring_change_in_this_process_is_seen_at_once(k: Keyops) -> None:
    tenant = created_tenant(k, "hot")
    first = k.encrypt_bytes(tenant, b"a", CONTEXT)
    k.decrypt(tenant, first, CONTEXT)
    new_version = add_dek_version(k, tenant)  # written through k: its cache must follow without waiting
    assert dek_version_of(k.encrypt_bytes(tenant, b"b", CONTEXT)) == new_version
    assert dek_version_of(k.encrypt(tenant, b"b", CONTEXT)) == new_version
    assert k.decrypt(tenant, first, CONTEXT) == b"a"  # the old version is decrypt_only
    keyring, version = k.read_keyring(tenant)
    k.write_keyring(tenant, keyring.set_state("dek", dek_version_of(first), "retired", k.clock()), cas=version)
    with pytest.raises(KeyStateError):
        k.decrypt(tenant, first, CONTEXT)


def outcome(k: Keyops, tenant: object, ciphertext: object, context: object) -> object:
    try:
        return k.decrypt(tenant, ciphertext, context)  # type: ignore[arg-type]
    except (KeyopsError, TypeError) as exc:
        return type(exc)


def test_fast_path_answers_every_input_as_the_checked_path(k: Keyops, config: Config) -> None:
    tenant, other_tenant = created_tenant(k, "hot"), created_tenant(k, "hot")
    binary = k.encrypt_bytes(tenant, b"payload", CONTEXT)
    text = k.encrypt(tenant, b"payload", CONTEXT)
    foreign = k.encrypt_bytes(other_tenant, b"payload", CONTEXT)
    assert k.decrypt(tenant, binary, CONTEXT) == k.decrypt(tenant, text, CONTEXT) == b"payload"  # warm
    inputs: list[tuple[object, object, object]] = [
        (tenant, binary, CONTEXT), (tenant, text, CONTEXT), (tenant, text.encode(), CONTEXT),
        (tenant, f"  {text}\n", CONTEXT), (tenant, crypto.Ciphertext.parse(binary), CONTEXT),
        (tenant, binary, b"secret:other"), (tenant, text, "secret:other"), (tenant, binary, CONTEXT.decode()),
        (tenant, foreign, CONTEXT), (other_tenant, binary, CONTEXT), (tenant, binary[:-1], CONTEXT),
        (tenant, binary[:20], CONTEXT), (tenant, text[:-4], CONTEXT), (tenant, text.replace(":", "::", 1), CONTEXT),
        (tenant, binary, b"x" * (crypto.MAX_CONTEXT_LEN + 1)), (tenant, binary, 5), (tenant, 5, CONTEXT),
        ("Bad/Tenant", binary, CONTEXT), (["unhashable"], binary, CONTEXT),
        (tenant, b"", CONTEXT), (tenant, "", CONTEXT),
    ]
    inputs += [(tenant, bytes(b ^ 1 if i == j else b for j, b in enumerate(binary)), CONTEXT)
                for i in range(len(binary))]
    with Keyops(config, keyring_ttl=0) as checked:  # TTL 0: the fast path never applies
        for args in inputs:
            assert outcome(k, *args) == outcome(checked, *args), args
    assert outcome(k, tenant, foreign, CONTEXT) is DecryptionError
    assert outcome(k, "Bad/Tenant", binary, CONTEXT) is InvalidInput
