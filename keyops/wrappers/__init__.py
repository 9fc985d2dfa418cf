"""Wrappers: every key that protects a key implements ``KeyWrapper``."""

from keyops.wrappers.aead import AeadWrapper
from keyops.wrappers.base import KeyWrapper
from keyops.wrappers.pkcs11 import Pkcs11Wrapper
from keyops.wrappers.transit import TransitWrapper

__all__ = ["AeadWrapper", "KeyWrapper", "Pkcs11Wrapper", "TransitWrapper"]
