"""The PKCS#11 boundary: a token, a logged-in session, AES master keys on it.

Master keys are AES-256 token objects, sensitive and never extractable, and
(where the token supports PKCS#11 v2.40) neither destroyable, modifiable nor
copyable by a holder of the user PIN. They are found by label and CKA_ID
(``<prefix>-<registry id>-v<N>`` and registry id ‖ version: see
``keyops.ops.front.MasterRegistry``), so two registries sharing a token never
use each other's keys, and used only through the token's CKM_AES_GCM, so
their material never leaves the HSM.

python-pkcs11 initialises the library (C_Initialize) without locking
callbacks, which tells the module that the application never calls it from
two threads at once; SoftHSM2 then fails with CKR_GENERAL_ERROR when it is.
So every PKCS#11 call of the process goes through one lock. HSM calls are
rare (unwrapped keys are cached), so it costs nothing on the hot path.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import pkcs11
import pkcs11.exceptions as p11e
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams

from keyops.backends.vault import CallCounter
from keyops.config import Config
from keyops.errors import (
    DecryptionError,
    HsmError,
    HsmKeyNotFound,
    HsmKeyNotOwned,
    HsmLoginFailed,
    HsmUnavailable,
)

if TYPE_CHECKING:  # pragma: no cover
    from pkcs11._pkcs11 import lib as Pkcs11Lib  # what pkcs11.lib() returns; its stubs name it only there

    class AesKey(pkcs11.SecretKey, pkcs11.types.EncryptMixin, pkcs11.types.DecryptMixin):
        """A token AES key: python-pkcs11 gives its class the encrypt and decrypt mixins at run time."""

NONCE_SIZE = 12
#: Pauses before looking for the token again (4.05 s in all): SoftHSM2 rewrites its token file in place at
#: every login, and with several processes logging in at once on a loaded machine (seen in full suite runs:
#: three concurrent `keyops encrypt` runs) 1.55 s of looks were not always enough. Only a token that is
#: really missing pays the whole wait.
TOKEN_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.5)
TAG_BITS = 128

#: Attributes of every new master key: no holder of the user PIN can delete
#: (C_DestroyObject), change (C_SetAttributeValue) or copy (C_CopyObject) it;
#: the token answers CKR_ACTION_PROHIBITED. Removing one takes the token's
#: security officer (see docs/access.md, "The HSM PIN").
PERMANENT: dict[Attribute, bool] = {Attribute.DESTROYABLE: False, Attribute.MODIFIABLE: False,
                                    Attribute.COPYABLE: False}
# How a token that predates these attributes (PKCS#11 < v2.40) refuses them.
_TEMPLATE_REFUSED = (p11e.AttributeTypeInvalid, p11e.AttributeValueInvalid, p11e.TemplateInconsistent,
                     p11e.AttributeReadOnly)
_log = logging.getLogger("keyops.backends.hsm")

# Failures of CKM_AES_GCM decryption that mean "not authentic" rather than "HSM broken".
_NOT_AUTHENTIC = (p11e.EncryptedDataInvalid, p11e.EncryptedDataLenRange, p11e.GeneralError,
                  p11e.FunctionFailed)


# (module, token label) -> digest of the PIN this process logged in with.
_LOGGED_IN: dict[tuple[str, str], bytes] = {}


@dataclasses.dataclass
class _ProcessLogin:
    """The session that logged this process in to a token, and how many Hsm sessions rely on it.

    PKCS#11 login is per process, and python-pkcs11 logs out (C_Logout, which
    ends the login of every session of the process) when the session opened
    with the PIN is closed. So that session belongs to the process: each Hsm
    works in a session of its own, and the login session is closed with the
    last of them, never while another Hsm of the process still needs it.
    """

    session: pkcs11.Session
    digest: bytes
    users: int = 0


_PROCESS_LOGINS: dict[tuple[str, str], _ProcessLogin] = {}
# Every PKCS#11 call of the process, by any Hsm object (see the module docstring).
_PKCS11_LOCK = threading.RLock()


def _pin_digest(pin: str) -> bytes:
    return hashlib.sha256(b"keyops-pin-check" + pin.encode()).digest()


@dataclasses.dataclass(frozen=True)
class KeyAttributes:
    label: str
    key_length_bits: int
    token: bool
    sensitive: bool
    extractable: bool
    always_sensitive: bool
    never_extractable: bool
    key_id: str = ""  # CKA_ID, hex; empty for a key made before registry ids
    # None when the token does not know the attribute (older than PKCS#11 v2.40).
    destroyable: bool | None = None
    modifiable: bool | None = None
    copyable: bool | None = None


@dataclasses.dataclass(frozen=True)
class Removal:
    """What ``destroy_key`` did: objects deleted, and objects kept because the token refuses to delete them."""

    deleted: int
    kept: int


def _attr(obj: pkcs11.Object, attribute: Attribute) -> Any:
    """An attribute's value, or None when the token does not know it or cannot read it."""
    try:
        return obj[attribute]
    except p11e.PKCS11Error:
        return None


