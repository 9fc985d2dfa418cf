"""The one exception tree of keyops.

Every message says what failed and what to do about it; none carries key
material, plaintext or a token. Backend exceptions (hvac, the HTTP transport, pkcs11)
are mapped to these at the boundary where they are raised, with ``raise ...
from`` so that the cause stays visible to a debugger but not in the message.
"""

from __future__ import annotations


class KeyopsError(Exception):
    """Root of every error keyops raises on purpose."""

    #: Short machine-readable name, used by the CLI (--json) and Ansible output.
    code = "error"
    #: Process exit code used by the CLI for this kind of error.
    exit_code = 1
    #: Whether the same call, unchanged, may pass later on its own: a lost
    #: check-and-set race, a Vault or HSM that is down or sealed. Every other
    #: error needs something changed first. The one table of it: the Ansible
    #: modules report it (``until: not result.failed or not result.retryable``),
    #: and ``is_retryable`` reads it for a stored error code.
    retryable = False


class InvalidInput(KeyopsError, ValueError):
    """An argument, name, policy or document does not fit its constraints."""

    code = "invalid_input"
    exit_code = 2


class ConfigError(KeyopsError):
    """Configuration is missing or contradictory."""

    code = "config"
    # Not 3: the rotate/retire/destroy commands use 3 for "nothing to do".
    exit_code = 15


class MountMissing(ConfigError):
    """A mount keyops uses (KEYOPS_KV_MOUNT, KEYOPS_TRANSIT_MOUNT, a migration's source) does not exist."""

    code = "mount_missing"


class NamespaceNotFound(ConfigError):
    """VAULT_NAMESPACE names a namespace that does not exist, or that the token cannot see."""

    code = "namespace_not_found"


class DecryptionError(KeyopsError):
    """A ciphertext or wrapped key did not authenticate.

    Deliberately opaque (like ``cryptography.fernet.InvalidToken``): a wrong
    key, tenant, context, version or a single flipped bit all look the same,
    so the error cannot serve as an oracle.
    """

    code = "decryption_failed"
    exit_code = 4

    def __init__(self, message: str = "decryption failed: the ciphertext is not authentic for this "
                 "tenant, key version and context") -> None:
        super().__init__(message)


class MalformedCiphertext(InvalidInput):
    """A ciphertext could not be parsed (truncated, unknown version, bad encoding)."""

    code = "malformed_ciphertext"


class NotFound(KeyopsError):
    code = "not_found"
    exit_code = 5


class TenantNotFound(NotFound):
    code = "tenant_not_found"

    def __init__(self, tenant: str) -> None:
        super().__init__(f"tenant {tenant!r} has no keyring; create it with "
                         f"'keyops tenant create {tenant}'")
        self.tenant = tenant


class KeyNotFound(NotFound):
    code = "key_not_found"


class SecretNotFound(NotFound):
    code = "secret_not_found"


class TenantExists(KeyopsError):
    code = "tenant_exists"
    exit_code = 6


class Conflict(KeyopsError):
    """A check-and-set write lost against a concurrent writer."""

    code = "conflict"
    exit_code = 7
    retryable = True


class CheckAndSetFailed(Conflict):
    """A check-and-set write lost: another writer changed the document since it was read.

    The one kind of conflict that reading again and deciding again can
    resolve (``keyops.ops.cas``); other conflicts (a rotation in progress,
    a lost race that changed what is wanted) are reported as they are.
    Reported exactly as ``Conflict`` (same code and exit code).
    """


class KeyStateError(KeyopsError):
    """A key version is not in a state that allows the requested operation."""

    code = "key_state"
    exit_code = 8


class UsageCapReached(KeyStateError):
    code = "usage_cap_reached"


class KeyInUse(KeyStateError):
    """A key version still protects something (records, DEKs or KEKs) and cannot be retired or destroyed."""

    code = "key_in_use"


class KeyringCorrupt(KeyStateError):
    """A stored keyring cannot be used: malformed, or naming another tenant than its path.

    keyops refuses it and writes nothing; an administrator restores a good
    version from KV's history (docs/access.md, "Restoring a keyring").
    """

    code = "keyring_corrupt"


