"""The break-glass recovery key: RSA-OAEP with SHA-256 to a public key the operator holds offline.

Every KEK version is also wrapped to this key (its copy lives in the
keyring, next to the master-wrapped KEK), so that losing the HSM loses no
tenant. The wrapping context is the OAEP label, so a copy moved to another
tenant, level or version fails to open, as every wrapped key does. keyops'
long-lived processes only ever load the public half (``EscrowKey``); the
private half (``RecoveryKey``) is loaded by ``keyops recover`` alone, from a
file or stdin, and kept in memory for that run.

By hand, a copy opens with OpenSSL (``CONTEXT_HEX`` the hex of the version's
``key_context``)::

    base64 -d wrapped.b64 | openssl pkeyutl -decrypt -inkey recovery.pem -pkeyopt rsa_padding_mode:oaep \\
        -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256 -pkeyopt rsa_oaep_label:$CONTEXT_HEX
"""

from __future__ import annotations

import hashlib
from typing import NoReturn

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from keyops.errors import ConfigError, DecryptionError, InvalidInput, KeyStateError

ALGORITHM = "rsa-oaep-sha256"
#: Below this an RSA key is refused; NIST SP 800-57 puts 3072 bits at AES-128's strength, 4096 is advised.
MIN_BITS = 3072


def _oaep(label: bytes) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)


def fingerprint(public: rsa.RSAPublicKey) -> str:
    """``sha256:`` + the hex SHA-256 of the key's SubjectPublicKeyInfo (``openssl pkey -pubin -outform DER``)."""
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _check_rsa(key: object, where: str) -> None:
    if not isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        raise ConfigError(f"{where} is not an RSA key; the recovery key is RSA (OAEP, SHA-256), 4096 bits")
    if key.key_size < MIN_BITS:
        raise ConfigError(f"{where} is an RSA key of {key.key_size} bits; at least {MIN_BITS} are required "
                          "(4096 advised)")


class EscrowKey:
    """The public recovery key: wraps, never unwraps."""

    def __init__(self, public: rsa.RSAPublicKey) -> None:
        self._public = public
        self.fingerprint = fingerprint(public)

    @classmethod
    def from_pem(cls, data: bytes, where: str = "the escrow public key") -> EscrowKey:
        try:
            public = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ConfigError(f"{where} is not a PEM public key (-----BEGIN PUBLIC KEY-----); a private key "
                              "never belongs on keyops' hosts") from None
        _check_rsa(public, where)
        assert isinstance(public, rsa.RSAPublicKey)
        return cls(public)

    def wrap(self, key: bytes, context: bytes) -> bytes:
        return self._public.encrypt(key, _oaep(context))

    def unwrap(self, blob: bytes, context: bytes) -> bytes:
        raise KeyStateError("the escrow public key only wraps; opening an escrow copy takes the recovery private "
                            "key ('keyops recover --private-key')")

    def __repr__(self) -> str:
        return f"<EscrowKey {self.fingerprint}>"


class RecoveryKey:
    """The private recovery key, for the one ``keyops recover`` run that holds it. Never pickled or shown."""

    def __init__(self, private: rsa.RSAPrivateKey) -> None:
        self._private = private
        self.fingerprint = fingerprint(private.public_key())

    @classmethod
    def from_pem(cls, data: bytes, passphrase: bytes | None = None) -> RecoveryKey:
        try:
            private = serialization.load_pem_private_key(data, password=passphrase)
        except TypeError:
            raise InvalidInput("the recovery private key is encrypted: give its passphrase (--passphrase-file), "
                               "or it is not, and a passphrase was given") from None
        except (ValueError, UnsupportedAlgorithm):
            # cryptography says the same for a wrong passphrase and a damaged file; so does this.
            raise InvalidInput("the recovery private key cannot be read: not a PEM private key, or a wrong "
                               "passphrase") from None
        _check_rsa(private, "the recovery private key")
        assert isinstance(private, rsa.RSAPrivateKey)
        return cls(private)

    def wrap(self, key: bytes, context: bytes) -> bytes:
        return self._private.public_key().encrypt(key, _oaep(context))

    def unwrap(self, blob: bytes, context: bytes) -> bytes:
        try:
            return self._private.decrypt(blob, _oaep(context))
        except ValueError:
            raise DecryptionError() from None

    def __repr__(self) -> str:
        return f"<RecoveryKey {self.fingerprint} (material hidden)>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("key objects cannot be pickled")
