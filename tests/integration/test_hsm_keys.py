"""Master keys on the real SoftHSM2 token: naming by label and CKA_ID, permanence, half-made keys.

* A key is this registry's only with both its label and its CKA_ID; anything
  else under either name is refused, never adopted.
* New master keys are permanent for a holder of the user PIN (CKA_DESTROYABLE,
  CKA_MODIFIABLE, CKA_COPYABLE false): C_DestroyObject through python-pkcs11
  fails, and so does keyops' own destroy_key.
* A key left half-made by a killed creation (SoftHSM2 writes attributes one by
  one) is refused, or replaced when nothing depends on it.
"""

from __future__ import annotations

import os
import uuid

import pkcs11
import pkcs11.exceptions as p11e
import pytest
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.mechanisms import GCMParams

from keyops.backends.hsm import PERMANENT, Hsm
from keyops.config import Config
from keyops.errors import HsmError, HsmKeyNotOwned

pytestmark = pytest.mark.integration


def _objects(hsm: Hsm, label: str) -> list[pkcs11.Object]:
    with hsm._open() as session:
        return list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}))


def _half_made(hsm: Hsm, label: str, key_id: bytes, permanent: bool = False) -> None:
    """A token key with the label and ID that cannot encrypt, as a creation killed before CKA_ENCRYPT was set."""
    template = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, **(PERMANENT if permanent else {})}
    with hsm._open() as session:
        session.generate_key(KeyType.AES, 256, label=label, id=key_id, store=True,
                             capabilities=pkcs11.MechanismFlag.DECRYPT, template=template)


def _name() -> tuple[str, bytes]:
    return f"test-{uuid.uuid4().hex[:8]}", os.urandom(12)


def test_half_made_key_is_refused_or_replaced_when_nothing_depends_on_it(config: Config) -> None:
    hsm = Hsm.from_config(config)
    label, key_id = _name()
    _half_made(hsm, label, key_id)
    with pytest.raises(HsmError, match="interrupted"):
        hsm.ensure_key(label, key_id=key_id)  # strict: a key that may have been used is never destroyed
    assert len(_objects(hsm, label)) == 1
    assert hsm.ensure_key(label, key_id=key_id, replace_unusable=True) is True
    assert len(_objects(hsm, label)) == 1
    blob = hsm.gcm_encrypt(label, b"k" * 32, b"ctx", key_id=key_id)
    assert hsm.gcm_decrypt(label, blob, b"ctx", key_id=key_id) == b"k" * 32
    assert hsm.ensure_key(label, key_id=key_id, replace_unusable=True) is False  # a usable key is kept as it is
    assert hsm.gcm_decrypt(label, blob, b"ctx", key_id=key_id) == b"k" * 32


def test_usable_key_beside_a_half_made_one(config: Config) -> None:
    hsm = Hsm.from_config(config)
    label, key_id = _name()
    assert hsm.ensure_key(label, key_id=key_id) is True
    blob = hsm.gcm_encrypt(label, b"x" * 32, b"c", key_id=key_id)
    _half_made(hsm, label, key_id)
    hsm.close()
    assert hsm.ensure_key(label, key_id=key_id) is False  # strict mode keeps using the one usable key
    assert hsm.ensure_key(label, key_id=key_id, replace_unusable=True) is False
    assert len(_objects(hsm, label)) == 1  # the half-made twin is gone, the usable key kept
    assert hsm.gcm_decrypt(label, blob, b"c", key_id=key_id) == b"x" * 32


def test_a_half_made_key_that_cannot_be_destroyed_is_passed_over(config: Config) -> None:
    """A creation killed after CKA_DESTROYABLE false was stored leaves a twin nobody can remove."""
    hsm = Hsm.from_config(config)
    label, key_id = _name()
    _half_made(hsm, label, key_id, permanent=True)
    assert hsm.ensure_key(label, key_id=key_id, replace_unusable=True) is True
    assert len(_objects(hsm, label)) == 2  # the twin stays, and every lookup passes it over
    hsm.close()
    assert hsm.has_key(label, key_id)
    blob = hsm.gcm_encrypt(label, b"y" * 32, b"c", key_id=key_id)
    assert hsm.gcm_decrypt(label, blob, b"c", key_id=key_id) == b"y" * 32