class ConfirmationRequired(InvalidInput):
    """An irreversible operation was asked for without explicit confirmation."""

    code = "confirmation_required"


# Each kind of failure is a class of the same shape (a docstring, a code, an exit code): the shape
# repeats on purpose, since the classes are the table (README's exit codes) that callers match on.
class VaultError(KeyopsError):
    """Vault/OpenBao refused or failed a request."""

    code = "vault"
    exit_code = 10


class VaultUnreachable(VaultError):
    code = "vault_unreachable"
    exit_code = 11
    retryable = True


class VaultSealed(VaultError):
    code = "vault_sealed"
    exit_code = 12
    retryable = True


class AuthenticationFailed(VaultError):
    code = "authentication_failed"
    exit_code = 13


class PermissionDenied(VaultError):
    code = "permission_denied"
    exit_code = 14


class TransitNotAuthentic(VaultError):
    """Transit could not open a ciphertext: its authentication failed, or it is not one of the key's.

    Transit answers a wrong key, a wrong context or a tampered blob with
    "message authentication failed", and a mangled one with "invalid
    ciphertext"; the Vault backend turns both into this type, so that callers
    tell it apart by type, not by message. Callers that decrypt on behalf of
    keyops turn it into the one opaque ``DecryptionError``. The exit code stays
    that of ``VaultError``, which it was reported as before it had a type.
    """

    code = "transit_not_authentic"


class NotPermitted(PermissionDenied):
    """keyops refused before asking Vault: the caller's role does not grant the operation.

    The server enforces the same policies; this only fails earlier, with a
    message naming the role and the operation.
    """

    code = "not_permitted"


class JobFailed(KeyopsError):
    """An item of a re-encryption or migration job failed; the job stopped at its last checkpoint.

    Carries the ``code``, ``exit_code`` and ``retryable`` of the failure that
    stopped it, so the CLI and the Ansible modules report the cause (sealed
    Vault, a record that does not decrypt, ...), while the message names the
    job and the item.
    """

    code = "job_failed"
    exit_code = 9

    def __init__(self, message: str, cause: KeyopsError | None = None) -> None:
        super().__init__(message)
        if cause is not None:
            self.code = cause.code
            self.exit_code = cause.exit_code
            self.retryable = cause.retryable


class HsmError(KeyopsError):
    code = "hsm"
    exit_code = 20


class HsmUnavailable(HsmError):
    code = "hsm_unavailable"
    exit_code = 21
    retryable = True


class HsmLoginFailed(HsmError):
    code = "hsm_login_failed"
    exit_code = 22


class HsmKeyNotFound(HsmError, KeyNotFound):
    code = "hsm_key_not_found"
    exit_code = 23


class HsmTokenNotConfigured(ConfigError):
    """A master version lives on a PKCS#11 token that is neither ``KEYOPS_PKCS11_TOKEN`` nor the old token."""

    code = "hsm_token_not_configured"


class HsmKeyNotOwned(HsmError):
    """The token holds a key under a name this registry would use, but this registry did not make it."""

    code = "hsm_key_not_owned"
    exit_code = 24


class AuditError(KeyopsError):
    """The audit trail cannot be written or read."""

    code = "audit"
    exit_code = 40


class AuditChainBroken(AuditError):
    """The hash chain of an audit log does not verify: an entry was edited, removed, added or moved."""

    code = "audit_chain_broken"
    exit_code = 41


class DevStackError(KeyopsError):
    code = "dev_stack"
    exit_code = 30


def _classes(root: type[KeyopsError]) -> list[type[KeyopsError]]:
    found = [root]
    for sub in root.__subclasses__():
        found += _classes(sub)
    return found


def is_retryable(code: str) -> bool:
    """``retryable`` of the error class with this ``code`` (False for an unknown code).

    For results that keep a failure as its code and message (per-tenant
    outcomes, ``keyops rotate --due --json``) rather than as the exception.
    Codes are unique across the tree (tests/unit/test_error_tree.py), and a
    ``JobFailed`` carries its cause's code, so the code names the class.
    """
    return any(cls.retryable for cls in _classes(KeyopsError) if cls.code == code)
