"""The hierarchy: which wrapper protects which level, and the caches of unwrapped keys.

    master key (its root: HSM, KMS or passphrase)  --wraps-->  KEK  --wraps-->  DEK  --encrypts-->  data
                                                               |
                     residence kv: an AES key in memory (AeadWrapper), itself wrapped by the master key
                     residence transit: the tenant's Transit key (TransitWrapper), with an escrow copy in KV

Which root wraps a given master version is ``keyops.roots``' business: each
version records its own.

Nothing else knows which backend sits at which level. KEKs and DEKs are
cached apart, each with its own bound, so that a process working through
many tenants does not evict the KEKs it still needs with DEKs (provisioning
1,000 tenants costs 1,000 KEK unwraps, not twice that). No raw key bytes
leave this module: callers get wrappers (``kek_wrapper``) and AEAD keys
(``dek``, ``kek_aead``).
"""

from __future__ import annotations

import base64
import collections
import threading
import time
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from keyops import crypto
from keyops.errors import DecryptionError, KeyopsError, KeyStateError, NotFound
from keyops.model.keyring import Escrow, Keyring
from keyops.model.master import MasterRegistry
from keyops.model.paths import transit_key_name
from keyops.roots import Roots
from keyops.wrappers import AeadWrapper, KeyWrapper, TransitWrapper

if TYPE_CHECKING:  # pragma: no cover
    from keyops.ops.front import Keyops

_TRANSIT_PROBE_CONTEXT = b"keyops-transit-probe"


