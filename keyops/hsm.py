"""The PKCS#11 boundary: a token, a logged-in session, AES master keys on it.

Master keys are AES-256 token objects, sensitive and never extractable; they
are found by label (``<prefix>-v<N>``) and used only through the token's
CKM_AES_GCM, so their material never leaves the HSM.

python-pkcs11 initialises the library (C_Initialize) without locking
callbacks, which tells the module that the application never calls it from
two threads at once; SoftHSM2 then fails with CKR_GENERAL_ERROR when it is.
So every PKCS#11 call of the process goes through one lock. HSM calls are
rare (unwrapped keys are cached), so it costs nothing on the hot path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import threading
import time
from collections.abc import Iterator

import pkcs11
import pkcs11.exceptions as p11e
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams

from keyops.config import Config
from keyops.errors import DecryptionError, HsmError, HsmKeyNotFound, HsmLoginFailed, HsmUnavailable
from keyops.vault import CallCounter

NONCE_SIZE = 12
TOKEN_RETRY_DELAYS = (0.05, 0.1, 0.2)
TAG_BITS = 128

# Failures of CKM_AES_GCM decryption that mean "not authentic" rather than "HSM broken".
_NOT_AUTHENTIC = (p11e.EncryptedDataInvalid, p11e.EncryptedDataLenRange, p11e.GeneralError,
                  p11e.FunctionFailed)


# (module, token label) -> digest of the PIN this process logged in with.
_LOGGED_IN: dict[tuple[str, str], bytes] = {}
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


def _usable_master_key(obj: pkcs11.Object) -> bool:
    """An AES-256 token key that encrypts and decrypts and never leaves the token."""
    try:
        return (obj[Attribute.KEY_TYPE] == KeyType.AES and int(obj[Attribute.VALUE_LEN]) == 32
                and bool(obj[Attribute.TOKEN]) and bool(obj[Attribute.ENCRYPT]) and bool(obj[Attribute.DECRYPT])
                and bool(obj[Attribute.SENSITIVE]) and not bool(obj[Attribute.EXTRACTABLE]))
    except p11e.PKCS11Error:  # an attribute that cannot be read: a half-written object
        return False


class Hsm:
    def __init__(self, module: str, token_label: str, pin: str, counter: CallCounter | None = None) -> None:
        self.module = module
        self.token_label = token_label
        self._pin = pin
        self.calls = counter or CallCounter()
        self._lock = _PKCS11_LOCK
        self._session: pkcs11.Session | None = None
        self._keys: dict[str, pkcs11.SecretKey] = {}

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
            raise HsmUnavailable(f"the HSM token {self.token_label!r} is unavailable: {type(exc).__name__}") from exc
        key = (self.module, self.token_label)
        try:
            session = token.open(user_pin=self._pin, rw=True)
        except p11e.UserAlreadyLoggedIn:
            # PKCS#11 login is per process: another Hsm of this process logged in
            # already. Its session state is shared; the PIN must still match.
            if _LOGGED_IN.get(key) != _pin_digest(self._pin):
                raise self._wrong_pin() from None
            try:
                return token.open(rw=True)
            except p11e.PKCS11Error as exc:
                raise self._no_session(exc) from exc
        except (p11e.PinIncorrect, p11e.PinLenRange, p11e.PinInvalid) as exc:
            raise self._wrong_pin() from exc
        except p11e.PinLocked as exc:
            raise HsmLoginFailed(f"the user PIN of HSM token {self.token_label!r} is locked; "
                                 "the security officer must reset it") from exc
        except p11e.PKCS11Error as exc:
            raise self._no_session(exc) from exc
        _LOGGED_IN[key] = _pin_digest(self._pin)
        return session

    def _find_token(self, lib: pkcs11.lib) -> pkcs11.Token:
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

    # --- keys ------------------------------------------------------------------------

    def _key(self, session: pkcs11.Session, label: str) -> pkcs11.SecretKey:
        key = self._keys.get(label)
        if key is None:
            self.calls.add("hsm.find_key")
            try:
                key = session.get_key(object_class=ObjectClass.SECRET_KEY, key_type=KeyType.AES, label=label)
            except p11e.NoSuchKey as exc:
                raise HsmKeyNotFound(f"the HSM token {self.token_label!r} has no AES key labelled {label!r}; "
                                     "create it with 'keyops dev up' or the master_key module") from exc
            except p11e.MultipleObjectsReturned as exc:
                raise HsmError(f"the HSM token {self.token_label!r} holds several keys labelled {label!r}; "
                               "remove the duplicates") from exc
            except p11e.PKCS11Error as exc:
                raise HsmError(f"looking up key {label!r} on HSM token {self.token_label!r} failed: "
                               f"{type(exc).__name__}") from exc
            self._keys[label] = key
        return key

    def has_key(self, label: str) -> bool:
        try:
            with self._open() as session:
                self._key(session, label)
        except HsmKeyNotFound:
            return False
        return True

    def ensure_key(self, label: str, replace_unusable: bool = False) -> bool:
        """Create the AES-256 master key ``label`` unless a usable one exists. True when created.

        A process killed inside C_GenerateKey can leave a token object with the
        label but without all its attributes (SoftHSM2 writes them one by one),
        which then refuses to encrypt. With ``replace_unusable`` (only for a
        version that has never wrapped anything: not yet registered, or still
        ``pending``) such objects are destroyed and the key made anew;
        without it they are an error naming the label.
        """
        with self._open() as session:
            found = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}))
            usable = [obj for obj in found if _usable_master_key(obj)]
            if len(usable) == 1 and (len(found) == 1 or not replace_unusable):
                self._keys[label] = usable[0]
                return False
            if found and not replace_unusable:
                raise HsmError(f"the HSM token {self.token_label!r} holds {len(found)} objects labelled {label!r} "
                               f"of which {len(usable)} usable; a key creation was interrupted, inspect the token")
            if len(usable) > 1:
                raise HsmError(f"the HSM token {self.token_label!r} holds several usable keys labelled {label!r}; "
                               "remove the duplicates")
            for obj in found:
                if obj not in usable:
                    self.calls.add("hsm.destroy_key")
                    try:
                        obj.destroy()
                    except p11e.PKCS11Error as exc:
                        raise HsmError(f"could not remove a half-made key labelled {label!r} from token "
                                       f"{self.token_label!r}: {type(exc).__name__}") from exc
            self._keys.pop(label, None)
            if usable:
                self._keys[label] = usable[0]
                return False
            self.calls.add("hsm.generate_key")
            try:
                key = session.generate_key(
                    KeyType.AES, 256, label=label, store=True,
                    capabilities=pkcs11.MechanismFlag.ENCRYPT | pkcs11.MechanismFlag.DECRYPT,
                    template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                              Attribute.TOKEN: True, Attribute.PRIVATE: True,
                              Attribute.WRAP: False, Attribute.UNWRAP: False})
            except p11e.PKCS11Error as exc:
                raise HsmError(f"could not create master key {label!r} on token {self.token_label!r}: "
                               f"{type(exc).__name__}") from exc
            self._keys[label] = key
            return True

    def attributes(self, label: str) -> KeyAttributes:
        with self._open() as session:
            key = self._key(session, label)
            self.calls.add("hsm.get_attributes")
            return KeyAttributes(
                label=label, key_length_bits=int(key[Attribute.VALUE_LEN]) * 8, token=bool(key[Attribute.TOKEN]),
                sensitive=bool(key[Attribute.SENSITIVE]), extractable=bool(key[Attribute.EXTRACTABLE]),
                always_sensitive=bool(key[Attribute.ALWAYS_SENSITIVE]),
                never_extractable=bool(key[Attribute.NEVER_EXTRACTABLE]))

    def destroy_key(self, label: str) -> None:
        with self._open() as session:
            key = self._key(session, label)
            self.calls.add("hsm.destroy_key")
            key.destroy()
            self._keys.pop(label, None)

    # --- AES-GCM with a key that stays on the token ------------------------------------

    def gcm_encrypt(self, label: str, plaintext: bytes, aad: bytes) -> bytes:
        """``nonce || ciphertext || tag`` under the token key ``label``."""
        nonce = os.urandom(NONCE_SIZE)
        with self._open() as session:
            key = self._key(session, label)
            self.calls.add("hsm.encrypt")
            try:
                body = key.encrypt(plaintext, mechanism=Mechanism.AES_GCM,
                                   mechanism_param=GCMParams(nonce, aad, TAG_BITS))
            except p11e.PKCS11Error as exc:
                raise HsmError(f"HSM encryption with {label!r} failed: {type(exc).__name__}") from exc
        return nonce + bytes(body)

    def gcm_decrypt(self, label: str, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < NONCE_SIZE + TAG_BITS // 8:
            raise DecryptionError()
        with self._open() as session:
            key = self._key(session, label)
            self.calls.add("hsm.decrypt")
            try:
                return bytes(key.decrypt(blob[NONCE_SIZE:], mechanism=Mechanism.AES_GCM,
                                         mechanism_param=GCMParams(blob[:NONCE_SIZE], aad, TAG_BITS)))
            except _NOT_AUTHENTIC:
                raise DecryptionError() from None
            except p11e.PKCS11Error as exc:
                raise HsmError(f"HSM decryption with {label!r} failed: {type(exc).__name__}") from exc
