"""The operations a keyops server offers its callers, whatever the wire: checked, counted and recorded.

``Service`` holds the server's one long-lived ``Keyops`` (the server's own
Vault token and, for residence ``kv``, the HSM PIN), the caller look-ups
(``keyops.serve.callers``), the metrics and the access log. Every operation
takes the ``Caller`` and checks its keyops roles before it touches a key:

| operation | right needed (``keyops.access``) |
|---|---|
| encrypt, datakey | ``usage.reserve`` and ``dek.unwrap`` on the tenant |
| decrypt | ``dek.unwrap`` on the tenant |
| rewrap | ``usage.reserve`` and ``dek.unwrap`` on the tenant |
| key | ``keyring.read`` on the tenant |

Encryption and decryption stay on the library's hot path (``Keyops.encrypt``
and ``decrypt``): no Vault or HSM call once a tenant's keys and a block of
uses are held. Rotations and tenant creation act with the caller's own token
(``keyops.serve.admin``), so Vault enforces them too.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Sequence

from keyops.errors import DecryptionError, InvalidInput, KeyopsError, KeyStateError
from keyops.model.keyring import parse_time
from keyops.model.names import validate_tenant
from keyops.ops.front import Keyops
from keyops.serve.access_log import AccessLog
from keyops.serve.callers import Caller, Callers
from keyops.serve.health import HealthProbe
from keyops.serve.metrics import ServeMetrics, StateCollector

ENCRYPT = ("usage.reserve", "dek.unwrap")
DECRYPT = ("dek.unwrap",)
READ_KEY = ("keyring.read",)
DATAKEY_BITS = (128, 256, 512)
#: Errors that are the caller's (bad input, a ciphertext not authentic here, a key state): one batch item
#: fails with them and the others go on, as Transit does. Any other error fails the whole request.
ITEM_ERRORS: tuple[type[KeyopsError], ...] = (InvalidInput, DecryptionError, KeyStateError)


@dataclasses.dataclass
class Item:
    """One input of a request (a batch has many). ``error``: set when the input itself was refused."""

    plaintext: bytes | None = None
    ciphertext: str | None = None
    context: bytes = b""
    reference: str | None = None
    error: KeyopsError | None = None


@dataclasses.dataclass
class ItemResult:
    ciphertext: str | None = None
    plaintext: bytes | None = None
    key_version: int | None = None
    reference: str | None = None
    error: KeyopsError | None = None


def version_of(text: str) -> int:
    """The DEK version a keyops text ciphertext names (``keyops:v1:<tenant>:<version>:...``)."""
    return int(text.split(":", 4)[3])


class Service:
    def __init__(self, k: Keyops, callers: Callers, *, metrics: ServeMetrics | None = None,
                 access_log: AccessLog | None = None) -> None:
        self.k = k
        self.callers = callers
        self.metrics = metrics or ServeMetrics()
        self.access_log = access_log or AccessLog(None)
        self.health = HealthProbe(k)
        self.served: set[str] = set()
        self._served_lock = threading.Lock()
        self.state = StateCollector(k, self.served_tenants, self.health.check)

    def served_tenants(self) -> list[str]:
        with self._served_lock:
            return sorted(self.served)

    def _tenant(self, caller: Caller, tenant: str, rights: Sequence[str]) -> str:
        """Check the caller's rights on ``tenant`` (before anything else about it is looked at)."""
        for right in rights:
            caller.require(right, tenant)
        tenant = validate_tenant(tenant)
        if tenant not in self.served:
            with self._served_lock:
                self.served.add(tenant)
        return tenant

    # --- data ------------------------------------------------------------------------------

    def encrypt(self, caller: Caller, tenant: str, items: Sequence[Item], key_version: int = 0) -> list[ItemResult]:
        tenant = self._tenant(caller, tenant, ENCRYPT)
        if key_version and key_version != self.k.cached_keyring(tenant).dek.primary:
            raise InvalidInput(f"key_version {key_version}: keyops encrypts under the primary DEK version only "
                               f"(now {self.k.cached_keyring(tenant).dek.primary}); omit key_version")
        return [self._each(item, lambda i: self._encrypt_one(tenant, i)) for item in items]

    def _encrypt_one(self, tenant: str, item: Item) -> ItemResult:
        if item.plaintext is None:
            raise InvalidInput("missing plaintext: a base64 string is required")
        text = self.k.encrypt(tenant, item.plaintext, item.context)
        return ItemResult(ciphertext=text, key_version=version_of(text))

    def decrypt(self, caller: Caller, tenant: str, items: Sequence[Item]) -> list[ItemResult]:
        tenant = self._tenant(caller, tenant, DECRYPT)
        return [self._each(item, lambda i: self._decrypt_one(tenant, i)) for item in items]

    def _decrypt_one(self, tenant: str, item: Item) -> ItemResult:
        if not item.ciphertext:
            raise InvalidInput("missing ciphertext: a keyops:v1:... string is required")
        return ItemResult(plaintext=self.k.decrypt(tenant, item.ciphertext, item.context),
                          key_version=version_of(item.ciphertext))

    def rewrap(self, caller: Caller, tenant: str, items: Sequence[Item]) -> list[ItemResult]:
        """Move ciphertexts to the primary DEK, keeping their associated data (Transit's rewrap drops it)."""
        tenant = self._tenant(caller, tenant, ENCRYPT)
        return [self._each(item, lambda i: self._rewrap_one(tenant, i)) for item in items]

    def _rewrap_one(self, tenant: str, item: Item) -> ItemResult:
        if not item.ciphertext:
            raise InvalidInput("missing ciphertext: a keyops:v1:... string is required")
        text = self.k.rewrap(tenant, item.ciphertext.strip(), item.context)
        assert isinstance(text, str)  # a text ciphertext comes back as text
        return ItemResult(ciphertext=text, key_version=version_of(text))

    def datakey(self, caller: Caller, tenant: str, bits: int, context: bytes) -> tuple[bytes, str, int]:
        """A fresh random key and its ciphertext under the primary DEK (bound to ``context``)."""
        tenant = self._tenant(caller, tenant, ENCRYPT)
        if bits not in DATAKEY_BITS:
            raise InvalidInput(f"bits must be one of {', '.join(map(str, DATAKEY_BITS))}, not {bits}")
        key = os.urandom(bits // 8)
        text = self.k.encrypt(tenant, key, context)
        return key, text, version_of(text)

    @staticmethod
    def _each(item: Item, work: object) -> ItemResult:
        if item.error is not None:
            return ItemResult(reference=item.reference, error=item.error)
        try:
            result: ItemResult = work(item)  # type: ignore[operator]
        except ITEM_ERRORS as exc:
            return ItemResult(reference=item.reference, error=exc)
        result.reference = item.reference
        return result

    # --- keys ------------------------------------------------------------------------------

    def key(self, caller: Caller, tenant: str) -> dict[str, object]:
        """The tenant's DEK versions as Transit describes a key: versions, dates, never key material."""
        tenant = self._tenant(caller, tenant, READ_KEY)
        keyring = self.k.read_keyring(tenant)[0]
        usable = [kv for kv in keyring.dek.versions if kv.usable_for_decrypt]
        return {
            "name": tenant,
            "type": "aes256-gcm96",
            "keys": {str(kv.version): _unix(kv.created_at) for kv in usable},
            "latest_version": keyring.dek.primary,
            "min_decryption_version": min((kv.version for kv in usable), default=keyring.dek.primary),
            "min_encryption_version": 0,
            "min_available_version": min((kv.version for kv in usable), default=keyring.dek.primary),
            "deletion_allowed": False, "derived": False, "exportable": False, "allow_plaintext_backup": False,
            "supports_encryption": True, "supports_decryption": True, "supports_derivation": False,
            "supports_signing": False, "imported_key": False, "auto_rotate_period": 0,
            "keyops": {"kek_residence": keyring.policy.kek_residence, "kek_version": keyring.kek.primary,
                       "dek_period_days": keyring.policy.dek_period_days,
                       "dek_usage_cap": keyring.policy.dek_usage_cap,
                       "versions": {str(kv.version): {"state": kv.state, "created_at": kv.created_at}
                                    for kv in keyring.dek.versions}},
        }

    def refresh(self, tenant: str) -> None:
        """Read the tenant's keyring now (after a rotation through this server), so the new primary serves."""
        self.k.read_keyring(tenant)


def _unix(text: str) -> int:
    return int(parse_time(text).timestamp())
