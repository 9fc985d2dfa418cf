"""What long-lived servers share: one tenant's keys served from memory, health and public key ids.

The Kubernetes KMS v2 plugin (``keyops.kms``) stands on it, and so will the
HTTP API. A server holds one ``Keyops`` for its lifetime, so its caches and its
usage reservations (``keyops.ops.reservations``) outlive a request; it accepts
a keyring older than its TTL while Vault cannot be reached (``stale_for``), so
that a brief outage does not stop decryption.
"""
