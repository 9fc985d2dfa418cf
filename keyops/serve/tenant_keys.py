"""One tenant's keys for a long-lived server: encrypt, decrypt, public key ids and a health probe.

A *key id* names one DEK version of one tenant in public, as Kubernetes'
``key_id`` does: ``keyops:<tenant>:dek:v<version>:<uid>``. The uid is the
version's random ``uid`` (``keyops.model.keyring.KeyVersion``), so an id is
never reused, not even by a tenant deleted and made again; versions made
before uids existed get a digest of their tenant's and their own creation
times instead. No id holds or is derived from key material.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

from keyops import crypto
from keyops.errors import DecryptionError, InvalidInput, KeyopsError, KeyStateError, NotFound
from keyops.model.keyring import Keyring
from keyops.model.names import validate_tenant
from keyops.ops.front import Keyops

KEY_ID_PREFIX = "keyops:"
#: Kubernetes refuses a key id over 1 KiB; ours stay far below (a tenant name is at most 63 characters).
MAX_KEY_ID_LEN = 1024
#: The associated data of every ciphertext made for the health probe; nothing else uses it.
HEALTH_CONTEXT = b"keyops-serve-health-probe"
_ROOT_PROBE_CONTEXT = b"keyops-serve-root-probe"
#: ``healthz`` carries a reason the apiserver puts into its own health output: short, one line.
MAX_REASON_LEN = 200


def key_uid(keyring: Keyring, version: int) -> str:
    kv = keyring.dek.get(version)
    if kv.uid is not None:
        return kv.uid
    # A version made before uids: its creation time and its tenant's pin it down (and name no key).
    seed = "\0".join(("keyops-key-uid", keyring.tenant, keyring.created_at, str(version), kv.created_at))
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


def key_id(keyring: Keyring, version: int) -> str:
    return f"{KEY_ID_PREFIX}{keyring.tenant}:dek:v{version}:{key_uid(keyring, version)}"


def parse_key_id(text: str) -> tuple[str, int]:
    """The tenant and DEK version a key id names (its uid is checked against the keyring by the caller)."""
    parts = text.split(":")
    if (len(text) > MAX_KEY_ID_LEN or len(parts) != 5 or parts[0] != KEY_ID_PREFIX[:-1] or parts[2] != "dek"
            or not parts[3].startswith("v") or not parts[3][1:].isdigit()):
        raise InvalidInput("not a keyops key id: expected keyops:<tenant>:dek:v<version>:<uid>")
    return validate_tenant(parts[1]), int(parts[3][1:])


def short_reason(exc: BaseException) -> str:
    code = exc.code if isinstance(exc, KeyopsError) else type(exc).__name__
    text = f"{code}: {exc}".replace("\n", " ")
    return text if len(text) <= MAX_REASON_LEN else text[:MAX_REASON_LEN - 3] + "..."


@dataclasses.dataclass(frozen=True)
class Health:
    ok: bool
    reason: str  # "ok", or what failed
    key_id: str  # the current write key; "" when it could not be read


class TenantKeys:
    """The keys of ``tenant`` through one long-lived ``Keyops``; safe to call from many threads."""

    def __init__(self, k: Keyops, tenant: str, context: bytes) -> None:
        self.k = k
        self.tenant = validate_tenant(tenant)
        self.context = context
        # A version's key id and ciphertext header never change: both are worked out once.
        self._header_of_id: dict[str, bytes] = {}  # key ids found genuine -> their version's header
        self._id_of_version: dict[int, str] = {}
        self._version_at = slice(2 + len(self.tenant), 6 + len(self.tenant))

    def encrypt(self, plaintext: bytes) -> tuple[bytes, str]:
        """The binary keyops ciphertext and the key id of the DEK version that made it."""
        blob = self.k.encrypt_bytes(self.tenant, plaintext, self.context)
        version = int.from_bytes(blob[self._version_at], "big")  # the header keyops just wrote
        return blob, self._id_of_version.get(version) or self.key_id(version)

    def decrypt(self, blob: bytes, claimed_key_id: str) -> bytes:
        """Decrypt ``blob``, which must be a ciphertext of the version ``claimed_key_id`` names."""
        header = self._header_of_id.get(claimed_key_id)
        if header is None:
            header = self._learn(claimed_key_id)
        if not blob.startswith(header):
            crypto.Ciphertext.from_bytes(blob)  # a malformed one is told so
            raise DecryptionError()  # another version or tenant: the same opaque answer as a wrong key
        return self.k.decrypt(self.tenant, blob, self.context)

    def key_id(self, version: int) -> str:
        keyring = self.k.cached_keyring(self.tenant)
        try:
            text = key_id(keyring, version)
        except NotFound:  # a version newer than the cached keyring
            text = key_id(self.k.read_keyring(self.tenant)[0], version)
        self._id_of_version[version] = text
        return text

    def version_of(self, text: str) -> int:
        """The DEK version of a key id this tenant made; ``NotFound`` for any other id."""
        header = self._header_of_id.get(text) or self._learn(text)
        return int.from_bytes(header[-4:], "big")

    def _learn(self, text: str) -> bytes:
        tenant, version = parse_key_id(text)
        if tenant != self.tenant:
            raise NotFound(f"key id names tenant {tenant!r}; this server serves {self.tenant!r}")
        try:
            genuine = self.key_id(version) == text
        except NotFound:
            genuine = False
        if not genuine:
            raise NotFound(f"tenant {self.tenant!r} has no DEK version with key id {text!r}")
        header = crypto.binary_header(self.tenant, version)
        self._header_of_id[text] = header
        return header

    def probe(self) -> str:
        """A fresh keyring read (Vault), a probe of the master key for residence kv (HSM) and an
        encrypt/decrypt round trip with the primary DEK; the current key id, or the error."""
        keyring = self.k.read_keyring(self.tenant)[0]
        current = key_id(keyring, keyring.dek.primary)
        if keyring.policy.kek_residence == "kv":
            _, wrapper = self.k.hierarchy.master_wrapper()
            probe = os.urandom(32)
            if wrapper.unwrap(wrapper.wrap(probe, _ROOT_PROBE_CONTEXT), _ROOT_PROBE_CONTEXT) != probe:
                raise KeyStateError("the master key does not decrypt what it encrypts; inspect the HSM token")
        probe = os.urandom(16)
        # A record's use, not an external one: the probe's ciphertext is dropped at once, so no
        # caller outside keyops holds it and it must not block a retire.
        ct = self.k.encrypt_record(self.tenant, probe, HEALTH_CONTEXT)
        if self.k.decrypt(self.tenant, ct, HEALTH_CONTEXT) != probe:
            raise KeyStateError(f"the primary DEK of tenant {self.tenant!r} does not decrypt what it encrypts")
        return current

    def health(self) -> Health:
        """``probe``, never raising: a failure is its reason, with the key id last known."""
        try:
            return Health(True, "ok", self.probe())
        except Exception as exc:  # any failure is a reason for healthz, never a crash
            try:
                keyring = self.k.cached_keyring(self.tenant)  # may serve a stale copy in an outage
                current = key_id(keyring, keyring.dek.primary)
            except Exception:  # as above: no key id known at all
                current = ""
            return Health(False, short_reason(exc), current)

    def rotate_if_due(self) -> list[str]:
        """Rotate this tenant's KEK or DEK when its policy says so (age or uses); what was rotated."""
        from keyops.ops.rotation import rotate_due  # only servers that rotate themselves load it

        report = rotate_due(self.k, tenants=[self.tenant], include_master=False)
        if report.failures:
            failure = report.failures[0]
            raise KeyopsError(f"rotating the {failure.level} of tenant {self.tenant!r}: {failure.error}: "
                              f"{failure.message}")
        return [f"{r.level} v{r.old_version}->v{r.new_version}" for r in report.rotations if r.changed]
