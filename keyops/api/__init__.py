"""``keyops serve``: an HTTP API shaped as Vault's Transit API, over ``keyops.serve`` (docs/http-api.md).

A face: it parses requests and shapes answers; the checks, caches, usage
accounting and metrics are ``keyops.serve``'s, shared with the KMS plugin.
"""