def test_master_keys_are_permanent_for_a_pin_holder(config: Config) -> None:
    """Item 6: with the user PIN, C_DestroyObject, C_SetAttributeValue and C_CopyObject all fail."""
    hsm = Hsm.from_config(config)
    label, key_id = _name()
    assert hsm.ensure_key(label, key_id=key_id) is True
    attrs = hsm.attributes(label, key_id)
    assert (attrs.destroyable, attrs.modifiable, attrs.copyable) == (False, False, False)
    assert attrs.key_id == key_id.hex() and attrs.sensitive and not attrs.extractable

    # A PIN holder with python-pkcs11 and nothing of keyops (this process is logged in already).
    lib = pkcs11.lib(config.resolve_pkcs11_module())
    session = lib.get_token(token_label=config.pkcs11_token_label).open(rw=True)
    try:
        raw = session.get_key(object_class=ObjectClass.SECRET_KEY, label=label, id=key_id)
        with pytest.raises(p11e.PKCS11Error):
            raw.destroy()
        with pytest.raises(p11e.PKCS11Error):
            raw[Attribute.DESTROYABLE] = True
        with pytest.raises(p11e.PKCS11Error):
            raw.copy({Attribute.DESTROYABLE: True})
        params = GCMParams(os.urandom(12), b"ctx", 128)
        ct = raw.encrypt(b"z" * 32, mechanism=pkcs11.Mechanism.AES_GCM, mechanism_param=params)
        assert raw.decrypt(ct, mechanism=pkcs11.Mechanism.AES_GCM, mechanism_param=params) == b"z" * 32
    finally:
        session.close()
    removal = hsm.destroy_key(label, key_id=key_id)
    assert (removal.deleted, removal.kept) == (0, 1)
    hsm.close()
    assert hsm.has_key(label, key_id) and len(_objects(hsm, label)) == 1


def test_a_lookalike_key_is_never_adopted(config: Config) -> None:
    """Item 2: a key carrying this registry's label (or its CKA_ID) without the other is someone else's."""
    hsm = Hsm.from_config(config)
    label, key_id = _name()
    other_id = os.urandom(12)
    assert hsm.ensure_key(label, key_id=other_id) is True  # "another registry" got there first
    with pytest.raises(HsmKeyNotOwned, match="did not create"):
        hsm.check_unused(label, key_id)
    with pytest.raises(HsmKeyNotOwned, match="never adopts"):
        hsm.ensure_key(label, key_id=key_id, replace_unusable=True)
    assert not hsm.has_key(label, key_id)  # a lookup by label and ID does not find the look-alike
    with pytest.raises(HsmKeyNotOwned):
        hsm.ensure_key(f"{label}-b", key_id=other_id)  # the same ID under another label
    assert len(_objects(hsm, label)) == 1 and not _objects(hsm, f"{label}-b")
    hsm.check_unused(f"{label}-c", os.urandom(12))  # a free name passes


def test_closing_the_hsm_that_logged_in_leaves_the_others_logged_in(config: Config) -> None:
    """PKCS#11 login is per process; python-pkcs11 logs the whole process out when the PIN's session closes."""
    first, second = Hsm.from_config(config), Hsm.from_config(config)
    label, key_id = _name()
    first.ensure_key(label, key_id=key_id)
    second.login()
    first.close()  # the Hsm whose session carried the login, if no other Hsm of this process had logged in
    assert second.has_key(label, key_id)
    blob = second.gcm_encrypt(label, b"w" * 32, b"c", key_id=key_id)
    assert second.gcm_decrypt(label, blob, b"c", key_id=key_id) == b"w" * 32
    second.close()
    third = Hsm.from_config(config)  # and a later one logs in again
    assert third.gcm_decrypt(label, blob, b"c", key_id=key_id) == b"w" * 32
    third.close()