class LruCache:
    """A bounded mapping, least recently used out first; safe between threads."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def discard_tenant(self, tenant: str) -> None:
        with self._lock:
            for key in [k for k in self._data if k[0] == tenant]:
                del self._data[key]

    def __len__(self) -> int:
        return len(self._data)


class Hierarchy:
    """The key hierarchy of one ``Keyops`` front: wrappers per level and the unwrapped-key caches."""

    def __init__(self, k: Keyops, cache_size: int) -> None:
        self._k = k
        self._keks = LruCache(cache_size)  # (tenant, version, wrapped) -> KEK bytes, never handed out
        self._deks = LruCache(cache_size)  # (tenant, version, wrapped) -> crypto.AeadKey
        self._master_seen: tuple[MasterRegistry, float] | None = None
        self.roots = Roots(k)

    @property
    def cache_size(self) -> int:
        return self._deks.maxsize

    def forget_tenant(self, tenant: str) -> None:
        self._keks.discard_tenant(tenant)
        self._deks.discard_tenant(tenant)

    def cached(self) -> dict[str, int]:
        """How many unwrapped keys are cached, per level (counts only)."""
        return {"keks": len(self._keks), "deks": len(self._deks)}

    # --- master key ------------------------------------------------------------------------

    def saw_master(self, registry: MasterRegistry) -> None:
        """The registry as just read or written: named versions may be used from it for a keyring TTL."""
        self._master_seen = (registry, time.monotonic())

    @property
    def seen_master(self) -> MasterRegistry | None:
        return self._master_seen[0] if self._master_seen is not None else None

    def master_wrapper(self, version: int | None = None) -> tuple[int, KeyWrapper]:
        """The master key ``version`` (default: the primary, always read fresh) as a wrapper.

        A named version's label and key id never change, so unwrapping may use
        the registry read in the last ``keyring_ttl`` seconds: a process
        unwrapping the KEKs of many tenants reads it once, not once per tenant.
        """
        k = self._k
        seen = self._master_seen
        if version is not None and seen is not None and time.monotonic() - seen[1] < k.keyring_ttl:
            for mv in seen[0].versions:
                if mv.version == version and mv.state in ("active", "decrypt_only"):
                    k.authorize("master.read")
                    return version, self.roots.wrapper(seen[0], mv)
        found = k.read_master()
        if found is None:
            raise NotFound("no master key is registered; run 'keyops dev up' or the master_key module first")
        registry = found[0]
        version = registry.primary if version is None else version
        mv = registry.get(version)
        if mv.state not in ("active", "decrypt_only"):
            raise KeyStateError(f"master key version {version} is {mv.state}")
        return version, self.roots.wrapper(registry, mv)

    # --- KEKs -----------------------------------------------------------------------------

    def _kek(self, keyring: Keyring, kek_version: int) -> bytes:
        """The KEK's bytes, unwrapped by the master key (an HSM call unless cached). Stays in this module."""
        kv = keyring.kek.get(kek_version)
        cache_key = (keyring.tenant, kek_version, kv.wrapped)
        cached = self._keks.get(cache_key)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        with self._k.audited("kek.unwrap", tenant=keyring.tenant, level="kek", versions=[kek_version]):
            _, master = self.master_wrapper(kv.parent_version)
            kek = master.unwrap(crypto.b64d(kv.wrapped), crypto.key_context(keyring.tenant, "kek", kek_version))
        self._keks.put(cache_key, kek)
        return kek

    def escrow_copy(self, keyring: Keyring, kek_version: int, escrow: KeyWrapper, key_name: str) -> Escrow:
        """The KEK version's break-glass copy under the recovery public key ``escrow`` (named ``key_name``)."""
        context = crypto.key_context(keyring.tenant, "kek", kek_version)
        return Escrow(key_name, crypto.b64e(escrow.wrap(self._kek(keyring, kek_version), context)))

    def recover_kek(self, keyring: Keyring, kek_version: int, recovery: KeyWrapper, master: KeyWrapper) -> str:
        """The KEK version opened from its escrow copy, checked, and wrapped by ``master`` (base64).

        The public key can make an escrow copy of any key, so a copy is only
        trusted once the KEK it holds opens what the KEK protects: a DEK
        wrapped by it (residence ``kv``), or a probe of its Transit version
        (residence ``transit``). A copy that cannot be checked (a KEK that
        wraps nothing and lost its Transit key) is refused.
        """
        kv = keyring.kek.get(kek_version)
        if kv.escrow is None:
            raise KeyStateError(f"KEK v{kek_version} of tenant {keyring.tenant!r} has no escrow copy")
        context = crypto.key_context(keyring.tenant, "kek", kek_version)
        try:
            kek = recovery.unwrap(crypto.b64d(kv.escrow.wrapped), context)
        except DecryptionError:
            raise KeyStateError(f"the escrow copy of KEK v{kek_version} of tenant {keyring.tenant!r} does not open "
                                "with this private key (another key, or a copy moved from elsewhere)") from None
        self._check_recovered(keyring, kek_version, kek)
        self._keks.put((keyring.tenant, kek_version, kv.wrapped), kek)
        return crypto.b64e(master.wrap(kek, context))

    def _check_recovered(self, keyring: Keyring, kek_version: int, kek: bytes) -> None:
        what = f"the KEK v{kek_version} of tenant {keyring.tenant!r} opened from its escrow copy"
        if keyring.policy.kek_residence == "transit":
            name = transit_key_name(keyring.tenant)
            tv = keyring.kek.get(kek_version).transit_version or kek_version
            if self._k.store.transit_read_key(name) is not None:
                self._check_transit_version(name, tv, kek)
                return
        deks = [d for d in keyring.dek.versions if d.parent_version == kek_version]
        if keyring.policy.kek_residence == "kv" and deks:
            d = deks[0]
            try:
                AeadWrapper(kek).unwrap(crypto.b64d(d.wrapped), crypto.key_context(keyring.tenant, "dek", d.version))
            except DecryptionError:
                raise KeyStateError(f"{what} does not open DEK v{d.version} that it wraps: the copy is not "
                                    "this KEK's; the keyring was left as it was") from None
            return
        if keyring.policy.kek_residence == "kv" and not deks:
            return  # wraps nothing: nothing it could open wrongly
        raise KeyStateError(f"{what} cannot be checked: the Transit key {transit_key_name(keyring.tenant)!r} is "
                            "missing; restore it, then recover again")

    def kek_aead(self, keyring: Keyring, kek_version: int) -> crypto.AeadKey:
        """The KEK as an AEAD key: what Transit's copy of an imported KEK computes (migrating vault:v texts)."""
        return crypto.AeadKey(self._kek(keyring, kek_version))

    def kek_wrapper(self, keyring: Keyring, kek_version: int) -> KeyWrapper:
        """What wraps the tenant's DEKs at ``kek_version``: its Transit key, or the KEK in memory."""
        kv = keyring.kek.get(kek_version)
        if keyring.policy.kek_residence == "transit":
            return TransitWrapper(self._k.store, transit_key_name(keyring.tenant), kv.transit_version or kek_version)
        return AeadWrapper(self._kek(keyring, kek_version))

    def ensure_transit_kek(self, keyring: Keyring, kek_version: int) -> None:
        """Import the KEK into the tenant's Transit key unless it is there already.

        An existing version is checked to hold our KEK (Transit encrypts a
        probe, we decrypt it locally), so a crash between import and keyring
        write is recovered and a foreign key of the same name is refused.
        """
        store = self._k.store
        name = transit_key_name(keyring.tenant)
        kv = keyring.kek.get(kek_version)
        tv = kv.transit_version or kek_version
        kek = self._kek(keyring, kek_version)
        info = store.transit_read_key(name)
        latest = int(info["latest_version"]) if info else 0
        if latest >= tv:
            self._check_transit_version(name, tv, kek)
            return
        if latest != tv - 1:
            raise KeyStateError(f"Transit key {name!r} is at version {latest}, but KEK version {kek_version} "
                                f"expects Transit version {tv}; inspect the key before continuing")
        if info is not None and not info.get("imported_key", True):
            raise KeyStateError(f"Transit key {name!r} exists but was not imported by keyops; remove it or "
                                "rename the tenant's Transit key")
        store.transit_import(name, _byok_ciphertext(store.transit_wrapping_key(), kek), new_version=latest > 0)
        self._check_transit_version(name, tv, kek)

    def _check_transit_version(self, name: str, transit_version: int, kek: bytes) -> None:
        ct = self._k.store.transit_encrypt(name, b"keyops probe", _TRANSIT_PROBE_CONTEXT, key_version=transit_version)
        try:
            body = base64.b64decode(ct.split(":", 2)[2])
            crypto.AeadKey(kek).open(body, _TRANSIT_PROBE_CONTEXT)
        except (DecryptionError, ValueError, IndexError) as exc:
            raise KeyStateError(f"Transit key {name!r} version {transit_version} does not hold this tenant's "
                                "KEK; it was made by something else") from exc

    # --- DEKs -----------------------------------------------------------------------------

    def dek(self, tenant: str, version: int) -> crypto.AeadKey:
        """The unwrapped DEK ``version``: from the cache, else unwrapped through its KEK."""
        k = self._k
        keyring = k.cached_keyring(tenant)
        try:
            kv = keyring.dek.get(version)
        except NotFound:
            keyring = k.read_keyring(tenant)[0]
            kv = keyring.dek.get(version)
        if not kv.usable_for_decrypt:
            raise KeyStateError(f"DEK version {version} of tenant {tenant!r} is {kv.state}; "
                                "it no longer decrypts")
        key = self._deks.get((tenant, version, kv.wrapped))
        if key is None:  # a cache miss only: never one event per encryption
            try:
                key = self._unwrap_dek(keyring, version)
            except KeyopsError:
                # The cached keyring may be older than a KEK rotation of another
                # process, which re-wrapped every DEK (and may have raised Transit's
                # min_decryption_version): re-read once before failing.
                fresh = k.read_keyring(tenant)[0]
                if fresh.dek.get(version).wrapped == kv.wrapped:
                    raise
                return self.dek(tenant, version)
        return key  # type: ignore[no-any-return]

    def _unwrap_dek(self, keyring: Keyring, version: int) -> crypto.AeadKey:
        kv = keyring.dek.get(version)
        with self._k.audited("dek.unwrap", tenant=keyring.tenant, level="dek", versions=[version]):
            wrapper = self.kek_wrapper(keyring, kv.parent_version)
            raw = wrapper.unwrap(crypto.b64d(kv.wrapped), crypto.key_context(keyring.tenant, "dek", version))
        key = crypto.AeadKey(raw)
        self._deks.put((keyring.tenant, version, kv.wrapped), key)
        return key


def _byok_ciphertext(wrapping_key_pem: str, key: bytes) -> str:
    """Transit's BYOK format: RSA-OAEP(SHA-256) of an ephemeral AES-256 key, then AES-KWP of ``key``."""
    public = serialization.load_pem_public_key(wrapping_key_pem.encode("ascii"))
    if not isinstance(public, rsa.RSAPublicKey):
        raise KeyStateError("Transit's wrapping key is not an RSA key")
    ephemeral = crypto.generate_key()
    wrapped_ephemeral = public.encrypt(
        ephemeral, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    return crypto.b64e(wrapped_ephemeral + aes_key_wrap_with_padding(ephemeral, key))