def _name(label: str, key_id: bytes | None) -> str:
    return f"labelled {label!r}" + (f" with CKA_ID {key_id.hex()}" if key_id is not None else "")


def _usable_master_key(obj: pkcs11.Object) -> bool:
    """An AES-256 token key that encrypts and decrypts and never leaves the token."""
    try:
        return (obj[Attribute.KEY_TYPE] == KeyType.AES and int(obj[Attribute.VALUE_LEN]) == 32
                and bool(obj[Attribute.TOKEN]) and bool(obj[Attribute.ENCRYPT]) and bool(obj[Attribute.DECRYPT])
                and bool(obj[Attribute.SENSITIVE]) and not bool(obj[Attribute.EXTRACTABLE]))
    except p11e.PKCS11Error:  # an attribute that cannot be read: a half-written object
        return False


def _aes_key(obj: pkcs11.Object) -> AesKey:
    """A token AES secret key (found with ``_usable_master_key`` or just generated) as the type it has at run time."""
    return cast("AesKey", obj)


class Hsm:
    def __init__(self, module: str, token_label: str, pin: str, counter: CallCounter | None = None) -> None:
        self.module = module
        self.token_label = token_label
        self._pin = pin
        self.calls = counter or CallCounter()
        self._lock = _PKCS11_LOCK
        self._session: pkcs11.Session | None = None
        self._holds_login = False  # counted in _PROCESS_LOGINS
        self._keys: dict[tuple[str, bytes | None], AesKey] = {}

    @classmethod
    def from_config(cls, config: Config, counter: CallCounter | None = None) -> Hsm:
        return cls(config.resolve_pkcs11_module(), config.pkcs11_token_label, config.resolve_pkcs11_pin(), counter)

    def __repr__(self) -> str:
        return f"<Hsm token={self.token_label!r} module={self.module!r}>"

    @contextlib.contextmanager
    def _open(self) -> Iterator[pkcs11.Session]:
        with self._lock:
            if self._session is None:
                self._session = self._login()
            yield self._session

    def _login(self) -> pkcs11.Session:
        self.calls.add("hsm.login")
        try:
            lib = pkcs11.lib(self.module)
        except (OSError, RuntimeError) as exc:
            raise HsmUnavailable(f"cannot load the PKCS#11 module {self.module!r}; check KEYOPS_PKCS11_MODULE "
                                 "(and SOFTHSM2_CONF for SoftHSM2)") from exc
        try:
            token = self._find_token(lib)
        except p11e.NoSuchToken as exc:
            hint = " (is SOFTHSM2_CONF set to the stack's softhsm2.conf?)" if "softhsm" in self.module else ""
            raise HsmUnavailable(f"no HSM token labelled {self.token_label!r} in {self.module!r}{hint}; "
                                 "check KEYOPS_PKCS11_TOKEN or run 'keyops dev up'") from exc
        except p11e.PKCS11Error as exc:
            hint = "SoftHSM2's token folder named by SOFTHSM2_CONF" if "softhsm" in self.module else "the HSM"
            raise HsmUnavailable(f"the HSM token {self.token_label!r} is unavailable ({type(exc).__name__}): its "
                                 f"store cannot be read or the HSM does not answer; check {hint}") from exc
        key = (self.module, self.token_label)
        digest = _pin_digest(self._pin)
        held = _PROCESS_LOGINS.get(key)
        if held is None:
            try:
                login = token.open(user_pin=self._pin, rw=True)
            except p11e.UserAlreadyLoggedIn:
                # Logged in by something else of this process (not an Hsm): its
                # login is shared, and the PIN must match one keyops logged in with.
                if _LOGGED_IN.get(key) != digest:
                    raise self._wrong_pin() from None
                return self._open_session(token)
            except (p11e.PinIncorrect, p11e.PinLenRange, p11e.PinInvalid) as exc:
                raise self._wrong_pin() from exc
            except p11e.PinLocked as exc:
                raise HsmLoginFailed(f"the user PIN of HSM token {self.token_label!r} is locked; "
                                     "the security officer must reset it") from exc
            except p11e.PKCS11Error as exc:
                raise self._no_session(exc) from exc
            held = _PROCESS_LOGINS[key] = _ProcessLogin(login, digest)
            _LOGGED_IN[key] = digest
        elif held.digest != digest:
            # Another Hsm of this process logged in; the PIN must still match.
            raise self._wrong_pin()
        try:
            session = self._open_session(token)
        except HsmUnavailable:
            if held.users == 0:  # a login of no use to anyone: end it
                del _PROCESS_LOGINS[key]
                with contextlib.suppress(p11e.PKCS11Error):
                    held.session.close()
            raise
        held.users += 1
        self._holds_login = True
        return session

    def _open_session(self, token: pkcs11.Token) -> pkcs11.Session:
        """A session of this Hsm, in the process's login (closing it never logs the process out)."""
        try:
            return token.open(rw=True)
        except p11e.PKCS11Error as exc:
            raise self._no_session(exc) from exc

    def _find_token(self, lib: Pkcs11Lib) -> pkcs11.Token:
        # SoftHSM2 rewrites its token file in place at every login, so a login in
        # another process can make the token briefly unreadable; look again.
        for delay in TOKEN_RETRY_DELAYS:
            try:
                return lib.get_token(token_label=self.token_label)
            except (p11e.NoSuchToken, p11e.GeneralError):
                time.sleep(delay)
        return lib.get_token(token_label=self.token_label)

    def _wrong_pin(self) -> HsmLoginFailed:
        return HsmLoginFailed(f"login to HSM token {self.token_label!r} failed: wrong PIN; check "
                              "KEYOPS_PKCS11_PIN or KEYOPS_PKCS11_PIN_FILE")

    def _no_session(self, exc: p11e.PKCS11Error) -> HsmUnavailable:
        return HsmUnavailable(f"cannot open a session on HSM token {self.token_label!r}: {type(exc).__name__}")

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                with contextlib.suppress(p11e.PKCS11Error):
                    self._session.close()
            self._session = None
            self._keys.clear()
            if self._holds_login:
                self._holds_login = False
                key = (self.module, self.token_label)
                held = _PROCESS_LOGINS[key]
                held.users -= 1
                if held.users == 0:  # the last Hsm of the process on this token: log out
                    del _PROCESS_LOGINS[key]
                    with contextlib.suppress(p11e.PKCS11Error):
                        held.session.close()

    def login(self) -> None:
        """Open the logged-in session now: a wrong PIN or a missing token fails here, before any change."""
        with self._open():
            pass

    # --- keys ------------------------------------------------------------------------
    #
    # A key is named by its label and, for keys made since registry ids, its
    # CKA_ID: lookups match both, so a key of another registry that happens to
    # carry the same label is never used. ``key_id=None`` finds a key made
    # before registry ids by its label alone.

    def _objects(self, session: pkcs11.Session, label: str, key_id: bytes | None) -> list[pkcs11.Object]:
        template: dict[Attribute, Any] = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}
        if key_id is not None:
            template[Attribute.ID] = key_id
        return list(session.get_objects(template))

    def _key(self, session: pkcs11.Session, label: str, key_id: bytes | None = None) -> AesKey:
        key = self._keys.get((label, key_id))
        if key is not None:
            return key
        self.calls.add("hsm.find_key")
        try:
            found = self._objects(session, label, key_id)
            usable = [obj for obj in found if _usable_master_key(obj)]
        except p11e.PKCS11Error as exc:
            raise HsmError(f"looking up key {label!r} on HSM token {self.token_label!r} failed: "
                           f"{type(exc).__name__}") from exc
        if not found:
            raise HsmKeyNotFound(f"the HSM token {self.token_label!r} has no AES key {_name(label, key_id)}; "
                                 "create it with 'keyops dev up' or the master_key module")
        if len(usable) > 1:
            raise HsmError(f"the HSM token {self.token_label!r} holds several usable keys {_name(label, key_id)}; "
                           "remove the duplicates")
        if not usable:
            raise HsmError(f"the HSM token {self.token_label!r} holds {len(found)} objects {_name(label, key_id)} "
                           "and none is usable; a key creation was interrupted, inspect the token")
        # Half-made twins that could not be removed (not destroyable) are ignored.
        key = self._keys[(label, key_id)] = _aes_key(usable[0])
        return key

    def has_key(self, label: str, key_id: bytes | None = None) -> bool:
        try:
            with self._open() as session:
                self._key(session, label, key_id)
        except HsmKeyNotFound:
            return False
        return True

    def check_unused(self, label: str, key_id: bytes) -> None:
        """Refuse (``HsmKeyNotOwned``) when any object on the token has ``label`` or ``key_id`` already.

        Called before a registry claims a new version: an object found then was
        made by something else (another registry, or a copy of this one) and
        must never be adopted.
        """
        with self._open() as session:
            taken = self._taken(session, label, key_id, own_ok=False)
        if taken:
            raise HsmKeyNotOwned(self._not_owned_message(label, key_id, taken))

    def _taken(self, session: pkcs11.Session, label: str, key_id: bytes, own_ok: bool) -> int:
        """How many objects carry ``label`` or ``key_id`` without being ours (both match, when ``own_ok``)."""
        try:
            by_label = list(session.get_objects({Attribute.LABEL: label}))
            by_id = list(session.get_objects({Attribute.ID: key_id}))
            if not own_ok:
                return len(set(by_label) | set(by_id))
            return sum(1 for obj in set(by_label) | set(by_id)
                       if _attr(obj, Attribute.LABEL) != label or bytes(_attr(obj, Attribute.ID) or b"") != key_id)
        except p11e.PKCS11Error as exc:
            raise HsmError(f"searching HSM token {self.token_label!r} for {label!r} failed: "
                           f"{type(exc).__name__}") from exc

    def _not_owned_message(self, label: str, key_id: bytes, count: int) -> str:
        return (f"the HSM token {self.token_label!r} already holds {count} object(s) labelled {label!r} or with "
                f"CKA_ID {key_id.hex()} that this master key registry did not create (a Vault restored from a "
                "copy of this one, or a look-alike); keyops never adopts such a key: remove it, or use another "
                "token or KEYOPS_MASTER_KEY_LABEL prefix")

    def ensure_key(self, label: str, *, key_id: bytes, replace_unusable: bool = False) -> bool:
        """Create the AES-256 master key ``label`` / ``key_id`` unless a usable one exists. True when created.

        Only an object with both this label and this CKA_ID counts as the key;
        one that carries either without the other belongs to someone else and
        is refused (``HsmKeyNotOwned``). Callers ensure a key only for a
        version their registry has claimed, whose id is random per registry.

        A process killed inside C_GenerateKey can leave a token object with the
        label but without all its attributes (SoftHSM2 writes them one by one),
        which then refuses to encrypt. With ``replace_unusable`` (only for a
        version that has never wrapped anything: not yet registered, or still
        ``pending``) such objects are removed where the token lets us (a
        half-made key may already be non-destroyable: it then stays, ignored by
        every lookup) and the key made anew; without it they are an error
        naming the label.
        """
        with self._open() as session:
            taken = self._taken(session, label, key_id, own_ok=True)
            if taken:
                raise HsmKeyNotOwned(self._not_owned_message(label, key_id, taken))
            found = self._objects(session, label, key_id)
            usable = [obj for obj in found if _usable_master_key(obj)]
            if len(usable) > 1:
                raise HsmError(f"the HSM token {self.token_label!r} holds several usable keys labelled {label!r}; "
                               "remove the duplicates")
            if found and not usable and not replace_unusable:
                raise HsmError(f"the HSM token {self.token_label!r} holds {len(found)} objects labelled {label!r} "
                               "of which 0 usable; a key creation was interrupted, inspect the token")
            if replace_unusable:
                self._remove_half_made([obj for obj in found if obj not in usable], label)
            self._keys.pop((label, key_id), None)
            if usable:
                self._keys[(label, key_id)] = _aes_key(usable[0])
                return False
            self._keys[(label, key_id)] = self._generate(session, label, key_id)
            return True

    def _remove_half_made(self, objects: list[pkcs11.Object], label: str) -> None:
        for obj in objects:
            if not self._destroy_object(obj, f"remove a half-made key labelled {label!r}"):
                _log.warning("a half-made key labelled %r stays on HSM token %r: it is not destroyable; it holds "
                             "nothing keyops uses, and the token's security officer may remove it", label,
                             self.token_label)

    def _generate(self, session: pkcs11.Session, label: str, key_id: bytes) -> AesKey:
        """A new AES-256 token key, permanent for PIN holders where the token supports it."""
        template: dict[Attribute, Any] = {
            Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.TOKEN: True,
            Attribute.PRIVATE: True, Attribute.WRAP: False, Attribute.UNWRAP: False}
        self.calls.add("hsm.generate_key")
        try:
            try:
                key = self._generate_with(session, label, key_id, {**template, **PERMANENT})
            except _TEMPLATE_REFUSED as exc:
                # A token older than PKCS#11 v2.40 does not know these attributes;
                # the key is still made, only a PIN holder can then delete it.
                _log.warning("HSM token %r refused CKA_DESTROYABLE/CKA_MODIFIABLE/CKA_COPYABLE false (%s); master "
                             "key %r is made without them, so any holder of the user PIN can destroy it",
                             self.token_label, type(exc).__name__, label)
                key = self._generate_with(session, label, key_id, template)
        except p11e.PKCS11Error as exc:
            raise HsmError(f"could not create master key {label!r} on token {self.token_label!r}: "
                           f"{type(exc).__name__}") from exc
        if _attr(key, Attribute.DESTROYABLE) is not False:
            _log.warning("master key %r on HSM token %r is destroyable: the token ignored CKA_DESTROYABLE false",
                         label, self.token_label)
        return key

    @staticmethod
    def _generate_with(session: pkcs11.Session, label: str, key_id: bytes,
                       template: dict[Attribute, Any]) -> AesKey:
        return _aes_key(session.generate_key(
            KeyType.AES, 256, label=label, id=key_id, store=True,
            capabilities=pkcs11.MechanismFlag.ENCRYPT | pkcs11.MechanismFlag.DECRYPT, template=template))

    def attributes(self, label: str, key_id: bytes | None = None) -> KeyAttributes:
        with self._open() as session:
            key = self._key(session, label, key_id)
            self.calls.add("hsm.get_attributes")
            return KeyAttributes(
                label=label, key_length_bits=int(key[Attribute.VALUE_LEN]) * 8, token=bool(key[Attribute.TOKEN]),
                sensitive=bool(key[Attribute.SENSITIVE]), extractable=bool(key[Attribute.EXTRACTABLE]),
                always_sensitive=bool(key[Attribute.ALWAYS_SENSITIVE]),
                never_extractable=bool(key[Attribute.NEVER_EXTRACTABLE]),
                key_id=bytes(_attr(key, Attribute.ID) or b"").hex(),
                destroyable=_attr(key, Attribute.DESTROYABLE), modifiable=_attr(key, Attribute.MODIFIABLE),
                copyable=_attr(key, Attribute.COPYABLE))

    def _destroy_object(self, obj: pkcs11.Object, what: str) -> bool:
        """Destroy ``obj``, unless the token marks it not destroyable (then False: it stays)."""
        if _attr(obj, Attribute.DESTROYABLE) is False:
            return False
        self.calls.add("hsm.destroy_key")
        try:
            obj.destroy()
        except p11e.PKCS11Error as exc:
            raise HsmError(f"could not {what} from HSM token {self.token_label!r}: {type(exc).__name__}") from exc
        return True

    def destroy_key(self, label: str, *, key_id: bytes) -> Removal:
        """Delete the key ``label`` / ``key_id`` (and half-made twins) where the token lets a PIN holder.

        Only keys with a CKA_ID are ever deleted: a key found by label alone may
        be another registry's. A key made non-destroyable stays (``kept``).
        """
        deleted = kept = 0
        with self._open() as session:
            try:
                found = self._objects(session, label, key_id)
            except p11e.PKCS11Error as exc:
                raise HsmError(f"looking up key {label!r} on HSM token {self.token_label!r} failed: "
                               f"{type(exc).__name__}") from exc
            for obj in found:
                if self._destroy_object(obj, f"delete key {label!r}"):
                    deleted += 1
                else:
                    kept += 1
            self._keys.pop((label, key_id), None)
        return Removal(deleted, kept)

    # --- AES-GCM with a key that stays on the token ------------------------------------

    def gcm_encrypt(self, label: str, plaintext: bytes, aad: bytes, *, key_id: bytes | None = None) -> bytes:
        """``nonce || ciphertext || tag`` under the token key ``label`` (and ``key_id``)."""
        nonce = os.urandom(NONCE_SIZE)
        with self._open() as session:
            key = self._key(session, label, key_id)
            self.calls.add("hsm.encrypt")
            try:
                # bytes in, bytes out (python-pkcs11 streams only when given an iterator)
                body = cast(bytes, key.encrypt(plaintext, mechanism=Mechanism.AES_GCM,
                                               mechanism_param=GCMParams(nonce, aad, TAG_BITS)))
            except p11e.PKCS11Error as exc:
                raise HsmError(f"HSM encryption with {label!r} failed: {type(exc).__name__}") from exc
        return nonce + bytes(body)

    def gcm_decrypt(self, label: str, blob: bytes, aad: bytes, *, key_id: bytes | None = None) -> bytes:
        if len(blob) < NONCE_SIZE + TAG_BITS // 8:
            raise DecryptionError()
        with self._open() as session:
            key = self._key(session, label, key_id)
            self.calls.add("hsm.decrypt")
            try:
                return bytes(cast(bytes, key.decrypt(blob[NONCE_SIZE:], mechanism=Mechanism.AES_GCM,
                                                     mechanism_param=GCMParams(blob[:NONCE_SIZE], aad, TAG_BITS))))
            except _NOT_AUTHENTIC:
                raise DecryptionError() from None
            except p11e.PKCS11Error as exc:
                raise HsmError(f"HSM decryption with {label!r} failed: {type(exc).__name__}") from exc


