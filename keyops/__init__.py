"""keyops: an HSM-rooted envelope-encryption key hierarchy on Vault/OpenBao.

The public surface is small: ``Keyops`` (the operations API), ``Config``,
``Policy`` and the errors. Everything else is internal and may change.
"""

from keyops.config import Config
from keyops.errors import DecryptionError, KeyopsError
from keyops.model import Policy
from keyops.service import Keyops

__all__ = ["Config", "DecryptionError", "Keyops", "KeyopsError", "Policy"]
__version__ = "0.1.0"
