"""keyops as a Kubernetes KMS v2 plugin: one cluster is one tenant (``keyops kms serve``).

``v2/api.proto`` is the wire contract; ``plugin`` serves it over a unix socket
on top of ``keyops.serve``. See docs/kms.md.
"""