# --- token provisioning (the local stack's SoftHSM2 token) ------------------------------------
#
# Run by ``keyops dev up`` in a child process of its own (SoftHSM2 reads SOFTHSM2_CONF once per
# process); production tokens are provisioned by the HSM's own tools.


def token_present(module: str, token_label: str) -> bool:
    """Whether the PKCS#11 module offers a token labelled ``token_label``."""
    with _PKCS11_LOCK:
        return _labelled_token(_load_module(module), token_label) is not None


def init_token(module: str, token_label: str, *, so_pin: str, user_pin: str) -> None:
    """Initialise the first free slot's token as ``token_label`` with these PINs (``HsmError`` when it cannot).

    SoftHSM2 always offers one uninitialised slot for a new token.
    """
    with _PKCS11_LOCK:
        lib = _load_module(module)
        try:
            free = [slot for slot in lib.get_slots(token_present=True)
                    if not slot.get_token().flags & pkcs11.TokenFlag.TOKEN_INITIALIZED]
        except p11e.PKCS11Error as exc:
            raise HsmUnavailable(f"listing the slots of {module} failed: {type(exc).__name__}") from exc
        if not free:
            raise HsmError(f"{module} offers no free slot for a new token")
        rv = _c_init_token(module, free[0].slot_id, so_pin, token_label)
        if rv != 0:
            raise HsmError(f"C_InitToken failed with CKR 0x{rv:x}")
        lib.reinitialize()  # python-pkcs11 lists tokens as they were at C_Initialize
        token = _labelled_token(lib, token_label)
        if token is None:
            raise HsmError(f"the token {token_label!r} is missing right after it was initialised")
        try:
            with token.open(rw=True, so_pin=so_pin) as session:
                session.init_pin(user_pin)
        except p11e.PKCS11Error as exc:
            raise HsmError(f"setting the user PIN of the new token {token_label!r} failed: "
                           f"{type(exc).__name__}") from exc


def _load_module(module: str) -> Pkcs11Lib:
    try:
        return pkcs11.lib(module)
    except (OSError, RuntimeError, p11e.PKCS11Error) as exc:
        raise HsmUnavailable(f"cannot load the PKCS#11 module {module}: {type(exc).__name__}") from exc


def _labelled_token(lib: Pkcs11Lib, token_label: str) -> pkcs11.Token | None:
    try:
        token: pkcs11.Token = lib.get_token(token_label=token_label)
        return token
    except p11e.NoSuchToken:
        return None
    except p11e.PKCS11Error as exc:
        raise HsmUnavailable(f"looking for the token {token_label!r} failed: {type(exc).__name__}") from exc


def _c_init_token(module: str, slot_id: int, so_pin: str, token_label: str) -> int:
    """``C_InitToken``, which python-pkcs11 does not expose; the library is already initialised."""
    lib = ctypes.CDLL(module)
    fn = lib.C_InitToken
    fn.argtypes = [ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    fn.restype = ctypes.c_ulong
    pin = so_pin.encode()
    padded = token_label.encode().ljust(32, b" ")[:32]
    return int(fn(slot_id, pin, len(pin), padded))
