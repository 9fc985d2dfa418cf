# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

"""PKCS#11 HSM options, documented once.

``keyops.kms.hsm`` is for modules and the lookup alike; the lookup adds
``keyops.kms.hsm.plugins``, which gives each option its C(env) entries.
"""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  pkcs11_module:
    description:
      - Path of the HSM vendor's PKCS#11 library.
      - When unset, C(KEYOPS_PKCS11_MODULE); else SoftHSM2's C(libsofthsm2.so) where it is installed.
    type: path
  pkcs11_token:
    description:
      - Label of the HSM token (slot) that holds the master key.
      - When unset, C(KEYOPS_PKCS11_TOKEN); else C(keyops).
    type: str
  pkcs11_pin:
    description:
      - User PIN of the token. Prefer O(pkcs11_pin_file) or C(KEYOPS_PKCS11_PIN) to a literal.
      - When unset, C(KEYOPS_PKCS11_PIN); then O(pkcs11_pin_file).
    type: str
  pkcs11_pin_file:
    description:
      - File holding the user PIN on one line, readable by its owner only (keyops refuses it otherwise).
      - When unset, C(KEYOPS_PKCS11_PIN_FILE).
    type: path
  master_key_label:
    description:
      - Label prefix of the master key objects on the token; version N of a registry is
        C(<prefix>-<registry id>-vN) (C(<prefix>-vN) for versions made before registry ids).
      - When unset, C(KEYOPS_MASTER_KEY_LABEL); else C(keyops-master).
    type: str
  softhsm2_conf:
    description:
      - SoftHSM2 configuration file. Set in the module's environment before the token is
        opened (SoftHSM2 reads it once per process). Only for SoftHSM2.
      - When unset, C(SOFTHSM2_CONF).
    type: path
"""

    PLUGINS = r"""
options:
  pkcs11_module:
    env:
      - name: KEYOPS_PKCS11_MODULE
  pkcs11_token:
    env:
      - name: KEYOPS_PKCS11_TOKEN
  pkcs11_pin:
    env:
      - name: KEYOPS_PKCS11_PIN
  pkcs11_pin_file:
    env:
      - name: KEYOPS_PKCS11_PIN_FILE
  master_key_label:
    env:
      - name: KEYOPS_MASTER_KEY_LABEL
  softhsm2_conf:
    env:
      - name: SOFTHSM2_CONF
"""
