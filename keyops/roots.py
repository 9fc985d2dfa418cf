"""The root of the hierarchy: which backend protects each master key version.

    pkcs11      an AES-256 key on the HSM token (Pkcs11Wrapper); the default
    transit     a Transit key of another Vault or OpenBao, the "KMS" (KmsWrapper)
    passphrase  a random key per version, wrapped under Argon2id(passphrase) in the registry entry

``KEYOPS_ROOT`` (``Config.root``) chooses the root of *new* versions only.
Every version records its own root and that root's non-secret parameters
(``MasterVersion.root``, ``params``), and is always unwrapped by it, so a
master rotation under another configured root moves every KEK from the old
root to the new one; once it is done nothing refers to the old root, and its
PIN, passphrase or KMS token may go. A root is only touched when a version of
it is used: an app that never unwraps a passphrase version never needs the
passphrase.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from typing import TYPE_CHECKING, Any

from keyops.backends.hsm import Hsm
from keyops.backends.vault import CallCounter, VaultStore
from keyops.config import Config, find_softhsm_module
from keyops.errors import ConfigError, HsmTokenNotConfigured, KeyStateError
from keyops.model.master import MasterRegistry, MasterVersion
from keyops.wrappers import KeyWrapper, Pkcs11Wrapper
from keyops.wrappers import passphrase as passphrase_root
from keyops.wrappers.kms import KmsWrapper

if TYPE_CHECKING:  # pragma: no cover
    from keyops.ops.front import Keyops

#: Associated data of the probe that a root wraps and unwraps before a rotation writes anything.
PROBE_CONTEXT = b"keyops-master-probe"
_KMS_POOL = 4
NAMES = {"pkcs11": "the HSM", "transit": "the KMS", "passphrase": "the passphrase"}


class Roots:
    """The root backends of one ``Keyops`` front, opened on first use."""

    def __init__(self, k: Keyops) -> None:
        self._k = k
        #: Requests to the KMS, apart from those to the Vault that holds the keyrings.
        self.calls = CallCounter()
        self._stores: dict[tuple[str, str, str | None], VaultStore] = {}
        self._opened: dict[tuple[str, int, str], KeyWrapper] = {}  # passphrase versions, unwrapped once
        self._old_hsm: Hsm | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._old_hsm is not None:
            self._old_hsm.close()
            self._old_hsm = None

    @property
    def configured(self) -> str:
        return self._k.config.root

    # --- new versions ---------------------------------------------------------------------

    def new_version(self, registry: MasterRegistry, version: int, now: dt.datetime) -> MasterVersion:
        """Version ``version`` under the configured root, ``pending`` (``registry`` must have its id)."""
        config = self._k.config
        if registry.registry_id is None:
            raise KeyStateError("the master key registry has no id yet; it cannot name a new key")
        params: dict[str, Any] = {}
        if self.configured == "pkcs11":
            params = _token_params(config)
        elif self.configured == "transit":
            params = {"addr": _kms_addr(config), "mount": config.root_transit_mount, "key": config.root_transit_key,
                      "namespace": config.root_transit_namespace}
        elif self.configured == "passphrase":
            params = passphrase_root.seal_master(self._passphrase(f"KEYOPS_ROOT is passphrase (master v{version})"),
                                                 registry.registry_id, version)
        return registry.new_version(config.master_key_label, version, now, self.configured, params)

    def check_configured(self) -> None:
        """Fail now, before anything is written, when the configured root cannot make a version."""
        if self.configured == "pkcs11":
            self._k.hsm.login()
        elif self.configured == "passphrase":
            self._passphrase("KEYOPS_ROOT is passphrase")
        else:
            config = self._k.config
            self._probe(KmsWrapper(self._kms_store(_kms_addr(config), config.root_transit_mount,
                                                   config.root_transit_namespace),
                                   config.root_transit_key, "probe", 0), "the configured KMS key")

    def check_unused(self, mv: MasterVersion) -> None:
        """An HSM key may not exist yet under a name about to be claimed; other roots make no object."""
        if mv.on_hsm:
            if mv.key_id is None:
                raise KeyStateError(f"master key version {mv.version} has no key id; it cannot be created")
            self.hsm_for(mv).check_unused(mv.label, bytes.fromhex(mv.key_id))

    def make(self, registry: MasterRegistry, mv: MasterVersion) -> None:
        """Bring a claimed version's key into being (idempotent), and check that it wraps and unwraps."""
        if mv.on_hsm:
            # Still pending: nothing is wrapped by it yet, so a key left half-made may be replaced.
            self.hsm_for(mv).ensure_key(mv.label, key_id=bytes.fromhex(mv.key_id or ""), replace_unusable=True)
        else:
            self.probe(registry, mv)

    def present(self, mv: MasterVersion) -> bool:
        """Whether the root still holds the version's key (only the HSM can lose one behind keyops' back)."""
        return self.hsm_for(mv).has_key(mv.label, mv.key_id_bytes) if mv.on_hsm else True

    # --- PKCS#11 tokens -------------------------------------------------------------------

    def hsm_for(self, mv: MasterVersion) -> Hsm:
        """The token that holds a ``pkcs11`` version: the configured one, or the old one during a replacement.

        A version records its token's label (``params.token``). One made before
        tokens were recorded is on the configured token, or, while an old token
        is configured, on whichever of the two holds it: such versions were all
        made on the token a replacement moves away from.
        """
        config = self._k.config
        token = mv.params.get("token")
        old = config.pkcs11_old_token_label
        if token is None:
            if old and old != config.pkcs11_token_label and not self._k.hsm.has_key(mv.label, mv.key_id_bytes):
                return self._old(mv)
            return self._k.hsm
        if token == config.pkcs11_token_label:
            return self._k.hsm
        if token == old:
            return self._old(mv)
        raise HsmTokenNotConfigured(
            f"master key v{mv.version} ({mv.label}) is on HSM token {token!r}, but KEYOPS_PKCS11_TOKEN is "
            f"{config.pkcs11_token_label!r}{f' and KEYOPS_PKCS11_OLD_TOKEN is {old!r}' if old else ''}: to reach it "
            f"set KEYOPS_PKCS11_OLD_TOKEN={token} and KEYOPS_PKCS11_OLD_PIN_FILE (docs/runbooks/hsm-replacement.md); "
            "if that token is lost, recover from the escrow (docs/runbooks/hsm-recovery.md)")

    def on_configured_token(self, mv: MasterVersion) -> bool:
        """Whether a ``pkcs11`` version is known to live on ``KEYOPS_PKCS11_TOKEN`` (unrecorded: assumed so)."""
        return mv.params.get("token") in (None, self._k.config.pkcs11_token_label)

    def _old(self, mv: MasterVersion) -> Hsm:
        config = self._k.config
        with self._lock:
            if self._old_hsm is None:
                # The old token's own module when it was recorded (a vendor's), else the one configured.
                module = (config.pkcs11_old_module or _optional(mv.params.get("module"))
                          or config.resolve_pkcs11_module())
                self._old_hsm = Hsm(module, str(config.pkcs11_old_token_label), config.resolve_pkcs11_old_pin(),
                                    self._k.calls)
            return self._old_hsm

    # --- using versions -------------------------------------------------------------------

    def wrapper(self, registry: MasterRegistry, mv: MasterVersion) -> KeyWrapper:
        """The version as a wrapper, by the root that made it."""
        if mv.on_hsm:
            return Pkcs11Wrapper(self.hsm_for(mv), mv.label, mv.key_id_bytes)
        registry_id = registry.registry_id
        if registry_id is None:
            raise KeyStateError(f"master key v{mv.version} is a {mv.root} version in a registry without an id; "
                                "restore the registry")
        if mv.root == "transit":
            params = mv.params
            store = self._kms_store(str(params.get("addr")), str(params.get("mount")),
                                    _optional(params.get("namespace")), version=mv.version)
            return KmsWrapper(store, str(params.get("key")), registry_id, mv.version)
        cache_key = (registry_id, mv.version, str(mv.params.get("wrapped")))
        opened = self._opened.get(cache_key)
        if opened is None:
            opened = passphrase_root.open_master(self._passphrase(f"master key v{mv.version} was made from one"),
                                                 mv.params, registry_id, mv.version)
            with self._lock:
                self._opened[cache_key] = opened
        return opened

    def probe(self, registry: MasterRegistry, mv: MasterVersion) -> None:
        """Wrap and unwrap a random probe with the version: a wrong PIN, passphrase or KMS fails here."""
        self._probe(self.wrapper(registry, mv), f"master key v{mv.version} ({mv.label})")

    # --- internals ------------------------------------------------------------------------

    def _probe(self, wrapper: KeyWrapper, what: str) -> None:
        probe = os.urandom(32)
        if wrapper.unwrap(wrapper.wrap(probe, PROBE_CONTEXT), PROBE_CONTEXT) != probe:
            raise KeyStateError(f"{what} does not decrypt what it encrypts; inspect its root")

    def _passphrase(self, why: str) -> str:
        return self._k.config.resolve_root_passphrase(why)

    def _kms_store(self, addr: str, mount: str, namespace: str | None, version: int | None = None) -> VaultStore:
        config = self._k.config
        if addr != config.root_transit_addr:
            which = f"master key v{version} lives" if version is not None else "the KMS key lives"
            raise ConfigError(f"{which} in the KMS at {addr}, but KEYOPS_ROOT_TRANSIT_ADDR is "
                              f"{config.root_transit_addr or 'not set'}; set it (and its token) to reach that KMS")
        with self._lock:
            store = self._stores.get((addr, mount, namespace))
            if store is None:
                store = VaultStore(_kms_config(config, addr, mount, namespace), counter=self.calls, pool_size=_KMS_POOL)
                self._stores[(addr, mount, namespace)] = store
        return store


