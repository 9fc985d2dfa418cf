"""Master keys left half-made on the token by a killed creation (SoftHSM2 writes attributes one by one)."""

from __future__ import annotations

import uuid

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, ObjectClass

from keyops.config import Config
from keyops.errors import HsmError
from keyops.hsm import Hsm

pytestmark = pytest.mark.integration


def _objects(hsm: Hsm, label: str) -> list[pkcs11.Object]:
    with hsm._open() as session:
        return list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}))


def _half_made(hsm: Hsm, label: str) -> None:
    """A token key with the label that cannot encrypt, as a creation killed before CKA_ENCRYPT was set."""
    with hsm._open() as session:
        session.generate_key(KeyType.AES, 256, label=label, store=True, capabilities=pkcs11.MechanismFlag.DECRYPT,
                             template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False})


def test_half_made_key_is_refused_or_replaced_when_nothing_depends_on_it(config: Config) -> None:
    hsm = Hsm.from_config(config)
    label = f"half-{uuid.uuid4().hex[:8]}"
    _half_made(hsm, label)
    with pytest.raises(HsmError, match="interrupted"):
        hsm.ensure_key(label)  # strict: a key that may have been used is never destroyed
    assert len(_objects(hsm, label)) == 1
    assert hsm.ensure_key(label, replace_unusable=True) is True
    assert len(_objects(hsm, label)) == 1
    blob = hsm.gcm_encrypt(label, b"k" * 32, b"ctx")
    assert hsm.gcm_decrypt(label, blob, b"ctx") == b"k" * 32
    assert hsm.ensure_key(label, replace_unusable=True) is False  # a usable key is kept as it is
    assert hsm.gcm_decrypt(label, blob, b"ctx") == b"k" * 32
    hsm.destroy_key(label)


def test_usable_key_beside_a_half_made_one(config: Config) -> None:
    hsm = Hsm.from_config(config)
    label = f"twin-{uuid.uuid4().hex[:8]}"
    assert hsm.ensure_key(label) is True
    blob = hsm.gcm_encrypt(label, b"x" * 32, b"c")
    _half_made(hsm, label)
    hsm.close()
    assert hsm.ensure_key(label) is False  # strict mode keeps using the one usable key
    assert hsm.ensure_key(label, replace_unusable=True) is False
    assert len(_objects(hsm, label)) == 1  # the half-made twin is gone, the usable key kept
    assert hsm.gcm_decrypt(label, blob, b"c") == b"x" * 32
    hsm.destroy_key(label)