def _token_params(config: Config) -> dict[str, Any]:
    """What names the token of a new ``pkcs11`` version: its label, and its module unless it is SoftHSM2's.

    SoftHSM2's path differs between distributions, so it is left out; a
    vendor's module is recorded, so that a later replacement reaches this
    token through it by default.
    """
    params: dict[str, Any] = {"token": config.pkcs11_token_label}
    if config.pkcs11_module and config.pkcs11_module != find_softhsm_module():
        params["module"] = config.pkcs11_module
    return params


def _kms_addr(config: Config) -> str:
    if not config.root_transit_addr:
        raise ConfigError("KEYOPS_ROOT is transit but no KMS is configured: set KEYOPS_ROOT_TRANSIT_ADDR (and "
                          "KEYOPS_ROOT_TRANSIT_TOKEN_FILE, KEYOPS_ROOT_TRANSIT_KEY)")
    return config.root_transit_addr


def _kms_config(config: Config, addr: str, mount: str, namespace: str | None) -> Config:
    """A Vault configuration for the KMS: its own address, credentials, TLS and deadline."""
    if not (config.root_transit_token or config.root_transit_token_file or config.root_transit_role_id):
        # Never fall back to VAULT_TOKEN or ~/.vault-token: that is the other Vault's credential.
        raise ConfigError("no credential for the KMS: set KEYOPS_ROOT_TRANSIT_TOKEN_FILE (or "
                          "KEYOPS_ROOT_TRANSIT_TOKEN, or KEYOPS_ROOT_TRANSIT_ROLE_ID and _SECRET_ID)")
    return Config(vault_addr=addr, vault_token=config.root_transit_token,
                  vault_token_file=config.root_transit_token_file, vault_namespace=namespace,
                  vault_cacert=config.root_transit_cacert, vault_skip_verify=config.root_transit_skip_verify,
                  vault_timeout=config.root_transit_timeout, approle_role_id=config.root_transit_role_id,
                  approle_secret_id=config.root_transit_secret_id, transit_mount=mount)


def _optional(value: Any) -> str | None:
    return None if value is None else str(value)
